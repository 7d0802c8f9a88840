"""Review 70: clocks that disagree and clocks that jump, as Kubernetes has
them: the dispatcher, the retrier, the brokers and PostgreSQL on different
nodes whose clocks differ by seconds to minutes, and NTP stepping a node's
clock while a service runs. Review 53 put the services on PostgreSQL's clock
(docs/operations.md, Clocks); what was left was a clock hookbridge read
without choosing it: the broker's, on a delay tier whose
message.timestamp.type is LogAppendTime (a cluster's default that some
platforms set), and the pins on the promises a step must not break.

Clocks are moved with hbtest/clockshim.py (an LD_PRELOAD shim: CLOCK_REALTIME,
gettimeofday and time offset, the monotonic clocks left alone, as NTP leaves
them), for one process at a time; PostgreSQL and the receiver keep the real
time. Each check says what it did on main's binaries (4981d51)."""
import json
import os
import subprocess
import time

from hbtest.clockshim import SteppedClock, env as clock_env
from hbtest.kafka import ApacheKafka, alter_topic_configs, topic_configs
from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier, produce
from test_delivery import AUTH_VALUE, SECRET, event, sql
from test_promises import verified_active


def test_a_broker_stamping_retries_90_s_behind_neither_floods_the_tier_nor_sends_early(
        db_url, procs, workdir):
    """docs/operations.md, Clocks. A Kafka cluster whose default is
    log.message.timestamp.type=LogAppendTime, on nodes whose clock is 90 s
    behind PostgreSQL's. The retrier judged which retries hold their
    partition by the message's timestamp, which there is the broker's clock:
    a retry due in 4 s looked written 94 s ago, so it hopped onto its tier
    again, and its copy (stamped by the broker again) hopped again, until it
    was due. Now `hookbridge-migrate topics` creates the delay tiers with
    message.timestamp.type=CreateTime (hookbridge's own stamp, on
    PostgreSQL's clock), `topics --check` names a tier left on
    LogAppendTime, and on such a tier the retrier lets each retry wait for
    its due time (no hop): one retry, 4 s after the first attempt.

    Checked to fail on main's binaries (4981d51): the tier is created
    LogAppendTime, --check says `ok` for it; with only the new
    hookbridge-migrate, the one retry hopped 550 to 600 times in its 4 s
    (hookbridge_retry_hops_total; as many copies on the tier, 150 a second,
    for every waiting retry: a flood for the last 90 s of each wait). About
    12 s (an Apache Kafka node of its own)."""
    schedule = "4s"
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0"}
    k = ApacheKafka(nodes=1, node_env=clock_env(-90),
                    properties={"log.message.timestamp.type": "LogAppendTime"})
    try:
        space = k.space(retry_schedule=schedule)
        tier = space.retry_prefix + "4s"
        have = topic_configs(k.bootstrap, tier)
        assert have["message.timestamp.type"] == "CreateTime", \
            f"{tier} created with the broker's {have['message.timestamp.type']}"
        assert topic_configs(k.bootstrap, space.events_topic)["message.timestamp.type"] \
            == "LogAppendTime", "the broker's default (the events topic's timestamps are not read)"

        # A tier made before (or by hand) with the broker's stamps
        alter_topic_configs(k.bootstrap, {tier: {"retention.ms": have["retention.ms"],
                                                 "message.timestamp.type": "LogAppendTime"}})
        check = subprocess.run([str(BIN / "hookbridge-migrate"), "topics", "--check"],
                               env=dict(os.environ, **space.env(schedule)),
                               capture_output=True, text=True, timeout=60 * SLOW)
        line = next((l for l in check.stdout.splitlines() if tier in l), "")
        print(line)
        assert check.returncode == 2, check.stdout + check.stderr
        assert line.startswith("DRIFT") and "message.timestamp.type LogAppendTime" in line, \
            check.stdout

        rcv = Receiver(procs, workdir, fail_first=1)
        verified_active(db_url, rcv.url)
        d = Dispatcher(procs, db_url, space.bootstrap, extra_env=env)
        r = Retrier(procs, db_url, space.bootstrap, extra_env=env)
        d.wait_ready()
        r.wait_ready()
        produce(space.bootstrap, [event("user.session.start")])
        wait_until(lambda: len(rcv.posts()) >= 2, 20 * SLOW, "the first attempt and its retry")
        first, retry = rcv.posts()[:2]
        gap = (retry["time_ms"] - first["time_ms"]) / 1000
        hops = r.metric("hookbridge_retry_hops_total")
        print(f"the retry came {gap:.2f} s after the first attempt, after {hops:.0f} hops")
        assert retry["headers"]["webhook-id"] == first["headers"]["webhook-id"]
        assert hops == 0, f"the retry hopped {hops:.0f} times onto its tier"
        assert 4 - 0.05 <= gap < 4 + 2 * SLOW, f"retried {gap:.2f} s after the first attempt"
    finally:
        procs.stop_all()  # while their broker is there: a stop without it waits
        k.stop()


