"""Review 55: what was merged in session 25 as production meets it: the
reference clock (PostgreSQL's, read at each connection), ordered waits until
the head's next attempt, and PostgreSQL failover.

The clock's own fault (a sample over a slow round trip moved a reference a
fast one had pinned, and reset the skew warning) is checked in
tests/unit/test_review55.c: it needs no program running.

Each check says what it did on main's binaries (a75ca2f)."""
import os
import re
import subprocess
import time

from hbtest.clockshim import env as clock_env
from hbtest.pg import PgCluster
from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Retrier
from test_delivery import sql
from test_review54_faults import read_only
from test_secrets import SECRET_KEY, wait_sealed


def sessions(cluster, dbname):
    """Connections the server has accepted to dbname, ever."""
    return sql(cluster.url(dbname), "SELECT sessions FROM pg_stat_database WHERE datname = %s",
               dbname)[0][0]


def warnings(out):
    return [ln for ln in out.splitlines() if '"level":"warn"' in ln]


def test_a_primary_read_only_for_long_neither_floods_the_retriers_log_nor_reconnects_each_second(
        procs, workdir):
    """A single-host URL (a DNS name the platform moves at a failover); the
    primary turns read-only and stays so (a cloud's read-only mode on a full
    disk, a fenced primary nobody promoted over). The retrier's store keeps
    its LISTEN connection (reads work), so its claim of replays goes every
    second and fails with SQLSTATE 25006: that failure is said at once, then
    at most every 30 s with a count, and its request connection is tried
    again after a growing back-off (1, 2, 4, 5 s). Once the server takes
    writes again the retrier says its requests are answered again.

    On main (a75ca2f): 12 s read-only gave 12 warnings (one a second,
    'claiming replays: the server is read-only ... reconnecting' and
    'database: not connected (reconnecting)' in turn: 3,600 an hour) and a
    new connection every 2 s. About 18 s."""
    primary = PgCluster().start()
    try:
        name = primary.migrated_database("readonly")
        url = primary.url(name)
        broker = Broker(procs, workdir, retry_schedule="1s")
        r = Retrier(procs, url, broker.bootstrap, extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1s"})
        r.wait_ready()
        time.sleep(1.5)  # its first requests (replays, upkeep) are answered
        before = len(r.proc.output())
        s0 = sessions(primary, name)
        read_only(primary)
        time.sleep(12)
        said = warnings(r.proc.output()[before:])
        connected = sessions(primary, name) - s0
        print(f"12 s read-only: {len(said)} warnings, {connected} connections")
        assert said and "read-only" in said[0], said
        assert len(said) <= 2, "\n".join(said)
        assert connected <= 5

        read_only(primary, on=False)
        t0 = time.monotonic()
        wait_until(lambda: re.search(r"periodic requests are answered again \(\d+ failures",
                                     r.proc.output()[before:]), 10 * SLOW,
                   "the retrier to say its requests are answered again")
        print(f"answered again {time.monotonic() - t0:.1f} s after the server took writes")
    finally:
        primary.stop()


def test_hookbridge_secret_show_on_a_host_whose_clock_is_off_prints_only_the_secret_on_stdout(
        db_url, broker, procs):
    """hookbridge-secret show prints a subscription's signing secret on
    stdout, for SECRET=$(hookbridge-secret show ID). Its connection reads
    PostgreSQL's clock and warns when this host's is off: that warning goes
    to stderr, naming the program, and stdout holds only the secret.

    On main (a75ca2f), on a host a minute ahead, the warning was a JSON log
    line on stdout before the secret ({"time":...,"component":"hookbridge",
    "msg":"this host's clock is 60.0 s ahead of PostgreSQL's..."}), so the
    captured secret was that line and the secret. About 3 s."""
    d = Dispatcher(procs, db_url, broker.bootstrap)  # seals the secret
    d.wait_ready()
    sub = sql(db_url, "SELECT hookbridge.register('cli', 'http://127.0.0.1:9/h', "
              "ARRAY['user.session.start'])")[0][0]
    shown = sql(db_url, "SELECT hookbridge.signing_secret(%s)", sub)[0][0]
    wait_sealed(db_url, sub, auth=False)
    env = dict(os.environ, HOOKBRIDGE_DATABASE_URL=db_url, HOOKBRIDGE_SECRET_KEY=SECRET_KEY,
               **clock_env(60))
    out = subprocess.run([BIN / "hookbridge-secret", "show", sub], capture_output=True,
                         text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == shown + "\n"
    assert "hookbridge-secret" in out.stderr and "60.0 s ahead" in out.stderr
    assert shown[6:] not in out.stderr
