"""Review 82: the dispatcher's sync barrier (events are matched once the
store's empty query sent after they were taken is answered) on an
operator's bad day: a slow database, a writer schema on its way.

Each check says what it did on main's binaries (8ee2b7f)."""
import contextlib
import time

from kafka import KafkaProducer  # python3-kafka: an independent client

from hbtest.procs import SLOW, wait_until
from hbtest.pyavro import event_schema, registry_framed, single_object
from hbtest.registry import StandInRegistry
from hbtest.stack import Broker, Dispatcher, Receiver, produce
from hbtest.tcpproxy import TcpProxy
from test_delivery import AUTH_VALUE, SECRET, event, register_verified
from test_review64_faults import _via  # the database URL through a proxy
from test_change_before_event import subscribed_through
from test_schema_evolution import NEWER, an_event


@contextlib.contextmanager
def dispatcher_behind_a_proxy(db_url, pg_cluster, procs, workdir):
    """A dispatcher whose database is reached through a TcpProxy, with an
    active subscription of a receiver in its index: (proxy, receiver,
    broker, dispatcher); the proxy closed at the end."""
    proxy = TcpProxy(pg_cluster.port)
    proxy.start()
    try:
        receiver, broker, d, _ = subscribed_through(proxy, db_url, procs, workdir)
        wait_until(lambda: d.metric("hookbridge_subscriptions") >= 1, 15 * SLOW,
                   "the subscription in the dispatcher's index")
        yield proxy, receiver, broker, d
    finally:
        proxy.delay = 0
        proxy.close()


def test_events_held_for_a_slow_sync_behind_one_waiting_for_its_schema_keep_their_order(
        db_url, pg_cluster, procs, workdir):
    """An ordered subscription (options.ordering = actor) and one actor's
    events on one partition, in the Schema Registry framing with a writer
    schema id the dispatcher has not fetched yet, published every 30 ms;
    the dispatcher's database is 200 ms away (a proxy holds each chunk), so
    each sync takes about 400 ms and the events taken meanwhile wait for
    the next. The first event waits for its schema (its partition is
    rewound to it and read again 100 ms later): the events taken after it
    and still waiting for their sync must not be matched then, ahead of it.

    On main (8ee2b7f): the partition, read again from the first event, and
    the events taken before the rewind were both matched: the receiver got
    the events out of order and some twice. Now each once, in order."""
    registry = StandInRegistry()
    proxy = TcpProxy(pg_cluster.port)
    proxy.start()
    try:
        registry.add(11, NEWER)
        receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
        broker = Broker(procs, workdir)
        d = Dispatcher(procs, _via(db_url, proxy.port), broker.bootstrap, extra_env={
            "HOOKBRIDGE_SCHEMA_REGISTRY_URL": registry.url,
            "HOOKBRIDGE_SCHEMA_REGISTRY_USER_INFO": registry.user_info})
        d.wait_ready()
        register_verified(db_url, receiver.url, ["user.session.start"],
                          {"ordering": "actor"})
        wait_until(lambda: d.metric("hookbridge_subscriptions") >= 1, 15 * SLOW,
                   "the subscription in the dispatcher's index")
        proxy.delay = 0.2
        kp = KafkaProducer(bootstrap_servers=broker.bootstrap.split(","))
        sent = []
        first = an_event()
        for i in range(40):
            ev = an_event()
            ev["actor"] = first["actor"]
            ev["target"] = first["target"]
            kp.send(broker.events_topic, value=registry_framed(NEWER, ev, 11), key=b"k",
                    partition=0)
            kp.flush()
            sent.append(ev["uuid"])
            time.sleep(0.03)
        kp.close()
        got = wait_until(lambda: (g := [e["uuid"] for _, e in receiver.events()])
                         and set(g) >= set(sent) and g, 30 * SLOW, "every event")
        time.sleep(1)  # any late duplicate
        got = [e["uuid"] for _, e in receiver.events()]
        dups = len(got) - len(set(got))
        order = [sent.index(u) for u in dict.fromkeys(got)]
        print(f"received {len(got)} ({dups} twice); order {order}")
        assert dups == 0, f"{dups} events delivered twice: {order}"
        assert order == sorted(order), f"out of order: {order}"
    finally:
        proxy.delay = 0
        proxy.close()
        registry.stop()


