"""Review 20: fan-out and many subscriptions, as a platform team running
hookbridge meets them: thousands of subscriptions, one event matching
hundreds of them, bulk subscription changes.

Each test says what it holds and how it was shown to fail on 9ec6cf5."""
import time

from hbtest.endpoints import ChallengeAnswering, hung_listeners, posted_uuids
from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import Dispatcher, Retrier, produce
from test_delivery import event, sql
from test_review14_faults import hwm_kib, serve_many, subscribe_many


def collecting(got):
    """An endpoint handler that adds the uuids of the events POSTed to it to
    got and answers 204."""
    class Collecting(ChallengeAnswering):
        def do_POST(self):
            got.extend(posted_uuids(self))
            self.answer()
    return Collecting


def test_one_large_event_matching_a_thousand_subscriptions_stays_within_the_budget(
        db_url, broker, procs):
    """docs/operations.md, Memory: one event of 100 KB matching 1,000
    subscriptions (on one healthy endpoint host) is 1,000 deliveries of
    about 100 KB. The dispatcher renders them as they can be held within
    HOOKBRIDGE_MAX_PENDING_BYTES (8 MiB here), not all at once: its peak RSS
    grows by far less than the 100 MB they take together, and every one
    arrives, once. The same when the subscriptions batch (batch_max 5, a
    window of 300 ms): the window closing on 1,000 batches of the event
    renders them as the budget lets it, not all at once.

    On 9ec6cf5 every matching subscription's body was rendered (and copied
    for its request) before the budget was looked at: the peak grew by about
    200 MB (with the fan-out bounded but not the batches' window, the second
    part grew it by 105 MB)."""
    got = []

    Answering = collecting(got)

    srv = serve_many(Answering)
    try:
        subscribe_many(db_url, [srv.url], 1000)
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_LOG_LEVEL": "info", "HOOKBRIDGE_MAX_PENDING_BYTES": str(8 << 20)})
        # On a loaded machine the receiver answers slowly, the host's queue
        # holds a quarter of the budget, and the dispatcher parks the rest on
        # the delay tier unsent (`endpoint not keeping up`), as it should: the
        # retrier delivers those (without one, they never arrived and the test
        # timed out, 3 of 6 loaded runs in session 19).
        Retrier(procs, db_url, broker.bootstrap).wait_ready()
        d.wait_ready()
        before = hwm_kib(d.proc.pid)
        ev = dict(event("user.session.start"), displayMessage="x" * 100_000)
        produce(broker.bootstrap, [ev])
        t0 = time.monotonic()
        wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries "
                                       "WHERE status = 'delivered'")[0][0] == 1000 or None,
                   60 * SLOW, "every delivery logged")
        grew = hwm_kib(d.proc.pid) - before
        print(f"peak RSS grew by {grew} KiB; delivered in {time.monotonic() - t0:.1f} s")
        if BIN.name != "bin-san":  # ASan's shadow memory and quarantine: no figure there
            assert grew < 48 * 1024, f"peak RSS grew by {grew} KiB"
        assert len(got) == 1000 and set(got) == {ev["uuid"]}
        wait_until(lambda: d.metric("hookbridge_pending_payload_bytes", -1) == 0 or None,
                   10 * SLOW, "the payload bytes held to come back to 0")

        # The same subscriptions batching: the event waits in 1,000 batches,
        # whose window closes for all of them at once.
        # (counted from here: how many changes the start logged depends on
        # how many secrets the retrier had sealed before the dispatcher read
        # the subscriptions; 1,800 in one run, not 2,000)
        changed = '"msg":"subscription changed: '
        n0 = d.proc.output().count(changed)
        sql(db_url, "UPDATE hookbridge.subscriptions SET options = options || "
                    "'{\"batch_max\": 5, \"batch_window_ms\": 300}'")
        wait_until(lambda: d.proc.output().count(changed) >= n0 + 1000 or None,
                   30 * SLOW, "the change applied")
        ev = dict(event("user.session.start"), displayMessage="x" * 100_000)
        produce(broker.bootstrap, [ev])
        wait_until(lambda: got.count(ev["uuid"]) == 1000 or None, 60 * SLOW, "every batch")
        grew = hwm_kib(d.proc.pid) - before
        print(f"with batches, peak RSS grew by {grew} KiB")
        if BIN.name != "bin-san":
            assert grew < 48 * 1024, f"peak RSS grew by {grew} KiB"
        assert len(got) == 2000
    finally:
        srv.shutdown()


