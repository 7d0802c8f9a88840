"""Review 10: the event source side, the Schema Registry client and the
consumer group, as an operator meets them.

- HOOKBRIDGE_SCHEMA_REGISTRY_CA_FILE is checked at start like every other CA
  file (docs/design.md, Configuration principles: a file the program cannot
  use stops it with one line and exit status 1). It was not: a path with a
  typo, or a file that is not PEM, started a dispatcher that was ready, and
  the first event in the registry's framing waited for ever behind curl's
  "error setting certificate file". A usable private CA reads the registry
  over HTTPS (nothing tested that before).
- A password in HOOKBRIDGE_SCHEMA_REGISTRY_URL holding an unencoded '/'
  (API secrets often do) was shown whole in the start line, in every fetch
  error and in /readyz's body; and a URL curl cannot parse started a
  dispatcher whose registry-framed events then waited for ever: it is
  refused at start, without showing it.
- On Apache Kafka, poison messages the dead-letter copy could not be made of
  as it was: one larger than librdkafka produces (or than the dead-letter
  topic takes) was refused for ever, its offset never committed; and every
  copy lost the original's own Kafka headers.
"""
from hbtest.kafka import alter_topic_configs
from hbtest.procs import wait_until
from hbtest.pyavro import registry_framed
from hbtest.registry import StandInRegistry
from hbtest.stack import Dispatcher, Receiver, produce, topic_records
from hbtest.tls import Pki
from test_delivery import AUTH_VALUE, SECRET, event, register_verified
from test_schema_evolution import NEWER, an_event, delivered, send, start


def test_a_registry_ca_file_is_checked_at_start_and_a_private_ca_reads_the_registry(
        db_url, broker, procs, workdir):
    pki = Pki(workdir)
    registry = StandInRegistry(tls=pki.server("registry"))
    try:
        registry.add(11, NEWER)
        env = {"HOOKBRIDGE_SCHEMA_REGISTRY_URL": registry.url,
               "HOOKBRIDGE_SCHEMA_REGISTRY_USER_INFO": registry.user_info}
        not_pem = workdir / "not-a-bundle.pem"
        not_pem.write_text("this is not a certificate\n")
        for path, why in ((workdir / "no-such-ca.pem", "cannot read: No such file or directory"),
                          (not_pem, "no usable PEM certificates: ")):
            d = Dispatcher(procs, db_url, broker.bootstrap, name=f"dispatcher-{path.stem}",
                           extra_env={**env, "HOOKBRIDGE_SCHEMA_REGISTRY_CA_FILE": str(path)})
            wait_until(lambda: not d.proc.alive(), 20, "the dispatcher to refuse to start")
            assert d.proc.p.returncode == 1, d.proc.output()[-2000:]
            assert f"cannot start: HOOKBRIDGE_SCHEMA_REGISTRY_CA_FILE={path}: {why}" in \
                d.proc.output()

        # A password with a '/' not percent-encoded in the URL: never shown.
        # curl cannot parse it ("Zm9v" would be the port): refused at start.
        # Parsed otherwise than meant (host "key", port 12): the dispatcher
        # starts, and its start line names the registry without it.
        for i, (url, shown) in enumerate(((f"https://key:Zm9v/YmFy@127.0.0.1:{registry.port}", None),
                           (f"https://key:12/YmFy@127.0.0.1:{registry.port}",
                            f"from https://127.0.0.1:{registry.port}"))):
            leaky = Dispatcher(procs, db_url, broker.bootstrap, name=f"dispatcher-url{i}",
                               extra_env={"HOOKBRIDGE_SCHEMA_REGISTRY_URL": url})
            if shown:
                wait_until(lambda: "Schema Registry framing read" in leaky.proc.output(), 20,
                           "the dispatcher to name its registry")
                assert shown in leaky.proc.output()
                leaky.proc.stop()
            else:
                wait_until(lambda: not leaky.proc.alive(), 20, "the dispatcher to refuse the URL")
                assert leaky.proc.p.returncode == 1
                # refused (review12's host-part check or curl's parse), not shown
                out = leaky.proc.output()
                assert "cannot start: HOOKBRIDGE_SCHEMA_REGISTRY_URL: " in out
                assert "percent-encode" in out
            assert "YmFy" not in leaky.proc.output()

        receiver, d = start(procs, workdir, db_url, broker,
                            {**env, "HOOKBRIDGE_SCHEMA_REGISTRY_CA_FILE": str(pki.ca)})
        ev = an_event(riskScore=7)
        send(broker, registry_framed(NEWER, ev, 11))
        wait_until(lambda: ev["uuid"] in delivered(receiver), 30,
                   "the event whose writer schema came from the registry over HTTPS")
        assert registry.served() == [("GET", "/schemas/ids/11", 200)]
    finally:
        registry.stop()


