"""Faults of the dispatcher's side, found in review: each test shows what a
user saw before its fix.

- Events of an ordered key waiting in the dispatcher's memory behind a slow
  head when the subscription is deactivated and at once activated again are
  dropped, like a batch still filling or a pending retry: only events that
  arrive after the reactivation are delivered.
- An event whose uuid is empty is poison (dead-lettered with the reason),
  not delivered under a webhook-id every such event shares.
- An event that arrives after a deactivation and reactivation is delivered,
  though a batch opened before the deactivation was still filling.
- A batch dropped for its deactivated subscription is logged 'dropped', not
  'failed' (and dead-lettered) for a body too large to send."""
from hbtest.procs import SLOW, wait_until
from hbtest.stack import produce
from test_delivery import register_verified, sql
from test_ordering import Endpoint, delivery_id, event, stack
from test_reactivate import deactivate_then_activate

DROP_REASON = "subscription was deactivated after this delivery began"


def test_ordered_events_held_in_memory_at_a_deactivation_stay_dropped_after_reactivation(
        db_url, procs, workdir):
    """A slow endpoint, five events of one key: the first in flight, four
    waiting in the dispatcher's memory behind it. The subscription is
    deactivated and activated again while the first is in flight. The four
    waiting were there before the deactivation: none reaches the endpoint
    afterwards (each logged 'dropped'). (Before: the deactivation was
    forgotten by the reactivation, and all four were sent, one after the
    other.)"""
    ep = Endpoint(delay_s=2.0)
    try:
        broker, d, r = stack(procs, workdir, db_url, ",".join(["1s"] * 30))
        sub = register_verified(db_url, ep.url, ["user.session.start"], {"ordering": "target"})
        evs = [event("00uR", i) for i in range(5)]
        produce(broker.bootstrap, evs)
        wait_until(lambda: ep.seen.get(evs[0]["uuid"]), 20 * SLOW, "the first in flight")
        deactivate_then_activate(db_url, sub, d, r)

        def row(e):
            did = delivery_id(db_url, sub, e)
            return did and sql(db_url, "SELECT status, last_error FROM hookbridge.deliveries "
                               "WHERE delivery_id=%s", did)[0]
        wait_until(lambda: all(row(e) and row(e)[0] in ("delivered", "dropped") for e in evs),
                   30 * SLOW, "every event final")
        sent_after = [e["uuid"] for e in evs[1:] if ep.seen.get(e["uuid"])]
        assert sent_after == [], f"{len(sent_after)} of the four sent after the reactivation"
        assert [row(e) for e in evs[1:]] == [("dropped", DROP_REASON)] * 4
    finally:
        ep.srv.shutdown()


def test_an_event_with_an_empty_uuid_is_poison_not_delivered_under_another_s_webhook_id(
        db_url, procs, workdir):
    """Two different events whose uuid is empty (a producer of your own that
    fills it in wrong; the schema requires it, hookbridge's producer and
    ingest endpoint refuse it) are poison: copied to the dead-letter topic
    with the reason, not delivered. (Before: both were delivered, with one
    webhook-id derived from the empty uuid, so a receiver de-duplicating on
    it dropped the second, and the delivery log had one row for the two.)"""
    from kafka import KafkaProducer
    from hbtest.pyavro import event_schema, single_object
    from hbtest.stack import topic_records
    ep = Endpoint()
    try:
        broker, d, _ = stack(procs, workdir, db_url, "1s")
        register_verified(db_url, ep.url, ["user.session.start"])
        kp = KafkaProducer(bootstrap_servers=broker.bootstrap.split(","), retries=10)
        bad = []
        for n in range(2):
            bad.append(single_object(event_schema(), {
                "uuid": "", "published": "2026-01-01T00:00:00.000Z",
                "eventType": "user.session.start", "displayMessage": f"no uuid {n}",
                "target": [{"id": "00uE", "type": "User"}]}))
            kp.send(broker.events_topic, key=b"00uE", value=bad[-1]).get(timeout=30)
        kp.flush()
        kp.close()
        good = event("00uE", 2)
        produce(broker.bootstrap, [good])
        wait_until(lambda: ep.seen.get(good["uuid"]), 20 * SLOW, "the event behind them")
        wait_until(lambda: "poison message" in d.proc.output() or ep.seen.get("") == 2,
                   20 * SLOW, "both read")
        assert ep.seen.get("") is None, "events without a uuid were delivered"
        msgs = topic_records(broker.bootstrap, broker.dlq_topic, want=2)
        assert sorted(m.value for m in msgs) == sorted(bad)
        assert {dict(m.headers)["hookbridge-reason"] for m in msgs} == {b"uuid: empty or holding a NUL character"}
    finally:
        ep.srv.shutdown()


