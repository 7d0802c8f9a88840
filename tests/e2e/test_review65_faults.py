"""Review 65: what a long-running dispatcher or retrier keeps per endpoint
host and per subscription while subscriptions come and go (thousands a day,
each on its own host name), endpoints move, hosts go away.

Host names resolve to loopback through review 57's LD_PRELOAD getaddrinfo
shim (it stands in for the operating system's resolver, not for any part of
hookbridge): a name under .hbmove resolves to what its line in a map file
says.

Each check says what it did on 58f732a (before this review's commits)."""
import http.server
import os
import threading

from hbtest.endpoints import ChallengeAnswering, posted_uuids
from hbtest.lifecycle import REMOVED, wait_taken
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, produce
from test_delivery import event, sql
from test_review31_faults import outcomes
from test_review57_faults import DnsMap, shim, subscribe  # noqa: F401 (shim: a fixture)

def switchable(status):
    """A keep-alive endpoint on 127.0.0.1 answering status[0] to every POST
    (change status[0] to change the answer)."""
    got = []

    class Handler(ChallengeAnswering):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            got.extend(posted_uuids(self))
            self.answer(status[0])

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.got = got
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_a_host_subscribed_to_again_starts_without_the_circuit_of_its_previous_life(
        db_url, procs, workdir, shim, tmp_path):  # noqa: F811
    """Two subscriptions on api.customer.hbmove, whose endpoint answers 503:
    its circuit opens (3 failures, cool-down 60 s). The endpoint is fixed;
    one subscription is deregistered: the other still has its URL there, so
    the circuit stays (its next deliveries are not attempted). Then the last
    one is deregistered too, and a new subscription (the customer's new one,
    a new secret) is made to the same URL.

    On 58f732a the new subscription met the circuit of the host's previous
    life: of its first 10 events 0 were sent, all 10 went to the delay tier
    (`circuit open: endpoint failing`; after the cool-down it would have
    been 1 probe and 9 so), and in the retrier a circuit left so counts as
    failed attempts. Now a host no subscription has any more is forgotten
    (circuit, pacing, the HTTP engine's memory of it): all 10 are delivered
    at the first attempt, and the log says `circuit forgotten`."""
    status = [503]
    srv = switchable(status)
    dns = DnsMap(str(tmp_path / "names"))
    dns.set("api.customer.hbmove", "127.0.0.1")
    url = f"http://api.customer.hbmove:{srv.server_address[1]}/hook"
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_RETRY_SCHEDULE": "1h", "HOOKBRIDGE_LOG_LEVEL": "info",
            "HOOKBRIDGE_CIRCUIT_FAILURES": "3", "HOOKBRIDGE_CIRCUIT_COOLDOWN": "60s",
            "LD_PRELOAD": shim, "HBMOVE_MAP": dns.path,
            "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"})
        d.wait_ready()
        a, c = subscribe(db_url, url), subscribe(db_url, url + "?c")
        wait_taken(d, [a, c])
        produce(broker.bootstrap, [event("user.session.start") for _ in range(3)])
        wait_until(lambda: d.metric("hookbridge_circuit_opens_total") >= 1, 20 * SLOW,
                   "the circuit to open")
        # the endpoint fixed once every first attempt is answered: one still in
        # flight answered 204 closes the circuit (CI 109: c's third event
        # delivered, then its next two)
        wait_until(lambda: sum(outcomes(db_url, a).values()) + sum(
            outcomes(db_url, c).values()) >= 6, 20 * SLOW, "the first events' outcomes")
        skip = ("retry", 0, "circuit open: endpoint failing")
        before = outcomes(db_url, c).get(skip, 0)
        status[0] = 204

        sql(db_url, "SELECT hookbridge.deregister(%s)", a)
        wait_taken(d, [a], REMOVED)
        produce(broker.bootstrap, [event("user.session.start") for _ in range(2)])
        wait_until(lambda: sum(outcomes(db_url, c).values()) >= 5, 20 * SLOW, "c's outcomes")
        skipped = outcomes(db_url, c).get(skip, 0) - before
        assert skipped == 2, outcomes(db_url, c)  # c is still there: the circuit stays

        sql(db_url, "SELECT hookbridge.deregister(%s)", c)
        b = subscribe(db_url, url)
        wait_taken(d, [c], REMOVED)
        wait_taken(d, [b])
        sent = [event("user.session.start") for _ in range(10)]
        produce(broker.bootstrap, sent)
        wait_until(lambda: sum(outcomes(db_url, b).values()) >= 10, 20 * SLOW, "b's outcomes")
        assert outcomes(db_url, b) == {("delivered", 1, ""): 10}, outcomes(db_url, b)
        assert {e["uuid"] for e in sent} <= set(srv.got)
        assert "circuit forgotten: no subscription has its URL at the endpoint any more" in (
            d.proc.output())
    finally:
        srv.shutdown()
