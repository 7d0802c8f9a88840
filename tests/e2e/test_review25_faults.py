"""Review 25: the delivery path's leftovers (batches refused with 413 on a
retry, what a deactivation drops, held deliveries and changed filters, the
batch options' bounds), as a production user meets them under faults."""
import json
import threading
import time

import psycopg2
import pytest

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.lifecycle import INACTIVE, changes_applied
from hbtest.procs import SLOW, wait_until
from hbtest.stack import produce, topic_records
from hbtest.webhooks import signature_valid
from test_delivery import SECRET, event, register_verified, sql
from test_reactivate import changes_seen
from test_retry import stack
from test_review24_faults import fan_out_held, settle_held


def test_a_batch_refused_with_413_on_a_retry_goes_on_in_halves_across_a_crash(
        db_url, procs, workdir):
    """A batch whose first attempt failed (503) is retried by the retrier,
    and the endpoint (a gateway with a 3000-byte limit) refuses the retry as
    too large (413). The dispatcher splits such a batch on its first attempt;
    the retrier dead-lettered it whole, and replay() could only send the same
    body to the same refusal: its events never arrived. Now the retrier
    splits it too, from its body: each half a delivery of its own (the
    webhook-id of its own events, the okta envelope's eventId the same),
    retried on its own and split again while refused. The retrier is killed
    after producing the halves and before the batch's row could be committed
    (the delivery log held by a lock): restarted, nothing is lost. The batch
    is logged dropped ("split: ..."), not replayable by replay_dropped (its
    events went on in the halves), nothing is dead-lettered."""
    posts = []
    lock = threading.Lock()

    class Gateway(ChallengeAnswering):
        def do_POST(self):
            n = int(self.headers["Content-Length"])
            raw = self.rfile.read(n)
            with lock:
                first = not posts
                posts.append(({k.lower(): v for k, v in self.headers.items()}, raw.decode()))
            if first:
                return self.answer(503)
            return self.answer(413 if n > 3000 else 204)

    srv = serve(Gateway)
    hold = None
    try:
        # static membership: the restarted retrier takes its partitions back at once
        broker, _, d, r = stack(procs, workdir, db_url, "2s,1s",
                                env={"HOOKBRIDGE_INSTANCE_ID": "review25-413"})
        sub = register_verified(db_url, srv.url, ["user.session.start"],
                                {"batch_max": 10, "batch_window_ms": 1000})
        wait_until(lambda: changes_seen(d) and changes_seen(r), 10, "the services to see it")
        evs = [dict(event("user.session.start"), displayMessage=f"{i} " + "x" * 900)
               for i in range(7)]
        want = sorted(e["uuid"] for e in evs)
        produce(broker.bootstrap, evs)
        wait_until(lambda: sql(db_url, "SELECT 1 FROM hookbridge.deliveries WHERE "
                               "subscription_id = %s AND status = 'retry'", sub), 10 * SLOW,
                   "the batch's first attempt failed and logged")
        # The delivery log takes no row from now on (reads go on).
        hold = psycopg2.connect(db_url)
        hold.cursor().execute("LOCK TABLE hookbridge.deliveries IN SHARE MODE")
        wait_until(lambda: "goes on as two batches" in r.proc.output(), 10 * SLOW,
                   "the retrier to split the batch refused with 413")
        time.sleep(1.0 * SLOW)  # the halves with the broker; their row cannot be logged
        r.proc.kill()
        hold.rollback()
        hold.close()
        hold = None
        r.restart()

        def delivered():
            return sorted({u for h, b in posts if h.get("webhook-id") and _ok(h, b)
                           for u in _uuids(b)})
        wait_until(lambda: delivered() == want, 40 * SLOW, "every event, after the crash")
        # the batch's row never made it: read again, it was split again (its
        # tier may hand it over after the halves of the first split went)
        wait_until(lambda: "goes on as two batches of 3 and 4" in r.proc.output(), 20,
                   "the batch split again after the restart")
        for h, b in posts:
            body = json.loads(b)
            assert body["eventId"] == h["webhook-id"]
            assert signature_valid(SECRET, {"headers": h, "body": b})
        rows = wait_until(
            lambda: (rs := sql(db_url, "SELECT status, event_ids, last_error, body IS NULL, "
                               "attempts FROM hookbridge.deliveries WHERE subscription_id = %s",
                               sub)) and sorted(u for st, ids, *_ in rs if st == "delivered"
                                                for u in ids.split(",")) == want
                and len([x for x in rs if x[0] == "dropped"]) >= 3 and rs,
            20 * SLOW, "the delivered parts in the log, each event once, and the splits")
        # (the splits' rows are written by the log's thread after the halves
        # go: CI run 80 read the whole batch's row still 'retry', its first
        # attempt's, before its split after the restart was logged)
        # the batch, and its halves split again, each logged dropped once split
        split = [row for row in rows if row[0] != "delivered"]
        assert sorted(len(ids.split(",")) for _, ids, *_ in split) == [3, 4, 7], rows
        for st, _, err, no_body, _ in split:
            assert st == "dropped" and err.startswith("split: refused as too large (HTTP 413)")
            assert no_body, "a split batch keeps no body"
        assert all(a == 2 for st, *_, a in rows if st == "delivered"), \
            "the halves keep the batch's attempt number"
        assert topic_records(broker.bootstrap, broker.dlq_topic) == []
        assert sql(db_url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
                   sub) == [(0,)]
    finally:
        if hold:
            hold.close()
        srv.shutdown()