def test_an_event_arriving_after_a_reactivation_is_not_dropped_with_the_batch_it_joins(
        db_url, procs, workdir):
    """A batch opens with event A; the subscription is deactivated and
    activated again before the window closes; then event B comes. A
    arrived before the deactivation and is dropped; B arrived after the
    reactivation and is delivered. (Before: B joined A's batch, and the
    whole batch was dropped when its window closed, B with it.)"""
    window_s = 4
    ep = Endpoint()
    try:
        broker, d, r = stack(procs, workdir, db_url, "1s")
        sub = register_verified(db_url, ep.url, ["user.session.start"],
                                {"batch_max": 100, "batch_window_ms": window_s * 1000})
        a, b = event("00uA", 0), event("00uB", 1)
        produce(broker.bootstrap, [a])
        wait_until(lambda: d.metric("hookbridge_messages_consumed_total") >= 1, 20 * SLOW,
                   "A read")
        deactivate_then_activate(db_url, sub, d, r)
        produce(broker.bootstrap, [b])
        wait_until(lambda: d.metric("hookbridge_messages_consumed_total") >= 2, 20 * SLOW,
                   "B read")

        def status(e):
            rows = sql(db_url, "SELECT status, last_error FROM hookbridge.deliveries "
                       "WHERE subscription_id=%s AND %s = ANY(string_to_array(event_ids, ','))",
                       sub, e["uuid"])
            return rows[0] if rows else None
        wait_until(lambda: status(a) and status(b), (window_s + 20) * SLOW, "both logged")
        assert status(a) == ("dropped", DROP_REASON)
        assert status(b) == ("delivered", None), "B arrived after the reactivation"
        assert ep.seen.get(b["uuid"]) == 1 and not ep.seen.get(a["uuid"])
    finally:
        ep.srv.shutdown()


def test_a_batch_of_a_deactivated_subscription_is_dropped_even_when_too_large_to_send(
        db_url, procs, workdir):
    """A batch still filling when its subscription is deactivated is dropped
    and logged so, also when its body would exceed
    HOOKBRIDGE_MAX_PAYLOAD_BYTES: nothing is rendered for a batch that is not
    sent. (Before: it was rendered first, and logged 'failed' for its size,
    and dead-lettered, for a subscription that was simply switched off.)"""
    from hbtest.lifecycle import INACTIVE, changes_applied
    from hbtest.stack import topic_records
    ep = Endpoint()
    try:
        broker, d, _ = stack(procs, workdir, db_url, "1s",
                             env={"HOOKBRIDGE_MAX_PAYLOAD_BYTES": "1024"})
        sub = register_verified(db_url, ep.url, ["user.session.start"],
                                {"batch_max": 10, "batch_window_ms": 4000})
        evs = [dict(event("00uL", i), displayMessage="x" * 600) for i in range(2)]
        produce(broker.bootstrap, evs)
        wait_until(lambda: d.metric("hookbridge_messages_consumed_total") >= 2, 20 * SLOW,
                   "both read (waiting in the batch)")
        sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
        wait_until(lambda: changes_applied(d, sub, INACTIVE) >= 1, 10 * SLOW,
                   "the dispatcher to see the deactivation")
        rows = wait_until(lambda: sql(db_url, "SELECT status, last_error FROM "
                                      "hookbridge.deliveries WHERE subscription_id = %s", sub),
                          20 * SLOW, "the batch logged")
        # too large for one request: dropped in two parts that fit (review 19)
        assert rows == [("dropped", "subscription inactive")] * 2
        assert topic_records(broker.bootstrap, broker.dlq_topic) == []
        assert not ep.seen
    finally:
        ep.srv.shutdown()
