"""Review 35: endpoint isolation when the endpoints are new (docs/design.md,
Endpoint isolation): a crowd of new hosts that hang, new names that resolve
slowly, and many new names at once cost only their own deliveries time.

Reuses review 31's machinery: the LD_PRELOAD getaddrinfo shim (names under
.hbtest resolve after a delay, or not at all, as their first label says) and
raw loopback endpoints that hang or reset.

Each check says what it did on e48a11e (before this review's commits)."""
import os
import threading
import time

from hbtest.lifecycle import wait_taken
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, produce
from test_delivery import event, register_verified, sql
from test_review31_faults import (  # noqa: F401 (fixtures)
    add_subscriptions, outcomes, raw, shim, stream, timed_endpoint)


def busy_of(db_url, sub):
    return sql(db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE subscription_id = %s "
               "AND last_error LIKE 'endpoint busy%%'", sub)[0][0]


def threads_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("Threads:"))


def stream_lat(broker, healthy, seconds, wait=15):
    """Produces 5 events every 0.2 s for `seconds`; the latencies at the
    healthy endpoint of those that arrived within `wait` s after, in the
    order sent, and how many did not."""
    sent = {}
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        evs = [event("user.session.start") for _ in range(5)]
        at = time.monotonic()
        produce(broker.bootstrap, evs)
        sent.update((e["uuid"], at) for e in evs)
        time.sleep(0.2)
    try:
        wait_until(lambda: set(sent) <= set(healthy.arrived), wait, "every event at the healthy one")
    except AssertionError:
        pass
    lat = [healthy.arrived[u] - sent[u] for u in sent if u in healthy.arrived]
    return lat, len(sent) - len(lat)


class ThreadPeak:
    """The most threads pid has, sampled every 20 ms while running."""

    def __init__(self, pid):
        self.pid, self.peak, self.on = pid, threads_of(pid), True
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while self.on:
            try:
                self.peak = max(self.peak, threads_of(self.pid))
            except (OSError, StopIteration):
                return
            time.sleep(0.02)

    def stop(self):
        self.on = False
        self.t.join()
        return self.peak


def test_a_crowd_of_new_hung_hosts_leaves_the_kept_slots_to_a_healthy_one(
        db_url, procs, workdir, raw):  # noqa: F811
    """One dispatcher with 8 slots (2 kept), request timeout 6 s, and a
    healthy endpoint that has answered; then 12 subscriptions to new hosts
    that hang (a region gone dark) and events for all of them.

    The new hosts have answered nothing, so they take none of the kept slots,
    and the healthy host is remembered between its requests (it has nothing
    to do most of the time): its events arrive as fast as before, none
    parked `endpoint busy` (median 0.3-0.4 s, at most 1.2-1.5 s: for the
    first second the consumer pauses, the new hosts' queues still counted as
    waiting for hosts that keep up). On e48a11e a host new to the engine (and
    the healthy one was new again whenever it had gone idle) could always
    start one request: the 12 new hosts took all 8 slots for the request
    timeout, and the healthy endpoint's events waited it out: 1 of 64-69
    parked in the 1 h tier as `endpoint busy: waited 5000 ms for one of the
    max_in_flight request slots`, the rest 5.7 s late (median), up to 7.0 s.
    The hung hosts' deliveries time out or wait unsent; a new host waiting
    out max_queue_wait is told that the last quarter is kept, one whose last
    request got no answer is told so, not called busy."""
    healthy = timed_endpoint()
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_RETRY_SCHEDULE": "1h", "HOOKBRIDGE_LOG_LEVEL": "info",
            "HOOKBRIDGE_REQUEST_TIMEOUT": "6s", "HOOKBRIDGE_MAX_IN_FLIGHT": "8"})
        d.wait_ready()
        sub = register_verified(db_url, healthy.url, ["user.session.start"])
        warm = event("user.session.start")
        produce(broker.bootstrap, [warm])
        wait_until(lambda: warm["uuid"] in healthy.arrived, 20, "the first event")
        time.sleep(0.5)  # idle: on e48a11e the engine forgot the healthy host here
        hung = add_subscriptions(db_url, [raw("silent") for _ in range(12)])
        wait_taken(d, hung.values())

        lat, missing = stream_lat(broker, healthy, 3)
        busy = busy_of(db_url, sub)
        assert (busy, missing) == (0, 0) and sorted(lat)[len(lat) // 2] < SLOW and max(
            lat) < 3 * SLOW, (
            f"healthy endpoint: {busy} deliveries parked, {missing} of {len(lat) + missing} "
            f"events missing, latencies (s) {sorted(lat)}")
        wait_until(lambda: sum(n for s in hung.values() for (_, a, _), n in outcomes(
            db_url, s).items() if a == 1) >= 6, 15, "the hung hosts' first attempts")
        for url, s in hung.items():
            rows = outcomes(db_url, s)
            assert all(st == "retry" and (a == 1 and e in (
                "timeout after 6000 ms", "connect timeout after 5000 ms") or a == 0 and (
                e.startswith(("endpoint slow: ", "circuit open: ")) or e.startswith(
                    "endpoint busy: waited") and e.endswith(
                        ", but the last quarter, kept for endpoints that have answered "
                        "(max_queue_wait)"))) for st, a, e in rows), (url, rows)
    finally:
        healthy.shutdown()


