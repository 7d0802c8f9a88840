"""Per-subscription rate limits (options.rate_limit) end to end.

What an endpoint owner notices: requests arrive no faster than the limit (in
any second at most per_second + burst, the whole stream taking at least
(N - burst) / per_second), none is lost or logged failed for it, and a
subscription without a limit next to it is not held up. Several dispatchers
share one budget in PostgreSQL (hookbridge.take_rate_tokens): together they
stay within the documented bound, burst + per_second * (T + lease), lease
0.25 s. The retrier keeps the limit too, holding retries rather than failing
them, and a delivery that cannot wait goes to the first delay tier
unattempted, the log saying why."""
import json
import re
import time

import psycopg2
import pytest

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql

TIER = "hookbridge_retries_enqueued_total"
LEASE_S = 0.25  # granted tokens unused this long are dropped (lib/hb_delivery.c RATE_LEASE_MS)


def receiver(procs, workdir, name, **kw):
    return Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                    name=name, **kw)


def sqlstate_of(db_url, query, *args):
    with pytest.raises(psycopg2.Error) as e:
        sql(db_url, query, *args)
    return e.value.pgcode, str(e.value), e.value.diag.message_hint or ""


def arrivals(rcv):
    """Arrival times (s) of the acknowledged POSTs, sorted."""
    return sorted(r["time_ms"] / 1000.0 for r in rcv.posts() if 200 <= r["status"] < 300)


def logged(svc):
    """A service's JSON log lines, as dicts."""
    return [json.loads(l) for l in svc.proc.output().splitlines() if l.startswith("{")]


def busiest_second(times):
    """The most arrivals in any window of one second."""
    return max((sum(1 for u in times if t <= u < t + 1.0) for t in times), default=0)


def users(n):
    """Events of n different users: their keys spread over the partitions."""
    return [event("user.session.start", user=f"00u{i:010d}") for i in range(n)]


def statuses(db_url, sub):
    return sql(db_url, "SELECT status, attempts, coalesce(last_error, '') "
               "FROM hookbridge.deliveries WHERE subscription_id=%s", sub)


# ----------------------------------------------------------------------- SQL

BAD = [
    (5, "JSON object"),
    ({"per_second": 10, "bursts": 3}, 'unknown key "bursts"'),
    ({}, "per_second must be a number"),
    ({"per_second": "10"}, "per_second must be a number"),
    ({"per_second": 0}, "greater than 0"),
    ({"per_second": -1}, "greater than 0"),
    ({"per_second": 10001}, "at most 10000"),
    ({"per_second": 10, "burst": 0}, "burst must be an integer"),
    ({"per_second": 10, "burst": 2.5}, "burst must be an integer"),
    ({"per_second": 10, "burst": 10001}, "burst must be an integer"),
    ({"per_second": 10, "burst": "5"}, "burst must be an integer"),
]


@pytest.mark.sql_only
@pytest.mark.parametrize("value,needle", BAD)
def test_bad_rate_limits_are_refused_with_hb024_and_change_nothing(db_url, value, needle):
    url = "https://example.com/hook"
    code, msg, hint = sqlstate_of(
        db_url, "SELECT hookbridge.register('rl', %s, ARRAY['user.session.start'], %s::jsonb)",
        url, json.dumps({"rate_limit": value}))
    assert code == "HB024", msg
    assert needle in msg and "rate_limit" in msg
    assert hint, "a HINT says what a good value looks like"
    assert sql(db_url, "SELECT count(*) FROM hookbridge.subscriptions") == [(0,)]
    # update() refuses it too, and the stored options stay as they were
    sub = sql(db_url, "SELECT hookbridge.register('rl', %s, ARRAY['user.session.start'], "
              "'{\"rate_limit\": {\"per_second\": 3}}'::jsonb)", url)[0][0]
    code, msg, _ = sqlstate_of(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", sub,
                               json.dumps({"rate_limit": value}))
    assert code == "HB024", msg
    assert sql(db_url, "SELECT options FROM hookbridge.subscriptions WHERE id=%s", sub) == [
        ({"rate_limit": {"per_second": 3, "burst": 3}},)]


