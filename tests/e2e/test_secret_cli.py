"""The sealing key as an operator meets it: hookbridge-secret makes a key and
shows key ids without ever printing a key it was given, and the services
refuse to start without a usable HOOKBRIDGE_SECRET_KEY.

(`hookbridge-secret show` is tested with sealed secrets in test_secrets.py.)"""
import base64
import os
import re
import subprocess

from hbtest.procs import BIN, SLOW

SECRET = BIN / "hookbridge-secret"
ZERO_KEY = base64.b64encode(bytes(32)).decode()
# Independently: head -c 32 /dev/zero | cat <(printf 'hookbridge-secret-key-id:') - |
# openssl dgst -sha256  -> 5ac1ccaf0517ead4...
ZERO_ID = "5ac1ccaf0517ead4"
OTHER_KEY = bytes(range(1, 33)).hex()


def run(argv, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("HOOKBRIDGE_")}
    full.update(env)
    return subprocess.run([str(a) for a in argv], env=full, capture_output=True, text=True,
                          timeout=30 * SLOW)


def test_generate_key_prints_a_new_key_and_its_id():
    """stdout is only the key (so `$(hookbridge-secret generate-key)` works);
    the id goes to stderr, and key-id with that key prints the same id."""
    a, b = run([SECRET, "generate-key"]), run([SECRET, "generate-key"])
    assert a.returncode == 0 and b.returncode == 0
    key = a.stdout.strip()
    assert a.stdout == key + "\n" and len(base64.b64decode(key, validate=True)) == 32
    assert key != b.stdout.strip(), "every key is new"
    m = re.fullmatch(r"key id: ([0-9a-f]{16})\n", a.stderr)
    assert m, a.stderr
    r = run([SECRET, "key-id"], HOOKBRIDGE_SECRET_KEY=key)
    assert r.returncode == 0 and r.stdout == f"{m.group(1)} current\n"


def test_key_id_lists_current_and_old_keys_without_printing_them():
    r = run([SECRET, "key-id"], HOOKBRIDGE_SECRET_KEY=ZERO_KEY,
            HOOKBRIDGE_SECRET_KEYS_OLD=f"{OTHER_KEY}, {'00' * 32}")  # the zero key again: once
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{ZERO_ID} current"
    assert len(lines) == 2 and re.fullmatch(r"[0-9a-f]{16} old", lines[1])
    assert ZERO_KEY not in r.stdout + r.stderr and OTHER_KEY not in r.stdout + r.stderr


def test_key_problems_are_named_and_exit_2():
    r = run([SECRET, "key-id"])
    assert r.returncode == 2
    assert "HOOKBRIDGE_SECRET_KEY is not set (generate one with: hookbridge-secret " \
           "generate-key)" in r.stderr
    short = base64.b64encode(b"k" * 31).decode()
    r = run([SECRET, "key-id"], HOOKBRIDGE_SECRET_KEY=ZERO_KEY,
            HOOKBRIDGE_SECRET_KEYS_OLD=f"{OTHER_KEY} {short}")
    assert r.returncode == 2
    assert "key 2 of HOOKBRIDGE_SECRET_KEYS_OLD: 31 bytes, want 32" in r.stderr
    assert short not in r.stderr and r.stdout == ""


def test_usage_errors_exit_2_and_help_lists_the_commands():
    r = run([SECRET])
    assert r.returncode == 2 and "generate-key" in r.stderr and r.stdout == ""
    r = run([SECRET, "rotate"])
    assert r.returncode == 2 and 'unknown command "rotate"' in r.stderr
    r = run([SECRET, "show"], HOOKBRIDGE_SECRET_KEY=ZERO_KEY)
    assert r.returncode == 2 and "show needs a subscription id" in r.stderr
    r = run([SECRET, "show", "not-a-uuid"], HOOKBRIDGE_SECRET_KEY=ZERO_KEY)
    assert r.returncode == 2 and '"not-a-uuid" is not a subscription id' in r.stderr
    r = run([SECRET, "--help"])
    assert r.returncode == 0
    for word in ("generate-key", "key-id", "show <subscription>", "HOOKBRIDGE_SECRET_KEY",
                 "HOOKBRIDGE_SECRET_KEYS_OLD", "HOOKBRIDGE_DATABASE_URL"):
        assert word in r.stdout, word


def test_show_reports_an_unreachable_database_without_the_password():
    r = run([SECRET, "show", "0b6c8a52-3f1e-4d2a-9c55-7e2f1a9d0c31"],
            HOOKBRIDGE_SECRET_KEY=ZERO_KEY,
            HOOKBRIDGE_DATABASE_URL="postgresql://u:pw-secret-77@127.0.0.1:1/none")
    assert r.returncode == 1
    assert "database: connection refused (host 127.0.0.1 port 1)" in r.stderr
    assert "pw-secret-77" not in r.stderr and r.stdout == ""


def test_services_refuse_to_start_without_a_usable_key():
    """One line naming the variable and how to make a key, exit 2, before
    any connection is tried; a bad key's text is not repeated."""
    base = {"HOOKBRIDGE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "HOOKBRIDGE_HTTP_LISTEN": "127.0.0.1:0"}
    bad = base64.b64encode(b"x" * 31).decode()
    for program in ("hookbridge-dispatcher", "hookbridge-retrier"):
        r = run([BIN / program], **base)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr == (f"{program}: HOOKBRIDGE_SECRET_KEY is not set: it is the key that "
                            "seals signing secrets and auth values in the database; generate "
                            "one with: hookbridge-secret generate-key\n")
        r = run([BIN / program], HOOKBRIDGE_SECRET_KEY=bad, **base)
        assert r.returncode == 2
        assert "HOOKBRIDGE_SECRET_KEY: 31 bytes, want 32; generate one with: " \
               "hookbridge-secret generate-key" in r.stderr
        assert bad not in r.stdout + r.stderr
