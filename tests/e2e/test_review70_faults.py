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
import subprocess
import os

from hbtest.clockshim import env as clock_env
from hbtest.kafka import ApacheKafka, alter_topic_configs, topic_configs
from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, Retrier, produce
from test_delivery import event
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
    25 s (an Apache Kafka node of its own)."""
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
        k.stop()