@pytest.mark.sql_only
def test_good_rate_limits_are_stored_normalised_and_the_budget_refills(db_url):
    def register(rl):
        return sql(db_url, "SELECT hookbridge.register('rl', 'https://example.com/h', "
                   "ARRAY['user.session.start'], %s::jsonb)", json.dumps({"rate_limit": rl}))[0][0]

    def options(sub):
        return sql(db_url, "SELECT options FROM hookbridge.subscriptions WHERE id=%s", sub)[0][0]

    assert options(register({"per_second": 0.5}))["rate_limit"] == {"per_second": 0.5,
                                                                   "burst": 1}
    assert options(register({"per_second": 10000, "burst": 10000}))["rate_limit"] == {
        "per_second": 10000, "burst": 10000}
    sub = register({"per_second": 10, "burst": 5})

    def take(n):
        return sql(db_url, "SELECT granted, wait_ms FROM hookbridge.take_rate_tokens(%s, %s)",
                   sub, n)[0]

    # the shared bucket: the burst at once, then one every 100 ms. The three
    # draws go in one statement: a connection each took longer than a token's
    # 100 ms on a loaded machine, and the bucket had refilled in between.
    t0 = time.monotonic()
    first, second, third = sql(
        db_url, "SELECT hookbridge.take_rate_tokens(%s, 3), hookbridge.take_rate_tokens(%s, 10),"
        " hookbridge.take_rate_tokens(%s, 1)", sub, sub, sub)[0]
    assert first == "(3,0)"
    granted, wait = (int(v) for v in second.strip("()").split(","))
    assert granted == 2 and 0 < wait <= 100
    assert third.startswith("(0,")
    time.sleep(0.35)
    granted, _ = take(10)
    # 0.35 s refill 3 tokens; whatever longer the calls took, up to the burst
    assert 3 <= granted <= min(5, int(10 * (time.monotonic() - t0)))
    # an update applies at once; without a limit everything is granted
    sql(db_url, "SELECT hookbridge.update(%s, options => '{}'::jsonb)", sub)
    assert take(50) == (50, 0)
    assert sql(db_url, "SELECT count(*) FROM hookbridge.rate_limit_buckets "
               "WHERE subscription_id=%s", sub) == [(0,)]


@pytest.mark.sql_only
def test_a_tiny_rate_is_a_long_wait_not_an_error(db_url):
    """per_second may be any number above 0: one request every 100 days is a
    wait beyond an int of ms, which the budget must still answer."""
    sub = sql(db_url, "SELECT hookbridge.register('rl', 'https://example.com/h', "
              "ARRAY['user.session.start'], '{\"rate_limit\": {\"per_second\": 1e-7}}'::jsonb)")[0][0]

    def take(n):
        return sql(db_url, "SELECT granted, wait_ms FROM hookbridge.take_rate_tokens(%s, %s)",
                   sub, n)[0]

    granted, wait = take(5)
    assert granted == 1 and wait > 86400 * 1000
    granted, wait = take(5)
    assert granted == 0 and wait > 86400 * 1000


