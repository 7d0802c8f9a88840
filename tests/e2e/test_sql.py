"""hookbridge-migrate and the SQL contract of schema hookbridge, against a real
PostgreSQL: migrations apply once and refuse a tampered history; the
subscription functions validate with distinct SQLSTATEs, default sensibly,
and notify the services."""
import base64
import hashlib
import json
import re
import select
import shutil
import time
import uuid

import psycopg2
import pytest

from hbtest.pg import MIGRATIONS, REPO
from hbtest.procs import SLOW, wait_until

URL = "https://hooks.example.com/okta"

# SQL against PostgreSQL only (conftest.py: the sanitizer pass skips these),
# except the hookbridge-migrate tests, marked runs_programs.
pytestmark = pytest.mark.sql_only


def sql(url, query, *args):
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall() if cur.description else None


def register(url, name="sub", endpoint=URL, types=("user.session.start",), options=None):
    return sql(url, "SELECT hookbridge.register(%s, %s, %s, %s::jsonb)", name, endpoint,
               list(types) if types is not None else None,
               json.dumps(options if options is not None else {}))[0][0]


def sqlstate_of(url, query, *args):
    with pytest.raises(psycopg2.Error) as e:
        sql(url, query, *args)
    return e.value.pgcode, str(e.value)


def listen(url, *channels):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        for ch in channels:
            cur.execute(f"LISTEN {ch}")
    return conn


def notifications(conn, want=1, timeout=3.0):
    """Collects (channel, payload) until `want` arrived or the timeout passed."""
    got = []
    deadline = time.monotonic() + timeout * SLOW
    while len(got) < want and time.monotonic() < deadline:
        if select.select([conn], [], [], 0.1)[0]:
            conn.poll()
            while conn.notifies:
                n = conn.notifies.pop(0)
                got.append((n.channel, n.payload))
    return got


# --- hookbridge-migrate ------------------------------------------------------


@pytest.mark.runs_programs
def test_migrate_up_applies_then_is_a_noop_and_status_shows_applied(pg_cluster):
    db = pg_cluster.create_database("mig")
    st = pg_cluster.migrate(db, "status")
    assert "0001_baseline.sql" in st.stdout and "pending" in st.stdout

    r = pg_cluster.migrate(db, "up")
    assert "applied 0001_baseline.sql" in r.stdout
    st = pg_cluster.migrate(db, "status")
    assert "0001_baseline.sql" in st.stdout and "applied" in st.stdout and "pending" not in st.stdout

    again = pg_cluster.migrate(db, "up")
    assert "up to date" in again.stdout and "applied 0001" not in again.stdout

    rows = sql(pg_cluster.url(db), "SELECT version, name, checksum "
               "FROM hookbridge.hookbridge_migrations ORDER BY version")
    want = [(int(f.name[:4]), f.stem[5:], hashlib.sha256(f.read_bytes()).hexdigest())
            for f in sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))]
    assert rows == want and rows[0][:2] == (1, "baseline")


@pytest.mark.runs_programs
def test_migrate_refuses_an_edited_applied_file(pg_cluster, tmp_path):
    mig = tmp_path / "migrations"
    mig.mkdir()
    shutil.copy(MIGRATIONS / "0001_baseline.sql", mig)
    db = pg_cluster.create_database("mig")
    pg_cluster.migrate(db, "up", migrations_dir=mig)

    with open(mig / "0001_baseline.sql", "a") as f:
        f.write("\n-- an innocent-looking edit\n")
    (mig / "0002_more.sql").write_text("CREATE TABLE hookbridge.should_not_exist (a int);\n")
    r = pg_cluster.migrate(db, "up", migrations_dir=mig, check=False)
    assert r.returncode == 1
    assert "0001_baseline.sql" in r.stderr and "changed" in r.stderr
    # Nothing after the refusal was applied.
    assert sql(pg_cluster.url(db), "SELECT to_regclass('hookbridge.should_not_exist')") == [(None,)]
    st = pg_cluster.migrate(db, "status", migrations_dir=mig, check=False)
    assert st.returncode == 1 and "0001_baseline.sql" in st.stderr


@pytest.mark.runs_programs
def test_migrate_refuses_when_an_applied_file_is_missing(pg_cluster, tmp_path):
    mig = tmp_path / "migrations"
    mig.mkdir()
    shutil.copy(MIGRATIONS / "0001_baseline.sql", mig)
    db = pg_cluster.create_database("mig")
    pg_cluster.migrate(db, "up", migrations_dir=mig)
    (mig / "0001_baseline.sql").rename(mig / "0002_baseline.sql")
    r = pg_cluster.migrate(db, "up", migrations_dir=mig, check=False)
    assert r.returncode == 1 and "0001_baseline.sql" in r.stderr and "missing" in r.stderr


@pytest.mark.runs_programs
def test_a_failing_migration_is_rolled_back_and_names_its_file(pg_cluster, tmp_path):
    mig = tmp_path / "migrations"
    mig.mkdir()
    shutil.copy(MIGRATIONS / "0001_baseline.sql", mig)
    (mig / "0002_broken.sql").write_text(
        "CREATE TABLE hookbridge.half (a int);\nSELECT 1;\nSELEC oops;\n")
    db = pg_cluster.create_database("mig")
    r = pg_cluster.migrate(db, "up", migrations_dir=mig, check=False)
    assert r.returncode == 1
    assert "0002_broken.sql" in r.stderr and "line 3" in r.stderr and "42601" in r.stderr
    url = pg_cluster.url(db)
    assert sql(url, "SELECT to_regclass('hookbridge.half')") == [(None,)]
    assert sql(url, "SELECT version FROM hookbridge.hookbridge_migrations") == [(1,)]


