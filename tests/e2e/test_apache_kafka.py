"""What only a real broker shows: topics are not created on first use (as in
production), so `hookbridge-migrate topics` provisions them and reports
drift, and a service whose topic is missing stays up but not ready until the
topic exists. Runs on Apache Kafka (the session's broker, hbtest/kafka.py);
the delivery, retry, dead-letter and crash tests marked @pytest.mark.apache
in the other files run there too."""
import os
import subprocess

from hbtest.lifecycle import wait_taken
from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, Retrier, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified

DAY_MS = 86400000


def migrate_topics(space, *args, **env):
    return subprocess.run([str(BIN / "hookbridge-migrate"), "topics", *args],
                          env={**os.environ, **space.env(), **env}, capture_output=True,
                          text=True, timeout=60 * SLOW)


def lines(out, word):
    return [l for l in out.splitlines() if l.startswith(word)]


def test_migrate_topics_creates_every_topic_then_reports_drift(apache_kafka):
    space = apache_kafka.space(create=False)
    # the default schedule's, and its hop tiers (20s, 1m), in order
    tiers = ["5s", "20s", "1m", "5m", "30m", "2h", "5h", "10h"]
    names = [space.events_topic] + [space.retry_prefix + t for t in tiers] + [space.dlq_topic]

    r = migrate_topics(space, "--check")
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines(r.stdout, "MISSING")) == 10
    assert "10 topics missing or drifted" in r.stderr

    r = migrate_topics(space)
    assert r.returncode == 0, r.stdout + r.stderr
    created = lines(r.stdout, "created")
    assert [l.split()[1] for l in created] == names
    assert "delay tier 20s (hops only): 6 partitions, replication factor 1" in created[2]
    assert "delay tier 10h: 6 partitions, replication factor 1, retention 7d" in created[8]
    assert "dead letters: 6 partitions, replication factor 1, retention 30d" in created[9]

    # What Kafka itself says (an independent client): partitions and retention.
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType
    admin = KafkaAdminClient(bootstrap_servers=space.bootstrap.split(","))
    try:
        meta = {t["topic"]: t for t in admin.describe_topics(names)}
        assert all(len(meta[n]["partitions"]) == 6 for n in names)
        res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, space.dlq_topic)])
        cfg = {e[0]: e[1] for e in res[0].resources[0][4]}
        assert cfg["retention.ms"] == str(30 * DAY_MS)
    finally:
        admin.close()

    # Run again: nothing to do, every topic as planned.
    r = migrate_topics(space)
    assert r.returncode == 0 and len(lines(r.stdout, "ok")) == 10, r.stdout + r.stderr

    # Asked for more partitions and a longer retention: drift, named, nothing changed;
    # --check fails, a plain run only reports.
    r = migrate_topics(space, "--check", HOOKBRIDGE_TOPIC_PARTITIONS="12",
                       HOOKBRIDGE_EVENTS_RETENTION="30d")
    assert r.returncode == 2, r.stdout + r.stderr
    drift = lines(r.stdout, "DRIFT")
    assert len(drift) == 10
    assert (f"DRIFT     {space.events_topic}" in drift[0]
            and "6 partitions, fewer than the 12 planned; retention 7d, shorter than the 30d "
                "planned" in drift[0])
    r = migrate_topics(space, HOOKBRIDGE_TOPIC_PARTITIONS="12")
    assert r.returncode == 0 and len(lines(r.stdout, "DRIFT")) == 10
    assert "10 topics drifted from the plan: not changed" in r.stderr

    # A replication factor the cluster cannot give: refused with Kafka's reason.
    other = apache_kafka.space(create=False)
    r = migrate_topics(other, HOOKBRIDGE_TOPIC_REPLICATION_FACTOR="3")
    assert r.returncode == 1
    assert "replication factor of 3 cannot be reached" in r.stderr