def test_a_new_name_is_looked_up_once_and_new_names_a_few_at_a_time(
        db_url, procs, workdir, shim, raw):  # noqa: F811
    """One dispatcher with 32 slots (so at most 4 lookups of new names at
    once), request timeout 1 s, a healthy endpoint, and 25 new subscriptions
    to names that take 3 s to resolve (as many new subscriptions, or
    verification challenges, to names whose DNS hangs) beside one that
    resets every connection; a burst of 12 events for all, then a stream.

    A name not resolved yet runs one request at a time, so it has one lookup
    thread, not one per connection, and only 4 of the new names are looked
    up at once: the dispatcher had 12 threads more than at rest (24), on
    e48a11e 73 (one per connection: a lookup for each of the one name's
    first requests, one for every new name, then one per stuck name at each
    request timeout). The healthy endpoint's events arrive within half a
    second (on e48a11e up to 2.2-2.5 s: the new names took the kept
    slots). The
    slow name's first attempt times out resolving; its other deliveries wait
    unsent, told that its name was being looked up. A reset at accept is a
    connection error, never `could not connect`."""
    healthy = timed_endpoint()
    port = healthy.server_address[1]
    rst = raw("rst")
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_RETRY_SCHEDULE": "1h", "HOOKBRIDGE_LOG_LEVEL": "info",
            "HOOKBRIDGE_REQUEST_TIMEOUT": "1s", "HOOKBRIDGE_MAX_IN_FLIGHT": "32",
            "HOOKBRIDGE_MAX_QUEUE_WAIT": "2s", "LD_PRELOAD": shim,
            "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"})
        d.wait_ready()
        register_verified(db_url, healthy.url, ["user.session.start"])
        warm = event("user.session.start")
        produce(broker.bootstrap, [warm])
        wait_until(lambda: warm["uuid"] in healthy.arrived, 20, "the first event")
        one = f"http://s3000-one.hbtest:{port}/hook"
        others = [f"http://s3000-n{i}.hbtest:{port}/hook" for i in range(24)]
        subs = add_subscriptions(db_url, [one, rst] + others)
        wait_taken(d, subs.values())
        pid = d.proc.p.pid
        base = threads_of(pid)
        peak = ThreadPeak(pid)
        try:
            burst = [event("user.session.start") for _ in range(12)]
            produce(broker.bootstrap, burst)
            lat, missing = stream_lat(broker, healthy, 3)
        finally:
            extra = peak.stop() - base
        assert extra <= 16, f"{extra} threads more than at rest ({base})"
        assert missing == 0 and max(lat) < 2 * SLOW, (
            f"healthy endpoint: {missing} events missing, latencies (s) {sorted(lat)}")

        rows = wait_until(lambda: outcomes(db_url, subs[one]) or None, 20, one)
        why = "timeout after 1000 ms resolving host s3000-one.hbtest (DNS)"
        assert ("retry", 1, why) in rows, rows
        # unsent: waiting for its own lookup, or for one of the 4 lookups at once
        lookup = ("endpoint slow: waited ", "endpoint busy: waited ", "circuit open: ")
        assert all(a == 1 and e == why or a == 0 and e.startswith(lookup) and (
            "lookup of s3000-one.hbtest" in e or "lookups of new host names" in e or
            e.startswith("circuit")) for _, a, e in rows), rows
        rows = outcomes(db_url, subs[rst])
        assert all(a == 0 or e.startswith("connection error: ") for _, a, e in rows), rows
    finally:
        healthy.shutdown()
