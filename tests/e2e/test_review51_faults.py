"""Review 51: hop tiers (HOOKBRIDGE_RETRY_HOP_TIERS) met as an operator meets
them. Real parts: Apache Kafka (no topic is created on first use, as in
production), `hookbridge-migrate topics`, PostgreSQL, the dispatcher and the
retrier."""
import json
import time

from hbtest.procs import wait_until
from hbtest.stack import Broker, Dispatcher, Retrier, produce
from test_apache_kafka import lines, migrate_topics
from test_delivery import AUTH_VALUE, SECRET, event, sql
from test_promises import checking


def test_an_empty_hop_tiers_setting_keeps_the_tiers_you_have(apache_kafka, db_url, procs):
    """docs/operations.md: upgrading to a release with hop tiers, "set
    HOOKBRIDGE_RETRY_HOP_TIERS= (empty) to keep the tiers you have". The
    topics are an earlier release's (schedule 1s: events, 1s, dead letters).
    With the setting empty, `migrate topics --check` finds nothing missing
    and the dispatcher and the retrier become ready.

    Checked to fail on main's binaries (3b2f7f9): an empty variable was
    taken for unset, so the default 20s,1m applied: --check exited 2 with
    hookbridge.retry.20s and .1m MISSING, and the services stayed not ready
    ("topic ...20s does not exist") until someone created topics nobody
    asked for."""
    space = apache_kafka.space(create=False)
    # what a release without hop tiers created (a hop tier equal to the step adds none)
    r = migrate_topics(space, HOOKBRIDGE_RETRY_SCHEDULE="1s", HOOKBRIDGE_RETRY_HOP_TIERS="1s")
    assert r.returncode == 0 and len(lines(r.stdout, "created")) == 3, r.stdout + r.stderr

    env = {"HOOKBRIDGE_RETRY_SCHEDULE": "1s", "HOOKBRIDGE_RETRY_HOP_TIERS": ""}
    r = migrate_topics(space, "--check", **env)
    assert r.returncode == 0 and not lines(r.stdout, "MISSING"), r.stdout + r.stderr

    d = Dispatcher(procs, db_url, space.bootstrap, extra_env=env)
    rt = Retrier(procs, db_url, space.bootstrap, extra_env=env)
    d.wait_ready(30)
    wait_until(lambda: rt.get("/readyz")[0] == 200 or None, 30,
               "the retrier ready on the tiers it has: " + rt.get("/readyz")[1])


def active(db_url, url, etype):
    """A subscription to etype made verified and active by SQL alone."""
    opts = {"auth_header": "Authorization", "auth_value": AUTH_VALUE, "secret": SECRET}
    sub = sql(db_url, "SELECT hookbridge.register('r51', %s, %s, %s::jsonb)", url, [etype],
              json.dumps(opts))[0][0]
    sql(db_url, "SELECT hookbridge.record_verification(%s, true)", sub)
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)


def test_a_retry_on_a_hop_tier_does_not_wait_for_one_due_later_than_the_tier(db_url, procs,
                                                                             workdir):
    """A hop tier (10s, one partition) takes no retry with jitter: all are due
    exactly (Retry-After, pace, hops). Endpoint A answers Retry-After: 12,
    endpoint B half a second later Retry-After: 10; both wait on the 10s
    tier, A ahead of B. A is due later than the tier's delay, so it must
    hop and let B go on time: B's retry 10 s after its first attempt.

    Checked to fail on main's binaries (3b2f7f9): the tier's span counted
    the 20 % jitter (12.1 s), so A held the partition until due and B came
    11.6 s after its first attempt, 1.6 s late, with
    hookbridge_retry_lateness_seconds_sum 0 (on time, it said). About 15 s."""
    schedule = "1s,60s"
    broker = Broker(procs, workdir, retry_schedule=schedule, topics=["hookbridge.retry.10s:1"])
    a = checking(procs, workdir, name="a", status=503, retry_after=12)
    b = checking(procs, workdir, name="b", status=503, retry_after=10)
    active(db_url, a.url, "user.session.start")
    active(db_url, b.url, "user.session.end")
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_HOP_TIERS": "10s"}
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    r.wait_ready()
    produce(broker.bootstrap, [event("user.session.start", user="00u51abcdef")])
    wait_until(lambda: a.posts() or None, 10, "A's first attempt")
    time.sleep(0.3)
    produce(broker.bootstrap, [event("user.session.end", user="00u51abcdef")])
    pb = wait_until(lambda: len(b.posts()) >= 2 and b.posts(), 30, "B's retry")
    pa = wait_until(lambda: len(a.posts()) >= 2 and a.posts(), 30, "A's retry")
    gap_a = (pa[1]["time_ms"] - pa[0]["time_ms"]) / 1000
    gap_b = (pb[1]["time_ms"] - pb[0]["time_ms"]) / 1000
    hops = r.metric("hookbridge_retry_hops_total")
    print(f"A's retry {gap_a:.2f} s, B's {gap_b:.2f} s after the first attempt; {hops:.0f} hops")
    assert gap_a >= 12 - 0.05 and gap_b >= 10 - 0.05, "attempted before its Retry-After"
    assert gap_b < 10.8, f"B {gap_b - 10:.1f} s late, behind A on the hop tier"