@pytest.mark.runs_programs
def test_migrate_unreachable_database_names_host_port_never_password(pg_cluster):
    env = {"HOOKBRIDGE_DATABASE_URL": "postgresql://hb:Sup3r-Secret-pw@127.0.0.1:1/hookbridge"}
    import subprocess
    from hbtest.procs import BIN
    r = subprocess.run([str(BIN / "hookbridge-migrate"), "up", "--dir", str(MIGRATIONS)],
                       env=env, capture_output=True, text=True, timeout=30 * SLOW)
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "127.0.0.1" in lines[0] and "port 1" in lines[0]
    assert "Sup3r-Secret-pw" not in r.stderr + r.stdout
    assert "postgresql://" not in r.stderr


# --- catalogue and register() --------------------------------------------------


def test_event_types_are_seeded_from_the_catalogue_file(db_url):
    want = []
    for line in (REPO / "schema" / "event_types.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, desc = line.split("\t", 1)
            want.append((name, desc))
    got = sql(db_url, "SELECT name, description FROM hookbridge.event_types")
    assert sorted(got) == sorted(want)


LONG_URL = "https://example.com/" + "a" * 2100


@pytest.mark.parametrize("kwargs,state,needle", [
    ({"endpoint": "ftp://example.com/hook"}, "HB002", "ftp"),
    ({"endpoint": "javascript:alert(1)"}, "HB002", "url"),
    ({"endpoint": "https://user:pw@example.com/hook"}, "HB002", "credentials"),
    ({"endpoint": "https:///nohost"}, "HB002", "host"),
    ({"endpoint": "https://example.com:70000/"}, "HB002", "port"),
    ({"endpoint": "https://exa mple.com/"}, "HB002", "whitespace"),
    ({"endpoint": LONG_URL}, "HB002", "2048"),
    ({"types": ["user.session.start", "user.nonexistent.thing"]}, "HB003",
     "user.nonexistent.thing"),
    ({"types": []}, "HB004", "event_types"),
    ({"types": None}, "HB004", "event_types"),
    ({"options": {"colour": "blue"}}, "HB005", "colour"),
    ({"options": {"format": "xml"}}, "HB006", "format"),
    ({"options": {"batch_max": 0}}, "HB006", "batch_max"),
    ({"options": {"batch_max": 101}}, "HB006", "batch_max"),
    ({"options": {"batch_max": 2.5}}, "HB006", "batch_max"),
    ({"options": {"batch_window_ms": 60001}}, "HB006", "batch_window_ms"),
    ({"options": {"timeout_ms": 99}}, "HB006", "timeout_ms"),
    ({"options": {"auth_header": "Bad Header", "auth_value": "x"}}, "HB006", "auth_header"),
    ({"options": {"auth_header": "X-Key", "auth_value": "a\r\nX-Evil: 1"}}, "HB006",
     "auth_value"),
    ({"options": {"auth_header": "X-Key"}}, "HB006", "together"),
    ({"options": {"secret": "whsec_c2hvcnQ="}}, "HB007", "whsec_"),
    ({"options": {"secret": "not-a-secret"}}, "HB007", "whsec_"),
    ({"name": ""}, "HB001", "name"),
    ({"name": "x" * 201}, "HB001", "200"),
])
def test_register_validation_errors(db_url, kwargs, state, needle):
    args = {"name": "sub", "endpoint": URL, "types": ["user.session.start"], "options": {}}
    args.update(kwargs)
    code, msg = sqlstate_of(db_url, "SELECT hookbridge.register(%s, %s, %s, %s::jsonb)",
                            args["name"], args["endpoint"], args["types"],
                            json.dumps(args["options"]))
    assert code == state, msg
    assert needle in msg
    # Nothing half-applied.
    assert sql(db_url, "SELECT count(*) FROM hookbridge.subscriptions") == [(0,)]
    assert sql(db_url, "SELECT count(*) FROM hookbridge.subscription_secrets") == [(0,)]


def test_register_errors_never_echo_secrets(db_url):
    _, msg = sqlstate_of(db_url, "SELECT hookbridge.register('s', %s, ARRAY['user.session.start'],"
                         " %s::jsonb)", URL,
                         json.dumps({"auth_header": "X-Key", "auth_value": "tok3n-\nvalue"}))
    assert "tok3n" not in msg
    _, msg = sqlstate_of(db_url, "SELECT hookbridge.register('s', %s, ARRAY['user.session.start'],"
                         " %s::jsonb)", URL, json.dumps({"secret": "whsec_SECRETSECRET"}))
    assert "SECRETSECRET" not in msg


def test_register_defaults(db_url):
    sub = register(db_url, types=["user.session.start", "user.session.start", "user.session.end"])
    uuid.UUID(sub)
    row = sql(db_url, "SELECT status, verification, options, auth_header, auth_value, "
              "verification_requested_at, deregistered_at FROM hookbridge.subscriptions "
              "WHERE id = %s", sub)[0]
    assert row == ("inactive", "unverified", {}, None, None, None, None)
    types = sql(db_url, "SELECT event_type FROM hookbridge.subscription_event_types "
                "WHERE subscription_id = %s ORDER BY 1", sub)
    assert types == [("user.session.end",), ("user.session.start",)]
    secret = sql(db_url, "SELECT hookbridge.signing_secret(%s)", sub)[0][0]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[len("whsec_"):], validate=True)) == 32
    # Each subscription gets its own secret.
    other = register(db_url)
    assert sql(db_url, "SELECT hookbridge.signing_secret(%s)", other)[0][0] != secret


def pending(db_url, sub, kind="auth"):
    """The plaintext a SQL function handed over for sealing (migration 0007):
    with no service running in these tests, it waits in the unlogged inbox."""
    rows = sql(db_url, "SELECT value FROM hookbridge.secret_inbox WHERE subscription_id = %s "
               "AND kind = %s AND sealed_at IS NULL ORDER BY id DESC LIMIT 1", sub, kind)
    return rows[0][0] if rows else None