def test_a_poison_message_too_large_to_copy_whole_is_dead_lettered_without_its_bytes(
        apache_kafka, db_url, procs, workdir):
    """Apache Kafka takes messages up to 1 MiB (message.max.bytes 1048588, a
    Java producer's max.request.size 1048576); librdkafka's producer refuses
    more than 1,000,000 bytes (its message.max.bytes). A poison message in
    between could never be copied to the dead-letter topic: the copy was
    produced again every second for ever, so its partition's committed offset
    stopped there (lag never 0, everything after it consumed again after a
    restart), and after HOOKBRIDGE_MAX_PENDING_EVENTS more events the whole
    dispatcher stopped consuming. It is dead-lettered without its value (the
    headers say where the bytes are), and consumption and commits go on.
    And a poison copy keeps the original's own Kafka headers (it lost them),
    unless they are what makes it too large."""
    from kafka import KafkaProducer
    from test_consumer_lag import lags
    space = apache_kafka.space()
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, space.bootstrap)
    d.wait_ready(60)
    register_verified(db_url, receiver.url, ["user.session.start"])
    big = b"\x00\x00\x00\x00\x07" + b"x" * 1_010_000  # registry framing, no registry here
    kp = KafkaProducer(bootstrap_servers=space.bootstrap.split(","), retries=10)
    kp.send(space.events_topic, value=big, key=b"k", partition=0).get(30)
    # A poison message of a usual size whose own headers say how to read it
    # (Apicurio's serializers put the schema id there by default) or trace it:
    # its copy keeps them, else the dead letter could never be read again.
    raw, theirs = b"\x48not-single-object", [("apicurio.value.globalId", b"\0\0\0\0\0\0\0\x07"),
                                               ("traceparent", b"00-4bf92f35-00f067aa-01")]
    # (produced again from the dead-letter topic: its old hookbridge-* headers go)
    old = [("hookbridge-reason", b"earlier"), ("hookbridge-source-offset", b"99")]
    kp.send(space.events_topic, value=raw, key=b"r", partition=1, headers=theirs + old).get(30)
    # too large by its headers: they go too, last
    kp.send(space.events_topic, value=b"\x48", key=b"h", partition=3,
            headers=[("big", b"z" * 1_010_000)]).get(30)
    kp.close()
    after = event("user.session.start")
    produce(space.bootstrap, [after])
    wait_until(lambda: after["uuid"] in {e["uuid"] for _, e in receiver.events()}, 30,
               "the event after the oversized poison message")
    msgs = topic_records(space.bootstrap, space.dlq_topic, want=3)
    assert len(msgs) == 3
    stripped = next(m for m in msgs if m.key is None)
    assert [h for h, _ in stripped.headers] == ["hookbridge-reason", "hookbridge-source-topic",
                                                "hookbridge-source-partition",
                                                "hookbridge-source-offset"]
    assert dict(stripped.headers)["hookbridge-source-partition"] == b"3"
    assert b"; the message (1010005 bytes) is too large" in \
        dict(stripped.headers)["hookbridge-reason"]  # value, key and headers
    copy = next(m for m in msgs if m.key == b"r")
    assert copy.value == raw
    assert copy.headers[:2] == theirs
    assert [h for h, _ in copy.headers[2:]] == ["hookbridge-reason", "hookbridge-source-topic",
                                                "hookbridge-source-partition",
                                                "hookbridge-source-offset"]
    assert dict(copy.headers[2:])["hookbridge-reason"] == b"not single-object encoded (bad magic)"
    msgs = [m for m in msgs if m.key == b"k"]
    headers = dict(msgs[0].headers)
    assert msgs[0].value in (None, b"")
    assert headers["hookbridge-source-partition"] == b"0"
    assert headers["hookbridge-source-offset"] == b"0"
    assert headers["hookbridge-reason"].decode().endswith(
        "; the message (1010006 bytes) is too large to copy here: read it at its source "
        "topic, partition and offset (headers hookbridge-source-*)")
    wait_until(lambda: (l := lags(d, space.events_topic)) and not any(l.values()), 20,
               "every partition's lag at 0: the poison message's offset committed")

    # The dead-letter topic's own limit below the events topic's: the broker
    # refuses the copy (a delivery report, not producev): the same way out.
    alter_topic_configs(space.bootstrap, {space.dlq_topic: {"max.message.bytes": 4000}})
    kp = KafkaProducer(bootstrap_servers=space.bootstrap.split(","), retries=10)
    kp.send(space.events_topic, value=b"\x48" + b"y" * 20000, key=b"m", partition=2).get(30)
    kp.close()
    msgs = [m for m in topic_records(space.bootstrap, space.dlq_topic, want=4) if m.key == b"m"]
    assert len(msgs) == 1 and msgs[0].value in (None, b"")
    assert dict(msgs[0].headers)["hookbridge-reason"].decode().startswith(
        "not single-object encoded (bad magic); the message (20002 bytes) is too large")
    assert d.get("/readyz") == (200, "ready\n")  # its producer still usable
    wait_until(lambda: (l := lags(d, space.events_topic)) and not any(l.values()), 20,
               "every partition's lag at 0 again")
