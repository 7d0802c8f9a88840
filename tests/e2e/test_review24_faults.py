"""Review 24: an adversarial review of the fan-out within the payload
budget, the batches counted in it, and the requests that borrow their
delivery's body.

Each test says what it holds and how it was shown to fail on aeb121b."""
import contextlib
import threading
import time

from hbtest.endpoints import ChallengeAnswering, hung_listeners, posted_uuids
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, produce
from test_delivery import event, sql
from test_reactivate import changes_seen
from test_review14_faults import serve_many


@contextlib.contextmanager
def fan_out_held(db_url, broker, procs, n):
    """One event of 200 KB for n subscriptions (to user.session.start and
    .end) on one endpoint that holds every POST until released, under a
    payload budget of 1 MiB: a few deliveries start, the rest of the fan-out
    waits for the budget. Yields (dispatcher, posts, release, started) once
    every delivery started is at the endpoint; the endpoint is released and
    stopped at the end."""
    release = threading.Event()
    posts = []

    class Holding(ChallengeAnswering):
        def do_POST(self):
            posts.append(posted_uuids(self))
            release.wait(30)
            self.answer()

    srv = serve_many(Holding)
    try:
        sql(db_url, "SELECT hookbridge.register('many-' || i, %s, "
                    "ARRAY['user.session.start', 'user.session.end'], '{}') "
                    "FROM generate_series(1, %s) AS i", srv.url, n)
        sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                    "status = 'active' WHERE name LIKE 'many-%%'")
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_LOG_LEVEL": "info", "HOOKBRIDGE_MAX_PENDING_BYTES": "1048576",
            "HOOKBRIDGE_REQUEST_TIMEOUT": "60s"})
        d.wait_ready()
        produce(broker.bootstrap, [dict(event("user.session.start"), displayMessage="x" * 200_000)])
        wait_until(lambda: len(posts) >= 3 or None, 20 * SLOW, "the first deliveries")
        time.sleep(0.5 * SLOW)  # every one the budget lets start
        # ... and each one started is at the endpoint (a request still on
        # its way when `started` was read came after it, started all the same)
        wait_until(lambda: len(posts) == d.metric("hookbridge_requests_in_flight"), 10,
                   "every delivery in flight to be at the endpoint")
        started = len(posts)
        assert started < n, "every delivery started at once: nothing waits"
        yield d, posts, release, started
    finally:
        release.set()
        srv.shutdown()


def settle_held(db_url, d, release, started):
    """Lets the endpoint of fan_out_held() answer, then waits until the
    payload bytes held are back to 0 and the deliveries started are logged
    delivered."""
    release.set()
    wait_until(lambda: d.metric("hookbridge_pending_payload_bytes", -1) == 0 or None,
               20 * SLOW, "the payload bytes held to come back to 0")
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries "
                                   "WHERE status = 'delivered'")[0][0] >= started or None,
               20 * SLOW, "the started deliveries logged")


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
    with fan_out_held(db_url, broker, procs, 40) as (d, posts, release, started):
        seen = changes_seen(d, "subscription changed: ")
        sql(db_url, "SELECT hookbridge.unsubscribe(id, ARRAY['user.session.start']) "
                    "FROM hookbridge.subscriptions WHERE name LIKE 'many-%%'")
        wait_until(lambda: changes_seen(d, "subscription changed: ") >= seen + 40 or None,
                   20 * SLOW, "the dispatcher to apply the 40 changes")
        assert len(posts) == started
        settle_held(db_url, d, release, started)
        time.sleep(1 * SLOW)  # any other delivery
        assert len(posts) == started, f"{len(posts) - started} arrived after the unsubscribe"
        assert d.metric("hookbridge_events_filtered_total") == 40 - started
        assert d.proc.stop() == 0


def test_hosts_whose_requests_time_out_do_not_take_the_slots_kept_for_hosts_that_answer(
        db_url, broker, procs):
    """docs/operations.md, A slow endpoint: the last quarter of
    HOOKBRIDGE_MAX_IN_FLIGHT is kept for hosts that answer (3a33ff5). A
    request that timed out is no answer: eight hosts that take connections
    and never answer, fed events all along, time out together (a 6 s
    request timeout); then events come for two healthy hosts. Their requests
    get the kept slots at once, none parked on the delay tier.

    On aeb121b a timeout counted as a finished request, so for a second
    after each wave of timeouts the hung hosts took the kept slots too, all
    32 of them hung for another request timeout, and the healthy hosts'
    requests waited out HOOKBRIDGE_MAX_QUEUE_WAIT and went to the delay tier
    ("endpoint busy: waited ... for one of the max_in_flight request
    slots")."""
    got = []

    class Answering(ChallengeAnswering):
        def do_POST(self):
            got.extend(posted_uuids(self))
            self.answer()

    healthy = [serve_many(Answering) for _ in range(2)]
    hung = []
    stop = threading.Event()
    try:
        hung.extend(hung_listeners(8, 128))
        sql(db_url, "SELECT hookbridge.register('hung-' || i, u, ARRAY['user.session.start'], "
                    "'{}') FROM unnest(%s::text[]) WITH ORDINALITY AS t(u, i)",
            [f"http://127.0.0.1:{s.getsockname()[1]}/hook" for s in hung])
        sql(db_url, "SELECT hookbridge.register('ok-' || i, u, ARRAY['user.session.end'], "
                    "'{}') FROM unnest(%s::text[]) WITH ORDINALITY AS t(u, i)",
            [h.url for h in healthy])
        sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                    "status = 'active'")
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_LOG_LEVEL": "info", "HOOKBRIDGE_MAX_IN_FLIGHT": "32",
            "HOOKBRIDGE_REQUEST_TIMEOUT": "6s", "HOOKBRIDGE_MAX_QUEUE_WAIT": "4s"})
        d.wait_ready()

        def feed():  # 32 requests a second for the hung hosts
            while not stop.is_set():
                produce(broker.bootstrap, [event("user.session.start") for _ in range(4)])
                stop.wait(1)
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries "
                                       "WHERE last_error LIKE 'timeout%%'")[0][0] >= 8 or None,
                   20 * SLOW, "the first wave of timeouts")
        time.sleep(0.3)
        evs = [event("user.session.end") for _ in range(3)]
        produce(broker.bootstrap, evs)
        wait_until(lambda: len(got) >= 6 or sql(
            db_url, "SELECT count(*) FROM hookbridge.deliveries d JOIN hookbridge.subscriptions s "
                    "ON s.id = d.subscription_id WHERE s.name LIKE 'ok-%%' "
                    "AND d.status = 'retry'")[0][0] or None, 15 * SLOW,
            "the healthy hosts' deliveries, or one parked")
        parked = sql(db_url, "SELECT d.last_error FROM hookbridge.deliveries d "
                             "JOIN hookbridge.subscriptions s ON s.id = d.subscription_id "
                             "WHERE s.name LIKE 'ok-%%' AND d.status = 'retry'")
        assert parked == [], parked
        assert sorted(got) == sorted(e["uuid"] for e in evs for _ in healthy)
    finally:
        stop.set()
        for h in healthy:
            h.shutdown()
        for s in hung:
            s.close()