def test_register_options_are_stored_without_credentials(db_url):
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    sub = register(db_url, options={"format": "cloudevents", "batch_max": 10,
                                    "batch_window_ms": 500, "timeout_ms": 2000,
                                    "auth_header": "Authorization", "auth_value": "Bearer t",
                                    "secret": secret})
    row = sql(db_url, "SELECT options, auth_header, auth_value FROM hookbridge.subscriptions "
              "WHERE id = %s", sub)[0]
    assert row == ({"format": "cloudevents", "batch_max": 10, "batch_window_ms": 500,
                    "timeout_ms": 2000}, "Authorization", None)
    # The value is not in the table but handed over for sealing.
    assert pending(db_url, sub) == "Bearer t"
    assert sql(db_url, "SELECT hookbridge.signing_secret(%s)", sub)[0][0] == secret


# --- lifecycle -------------------------------------------------------------------


def test_activate_requires_verification(db_url):
    sub = register(db_url)
    code, msg = sqlstate_of(db_url, "SELECT hookbridge.activate(%s)", sub)
    assert code == "HB011" and "not verified" in msg
    code, _ = sqlstate_of(db_url, "SELECT hookbridge.activate(%s)", str(uuid.uuid4()))
    assert code == "HB010"

    sql(db_url, "SELECT hookbridge.record_verification(%s, false, 'HTTP 404')", sub)
    code, _ = sqlstate_of(db_url, "SELECT hookbridge.activate(%s)", sub)
    assert code == "HB011"

    sql(db_url, "SELECT hookbridge.record_verification(%s, true, NULL)", sub)
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)  # idempotent
    assert sql(db_url, "SELECT status, verification FROM hookbridge.subscriptions "
               "WHERE id = %s", sub) == [("active", "verified")]


def test_failed_reverification_deactivates(db_url):
    sub = register(db_url)
    sql(db_url, "SELECT hookbridge.record_verification(%s, true)", sub)
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    sql(db_url, "SELECT hookbridge.record_verification(%s, false, 'wrong echo')", sub)
    assert sql(db_url, "SELECT status, verification, verification_error "
               "FROM hookbridge.subscriptions WHERE id = %s", sub) == [
        ("inactive", "failed", "wrong echo")]


def test_notify_on_register_activate_and_verify(db_url):
    conn = listen(db_url, "hookbridge_subscriptions", "hookbridge_verify")
    try:
        sub = register(db_url)
        assert ("hookbridge_subscriptions", sub) in notifications(conn)

        sql(db_url, "SELECT hookbridge.verify(%s)", sub)
        got = notifications(conn)
        assert got == [("hookbridge_verify", sub)]  # the request alone changes no snapshot

        sql(db_url, "SELECT hookbridge.record_verification(%s, true)", sub)
        assert notifications(conn) == [("hookbridge_subscriptions", sub)]
        sql(db_url, "SELECT hookbridge.activate(%s)", sub)
        assert notifications(conn) == [("hookbridge_subscriptions", sub)]

        sql(db_url, "SELECT hookbridge.subscribe(%s, ARRAY['user.lifecycle.create'])", sub)
        assert ("hookbridge_subscriptions", sub) in notifications(conn)
        sql(db_url, "SELECT hookbridge.deregister(%s)", sub)
        assert ("hookbridge_subscriptions", sub) in notifications(conn)
    finally:
        conn.close()


def test_claim_verification_is_claimed_once(db_url):
    sub = register(db_url)
    assert sql(db_url, "SELECT hookbridge.claim_verification(%s)", sub) == [(None,)]
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert sql(db_url, "SELECT hookbridge.claim_verification(%s)", sub) == [(sub,)]
    assert sql(db_url, "SELECT hookbridge.claim_verification(%s)", sub) == [(None,)]


def test_claim_verification_races_between_replicas(db_url):
    """Two replicas claim concurrently: the second blocks on the row lock, then
    finds the request gone."""
    sub = register(db_url)
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    a = psycopg2.connect(db_url)
    b = psycopg2.connect(db_url, async_=1)
    try:
        wait(b)
        ca = a.cursor()
        ca.execute("SELECT hookbridge.claim_verification(%s)", (sub,))  # lock held until commit
        assert ca.fetchone() == (sub,)
        cb = b.cursor()
        cb.execute("SELECT hookbridge.claim_verification(%s)", (sub,))
        time.sleep(0.3)
        assert b.poll() != psycopg2.extensions.POLL_OK  # still waiting for the row
        a.commit()
        wait(b)
        assert cb.fetchone() == (None,)
    finally:
        a.close()
        b.close()


def claim(url, sub, lease="1 minute"):
    return sql(url, "SELECT hookbridge.claim_verification(%s, %s::interval)", sub, lease)[0][0]


def test_a_claimed_verification_stays_requested_and_is_claimable_again_after_its_lease(db_url):
    """A dispatcher that dies between claiming and recording loses nothing:
    the request stays, and another claims it once the lease has run out."""
    sub = register(db_url)
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    conn = listen(db_url, "hookbridge_subscriptions")
    try:
        t0 = time.monotonic()
        assert claim(db_url, sub, "1 second") == sub
        assert notifications(conn, timeout=0.3) == []  # bookkeeping: nothing for the services
    finally:
        conn.close()
    assert row(db_url, sub, "verification_requested_at IS NOT NULL, "
               "verification_claimed_until > now()") == (True, True)
    assert claim(db_url, sub, "1 second") is None  # within the lease: held
    wait_until(lambda: claim(db_url, sub, "1 minute") == sub, 10 * SLOW, "the lease to expire")
    assert time.monotonic() - t0 >= 1.0
    assert claim(db_url, sub) is None  # the new claim holds it


def test_record_verification_ends_the_request(db_url):
    sub = register(db_url)
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert claim(db_url, sub, "1 millisecond") == sub
    sql(db_url, "SELECT hookbridge.record_verification(%s, true, NULL, %s)", sub, URL)
    assert row(db_url, sub, "verification, verification_requested_at, "
               "verification_claimed_until") == ("verified", None, None)
    assert claim(db_url, sub) is None  # the lease expired long ago, but nothing is requested
    # A failure ends it too.
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert claim(db_url, sub) == sub
    sql(db_url, "SELECT hookbridge.record_verification(%s, false, 'HTTP 404', %s)", sub, URL)
    assert row(db_url, sub, "verification, verification_requested_at, "
               "verification_claimed_until") == ("failed", None, None)
    assert claim(db_url, sub, "1 millisecond") is None


