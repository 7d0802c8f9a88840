"""Review 19: batches, filters and payload options under faults, as a
production user meets them."""
import json
import time

import psycopg2

from hbtest.endpoints import ChallengeAnswering, serve
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
    events: seven events of about 1 KiB each fill a batch of 10 to more than
    the 4 KiB bound (halves of 3 and 4, split again). They arrive, every one
    once, in requests under the bound
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
           for i in range(7)]
    n = d.metric("hookbridge_messages_consumed_total")
    produce(broker.bootstrap, evs)
    wait_until(lambda: d.metric("hookbridge_messages_consumed_total") >= n + 7, 10 * SLOW,
               "the events read (waiting in the batches)")
    sql(db_url, "SELECT hookbridge.deactivate(%s)", dropped)
    wait_until(lambda: changes_applied(d, dropped, INACTIVE) >= 1, 10 * SLOW,
               "the dispatcher to see the deactivation")

    want = sorted(e["uuid"] for e in evs)
    wait_until(lambda: sorted(e["uuid"] for _, e in receiver.events()) == want, 20 * SLOW,
               "every event of the large batch")
    posts = receiver.posts()
    assert 2 <= len(posts) <= 7 and all(p["status"] < 300 for p in posts)
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


def test_a_batch_goes_out_with_the_filter_and_event_types_of_when_it_goes(db_url, procs, workdir):
    """A batch goes out as its subscription is when its window closes
    (docs/payloads.md), and the content filter and the event types are part
    of that: an operator who narrows a filter, or unsubscribes from a type,
    must not see events the subscription no longer takes arrive up to a
    window later. Four events wait in a batch (window 4 s); the filter is
    narrowed to failures and one of the two types is unsubscribed meanwhile:
    only the failed event of the remaining type arrives, and nothing is
    logged for the others (they are not taken, as if never matched), but
    hookbridge_events_filtered_total counts them. Before: all four arrived,
    and nothing counted what a filter turned away."""
    broker, receiver, d, _ = stack(procs, workdir, db_url, "1s", retrier=False)
    sub = register_verified(db_url, receiver.url, ["user.session.start", "user.session.end"],
                            {"batch_max": 10, "batch_window_ms": 4000})
    wait_until(lambda: changes_seen(d), 10, "the dispatcher to see it")

    def ev(etype, result):
        return dict(event(etype), outcome={"result": result})
    keep = ev("user.session.start", "FAILURE")
    evs = [keep, ev("user.session.start", "SUCCESS"), ev("user.session.end", "FAILURE"),
           ev("user.session.end", "SUCCESS")]
    n = d.metric("hookbridge_messages_consumed_total")
    produce(broker.bootstrap, evs)
    wait_until(lambda: d.metric("hookbridge_messages_consumed_total") >= n + 4, 10 * SLOW,
               "the events read (waiting in the batch)")
    seen = changes_seen(d)
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:  # one change, seen at once
        cur.execute("SELECT hookbridge.update_options(%s, %s::jsonb)",
                    (sub, json.dumps({"filter": {"outcome.result": "FAILURE"}})))
        cur.execute("SELECT hookbridge.unsubscribe(%s, %s)", (sub, ["user.session.end"]))
    wait_until(lambda: changes_seen(d) > seen, 10 * SLOW, "the dispatcher to see the change")
    assert receiver.posts() == [], "the window closed before the changes: raise it"
    wait_until(lambda: receiver.posts(), 20 * SLOW, "the batch")
    time.sleep(0.5 * SLOW)  # any other request of the batch
    assert [e["uuid"] for _, e in receiver.events()] == [keep["uuid"]]
    rows = wait_until(lambda: sql(db_url, "SELECT status, event_ids FROM hookbridge.deliveries "
                                  "WHERE subscription_id = %s", sub), 10 * SLOW, "the log")
    assert rows == [("delivered", keep["uuid"])]
    # The operator sees what the filter turned away: counted, and said at
    # debug, at read time as at the batch's flush.
    late = ev("user.session.start", "SUCCESS")
    produce(broker.bootstrap, [late])
    wait_until(lambda: d.metric("hookbridge_events_filtered_total") == 4, 10 * SLOW,
               "the three events left out of the batch and the later one counted")
    assert f'"event_uuid":"{late["uuid"]}"' in d.proc.output()


