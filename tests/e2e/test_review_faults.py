"""Faults on the path of a failed delivery, found in review: each test shows
what a user saw before its fix.

- A retry of an ordered key's head read again (a duplicate of an attempt
  already made, as after a restart) is dropped as stale; that must not let
  the deliveries waiting in the retrier's memory behind the head go while
  the head's own retry is still in flight.
- Deliveries not attempted (here rate limited) are not endpoint failures:
  endpoint_health does not count them and deactivate_failing leaves the
  subscription active.
- A delivery held by its rate limit while its URL moves asks the new host's
  circuit, not the old one's.
- A load of the subscriptions that fails on a connection that stays up (a
  statement timeout while a lock is held): after a reconnect it neither
  empties the index nor stays missed; at start it does not leave the service
  not ready for good; for one notified change it does not remove the
  subscription."""
import json
import time

from hbtest.avro import decode
from hbtest.procs import SLOW, wait_until
from hbtest.stack import produce, topic_records
from test_delivery import register_verified, sql
from test_ordering import Endpoint, delivery_id, event, stack


def test_a_stale_copy_of_the_head_s_retry_does_not_release_its_key(db_url, procs, workdir):
    """The head of user K's events fails three times at a slow endpoint; the
    event behind it waits in the retrier's memory while the head's third
    attempt is in flight. Then a copy of the head's second attempt (made and
    logged already: stale) is read again, as after a restart. The copy is
    dropped unattempted, and the waiting event still goes only once the head
    is delivered: one request of the key at a time, in order. (Before: the
    dropped copy counted as the head being final, and the waiting event was
    sent beside the head's third attempt, and acknowledged before the head.)"""
    from kafka import KafkaProducer
    ep = Endpoint(delay_s=2.0)
    try:
        broker, d, r = stack(procs, workdir, db_url, ",".join(["1s"] * 6))
        sub = register_verified(db_url, ep.url, ["user.session.start"], {"ordering": "target"})
        head, behind = event("00uK", 0), event("00uK", 1)
        ep.fail_first[head["uuid"]] = 3
        produce(broker.bootstrap, [head, behind])
        hid = wait_until(lambda: delivery_id(db_url, sub, head), 20 * SLOW, "the head logged")
        # its second attempt is on the tier once its first is logged
        copy = next(m for m in topic_records(broker.bootstrap, "hookbridge.retry.1s", want=1)
                    if (v := decode("delivery_retry", m.value))["delivery_id"] == hid
                    and v["attempt"] == 2)
        kp = KafkaProducer(bootstrap_servers=broker.bootstrap.split(","))
        wait_until(lambda: ep.seen.get(head["uuid"], 0) >= 3, 30 * SLOW,
                   "the head's third attempt in flight")
        assert sql(db_url, "SELECT attempts FROM hookbridge.deliveries WHERE delivery_id=%s",
                   hid)[0][0] == 2
        time.sleep(0.5)  # the event behind it has come round and waits for it
        kp.send("hookbridge.retry.1s", value=copy.value, key=copy.key, partition=copy.partition)
        kp.flush()
        kp.close()
        wait_until(lambda: len(ep.order("00uK")) == 2, 60 * SLOW, "both events acknowledged")
        assert r.metric("hookbridge_stale_retries_dropped_total") == 1, "the copy was not read"
        assert ep.max_in_flight["00uK"] == 1, "the waiting event was sent beside the head"
        assert ep.order("00uK") == [head["uuid"], behind["uuid"]]
    finally:
        ep.srv.shutdown()


def test_deliveries_not_attempted_are_not_counted_as_endpoint_failures(db_url, procs, workdir):
    """A subscription limited to one request every 5 s: its first event is
    sent and acknowledged; five more a moment later cannot wait for their
    turn and go to the delay tier unattempted ("rate limited: ..."). Its
    endpoint answered all it got: endpoint_health has it not failing, and
    deactivate_failing (the retrier's automatic deactivation) leaves it
    active. (Before: the five rows of attempts not made counted as failed
    attempts, and deactivate_failing deactivated the subscription, "every
    attempt failed since ... last error: rate limited: ...", dropping its
    pending retries.)"""
    from hbtest.stack import Broker, Dispatcher, Receiver
    from test_delivery import AUTH_VALUE, SECRET
    from test_rate_limit import users
    broker = Broker(procs, workdir, retry_schedule="1h")
    rcv = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_RETRY_SCHEDULE": "1h", "HOOKBRIDGE_MAX_QUEUE_WAIT": "2s"})
    d.wait_ready()
    sub = register_verified(db_url, rcv.url, ["user.session.start"],
                            {"rate_limit": {"per_second": 0.2, "burst": 1}})

    def log():
        return sql(db_url, "SELECT status, coalesce(last_error, '') FROM hookbridge.deliveries "
                   "WHERE subscription_id=%s", sub)
    produce(broker.bootstrap, users(1))
    wait_until(lambda: [r[0] for r in log()] == ["delivered"], 20 * SLOW, "the first delivered")
    produce(broker.bootstrap, users(5))
    rows = wait_until(lambda: len(rs := log()) == 6 and rs, 20 * SLOW, "five more in the log")
    parked = [r for r in rows if r[0] == "retry"]
    assert len(parked) == 5 and all(r[1].startswith("rate limited: ") for r in parked), rows
    assert [p["status"] for p in rcv.posts()] == [204]
    assert sql(db_url, "SELECT consecutive_failures, failing_since FROM "
               "hookbridge.endpoint_health WHERE subscription_id=%s", sub) == [(0, None)]
    time.sleep(1.5)
    assert sql(db_url, "SELECT * FROM hookbridge.deactivate_failing('1 second')") == []
    assert sql(db_url, "SELECT status FROM hookbridge.subscriptions WHERE id=%s",
               sub) == [("active",)]