def _uuids(body):
    doc = json.loads(body)
    return [e["uuid"] for e in doc["data"]["events"]]


def _ok(headers, body):
    return len(body.encode()) <= 3000 and len(_uuids(body)) < 7


def test_what_a_deactivation_drops_leaves_out_the_events_the_subscription_no_longer_takes(
        db_url, procs, workdir):
    """A deactivation drops what waits for the subscription, logged dropped
    with its payload so that replay_dropped can send it once it is active
    again. A batch filling when the subscription was both unsubscribed from a
    type and deactivated was dropped whole: replay_dropped would then send
    the operator events of the type it had unsubscribed from. Now, as for a
    batch that goes out, an event the subscription no longer takes (type or
    filter) leaves it as never matched (counted in
    hookbridge_events_filtered_total); only the others are logged dropped,
    and the replay brings only those."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s")
    sub = register_verified(db_url, receiver.url, ["user.session.start", "user.session.end"],
                            {"batch_max": 10, "batch_window_ms": 3000})
    wait_until(lambda: changes_seen(d) and changes_seen(r), 10, "the services to see it")

    def ev(etype, result):
        return dict(event(etype), outcome={"result": result})
    keep = ev("user.session.start", "FAILURE")
    evs = [keep, ev("user.session.start", "SUCCESS"), ev("user.session.end", "FAILURE")]
    n = d.metric("hookbridge_messages_consumed_total")
    produce(broker.bootstrap, evs)
    wait_until(lambda: d.metric("hookbridge_messages_consumed_total") >= n + 3, 10 * SLOW,
               "the events read (waiting in the batch)")
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:  # one change, seen at once
        cur.execute("SELECT hookbridge.update_options(%s, %s::jsonb)",
                    (sub, json.dumps({"filter": {"outcome.result": "FAILURE"}})))
        cur.execute("SELECT hookbridge.unsubscribe(%s, %s)", (sub, ["user.session.end"]))
        cur.execute("SELECT hookbridge.deactivate(%s)", (sub,))
    wait_until(lambda: changes_applied(d, sub, INACTIVE) >= 1, 10 * SLOW,
               "the dispatcher to see the change")
    rows = wait_until(lambda: sql(db_url, "SELECT status, event_ids FROM hookbridge.deliveries "
                                  "WHERE subscription_id = %s", sub), 20 * SLOW,
                      "the dropped batch logged")
    time.sleep(0.3 * SLOW)  # any other row
    rows = sql(db_url, "SELECT status, event_ids FROM hookbridge.deliveries "
               "WHERE subscription_id = %s", sub)
    assert rows == [("dropped", keep["uuid"])], rows
    assert d.metric("hookbridge_events_filtered_total") == 2
    seen = (changes_seen(d), changes_seen(r))
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    wait_until(lambda: changes_seen(d) > seen[0] and changes_seen(r) > seen[1], 10 * SLOW,
               "both services to see it active again")
    assert sql(db_url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
               sub) == [(1,)]
    wait_until(lambda: receiver.events(), 20 * SLOW, "the replay")
    assert [e["uuid"] for _, e in receiver.events()] == [keep["uuid"]]


def test_a_fan_out_rest_dropped_by_a_deactivation_leaves_out_what_it_no_longer_takes(
        db_url, broker, procs):
    """The rest of a fan-out waiting for the payload budget goes as each
    subscription is when its turn comes: a type unsubscribed meanwhile
    leaves it as never matched (test_review24). But when the subscription
    was also deactivated, the part was logged dropped with its payload, and
    replay_dropped would send an event of a type the operator had
    unsubscribed from. One event of 200 KB for 30 subscriptions with a
    budget of 1 MiB: a few start, the rest waits; every subscription is
    unsubscribed from the type and deactivated; none of the parts left is
    logged dropped, each is counted filtered."""
    with fan_out_held(db_url, broker, procs, 30) as (d, posts, release, started):
        seen = changes_seen(d, "subscription changed: inactive")
        with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT hookbridge.unsubscribe(id, ARRAY['user.session.start']), "
                        "hookbridge.deactivate(id) FROM hookbridge.subscriptions "
                        "WHERE name LIKE 'many-%%'")
        wait_until(lambda: changes_seen(d, "subscription changed: inactive") >= seen + 30 or None,
                   20 * SLOW, "the dispatcher to apply the 30 changes")
        settle_held(db_url, d, release, started)
        assert sql(db_url, "SELECT count(*) FROM hookbridge.deliveries "
                           "WHERE status = 'dropped'") == [(0,)]
        assert d.metric("hookbridge_events_filtered_total") == 30 - started
        assert len(posts) == started


def test_batch_options_written_past_the_functions_are_served_within_their_bounds(
        db_url, procs, workdir):
    """register() and update_options() refuse batch_max outside 1..100 and
    batch_window_ms outside 0..60000 (HB006), but the options column is
    plain JSON that a hand-written UPDATE can fill with anything. The
    dispatcher took a batch_max up to 100,000 and any window (a window
    written in seconds by mistake, 3600000, held events for an hour), and
    skipped the subscription on a batch_max of 0. Now it serves the nearest
    bound and says so at warn: 150 events with batch_max 1000 come in
    requests of at most 100; batch_max 0 delivers each event alone."""
    broker, receiver, d, _ = stack(procs, workdir, db_url, "1s", retrier=False)
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    wait_until(lambda: changes_seen(d), 10, "the dispatcher to see it")
    with pytest.raises(psycopg2.Error) as refused:
        sql(db_url, "SELECT hookbridge.update_options(%s, %s::jsonb)",
            sub, json.dumps({"batch_window_ms": 3600000}))
    assert refused.value.pgcode == "HB006" and "between 0 and 60000" in str(refused.value)

    def written_past(opts):
        seen = changes_seen(d, "subscription changed: ")
        sql(db_url, "UPDATE hookbridge.subscriptions SET options = options || %s::jsonb "
            "WHERE id = %s", json.dumps(opts), sub)
        wait_until(lambda: changes_seen(d, "subscription changed: ") > seen, 10 * SLOW,
                   "the dispatcher to load the row")
    written_past({"batch_max": 1000, "batch_window_ms": 1500})
    evs = [event("user.session.start") for _ in range(150)]
    produce(broker.bootstrap, evs)
    wait_until(lambda: len(receiver.events()) == 150, 20 * SLOW, "the 150 events")
    sizes = sorted(len(json.loads(p["body"])["data"]["events"]) for p in receiver.posts())
    assert sizes[-1] <= 100 and sum(sizes) == 150, sizes
    assert "options batch_max 1000 and batch_window_ms 1500 out of bounds" in d.proc.output()

    written_past({"batch_max": 0, "batch_window_ms": 3600000})
    assert ("options batch_max 0 and batch_window_ms 3600000 out of bounds (1..100, 0..60000; "
            "HB006: the row was written past hookbridge.update_options): batch_max 1 and "
            "batch_window_ms 60000 serve") in d.proc.output()
    one = event("user.session.start")
    produce(broker.bootstrap, [one])
    wait_until(lambda: one["uuid"] in [e["uuid"] for _, e in receiver.events()], 10 * SLOW,
               "the event, alone and at once")


def test_a_batch_in_flight_counts_its_events_in_the_payload_budget(db_url, procs, workdir):
    """HOOKBRIDGE_MAX_PENDING_BYTES bounds what a dispatcher holds of
    payloads (docs/operations.md sizes pods by it). A batch of several
    events keeps them, beside its body, until it is sent (a revocation may
    take some out and render the rest again), but once the batch left its
    filling slot only the body was counted: a batch held by a slow endpoint
    took twice what hookbridge_pending_payload_bytes showed. Now its events
    count while its delivery keeps them, and nothing is left counted once it
    is done."""
    release = threading.Event()
    sizes = []

    class Slow(ChallengeAnswering):
        def do_POST(self):
            sizes.append(len(self.rfile.read(int(self.headers["Content-Length"]))))
            release.wait(30)
            self.answer()

    srv = serve(Slow)
    try:
        broker, _, d, _ = stack(procs, workdir, db_url, "1s", retrier=False,
                                env={"HOOKBRIDGE_REQUEST_TIMEOUT": "60s"})
        register_verified(db_url, srv.url, ["user.session.start"],
                          {"batch_max": 10, "batch_window_ms": 60000})
        wait_until(lambda: changes_seen(d), 10, "the dispatcher to see it")
        produce(broker.bootstrap, [dict(event("user.session.start"), displayMessage="x" * 20000)
                                   for _ in range(10)])
        wait_until(lambda: sizes, 10 * SLOW, "the batch, held by the endpoint")
        held = d.metric("hookbridge_pending_payload_bytes")
        assert held >= 1.8 * sizes[0], (held, sizes[0])
        release.set()
        wait_until(lambda: d.metric("hookbridge_pending_payload_bytes", -1) == 0 or None,
                   10 * SLOW, "nothing held once it is delivered")
    finally:
        release.set()
        srv.shutdown()


def test_deliveries_held_by_a_rate_limit_go_with_the_event_types_and_filter_of_when_they_go(
        db_url, procs, workdir):
    """A delivery held by its subscription's rate limit goes as the
    subscription is when its turn comes (its URL, secrets; dropped when it
    was deactivated), but its event types and content filter were not part
    of that, as they are for a filling batch: an operator who narrows the
    filter and unsubscribes from a type saw events they no longer take
    arrive seconds later, one per turn. Four events at 0.4/s: the first goes
    at once; the filter is narrowed to failures and user.session.end
    unsubscribed; of the three held, only the failed start arrives, the
    others are counted filtered and nothing is logged for them."""
    broker, receiver, d, _ = stack(procs, workdir, db_url, "1s", retrier=False,
                                   env={"HOOKBRIDGE_MAX_QUEUE_WAIT": "30s"})
    sub = register_verified(db_url, receiver.url, ["user.session.start", "user.session.end"],
                            {"rate_limit": {"per_second": 0.4, "burst": 1}})
    wait_until(lambda: changes_seen(d), 10, "the dispatcher to see it")

    def ev(etype, result):
        return dict(event(etype), outcome={"result": result})
    first, late = ev("user.session.start", "SUCCESS"), ev("user.session.start", "FAILURE")
    evs = [first, ev("user.session.start", "SUCCESS"), ev("user.session.end", "FAILURE"), late]
    produce(broker.bootstrap, evs)
    wait_until(lambda: receiver.events(), 10 * SLOW, "the first event, at once")
    seen = changes_seen(d, "subscription changed: ")
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:  # one change, seen at once
        cur.execute("SELECT hookbridge.update_options(%s, %s::jsonb)",
                    (sub, json.dumps({"filter": {"outcome.result": "FAILURE"}})))
        cur.execute("SELECT hookbridge.unsubscribe(%s, %s)", (sub, ["user.session.end"]))
    wait_until(lambda: changes_seen(d, "subscription changed: ") > seen, 10 * SLOW,
               "the dispatcher to see the change")
    assert len(receiver.events()) == 1, "a held one went before the change: slow the limit"
    wait_until(lambda: len(receiver.events()) >= 2, 20 * SLOW, "the failed start, at its turn")
    time.sleep(1 * SLOW)  # any other
    assert [e["uuid"] for _, e in receiver.events()] == [first["uuid"], late["uuid"]]
    assert d.metric("hookbridge_events_filtered_total") == 2
    rows = wait_until(lambda: (rs := sql(db_url, "SELECT event_ids FROM hookbridge.deliveries "
                                         "WHERE subscription_id = %s", sub)) and len(rs) >= 2
                      and rs, 10 * SLOW, "the log")
    assert sorted(r[0] for r in rows) == sorted([first["uuid"], late["uuid"]])


@pytest.mark.sql_only
def test_replay_dropped_leaves_out_a_batch_split_after_a_413(db_url):
    """A batch the retrier split after a 413 is logged dropped ('split: ...')
    and its events went on in its halves; a replayed batch's row keeps the
    body it was replayed with, so replay_dropped took it again and sent the
    whole batch to the same refusal (its halves a second time). It is left
    out now, as cancelled deliveries are; a dropped delivery beside it is
    replayed."""
    sub = sql(db_url, "SELECT hookbridge.register('split', 'https://example.com/h', "
                      "ARRAY['user.session.start'])")[0][0]
    sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                "status = 'active' WHERE id = %s", sub)
    rows = {"split": "split: refused as too large (HTTP 413), its 2 events go on as ...",
            "dropped": "subscription deactivated"}
    ids = {}
    for k, err in rows.items():
        ids[k] = sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, "
                             "event_ids, event_type, status, attempts, first_attempt_at, "
                             "last_attempt_at, last_error, body) VALUES (gen_random_uuid(), %s, "
                             "'a,b', 'user.session.start', 'dropped', 2, now(), now(), %s, '[]') "
                             "RETURNING delivery_id", sub, err)[0][0]
    assert sql(db_url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
               sub) == [(1,)]
    assert dict(sql(db_url, "SELECT delivery_id, status FROM hookbridge.deliveries "
                            "WHERE subscription_id = %s", sub)) == {
        ids["split"]: "dropped", ids["dropped"]: "replay"}