def test_hung_hosts_do_not_take_every_request_slot_from_healthy_ones(db_url, broker, procs):
    """docs/design.md, Endpoint isolation: eight endpoint hosts that take
    connections and never answer and six that answer at once, one
    subscription on each, five events for all of them: 40 requests that hang
    against HOOKBRIDGE_MAX_IN_FLIGHT=32. The last quarter of the request slots
    is kept for hosts that answer, so the healthy hosts get all 30 of theirs
    in seconds, none of them parked on the delay tier.

    On 9ec6cf5 the hung requests took every slot; the healthy hosts'
    requests waited out HOOKBRIDGE_MAX_QUEUE_WAIT for a slot and went to the
    delay tier as "endpoint slow: waited 5000 ms for a connection to
    127.0.0.1", their (healthy) hosts called slow. (The same with 1,000
    hosts, half hung, and the default 512 slots: 508 of 1,500 healthy
    deliveries arrived, the rest parked; now all 1,500 in half a second.)"""
    got = []

    Answering = collecting(got)

    healthy = [serve_many(Answering) for _ in range(6)]
    hung = []
    try:
        hung.extend(hung_listeners(8, 64))
        urls = [h.url for h in healthy] + \
               [f"http://127.0.0.1:{s.getsockname()[1]}/hook" for s in hung]
        sql(db_url, "SELECT hookbridge.register('host-' || i, u, ARRAY['user.session.start'], "
                    "'{}') FROM unnest(%s::text[]) WITH ORDINALITY AS t(u, i)", urls)
        sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                    "status = 'active'")
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_LOG_LEVEL": "info", "HOOKBRIDGE_MAX_IN_FLIGHT": "32",
            "HOOKBRIDGE_REQUEST_TIMEOUT": "60s"})
        d.wait_ready()
        evs = [event("user.session.start") for _ in range(5)]
        t0 = time.monotonic()
        produce(broker.bootstrap, evs)
        wait_until(lambda: len(got) >= 30 or None, 15 * SLOW, "the healthy hosts' deliveries")
        print(f"healthy hosts served in {time.monotonic() - t0:.1f} s")
        assert sorted(got) == sorted(e["uuid"] for e in evs for _ in healthy)
        parked = sql(db_url, "SELECT d.last_error FROM hookbridge.deliveries d "
                             "JOIN hookbridge.subscriptions s ON s.id = d.subscription_id "
                             "WHERE s.url = ANY(%s) AND d.status = 'retry'",
                     [h.url for h in healthy])
        assert parked == [], parked
    finally:
        for h in healthy:
            h.shutdown()
        for s in hung:
            s.close()


def test_a_bulk_change_of_thousands_of_subscriptions_does_not_stall_deliveries(db_url, broker,
                                                                                procs):
    """docs/sql.md: triggers NOTIFY the services, which apply a change within
    about a second. A platform team changes 4,000 subscriptions in one
    statement (a plain UPDATE, each row notified); meanwhile an event for
    another subscription is produced. The dispatcher takes no event while a
    change is on its way, so the change must be applied quickly: all 4,000
    and the event's delivery come within a second of the commit.

    On 9ec6cf5 the follower loaded each changed subscription with a query of
    its own, about 0.45 ms apiece: the event waited 1.8 s here (10,000: 4.5 s), no
    event taken meanwhile, after sealing the new subscriptions' secrets one
    statement each at start-up (10,000: 5 s, not ready meanwhile). Now
    changes are loaded 500 to a statement and a batch of secrets is sealed
    with one (10,000 changes: 0.5 s)."""
    got = []

    Answering = collecting(got)

    srv = serve_many(Answering)
    try:
        subscribe_many(db_url, [srv.url], 4000)
        sql(db_url, "SELECT hookbridge.register('probe', %s, ARRAY['user.lifecycle.create'], "
                    "'{}')", srv.url)
        sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                    "status = 'active' WHERE name = 'probe'")
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={"HOOKBRIDGE_LOG_LEVEL": "info"})
        d.wait_ready()
        # What an event takes with no change on its way (starting the
        # producer, the delivery), on this machine under its load now: the
        # bound below is on what the bulk change adds to it: 1.5 s, or three
        # times what an event alone takes when the machine is so loaded that
        # this is more (a plain 1.3 s in all failed at 1.32 s on the 2-core
        # machine running other suites, where the change added 1.1 to 1.4 s
        # to an event alone taking 0.6 to 0.8 s, and 1.0 s failed at 1.26 s
        # beside an event alone taking 0.11 s in CI run 97, with a review's
        # tests running beside the suite; there 9ec6cf5, loading one row a
        # statement, added 2.6 s to an event alone taking 0.6 s, and 1.8 s
        # on an idle machine).
        t0 = time.monotonic()
        ev = event("user.lifecycle.create")
        produce(broker.bootstrap, [ev])
        wait_until(lambda: ev["uuid"] in got or None, 30 * SLOW, "the first probe event")
        alone = time.monotonic() - t0
        changed = d.proc.output().count('"msg":"subscription changed: ')
        sql(db_url, "UPDATE hookbridge.subscriptions SET name = name || ' (moved)' "
                    "WHERE name LIKE 'many-%%'")
        t0 = time.monotonic()  # committed: notified
        ev = event("user.lifecycle.create")
        produce(broker.bootstrap, [ev])
        wait_until(lambda: ev["uuid"] in got or None, 30 * SLOW, "the probe event")
        took = time.monotonic() - t0
        wait_until(lambda: d.proc.output().count('"msg":"subscription changed: ') - changed
                   >= 4000 or None, 30 * SLOW, "the changes applied")
        applied = time.monotonic() - t0
        print(f"probe delivered {took:.2f} s, changes applied {applied:.2f} s after the UPDATE; "
              f"{alone:.2f} s with no change on its way")
        assert took - alone < max(1.5 * SLOW, 3 * alone), \
            f"the event waited {took - alone:.2f} s for the bulk change ({took:.2f} s in all)"
        assert d.get("/readyz")[0] == 200
    finally:
        srv.shutdown()


