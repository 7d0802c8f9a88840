"""The operator's first hour and upgrades: hookbridge-migrate run as the
roles docs/operations.md and docs/sql.md describe, an image rolled back past a
migration, a migrate whose lock is held by a killed run, and settings that are
configuration mistakes (exit 2, one line naming the variable).

Each test was shown to fail on 534b5fd."""
import shutil
import subprocess
import threading
import uuid

import psycopg2
import pytest

from hbtest.pg import MIGRATIONS, PgCluster
from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import Dispatcher

KEY = "0hS92CSz00CxP0o6esTMV+uIe4nCIt9aNRhMiGKr6O0="  # a sealing key (32 bytes, base64)
MIGRATE_LOCK_KEY = 7526676533394417767  # migrations/migrate.c: "hookbrdg" as a bigint


def sql(url, query, *args):
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall() if cur.description else None


def login_role(pg, db, group=None):
    """A new login role (in `group`); returns a URL of db connecting as it."""
    name = f"r13_{uuid.uuid4().hex[:8]}"
    sql(pg.url(db), f'CREATE ROLE "{name}" LOGIN' + (f" IN ROLE {group}" if group else ""))
    return pg.url(db, user=name)


def migrate(url, *args, migrations_dir=MIGRATIONS):
    return subprocess.run([str(BIN / "hookbridge-migrate"), *args, "--dir", str(migrations_dir)],
                          env={"HOOKBRIDGE_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60 * SLOW)


@pytest.mark.sql_only
@pytest.mark.runs_programs
def test_the_services_role_runs_migrate_up_and_status_as_the_init_containers_do(pg_cluster,
                                                                                 tmp_path):
    """docs/operations.md: where DDL is kept from the services' role, the
    migrate Job applies the migrations and "the init containers then find
    nothing pending" -- the init containers run `hookbridge-migrate up` as
    the services' role (a member of hookbridge_service), and `status` is run
    in the dispatcher's container. Both read hookbridge-migrate's bookkeeping,
    which that role could not: every pod stayed in Init:CrashLoopBackOff."""
    db = pg_cluster.migrated_database("r13roles")
    svc = login_role(pg_cluster, db, "hookbridge_service")
    for cmd in ("up", "status"):
        r = migrate(svc, cmd)
        assert r.returncode == 0, f"{cmd} as the services' role:\n{r.stdout}\n{r.stderr}"
        assert "pending" not in r.stdout, r.stdout
    assert "up to date" in migrate(svc, "up").stdout
    op = login_role(pg_cluster, db, "hookbridge_operator")
    r = migrate(op, "status")
    assert r.returncode == 0 and "pending" not in r.stdout, r.stdout + r.stderr

    # A migration pending when only the services' role runs `up`: refused,
    # naming the file, nothing applied.
    mig = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, mig)
    shutil.copytree(MIGRATIONS.parent / "sql", tmp_path / "sql")
    (mig / "0099_more.sql").write_text("CREATE TABLE hookbridge.more (a int);\n")
    r = migrate(svc, "up", migrations_dir=mig)
    assert r.returncode == 1 and "0099_more.sql" in r.stderr, r.stderr
    assert "permission denied" in r.stderr, r.stderr
    assert sql(pg_cluster.url(db), "SELECT to_regclass('hookbridge.more')") == [(None,)]

    # A role that may not read the schema at all: one clear error, and
    # `status` does not list every migration as pending when it could not
    # read which are applied.
    nobody = login_role(pg_cluster, db)
    r = migrate(nobody, "status")
    assert r.returncode == 1 and "permission denied" in r.stderr, r.stdout + r.stderr
    assert "pending" not in r.stdout, r.stdout


@pytest.mark.sql_only
@pytest.mark.runs_programs
def test_an_image_rolled_back_past_a_migration_still_starts(pg_cluster, tmp_path):
    """docs/operations.md: "Rolling back the image is safe as long as the
    migrations in between were expand-only (they stay applied)". The rolled
    back pods' init container runs this release's `up` on a database a newer
    release migrated: it refused ("applied but its file is missing"), so the
    rollback never started a pod. It applies nothing, leaves the newer
    release's SQL files in place, and says so; `status` lists the newer
    migration."""
    newer = tmp_path / "newer"
    shutil.copytree(MIGRATIONS, newer / "migrations")
    shutil.copytree(MIGRATIONS.parent / "sql", newer / "sql")
    (newer / "migrations" / "0099_newer.sql").write_text(
        "CREATE TABLE hookbridge.newer_thing (a int);\n")
    with open(newer / "sql" / "60_deliveries.sql", "a") as f:
        f.write("\n-- as the newer release has it\n")
    db = pg_cluster.create_database("r13back")
    url = pg_cluster.url(db)
    r = migrate(url, "up", migrations_dir=newer / "migrations")
    assert r.returncode == 0, r.stderr
    newer_sums = sql(url, "SELECT name, checksum FROM hookbridge.hookbridge_sql_files ORDER BY 1")

    r = migrate(url, "up")  # this release: the rolled-back image
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ahead of this release" in r.stdout and "0099_newer.sql" in r.stdout, r.stdout
    assert sql(url, "SELECT name, checksum FROM hookbridge.hookbridge_sql_files "
               "ORDER BY 1") == newer_sums, "this release's SQL files were put back"
    assert sql(url, "SELECT to_regclass('hookbridge.newer_thing') IS NOT NULL") == [(True,)]
    st = migrate(url, "status")
    assert st.returncode == 0, st.stdout + st.stderr
    assert "0099_newer.sql" in st.stdout and "newer release" in st.stdout, st.stdout
    assert "pending" not in st.stdout, st.stdout

    # A file missing below the newest one here is still a packaging mistake.
    gap = tmp_path / "gap"
    shutil.copytree(MIGRATIONS, gap)
    (gap / "0003_ordering.sql").unlink()
    r = migrate(url, "status", migrations_dir=gap)
    assert r.returncode == 1 and "0003_ordering.sql" in r.stderr and "missing" in r.stderr


@pytest.mark.sql_only
@pytest.mark.runs_programs
def test_an_up_waiting_for_the_lock_says_who_holds_it(pg_cluster):
    """An `up` killed (kill -9) in the middle of a migration leaves its
    server session running the statement, holding the migration lock, and
    the restarted init container waited without a word: it now says it
    waits, and for which session."""
    db = pg_cluster.create_database("r13lock")
    url = pg_cluster.url(db)
    holder = psycopg2.connect(url, application_name="hookbridge-migrate")
    holder.autocommit = True
    holder.cursor().execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK_KEY,))
    holder_pid = holder.get_backend_pid()
    p = subprocess.Popen([str(BIN / "hookbridge-migrate"), "up", "--dir", str(MIGRATIONS)],
                         env={"HOOKBRIDGE_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")))
    reader.start()
    try:
        wait_until(lambda: lines or p.poll() is not None, 20 * SLOW,
                   "migrate up to say that it waits")
        assert p.poll() is None, "migrate up did not wait for the lock"
        assert lines[0].startswith("waiting for the migration lock"), lines
        assert f"pid {holder_pid}" in lines[0] and "hookbridge-migrate" in lines[0], lines
        holder.close()
        p.wait(60 * SLOW)
        reader.join()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        holder.close()
    assert p.returncode == 0, p.stderr.read()
    assert any(line.startswith("applied 0001_baseline.sql") for line in lines), lines


