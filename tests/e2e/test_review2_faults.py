"""Faults of the dispatcher's side, found in review: each test shows what a
user saw before its fix.

- Events of an ordered key waiting in the dispatcher's memory behind a slow
  head when the subscription is deactivated and at once activated again are
  dropped, like a batch still filling or a pending retry: only events that
  arrive after the reactivation are delivered."""
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
