"""Hop tiers (HOOKBRIDGE_RETRY_HOP_TIERS): a retry whose Retry-After is
longer than its step waits in the longest tier not longer than its wait and
is produced again (a hop) each time it has waited out that tier's delay.
Between two steps far apart (the default schedule's 5s and 5m) it hopped on
the shorter tier: a `Retry-After: 240` was written about 39 times, each copy
with its body, kept a week on the 5s tier. Hop tiers are tiers that are no
attempt; a hop goes to the longest tier not longer than what is left.

Real parts: the devbroker over TCP, PostgreSQL, the dispatcher, the retrier
and an HTTP receiver answering 503 with Retry-After."""
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Retrier, produce
from test_delivery import event
from test_promises import checking, verified_active


def test_a_long_retry_after_hops_through_the_hop_tiers_not_a_dozen_times_on_the_short_one(
        db_url, procs, workdir):
    """Schedule 1s,60s, hop tier 4s, no jitter; the endpoint answers 503
    with `Retry-After: 14`. The retry must come 14 s after the first attempt
    (not earlier, and not behind the 60s tier), and on the way be written
    again at most 5 times: it waits on the 4s tier (hops at about 4, 8 and
    12 s, the last onto the 1s tier, and one more there). The operator sees
    the 4s tier as a tier, not as a retired one (no "is not a tier of
    HOOKBRIDGE_RETRY_SCHEDULE" warning).

    Checked to fail on main's binaries (637fabe, which know no hop tiers;
    the 4s topic created by the devbroker's --topic): 9 hops on the 1s tier
    (3 now). About 20 s."""
    schedule = "1s,60s"
    broker = Broker(procs, workdir, retry_schedule=schedule,
                    topics=["hookbridge.retry.4s"])
    rcv = checking(procs, workdir, status=503, retry_after=14)
    verified_active(db_url, rcv.url)
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_HOP_TIERS": "4s",
           "HOOKBRIDGE_RETRY_JITTER": "0"}
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    r.wait_ready()

    produce(broker.bootstrap, [event("user.session.start")])
    posts = wait_until(lambda: rcv.posts()[1:] or None, 30 * SLOW,
                       "the retry, due 14 s after the first attempt")
    first, retry = rcv.posts()[0], posts[0]
    gap = (retry["time_ms"] - first["time_ms"]) / 1000
    hops = r.metric("hookbridge_retry_hops_total")
    print(f"the retry came {gap:.2f} s after the first attempt, after {hops:.0f} hops")
    assert retry["headers"]["webhook-id"] == first["headers"]["webhook-id"]
    assert gap >= 14 - 0.05, "attempted before its Retry-After"
    assert gap < 14 + 2 * SLOW, f"{gap - 14:.1f} s late"
    assert 1 <= hops <= 5, f"{hops:.0f} hops for a 14 s wait with a 4s hop tier"
    assert "is not a tier of HOOKBRIDGE_RETRY_SCHEDULE" not in r.proc.output()
