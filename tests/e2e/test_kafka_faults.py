"""Broker faults on three Apache Kafka nodes (replication factor 3,
min.insync.replicas=2): a node killed mid-stream and restarted, the whole
cluster restarted, a delay tier's partition leader moved while retries wait.
Nothing may be lost, our idempotent producers (hookbridge-producer to the
events topic, the dispatcher to the delay tier) must not write any message
twice, and retries must not fire early. The scenarios are in
hbtest/kfaults.py; tests/chaos/kafka_faults.py prints their figures."""
import pytest

from hbtest import kfaults


@pytest.fixture
def cluster(apache_kafka_cluster):
    """The session's three nodes; any node a failed test left down is
    started again, for the tests after it."""
    yield apache_kafka_cluster
    k = apache_kafka_cluster
    down = [i for i in range(1, k.nodes + 1) if k.procs[i].poll() is not None]
    for i in down:
        k.start_node(i)
    for i in down:
        k.wait_node(i)


def check_no_loss_no_duplicate(f):
    assert f["lost"] == 0, f
    assert f["missing_topic"] == 0, f
    # Our producers are idempotent: every batch has a producer id (-1 would
    # mean idempotence is off), and a retried produce after a leader change
    # is not written twice.
    assert -1 not in f["pids_events"] and -1 not in f["pids_tier"], f
    assert f["dups_topic"] == 0, f"events written twice on the events topic: {f}"
    assert f["dups_tier_identical"] == 0 and f["dups_tier"] == 0, \
        f"retries written twice on the delay tier: {f}"
    assert f["tier_msgs"] == f["produced"], f"one retry per delivery: {f}"
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
    f = kfaults.tier_leader_moved(cluster, db_url, procs, workdir)
    print(f)
    assert f["moved_before_due"], f"the leader moved only after the retries were due: {f}"
    assert f["new_leader"] != f["old_leader"]
    check_no_loss_no_duplicate(f)
    assert f["late_s"] < 8, f"retries came long after they were due: {f}"
