"""The operator's first hour and upgrades: hookbridge-migrate run as the
roles docs/operations.md and docs/sql.md describe, an image rolled back past a
migration, a migrate whose lock is held by a killed run, and settings that are
configuration mistakes (exit 2, one line naming the variable).

Each test was shown to fail on 534b5fd."""
import shutil
import subprocess
import uuid

import psycopg2
import pytest

from hbtest.pg import MIGRATIONS
from hbtest.procs import BIN, SLOW


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