def test_a_new_request_or_url_can_be_claimed_at_once_despite_a_lease(db_url):
    sub = verified_active(db_url)
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert claim(db_url, sub) == sub
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)  # asked again: a new challenge
    assert claim(db_url, sub) == sub
    sql(db_url, "SELECT hookbridge.update(%s, url => 'https://moved.example.com/')", sub)
    assert claim(db_url, sub) == sub  # the claim held was for the old URL
    # The old URL's outcome is ignored: the new URL's request stays.
    sql(db_url, "SELECT hookbridge.record_verification(%s, true, NULL, %s)", sub, URL)
    assert row(db_url, sub, "verification, verification_requested_at IS NOT NULL") == (
        "unverified", True)
    code, _ = sqlstate_of(db_url, "SELECT hookbridge.claim_verification(%s, interval '0')", sub)
    assert code == "HB012"


def wait(conn):
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        if state == psycopg2.extensions.POLL_READ:
            select.select([conn.fileno()], [], [], 5)
        elif state == psycopg2.extensions.POLL_WRITE:
            select.select([], [conn.fileno()], [], 5)


def test_unknown_and_deregistered_ids_are_not_found(db_url):
    sub = register(db_url)
    sql(db_url, "SELECT hookbridge.deregister(%s)", sub)
    for fn in ("verify", "activate", "deactivate", "deregister", "signing_secret",
               "rotate_secret"):
        code, _ = sqlstate_of(db_url, f"SELECT hookbridge.{fn}(%s)", sub)
        assert code == "HB010", fn
    # History is kept, credentials are not.
    row = sql(db_url, "SELECT status, auth_value, deregistered_at IS NOT NULL "
              "FROM hookbridge.subscriptions WHERE id = %s", sub)
    assert row == [("inactive", None, True)]
    assert sql(db_url, "SELECT count(*) FROM hookbridge.subscription_secrets "
               "WHERE subscription_id = %s", sub) == [(0,)]
    assert sql(db_url, "SELECT count(*) FROM hookbridge.secret_inbox "
               "WHERE subscription_id = %s", sub) == [(0,)]


def test_subscribe_unsubscribe(db_url):
    sub = register(db_url, types=["user.session.start"])
    sql(db_url, "SELECT hookbridge.subscribe(%s, ARRAY['user.session.end', 'user.session.start'])",
        sub)
    code, msg = sqlstate_of(db_url, "SELECT hookbridge.subscribe(%s, ARRAY['nope.nope'])", sub)
    assert code == "HB003" and "nope.nope" in msg
    sql(db_url, "SELECT hookbridge.unsubscribe(%s, ARRAY['user.session.start'])", sub)
    code, _ = sqlstate_of(db_url, "SELECT hookbridge.unsubscribe(%s, ARRAY['user.session.end'])",
                          sub)
    assert code == "HB004"
    assert sql(db_url, "SELECT event_type FROM hookbridge.subscription_event_types "
               "WHERE subscription_id = %s", sub) == [("user.session.end",)]


def test_rotate_secret_keeps_the_previous_one_for_the_grace_period(db_url):
    sub = register(db_url)
    old = sql(db_url, "SELECT hookbridge.signing_secret(%s)", sub)[0][0]
    new = sql(db_url, "SELECT hookbridge.rotate_secret(%s, interval '1 hour')", sub)[0][0]
    assert new != old and new.startswith("whsec_")
    assert sql(db_url, "SELECT hookbridge.signing_secret(%s)", sub)[0][0] == new
    rows = sql(db_url, "SELECT i.value, sec.expires_at > now() + interval '50 minutes' "
               "FROM hookbridge.subscription_secrets sec "
               "JOIN hookbridge.secret_inbox i ON i.secret_id = sec.id "
               "WHERE sec.subscription_id = %s "
               "AND (sec.expires_at IS NULL OR sec.expires_at > now()) ORDER BY sec.id", sub)
    assert rows == [(old, True), (new, None)]
    # A second rotation retires the oldest at once: at most two secrets sign.
    sql(db_url, "SELECT hookbridge.rotate_secret(%s)", sub)
    live = sql(db_url, "SELECT count(*) FROM hookbridge.subscription_secrets "
               "WHERE subscription_id = %s AND (expires_at IS NULL OR expires_at > now())", sub)
    assert live == [(2,)]


def test_active_implies_verified_is_enforced_by_the_table(db_url):
    sub = register(db_url)
    code, _ = sqlstate_of(db_url, "UPDATE hookbridge.subscriptions SET status = 'active' "
                          "WHERE id = %s", sub)
    assert code == "23514"


# --- 0003: update(), limits, validation everywhere, views ---------------------

SNAPSHOT = """
SELECT (SELECT jsonb_agg(to_jsonb(s) ORDER BY s.id) FROM hookbridge.subscriptions s),
       (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.subscription_id, t.event_type)
          FROM hookbridge.subscription_event_types t),
       (SELECT jsonb_agg(to_jsonb(x) ORDER BY x.id) FROM hookbridge.subscription_secrets x),
       (SELECT jsonb_agg(to_jsonb(l) ORDER BY l.name) FROM hookbridge.limits l)
"""

AUTH = {"auth_header": "X-Api-Key", "auth_value": "k3y-value"}


def verified_active(url, **kw):
    sub = register(url, **kw)
    sql(url, "SELECT hookbridge.record_verification(%s, true)", sub)
    sql(url, "SELECT hookbridge.activate(%s)", sub)
    return sub


def row(url, sub, cols):
    return sql(url, f"SELECT {cols} FROM hookbridge.subscriptions WHERE id = %s", sub)[0]


