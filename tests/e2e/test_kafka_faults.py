"""Broker faults on three Apache Kafka nodes (replication factor 3,
min.insync.replicas=2): a node killed mid-stream and restarted, the whole
cluster restarted, a delay tier's partition leader moved while retries wait.
Nothing may be lost, our idempotent producers (hookbridge-producer to the
events topic, the dispatcher to the delay tier) must not write any message
twice, and retries must not fire early. The scenarios are in
hbtest/kfaults.py; tests/chaos/kafka_faults.py prints their figures."""
import re

import pytest

from hbtest import kfaults
from hbtest.procs import SLOW, wait_until


@pytest.fixture
def cluster(apache_kafka_cluster):
    """The session's three nodes; any node a failed test left down or
    stopping is started again, for the tests after it (CI 111: one left
    stopping, without a quorum, failed the next test too)."""
    yield apache_kafka_cluster
    apache_kafka_cluster.restore()


def check_no_loss_no_duplicate(f):
    assert f["lost"] == 0, f
    assert f["missing_topic"] == 0, f
    # Our producers are idempotent: every batch has a producer id (-1 would
    # mean idempotence is off), and a retried produce after a leader change
    # is not written twice.
    assert -1 not in f["pids_events"] and -1 not in f["pids_tier"], f
    assert f["dups_topic"] == 0, f"events written twice on the events topic: {f}"
    # Every message on the delay tier was written once on purpose: a retry
    # handed to it (a failed first attempt; or, on a loaded machine, one not
    # made because the endpoint was busy, due at its paced turn) or a hop of
    # the retrier (such a retry due later than the tier's span, produced
    # again unchanged: the only identical copies).
    assert f["tier_msgs"] == f["tier_handed"] + f["hops"], \
        f"retries written twice on the delay tier: {f}"
    assert f["dups_tier_identical"] == f["hops"], \
        f"identical retries on the delay tier that are not hops: {f}"
    assert f["retried"] == f["produced"], f"one retry per delivery: {f}"
    assert f["early"] == 0, f"retries attempted before they were due: {f}"
    # At least once: a broker fault may make a service deliver an event again
    # (its offset commit lost), but always under the same webhook-id.
    assert f["dups_new_id"] == 0, f"a redelivery under another webhook-id: {f}"


def test_a_node_killed_mid_stream_loses_and_duplicates_nothing(cluster, db_url,
                                                               procs, workdir):
    f = kfaults.broker_killed_mid_stream(cluster, db_url, procs, workdir)
    print(f)
    check_no_loss_no_duplicate(f)
    assert f["produced"] >= 150, f


def test_the_whole_cluster_restarted_services_recover_and_retries_fire(
        cluster, db_url, procs, workdir):
    f = kfaults.cluster_restarted(cluster, db_url, procs, workdir)
    print(f)
    assert f["alive"], "a service exited while the cluster was down"
    check_no_loss_no_duplicate(f)
    # Nothing was in flight when the cluster stopped (the dispatcher had
    # committed, the retrier held its retries until due): no redelivery.
    assert f["dups_receiver"] == 0, f


def test_a_delay_tier_leader_moved_while_retries_wait(cluster, db_url, procs, workdir):
    # The premise: the leader moves while the retries wait. Between the last
    # first attempt and the kill the sanitizer build takes some seconds, and
    # the election about 6 s (the brokers' session timeout): a 10 s tier was not
    # always long enough for both under the sanitizers (an election of
    # 6.0 s ended after the retries were due); 20 s there.
    f = kfaults.tier_leader_moved(cluster, db_url, procs, workdir,
                                  delay=f"{10 * min(SLOW, 2):.0f}s")
    print(f)
    assert f["moved_before_due"], f"the leader moved only after the retries were due: {f}"
    assert f["new_leader"] != f["old_leader"]
    check_no_loss_no_duplicate(f)
    # Late by the failover at most: a new leader, and the group's session
    # timeout (6 s) when the killed node was also the group's coordinator.
    assert f["late_s"] < 12 * SLOW, f"retries came long after they were due: {f}"


def test_retries_wait_through_the_retriers_partitions_taken_and_given_back(cluster, db_url, procs,
                                                                          workdir):
    """The retrier's session expires while retries wait on a delay tier (the
    process frozen past the session timeout: the group takes its partitions,
    and gives them back when it rejoins, as after a coordinator's failover):
    the retries are still delivered, when due. librdkafka keeps a partition's
    pause across a revocation; the retrier had paused the partition until its
    first retry was due, then forgot that deferral with the revocation, so
    the partition stayed paused and the retries waited forever."""
    import signal
    from kafka import KafkaAdminClient
    s = kfaults.Stack(cluster, db_url, procs, workdir, "8s")
    evs = [kfaults.event() for _ in range(5)]
    kfaults.produce_lines(s.space, evs)
    wait_until(lambda: len([p for p in s.receiver.posts() if p["status"] == 503]) == 5, 30,
               "every first attempt (503)")
    wait_until(lambda: re.search(r"^hookbridge_partition_pauses_total [1-9]", s.r.get("/metrics")[1],
                                 re.M), 30,
               "the retrier to hold the tier's partition until the first retry is due")
    group = s.r.env["HOOKBRIDGE_CONSUMER_GROUP"]
    admin = KafkaAdminClient(bootstrap_servers=s.space.bootstrap.split(","))
    s.r.proc.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: admin.describe_consumer_groups([group])[0].state == "Empty", 30,
                   "the group to drop the frozen retrier")
    finally:
        s.r.proc.signal(signal.SIGCONT)
        admin.close()
    # its 8s tier and the default hop tiers (20s, 1m), 6 partitions each
    wait_until(lambda: s.r.proc.output().count("assigned 18 partition(s)") == 2, 30,
               "the retrier to get its partitions back")
    s.wait_all({e["uuid"]: 0 for e in evs}, 30)
    early, _ = s.retry_timing(8000)
    assert early == 0
