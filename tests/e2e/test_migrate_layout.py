"""The SQL layout: migrations/0001_baseline.sql (state) and sql/*.sql (every
function, view, trigger and grant, re-applied by hookbridge-migrate when a
file changes). A fresh database built this way has exactly the schema the
earlier migrations 0001_init .. 0008_deactivation_epoch built (kept in
tests/fixtures/migrations-0008), and a database built by those upgrades to
it with its data intact."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid

import psycopg2
import pytest

from hbtest.pg import MIGRATIONS, REPO
from hbtest.procs import BIN, SLOW

OLD_LAYOUT = REPO / "tests" / "fixtures" / "migrations-0008"
SQL_DIR = REPO / "sql"
BOOKKEEPING = ("hookbridge_migrations", "hookbridge_sql_files")


def sql_digest():
    """sha256 over sql/*.sql in name order, each as its name, a newline and
    its bytes: what the newest migration records (migrations/README.md)."""
    h = hashlib.sha256()
    for f in sorted(SQL_DIR.glob("*.sql")):
        h.update(f.name.encode() + b"\n" + f.read_bytes())
    return h.hexdigest()


def test_every_change_of_sql_comes_with_a_migration():
    """An older release's pod started during a rollout (or a rolled-back
    image) leaves the SQL alone only when the database has a migration it
    does not know ("the database is ahead of this release"); a release that
    changed only sql/ would have none, and the old pod would put its older
    functions back over the new ones. So the newest migration records the
    sql/ it goes with, and a change of sql/ without a new migration (or, before
    the release, the newest one's line updated) fails here."""
    newest = max(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    m = re.search(r"^-- sql/: sha256 ([0-9a-f]{64})$", newest.read_text(), re.M)
    assert m, f"{newest.name} does not record the sql/ it goes with (migrations/README.md)"
    assert m.group(1) == sql_digest(), (
        f"sql/ changed since {newest.name} recorded it: add the next migration (a comment "
        f"may be all it holds) with the line '-- sql/: sha256 {sql_digest()}', or, if "
        f"{newest.name} is not released yet, update its line")


def sql(url, query, *args):
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall() if cur.description else None


def schema(pg, db, skip=()):
    """pg_dump --schema-only of schema hookbridge: its objects (functions with
    their bodies, tables, views, triggers, grants, comments), one entry per
    object, sorted; the objects of the tables named in `skip` left out."""
    r = subprocess.run([str(pg.bindir / "pg_dump"), "--schema-only", "--schema=hookbridge",
                        "--no-owner", pg.url(db)],
                       capture_output=True, text=True, timeout=60 * SLOW, check=True)
    text = re.sub(r"^\\(un)?restrict .*$", "", r.stdout, flags=re.M)  # random key per dump
    entries = [e.strip() for e in re.split(r"\n--\n-- (?=Name: )", text)[1:]]
    return sorted(e for e in entries if not any(f" {t};" in e.split("\n", 1)[0]
                                                or f"{t} " in e.split("\n", 1)[0] for t in skip))


def seed_rows(url):
    return (sql(url, "SELECT name, description FROM hookbridge.event_types ORDER BY name"),
            sql(url, "SELECT name, value, description FROM hookbridge.limits ORDER BY name"))


def later_migrations(migrations_dir=MIGRATIONS):
    """(version, name, checksum) of the migrations after the baseline."""
    out = []
    for f in sorted(migrations_dir.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        version, name = int(f.name[:4]), f.name[5:-4]
        if version > 1:
            out.append((version, name, hashlib.sha256(f.read_bytes()).hexdigest()))
    return out


def migrated(pg, prefix, migrations_dir=MIGRATIONS):
    db = pg.create_database(prefix)
    pg.migrate(db, "up", migrations_dir=migrations_dir)
    return db


def test_the_new_layout_builds_exactly_the_schema_of_the_old_migrations(pg_cluster):
    old = migrated(pg_cluster, "oldlayout", OLD_LAYOUT)
    new = migrated(pg_cluster, "newlayout")
    try:
        if later_migrations():
            # The schema moved on after the baseline (later migrations, changed
            # functions): the old layout, brought up to date, must be the same.
            pg_cluster.migrate(old, "up")
        want = schema(pg_cluster, old, skip=BOOKKEEPING)
        got = schema(pg_cluster, new, skip=BOOKKEEPING)
        assert len(want) > 150  # functions, tables, indexes, triggers, grants...
        missing = [e.split("\n", 1)[0] for e in want if e not in got]
        extra = [e.split("\n", 1)[0] for e in got if e not in want]
        assert not missing and not extra, f"only in the old layout: {missing}\nonly in the new: {extra}"
        assert seed_rows(pg_cluster.url(new)) == seed_rows(pg_cluster.url(old))
    finally:
        pg_cluster.drop_database(old)
        pg_cluster.drop_database(new)


def test_a_database_at_0008_upgrades_to_the_baseline_with_its_data(pg_cluster):
    """Built by the old migrations, with a subscription (sealed secrets pending)
    and a delivery in it: `up` records the baseline in place of 0001..0008,
    applies sql/, and ends with the schema of a fresh database, the data
    unchanged and the functions working on it."""
    old = migrated(pg_cluster, "upgrade", OLD_LAYOUT)
    fresh = migrated(pg_cluster, "fresh")
    url = pg_cluster.url(old)
    try:
        sub = sql(url, "SELECT hookbridge.register('old', 'https://hooks.example.com/x', "
                  "ARRAY['user.session.start'], %s::jsonb)",
                  json.dumps({"auth_header": "Authorization", "auth_value": "Bearer x",
                              "format": "cloudevents"}))[0][0]
        delivery = str(uuid.uuid4())
        sql(url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
            "event_type, status, attempts, body) VALUES (%s, %s, 'e1', 'user.session.start', "
            "'failed', 1, '{}')", delivery, sub)
        sql(url, "INSERT INTO hookbridge.delivery_attempts (delivery_id, attempt, started_at, "
            "http_status, outcome, error) VALUES (%s, 1, now(), 500, 'failed', 'HTTP 500')",
            delivery)
        tables = ["subscriptions", "subscription_event_types", "subscription_secrets",
                  "secret_inbox", "endpoint_health"]
        # later migrations may add columns (0006: subscriptions.verification_claimed_until):
        # the columns there were are compared
        cols = {t: ", ".join(c for (c,) in sql(
                    url, "SELECT column_name::text FROM information_schema.columns WHERE "
                    "table_schema = 'hookbridge' AND table_name = %s ORDER BY ordinal_position",
                    t)) for t in tables}
        before = {t: sql(url, f"SELECT {cols[t]} FROM hookbridge.{t} ORDER BY 1::text")
                  for t in tables}
        # the delivery log gains columns (0002): its old ones are kept as they were
        log_cols = {"deliveries": "delivery_id, subscription_id, event_ids, event_type, status, "
                                  "attempts, first_attempt_at, last_attempt_at, last_http_status, "
                                  "last_error, body, created_at, content_type",
                    "delivery_attempts": "id, delivery_id, attempt, started_at, duration_ms, "
                                         "http_status, outcome, error, response_snippet"}
        log_before = {t: sql(url, f"SELECT {c} FROM hookbridge.{t} ORDER BY 1::text")
                      for t, c in log_cols.items()}
        assert before["endpoint_health"] and before["secret_inbox"]

        st = pg_cluster.migrate(old, "status")
        assert "0001_baseline.sql" in st.stdout and "earlier layout" in st.stdout
        r = pg_cluster.migrate(old, "up")
        assert "recorded 0001_baseline.sql as applied" in r.stdout, r.stdout
        assert "sql/40_subscriptions.sql applied (new)" in r.stdout
        baseline = (MIGRATIONS / "0001_baseline.sql").read_bytes()
        assert sql(url, "SELECT version, name, checksum FROM hookbridge.hookbridge_migrations "
                   "ORDER BY version") \
            == [(1, "baseline", hashlib.sha256(baseline).hexdigest())] + later_migrations()

        # Bookkeeping included: the upgraded database is a fresh one.
        assert schema(pg_cluster, old) == schema(pg_cluster, fresh)
        assert {t: sql(url, f"SELECT {cols[t]} FROM hookbridge.{t} ORDER BY 1::text")
                for t in tables} == before
        assert {t: sql(url, f"SELECT {c} FROM hookbridge.{t} ORDER BY 1::text")
                for t, c in log_cols.items()} == log_before
        assert sql(url, "SELECT tableoid::regclass::text, subscription_id::text "
                   "FROM hookbridge.delivery_attempts") \
            == [(f"hookbridge.delivery_attempts_p{time.strftime('%Y%m%d', time.gmtime())}", sub)]
        assert seed_rows(url) == seed_rows(pg_cluster.url(fresh))

        # The functions work on the old rows.
        sql(url, "SELECT hookbridge.update(%s, name => 'renamed')", sub)
        assert sql(url, "SELECT name, format FROM hookbridge.subscription_overview") \
            == [("renamed", "cloudevents")]
        again = pg_cluster.migrate(old, "up")
        assert "up to date" in again.stdout and "sql/" not in again.stdout
    finally:
        pg_cluster.drop_database(old)
        pg_cluster.drop_database(fresh)


def test_a_database_part_way_through_the_old_layout_is_refused(pg_cluster, tmp_path):
    part = tmp_path / "migrations"
    part.mkdir()
    for f in sorted(OLD_LAYOUT.glob("000[1-6]_*.sql")):
        shutil.copy(f, part)
    db = migrated(pg_cluster, "partway", part)
    try:
        r = pg_cluster.migrate(db, "up", check=False)
        assert r.returncode == 1
        assert "0006_roles.sql" in r.stderr and "0008_deactivation_epoch.sql" in r.stderr
        assert sql(pg_cluster.url(db), "SELECT count(*) FROM hookbridge.hookbridge_migrations "
                   "WHERE version <= 6") == [(6,)]
        assert sql(pg_cluster.url(db), "SELECT to_regclass('hookbridge.secret_inbox')") \
            == [(None,)]
    finally:
        pg_cluster.drop_database(db)


PROBE = """
CREATE OR REPLACE FUNCTION hookbridge.layout_probe() RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
    SELECT %d
$$;
"""


@pytest.fixture
def tree(tmp_path):
    """A copy of migrations/ and sql/ side by side, to edit."""
    shutil.copytree(MIGRATIONS, tmp_path / "migrations", ignore=shutil.ignore_patterns("*.c"))
    shutil.copytree(SQL_DIR, tmp_path / "sql")
    return tmp_path


def test_an_edited_sql_file_is_applied_again_with_the_others(pg_cluster, tree):
    db = pg_cluster.create_database("sqlfiles")
    url = pg_cluster.url(db)
    try:
        pg_cluster.migrate(db, "up", migrations_dir=tree / "migrations")
        subs = tree / "sql" / "40_subscriptions.sql"
        subs.write_text(subs.read_text() + PROBE % 1)
        st = pg_cluster.migrate(db, "status", migrations_dir=tree / "migrations")
        assert re.search(r"sql/40_subscriptions.sql\s+changed", st.stdout), st.stdout
        assert re.search(r"sql/10_checks.sql\s+applied", st.stdout), st.stdout

        r = pg_cluster.migrate(db, "up", migrations_dir=tree / "migrations")
        assert "sql/40_subscriptions.sql applied (changed)" in r.stdout
        assert "sql/90_privileges.sql applied again (unchanged)" in r.stdout
        assert sql(url, "SELECT hookbridge.layout_probe()") == [(1,)]
        # The privileges file ran after it: operators may call it, PUBLIC not.
        assert sql(url, "SELECT has_function_privilege('hookbridge_operator', "
                   "'hookbridge.layout_probe()', 'EXECUTE'), "
                   "has_function_privilege('public', 'hookbridge.layout_probe()', 'EXECUTE')") \
            == [(True, False)]
        rows = sql(url, "SELECT name, checksum FROM hookbridge.hookbridge_sql_files ORDER BY name")
        assert rows == [(f.name, hashlib.sha256(f.read_bytes()).hexdigest())
                        for f in sorted((tree / "sql").glob("*.sql"))]
        again = pg_cluster.migrate(db, "up", migrations_dir=tree / "migrations")
        assert "up to date" in again.stdout and "sql/" not in again.stdout
    finally:
        pg_cluster.drop_database(db)


def test_a_failing_sql_file_rolls_back_the_migration_applied_with_it(pg_cluster, tree):
    """The SQL files are applied in the transaction of the last migration:
    when one fails, that migration is not applied either, and the file is
    named with its line."""
    db = pg_cluster.create_database("sqlfail")
    url = pg_cluster.url(db)
    try:
        pg_cluster.migrate(db, "up", migrations_dir=tree / "migrations")
        last = max([1] + [v for v, _, _ in later_migrations()])
        (tree / "migrations" / f"{last + 1:04d}_probe.sql").write_text(
            "CREATE TABLE hookbridge.probe (a int);\n")
        subs = tree / "sql" / "40_subscriptions.sql"
        subs.write_text(subs.read_text() + PROBE % 2 + "SELEC oops;\n")
        r = pg_cluster.migrate(db, "up", migrations_dir=tree / "migrations", check=False)
        assert r.returncode == 1
        line = len(subs.read_text().splitlines())
        assert f"40_subscriptions.sql, line {line}" in r.stderr and "42601" in r.stderr
        assert sql(url, "SELECT to_regclass('hookbridge.probe'), "
                   "to_regprocedure('hookbridge.layout_probe()')") == [(None, None)]
        assert sql(url, "SELECT max(version) FROM hookbridge.hookbridge_migrations") == [(last,)]

        # An API function that does not say SECURITY DEFINER is refused.
        subs.write_text(subs.read_text().replace("SELEC oops;\n", "").replace(
            "LANGUAGE sql SECURITY DEFINER SET", "LANGUAGE sql SET"))
        r = pg_cluster.migrate(db, "up", migrations_dir=tree / "migrations", check=False)
        assert r.returncode == 1 and "90_privileges.sql" in r.stderr
        assert "layout_probe() must be SECURITY DEFINER" in r.stderr, r.stderr
        assert sql(url, "SELECT to_regclass('hookbridge.probe')") == [(None,)]
    finally:
        pg_cluster.drop_database(db)


def test_an_upgrade_waiting_for_a_lock_lets_the_services_write_meanwhile(pg_cluster, tree):
    """A release's `up` re-applies the SQL files in one transaction: their
    triggers lock the tables the services write, then a view waits for a long
    dashboard query that reads it. Without a lock timeout every write of the
    services queued behind `up` for as long as the report ran. Now each
    attempt waits at most HOOKBRIDGE_MIGRATE_LOCK_TIMEOUT, rolls back, names
    who holds the lock, and tries again; HOOKBRIDGE_MIGRATE_LOCK_WAIT bounds
    the whole wait with an error that changes nothing."""
    db = pg_cluster.create_database("locks")
    url = pg_cluster.url(db)
    dashboard = None
    try:
        pg_cluster.migrate(db, "up", migrations_dir=tree / "migrations")
        subs = tree / "sql" / "40_subscriptions.sql"
        subs.write_text(subs.read_text() + PROBE % 3)
        dashboard = psycopg2.connect(url)
        dashboard.set_session(autocommit=False)
        with dashboard.cursor() as cur:  # a long report, still open
            cur.execute("SET application_name = 'weekly-report'")
            cur.execute("SELECT count(*) FROM hookbridge.recent_deliveries")
            cur.execute("SELECT pg_backend_pid()")
            report_pid = cur.fetchone()[0]
        time.sleep(0.6)  # older than the lock timeout below

        # Bounded: gives up, names the report, changes nothing.
        r = pg_cluster.migrate(db, "up", migrations_dir=tree / "migrations", check=False,
                               env={"HOOKBRIDGE_MIGRATE_LOCK_TIMEOUT": "300ms",
                                    "HOOKBRIDGE_MIGRATE_LOCK_WAIT": "2s"})
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"pid {report_pid} (weekly-report" in r.stdout + r.stderr, r.stdout + r.stderr
        assert "gave up" in r.stderr, r.stderr
        assert sql(url, "SELECT to_regprocedure('hookbridge.layout_probe()')") == [(None,)]

        env = dict(os.environ, HOOKBRIDGE_DATABASE_URL=url,
                   HOOKBRIDGE_MIGRATE_LOCK_TIMEOUT="300ms")
        up = subprocess.Popen([str(BIN / "hookbridge-migrate"), "up", "--dir",
                               str(tree / "migrations")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(1.0 * SLOW)  # `up` is trying, again and again
            # What the services write goes through meanwhile: a registration.
            with psycopg2.connect(url) as conn, conn.cursor() as cur:
                cur.execute("SET statement_timeout = %s", (f"{int(5000 * SLOW)}ms",))
                t0 = time.monotonic()
                cur.execute("SELECT hookbridge.register('during-upgrade', "
                            "'https://example.com/hook', ARRAY['user.session.start'])")
                took = time.monotonic() - t0
            assert took < 2 * SLOW, took
            assert up.poll() is None, up.stdout.read()
            dashboard.rollback()  # the report ends: `up` gets its locks
            out, _ = up.communicate(timeout=30 * SLOW)
        finally:
            if up.poll() is None:
                up.kill()
                up.communicate()
        assert up.returncode == 0, out
        assert f"pid {report_pid} (weekly-report" in out and "trying again" in out, out
        assert "sql/40_subscriptions.sql applied (changed)" in out, out
        assert sql(url, "SELECT hookbridge.layout_probe()") == [(3,)]
    finally:
        if dashboard is not None:
            dashboard.close()
        pg_cluster.drop_database(db)