@pytest.mark.sql_only
def test_a_draw_that_waited_for_the_row_lock_does_not_turn_the_bucket_clock_back(db_url):
    """Replicas draw from one row: a draw that waited for another's lock must
    not write back the earlier time it started at, or the next draw refills
    the same interval again (more than the rate across replicas)."""
    import threading
    sub = sql(db_url, "SELECT hookbridge.register('rl', 'https://example.com/h', "
              "ARRAY['user.session.start'], '{\"rate_limit\": {\"per_second\": 10, "
              "\"burst\": 10}}'::jsonb)")[0][0]

    def take(n):
        return sql(db_url, "SELECT granted, wait_ms FROM hookbridge.take_rate_tokens(%s, %s)",
                   sub, n)[0]

    assert take(10) == (10, 100)  # the row exists, the bucket is empty
    holder = psycopg2.connect(db_url)
    cur = holder.cursor()
    cur.execute("SELECT 1 FROM hookbridge.rate_limit_buckets WHERE subscription_id=%s "
                "FOR UPDATE", (sub,))  # another replica's draw, slow to commit
    waited = []
    t = threading.Thread(target=lambda: waited.append(take(10)))
    t.start()
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM pg_stat_activity "
                           "WHERE wait_event_type = 'Lock' AND query LIKE '%%take_rate_tokens%%'")
               [0][0] == 1, timeout=10, what="the second draw waits for the row lock")
    time.sleep(0.6)  # the waiting draw started this long before it gets the row
    cur.execute("UPDATE hookbridge.rate_limit_buckets SET tokens = 0, "
                "refilled_at = clock_timestamp() WHERE subscription_id=%s", (sub,))
    holder.commit()
    holder.close()
    t.join(10)
    assert waited and waited[0][0] == 0
    granted, _ = take(10)
    assert granted <= 1, f"{granted} tokens a moment after the bucket was emptied"


# ------------------------------------------------------------- one replica

def test_a_limited_endpoint_gets_no_more_than_its_rate_and_others_are_not_held_up(
        db_url, procs, workdir):
    n, rate, burst = 30, 10, 5
    broker = Broker(procs, workdir, retry_schedule="1h")
    limited = receiver(procs, workdir, "limited")
    free = receiver(procs, workdir, "free")
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_RETRY_SCHEDULE": "1h",
        "HOOKBRIDGE_MAX_QUEUE_WAIT": "20s",  # a loaded machine must not divert any
    })
    d.wait_ready()
    lsub = register_verified(db_url, limited.url, ["user.session.start"],
                             {"rate_limit": {"per_second": rate, "burst": burst}})
    fsub = register_verified(db_url, free.url, ["user.session.start"])
    events = users(n)
    produce(broker.bootstrap, events)
    want = {e["uuid"] for e in events}
    wait_until(lambda: want <= {e["uuid"] for _, e in free.events()}, 30 * SLOW,
               "every event at the endpoint without a limit")
    wait_until(lambda: want <= {e["uuid"] for _, e in limited.events()}, 30 * SLOW,
               "every event at the limited endpoint")
    got, other = arrivals(limited), arrivals(free)
    span = got[-1] - got[0]
    print(f"limited: {len(got)} requests over {span:.2f} s, busiest second "
          f"{busiest_second(got)}; unlimited: {len(other)} over {other[-1] - other[0]:.2f} s")
    assert len(got) == n, "one request per event: none sent twice"
    assert busiest_second(got) <= rate + burst
    assert span >= (n - burst) / rate - 0.05
    # the endpoint without a limit had everything long before the limited one
    assert other[-1] <= got[-1] - 1.0
    # nothing dropped, nothing failed, no attempt wasted
    rows = wait_until(lambda: (rs := statuses(db_url, lsub)) and len(rs) == n
                      and all(r[0] == "delivered" for r in rs) and rs, 10 * SLOW,
                      "every limited delivery logged delivered")
    assert all(r[1] == 1 for r in rows), rows
    assert all(r[0] == "delivered" for r in statuses(db_url, fsub))
    assert d.metric("hookbridge_rate_limited_total") >= n - burst - 1
    assert d.metric("hookbridge_rate_limit_wait_seconds_count") >= n - burst - 1
    assert d.metric('hookbridge_deliveries_total{outcome="failed"}') == 0
    assert d.metric("hookbridge_endpoint_busy_total") == 0