@pytest.mark.sql_only
@pytest.mark.runs_programs
def test_a_role_without_the_rights_of_the_first_migration_is_told_which():
    """docs/operations.md asked only for "a role that owns schema
    hookbridge"; the baseline also runs CREATE SCHEMA IF NOT EXISTS and
    creates the pgcrypto extension (both need CREATE on the database, even
    when the schema exists) and the two group roles (CREATEROLE). Without CREATE, `up`
    failed with "permission denied for database X" and no word of what was
    needed; without CREATEROLE it succeeded silently, the notice that the
    grants were skipped hidden by its client_min_messages, and the roles
    the docs tell you to grant did not exist. A fresh cluster: these roles
    are cluster-wide."""
    pg = PgCluster().start()
    try:
        db = pg.create_database("r13own")
        sql(pg.url(db), "CREATE ROLE app LOGIN")
        sql(pg.url(db), "CREATE SCHEMA hookbridge AUTHORIZATION app")
        app = pg.url(db, user="app")
        r = migrate(app, "up")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "0001_baseline.sql" in r.stderr and "permission denied" in r.stderr, r.stderr
        assert "(app) must own schema hookbridge" in r.stderr, r.stderr
        assert "have CREATE on the database" in r.stderr, r.stderr

        sql(pg.url(db), f'GRANT CREATE ON DATABASE "{db}" TO app')  # as the docs say
        r = migrate(app, "up")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "hookbridge_service does not exist and app may not create roles" in r.stdout, \
            r.stdout
        assert sql(pg.url(db), "SELECT count(*) FROM pg_roles "
                   "WHERE rolname LIKE 'hookbridge%%'") == [(0,)]
    finally:
        pg.stop()


