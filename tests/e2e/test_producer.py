"""hookbridge-producer: what a user sees for good and bad input."""
import json

from hbtest.stack import produce, topic_records


def consume_all(bootstrap, topic="identity.events"):
    """Everything on the topic (the producer has exited: all of it is there)."""
    return topic_records(bootstrap, topic)


def test_bad_lines_are_reported_by_number_and_the_rest_is_produced(broker):
    lines = [
        json.dumps({"eventType": "user.session.start", "actor": {"id": "00u1", "type": "User"}}),
        json.dumps({"eventType": "no.such.type"}),
        "{not json",
        "",
        json.dumps({"displayMessage": "no type"}),
        json.dumps({"eventType": "user.lifecycle.create", "target": [{"id": "00u2", "type": "User"}]}),
    ]
    r = produce(broker.bootstrap, lines, check=False)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode != 0
    assert "produced 2, failed 3" in out
    assert "line 2:" in err and "no.such.type" in err
    assert "line 3:" in err
    assert "line 5:" in err and "eventType" in err
    msgs = consume_all(broker.bootstrap)
    assert len(msgs) == 2
    # Avro single-object encoding: the 0xC3 0x01 marker, then the fingerprint.
    assert all(m.value[:2] == b"\xc3\x01" for m in msgs)
    # Keyed by the target user's id, else the actor's.
    assert sorted(m.key for m in msgs) == [b"00u1", b"00u2"]


def test_generate_produces_the_requested_number(broker):
    r = produce(broker.bootstrap, [], args=("--generate", "250"))
    assert "produced 250, failed 0" in r.stdout.decode()
    assert len(consume_all(broker.bootstrap)) == 250


def test_hostile_json_lines_get_a_clear_error_each_and_lose_nothing_else():
    """Invalid UTF-8, deep nesting, a huge string, wrong types, not JSON: one
    error line each naming the line; the good lines still go out."""
    import subprocess
    from hbtest.procs import BIN
    good = json.dumps({"eventType": "user.session.start"}).encode()
    lines = [
        b'{"eventType":"user.session.start","displayMessage":"\xff\xfe"}',
        b'{"eventType":"user.session.start","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
        json.dumps({"eventType": "user.session.start", "displayMessage": "y" * 300000}).encode(),
        json.dumps({"eventType": "user.session.start", "actor": "not an object"}).encode(),
        json.dumps({"eventType": 123}).encode(),
        b"not json at all",
        good,
    ]
    r = subprocess.run([str(BIN / "hookbridge-producer"), "--print", "-"],
                       input=b"\n".join(lines) + b"\n", capture_output=True, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 1
    assert "printed 1, failed 6" in r.stdout.decode() + err
    for n, what in ((1, "unable to decode byte 0xff"), (2, "maximum parsing depth"),
                    (3, "is larger than 262144 bytes"), (4, "actor: expected null or an object"),
                    (5, "eventType: expected a string"), (6, "invalid JSON")):
        assert any(l.startswith(f"line {n}:") and what in l for l in err.splitlines()), (n, err)


def test_a_users_events_land_on_the_partition_java_clients_choose(broker):
    """Keyed events are partitioned as Apache Kafka's Java clients do
    (murmur2 of the key), so the events of one user stay on one partition, in
    order, whether hookbridge-producer, the ingest endpoint or your own Java
    service wrote them. librdkafka's default (CRC32) put most keys elsewhere."""
    from kafka import KafkaConsumer
    from kafka.partitioner.default import murmur2
    users = [f"00u{i:04d}" for i in range(40)]
    produce(broker.bootstrap, [json.dumps({"eventType": "user.session.start",
                                           "target": [{"id": u, "type": "User"}]})
                               for u in users])
    kc = KafkaConsumer(bootstrap_servers=broker.bootstrap.split(","))
    try:
        parts = len(kc.partitions_for_topic(broker.events_topic))
    finally:
        kc.close()
    assert parts > 1
    msgs = consume_all(broker.bootstrap)
    assert sorted(m.key.decode() for m in msgs) == users
    wrong = [(m.key.decode(), m.partition) for m in msgs
             if m.partition != (murmur2(m.key) & 0x7FFFFFFF) % parts]
    assert not wrong, f"{len(wrong)} of {len(msgs)} events not on the Java client's partition"