def test_a_fan_out_stopped_half_way_is_finished_by_the_next_start(db_url, broker, procs):
    """docs/design.md, At least once: one event of 100 KB for 300
    subscriptions with a payload budget of 1 MiB starts its deliveries ten
    or so at a time (an endpoint answering in 100 ms). SIGTERM half way: the
    dispatcher finishes what it started, leaves the rest unstarted and its
    offset uncommitted (it says so), and exits 0; started again, it delivers
    the event again, so that every one of the 300 subscriptions has it (some
    twice, with the same webhook-id). Checks the fan-out's rest at a stop
    (new with 80f44a7: on 9ec6cf5 every delivery was started at once)."""
    ids = []

    class Answering(ChallengeAnswering):
        def do_POST(self):
            posted_uuids(self)
            ids.append(self.headers["webhook-id"])
            time.sleep(0.1)
            self.answer()

    srv = serve_many(Answering)
    try:
        subscribe_many(db_url, [srv.url], 300)
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_LOG_LEVEL": "info", "HOOKBRIDGE_MAX_PENDING_BYTES": "1048576"})
        d.wait_ready()
        produce(broker.bootstrap, [dict(event("user.session.start"), displayMessage="x" * 100_000)])
        wait_until(lambda: len(ids) >= 30 or None, 30 * SLOW, "the first deliveries")
        assert d.proc.stop() == 0
        first = set(ids)
        assert len(first) < 300, "every delivery made before the stop: nothing tested"
        assert "of an event not started; the event is consumed again" in d.proc.output()
        d.restart()
        wait_until(lambda: len(set(ids)) >= 300 or None, 60 * SLOW, "every subscription's delivery")
        assert len(set(ids)) == 300
        assert d.proc.stop() == 0
    finally:
        srv.shutdown()


def test_a_bulk_url_change_does_not_hold_the_rate_limited_subscriptions_back(db_url, broker,
                                                                             procs):
    """docs/design.md, Rate limits: a rate-limited subscription's tokens come
    from PostgreSQL on the store's request lane. A platform team moves 1,000
    subscriptions to a new URL in one UPDATE: each new URL is challenged, and
    claiming each challenge is a request on that lane, a few milliseconds
    apiece. Five events for a rate-limited subscription (10/s, burst 5)
    produced meanwhile are delivered at once, not held until they give up
    waiting (HOOKBRIDGE_MAX_QUEUE_WAIT, 500 ms here) and parked.

    On 9ec6cf5 the token asks waited behind the claims: four of the five
    were parked on the delay tier, "rate limited: held 500 ms ... without a
    turn"."""
    got = []

    Answering = collecting(got)

    old, new, limited = serve_many(Answering), serve_many(Answering), serve_many(Answering)
    try:
        subscribe_many(db_url, [old.url], 1000)
        sql(db_url, "SELECT hookbridge.register('limited', %s, ARRAY['user.lifecycle.create'], "
                    "'{\"rate_limit\": {\"per_second\": 10, \"burst\": 5}}')", limited.url)
        sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                    "status = 'active' WHERE name = 'limited'")
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_LOG_LEVEL": "info", "HOOKBRIDGE_MAX_QUEUE_WAIT": "500ms"})
        d.wait_ready()
        sql(db_url, "UPDATE hookbridge.subscriptions SET url = %s WHERE name LIKE 'many-%%'",
            new.url)
        wait_until(lambda: d.proc.output().count('"msg":"sending verification challenge"') >= 50
                   or None, 30 * SLOW, "the challenges to begin")
        evs = [event("user.lifecycle.create") for _ in range(5)]
        produce(broker.bootstrap, evs)
        wait_until(lambda: all(e["uuid"] in got for e in evs) or None, 20 * SLOW,
                   "the rate-limited subscription's events")
        parked = sql(db_url, "SELECT d.last_error FROM hookbridge.deliveries d "
                             "JOIN hookbridge.subscriptions s ON s.id = d.subscription_id "
                             "WHERE s.name = 'limited' AND d.status <> 'delivered'")
        assert parked == [], parked
        pending = sql(db_url, "SELECT count(*) FROM hookbridge.subscriptions "
                              "WHERE verification <> 'verified'")[0][0]
        print(f"{pending} challenges still to go when the limited events were delivered")
    finally:
        for srv in (old, new, limited):
            srv.shutdown()
