"""Batching: batch_max events per request, batch_window_ms for the first
event to wait for company; a batch never mixes subscriptions and each event
counts as delivered only when its batch is acknowledged."""
import json
import time

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier, produce
from hbtest.webhooks import signature_valid
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql


def batches(receiver):
    out = []
    for p in receiver.posts():
        body = json.loads(p["body"])
        evs = body["data"]["events"] if isinstance(body, dict) else body
        out.append((p, evs))
    return out


def test_batches_fill_to_batch_max_and_the_window_flushes_the_rest(db_url, broker, procs, workdir):
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    single = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                      name="single")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"],
                      {"batch_max": 5, "batch_window_ms": 1500})
    register_verified(db_url, single.url, ["user.session.start"])
    sent = [event("user.session.start") for _ in range(12)]
    t0 = time.time()
    produce(broker.bootstrap, sent)
    wait_until(lambda: sum(len(e) for _, e in batches(receiver)) == 12, 20 * SLOW,
               "all 12 events in batches")
    got = batches(receiver)
    assert sorted(len(e) for _, e in got) == [2, 5, 5]
    uuids = [e["uuid"] for _, evs in got for e in evs]
    assert sorted(uuids) == sorted(e["uuid"] for e in sent), "each event exactly once"
    for p, evs in got:
        assert signature_valid(SECRET, p)
        body = json.loads(p["body"])
        assert body["eventType"] == "com.okta.event_hook"
        assert body["eventId"] == p["headers"]["webhook-id"]
    # The partial batch went when its window closed, not before.
    partial = [p for p, e in got if len(e) == 2][0]
    assert partial["time_ms"] / 1000 - t0 >= 1.5 - 0.05
    # The other subscription is not batched and is not mixed in.
    assert len(single.posts()) == 12
    assert all(len(e) == 1 for _, e in batches(single))
    # The delivery log has one delivery per batch, listing its events.
    rows = wait_until(
        lambda: (rs := sql(db_url, "SELECT d.event_ids, d.status FROM hookbridge.deliveries d "
                           "JOIN hookbridge.subscriptions s ON s.id = d.subscription_id "
                           "WHERE s.url = %s", receiver.url)) and len(rs) == 3 and rs,
        10 * SLOW, "the delivery log")
    assert sorted(len(r[0].split(",")) for r in rows) == [2, 5, 5]
    assert all(r[1] == "delivered" for r in rows)


def test_cloudevents_batch_is_a_json_array_with_the_batch_content_type(db_url, broker, procs,
                                                                       workdir):
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"],
                      {"batch_max": 3, "batch_window_ms": 500, "format": "cloudevents"})
    produce(broker.bootstrap, [event("user.session.start") for _ in range(3)])
    wait_until(lambda: receiver.posts(), 20 * SLOW, "the batch")
    p = receiver.posts()[0]
    assert p["headers"]["content-type"] == "application/cloudevents-batch+json"
    body = json.loads(p["body"])
    assert isinstance(body, list) and len(body) == 3
    assert all(ce["specversion"] == "1.0" and ce["type"] == "user.session.start" for ce in body)


def test_a_failed_batch_is_retried_whole_and_its_events_are_not_lost(db_url, procs, workdir):
    broker = Broker(procs, workdir, retry_schedule="1s")
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": "1s", "HOOKBRIDGE_RETRY_JITTER": "0"}
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                        fail_first=1)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    r.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"],
                      {"batch_max": 4, "batch_window_ms": 300})
    sent = [event("user.session.start") for _ in range(4)]
    produce(broker.bootstrap, sent)
    wait_until(lambda: len(receiver.posts()) == 2, 20 * SLOW, "the batch and its retry")
    first, second = receiver.posts()
    assert first["status"] == 503 and second["status"] == 204
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["body"] == second["body"], "the same rendered batch is retried"
    assert len(json.loads(second["body"])["data"]["events"]) == 4


def test_a_batch_goes_out_as_its_subscription_is_when_its_window_closes(db_url, broker, procs,
                                                                       workdir):
    """Events wait in a filling batch for up to batch_window_ms (up to a
    minute). A change made meanwhile applies to them, as to any delivery that
    waits (docs/payloads.md): the batch of an endpoint deactivated during its
    window is dropped, the log says why, and the endpoint gets nothing; the
    batch of one whose secret was replaced is signed with the new secret."""
    from hbtest.lifecycle import INACTIVE, changes_applied
    off = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                   name="off")
    new_secret = "whsec_" + "YmF0Y2gtd2luZG93LW5ldy1zaWduaW5nLXNlY3JldC0wMQ=="
    # It checks no signature itself (it must answer the challenge signed with
    # the first secret): the test checks the batch's, below.
    rotated = Receiver(procs, workdir, auth=f"Authorization: {AUTH_VALUE}", name="rotated")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    opts = {"batch_max": 10, "batch_window_ms": 4000}
    sub_off = register_verified(db_url, off.url, ["user.session.start"], opts)
    sub_rot = register_verified(db_url, rotated.url, ["user.session.start"], opts)
    n = d.metric("hookbridge_messages_consumed_total")
    produce(broker.bootstrap, [event("user.session.start") for _ in range(2)])
    wait_until(lambda: d.metric("hookbridge_messages_consumed_total") >= n + 2, 10 * SLOW,
               "both events read (and waiting in the two batches)")
    sql(db_url, "SELECT hookbridge.deactivate(%s)", sub_off)
    sql(db_url, "SELECT hookbridge.rotate_secret(%s, interval '0 seconds', %s)", sub_rot,
        new_secret)
    wait_until(lambda: changes_applied(d, sub_off, INACTIVE) >= 1, 10 * SLOW,
               "the dispatcher to see the deactivation")
    assert off.posts() == [] and rotated.posts() == [], "the window closed early: raise it"
    post = wait_until(lambda: rotated.posts(), 20 * SLOW, "the rotated endpoint's batch")[0]
    assert post["status"] == 204 and signature_valid(new_secret, post)
    assert not signature_valid(SECRET, post), "the replaced secret signed a batch after the change"
    rows = wait_until(lambda: (rs := sql(db_url, "SELECT status, last_error FROM "
                                         "hookbridge.deliveries WHERE subscription_id = %s",
                                         sub_off)) and rs, 20 * SLOW, "the dropped batch logged")
    assert rows == [("dropped", "subscription inactive")]
    assert off.posts() == [], "a deactivated endpoint got the batch that was filling"
