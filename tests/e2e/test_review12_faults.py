"""Review 12: hookbridge as an attacker, or a careless operator, would try it
(docs/security.md): secrets in messages, what a hostile endpoint or ingest
client can make the services do.

Each test says what it holds and how it was shown to fail on 534b5fd."""
import json
import os
import socket
import subprocess
import time

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.procs import BIN, REPO, SECRET_KEY, SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, produce
from test_delivery import event, register_verified, sql


def test_a_slash_or_at_in_the_database_password_is_refused_without_quoting_any_of_it():
    """docs/security.md, Secrets in logs: "`HOOKBRIDGE_DATABASE_URL` is a
    secret setting: its value is never printed, not even in an error about
    it".

    A password with a '/' that is not percent-encoded (base64 passwords have
    them): libpq ends the host part at that '/', takes the user name for the
    host, the password's first part for the port and the rest for the
    database name, and its error quotes them: `database: invalid integer
    value "Pw" for connection option "port" (host hookbridge port Pw)`. A
    password starting with digits gets further: the server is asked for a
    database named after the rest of the password. An '@' (libpq ends the
    user info at the first one): the rest of the password is taken for the
    host, `could not translate host name "x7Qk2-...@127.0.0.1"`. What the
    operator sees
    now: the services exit 2 with the one line naming HOOKBRIDGE_DATABASE_URL
    (no retry could connect), hookbridge-migrate and hookbridge-secret say
    the string is not valid; no part of the password anywhere.

    On 534b5fd hookbridge-migrate and hookbridge-secret printed "Pw" as the
    port (or the password's tail as the host), and the dispatcher stayed up
    logging it every 2 s (the exit status assertion timed out)."""
    for url in ("postgresql://hookbridge:Pw/x7Qk2-secret-tail@127.0.0.1:1/hookbridge",
                "postgresql://hookbridge:5432/x7Qk2-secret-tail@127.0.0.1:1/hookbridge",
                "postgresql://hookbridge:Pw@x7Qk2-secret-tail@127.0.0.1:1/hookbridge"):
        first = url.split(":")[2].split("/")[0].split("@")[0]
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


# An auth value with what a JSON echo escapes: '"' and '\\' always, '/' for
# PHP's json_encode, and a non-ASCII character (its UTF-8 bytes, which HTTP
# servers read as Latin-1, become \u00c3\u00a9 in Python's json.dumps).
SPECIAL_AUTH = 'Bearer Qx"7\\k/Zé-77e1f0c4b2a9d3'


class JsonEcho(ChallengeAnswering):
    """Answers each POST 200 with the request's headers as JSON:
    py     json.dumps (ensure_ascii: \\uXXXX for anything not ASCII)
    php    the same with '/' written '\\/', as PHP's json_encode does
    pycut  padding, then py's echo: the 512-byte snippet ends
           inside the auth value's escaped spelling"""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        kind = self.path[len("/hook"):]
        body = json.dumps({"Authorization": self.headers["Authorization"]})
        if kind == "php":
            body = body.replace("/", "\\/")
        elif kind == "pycut":
            body = "p" * (512 - len('{"Authorization": "Bearer Qx\\"7\\\\k')) + body
        body = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_an_auth_value_echoed_in_json_is_redacted_in_the_delivery_log(db_url, procs, workdir):
    """docs/security.md, Secrets in logs: "An endpoint that echoes the request
    in its answer (echo services, test endpoints) does not put the auth value
    into the delivery log either: in the response snippet kept there it is
    replaced by `[redacted]`, also where the snippet's bound cuts it".

    Echo services answer in JSON, which escapes the value's '"' and '\\'
    (any JSON encoder), its '/' (PHP), its non-ASCII bytes (Python's
    default): the value as sent was not in the snippet, so nothing was
    redacted and an operator, who may not read auth values
    (docs/sql.md, Roles), read it in delivery_attempts.response_snippet.

    On 534b5fd all three snippets held the value's tail "77e1f0c4b2a9d3" (or,
    cut, its start) in plaintext."""
    srv = serve(JsonEcho)
    try:
        broker = Broker(procs, workdir)
        d = Dispatcher(procs, db_url, broker.bootstrap)
        d.wait_ready()
        subs = {kind: register_verified(db_url, srv.url + kind, ["user.session.start"],
                                        {"auth_value": SPECIAL_AUTH})
                for kind in ("py", "php", "pycut")}
        produce(broker.bootstrap, [event("user.session.start")])
        snips = wait_until(
            lambda: (r := dict(sql(db_url, "SELECT subscription_id::text, response_snippet "
                                   "FROM hookbridge.delivery_attempts "
                                   "WHERE subscription_id = ANY(%s::uuid[])",
                                   list(subs.values())))) and len(r) == 3 and r,
            20, "the three attempts logged")
        py, php, cut = (snips[subs[k]] for k in ("py", "php", "pycut"))
        assert py == '{"Authorization": "[redacted]"}', py
        assert php == '{"Authorization": "[redacted]"}', php
        assert cut.endswith('{"Authorization": "[redacted]'), cut
        for snip in (py, php, cut):
            assert "Qx" not in snip and "77e1f0c4b2a9d3" not in snip, snip
    finally:
        srv.shutdown()


def test_clients_trickling_requests_do_not_keep_the_probes_out(db_url, procs, workdir):
    """docs/operations.md, Health: the liveness probe restarts a pod whose
    /healthz does not answer. The operations port serves 64 connections;
    libmicrohttpd closed one only after 10 s without a byte, so 64 clients
    each sending a byte every 2 s (slowloris: anyone who reaches the port,
    no credentials) held every connection for good, /healthz went
    unanswered, and the kubelet would restart the pod over and over. (The
    ingest endpoint had the same weakness, with Okta's deliveries shut out:
    the same code cuts it, after its 30 s; lib/hb_cutoff.c, and
    tests/unit/test_cutoff.c in both of libmicrohttpd's threading modes.)

    Now a connection that has not sent a whole request within 5 s is
    closed: /healthz answers again within that, and the trickling clients
    find their connections closed.

    On 534b5fd /healthz did not answer in 12 s ("/healthz answered while
    64 clients trickle" timed out)."""
    broker = Broker(procs, workdir)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    socks = [socket.create_connection(("127.0.0.1", d.health_port)) for _ in range(64)]
    try:
        for s in socks:
            s.sendall(b"G")
            s.setblocking(False)
        start = time.monotonic()

        def trickle_then_probe():
            for s in socks:
                try:
                    s.sendall(b"E")
                except OSError:
                    pass
            return d.get("/healthz")[0] == 200
        wait_until(trickle_then_probe, 12 * SLOW, "/healthz answered while 64 clients trickle",
                   interval=1)
        # Review 34: a new connection has the one that waited longest for its
        # request closed to make room (56 open at most), so the probe is
        # answered at once; the rest are cut at their deadline.
        assert time.monotonic() - start < 2 * SLOW, "the probe waited for the deadline"
        while time.monotonic() < start + 6:
            trickle_then_probe()
            time.sleep(1)
        closed = 0
        for s in socks:
            try:
                closed += s.recv(64) == b""
            except ConnectionResetError:
                closed += 1
            except BlockingIOError:
                pass
        assert closed >= 60, f"only {closed} of the trickling connections were closed"
        wait_until(lambda: "closed" in d.proc.output() and "sent no whole request within 5000 ms"
                   in d.proc.output(), 5, "the log line saying so")
    finally:
        for s in socks:
            s.close()
