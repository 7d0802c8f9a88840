"""hookbridge-migrate and the SQL contract of schema hookbridge, against a real
PostgreSQL: migrations apply once and refuse a tampered history; the
subscription functions validate with distinct SQLSTATEs, default sensibly,
and notify the services."""
import base64
import hashlib
import json
import select
import shutil
import time
import uuid

import psycopg2
import pytest

from hbtest.pg import MIGRATIONS, REPO, db_url, pg_cluster  # noqa: F401 (fixtures)
from hbtest.procs import SLOW

URL = "https://hooks.example.com/okta"


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


def test_migrate_up_applies_then_is_a_noop_and_status_shows_applied(pg_cluster):
    db = pg_cluster.create_database("mig")
    st = pg_cluster.migrate(db, "status")
    assert "0001_init.sql" in st.stdout and "pending" in st.stdout

    r = pg_cluster.migrate(db, "up")
    assert "applied 0001_init.sql" in r.stdout
    st = pg_cluster.migrate(db, "status")
    assert "0001_init.sql" in st.stdout and "applied" in st.stdout and "pending" not in st.stdout

    again = pg_cluster.migrate(db, "up")
    assert "up to date" in again.stdout and "applied 0001" not in again.stdout

    rows = sql(pg_cluster.url(db), "SELECT version, name, checksum "
               "FROM hookbridge.hookbridge_migrations ORDER BY version")
    want = [(int(f.name[:4]), f.stem[5:], hashlib.sha256(f.read_bytes()).hexdigest())
            for f in sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))]
    assert rows == want and rows[0][:2] == (1, "init")


def test_migrate_refuses_an_edited_applied_file(pg_cluster, tmp_path):
    mig = tmp_path / "migrations"
    mig.mkdir()
    shutil.copy(MIGRATIONS / "0001_init.sql", mig)
    db = pg_cluster.create_database("mig")
    pg_cluster.migrate(db, "up", migrations_dir=mig)

    with open(mig / "0001_init.sql", "a") as f:
        f.write("\n-- an innocent-looking edit\n")
    (mig / "0002_more.sql").write_text("CREATE TABLE hookbridge.should_not_exist (a int);\n")
    r = pg_cluster.migrate(db, "up", migrations_dir=mig, check=False)
    assert r.returncode == 1
    assert "0001_init.sql" in r.stderr and "changed" in r.stderr
    # Nothing after the refusal was applied.
    assert sql(pg_cluster.url(db), "SELECT to_regclass('hookbridge.should_not_exist')") == [(None,)]
    st = pg_cluster.migrate(db, "status", migrations_dir=mig, check=False)
    assert st.returncode == 1 and "0001_init.sql" in st.stderr


def test_migrate_refuses_when_an_applied_file_is_missing(pg_cluster, tmp_path):
    mig = tmp_path / "migrations"
    mig.mkdir()
    shutil.copy(MIGRATIONS / "0001_init.sql", mig)
    db = pg_cluster.create_database("mig")
    pg_cluster.migrate(db, "up", migrations_dir=mig)
    (mig / "0001_init.sql").rename(mig / "0002_init.sql")
    r = pg_cluster.migrate(db, "up", migrations_dir=mig, check=False)
    assert r.returncode == 1 and "0001_init.sql" in r.stderr and "missing" in r.stderr


def test_a_failing_migration_is_rolled_back_and_names_its_file(pg_cluster, tmp_path):
    mig = tmp_path / "migrations"
    mig.mkdir()
    shutil.copy(MIGRATIONS / "0001_init.sql", mig)
    (mig / "0002_broken.sql").write_text(
        "CREATE TABLE hookbridge.half (a int);\nSELECT 1;\nSELEC oops;\n")
    db = pg_cluster.create_database("mig")
    r = pg_cluster.migrate(db, "up", migrations_dir=mig, check=False)
    assert r.returncode == 1
    assert "0002_broken.sql" in r.stderr and "line 3" in r.stderr and "42601" in r.stderr
    url = pg_cluster.url(db)
    assert sql(url, "SELECT to_regclass('hookbridge.half')") == [(None,)]
    assert sql(url, "SELECT version FROM hookbridge.hookbridge_migrations") == [(1,)]


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


def test_register_options_are_stored_without_credentials(db_url):
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    sub = register(db_url, options={"format": "cloudevents", "batch_max": 10,
                                    "batch_window_ms": 500, "timeout_ms": 2000,
                                    "auth_header": "Authorization", "auth_value": "Bearer t",
                                    "secret": secret})
    row = sql(db_url, "SELECT options, auth_header, auth_value FROM hookbridge.subscriptions "
              "WHERE id = %s", sub)[0]
    assert row == ({"format": "cloudevents", "batch_max": 10, "batch_window_ms": 500,
                    "timeout_ms": 2000}, "Authorization", "Bearer t")
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
    rows = sql(db_url, "SELECT secret, expires_at > now() + interval '50 minutes' "
               "FROM hookbridge.subscription_secrets WHERE subscription_id = %s "
               "AND (expires_at IS NULL OR expires_at > now()) ORDER BY id", sub)
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
