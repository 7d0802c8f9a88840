#!/usr/bin/python3
"""Failover of the dispatcher on Apache Kafka: kill -9, with and without an
immediate restart, measured.

    /usr/bin/python3 tests/chaos/failover.py [--nodes 1|3] [--rate N] [SCENARIO...]

Starts PostgreSQL, Apache Kafka (deploy/local/kafka.sh; one node, or three
with replication factor 3) and a receiver, then for each scenario: fresh
topics and consumer group, 1 or 2 dispatchers, events produced at a steady
rate (each keyed to its own user, so they spread over the 6 partitions),
kill -9 of one dispatcher in mid-stream, optionally an immediate restart
with the same settings (the same HOOKBRIDGE_INSTANCE_ID: a pod's container
restarted in place), production goes on for a while, then stops, and the
scenario waits for every event. It prints per scenario:

    resume   the longest time an event produced around the kill waited to be
             delivered: from kill -9 to deliveries resumed on every partition
    silence  the longest time the receiver got nothing, from the kill on
    ready    (restart) from kill -9 to the restarted process's /readyz 200
    lost     events produced but never delivered (must be 0)
    dups     extra deliveries of an event (at least once: a killed process
             had not committed what it delivered last)

Scenarios (default: the first four):
    restart-range      1 dispatcher, killed and restarted: range, dynamic membership
    restart-static     the same with cooperative-sticky and static membership
    survivor-range     2 dispatchers, one killed, not restarted: range, dynamic
    survivor-static    the same with cooperative-sticky and static membership
    rollout-range      2 dispatchers; a third starts (another id), then the first
                       gets SIGTERM, as in a Deployment's rolling update (not a kill:
                       "lost" and "dups" then count a clean hand-over)
    rollout-static     the same with cooperative-sticky and static membership
    restart-coop, rollout-coop   the default without HOOKBRIDGE_INSTANCE_ID:
                       cooperative-sticky, dynamic membership
Session timeout: librdkafka's default (45 s), or --session-timeout-ms.

Uses the end-to-end harness (tests/e2e/hbtest) and the binaries in
HOOKBRIDGE_BIN (default bin/). Needs python3-psycopg2 (Debian's python3).
"""
import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from hbtest.kafka import ApacheKafka  # noqa: E402
from hbtest.kfaults import Feeder  # noqa: E402
from hbtest.pg import PgCluster  # noqa: E402
from hbtest.procs import ProcessGroup, wait_until  # noqa: E402
from hbtest.stack import Dispatcher, Receiver  # noqa: E402
from test_delivery import AUTH_VALUE, SECRET, register_verified  # noqa: E402

SCENARIOS = {
    # name: (dispatchers, action, strategy, static)
    "restart-range": (1, "restart", "range", False),
    "restart-static": (1, "restart", "cooperative-sticky", True),
    "survivor-range": (2, "kill", "range", False),
    "survivor-static": (2, "kill", "cooperative-sticky", True),
    "rollout-range": (2, "replace", "range", False),
    "rollout-static": (2, "replace", "cooperative-sticky", True),
    # today's default without HOOKBRIDGE_INSTANCE_ID: cooperative-sticky, dynamic
    "restart-coop": (1, "restart", "cooperative-sticky", False),
    "rollout-coop": (2, "replace", "cooperative-sticky", False),
}