def active(db_url, url, options=None, types=("user.session.start",)):
    """A subscription made verified and active by SQL alone, with options."""
    opts = {"auth_header": "Authorization", "auth_value": AUTH_VALUE, "secret": SECRET}
    opts.update(options or {})
    sub = sql(db_url, "SELECT hookbridge.register('review70', %s, %s, %s::jsonb)", url,
              list(types), json.dumps(opts))[0][0]
    sql(db_url, "SELECT hookbridge.record_verification(%s, true)", sub)
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    return sub


def health_while(svc, until, timeout):
    """Polls svc's /healthz every 0.2 s until until() holds: the statuses."""
    seen, end = [], time.monotonic() + timeout
    while not until():
        assert time.monotonic() < end, f"not done in {timeout} s"
        seen.append(svc.get("/healthz")[0])
        time.sleep(0.2)
    return seen


def timestamp_off(post):
    """webhook-timestamp minus when the receiver (real time) took the POST, s."""
    return int(post["headers"]["webhook-timestamp"]) - post["time_ms"] / 1000


def test_a_dispatcher_whose_clock_ntp_steps_10_minutes_back_and_forth_keeps_its_windows_and_pace(
        db_url, procs, workdir, tmp_path):
    """A pin (docs/operations.md, Clocks): the dispatcher holds a batch
    (batch_window_ms 3000) and a rate-limited backlog (2 a second) when NTP
    steps its host's clock back 10 minutes, and 1.5 s later forward again.
    The batch goes when its window closes (3 s after the events), the
    rate-limited deliveries keep their pace (5 in about 2 s), every
    webhook-timestamp is the real time (receivers refuse 5 minutes off),
    /healthz stays 200, no attempt lasts less than nothing, and the delivery
    log's times are the real ones.

    Passes on main's binaries (4981d51) as well: the windows, the pace and
    /healthz run on the monotonic clock, the stamps on PostgreSQL's. About
    10 s."""
    clock = SteppedClock(tmp_path / "dispatcher-clock", 0)
    broker = Broker(procs, workdir)
    batched = Receiver(procs, workdir, name="batched")
    paced = Receiver(procs, workdir, name="paced")
    active(db_url, batched.url, {"batch_max": 50, "batch_window_ms": 3000})
    active(db_url, paced.url, {"rate_limit": {"per_second": 2, "burst": 1}})
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=clock.env())
    d.wait_ready()

    t0 = time.time()
    produce(broker.bootstrap, [event("user.session.start") for _ in range(5)])
    wait_until(lambda: paced.posts(), 10 * SLOW, "the first paced delivery")
    clock.step(-600)
    time.sleep(1.5)
    clock.step(600)
    health = health_while(d, lambda: batched.posts() and len(paced.posts()) >= 5, 15 * SLOW)

    batch = batched.posts()
    window = batch[0]["time_ms"] / 1000 - t0
    times = [p["time_ms"] / 1000 for p in paced.posts()]
    offs = [timestamp_off(p) for p in batch + paced.posts()]
    durations = d.metric("hookbridge_attempt_duration_seconds_sum")
    print(f"batch after {window:.2f} s; paced over {times[-1] - times[0]:.2f} s; "
          f"webhook-timestamp off {min(offs):.1f}..{max(offs):.1f} s; healthz {set(health)}; "
          f"attempts took {durations:.3f} s in all")
    assert len(batch) == 1 and len(json.loads(batch[0]["body"])["data"]["events"]) == 5
    assert 3 - 0.05 <= window < 3 + 2 * SLOW, f"the batch went {window:.2f} s after its events"
    assert 1.5 <= times[-1] - times[0] < 4 * SLOW, f"5 deliveries at 2 a second: {times}"
    assert all(-2 <= o <= 1 for o in offs), f"webhook-timestamp off by {offs} s"
    assert set(health) == {200}, health
    assert 0 <= durations < 5
    rows = wait_until(
        lambda: (rs := sql(db_url, "SELECT extract(epoch FROM now() - d.last_attempt_at) "
                           "FROM hookbridge.deliveries d JOIN hookbridge.subscriptions s "
                           "ON s.id = d.subscription_id WHERE s.url IN (%s, %s) "
                           "AND d.status = 'delivered'", batched.url, paced.url))
        and len(rs) == 6 and rs, 10 * SLOW, "the delivery log")
    assert all(0 <= float(age) < 30 for (age,) in rows), rows


