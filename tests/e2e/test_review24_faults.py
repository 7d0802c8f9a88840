"""Review 24: an adversarial review of the fan-out within the payload
budget, the batches counted in it, and the requests that borrow their
delivery's body.

Each test says what it holds and how it was shown to fail on aeb121b."""
import threading
import time

from hbtest.endpoints import ChallengeAnswering, posted_uuids
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, produce
from test_delivery import event, sql
from test_reactivate import changes_seen
from test_review14_faults import serve_many


def test_a_fan_out_rest_goes_with_the_event_types_of_when_it_goes(db_url, broker, procs):
    """docs/design.md: the rest of a fan-out that waits for the payload
    budget goes as each subscription is when its turn comes, and its event
    types are part of that, as they are for a filling batch (383b5d2): an
    operator who unsubscribes from a type must not see an event of it arrive
    after the change was applied. One event of 200 KB for 40 subscriptions
    with a budget of 1 MiB: a few start (their endpoint holds them), the rest
    waits; every subscription is unsubscribed from the event's type and the
    dispatcher applies it; then the endpoint answers. Only the deliveries
    started before the change arrive, the others are counted in
    hookbridge_events_filtered_total, and the payload bytes held come back
    to 0. On aeb121b every one of the 40 arrived."""
    release = threading.Event()
    posts = []

    class Holding(ChallengeAnswering):
        def do_POST(self):
            posts.append(posted_uuids(self))
            release.wait(30)
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = serve_many(Holding)
    try:
        sql(db_url, "SELECT hookbridge.register('many-' || i, %s, "
                    "ARRAY['user.session.start', 'user.session.end'], '{}') "
                    "FROM generate_series(1, 40) AS i", srv.url)
        sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                    "status = 'active' WHERE name LIKE 'many-%%'")
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_LOG_LEVEL": "info", "HOOKBRIDGE_MAX_PENDING_BYTES": "1048576",
            "HOOKBRIDGE_REQUEST_TIMEOUT": "60s"})
        d.wait_ready()
        produce(broker.bootstrap, [dict(event("user.session.start"), displayMessage="x" * 200_000)])
        wait_until(lambda: len(posts) >= 3 or None, 20 * SLOW, "the first deliveries")
        time.sleep(0.5 * SLOW)  # every one the budget lets start
        started = len(posts)
        assert started < 40, "every delivery started at once: nothing waits"
        seen = changes_seen(d, "subscription changed: ")
        sql(db_url, "SELECT hookbridge.unsubscribe(id, ARRAY['user.session.start']) "
                    "FROM hookbridge.subscriptions WHERE name LIKE 'many-%%'")
        wait_until(lambda: changes_seen(d, "subscription changed: ") >= seen + 40 or None,
                   20 * SLOW, "the dispatcher to apply the 40 changes")
        assert len(posts) == started
        release.set()
        wait_until(lambda: d.metric("hookbridge_pending_payload_bytes", -1) == 0 or None,
                   20 * SLOW, "the payload bytes held to come back to 0")
        wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries "
                                       "WHERE status = 'delivered'")[0][0] >= started or None,
                   20 * SLOW, "the started deliveries logged")
        time.sleep(1 * SLOW)  # any other delivery
        assert len(posts) == started, f"{len(posts) - started} arrived after the unsubscribe"
        assert d.metric("hookbridge_events_filtered_total") == 40 - started
        assert d.proc.stop() == 0
    finally:
        release.set()
        srv.shutdown()