def test_a_delivery_that_cannot_wait_goes_to_the_first_tier_unattempted(db_url, procs, workdir):
    """1 a second and a queue wait of 2 s: of 10 events at once, the first few
    go, the rest are handed to the first delay tier as not made (attempts 0),
    the log saying "rate limited: ..."; none is lost or failed."""
    broker = Broker(procs, workdir, retry_schedule="1h")
    limited = receiver(procs, workdir, "limited")
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_RETRY_SCHEDULE": "1h",
        "HOOKBRIDGE_MAX_QUEUE_WAIT": "2s",
    })
    d.wait_ready()
    sub = register_verified(db_url, limited.url, ["user.session.start"],
                            {"rate_limit": {"per_second": 1, "burst": 1}})
    produce(broker.bootstrap, users(10))
    rows = wait_until(lambda: (rs := statuses(db_url, sub)) and len(rs) == 10 and rs, 20 * SLOW,
                      "all 10 deliveries in the log")
    sent = [r for r in rows if r[0] == "delivered"]
    parked = [r for r in rows if r[0] == "retry"]
    assert len(sent) + len(parked) == 10, rows
    assert 1 <= len(sent) <= 4, rows
    assert all(r[1] == 0 and r[2].startswith("rate limited: ") for r in parked), parked
    assert len(limited.posts()) == len(sent)
    assert d.metric('hookbridge_deliveries_total{outcome="failed"}') == 0
    assert d.metric("hookbridge_endpoint_busy_total") == 0


def held_then_deactivated(db_url, procs, workdir):
    """Four events for a subscription limited to one every 4 s: the first is
    sent, three wait for their turn; then the subscription is deactivated.
    Returns (receiver, subscription id)."""
    broker = Broker(procs, workdir, retry_schedule="1h")
    limited = receiver(procs, workdir, "limited")
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_RETRY_SCHEDULE": "1h",
        "HOOKBRIDGE_MAX_QUEUE_WAIT": "60s",
    })
    d.wait_ready()
    sub = register_verified(db_url, limited.url, ["user.session.start"],
                            {"rate_limit": {"per_second": 0.25, "burst": 1}})
    produce(broker.bootstrap, users(4))
    # All four are held (or sent) before the deactivation: an event consumed
    # after it is skipped, not held (no delivery, no row), and the events of
    # partitions led by different brokers come in up to a fetch wait apart.
    # The dispatcher applies a subscription change only between its polls, so
    # four consumed means four matched against the active subscription.
    wait_until(lambda: d.metric("hookbridge_messages_consumed_total") >= 4, 20 * SLOW,
               "the four events consumed")
    wait_until(lambda: len(limited.posts()) >= 1, 20 * SLOW, "the first delivery")
    sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
    return limited, sub


def test_deliveries_held_by_the_limit_follow_a_deactivation(db_url, procs, workdir):
    """A delivery waiting for its turn is sent as the subscription is when
    the turn comes: deactivated meanwhile, the waiting ones are dropped (the
    log says why), not sent to an endpoint that was switched off."""
    limited, sub = held_then_deactivated(db_url, procs, workdir)
    rows = wait_until(lambda: (rs := statuses(db_url, sub)) and len(rs) == 4 and
                      sum(1 for r in rs if r[0] == "dropped") == 3 and rs, 30 * SLOW,
                      "the three waiting deliveries dropped")
    assert all(r[2] == "subscription inactive" for r in rows if r[0] == "dropped")
    assert len(limited.posts()) == 1


def test_a_deactivation_drops_the_held_deliveries_even_if_activated_again(db_url, procs, workdir):
    """Deactivating drops what waits for the limit, as it drops pending
    retries: activating again before their turn does not bring them back."""
    limited, sub = held_then_deactivated(db_url, procs, workdir)
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    rows = wait_until(lambda: (rs := statuses(db_url, sub)) and len(rs) == 4 and
                      all(r[0] in ("delivered", "dropped") for r in rs) and rs, 30 * SLOW,
                      "the four deliveries settled")
    assert sorted(r[0] for r in rows) == ["delivered", "dropped", "dropped", "dropped"], rows
    assert all(r[2] == "subscription was deactivated after this delivery began"
               for r in rows if r[0] == "dropped")
    assert len(limited.posts()) == 1