def test_a_retrier_90_s_behind_whose_clock_steps_10_minutes_sends_each_retry_on_schedule(
        db_url, procs, workdir, tmp_path):
    """A pin (docs/operations.md, Clocks): the dispatcher's host is 90 s
    ahead of PostgreSQL's, the retrier's 90 s behind (it says so, and
    hookbridge_clock_skew_seconds is -90). The endpoint fails twice; the
    schedule is 3s,3s. While the retrier holds the first retry its clock is
    stepped 10 minutes forward, while it holds the second 10 minutes back.
    Each retry comes 3 s after the attempt before it (not at once, not 10
    minutes later), the lateness it reports is about none (under 2 s for both), and its
    /healthz stays 200.

    Passes on main's binaries (4981d51) as well: a retry's due time is
    PostgreSQL's clock advanced by the monotonic one. About 10 s."""
    schedule = "3s,3s"
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0"}
    clock = SteppedClock(tmp_path / "retrier-clock", 0)
    broker = Broker(procs, workdir, retry_schedule=schedule)
    rcv = Receiver(procs, workdir, fail_first=2)
    active(db_url, rcv.url)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=dict(env, **clock_env(90)))
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=dict(env, **clock.env(-90)))
    d.wait_ready()
    r.wait_ready()

    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: rcv.posts(), 10 * SLOW, "the first attempt")
    wait_until(lambda: r.proc.output().count("it waits at") >= 1, 5 * SLOW, "the first retry held")
    clock.step(600)
    wait_until(lambda: len(rcv.posts()) >= 2, 10 * SLOW, "the first retry")
    wait_until(lambda: r.proc.output().count("it waits at") >= 2, 5 * SLOW, "the second held")
    clock.step(-600)
    health = health_while(r, lambda: len(rcv.posts()) >= 3, 12 * SLOW)

    times = [p["time_ms"] / 1000 for p in rcv.posts()[:3]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    late = r.metric("hookbridge_retry_lateness_seconds_sum")
    print(f"retries {gaps[0]:.2f} s and {gaps[1]:.2f} s after the attempt before; lateness "
          f"{late:.3f} s in all; healthz {set(health)}")
    assert len({p["headers"]["webhook-id"] for p in rcv.posts()[:3]}) == 1
    assert all(3 - 0.05 <= g < 3 + 2 * SLOW for g in gaps), f"retried after {gaps} s"
    # a step taken for time passed would report about 600 s; the bound is
    # loose for a loaded machine (both retries together)
    assert 0 <= late < 2 * SLOW, f"retries reported {late:.1f} s late"
    assert set(health) == {200}, health
    assert "this host's clock is 90." in r.proc.output() and "behind PostgreSQL's" \
        in r.proc.output(), r.proc.output()[-3000:]
    assert abs(r.metric("hookbridge_clock_skew_seconds") + 90) < 1
    assert "receivers refuse" not in d.proc.output(), "90 s: no word of the receivers"


def test_a_dispatcher_400_s_ahead_stamps_the_real_time_and_says_what_a_wrong_database_clock_does(
        db_url, procs, workdir):
    """docs/operations.md, Clocks: a dispatcher's host 400 s ahead of
    PostgreSQL's. Its webhook-timestamp is PostgreSQL's time (here the real
    one: within a second of the receiver's clock). Which of the two clocks
    is wrong it cannot tell: if it is PostgreSQL's, every webhook-timestamp
    is 400 s off and Standard Webhooks receivers refuse every delivery (a
    4xx: failed). Its warning now says so from 5 minutes on.

    Checked to fail on main's binaries (4981d51): the warning only says to
    check NTP on this host (every host of a deployment whose database's
    clock is off says that, while the receivers refuse everything). The
    stamp was right there too. About 4 s."""
    rcv = Receiver(procs, workdir)
    active(db_url, rcv.url)
    broker = Broker(procs, workdir)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=clock_env(400))
    d.wait_ready()
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: rcv.posts(), 10 * SLOW, "the delivery")
    off = timestamp_off(rcv.posts()[0])
    warning = next((l for l in d.proc.output().splitlines() if "this host's clock is" in l), "")
    print(f"webhook-timestamp off by {off:.1f} s; {warning}")
    assert -2 <= off <= 1, f"webhook-timestamp {off:.1f} s off the receiver's clock"
    assert "this host's clock is 400." in warning and "ahead of PostgreSQL's" in warning
    assert "if this host's clock is right, PostgreSQL's is off, and so is every " \
        "webhook-timestamp: receivers refuse one more than 5 minutes off" in warning, warning