# Every way a call can be refused, with its SQLSTATE and a word the message
# must contain. SUB: a live subscription (types user.session.start, auth
# header X-Api-Key); GONE: a deregistered one; NOID: an id never registered.
# The limit max_event_types_per_subscription is 3 in these cases.
VALIDATION_CASES = [
    # unknown, deregistered and NULL ids, for every function taking one
    *[(f"SELECT hookbridge.{fn}(%s{extra})", [who], code, needle)
      for fn, extra in [("verify", ""), ("activate", ""), ("deactivate", ""),
                        ("deregister", ""), ("signing_secret", ""), ("rotate_secret", ""),
                        ("update", ""), ("subscribe", ", ARRAY['user.session.end']"),
                        ("unsubscribe", ", ARRAY['user.session.start']")]
      for who, code, needle in [("NOID", "HB010", "not found"), ("GONE", "HB010", "deregistered"),
                                (None, "HB015", "NULL")]],
    ("SELECT hookbridge.record_verification(%s, true)", [None], "HB015", "NULL"),
    ("SELECT hookbridge.record_verification(%s, NULL)", ["SUB"], "HB012", "ok"),
    # update: url
    ("SELECT hookbridge.update(%s, url => %s)", ["SUB", "ftp://example.com/x"], "HB002", "ftp"),
    ("SELECT hookbridge.update(%s, url => %s)", ["SUB", "https://u:p@example.com/"], "HB002",
     "credentials"),
    ("SELECT hookbridge.update(%s, url => %s)", ["SUB", ""], "HB002", "empty"),
    ("SELECT hookbridge.update(%s, url => %s)", ["SUB", "https://example.com:0/"], "HB002",
     "port"),
    ("SELECT hookbridge.update(%s, url => %s)", ["SUB", LONG_URL], "HB002", "2048"),
    # update: name
    ("SELECT hookbridge.update(%s, name => %s)", ["SUB", "  "], "HB001", "empty"),
    ("SELECT hookbridge.update(%s, name => %s)", ["SUB", "n" * 201], "HB001", "200"),
    # update: options (a valid url in the same call must not be applied either)
    ("SELECT hookbridge.update(%s, url => 'https://new.example.com/', options => %s::jsonb)",
     ["SUB", '{"colour": "red"}'], "HB005", "colour"),
    ("SELECT hookbridge.update(%s, options => %s::jsonb)", ["SUB", '[1]'], "HB006", "object"),
    ("SELECT hookbridge.update(%s, options => %s::jsonb)", ["SUB", '{"format": "xml"}'],
     "HB006", "format"),
    ("SELECT hookbridge.update(%s, options => %s::jsonb)", ["SUB", '{"timeout_ms": 1}'],
     "HB006", "timeout_ms"),
    ("SELECT hookbridge.update(%s, options => %s::jsonb)", ["SUB", '{"auth_value": "x"}'],
     "HB006", "together"),
    ("SELECT hookbridge.update(%s, options => %s::jsonb)", ["SUB", '{"auth_header": null}'],
     "HB006", "auth_header"),
    ("SELECT hookbridge.update(%s, name => 'renamed', options => %s::jsonb)",
     ["SUB", '{"secret": "whsec_c2hvcnQ="}'], "HB007", "whsec_"),
    # event types
    ("SELECT hookbridge.subscribe(%s, %s)", ["SUB", ["user.session.end", "no.such.type"]],
     "HB003", "no.such.type"),
    ("SELECT hookbridge.subscribe(%s, %s)", ["SUB", None], "HB004", "empty"),
    ("SELECT hookbridge.subscribe(%s, %s)", ["SUB", ["user.session.end", None]], "HB004", "NULL"),
    ("SELECT hookbridge.subscribe(%s, %s)",
     ["SUB", ["user.session.end", "user.account.lock", "user.account.unlock"]], "HB014",
     "at most 3"),
    ("SELECT hookbridge.register('big', %s, %s)",
     [URL, ["user.session.end", "user.account.lock", "user.account.unlock",
            "user.lifecycle.create"]], "HB014", "max_event_types"),
    ("SELECT hookbridge.unsubscribe(%s, %s)", ["SUB", ["user.session.start"]], "HB004",
     "at least one"),
    ("SELECT hookbridge.unsubscribe(%s, %s)", ["SUB", ["no.such.type"]], "HB003", "no.such"),
    ("SELECT hookbridge.unsubscribe(%s, %s)", ["SUB", []], "HB004", "empty"),
    # rotate_secret
    ("SELECT hookbridge.rotate_secret(%s, interval '8 days')", ["SUB"], "HB006", "grace"),
    ("SELECT hookbridge.rotate_secret(%s, interval '-1 second')", ["SUB"], "HB006", "grace"),
    ("SELECT hookbridge.rotate_secret(%s, NULL)", ["SUB"], "HB006", "grace"),
    ("SELECT hookbridge.rotate_secret(%s, interval '1 hour', 'whsec_!!')", ["SUB"], "HB007",
     "whsec_"),
    # activate needs verification
    ("SELECT hookbridge.activate(%s)", ["SUB"], "HB011", "not verified"),
    # limits
    ("SELECT hookbridge.limit(%s)", ["max_nothing"], "HB012", "max_nothing"),
    ("UPDATE hookbridge.limits SET value = 0 WHERE name = %s", ["max_headers"], "23514",
     "limits"),
    # plain SQL on the table follows the same rules
    ("UPDATE hookbridge.subscriptions SET url = 'gopher://x/' WHERE id = %s", ["SUB"], "HB002",
     "gopher"),
    ("UPDATE hookbridge.subscriptions SET name = '' WHERE id = %s", ["SUB"], "HB001", "empty"),
    ("UPDATE hookbridge.subscriptions SET status = 'active' WHERE id = %s", ["SUB"], "23514",
     "not verified"),
    ("INSERT INTO hookbridge.subscriptions (name, url) VALUES ('raw', %s)",
     ["https://a:b@example.com/"], "HB002", "credentials"),
]