# ------------------------------------------------------------ two replicas

def test_two_dispatchers_share_one_budget(db_url, procs, workdir):
    n, rate, burst = 60, 10, 5
    broker = Broker(procs, workdir, retry_schedule="1h")
    limited = receiver(procs, workdir, "limited")
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": "1h", "HOOKBRIDGE_MAX_QUEUE_WAIT": "30s"}
    d1 = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env, name="dispatcher1")
    d1.wait_ready()
    sub = register_verified(db_url, limited.url, ["user.session.start"],
                            {"rate_limit": {"per_second": rate, "burst": burst}})
    d2 = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env, name="dispatcher2")
    d2.wait_ready(60)
    # The group settles: both replicas consume (events no one subscribed to).
    warm = [event("user.lifecycle.create", user=f"00w{i:010d}") for i in range(40)]
    produce(broker.bootstrap, warm)

    def consumed(d):
        return d.metric("hookbridge_messages_consumed_total")
    wait_until(lambda: consumed(d1) > 0 and consumed(d2) > 0
               and consumed(d1) + consumed(d2) >= len(warm), 60 * SLOW,
               "both dispatchers to consume")
    events = users(n)
    produce(broker.bootstrap, events)
    want = {e["uuid"] for e in events}
    wait_until(lambda: want <= {e["uuid"] for _, e in limited.events()}, 60 * SLOW,
               "every event at the limited endpoint")
    got = arrivals(limited)
    span, busiest = got[-1] - got[0], busiest_second(got)
    bound = burst + rate * (1 + LEASE_S)
    sent = [d.metric('hookbridge_deliveries_total{outcome="delivered"}') for d in (d1, d2)]
    print(f"two dispatchers (sent {sent}): {len(got)} requests over {span:.2f} s "
          f"(ideal {(n - burst) / rate:.2f} s), busiest second {busiest} "
          f"(limit {rate + burst}, bound {bound})")
    assert all(s > 0 for s in sent), f"both replicas must have sent: {sent}"
    assert len(got) == n
    assert busiest <= bound
    assert span >= (n - burst) / rate - LEASE_S
    rows = wait_until(lambda: (rs := statuses(db_url, sub)) and len(rs) == n
                      and all(r[0] == "delivered" for r in rs) and rs, 10 * SLOW,
                      "every delivery logged delivered")
    assert all(r[1] == 1 for r in rows)


# ----------------------------------------------------------------- retrier

def retrying(db_url, procs, workdir, schedule, queue_wait, fail_first):
    """A broker with the delay tiers of `schedule`, a receiver failing each
    delivery's first `fail_first` attempts, and a dispatcher and a retrier
    with that schedule (no jitter), HOOKBRIDGE_MAX_QUEUE_WAIT `queue_wait`
    and no circuit breaker, both ready."""
    broker = Broker(procs, workdir, retry_schedule=schedule)
    rcv = receiver(procs, workdir, "flaky", fail_first=fail_first)
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0",
           "HOOKBRIDGE_MAX_QUEUE_WAIT": queue_wait, "HOOKBRIDGE_CIRCUIT_FAILURES": "0"}
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    r.wait_ready()
    return broker, rcv, d, r


