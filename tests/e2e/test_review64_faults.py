"""Review 64: promises of earlier reviews that no test held: the back-off of
a connection whose writes a read-only server keeps refusing (review 56),
the dead server that keeps its TCP connection open and never answers the
store's empty query (review 48), the log line of a Kafka topic deleted
under the dispatcher.

Each check says what it did on main's binaries (58f732a)."""
import socket
import threading
import time

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Retrier
from hbtest.tcpproxy import TcpProxy
from test_delivery import sql


class CountingProxy(TcpProxy):
    """A TcpProxy that notes when it accepts each connection (monotonic s)."""

    def __init__(self, upstream_port):
        super().__init__(upstream_port)
        self.accepted = []

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            up = socket.create_connection(self.upstream, timeout=5)
            up.settimeout(None)
            with self._lock:
                self._conns += [client, up]
            for a, b in ((client, up), (up, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()


def _via(db_url, port):
    host, rest = db_url.rsplit("@", 1)
    return f"{host}@127.0.0.1:{port}/{rest.split('/', 1)[1]}"


def test_a_store_lane_whose_writes_a_read_only_server_keeps_refusing_backs_off_1_2_4_5_s(
        db_url, pg_cluster, procs, workdir):
    """The database is made read-only for new sessions (ALTER DATABASE ... SET
    default_transaction_read_only = on: a primary demoted, a cloud's
    read-only mode) and the retrier's request lane loses its connection:
    each new one has its replay claim refused with SQLSTATE 25006. The lane
    connects again after 1, 2, 4, then 5 s, as docs/operations.md says
    ("PostgreSQL failover"), and its claims are answered again within about
    5 s of the server taking writes.

    On main (58f732a): 2, 3, 5, 6, 6 s (PostgreSQL's log: connections at
    :50.5, :52.5, :55.5, :60.5, :66.5, :72.5): the lane connects only when
    a request comes, the claims come a second apart, and each came a few
    milliseconds before the attempt was due, so it waited a whole second
    more; readiness came back up to 6 s after the database. About 20 s."""
    proxy = CountingProxy(pg_cluster.port)
    proxy.start()
    try:
        broker = Broker(procs, workdir)
        r = Retrier(procs, _via(db_url, proxy.port), broker.bootstrap)
        r.wait_ready()
        ((lane,),) = wait_until(lambda: sql(
            db_url, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND "
            "application_name = 'hookbridge' AND query LIKE %s", "%claim_replays%"), 5 * SLOW,
            "the retrier's request lane to claim replays")
        db = db_url.rsplit("/", 1)[1]
        admin = pg_cluster.connect()
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on')
            n0 = len(proxy.accepted)
            cur.execute("SELECT pg_terminate_backend(%s)", (lane,))
        wait_until(lambda: "the server is read-only (default_transaction_read_only)"
                   in r.proc.output(), 5 * SLOW, "a claim refused")
        wait_until(lambda: len(proxy.accepted) >= n0 + 5, 20 * SLOW,
                   "four reconnections of the request lane")
        at = proxy.accepted[n0:n0 + 5]
        gaps = [round(b - a, 2) for a, b in zip(at, at[1:])]
        print(f"the request lane reconnected after {gaps} s")
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{db}" RESET default_transaction_read_only')
        t1 = time.monotonic()
        wait_until(lambda: "periodic requests are answered again" in r.proc.output(), 8 * SLOW,
                   "the claims answered again")
        back = time.monotonic() - t1
        print(f"answered again {back:.1f} s after the server took writes")
        for gap, want in zip(gaps, (1, 2, 4, 5)):
            assert want - 0.5 <= gap <= want + 0.5 * SLOW, gaps
        assert back <= 5.5 * SLOW
        assert len(proxy.accepted) - n0 <= 7  # no connection a second meanwhile
    finally:
        proxy.close()