def test_a_delivery_held_by_its_rate_limit_follows_its_new_url_s_circuit(db_url, procs, workdir):
    """A rate-limited subscription (one request every 5 s) whose endpoint A
    answers 500: its first two events open A's circuit (2 failures). Its URL
    then moves to a healthy endpoint B, verified, while its third event waits
    for its turn. When the turn comes the event goes to B, whose circuit is
    closed. (Before: the held delivery still asked A's circuit, was not
    attempted, "circuit open: endpoint failing", and waited in the delay tier
    although B had never failed.)"""
    from hbtest.stack import Broker, Dispatcher, Receiver
    from test_delivery import AUTH_VALUE, SECRET
    from test_rate_limit import users
    broker = Broker(procs, workdir, retry_schedule="1h")
    auth = f"Authorization: {AUTH_VALUE}"
    a = Receiver(procs, workdir, secret=SECRET, auth=auth, status=500, name="a")
    b = Receiver(procs, workdir, secret=SECRET, auth=auth, name="b")
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_RETRY_SCHEDULE": "1h", "HOOKBRIDGE_MAX_QUEUE_WAIT": "60s",
        "HOOKBRIDGE_CIRCUIT_FAILURES": "2", "HOOKBRIDGE_CIRCUIT_COOLDOWN": "5m"})
    d.wait_ready()
    sub = register_verified(db_url, a.url, ["user.session.start"],
                            {"rate_limit": {"per_second": 0.2, "burst": 1}})
    evs = users(3)
    produce(broker.bootstrap, evs)
    wait_until(lambda: len(a.posts()) == 2, 20 * SLOW, "two failed attempts at A")
    wait_until(lambda: "circuit open after 2 consecutive failures" in d.proc.output(),
               10 * SLOW, "A's circuit open")
    sql(db_url, "SELECT hookbridge.update(%s, url => %s)", sub, b.url)
    wait_until(lambda: sql(db_url, "SELECT verification FROM hookbridge.subscriptions "
                           "WHERE id=%s", sub)[0][0] == "verified", 10 * SLOW, "B verified")
    wait_until(lambda: b.posts(), 20 * SLOW, "the third event at B")
    at_a = {json.loads(r["body"])["data"]["events"][0]["uuid"] for r in a.posts()}
    assert len(at_a) == 2
    assert [e["uuid"] for _, e in b.events()] == [
        e["uuid"] for e in evs if e["uuid"] not in at_a]


def test_a_failed_reload_after_a_reconnect_loses_no_event(pg_cluster, db_url, procs, workdir):
    """The dispatcher's database connection drops; meanwhile a second
    subscription is deactivated (its notification missed). When the
    connection comes back, the reload of the subscriptions fails (here a
    statement timeout while a lock is held; a connection lost again mid-way
    does the same) though the connection stays up. An event produced then is
    delivered with the subscriptions held in memory, as during the outage;
    the reload is made again, and an event produced after it reaches the
    first subscription's endpoint and not the deactivated one's. (Before: the
    failed reload left the index empty and the dispatcher went on consuming:
    events matched nothing and were skipped, their offsets committed, and
    nothing reloaded the index until the next reconnect.)"""
    import psycopg2
    from hbtest.stack import Receiver
    from test_delivery import event as delivery_event
    from test_promises3 import delivering_through
    proxy, broker, rcv, d, sub = delivering_through(pg_cluster, db_url, procs, workdir)
    lock = psycopg2.connect(db_url)

    def delivered(e, r):
        return e["uuid"] in {ev["uuid"] for _, ev in r.events()}
    try:
        rcv2 = Receiver(procs, workdir, name="second")
        sub2 = register_verified(db_url, rcv2.url, ["user.session.start"])
        dbname = sql(db_url, "SELECT current_database()")[0][0]
        proxy.cut()
        wait_until(lambda: "database not connected" in d.get("/readyz")[1], 10 * SLOW,
                   "the dispatcher to see the database gone")
        sql(db_url, "SELECT hookbridge.deactivate(%s)", sub2)
        sql(db_url, f'ALTER DATABASE "{dbname}" SET statement_timeout = 200')
        lock.cursor().execute("LOCK TABLE hookbridge.subscriptions IN ACCESS EXCLUSIVE MODE")
        proxy.start()
        wait_until(lambda: "cannot load subscriptions" in d.proc.output(), 20 * SLOW,
                   "the reload after the reconnect to fail")
        during = delivery_event("user.session.start")
        produce(broker.bootstrap, [during])
        wait_until(lambda: delivered(during, rcv), 20 * SLOW,
                   "the event produced while the reload fails at its endpoint")
        loaded = d.proc.output().count("subscription index loaded")
        lock.rollback()
        sql(db_url, f'ALTER DATABASE "{dbname}" RESET statement_timeout')
        wait_until(lambda: d.proc.output().count("subscription index loaded") > loaded,
                   20 * SLOW, "the subscriptions reloaded")
        after = delivery_event("user.session.start")
        produce(broker.bootstrap, [after])
        wait_until(lambda: delivered(after, rcv), 20 * SLOW, "the event produced after it")
        time.sleep(0.5)
        assert not delivered(after, rcv2), "an event reached the deactivated subscription"
    finally:
        lock.close()
        proxy.close()