def run_scenario(name, kafka, pg, workdir, rate, session_ms):
    replicas, action, strategy, static = SCENARIOS[name]
    restart = action == "restart"
    group = ProcessGroup(workdir)
    space = kafka.space()
    db = pg.url(pg.migrated_database("failover"))
    receiver = Receiver(group, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                        name=f"receiver-{name}")
    env = {"HOOKBRIDGE_KAFKA_PARTITION_ASSIGNMENT_STRATEGY": strategy,
           "HOOKBRIDGE_LOG_LEVEL": "info"}
    if session_ms:
        env["HOOKBRIDGE_KAFKA_SESSION_TIMEOUT_MS"] = str(session_ms)
    else:  # the harness sets 6 s for tests; here librdkafka's default
        env["HOOKBRIDGE_KAFKA_SESSION_TIMEOUT_MS"] = "45000"
    ds = []
    for i in range(replicas):
        e = dict(env)
        if static:
            e["HOOKBRIDGE_INSTANCE_ID"] = f"dispatcher-{i}"
        ds.append(Dispatcher(group, db, space.bootstrap, extra_env=e, name=f"{name}-d{i}"))
    try:
        for d in ds:
            d.wait_ready(60)
        register_verified(db, receiver.url, ["user.session.start"])
        feeder = Feeder(space, rate, workdir)
        # Steady state first: deliveries flowing on every partition.
        wait_until(lambda: len(receiver.events()) >= rate * 2, 60, "deliveries to flow")
        time.sleep(1)
        if action == "replace":
            e = dict(env)
            if static:
                e["HOOKBRIDGE_INSTANCE_ID"] = f"dispatcher-{replicas}"
            ds.append(Dispatcher(group, db, space.bootstrap, extra_env=e, name=f"{name}-new"))
            ds[-1].wait_ready(120)
        t_kill = time.time()
        ds[0].proc.p.send_signal(signal.SIGTERM if action == "replace" else signal.SIGKILL)
        ds[0].proc.p.wait()
        ready_s = float("nan")
        if restart:
            ds[0].restart()
            ds[0].wait_ready(120)
            ready_s = time.time() - t_kill
        # Production goes on past the takeover, then stops.
        timeout_s = (session_ms or 45000) / 1000
        time.sleep(min(timeout_s + 10, 60))
        feeder.stop()
        want = set(feeder.produced)

        def all_delivered():
            return want <= {e["uuid"] for _, e in receiver.events()}
        try:
            wait_until(all_delivered, timeout_s + 60, "every event")
        except AssertionError:
            pass
        got = receiver.events()
        first = {}
        for req, e in got:
            first.setdefault(e["uuid"], req["time_ms"] / 1000)
        lost = len(want - set(first))
        dups = len(got) - len(first)
        around = [first[u] - max(p, t_kill) for u, p in feeder.produced.items()
                  if u in first and t_kill - 1 <= p <= t_kill + 1]
        resume = max(around) if around else float("nan")
        before = [first[u] - p for u, p in feeder.produced.items()
                  if u in first and p < t_kill - 2]
        steady = sorted(before)[len(before) // 2] if before else float("nan")
        # The longest silence at the receiver from the kill on.
        times = sorted(t for t in first.values() if t >= t_kill)
        gap = max([b - a for a, b in zip([t_kill] + times, times)] or [float("nan")])
        return {"scenario": name, "resume_s": resume, "gap_s": gap, "ready_s": ready_s,
                "lost": lost, "dups": dups, "events": len(want),
                "steady_latency_ms": steady * 1000}
    finally:
        group.stop_all()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="*", default=list(SCENARIOS)[:4])
    ap.add_argument("--nodes", type=int, default=1, choices=(1, 3))
    ap.add_argument("--rate", type=float, default=100, help="events per second")
    ap.add_argument("--session-timeout-ms", type=int, default=0,
                    help="HOOKBRIDGE_KAFKA_SESSION_TIMEOUT_MS (default: librdkafka's 45000)")
    args = ap.parse_args()
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}")
    workdir = Path(tempfile.mkdtemp(prefix="hb-failover-"))
    os.chmod(workdir, 0o755)
    pg = PgCluster().start()
    t0 = time.monotonic()
    kafka = ApacheKafka(nodes=args.nodes)
    print(f"Apache Kafka: {args.nodes} node(s) started in {time.monotonic() - t0:.1f} s",
          flush=True)
    results = []
    try:
        for s in args.scenarios:
            r = run_scenario(s, kafka, pg, workdir, args.rate, args.session_timeout_ms)
            results.append(r)
            print(f"{r['scenario']:<16} resume {r['resume_s']:6.2f} s  silence "
                  f"{r['gap_s']:6.2f} s  restarted ready {r['ready_s']:5.2f} s  "
                  f"lost {r['lost']}  dups {r['dups']}  ({r['events']} events, steady "
                  f"latency {r['steady_latency_ms']:.0f} ms)", flush=True)
    finally:
        kafka.stop()
        pg.stop()
    sys.exit(1 if any(r["lost"] for r in results) else 0)


if __name__ == "__main__":
    main()