def test_batches_filling_at_max_pending_bytes_go_at_once(db_url, procs, workdir):
    """HOOKBRIDGE_MAX_PENDING_BYTES is what bounds a dispatcher's memory when
    events are large (docs/operations.md sizes pods by it), but events
    waiting in batches for company (up to a minute) were not counted: three
    batching subscriptions held 40 events of 10 KB each for their whole
    window with hookbridge_pending_payload_bytes at 0, however many more
    such batches a dispatcher held. Now they count as their rendered bodies
    would, and at the bound (1 MiB here, reached after about 35 events) the
    batches filling go at once rather than wait for their window (which
    would pause consumption for every subscription); the few events after
    them wait for their own window (6 s) as usual. Before: nothing came
    before the window closed."""
    window = 6 * SLOW
    broker, receiver, d, _ = stack(procs, workdir, db_url, "1s", retrier=False,
                                   env={"HOOKBRIDGE_MAX_PENDING_BYTES": str(1 << 20)})
    others = [Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                       name=f"other{i}") for i in range(2)]
    for rc in [receiver] + others:
        register_verified(db_url, rc.url, ["user.session.start"],
                          {"batch_max": 100, "batch_window_ms": int(window * 1000)})
    wait_until(lambda: changes_seen(d) >= 3, 10, "the dispatcher to see them")
    evs = [dict(event("user.session.start"), displayMessage=f"{i} " + "x" * 10000)
           for i in range(40)]
    want = sorted(e["uuid"] for e in evs)
    t0 = time.monotonic()
    produce(broker.bootstrap, evs)
    for rc in [receiver] + others:
        wait_until(lambda: len(rc.events()) >= 30, 4, "most events, before the window")
    assert time.monotonic() - t0 < window - 1
    for rc in [receiver] + others:
        wait_until(lambda: sorted(e["uuid"] for _, e in rc.events()) == want, 6 + 10,
                   "every event, once")
    wait_until(lambda: d.metric("hookbridge_pending_payload_bytes", -1) == 0 or None, 10 * SLOW,
               "nothing held any more")


def test_batches_filling_while_consumption_pauses_go_at_once(db_url, procs, workdir):
    """HOOKBRIDGE_MAX_PENDING_EVENTS (20 here) pauses consumption with 20
    events waiting in a batch of 100 whose window is long: no event can come
    to fill it while paused, yet it waited out its window, and every
    subscription of the dispatcher waited with it, one window per 20 events.
    Now a paused consumer sends the batches filling at once: of 50 events,
    the batch that paused consumption (at least 20) arrives within seconds,
    long before one window."""
    window = 10 * SLOW
    broker, receiver, d, _ = stack(procs, workdir, db_url, "1s", retrier=False,
                                   env={"HOOKBRIDGE_MAX_PENDING_EVENTS": "20"})
    register_verified(db_url, receiver.url, ["user.session.start"],
                      {"batch_max": 100, "batch_window_ms": int(window * 1000)})
    wait_until(lambda: changes_seen(d), 10, "the dispatcher to see it")
    evs = [event("user.session.start") for _ in range(50)]
    t0 = time.monotonic()
    produce(broker.bootstrap, evs)
    # The batch that filled while consumption was paused goes at once. Events
    # taken after the resume, fewer than the 20 that pause it again, fill a
    # batch of their own that waits its window, as it should: usually the 50
    # are all taken in the first pass and go together, but when the last of
    # them reach the dispatcher after that pass (seen under the sanitizers:
    # 41 taken, then 9), the 9 wait.
    wait_until(lambda: len(receiver.events()) >= 20, 6, "the paused batch, before one window")
    assert time.monotonic() - t0 < window
    wait_until(lambda: len(receiver.events()) == 50, 6 + 10, "every event")  # (stretched by SLOW)
    assert sorted(e["uuid"] for _, e in receiver.events()) == sorted(e["uuid"] for e in evs)