def test_services_are_not_ready_until_their_topics_exist(apache_kafka, db_url, procs, workdir):
    """Auto-creation is off: a dispatcher and a retrier started before the
    topics exist stay alive but not ready, naming the missing topic; once
    `hookbridge-migrate topics` has created them both become ready by
    themselves and an event produced then is delivered."""
    space = apache_kafka.space(create=False)
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": "1s", "HOOKBRIDGE_RETRY_JITTER": "0"}
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                        fail_first=1)
    d = Dispatcher(procs, db_url, space.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, space.bootstrap, extra_env=env)

    def not_ready_naming(svc, topic):
        status, body = svc.get("/readyz")
        return status == 503 and f"topic {topic} does not exist" in body
    wait_until(lambda: not_ready_naming(d, space.events_topic), 30,
               "the dispatcher not ready, naming the events topic")
    # the schedule's tier or a hop tier (20s, 1m by default)
    wait_until(lambda: any(not_ready_naming(r, space.retry_prefix + t) for t in ("1s", "20s", "1m")),
               30, "the retrier not ready, naming a delay tier")
    assert d.proc.alive() and r.proc.alive()
    assert d.get("/healthz")[0] == 200

    out = space.create_topics("1s")
    assert len(lines(out.stdout, "created")) == 5, out.stdout  # events, 1s, 20s, 1m, dlq
    d.wait_ready(60)
    r.wait_ready(60)

    # Delivered through the delay tier: the first attempt fails, the retry succeeds.
    # produced once the dispatcher has the subscription active: the services
    # apply a change within about a second (docs/design.md), and an event
    # produced the moment activate() committed was taken before it twice
    # under load (sessions 28 and 29: consumed, committed, lag 0, no POST,
    # the dispatcher's "active" line 30 ms after the retrier's)
    wait_taken(d, [register_verified(db_url, receiver.url, ["user.session.start"])])
    produce(space.bootstrap, [event("user.session.start")])
    try:
        wait_until(lambda: len(receiver.events()) == 1, 30, "the event, after one retry")
    except AssertionError as e:
        # whether the event was fetched (lag 0) or not (lag 1) tells a stuck
        # partition (review 80) from a message taken without the subscription
        seen = [line for line in d.get("/metrics")[1].splitlines()
                if line.startswith(("hookbridge_consumer_lag", "hookbridge_messages_consumed"))]
        raise AssertionError(f"{e}; the dispatcher's figures:\n" + "\n".join(seen)) from None
    assert [p["status"] for p in receiver.posts()] == [503, 204]


def test_a_dispatcher_restarted_with_its_instance_id_resumes_at_once(apache_kafka, db_url, procs,
                                                                      workdir):
    """Static membership: kill -9 and an immediate restart with the same
    HOOKBRIDGE_INSTANCE_ID (a pod's container restarted in place) resumes
    deliveries in seconds, not after the 30 s session timeout a new member
    would wait for the dead one's session to expire."""
    import time
    space = apache_kafka.space()
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    env = {"HOOKBRIDGE_INSTANCE_ID": "dispatcher-0",
           "HOOKBRIDGE_KAFKA_SESSION_TIMEOUT_MS": "30000"}
    d = Dispatcher(procs, db_url, space.bootstrap, extra_env=env)
    d.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"])
    produce(space.bootstrap, [event("user.session.start", user=f"00u{i}") for i in range(12)])
    wait_until(lambda: len(receiver.events()) >= 12, 30, "the first events")

    d.proc.kill()  # SIGKILL: no LeaveGroup, the member's session stays open
    t_kill = time.monotonic()
    d.restart()
    after = [event("user.session.start", user=f"00u{i}") for i in range(12)]
    produce(space.bootstrap, after)
    want = {e["uuid"] for e in after}
    wait_until(lambda: want <= {e["uuid"] for _, e in receiver.events()}, 30,
               "the events produced after the restart")
    resumed = time.monotonic() - t_kill
    assert resumed < 15 * SLOW, f"resumed after {resumed:.1f}s: the restart waited for the session"
    print(f"kill -9 to every event after the restart delivered: {resumed:.2f}s")


def test_on_three_nodes_topics_are_replicated_and_delivery_survives_a_node(
        apache_kafka_cluster, db_url, procs, workdir):
    """Three nodes: `hookbridge-migrate topics` gives every topic replication
    factor 3 and min.insync.replicas=2; with one node killed, events produced
    then (acks=all: two copies) are still delivered."""
    kafka = apache_kafka_cluster
    space = kafka.space()
    out = space.create_topics("1s")
    assert out and "replication factor 3" in out.stdout, out and out.stdout
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType
    admin = KafkaAdminClient(bootstrap_servers=space.bootstrap.split(","))
    try:
        res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, space.events_topic)])
        cfg = {e[0]: e[1] for e in res[0].resources[0][4]}
        assert cfg["min.insync.replicas"] == "2"
    finally:
        admin.close()

    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, space.bootstrap, extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1s"})
    d.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"])
    kafka.kill_node(3)
    try:
        evs = [event("user.session.start", user=f"00u{i}") for i in range(12)]
        produce(space.bootstrap, evs)
        want = {e["uuid"] for e in evs}
        wait_until(lambda: want <= {e["uuid"] for _, e in receiver.events()}, 60,
                   "every event with one node of three down")
    finally:
        kafka.start_node(3)
        kafka.wait_node(3)