def start(program, env, timeout=5):
    """Runs a service with `env` only; (status, stdout, stderr), status None
    when it was still running after `timeout` s (it took the value)."""
    p = subprocess.Popen([str(BIN / program)], env={"PATH": "/usr/bin:/bin", **env},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout * SLOW)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return None, out, err


def test_a_missing_database_url_and_odd_durations_are_configuration_mistakes():
    """docs/design.md: a value that is not valid stops a program at start with
    one line naming the variable and exit status 2. A service without
    HOOKBRIDGE_DATABASE_URL exited 1 (a JSON log line, as for an outage);
    durations took what strtod takes: "nan" was refused as
    "-9223372036854775808 is out of range" (an undefined conversion), "0x10s"
    was 16 seconds, "1e3" a thousand milliseconds."""
    base = {"HOOKBRIDGE_SECRET_KEY": KEY, "HOOKBRIDGE_HTTP_LISTEN": "127.0.0.1:0",
            "HOOKBRIDGE_KAFKA_BROKERS": "127.0.0.1:1"}
    for program in ("hookbridge-dispatcher", "hookbridge-retrier"):
        rc, out, err = start(program, base)
        assert rc == 2, (program, rc, out, err)
        assert err.splitlines() == [f"{program}: HOOKBRIDGE_DATABASE_URL is not set: the "
                                    "PostgreSQL connection string (a libpq URI or key=value "
                                    "string)"], err
        assert out == "", out

    base["HOOKBRIDGE_DATABASE_URL"] = "postgresql://hb:Sup3r-Secret@127.0.0.1:1/hb"
    for var, value in (("HOOKBRIDGE_REQUEST_TIMEOUT", "nan"),
                       ("HOOKBRIDGE_SHUTDOWN_TIMEOUT", "0x10s"),
                       ("HOOKBRIDGE_RETRY_AFTER_MAX", "inf"),
                       ("HOOKBRIDGE_RETRY_SCHEDULE", "5s,1e3")):
        rc, out, err = start("hookbridge-dispatcher", {**base, var: value})
        assert rc == 2, (var, value, rc, err)
        lines = err.splitlines()
        assert len(lines) == 1 and var in lines[0] and f'"{value.split(",")[-1]}"' in lines[0] \
            and "9223372036854775808" not in lines[0], lines
        assert "Sup3r-Secret" not in out + err


@pytest.mark.sql_only
@pytest.mark.runs_programs
def test_a_database_url_from_a_file_with_a_final_newline_connects(pg_cluster):
    """docs/operations.md suggests `kubectl create secret ... --from-file=
    database-url=./database-url.txt`; an editor ends that file with a
    newline, which libpq took as part of the URL's last part: the init
    container's migrate failed (`database "hb\\n" does not exist`, `invalid
    sslmode value`), and the services retried the same for ever."""
    db = pg_cluster.migrated_database("r13nl")
    for url in (pg_cluster.url(db) + "\n", pg_cluster.url(db) + "?sslmode=disable\r\n"):
        r = migrate(url, "status")
        assert r.returncode == 0, (url, r.stderr)
        assert "pending" not in r.stdout, r.stdout


