"""Review 21: the retrier and the delay tiers on Apache Kafka.

All tests share the worker's one Apache Kafka node (the apache_kafka
fixture), each on its own TopicSpace."""
import time

from hbtest.kfaults import committed
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Retrier, produce, topic_records
from test_delivery import event, sql
from test_promises import checking, verified_active


def delete_topics(bootstrap, topics):
    from kafka import KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        admin.delete_topics(topics, timeout_ms=30000)
    finally:
        admin.close()


def readyz(svc):
    try:
        return svc.get("/readyz")
    except OSError as e:
        return (0, str(e))


def test_a_missing_dead_letter_topic_makes_both_services_not_ready_and_holds_the_dead_letter(
        apache_kafka, db_url, procs, workdir):
    """docs/operations.md: "A service started before its topics exist stays
    up, not ready, with `topic X does not exist` on /readyz". The dead-letter
    topic is written, never read, by both services: missing (never created,
    or deleted), they used to be ready, and the retrier held the dead letter
    with nothing said for 30 s (librdkafka's topic.metadata.propagation.max.ms),
    then a warning a second. Now each says at error that the topic does not
    exist and is not ready, naming it; the dead letter waits (the delivery
    log still says retry, the tier's offset is not committed); once the topic
    is created both are ready within seconds and the dead letter is written.

    Checked to fail without the fix: on 9ec6cf5 both services answer /readyz
    200 with the topic missing ("not ready, naming the dead-letter topic"
    times out). About 15 s."""
    schedule = "1s"
    space = apache_kafka.space(retry_schedule=schedule)
    tier = space.retry_prefix + schedule
    delete_topics(space.bootstrap, [space.dlq_topic])
    rcv = checking(procs, workdir, status=503)
    verified_active(db_url, rcv.url)
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0"}
    d = Dispatcher(procs, db_url, space.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, space.bootstrap, extra_env=env)
    want = f"topic {space.dlq_topic} does not exist"
    for svc in (d, r):
        wait_until(lambda: readyz(svc) == (503, want + "\n"), 20,
                   f"the {svc.program} not ready, naming the dead-letter topic")
        assert f'"level":"error","component":"{svc.program}","msg":"{want}: create it' \
            in svc.proc.output()

    # A delivery out of attempts meanwhile: its dead letter waits, and so does
    # the tier's offset.
    produce(space.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(rcv.posts()) == 2, 20, "both attempts")
    time.sleep(1)
    assert sql(db_url, "SELECT status, attempts FROM hookbridge.deliveries") == [("retry", 1)]
    rgroup = space.group("hookbridge-retrier")
    assert committed(space.bootstrap, rgroup, tier) == 0
    assert readyz(r)[0] == 503

    space._schedules.clear()  # hookbridge-migrate topics again: it creates the DLQ
    space.create_topics(schedule)
    d.wait_ready(15)
    r.wait_ready(15)
    wait_until(lambda: sql(db_url, "SELECT status, attempts FROM hookbridge.deliveries")
               == [("failed", 2)], 45, "the delivery dead-lettered")
    wait_until(lambda: committed(space.bootstrap, rgroup, tier) == 1, 20,
               "the tier's offset committed")
    assert len(topic_records(space.bootstrap, space.dlq_topic, want=1)) == 1
    assert len(rcv.posts()) == 2
    assert f"topic {space.dlq_topic} can be written now" in r.proc.output()


