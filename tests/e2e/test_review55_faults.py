"""Review 55: what was merged in session 25 as production meets it: the
reference clock (PostgreSQL's, read at each connection), ordered waits until
the head's next attempt, and PostgreSQL failover.

The clock's own fault (a sample over a slow round trip moved a reference a
fast one had pinned, and reset the skew warning) is checked in
tests/unit/test_review55.c: it needs no program running.

Each check says what it did on main's binaries (a75ca2f)."""
import re
import time

from hbtest.pg import PgCluster
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Retrier
from test_delivery import sql
from test_review54_faults import read_only


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

        conn = primary.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("ALTER SYSTEM RESET default_transaction_read_only")
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()
        t0 = time.monotonic()
        wait_until(lambda: re.search(r"periodic requests are answered again \(\d+ failures",
                                     r.proc.output()[before:]), 10 * SLOW,
                   "the retrier to say its requests are answered again")
        print(f"answered again {time.monotonic() - t0:.1f} s after the server took writes")
    finally:
        primary.stop()