def test_a_topic_name_kafka_refuses_is_a_configuration_mistake():
    """A topic name with a space (or a line end, from an env file) can never
    exist: the services started and waited for it for ever ("topic ... does
    not exist" on /readyz), and the producer published to a topic no broker
    accepts. Exit 2, one line naming the variable."""
    base = {"HOOKBRIDGE_SECRET_KEY": KEY, "HOOKBRIDGE_HTTP_LISTEN": "127.0.0.1:0",
            "HOOKBRIDGE_KAFKA_BROKERS": "127.0.0.1:1",
            "HOOKBRIDGE_DATABASE_URL": "postgresql://hb@127.0.0.1:1/hb"}
    for program, var, value in (
            ("hookbridge-dispatcher", "HOOKBRIDGE_EVENTS_TOPIC", "identity events"),
            ("hookbridge-retrier", "HOOKBRIDGE_RETRY_TOPIC_PREFIX", "retry/"),
            ("hookbridge-retrier", "HOOKBRIDGE_DLQ_TOPIC", "hookbridge.dlq\n")):
        rc, out, err = start(program, {**base, var: value})
        assert rc == 2, (program, var, rc, out, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{program}: {var}: ") \
            and "is not a Kafka topic name" in lines[0], lines
    r = subprocess.run([str(BIN / "hookbridge-producer"), "--generate", "1"],
                       env={"PATH": "/usr/bin:/bin", "HOOKBRIDGE_KAFKA_BROKERS": "127.0.0.1:1",
                            "HOOKBRIDGE_EVENTS_TOPIC": "identity.events\n"},
                       capture_output=True, text=True, timeout=30 * SLOW)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "HOOKBRIDGE_EVENTS_TOPIC" in r.stderr
    # An empty flag is a value (an empty variable counts as unset).
    r = subprocess.run([str(BIN / "hookbridge-producer"), "--events-topic=", "--generate", "1"],
                       env={"PATH": "/usr/bin:/bin", "HOOKBRIDGE_KAFKA_BROKERS": "127.0.0.1:1"},
                       capture_output=True, text=True, timeout=30 * SLOW)
    assert r.returncode == 2 and "is not a Kafka topic name (empty" in r.stderr, r.stderr


def test_http_client_settings_no_start_could_use_exit_2_not_1():
    """docs/design.md: exit 2 for a value that is not valid, 1 for a valid
    one that cannot be used (an unreadable file). A bad CIDR, a client key
    without its certificate and a Schema Registry URL without http(s):// or
    a host exited 1 with a JSON "cannot start" line, as for a CA file that
    cannot be read; the registry URL "http://" was even taken, to fail on
    every event later."""
    base = {"HOOKBRIDGE_SECRET_KEY": KEY, "HOOKBRIDGE_HTTP_LISTEN": "127.0.0.1:0",
            "HOOKBRIDGE_KAFKA_BROKERS": "127.0.0.1:1",
            "HOOKBRIDGE_DATABASE_URL": "postgresql://hb@127.0.0.1:1/hb"}
    for var, value, want in (
            ("HOOKBRIDGE_ALLOWED_CIDRS", "10.0.0.0/33", '"10.0.0.0/33": prefix length'),
            ("HOOKBRIDGE_TLS_CLIENT_KEY", "/etc/hostname", "without HOOKBRIDGE_TLS_CLIENT_CERT"),
            ("HOOKBRIDGE_SCHEMA_REGISTRY_URL", "registry:8081", "http:// or https://"),
            ("HOOKBRIDGE_SCHEMA_REGISTRY_URL", "http://", "with a host")):
        rc, out, err = start("hookbridge-dispatcher", {**base, var: value})
        assert rc == 2, (var, value, rc, out, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"hookbridge-dispatcher: {var}") \
            and want in lines[0], lines


def test_a_database_url_option_libpq_refuses_is_a_configuration_mistake():
    """A connection string that parses but carries a value libpq refuses
    only when it connects (a typo in sslmode, a port that is not one) was
    taken for an outage: the services stayed up, not ready, and logged
    "database unavailable, retrying in 2 s: ... invalid sslmode value" for
    ever. Exit 2 naming the variable and the option, never the password."""
    for url, option in (
            ("postgresql://hb:Sup3r-Secret@127.0.0.1:1/hb?sslmode=verify_full", "sslmode"),
            ("postgresql://hb:Sup3r-Secret@127.0.0.1:1/hb?target_session_attrs=primary-only",
             "target_session_attrs"),
            ("host=127.0.0.1 port=54x32 password=Sup3r-Secret dbname=hb", "port"),
            ("postgresql://hb:Sup3r-Secret@db/hb?connect_timeout=10s", "connect_timeout")):
        for program in ("hookbridge-dispatcher", "hookbridge-retrier"):
            rc, out, err = start(program, {"HOOKBRIDGE_SECRET_KEY": KEY,
                                           "HOOKBRIDGE_HTTP_LISTEN": "127.0.0.1:0",
                                           "HOOKBRIDGE_KAFKA_BROKERS": "127.0.0.1:1",
                                           "HOOKBRIDGE_DATABASE_URL": url})
            assert rc == 2, (program, url, rc, out, err)
            lines = err.splitlines()
            assert len(lines) == 1 and lines[0].startswith(
                f"{program}: HOOKBRIDGE_DATABASE_URL: {option} "), lines
            assert "Sup3r-Secret" not in out + err


def test_a_service_on_a_database_not_yet_migrated_says_to_migrate_it(pg_cluster, broker, procs):
    """Started before `hookbridge-migrate up` (by hand, or a Deployment
    without its init container), a service logged "relation
    hookbridge.subscriptions does not exist" every second and /readyz said
    "subscription index not loaded", with no word of the migration. It says
    to run it, and is ready once it has run."""
    db = pg_cluster.create_database("r13fresh")
    url = pg_cluster.url(db)
    d = Dispatcher(procs, url, broker.bootstrap)
    wait_until(lambda: "hookbridge-migrate up" in d.get("/readyz")[1] or not d.proc.alive(),
               20 * SLOW, "/readyz to say that the database is not migrated")
    assert "is the database migrated? run hookbridge-migrate up" in d.proc.output()
    assert migrate(url, "up").returncode == 0
    d.wait_ready(30 * SLOW)
