"""Review 12: hookbridge as an attacker, or a careless operator, would try it
(docs/security.md): secrets in messages, what a hostile endpoint or ingest
client can make the services do.

Each test says what it holds and how it was shown to fail on 534b5fd."""
import os
import subprocess

from hbtest.procs import BIN, REPO, SECRET_KEY, SLOW


def test_a_slash_in_the_database_password_is_refused_without_quoting_any_of_it():
    """docs/security.md, Secrets in logs: "`HOOKBRIDGE_DATABASE_URL` is a
    secret setting: its value is never printed, not even in an error about
    it".

    A password with a '/' that is not percent-encoded (base64 passwords have
    them): libpq ends the host part at that '/', takes the user name for the
    host, the password's first part for the port and the rest for the
    database name, and its error quotes them: `database: invalid integer
    value "Pw" for connection option "port" (host hookbridge port Pw)`. A
    password starting with digits gets further: the server is asked for a
    database named after the rest of the password. What the operator sees
    now: the services exit 2 with the one line naming HOOKBRIDGE_DATABASE_URL
    (no retry could connect), hookbridge-migrate and hookbridge-secret say
    the string is not valid; no part of the password anywhere.

    On 534b5fd hookbridge-migrate and hookbridge-secret printed "Pw" as the
    port, and the dispatcher stayed up logging it every 2 s (the exit status
    assertion timed out)."""
    for url in ("postgresql://hookbridge:Pw/x7Qk2-secret-tail@127.0.0.1:1/hookbridge",
                "postgresql://hookbridge:5432/x7Qk2-secret-tail@127.0.0.1:1/hookbridge"):
        first = url.split(":")[2].split("/")[0]
        env = dict(os.environ, HOOKBRIDGE_DATABASE_URL=url, HOOKBRIDGE_SECRET_KEY=SECRET_KEY,
                   HOOKBRIDGE_KAFKA_BROKERS="127.0.0.1:1", HOOKBRIDGE_HTTP_LISTEN="127.0.0.1:0",
                   HOOKBRIDGE_MIGRATIONS_DIR=str(REPO / "migrations"))
        for argv, status in (([BIN / "hookbridge-migrate", "status"], 1),
                             ([BIN / "hookbridge-secret", "show",
                               "0b6c8a52-3f1e-4d2a-9c55-7e2f1a9d0c31"], 1),
                             ([BIN / "hookbridge-dispatcher"], 2)):
            try:
                r = subprocess.run([str(a) for a in argv], env=env, capture_output=True,
                                   text=True, timeout=10 * SLOW)
            except subprocess.TimeoutExpired as e:
                raise AssertionError(f"{argv[0].name} kept running: {(e.stdout or b'')[-600:]!r}")
            out = r.stdout + r.stderr
            assert r.returncode == status, (argv[0].name, r.returncode, out[-1500:])
            assert "not valid" in out, out
            for piece in ("secret-tail", "x7Qk2", f'"{first}"', f"port {first}"):
                assert piece not in out, (argv[0].name, piece, out)