@pytest.mark.parametrize("query,args,state,needle", VALIDATION_CASES,
                         ids=[f"{c[2]}-{i}-{c[0].split('(')[0].split('.')[-1][:20]}"
                              for i, c in enumerate(VALIDATION_CASES)])
def test_every_refusal_has_its_sqlstate_and_changes_nothing(db_url, query, args, state, needle):
    sub = register(db_url, options=AUTH)
    gone = register(db_url, name="gone")
    sql(db_url, "SELECT hookbridge.deregister(%s)", gone)
    sql(db_url, "UPDATE hookbridge.limits SET value = 3 "
        "WHERE name = 'max_event_types_per_subscription'")
    names = {"SUB": sub, "GONE": gone, "NOID": str(uuid.uuid4())}
    real = [names.get(a, a) if isinstance(a, str) else a for a in args]
    before = sql(db_url, SNAPSHOT)
    code, msg = sqlstate_of(db_url, query, *real)
    assert code == state, msg
    assert needle in msg, msg
    assert "k3y-value" not in msg  # the auth value is never echoed
    # Nothing half-applied: every subscription, event type, secret and limit as before.
    assert sql(db_url, SNAPSHOT) == before


def test_limits_have_documented_defaults_and_apply_at_once(db_url):
    got = dict(sql(db_url, "SELECT name, value FROM hookbridge.limits"))
    assert got == {"max_event_types_per_subscription": 50, "max_headers": 20,
                   "max_header_bytes": 8192, "max_name_length": 200,
                   "recent_deliveries_days": 7, "secret_reveal_seconds": 900,
                   "delivery_log_retention_days": 30}
    assert sql(db_url, "SELECT hookbridge.limit('max_headers')") == [(20,)]
    sql(db_url, "UPDATE hookbridge.limits SET value = 10 WHERE name = 'max_name_length'")
    code, msg = sqlstate_of(db_url, "SELECT hookbridge.register(%s, %s, %s)",
                            "eleven-char", URL, ["user.session.start"])
    assert code == "HB001" and "longer than 10" in msg
    sql(db_url, "UPDATE hookbridge.limits SET value = 300 WHERE name = 'max_name_length'")
    assert register(db_url, name="x" * 300)


def test_subscriptions_per_event_type_are_unlimited(db_url):
    sql(db_url, "UPDATE hookbridge.limits SET value = 1 "
        "WHERE name = 'max_event_types_per_subscription'")
    for i in range(120):
        register(db_url, name=f"s{i}", types=["user.session.start"])
    assert sql(db_url, "SELECT count(*) FROM hookbridge.subscription_event_types "
               "WHERE event_type = 'user.session.start'") == [(120,)]
    # The whole catalogue fits in one subscription under the default limit.
    sql(db_url, "UPDATE hookbridge.limits SET value = 50 "
        "WHERE name = 'max_event_types_per_subscription'")
    sub = register(db_url)
    sql(db_url, "SELECT hookbridge.subscribe(%s, ARRAY(SELECT name FROM hookbridge.event_types))",
        sub)


def test_update_url_requires_verification_again_and_active_stays_active(db_url):
    sub = verified_active(db_url)
    conn = listen(db_url, "hookbridge_subscriptions", "hookbridge_verify")
    try:
        sql(db_url, "SELECT hookbridge.update(%s, url => %s)", sub,
            "https://moved.example.com/okta")
        got = notifications(conn, want=2)
        assert sorted(got) == [("hookbridge_subscriptions", sub), ("hookbridge_verify", sub)]
        assert row(db_url, sub, "url, status, verification, verified_at, "
                   "verification_requested_at IS NOT NULL") == (
            "https://moved.example.com/okta", "active", "unverified", None, True)
        # Not deliverable now; activate() says why.
        code, msg = sqlstate_of(db_url, "SELECT hookbridge.activate(%s)", sub)
        assert code == "HB011" and "resume" in msg
        # The new URL answers the challenge: deliveries resume without activate().
        assert sql(db_url, "SELECT hookbridge.claim_verification(%s)", sub) == [(sub,)]
        sql(db_url, "SELECT hookbridge.record_verification(%s, true, NULL, %s)", sub,
            "https://moved.example.com/okta")
        assert row(db_url, sub, "status, verification") == ("active", "verified")

        # The same URL again: nothing to verify, nothing notified.
        notifications(conn, want=99, timeout=0.3)
        sql(db_url, "SELECT hookbridge.update(%s, url => %s)", sub,
            "https://moved.example.com/okta")
        assert notifications(conn, want=1, timeout=0.5) == []
        assert row(db_url, sub, "verification, verification_requested_at") == ("verified", None)
    finally:
        conn.close()


def test_a_plain_sql_url_change_also_requires_verification(db_url):
    sub = verified_active(db_url)
    sql(db_url, "UPDATE hookbridge.subscriptions SET url = 'https://other.example.com/' "
        "WHERE id = %s", sub)
    assert row(db_url, sub, "status, verification, verification_requested_at IS NOT NULL") == (
        "active", "unverified", True)


def test_failed_verification_of_a_new_url_deactivates_and_says_why(db_url):
    sub = verified_active(db_url)
    sql(db_url, "SELECT hookbridge.update(%s, url => 'https://broken.example.com/')", sub)
    sql(db_url, "SELECT hookbridge.record_verification(%s, false, 'timeout after 10000 ms')", sub)
    assert row(db_url, sub, "status, verification, verification_error, "
               "verification_failed_at IS NOT NULL") == (
        "inactive", "failed", "timeout after 10000 ms", True)
    ov = sql(db_url, "SELECT verification, verification_at IS NOT NULL, verification_error, "
             "health FROM hookbridge.subscription_overview WHERE id = %s", sub)
    assert ov == [("failed", True, "timeout after 10000 ms", "inactive")]


