#!/usr/bin/python3
"""Broker faults on a three-node Apache Kafka cluster, with figures.

    /usr/bin/python3 tests/chaos/kafka_faults.py [--keep] [SCENARIO...]

Starts PostgreSQL and three Apache Kafka nodes (deploy/local/kafka.sh;
replication factor 3, min.insync.replicas=2), then runs the scenarios of
tests/e2e/hbtest/kfaults.py, the ones tests/e2e/test_kafka_faults.py
asserts on, each with its own topics, receiver, dispatcher and retrier:

    kill      kill -9 of the node leading events partition 0 while
              hookbridge-producer writes 40 events/s, restarted after 3 s
              (every first attempt fails: each delivery also goes through
              the 1s delay tier)
    restart   all three nodes stopped (SIGTERM at once) while 10 retries
              wait on the 5s tier, started again on the same data
    leader    the leader of the 10s tier's partition holding 10 waiting
              retries killed, a new leader elected, the old one restarted
    roll      a rolling restart: each node stopped (SIGTERM), started again
              and given 8 s before the next, while hookbridge-producer
              writes 20 events/s whose first attempts fail into the 5s tier

and prints per scenario: produced, delivered, lost, duplicates at the
receiver (extra acknowledged deliveries; "new id": under another
webhook-id), duplicates on the events topic and on the delay tier (our own
idempotent producers: must be 0), retries early (must be 0), the latest a
retry came after it was due, and the time to recover (kill: the longest
silence at the receiver; restart: from the nodes' start to both services
ready; leader: from the kill to a new leader; roll: the longest silence at
the receiver from the first node's stop). Exit status 1 when anything
was lost or written twice by a producer. --keep keeps the processes' logs.

Uses the end-to-end harness (tests/e2e/hbtest) and the binaries in
HOOKBRIDGE_BIN (default bin/). Needs python3-psycopg2 and python3-kafka.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from hbtest import kfaults  # noqa: E402
from hbtest.kafka import ApacheKafka  # noqa: E402
from hbtest.pg import PgCluster  # noqa: E402
from hbtest.procs import ProcessGroup  # noqa: E402

SCENARIOS = {
    "kill": kfaults.broker_killed_mid_stream,
    "restart": kfaults.cluster_restarted,
    "leader": kfaults.tier_leader_moved,
    "roll": kfaults.rolling_restart,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s} (known: {', '.join(SCENARIOS)})")
    workdir = Path(tempfile.mkdtemp(prefix="hb-kfaults-"))
    os.chmod(workdir, 0o755)
    pg = PgCluster().start()
    t0 = time.monotonic()
    kafka = ApacheKafka(nodes=3)
    print(f"Apache Kafka: 3 nodes started in {time.monotonic() - t0:.1f} s", flush=True)
    rows, bad = [], False
    try:
        for name in args.scenarios:
            wd = workdir / name
            wd.mkdir()
            os.chmod(wd, 0o755)
            group = ProcessGroup(wd)
            t = time.monotonic()
            try:
                f = SCENARIOS[name](kafka, pg.url(pg.migrated_database(name)), group, wd)
            except Exception:
                traceback.print_exc()
                print(f"{name}: failed (logs in {wd})", flush=True)
                args.keep, bad = True, True
                continue
            finally:
                group.stop_all()
            f["scenario"], f["took_s"] = name, time.monotonic() - t
            rows.append(f)
            print(f"{name}: {f}", flush=True)
            bad |= bool(f["lost"] or f["dups_topic"] or f["dups_tier"] or f["early"])
    finally:
        kafka.stop()
        pg.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}")
    print()
    print(f"{'scenario':<9} {'produced':>8} {'delivered':>9} {'lost':>4} {'dups rcv':>8} "
          f"{'new id':>6} {'dups topic':>10} {'dups tier':>9} {'early':>5} {'late s':>6} "
          f"{'recover s':>9} {'took s':>6}")
    for f in rows:
        print(f"{f['scenario']:<9} {f['produced']:>8} {f['delivered']:>9} {f['lost']:>4} "
              f"{f['dups_receiver']:>8} {f['dups_new_id']:>6} {f['dups_topic']:>10} "
              f"{f['dups_tier']:>9} {f['early']:>5} {f['late_s']:>6.1f} {f['recover_s']:>9.1f} "
              f"{f['took_s']:>6.0f}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
