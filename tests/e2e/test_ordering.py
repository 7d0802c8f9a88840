"""Ordered delivery per key (options.ordering, issue 14): the events of one key
reach the endpoint one at a time, in the order of the events topic, also
across retries; other keys do not wait; a dead-lettered head lets the next go
on; a restarted dispatcher still keeps later events behind a blocked key;
events that wait for a changed URL's verification keep their order; cancel()
of a failing head lets its key go on.

The endpoint is a Python server that fails chosen events (by uuid), records
the order of the acknowledged ones and how many requests of one key it had at
once. Schedules are seconds long, jitter off."""
import json
import threading
import time
import uuid

import psycopg2
import pytest

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Retrier, produce
from test_delivery import register_verified, sql


class Endpoint:
    """A receiver: answers 503 to the first `fail_first[uuid]` POSTs of an
    event (None: every POST, until fail_first is changed), 204 otherwise."""

    def __init__(self, delay_s=0.0, verify_gate=None):
        self.lock = threading.Lock()
        self.fail_first = {}
        self.seen = {}
        self.acked = []  # (uuid, key, time) in the order acknowledged
        self.in_flight = {}
        self.max_in_flight = {}
        self.delay_s = delay_s
        ep = self

        class Handler(ChallengeAnswering):
            def do_GET(self):  # the challenge, answered once verify_gate is set
                if verify_gate is not None:
                    verify_gate.wait(60)
                super().do_GET()

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                ev = body["data"]["events"][0]
                u, key = ev["uuid"], ev["target"][0]["id"]
                with ep.lock:
                    ep.in_flight[key] = ep.in_flight.get(key, 0) + 1
                    ep.max_in_flight[key] = max(ep.max_in_flight.get(key, 0), ep.in_flight[key])
                    n = ep.seen[u] = ep.seen.get(u, 0) + 1
                    limit = ep.fail_first.get(u, 0)
                    fail = limit is None or n <= limit
                if ep.delay_s:
                    time.sleep(ep.delay_s)
                with ep.lock:
                    ep.in_flight[key] -= 1
                    if not fail:
                        ep.acked.append((u, key, time.monotonic()))
                self.send_response(503 if fail else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.srv = serve(Handler)
        self.url = self.srv.url

    def order(self, key):
        with self.lock:
            return [u for u, k, _ in self.acked if k == key]

    def acked_at(self, u):
        with self.lock:
            return next(t for x, _, t in self.acked if x == u)


def event(user, n):
    return {"uuid": str(uuid.uuid4()), "eventType": "user.session.start",
            "displayMessage": f"e2e {n}", "severity": "INFO",
            "actor": {"id": "00uadmin", "type": "User"},
            "target": [{"id": user, "type": "User"}], "outcome": {"result": "SUCCESS"}}


def stack(procs, workdir, db_url, schedule, env=None):
    broker = Broker(procs, workdir, retry_schedule=schedule)
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0", **(env or {})}
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    r.wait_ready()
    return broker, d, r


def delivery_id(db_url, sub, ev):
    rows = sql(db_url, "SELECT delivery_id::text FROM hookbridge.deliveries "
               "WHERE subscription_id=%s AND event_ids=%s", sub, ev["uuid"])
    return rows[0][0] if rows else None


def test_bad_ordering_values_are_refused_with_hb025(db_url):
    """register and update refuse a bad ordering with HB025 and change nothing."""
    from test_delivery import sql as run
    before = run(db_url, "SELECT count(*) FROM hookbridge.subscriptions")[0][0]
    for opts in ({"ordering": "user"}, {"ordering": ""}, {"ordering": 1},
                 {"ordering": ["actor"]}, {"ordering": None},
                 {"ordering": "actor", "batch_max": 5}):
        with pytest.raises(psycopg2.Error) as e:
            run(db_url, "SELECT hookbridge.register('o', 'https://example.com/h', "
                "ARRAY['user.session.start'], %s::jsonb)", json.dumps(opts))
        assert e.value.pgcode == "HB025", (opts, e.value.pgerror)
    assert run(db_url, "SELECT count(*) FROM hookbridge.subscriptions")[0][0] == before
    sub = run(db_url, "SELECT hookbridge.register('o', 'https://example.com/h', "
              "ARRAY['user.session.start'], '{\"ordering\": \"target\"}')")[0][0]
    for opts in ({"ordering": "first"}, {"ordering": "key", "batch_max": 2}):
        with pytest.raises(psycopg2.Error) as e:
            run(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", sub, json.dumps(opts))
        assert e.value.pgcode == "HB025"
    assert run(db_url, "SELECT options FROM hookbridge.subscriptions WHERE id=%s",
               sub)[0][0] == {"ordering": "target"}
    for good in ("actor", "key"):
        run(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", sub,
            json.dumps({"ordering": good, "batch_max": 1}))


def test_a_retried_event_keeps_its_place_and_other_keys_do_not_wait(db_url, procs, workdir):
    """Five events of user A, the first answered 503 once: A's events are
    acknowledged in the order produced (without ordering: 2, 3, 4, 5, 1);
    user B's events, produced in between, arrive without waiting for A's."""
    ep = Endpoint()
    try:
        broker, d, r = stack(procs, workdir, db_url, "1s,1s,1s")
        sub = register_verified(db_url, ep.url, ["user.session.start"], {"ordering": "target"})
        a = [event("00uA", i) for i in range(5)]
        b = [event("00uB", i) for i in range(3)]
        ep.fail_first[a[0]["uuid"]] = 1
        produce(broker.bootstrap, [a[0], b[0], a[1], a[2], b[1], a[3], a[4], b[2]])
        wait_until(lambda: len(ep.order("00uA")) == 5, 40 * SLOW, "user A's five events")
        assert ep.order("00uA") == [e["uuid"] for e in a]
        assert ep.order("00uB") == [e["uuid"] for e in b]
        assert ep.acked_at(b[2]["uuid"]) < ep.acked_at(a[0]["uuid"]), \
            "user B's events waited for user A's retry"
        assert ep.max_in_flight["00uA"] == 1
        # the delivery log: A's second event waited behind the first, unattempted
        first, second = delivery_id(db_url, sub, a[0]), delivery_id(db_url, sub, a[1])
        rows = wait_until(lambda: (rows := sql(
            db_url, "SELECT attempt, outcome, error FROM hookbridge.delivery_attempts "
            "WHERE delivery_id=%s ORDER BY started_at", second))[-1][:2] == (1, "delivered")
            and rows, 10 * SLOW, "the second's delivery logged")
        assert rows[0][:2] == (0, "retry") and rows[0][2] == f"waiting behind {first}", rows
        wait_until(lambda: sql(db_url, "SELECT delivery_id::text FROM hookbridge.ordering_tails "
                               "WHERE subscription_id=%s AND ordering_key='00uA'", sub)
                   == [(delivery_id(db_url, sub, a[4]),)], 10 * SLOW, "A's tail in the table")
    finally:
        ep.srv.shutdown()


def test_events_that_wait_for_a_new_url_s_verification_keep_their_order(db_url, procs, workdir):
    """The URL of an ordered subscription moves to an endpoint that holds its
    challenge's answer: the events of a key that arrive meanwhile wait (in
    the first tier, nothing sent), and once the new URL is verified they reach
    it in the order produced, one at a time; the old URL gets nothing more."""
    gate = threading.Event()
    old, new = Endpoint(), Endpoint(verify_gate=gate)
    try:
        broker, d, r = stack(procs, workdir, db_url, "2s,2s", {"HOOKBRIDGE_VERIFY_TIMEOUT": "60s"})
        sub = register_verified(db_url, old.url, ["user.session.start"], {"ordering": "target"})
        a = [event("00uM", i) for i in range(4)]
        produce(broker.bootstrap, a[:1])
        wait_until(lambda: old.order("00uM") == [a[0]["uuid"]], 20 * SLOW, "the first at the old URL")
        sql(db_url, "SELECT hookbridge.update(%s, url => %s)", sub, new.url)
        for svc in (d, r):
            wait_until(lambda: "subscription changed: active, not verified" in svc.proc.output(),
                       10 * SLOW, "both services to see the new URL unverified")
        produce(broker.bootstrap, a[1:])
        wait_until(lambda: all(delivery_id(db_url, sub, e) for e in a[1:]) and sql(
            db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE subscription_id=%s "
            "AND status='retry'", sub)[0][0] == 3, 20 * SLOW, "the three waiting")
        time.sleep(2 * SLOW)  # a round in the tier: still nothing sent anywhere
        assert new.order("00uM") == [] and old.order("00uM") == [a[0]["uuid"]]
        gate.set()
        wait_until(lambda: len(new.order("00uM")) == 3, 40 * SLOW, "the three at the new URL")
        assert new.order("00uM") == [e["uuid"] for e in a[1:]]
        assert new.max_in_flight["00uM"] == 1
        assert old.order("00uM") == [a[0]["uuid"]], "the old URL got an event after the change"
    finally:
        gate.set()
        old.srv.shutdown()
        new.srv.shutdown()


def test_one_request_at_a_time_per_key(db_url, procs, workdir):
    """A slow endpoint (300 ms per request): the ordered subscription never
    has two requests of one key at once, the same endpoint without ordering
    does (so the check can see overlap)."""
    ordered, unordered = Endpoint(delay_s=0.3), Endpoint(delay_s=0.3)
    try:
        broker, d, r = stack(procs, workdir, db_url, "1s")
        register_verified(db_url, ordered.url, ["user.session.start"], {"ordering": "key"})
        register_verified(db_url, unordered.url, ["user.session.start"])
        evs = [event("00uC", i) for i in range(6)]
        produce(broker.bootstrap, evs)
        wait_until(lambda: len(ordered.order("00uC")) == 6 and len(unordered.order("00uC")) == 6,
                   30 * SLOW, "every event at both endpoints")
        assert ordered.max_in_flight["00uC"] == 1
        assert ordered.order("00uC") == [e["uuid"] for e in evs]
        assert unordered.max_in_flight["00uC"] > 1
    finally:
        ordered.srv.shutdown()
        unordered.srv.shutdown()


def test_a_dead_lettered_head_lets_the_next_go_on(db_url, procs, workdir):
    """The first event of a key fails every attempt: it is dead-lettered, the
    others follow in order, and the log shows the failed one and the waits."""
    ep = Endpoint()
    try:
        broker, d, r = stack(procs, workdir, db_url, "1s,1s")
        sub = register_verified(db_url, ep.url, ["user.session.start"], {"ordering": "actor"})
        evs = [event("00uD", i) for i in range(4)]
        for e in evs:
            e["actor"]["id"] = "00uD"
        ep.fail_first[evs[0]["uuid"]] = None  # always 503
        produce(broker.bootstrap, evs)
        wait_until(lambda: len(ep.order("00uD")) == 3, 40 * SLOW, "the three after the head")
        assert ep.order("00uD") == [e["uuid"] for e in evs[1:]]
        assert ep.seen[evs[0]["uuid"]] == 3, "the head had its three attempts"
        head = delivery_id(db_url, sub, evs[0])
        def statuses():
            return [sql(db_url, "SELECT status, attempts FROM hookbridge.deliveries "
                        "WHERE delivery_id=%s", delivery_id(db_url, sub, e))[0] for e in evs]
        want = [("failed", 3)] + [("delivered", 1)] * 3
        wait_until(lambda: statuses() == want, 10 * SLOW, f"the log to say {want}")
        waits = sql(db_url, "SELECT error FROM hookbridge.delivery_attempts "
                    "WHERE delivery_id=%s AND attempt=0", delivery_id(db_url, sub, evs[1]))
        assert waits == [(f"waiting behind {head}",)]
    finally:
        ep.srv.shutdown()


def test_a_restarted_dispatcher_keeps_later_events_behind_a_blocked_key(db_url, procs, workdir):
    """A key blocked by a failing head; the dispatcher is restarted; an event
    produced after the restart still waits behind it (the new process finds
    the key's tail in PostgreSQL), and all arrive in order once the head
    gets through."""
    ep = Endpoint()
    try:
        broker, d, r = stack(procs, workdir, db_url, ",".join(["1s"] * 30))
        sub = register_verified(db_url, ep.url, ["user.session.start"], {"ordering": "target"})
        evs = [event("00uE", i) for i in range(3)]
        ep.fail_first[evs[0]["uuid"]] = None  # until the test lets it through
        produce(broker.bootstrap, evs[:2])
        wait_until(lambda: delivery_id(db_url, sub, evs[1]) and sql(
            db_url, "SELECT status FROM hookbridge.deliveries WHERE delivery_id=%s",
            delivery_id(db_url, sub, evs[1]))[0][0] == "retry", 20 * SLOW, "the second to wait")
        d.proc.stop()
        d.restart()
        d.wait_ready()
        produce(broker.bootstrap, evs[2:])
        second = delivery_id(db_url, sub, evs[1])
        # the new dispatcher parks the third behind the second (found in PostgreSQL)
        wait_until(lambda: (third := delivery_id(db_url, sub, evs[2])) and sql(
            db_url, "SELECT status, last_error FROM hookbridge.deliveries WHERE delivery_id=%s",
            third)[0] == ("retry", f"waiting behind {second}"), 20 * SLOW, "the third to wait")
        assert ep.order("00uE") == []
        with ep.lock:
            ep.fail_first[evs[0]["uuid"]] = 0
        wait_until(lambda: len(ep.order("00uE")) == 3, 40 * SLOW, "all three")
        assert ep.order("00uE") == [e["uuid"] for e in evs]
    finally:
        ep.srv.shutdown()


def test_a_deactivation_drops_the_waiting_events_and_the_key_goes_on(db_url, procs, workdir):
    """A key blocked by a failing head, two events waiting behind it: a
    deactivation drops all three (final 'dropped'), and after activating
    again the key's next event is delivered: nothing waits for good."""
    ep = Endpoint()
    try:
        broker, d, r = stack(procs, workdir, db_url, ",".join(["1s"] * 30))
        sub = register_verified(db_url, ep.url, ["user.session.start"], {"ordering": "target"})
        evs = [event("00uF", i) for i in range(4)]
        ep.fail_first[evs[0]["uuid"]] = None
        produce(broker.bootstrap, evs[:3])

        def status(e):
            did = delivery_id(db_url, sub, e)
            return did and sql(db_url, "SELECT status FROM hookbridge.deliveries "
                               "WHERE delivery_id=%s", did)[0][0]
        wait_until(lambda: status(evs[2]) == "retry", 20 * SLOW, "the third to wait")
        sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
        wait_until(lambda: [status(e) for e in evs[:3]] == ["dropped"] * 3, 30 * SLOW,
                   "the head and the waiting ones dropped")
        sql(db_url, "SELECT hookbridge.activate(%s)", sub)
        wait_until(lambda: "subscription changed: active, verified" in d.proc.output()
                   .split("subscription changed: inactive")[-1], 10 * SLOW, "the activation")
        produce(broker.bootstrap, evs[3:])
        wait_until(lambda: ep.order("00uF") == [evs[3]["uuid"]], 20 * SLOW,
                   "the key's next event delivered")
    finally:
        ep.srv.shutdown()


def test_cancelling_a_failing_head_lets_the_key_go_on(db_url, procs, workdir):
    """A key blocked by a head that keeps failing, two events waiting behind
    it: cancel() of the head (docs/sql.md) lets them go on, in order, without
    deactivating the subscription; the head is not attempted again."""
    ep = Endpoint()
    try:
        broker, d, r = stack(procs, workdir, db_url, ",".join(["1s"] * 30))
        sub = register_verified(db_url, ep.url, ["user.session.start"], {"ordering": "target"})
        evs = [event("00uC", i) for i in range(3)]
        ep.fail_first[evs[0]["uuid"]] = None
        produce(broker.bootstrap, evs)
        head = wait_until(lambda: delivery_id(db_url, sub, evs[0]), 20 * SLOW, "the head logged")
        wait_until(lambda: ep.seen.get(evs[0]["uuid"], 0) >= 2 and delivery_id(db_url, sub, evs[2]),
                   20 * SLOW, "the head retried, the others waiting")
        assert ep.order("00uC") == []
        sql(db_url, "SELECT hookbridge.cancel(%s, 'poison event')", head)
        wait_until(lambda: ep.order("00uC") == [e["uuid"] for e in evs[1:]], 20 * SLOW,
                   "the two behind it delivered, in order")
        tried = ep.seen[evs[0]["uuid"]]
        time.sleep(2 * SLOW)  # two more rounds of the 1 s tier
        assert ep.seen[evs[0]["uuid"]] <= tried + 1, "the cancelled head kept being attempted"
        assert sql(db_url, "SELECT status, last_error FROM hookbridge.deliveries "
                   "WHERE delivery_id=%s", head) == [("dropped", "cancelled: poison event")]
    finally:
        ep.srv.shutdown()


def test_a_deactivation_drops_the_events_waiting_in_memory_behind_a_slow_head(
        db_url, procs, workdir):
    """A slow endpoint, five events of one key: the first in flight, four
    waiting in the dispatcher's memory behind it. Deactivated then, the
    endpoint gets none of the four (each logged 'dropped'), not one after the
    other for as long as their requests take."""
    ep = Endpoint(delay_s=2.0)
    try:
        broker, d, _ = stack(procs, workdir, db_url, ",".join(["1s"] * 30))
        sub = register_verified(db_url, ep.url, ["user.session.start"], {"ordering": "target"})
        evs = [event("00uS", i) for i in range(5)]
        produce(broker.bootstrap, evs)
        wait_until(lambda: ep.seen.get(evs[0]["uuid"]), 20 * SLOW, "the first in flight")
        sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
        wait_until(lambda: "subscription changed: inactive" in d.proc.output(), 10 * SLOW,
                   "the deactivation")

        def status(e):
            did = delivery_id(db_url, sub, e)
            return did and sql(db_url, "SELECT status FROM hookbridge.deliveries "
                               "WHERE delivery_id=%s", did)[0][0]
        wait_until(lambda: all(status(e) in ("delivered", "dropped") for e in evs), 30 * SLOW,
                   "every event final")
        sent_after = [e["uuid"] for e in evs[1:] if ep.seen.get(e["uuid"])]
        assert len(sent_after) <= 1, f"{len(sent_after)} sent after the deactivation"
        assert [status(e) for e in evs[2:]] == ["dropped"] * 3
    finally:
        ep.srv.shutdown()


def test_a_deactivation_drops_the_retrier_s_waiters_behind_a_slow_head(db_url, procs, workdir):
    """The same in the retrier: the head's retry in flight to a slow endpoint,
    the events parked behind it held in the retrier's memory for their turn.
    Deactivated then, none of them reaches the endpoint; all are dropped."""
    ep = Endpoint(delay_s=1.5)
    try:
        broker, d, r = stack(procs, workdir, db_url, ",".join(["1s"] * 30))
        sub = register_verified(db_url, ep.url, ["user.session.start"], {"ordering": "target"})
        evs = [event("00uR", i) for i in range(5)]
        ep.fail_first[evs[0]["uuid"]] = 1
        produce(broker.bootstrap, evs)
        wait_until(lambda: ep.seen.get(evs[0]["uuid"], 0) >= 2, 30 * SLOW,
                   "the head's retry in flight")
        sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
        wait_until(lambda: "subscription changed: inactive" in r.proc.output(), 10 * SLOW,
                   "the deactivation")

        def status(e):
            did = delivery_id(db_url, sub, e)
            return did and sql(db_url, "SELECT status FROM hookbridge.deliveries "
                               "WHERE delivery_id=%s", did)[0][0]
        wait_until(lambda: all(status(e) in ("delivered", "dropped") for e in evs), 30 * SLOW,
                   "every event final")
        sent_after = [e["uuid"] for e in evs[1:] if ep.seen.get(e["uuid"])]
        assert not sent_after, f"{len(sent_after)} sent after the deactivation"
        assert [status(e) for e in evs[1:]] == ["dropped"] * 4
    finally:
        ep.srv.shutdown()


def test_events_waiting_behind_a_head_are_asked_about_again_when_it_is_due(
        db_url, procs, workdir):
    """docs/payloads.md, How it works: a key's head fails twice and waits
    12 s for its third attempt; five events of its key wait behind it. They
    are asked about again when the head is due, not every first-tier
    delay: each was written back onto a delay tier (and its predecessor
    looked up in the delivery log) about once a second before (60 times
    for these five in 12 s; behind a head whose endpoint is down for hours
    on the default 5s tier, 720 times an hour each). Once the head is
    acknowledged, the five follow at once, in order."""
    ep = Endpoint()
    try:
        broker, d, r = stack(procs, workdir, db_url, "1s,12s")
        register_verified(db_url, ep.url, ["user.session.start"], {"ordering": "target"})
        evs = [event("00uW", i) for i in range(6)]
        ep.fail_first[evs[0]["uuid"]] = 2
        produce(broker.bootstrap, evs)
        wait_until(lambda: len(ep.order("00uW")) == 6, 40 * SLOW, "the six events delivered")
        assert ep.order("00uW") == [e["uuid"] for e in evs]
        assert all(ep.seen[e["uuid"]] == 1 for e in evs[1:]), ep.seen
        after = ep.acked_at(evs[5]["uuid"]) - ep.acked_at(evs[0]["uuid"])
        waits = d.metric("hookbridge_ordering_waits_total") + r.metric(
            "hookbridge_ordering_waits_total")
        print(f"{waits:.0f} waits for 5 events; the last acknowledged {after:.2f} s after the head")
        assert waits <= 25, f"the waiting events were written back {waits:.0f} times in 12 s"
        assert after < 4 * SLOW, f"the waiting events followed the head {after:.1f} s later"
    finally:
        ep.srv.shutdown()