def test_a_service_whose_first_load_fails_loads_again(db_url, procs, workdir):
    """A dispatcher starts while its first load of the subscriptions fails on
    a connection that stays up (a statement timeout while a lock is held).
    Once the lock is gone it becomes ready by itself and delivers. (Before:
    nothing loaded the subscriptions again: not ready, 'subscription index
    not loaded', for good, though its loop and /healthz went on.)"""
    import psycopg2
    from hbtest.stack import Broker, Dispatcher, Receiver
    from test_delivery import event as delivery_event
    dbname = sql(db_url, "SELECT current_database()")[0][0]
    lock = psycopg2.connect(db_url)
    try:
        broker = Broker(procs, workdir)
        rcv = Receiver(procs, workdir)
        sql(db_url, f'ALTER DATABASE "{dbname}" SET statement_timeout = 200')
        lock.cursor().execute("LOCK TABLE hookbridge.subscriptions IN ACCESS EXCLUSIVE MODE")
        d = Dispatcher(procs, db_url, broker.bootstrap)
        wait_until(lambda: "cannot load subscriptions" in d.proc.output(), 20 * SLOW,
                   "the first load to fail")
        lock.rollback()
        sql(db_url, f'ALTER DATABASE "{dbname}" RESET statement_timeout')
        d.wait_ready(timeout=20 * SLOW)
        sub = register_verified(db_url, rcv.url, ["user.session.start"])
        e = delivery_event("user.session.start")
        produce(broker.bootstrap, [e])
        wait_until(lambda: e["uuid"] in {ev["uuid"] for _, ev in rcv.events()}, 20 * SLOW,
                   "the event at its endpoint")
        assert sub
    finally:
        lock.close()


def test_a_change_whose_load_fails_for_a_moment_does_not_remove_the_subscription(
        pg_cluster, db_url, procs, workdir):
    """A change of an active subscription is notified while its row cannot
    be read for a moment (a statement timeout while a lock is held) on a
    connection that stays up. The dispatcher loads the subscriptions again
    once it can, and an event produced after the lock is gone reaches the
    endpoint. (Before: the failed load removed the subscription from the
    index as if its row were unreadable for good, 'deliveries to it stop
    until it is fixed': its events were skipped, their offsets committed.)"""
    import psycopg2
    from test_delivery import event as delivery_event
    from test_promises3 import delivering_through
    proxy, broker, rcv, d, sub = delivering_through(pg_cluster, db_url, procs, workdir)
    lock = psycopg2.connect(db_url)
    dbname = sql(db_url, "SELECT current_database()")[0][0]
    try:
        # the dispatcher's connections from now on time out after 200 ms
        sql(db_url, f'ALTER DATABASE "{dbname}" SET statement_timeout = 200')
        proxy.cut()
        wait_until(lambda: "database not connected" in d.get("/readyz")[1], 10 * SLOW,
                   "the dispatcher to see the database gone")
        proxy.start()
        d.wait_ready(timeout=20 * SLOW)
        sql(db_url, f'ALTER DATABASE "{dbname}" RESET statement_timeout')
        lock.cursor().execute("LOCK TABLE hookbridge.subscriptions IN ACCESS EXCLUSIVE MODE")
        timeouts = d.proc.output().count("statement timeout")
        sql(db_url, "SELECT pg_notify('hookbridge_subscriptions', %s)", sub)
        wait_until(lambda: d.proc.output().count("statement timeout") > timeouts, 10 * SLOW,
                   "the change's load to time out")
        lock.rollback()
        wait_until(lambda: d.get("/readyz")[0] == 200, 20 * SLOW, "the dispatcher ready")
        e = delivery_event("user.session.start")
        produce(broker.bootstrap, [e])
        wait_until(lambda: e["uuid"] in {ev["uuid"] for _, ev in rcv.events()}, 20 * SLOW,
                   "the event at its endpoint")
    finally:
        lock.close()
        proxy.close()