def test_an_outcome_for_the_old_url_is_ignored(db_url):
    """The URL changes while the old one's challenge is in flight: its answer
    must not verify the new URL."""
    sub = verified_active(db_url, endpoint="https://old.example.com/")
    sql(db_url, "SELECT hookbridge.update(%s, url => 'https://new.example.com/')", sub)
    sql(db_url, "SELECT hookbridge.record_verification(%s, true, NULL, 'https://old.example.com/')",
        sub)
    assert row(db_url, sub, "verification") == ("unverified",)
    sql(db_url, "SELECT hookbridge.record_verification(%s, false, 'HTTP 500', "
        "'https://old.example.com/')", sub)
    assert row(db_url, sub, "status, verification") == ("active", "unverified")


def test_update_name_and_options(db_url):
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    sub = register(db_url, options={**AUTH, "format": "event", "secret": secret})
    old_secret = secret
    # options replace the stored options; the auth header is kept when not given.
    sql(db_url, "SELECT hookbridge.update(%s, name => 'renamed', options => %s::jsonb)", sub,
        json.dumps({"format": "cloudevents", "batch_max": 5}))
    assert row(db_url, sub, "name, options, auth_header, auth_pending IS NOT NULL, verification") \
        == ("renamed", {"format": "cloudevents", "batch_max": 5}, "X-Api-Key", True, "unverified")
    assert pending(db_url, sub) == "k3y-value"  # kept as it was handed over
    # Given: replaced.
    sql(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", sub,
        json.dumps({"auth_header": "Authorization", "auth_value": "Bearer new"}))
    assert row(db_url, sub, "options, auth_header, auth_value") == ({}, "Authorization", None)
    assert pending(db_url, sub) == "Bearer new"
    assert sql(db_url, "SELECT count(*) FROM hookbridge.secret_inbox WHERE subscription_id = %s "
               "AND kind = 'auth'", sub) == [(1,)]  # the superseded one is gone
    # Both JSON null: removed.
    sql(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", sub,
        json.dumps({"auth_header": None, "auth_value": None, "timeout_ms": 5000}))
    assert row(db_url, sub, "options, auth_header, auth_pending") == ({"timeout_ms": 5000}, None,
                                                                     None)
    assert pending(db_url, sub) is None
    # A secret in options becomes the only signing secret at once.
    new_secret = "whsec_" + base64.b64encode(b"n" * 32).decode()
    sql(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", sub,
        json.dumps({"secret": new_secret}))
    assert sql(db_url, "SELECT hookbridge.signing_secret(%s)", sub) == [(new_secret,)]
    live = sql(db_url, "SELECT i.value FROM hookbridge.subscription_secrets sec "
               "JOIN hookbridge.secret_inbox i ON i.secret_id = sec.id "
               "WHERE sec.subscription_id = %s "
               "AND (sec.expires_at IS NULL OR sec.expires_at > now())", sub)
    assert live == [(new_secret,)] and old_secret != new_secret
    assert row(db_url, sub, "options") == ({},)  # the secret is never in options


def test_update_with_nothing_to_change_changes_nothing(db_url):
    sub = register(db_url, options={"format": "okta"})
    before = sql(db_url, SNAPSHOT)
    conn = listen(db_url, "hookbridge_subscriptions", "hookbridge_verify")
    try:
        sql(db_url, "SELECT hookbridge.update(%s)", sub)
        sql(db_url, "SELECT hookbridge.update(%s, url => %s, name => 'sub', "
            "options => '{\"format\": \"okta\"}')", sub, URL)
        assert notifications(conn, want=1, timeout=0.5) == []
    finally:
        conn.close()
    assert sql(db_url, SNAPSHOT) == before  # not even updated_at


