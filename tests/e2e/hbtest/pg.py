"""A throwaway PostgreSQL cluster for the end-to-end tests.

One cluster per test session (initdb takes about a second with --no-sync and
fsync off), on a free loopback port, in its own temporary directory; one fresh
database per test, a copy (CREATE DATABASE ... TEMPLATE) of one that the real
hookbridge-migrate brought up once per session. The server is
always stopped (pg_ctl stop -m fast) when the session ends, also when tests
fail or the run is interrupted (an atexit hook backs up the fixture).

As root, initdb and the server run as the `postgres` user (initdb refuses
root); the directories are made traversable for it.

Fixtures (import them into a conftest.py or a test module):
    pg_cluster  session: the running PgCluster
    db_url      function: URL of a fresh, migrated database
"""
import atexit
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from .procs import BIN, REPO, SLOW, free_port

MIGRATIONS = REPO / "migrations"


def _pg_bindir():
    """Directory of initdb/pg_ctl: PATH first, then Debian's versioned dir."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "pg_ctl").exists():
            return d
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")


class PgCluster:
    """A PostgreSQL server in a temporary directory. start() / stop()."""

    def __init__(self):
        self.base = None
        self.port = None
        self.bindir = _pg_bindir()
        self.as_root = os.geteuid() == 0
        self._dbs = 0
        self._lock = threading.Lock()
        self._template_lock = threading.Lock()
        self._templates = {}
        self.running = False

    # -- lifecycle ---------------------------------------------------------

    def _run(self, argv, **kw):
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        return subprocess.run([str(a) for a in argv], cwd=self.base, capture_output=True,
                              text=True, **kw)

    def start(self):
        self.base = Path(tempfile.mkdtemp(prefix="hbpg-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        self.data = self.base / "data"
        self.run_dir = self.base / "run"  # socket and log: short path, postgres-writable
        self.data.mkdir()
        self.run_dir.mkdir()
        if self.as_root:
            shutil.chown(self.data, "postgres")
            shutil.chown(self.run_dir, "postgres")
        r = self._run([self.bindir / "initdb", "--no-sync", "-D", self.data, "-A", "trust",
                       "-U", "postgres", "-E", "UTF8", "--locale=C"], timeout=120 * SLOW)
        if r.returncode != 0:
            self._cleanup()
            raise RuntimeError(f"initdb failed:\n{r.stdout}\n{r.stderr}")
        last = ""
        for _ in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            opts = (f"-p {self.port} -k {self.run_dir} -c listen_addresses=127.0.0.1 "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                    "-c max_connections=200")
            r = self._run([self.bindir / "pg_ctl", "-D", self.data, "-l",
                           self.run_dir / "pg.log", "-w", "-t", str(int(60 * SLOW)),
                           "-o", opts, "start"], timeout=90 * SLOW)
            if r.returncode == 0:
                self.running = True
                atexit.register(self.stop)
                return self
            last = r.stdout + r.stderr + self.log_tail()
        self._cleanup()
        raise RuntimeError(f"PostgreSQL did not start:\n{last}")

    def stop(self):
        """Stops the server (fast shutdown) and removes its directory. Idempotent."""
        if self.running:
            self.running = False
            r = self._run([self.bindir / "pg_ctl", "-D", self.data, "-m", "fast", "-w",
                           "stop"], timeout=60 * SLOW)
            if r.returncode != 0:
                self._run([self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate",
                           "-w", "stop"], timeout=60 * SLOW)
        self._cleanup()

    def _cleanup(self):
        if self.base and self.base.exists():
            shutil.rmtree(self.base, ignore_errors=True)

    def start_replica(self):
        """A streaming replica of this cluster (pg_basebackup -R), started as a
        hot standby on another free loopback port: a PgCluster of its own
        (stop() it; promote() makes it a primary). Takes a second or two."""
        rep = PgCluster()
        rep.base = Path(tempfile.mkdtemp(prefix="hbpg-replica-", dir="/tmp"))
        os.chmod(rep.base, 0o755)
        rep.data = rep.base / "data"
        rep.run_dir = rep.base / "run"
        rep.run_dir.mkdir()
        if rep.as_root:
            shutil.chown(rep.run_dir, "postgres")
            shutil.chown(rep.base, "postgres")
        r = rep._run([self.bindir / "pg_basebackup", "-h", "127.0.0.1", "-p", self.port,
                      "-U", "postgres", "-D", rep.data, "-R", "-X", "stream", "-c", "fast", "--no-sync"],
                     timeout=60 * SLOW)
        if r.returncode != 0:
            rep._cleanup()
            raise RuntimeError(f"pg_basebackup failed:\n{r.stdout}\n{r.stderr}")
        rep.port = free_port()
        opts = (f"-p {rep.port} -k {rep.run_dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c hot_standby=on -c max_connections=200")
        r = rep._run([self.bindir / "pg_ctl", "-D", rep.data, "-l", rep.run_dir / "pg.log",
                      "-w", "-t", str(int(60 * SLOW)), "-o", opts, "start"], timeout=90 * SLOW)
        if r.returncode != 0:
            rep._cleanup()
            raise RuntimeError(f"the replica did not start:\n{r.stdout}{r.stderr}")
        rep.running = True
        atexit.register(rep.stop)
        return rep

    def promote(self):
        """pg_ctl promote: a standby becomes a primary (waits until it is)."""
        r = self._run([self.bindir / "pg_ctl", "-D", self.data, "-w", "-t",
                       str(int(60 * SLOW)), "promote"], timeout=90 * SLOW)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl promote failed:\n{r.stdout}{r.stderr}")

    def log_tail(self, n=4000):
        try:
            return (self.run_dir / "pg.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # -- databases ---------------------------------------------------------

    def url(self, dbname="postgres", user="postgres", password=None):
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname="postgres", autocommit=True):
        import psycopg2
        conn = psycopg2.connect(self.url(dbname))
        conn.autocommit = autocommit
        return conn

    def create_database(self, prefix="t", template=None):
        """Creates an empty database (or a copy of `template`) and returns its name."""
        with self._lock:
            self._dbs += 1
            name = f"{prefix}_{os.getpid()}_{self._dbs}"
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"' +
                            (f' TEMPLATE "{template}"' if template else ""))
        finally:
            conn.close()
        return name

    def drop_database(self, name):
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()

    def migrate(self, dbname, *args, migrations_dir=MIGRATIONS, check=True, env=None):
        """Runs `hookbridge-migrate <args> --dir DIR` against dbname."""
        full_env = dict(os.environ)
        full_env["HOOKBRIDGE_DATABASE_URL"] = self.url(dbname)
        full_env.update(env or {})
        argv = [str(BIN / "hookbridge-migrate"), *[str(a) for a in (args or ("up",))],
                "--dir", str(migrations_dir)]
        r = subprocess.run(argv, env=full_env, capture_output=True, text=True,
                           timeout=60 * SLOW)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def migrated_database(self, prefix="t"):
        """A new database with every migration applied: a copy of this
        cluster's template, which hookbridge-migrate brought up once (a copy
        takes a fraction of a migration's time, and each test gets one)."""
        return self.create_database(prefix, template=self._template())

    def _template(self):
        """The migrated template database, made on first use. One per UTC day:
        the migrations create the delivery log's partitions from today on."""
        day = time.strftime("%Y%m%d", time.gmtime())
        with self._template_lock:
            if self._templates.get(day) is None:
                name = self.create_database(f"template_{day}")
                self.migrate(name, "up")
                self._templates[day] = name
            return self._templates[day]


_shared = {"cluster": None, "users": 0}
_shared_lock = threading.Lock()


@pytest.fixture(scope="session")
def pg_cluster():
    """The session's cluster. Shared when this fixture is imported into more
    than one place (a conftest.py and a test module): one server, stopped when
    the last user finishes."""
    with _shared_lock:
        if _shared["cluster"] is None:
            _shared["cluster"] = PgCluster().start()
        _shared["users"] += 1
        cluster = _shared["cluster"]
    try:
        yield cluster
    finally:
        with _shared_lock:
            _shared["users"] -= 1
            if _shared["users"] == 0:
                _shared["cluster"] = None
                cluster.stop()


@pytest.fixture
def db_url(pg_cluster):
    """A fresh database with every migration applied; dropped after the test."""
    name = pg_cluster.migrated_database()
    yield pg_cluster.url(name)
    try:
        pg_cluster.drop_database(name)
    except Exception:  # a failed drop must not mask the test's own result
        pass