def test_the_retrier_holds_retries_to_the_limit_and_counts_no_attempt(db_url, procs, workdir):
    """Eight first attempts fail at once (the limit is generous then); the
    limit is lowered to 2 a second (update(), applied live) before their
    retries come due together: the retrier holds them and sends them at the
    limit, each delivered on attempt 2, none failed."""
    n = 8
    broker, rcv, d, r = retrying(db_url, procs, workdir, "4s", "15s", fail_first=1)
    sub = register_verified(db_url, rcv.url, ["user.session.start"],
                            {"rate_limit": {"per_second": 100, "burst": 20}})
    produce(broker.bootstrap, users(n))
    wait_until(lambda: len(rcv.posts()) >= n, 15 * SLOW, "every first attempt (503)")
    sql(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", sub,
        json.dumps({"rate_limit": {"per_second": 2, "burst": 1}}))
    rows = wait_until(lambda: (rs := statuses(db_url, sub)) and len(rs) == n
                      and all(x[0] == "delivered" for x in rs) and rs, 40 * SLOW,
                      "every delivery delivered by the retrier")
    assert all(x[1] == 2 for x in rows), rows  # held, not failed: no attempt wasted
    retries = arrivals(rcv)
    span = retries[-1] - retries[0]
    print(f"retries: {len(retries)} over {span:.2f} s, busiest second "
          f"{busiest_second(retries)}")
    assert len(retries) == n
    assert busiest_second(retries) <= 2 + 1
    assert span >= (n - 1) / 2 - LEASE_S
    assert r.metric("hookbridge_rate_limited_total") >= n - 2
    assert r.metric('hookbridge_deliveries_total{outcome="failed"}') == 0


def test_a_retry_the_limit_holds_back_is_due_again_in_the_first_tier_not_its_own(
        db_url, procs, workdir):
    """A retry whose turn under the limit would come later than
    HOOKBRIDGE_MAX_QUEUE_WAIT is not made: it goes to the first delay tier
    keeping its attempt number, so once the limit allows it is delivered
    within the first tier's delay, not after its own tier's (here 10 s; by
    default up to 10 hours) once more. On the code before, it went back to
    the 10 s tier."""
    broker, rcv, d, r = retrying(db_url, procs, workdir, "1s,10s", "2s", fail_first=2)
    sub = register_verified(db_url, rcv.url, ["user.session.start"])
    produce(broker.bootstrap, users(1))
    # attempt 1 (dispatcher) and attempt 2 (retrier, 1 s later) fail: the
    # next one is due in the 10 s tier
    wait_until(lambda: len(rcv.posts()) >= 2, 15 * SLOW, "the two failing attempts")
    # one token per 100 s, drawn at once from the shared bucket (as another
    # replica would): when attempt 3 comes due, its turn is far beyond the
    # 2 s a delivery may wait
    sql(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", sub,
        json.dumps({"rate_limit": {"per_second": 0.01, "burst": 1}}))
    sql(db_url, "SELECT granted FROM hookbridge.take_rate_tokens(%s, 1)", sub)
    wait_until(lambda: r.metric("hookbridge_rate_limited_total") >= 1, 20 * SLOW,
               "attempt 3 held back by the limit")
    held = time.monotonic()
    sql(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", sub,
        json.dumps({"rate_limit": {"per_second": 100, "burst": 20}}))
    rows = wait_until(lambda: (rs := statuses(db_url, sub)) and rs[0][0] == "delivered" and rs,
                      30 * SLOW, "the held retry delivered")
    waited = time.monotonic() - held
    print(f"delivered {waited:.1f} s after it was held back: {rows}")
    assert rows[0][1] == 3, rows  # the hold cost no attempt
    # Where the retrier put it, not how long it took (a wall-clock bound
    # under 10 s was a guess a loaded CI breaks): the 10 s tier had attempt
    # 3 once, from attempt 2's failure; the hold put it on the first tier,
    # due after that tier's delay.
    assert r.metric(f'{TIER}{{tier="10s"}}') == 1, "held, it went back to its own 10 s tier"
    assert r.metric(f'{TIER}{{tier="1s"}}') >= 1
    waits = [l["msg"] for l in logged(r) if "attempt 3 not made" in l["msg"]]
    assert waits, "the hold was not logged"
    due = re.fullmatch(r"attempt 3 not made \(.*\): it waits (\d+) ms in (\S+)(, .*)?", waits[0])
    assert due and int(due[1]) <= 1000 and due[2].endswith("1s"), waits
    assert r.metric('hookbridge_deliveries_total{outcome="failed"}') == 0
