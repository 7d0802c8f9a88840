"""HOOKBRIDGE_MAX_CONNECTIONS: the connections to endpoints a service keeps
open for reuse (docs/configuration.md, docs/operations.md "Memory").

Thirty subscriptions, each on an endpoint of its own (a keep-alive HTTP/1.1
server on its own port, so thirty endpoint hosts), receive three events one
after the other. Each endpoint records the connection of every POST, so it
sees how many connections its deliveries came on:
- with room for every host (HOOKBRIDGE_MAX_CONNECTIONS=64), each host's
  three deliveries come on one connection;
- with room for fewer (16, the least that is kept), the hosts are served in
  turn and the least recently used idle connection is closed each time, so
  most deliveries open a connection of their own (each a TCP and, on HTTPS,
  a TLS handshake: what the setting's description and the "Memory" section
  of operations.md warn of).
hookbridge_connections_opened_total says the same to an operator. Before the
setting existed the cache held 2 x HOOKBRIDGE_MAX_IN_FLIGHT connections, at
least 16, whatever was asked: here 16, and with room asked for every host each
delivery still came on a connection of its own ([3, 3, 3, ...])."""
import threading

import pytest

from hbtest.endpoints import ChallengeAnswering, posted_uuids, serve
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, produce
from test_delivery import event, sql

HOSTS = 30
EVENTS = 3


class Counting(ChallengeAnswering):
    """Answers the challenge, and 204 to every POST, keeping the connection
    open; records the connection of the challenge and (connection, event
    uuids) per POST. A connection is numbered when accepted (the server
    makes one handler per connection): its client port would not do, as a
    port closed on loopback may be taken again at once by the next
    connection (tcp_tw_reuse), and two connections then counted as one."""
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.accepted += 1
            self.conn_no = self.server.accepted

    def do_GET(self):
        with self.server.lock:
            self.server.challenged.add(self.conn_no)
        super().do_GET()

    def do_POST(self):
        uuids = posted_uuids(self)
        with self.server.lock:
            self.server.posts.append((self.conn_no, uuids))
        self.answer()


def endpoint(handler=Counting):
    """A server for handler with what it records: posts, challenged."""
    srv = serve(handler)
    srv.lock = threading.Lock()
    srv.posts = []
    srv.challenged = set()
    srv.accepted = 0
    return srv


def endpoints(n):
    return [endpoint() for _ in range(n)]


def subscribe_all(db_url, urls):
    """register -> verify -> activate, for every url at once."""
    subs = [sql(db_url, "SELECT hookbridge.register(%s, %s, %s, '{}'::jsonb)", f"conn{i}", u,
                ["user.session.start"])[0][0] for i, u in enumerate(urls)]
    for s in subs:
        sql(db_url, "SELECT hookbridge.verify(%s)", s)
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.subscriptions WHERE id = "
                           "ANY(%s::uuid[]) AND verification = 'verified'", subs)[0][0] == len(subs),
               20 * SLOW, "every endpoint to pass its challenge")
    for s in subs:
        sql(db_url, "SELECT hookbridge.activate(%s)", s)
    return subs


@pytest.mark.parametrize("max_connections,reused", [(64, True), (16, False)])
def test_connections_are_kept_for_as_many_hosts_as_max_connections_allows(
        db_url, procs, workdir, max_connections, reused):
    eps = endpoints(HOSTS)
    try:
        broker = Broker(procs, workdir)
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_MAX_IN_FLIGHT": "4",
            "HOOKBRIDGE_MAX_CONNECTIONS": str(max_connections)})
        d.wait_ready()
        subscribe_all(db_url, [e.url for e in eps])
        wait_until(lambda: d.metric("hookbridge_subscriptions") >= HOSTS, 15 * SLOW,
                   "the dispatcher to have every subscription")
        for n in range(1, EVENTS + 1):  # one event at a time: the hosts are served in turn
            produce(broker.bootstrap, [event("user.session.start")])
            wait_until(lambda: all(len(e.posts) >= n for e in eps), 20 * SLOW,
                       f"event {n} at every endpoint")
        connections = [len({conn for conn, _ in e.posts}) for e in eps]
        assert all(len(e.posts) == EVENTS for e in eps), [len(e.posts) for e in eps]
        if reused:
            # every host's deliveries on one connection
            assert connections == [1] * HOSTS, connections
        else:
            # 30 hosts in turn through room for 16: most deliveries open one
            assert sum(connections) >= HOSTS * EVENTS * 2 // 3, connections
        # the counter: the deliveries' connections, less those the challenge opened
        # (counted once the answer is in, a moment after the endpoint saw the
        # last POST: waited for, not read at once)
        opened = sum(len({conn for conn, _ in e.posts} - e.challenged) for e in eps)
        wait_until(lambda: d.metric("hookbridge_connections_opened_total") >= opened, 10,
                   f"hookbridge_connections_opened_total to count the {opened} connections")
        assert d.metric("hookbridge_connections_opened_total") == opened
    finally:
        for e in eps:
            e.shutdown()


class DroppingEverySecond(ChallengeAnswering):
    """Reads every second POST of a connection and closes it unanswered: the
    race of an endpoint closing an idle keep-alive connection just as a
    request is sent on it (nginx's keepalive_timeout, a load balancer's idle
    timeout). The client sends the request again on a fresh connection,
    where it is answered 204."""
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.requests_here = 0

    def do_POST(self):
        uuids = posted_uuids(self)
        self.requests_here += 1
        if self.requests_here == 2:
            self.close_connection = True  # nothing sent: the connection just closes
            return
        with self.server.lock:
            self.server.posts.append((self.client_address[1], uuids))
        self.answer()


def test_a_connection_the_endpoint_closed_is_retried_on_a_new_one_however_often_it_happens(
        db_url, procs, workdir):
    """Every such race is retried on a new connection, within the attempt.
    curl 7.88 counts those retries per easy handle over its whole life and,
    at the sixth, fails the transfer ("Connection died, tried 5 times before
    giving up"); handles live for the whole run of a service, so after a few
    such races each later one made a delivery attempt fail: a failed attempt
    the endpoint never answered, sent to the delay tiers and counted against
    the endpoint's circuit. One request at a time here, so one handle makes
    every request: 16 deliveries, 8 races."""
    ep = endpoint(DroppingEverySecond)
    try:
        broker = Broker(procs, workdir)
        d = Dispatcher(procs, db_url, broker.bootstrap,
                       extra_env={"HOOKBRIDGE_MAX_IN_FLIGHT": "1"})
        d.wait_ready()
        subscribe_all(db_url, [ep.url])
        wait_until(lambda: d.metric("hookbridge_subscriptions") >= 1, 15 * SLOW,
                   "the dispatcher to have the subscription")
        n = 16
        produce(broker.bootstrap, [event("user.session.start") for _ in range(n)])
        wait_until(lambda: d.metric('hookbridge_deliveries_total{outcome="delivered"}')
                   + d.metric('hookbridge_deliveries_total{outcome="retry"}') >= n, 30 * SLOW,
                   "every delivery to be attempted")
        failed = [l for l in d.proc.output().splitlines() if "failed" in l]
        assert d.metric('hookbridge_responses_total{class="none"}') == 0, failed[:3]
        assert d.metric('hookbridge_deliveries_total{outcome="delivered"}') == n
        assert len(ep.posts) == n
    finally:
        ep.shutdown()