def test_ordering_and_batch_max_written_past_the_functions_keep_the_order(db_url, procs,
                                                                          workdir):
    """update_options() refuses ordering with batch_max above 1 (HB025), but
    the options column is plain JSON a hand-written UPDATE can give both.
    The dispatcher took such a row for a batching one and dropped the order
    asked for without a word: three events of one key went in one request.
    Now the order wins: one event per request, in order, and a warning says
    why batch_max is ignored."""
    broker, receiver, d, _ = stack(procs, workdir, db_url, "1s", retrier=False)
    sub = register_verified(db_url, receiver.url, ["user.session.start"], {"ordering": "key"})
    wait_until(lambda: changes_seen(d), 10, "the dispatcher to see it")
    seen = changes_seen(d)
    sql(db_url, "UPDATE hookbridge.subscriptions SET options = options || %s::jsonb "
        "WHERE id = %s", json.dumps({"batch_max": 10, "batch_window_ms": 2000}), sub)
    wait_until(lambda: changes_seen(d) > seen, 10 * SLOW, "the dispatcher to load the row")
    user = "00uorderedbatch"
    evs = [event("user.session.start", user) for _ in range(3)]
    produce(broker.bootstrap, evs)
    wait_until(lambda: len(receiver.events()) == 3, 20 * SLOW, "the three events")
    assert [len(evs_) for _, evs_ in batches_of(receiver)] == [1, 1, 1]
    assert [e["uuid"] for _, e in receiver.events()] == [e["uuid"] for e in evs]
    assert "options.ordering cannot be combined with batch_max above 1" in d.proc.output()


def batches_of(receiver):
    out = []
    for p in receiver.posts():
        body = json.loads(p["body"])
        out.append((p, body["data"]["events"] if isinstance(body, dict) else body))
    return out


def test_a_batch_the_endpoint_refuses_as_too_large_goes_again_in_halves(db_url, procs, workdir):
    """An endpoint with a smaller body limit than hookbridge's (a gateway's
    3000 bytes here) answers a batch with 413. That is final for one event,
    but a batch is only a grouping: it was dead-lettered whole, and replay()
    could only send the same body to the same refusal, so its events never
    arrived. Now a batch refused with 413 on its first attempt is sent again
    at once in halves (split again while refused), each under the webhook-id
    of its own events: every event arrives once, and the delivery log has
    only deliveries that were delivered."""
    got, sizes = [], []

    class Limited(ChallengeAnswering):
        def do_POST(self):
            n = int(self.headers["Content-Length"])
            sizes.append(n)
            if n > 3000:
                self.rfile.read(n)
                self.send_response(413)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = json.loads(self.rfile.read(n))
            got.extend(e["uuid"] for e in body["data"]["events"])
            self.answer()

    srv = serve(Limited)
    try:
        broker, _, d, _ = stack(procs, workdir, db_url, "1s", retrier=False)
        sub = register_verified(db_url, srv.url, ["user.session.start"],
                                {"batch_max": 10, "batch_window_ms": 1500})
        wait_until(lambda: changes_seen(d), 10, "the dispatcher to see it")
        evs = [dict(event("user.session.start"), displayMessage=f"{i} " + "x" * 900)
               for i in range(7)]
        want = sorted(e["uuid"] for e in evs)
        produce(broker.bootstrap, evs)
        wait_until(lambda: sorted(got) == want, 20 * SLOW, "every event, once")
        assert sizes[0] > 3000, "the whole batch came first"
        rows = wait_until(lambda: (rs := sql(db_url, "SELECT status, event_ids FROM "
                                             "hookbridge.deliveries WHERE subscription_id = %s",
                                             sub)) and sorted(
            u for _, ids in rs for u in ids.split(",")) == want and rs, 10 * SLOW,
            "the delivered parts in the log")
        assert all(st == "delivered" for st, _ in rows), rows
        assert topic_records(broker.bootstrap, broker.dlq_topic) == []
        assert "refused by the endpoint as too large (HTTP 413)" in d.proc.output()
    finally:
        srv.shutdown()
