"""Review 25: the delivery path's leftovers (batches refused with 413 on a
retry, what a deactivation drops, held deliveries and changed filters, the
batch options' bounds), as a production user meets them under faults."""
import json
import threading
import time

import psycopg2

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.procs import SLOW, wait_until
from hbtest.stack import produce, topic_records
from hbtest.webhooks import signature_valid
from test_delivery import SECRET, event, register_verified, sql
from test_reactivate import changes_seen
from test_retry import stack


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
        broker, _, d, r = stack(procs, workdir, db_url, "1s,1s",
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
        for h, b in posts:
            body = json.loads(b)
            assert body["eventId"] == h["webhook-id"]
            assert signature_valid(SECRET, {"headers": h, "body": b})
        rows = wait_until(
            lambda: (rs := sql(db_url, "SELECT status, event_ids, last_error, body IS NULL, "
                               "attempts FROM hookbridge.deliveries WHERE subscription_id = %s",
                               sub)) and sorted(u for st, ids, *_ in rs if st == "delivered"
                                                for u in ids.split(",")) == want and rs,
            20 * SLOW, "the delivered parts in the log, each event once")
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

