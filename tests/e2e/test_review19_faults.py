"""Review 19: batches, filters and payload options under faults, as a
production user meets them."""
import json

from hbtest.lifecycle import INACTIVE, changes_applied
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Receiver, produce, topic_records
from hbtest.webhooks import signature_valid
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql
from test_reactivate import changes_seen
from test_retry import stack


def test_a_batch_too_large_for_one_request_goes_in_parts_and_loses_no_event(
        db_url, procs, workdir):
    """HOOKBRIDGE_MAX_PAYLOAD_BYTES bounds one request, batch_max only groups
    events: six events of about 1 KiB each fill a batch of 10 to more than
    the 4 KiB bound. They arrive, every one once, in requests under the bound
    (each signed, under the webhook-id of its own events), nothing
    dead-lettered. A second subscription's batch, dropped because it was
    deactivated while filling, is kept the same way, so replay_dropped brings
    back all its events. Before: the whole batch was dead-lettered without a
    body (replay refused it: 'no stored payload'), and the dropped one was
    logged without its payload: both batches' events lost."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s",
                                   env={"HOOKBRIDGE_MAX_PAYLOAD_BYTES": "4096"})
    other = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                     name="other")
    opts = {"batch_max": 10, "batch_window_ms": 2500}
    sub = register_verified(db_url, receiver.url, ["user.session.start"], opts)
    dropped = register_verified(db_url, other.url, ["user.session.start"], opts)
    wait_until(lambda: changes_seen(d) and changes_seen(r), 10, "the services to see them")
    evs = [dict(event("user.session.start"), displayMessage=f"{i} " + "x" * 900)
           for i in range(6)]
    n = d.metric("hookbridge_messages_consumed_total")
    produce(broker.bootstrap, evs)
    wait_until(lambda: d.metric("hookbridge_messages_consumed_total") >= n + 6, 10 * SLOW,
               "the events read (waiting in the batches)")
    sql(db_url, "SELECT hookbridge.deactivate(%s)", dropped)
    wait_until(lambda: changes_applied(d, dropped, INACTIVE) >= 1, 10 * SLOW,
               "the dispatcher to see the deactivation")

    want = sorted(e["uuid"] for e in evs)
    wait_until(lambda: sorted(e["uuid"] for _, e in receiver.events()) == want, 20 * SLOW,
               "every event of the large batch")
    posts = receiver.posts()
    assert 2 <= len(posts) <= 6 and all(p["status"] < 300 for p in posts)
    for p in posts:
        assert len(p["body"].encode()) <= 4096 and signature_valid(SECRET, p)
        assert json.loads(p["body"])["eventId"] == p["headers"]["webhook-id"]
    rows = wait_until(lambda: (rs := sql(db_url, "SELECT status, event_ids FROM "
                                         "hookbridge.deliveries WHERE subscription_id = %s",
                                         sub)) and len(rs) == len(posts) and rs, 10 * SLOW,
                      "the parts in the delivery log")
    assert all(st == "delivered" for st, _ in rows), rows
    assert sorted(u for _, ids in rows for u in ids.split(",")) == want
    assert topic_records(broker.bootstrap, broker.dlq_topic) == []

    # The deactivated subscription's batch: dropped in parts that keep their
    # payload, all brought back by replay_dropped.
    parts = wait_until(lambda: (rs := sql(db_url, "SELECT status, event_ids FROM "
                                          "hookbridge.deliveries WHERE subscription_id = %s",
                                          dropped)) and sorted(
        u for _, ids in rs for u in ids.split(",")) == want and rs, 20 * SLOW,
        "the dropped batch logged")
    assert all(st == "dropped" for st, _ in parts), parts
    seen = (changes_seen(d), changes_seen(r))
    sql(db_url, "SELECT hookbridge.activate(%s)", dropped)
    wait_until(lambda: changes_seen(d) > seen[0] and changes_seen(r) > seen[1], 10 * SLOW,
               "both services to see it active again")
    assert sql(db_url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
               dropped) == [(len(parts),)], "every part is replayed"
    wait_until(lambda: sorted(e["uuid"] for _, e in other.events()) == want, 20 * SLOW,
               "every event of the dropped batch, replayed")