def test_deregistered_is_gone_from_views_history_stays_and_same_url_is_new(db_url):
    sub = verified_active(db_url, endpoint="https://again.example.com/hook")
    insert_delivery(db_url, sub, "delivered", hours_ago=1)
    sql(db_url, "SELECT hookbridge.deregister(%s)", sub)
    assert sql(db_url, "SELECT count(*) FROM hookbridge.subscription_overview") == [(0,)]
    assert sql(db_url, "SELECT count(*) FROM hookbridge.recent_deliveries") == [(0,)]
    assert sql(db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE subscription_id = %s",
               sub) == [(1,)]
    again = register(db_url, endpoint="https://again.example.com/hook")
    assert again != sub
    assert sql(db_url, "SELECT id, status, verification FROM hookbridge.subscription_overview") == [
        (again, "inactive", "unverified")]
    sql(db_url, "SELECT hookbridge.verify(%s)", again)  # the new one is live; the old one is not
    code, _ = sqlstate_of(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert code == "HB010"


def insert_delivery(url, sub, status, hours_ago, attempts=1, etype="user.session.start",
                    http=200, error=None):
    did = str(uuid.uuid4())
    sql(url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
        "event_type, status, attempts, first_attempt_at, last_attempt_at, last_http_status, "
        "last_error, created_at) VALUES (%s, %s, %s, %s, %s, %s, now() - %s * interval '1 hour', "
        "now() - %s * interval '1 hour', %s, %s, now() - %s * interval '1 hour')",
        did, sub, str(uuid.uuid4()), etype, status, attempts, hours_ago, hours_ago, http, error,
        hours_ago)
    if attempts > 0:  # its last attempt too, as the services log it (endpoint_health follows)
        sql(url, "INSERT INTO hookbridge.delivery_attempts (delivery_id, subscription_id, "
            "attempt, started_at, http_status, outcome, error) "
            "VALUES (%s, %s, %s, now() - %s * interval '1 hour', %s, %s, %s)",
            did, sub, attempts, hours_ago, http, status, error)
    return did


def test_subscription_overview_counts_and_health(db_url):
    a = verified_active(db_url, name="a", types=["user.session.start", "user.account.lock"],
                        options={"format": "cloudevents"})
    for h in (30, 5, 4):
        insert_delivery(db_url, a, "delivered", h)
    insert_delivery(db_url, a, "failed", 26, http=500, error="HTTP 500")  # older than 24 h
    insert_delivery(db_url, a, "dropped", 3, attempts=0, http=None)
    ov = sql(db_url, "SELECT name, event_types, status, verification, format, delivered_24h, "
             "failed_24h, dropped_24h, consecutive_failures, health, "
             "last_delivered_at > now() - interval '4 hours 1 minute' "
             "FROM hookbridge.subscription_overview WHERE id = %s", a)
    assert ov == [("a", ["user.account.lock", "user.session.start"], "active", "verified",
                   "cloudevents", 2, 0, 1, 0, "healthy", True)]

    # Two deliveries fail after the last success: failing, with the count.
    insert_delivery(db_url, a, "failed", 2, http=503, error="HTTP 503")
    insert_delivery(db_url, a, "failed", 1, http=None, error="timeout after 10000 ms")
    assert sql(db_url, "SELECT failed_24h, consecutive_failures, health, "
               "last_failed_at > now() - interval '61 minutes' "
               "FROM hookbridge.subscription_overview WHERE id = %s", a) == [
        (2, 2, "failing", True)]
    # A success ends the streak.
    insert_delivery(db_url, a, "delivered", 0)
    assert sql(db_url, "SELECT consecutive_failures, health, failing_since "
               "FROM hookbridge.subscription_overview WHERE id = %s", a) == [(0, "healthy", None)]
    # An endpoint failing every attempt while its deliveries are still being
    # retried (none failed for good yet: up to the whole schedule, about 28 h)
    # is failing too, since when its attempts began to fail. Before, it was
    # 'healthy' until a delivery failed for good.
    insert_delivery(db_url, a, "retry", 0, http=503, error="HTTP 503")
    assert sql(db_url, "SELECT consecutive_failures, health, failing_since > now() - "
               "interval '1 minute' FROM hookbridge.subscription_overview WHERE id = %s", a) == [
        (0, "failing", True)]

    b = register(db_url, name="b")
    assert sql(db_url, "SELECT format, delivered_24h, last_delivered_at, health, verification_at "
               "FROM hookbridge.subscription_overview WHERE id = %s", b) == [
        ("okta", 0, None, "inactive", None)]
    sql(db_url, "SELECT hookbridge.deactivate(%s)", a)
    assert sql(db_url, "SELECT health FROM hookbridge.subscription_overview WHERE id = %s",
               a) == [("inactive",)]
    sql(db_url, "SELECT hookbridge.record_verification(%s, true)", a)
    sql(db_url, "SELECT hookbridge.activate(%s)", a)
    sql(db_url, "SELECT hookbridge.update(%s, url => 'https://elsewhere.example.com/')", a)
    assert sql(db_url, "SELECT status, health FROM hookbridge.subscription_overview "
               "WHERE id = %s", a) == [("active", "unverified")]


def test_recent_deliveries_shows_the_last_days_with_the_subscription_name(db_url):
    a = register(db_url, name="alpha")
    new = insert_delivery(db_url, a, "failed", 2, attempts=4, http=502, error="HTTP 502")
    insert_delivery(db_url, a, "delivered", 24 * 8)  # older than the 7 days shown
    rows = sql(db_url, "SELECT delivery_id, subscription_name, status, attempts, "
               "last_http_status, last_error FROM hookbridge.recent_deliveries")
    assert rows == [(new, "alpha", "failed", 4, 502, "HTTP 502")]
    sql(db_url, "UPDATE hookbridge.limits SET value = 9 WHERE name = 'recent_deliveries_days'")
    assert sql(db_url, "SELECT count(*) FROM hookbridge.recent_deliveries") == [(2,)]


def test_the_views_use_indexes(db_url):
    """With many subscriptions and deliveries, one subscription's overview row
    is found through indexes, not by scanning the delivery log."""
    sql(db_url, """
        INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, event_type,
                                           status, attempts, last_attempt_at, created_at)
        SELECT gen_random_uuid(),
               ('00000000-0000-0000-0000-' || lpad(mod(g, 500)::text, 12, '0'))::uuid,
               'e', 'user.session.start',
               (ARRAY['delivered', 'failed', 'dropped'])[1 + mod(g, 3)], 1,
               now() - g * interval '1 minute', now() - g * interval '1 minute'
          FROM generate_series(1, 20000) g""")
    sub = register(db_url)
    sql(db_url, "ANALYZE hookbridge.deliveries")
    plan = "\n".join(r[0] for r in sql(
        db_url, "EXPLAIN SELECT * FROM hookbridge.subscription_overview WHERE id = %s", sub))
    # (the log is partitioned by day: only partitions without rows may be scanned)
    for part in re.findall(r"Seq Scan on (deliveries\w*)", plan):
        assert sql(db_url, f"SELECT count(*) FROM hookbridge.{part}") == [(0,)], plan
    assert "deliveries_sub_time_idx" in plan or "subscription_id_created_at_idx" in plan, plan


def test_the_recipes_in_docs_sql_md_work(db_url):
    sub = register(db_url, endpoint="https://old.example.com/okta",
                   options={**AUTH, "format": "event"})
    # Change one option, keep the others (and the auth header).
    sql(db_url, "SELECT hookbridge.update_options(%s, '{\"batch_max\": 20}')", sub)
    assert row(db_url, sub, "options, auth_header") == ({"format": "event", "batch_max": 20},
                                                        "X-Api-Key")
    # Remove the auth header.
    sql(db_url, "SELECT hookbridge.update_options(%s, "
        "'{\"auth_header\": null, \"auth_value\": null}')", sub)
    assert row(db_url, sub, "options, auth_header, auth_value") == (
        {"format": "event", "batch_max": 20}, None, None)
    # Move every subscription from one host to another.
    sql(db_url, "SELECT hookbridge.update(id, url => replace(url, 'old.example.com', "
        "'new.example.com')) FROM hookbridge.subscription_overview "
        "WHERE url LIKE 'https://old.example.com/%%'")
    assert row(db_url, sub, "url, verification_requested_at IS NOT NULL") == (
        "https://new.example.com/okta", True)