def test_topics_check_reports_a_size_limited_tier_and_a_compacted_topic(apache_kafka):
    """docs/operations.md: a delay tier's retention must outlast its delay.
    Time is not the only retention: retention.bytes (a cluster default such
    as log.retention.bytes, or set per topic) deletes a tier's oldest
    messages, retries not yet due, once a partition holds that much; and
    cleanup.policy=compact keeps only the newest message of each key (a
    tier's and the DLQ's key is the subscription id: one retry or dead
    letter per subscription survives). `hookbridge-migrate topics --check`
    read only retention.ms and said `ok`; it now reports both as drift and
    exits 2.

    Checked to fail without the change: on 9ec6cf5 `topics --check` exits 0
    with every topic `ok`. A few seconds."""
    import os
    import subprocess

    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType
    from hbtest.procs import BIN

    schedule = "1s"
    space = apache_kafka.space(retry_schedule=schedule)
    tier = space.retry_prefix + schedule
    admin = KafkaAdminClient(bootstrap_servers=space.bootstrap.split(","))
    try:  # AlterConfigs sets the whole config: the planned retentions with them
        admin.alter_configs([
            ConfigResource(ConfigResourceType.TOPIC, tier,
                           configs={"retention.ms": str(7 * 86400000),
                                    "retention.bytes": "1048576"}),
            ConfigResource(ConfigResourceType.TOPIC, space.dlq_topic,
                           configs={"retention.ms": str(30 * 86400000),
                                    "cleanup.policy": "compact"})])
    finally:
        admin.close()
    r = subprocess.run([str(BIN / "hookbridge-migrate"), "topics", "--check"],
                       env={**os.environ, **space.env(schedule)}, capture_output=True,
                       text=True, timeout=60 * SLOW)
    print(r.stdout, r.stderr)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = {l.split()[1]: l for l in r.stdout.splitlines() if l.strip()}
    assert lines[tier].startswith("DRIFT") and "retention.bytes 1048576: retries are deleted " \
        "before they are due once a partition holds that much" in lines[tier], r.stdout
    assert lines[space.dlq_topic].startswith("DRIFT") and "cleanup.policy compact: only the " \
        "newest message of each key is kept" in lines[space.dlq_topic], r.stdout
    assert lines[space.events_topic].startswith("ok"), r.stdout


def test_a_retry_from_a_clock_ahead_does_not_hold_the_retries_behind_it(
        apache_kafka, db_url, procs, workdir):
    """docs/design.md: "a retry due in seconds never queues behind one due in
    hours". The retrier waits at the head of a tier's partition until it is
    due; a message due later than its tier's span leaves the head (a hop).
    The span was counted from the message's timestamp, which comes from its
    producer's clock, like its due time: a dispatcher whose clock runs 50
    minutes ahead (Kafka 4 takes timestamps up to an hour ahead) wrote a 3 s
    retry that the retrier held the partition for, 50 minutes, and every
    retry of the partition waited behind it. A timestamp in the future now
    counts as the retrier's now: the message hops within the tier's span and
    the retry behind it goes when due; the early one is not attempted.

    Checked to fail without the fix: on 9ec6cf5 the retry behind it is not
    attempted within 15 s ("the retry behind it" times out). About 10 s."""
    import uuid

    from kafka import KafkaProducer

    from hbtest.pyavro import single_object
    from hbtest.avro import SCHEMA_DIR
    import json

    schedule = "3s"
    space = apache_kafka.space(retry_schedule=schedule)
    tier = space.retry_prefix + schedule
    rcv = checking(procs, workdir, fail_first=1)
    sub = verified_active(db_url, rcv.url)
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0"}
    d = Dispatcher(procs, db_url, space.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, space.bootstrap, extra_env=env)
    d.wait_ready()
    r.wait_ready()

    # What a dispatcher 50 minutes ahead writes after a failed first attempt;
    # keyed by the subscription, as every retry of it (one partition).
    ahead_ms = int(time.time() * 1000) + 50 * 60 * 1000
    early = str(uuid.uuid4())
    schema = json.loads((SCHEMA_DIR / "delivery_retry.avsc").read_text())
    rec = {"delivery_id": early, "subscription_id": sub, "event_ids": [str(uuid.uuid4())],
           "event_type": "user.session.start", "content_type": "application/json",
           "body": json.dumps({"early": True}), "attempt": 2,
           "not_before_ms": ahead_ms + 3000, "first_attempt_ms": ahead_ms, "last_status": 503,
           "last_error": "HTTP 503", "schedule_offset": 0, "after_delivery_id": None}
    kp = KafkaProducer(bootstrap_servers=space.bootstrap.split(","))
    try:
        kp.send(tier, key=sub.encode(), value=single_object(schema, rec),
                timestamp_ms=ahead_ms).get(timeout=20)
    finally:
        kp.close()

    # A retry of this clock behind it on the partition.
    produce(space.bootstrap, [event("user.session.start")])
    first = wait_until(lambda: rcv.posts(), 20, "the first attempt")[0]
    wid = first["headers"]["webhook-id"]
    second = wait_until(lambda: [p for p in rcv.posts()[1:]], 15, "the retry behind it")[0]
    assert second["headers"]["webhook-id"] == wid and second["status"] == 204
    late = (second["time_ms"] - first["time_ms"]) / 1000 - 3
    print(f"the retry behind it came {late:.2f} s after it was due")
    assert 0 <= late < 3 * SLOW
    assert early not in {p["headers"]["webhook-id"] for p in rcv.posts()}, \
        "the retry due in 50 minutes was attempted early"
    assert r.metric("hookbridge_retry_hops_total") >= 1