def test_events_taken_for_a_sync_count_against_the_payload_budget(db_url, procs, workdir):
    """HOOKBRIDGE_MAX_PENDING_BYTES (1 MiB here) bounds what a dispatcher
    holds when events are large: it takes the next event only while the
    payloads held are under it (docs/configuration.md), so an endpoint that
    does not answer leaves it holding about 1 MiB, not the topic. 150 events
    of 60 KB each are on the topic; the endpoint holds every request.

    On main (8ee2b7f) the events taken and waiting for the store's sync
    were not counted: the first passes took them as fast as Kafka handed
    them over (hookbridge_messages_consumed_total 61, 81 and 84 after 2 s
    in three runs: up to 5 MB of events in memory while 1 MiB was allowed),
    matched them all and queued what did not fit. Now it takes about the
    budget's worth (18 events) and waits."""
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                        delay_ms=20000)
    broker = Broker(procs, workdir)
    d = Dispatcher(procs, db_url, broker.bootstrap,
                   extra_env={"HOOKBRIDGE_MAX_PENDING_BYTES": str(1 << 20),
                              "HOOKBRIDGE_SHUTDOWN_TIMEOUT": "1s"})
    d.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"])
    wait_until(lambda: d.metric("hookbridge_subscriptions") >= 1, 15 * SLOW,
               "the subscription in the dispatcher's index")
    evs = [dict(event("user.session.start"), displayMessage=f"{i} " + "x" * 60000)
           for i in range(150)]
    produce(broker.bootstrap, evs)
    wait_until(lambda: d.metric("hookbridge_messages_consumed_total") > 0, 10 * SLOW,
               "the first events taken")
    time.sleep(2)
    taken = d.metric("hookbridge_messages_consumed_total")
    print(f"taken {taken}, pending payload bytes "
          f"{d.metric('hookbridge_pending_payload_bytes')}")
    assert taken <= 30, f"{taken} events of 60 KB taken with a budget of 1 MiB"


def test_events_matched_without_the_database_s_answer_are_counted_and_said(
        db_url, pg_cluster, procs, workdir):
    """docs/sql.md promises that a change committed before an event was
    published applies to it; the dispatcher keeps that by waiting for its
    database's answer to a sync, and after 1 s without one it matches the
    events against the subscriptions it has. An operator then needs to know
    the promise was not kept for those events: the proxy to the database
    forwards nothing (a server that answers nothing) while 3 events are
    published; then the database answers again and one more is.

    On main (8ee2b7f): every event delivered, /readyz 200 throughout, and
    not a line nor a metric said that 3 events were matched without the
    answer. Now hookbridge_events_unsynced_total counts them (0 before the
    silence and for the event after it), a warning says it once, and an
    info line says when the sync is answered again."""
    with dispatcher_behind_a_proxy(db_url, pg_cluster, procs, workdir) as (proxy, receiver,
                                                                          broker, d):
        def deliver(n):
            e = event("user.session.start")
            produce(broker.bootstrap, [e])
            wait_until(lambda: e["uuid"] in [ev["uuid"] for _, ev in receiver.events()],
                       10 * SLOW, f"event {n}")

        deliver(1)
        assert d.metric("hookbridge_events_unsynced_total", -1) == 0
        proxy.pause()
        for n in range(2, 5):
            deliver(n)
        assert d.metric("hookbridge_events_unsynced_total") == 3
        out = d.proc.output()
        assert out.count("no answer to the subscription store's sync") == 1, out[-3000:]
        proxy.resume()
        deliver(5)
        wait_until(lambda: "the subscription store's sync is answered again" in d.proc.output(),
                   10 * SLOW, "the sync answered again")
        assert d.metric("hookbridge_events_unsynced_total") == 3


def test_events_wait_for_a_slow_database_s_answer_a_second_at_most(
        db_url, pg_cluster, procs, workdir):
    """docs/sql.md: after 1 s without an answer to its sync the dispatcher
    matches the events against the subscriptions it has. The database is
    450 ms away (a proxy holds each chunk: each sync takes about 0.9 s) and
    an event is published every 50 ms for 2 s: those taken while one sync
    is on its way wait for the next, but none longer than about a second.

    On main (8ee2b7f) the events left waiting by one answer had their
    second counted from that answer, not from when they were taken: they
    waited for the next answer, delivered up to 2.11 s after they were
    published (median 1.60 s; again 2.13 s, 1.67 s). Now at most 1.42 to
    1.53 s (median 0.84 to 1.08 s): the second from when the oldest was
    taken, the loop's 100 ms turn, and Kafka's fetch."""
    with dispatcher_behind_a_proxy(db_url, pg_cluster, procs, workdir) as (proxy, receiver,
                                                                          broker, d):
        proxy.delay = 0.45
        kp = KafkaProducer(bootstrap_servers=broker.bootstrap.split(","))
        sent = {}
        for _ in range(40):
            ev = an_event()
            kp.send(broker.events_topic, value=single_object(event_schema(), ev))
            kp.flush()
            sent[ev["uuid"]] = time.time()
            time.sleep(0.05)
        kp.close()
        wait_until(lambda: {e["uuid"] for _, e in receiver.events()} >= set(sent) or None,
                   30 * SLOW, "every event")
        late = sorted(r["time_ms"] / 1000 - sent[e["uuid"]] for r, e in receiver.events())
        print(f"delivered after (s): max {late[-1]:.2f}, median {late[len(late) // 2]:.2f}")
        assert late[len(late) // 2] < 1.3 * SLOW, late
        # the median tells the two apart; the slowest only has to stay within
        # a second of it on a loaded machine (make test runs 8 workers on 2 cores)
        assert late[-1] < 3 * SLOW, late