def test_a_dead_letter_topic_the_service_may_not_write_makes_it_not_ready_until_allowed(
        db_url, procs, workdir):
    """The dead-letter topic unwritable by authorization (an ACL denying the
    services' principal Write on it): like a missing topic, both services
    are not ready, naming it and saying what to grant, at error; the dead
    letter waits with its tier's offset; once the ACL is gone both are
    ready within seconds and the dead letter is written. On a broker of its
    own (an authorizer: the shared one has none), started here.

    Checked to fail without the fix: on 9ec6cf5 both services are ready
    while the broker refuses every dead letter ("not ready, naming the
    dead-letter topic" times out). About 25 s, the broker's start included."""
    from kafka import KafkaAdminClient
    from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType,
                             ACLResourcePatternType, ResourcePattern, ResourceType)

    from hbtest.kafka import ApacheKafka

    class AuthorizingKafka(ApacheKafka):
        """One node with Kafka's StandardAuthorizer: everything allowed
        unless an ACL says otherwise."""

        def start_node(self, node):
            props = self.dir / f"node-{node}" / "server.properties"
            text = props.read_text()
            if "authorizer.class.name" not in text:
                props.write_text(text + "authorizer.class.name=org.apache.kafka.metadata."
                                 "authorizer.StandardAuthorizer\n"
                                 "allow.everyone.if.no.acl.found=true\n")
            super().start_node(node)

    kafka = AuthorizingKafka()
    try:
        schedule = "1s"
        space = kafka.space(retry_schedule=schedule)
        tier = space.retry_prefix + schedule
        deny = ACL("User:ANONYMOUS", "*", ACLOperation.WRITE, ACLPermissionType.DENY,
                   ResourcePattern(ResourceType.TOPIC, space.dlq_topic,
                                   ACLResourcePatternType.LITERAL))
        admin = KafkaAdminClient(bootstrap_servers=space.bootstrap.split(","))
        try:
            assert not admin.create_acls([deny])["failed"]
        finally:
            admin.close()
        rcv = checking(procs, workdir, status=503)
        verified_active(db_url, rcv.url)
        env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0"}
        d = Dispatcher(procs, db_url, space.bootstrap, extra_env=env)
        r = Retrier(procs, db_url, space.bootstrap, extra_env=env)
        want = f"topic {space.dlq_topic} is not authorized to this service"
        for svc in (d, r):
            wait_until(lambda: readyz(svc) == (503, want + "\n"), 20,
                       f"the {svc.program} not ready, naming the dead-letter topic")
            assert f"{want}: give the service's principal Describe and Write on it" \
                in svc.proc.output()

        produce(space.bootstrap, [event("user.session.start")])
        wait_until(lambda: len(rcv.posts()) == 2, 20, "both attempts")
        time.sleep(1)
        assert sql(db_url, "SELECT status, attempts FROM hookbridge.deliveries") == [("retry", 1)]
        rgroup = space.group("hookbridge-retrier")
        assert committed(space.bootstrap, rgroup, tier) == 0

        admin = KafkaAdminClient(bootstrap_servers=space.bootstrap.split(","))
        try:
            admin.delete_acls([ACLFilter("User:ANONYMOUS", "*", ACLOperation.WRITE,
                                         ACLPermissionType.DENY,
                                         ResourcePattern(ResourceType.TOPIC, space.dlq_topic,
                                                         ACLResourcePatternType.LITERAL))])
        finally:
            admin.close()
        d.wait_ready(15)
        r.wait_ready(15)
        wait_until(lambda: sql(db_url, "SELECT status, attempts FROM hookbridge.deliveries")
                   == [("failed", 2)], 30, "the delivery dead-lettered")
        wait_until(lambda: committed(space.bootstrap, rgroup, tier) == 1, 20,
                   "the tier's offset committed")
        assert len(topic_records(space.bootstrap, space.dlq_topic, want=1)) == 1
        assert r.proc.alive() and d.proc.alive()
    finally:
        procs.stop_all()  # while their broker is up: a clean stop
        kafka.stop()
