"""Schema evolution and Schema Registry framing, end to end.

The events are written by an independent implementation (Apache's Python
Avro; hbtest/pyavro.py adds the framing bytes) with writer schemas that
differ from the dispatcher's reader: one a release ahead (optional fields
added), one behind (fields removed). The Schema Registry is a stand-in in the
test process (hbtest/registry.py says why no real one runs here)."""
import json

from kafka import KafkaProducer  # python3-kafka: an independent client

from hbtest.procs import wait_until
from hbtest.pyavro import event_schema, evolve, fingerprint, registry_framed, single_object
from hbtest.registry import StandInRegistry
from hbtest.stack import Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified
from test_retry import dlq_messages

NEWER = evolve(add=[("", {"name": "riskScore", "type": ["null", "long"], "default": None}),
                    ("actor", {"name": "department", "type": ["null", "string"],
                               "default": None})])
OLDER = evolve(remove=["securityContext", "request", "authenticationContext",
                       "actor.detailEntry"])
UNKNOWN = evolve(add=[("", {"name": "notRegisteredAnywhere", "type": ["null", "string"],
                            "default": None})])
# Not the IdentityEvent: uuid is a long, eventType is missing and has no default.
UNRESOLVABLE = {"type": "record", "name": "IdentityEvent", "namespace": "hookbridge",
                "fields": [{"name": "uuid", "type": "long"}]}


def an_event(**extra):
    ev = event("user.session.start")
    ev["published"] = "2026-12-04T10:00:00.000Z"
    ev.update(extra)
    return ev


def send(broker, value, key=b"k", partition=None):
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap.split(","))
    kp.send(broker.events_topic, value=value, key=key, partition=partition)
    kp.flush()
    kp.close()


def delivered(receiver):
    """uuid -> the delivered event, for every acknowledged delivery."""
    return {e["uuid"]: e for _, e in receiver.events()}


def start(procs, workdir, db_url, broker, env):
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"])
    return receiver, d


def test_newer_and_older_writers_are_delivered_an_unknown_one_dead_lettered(
        db_url, broker, procs, workdir):
    schemas = workdir / "writer-schemas"
    schemas.mkdir()
    (schemas / "identity_event.v2.avsc").write_text(json.dumps(NEWER, indent=2))
    (schemas / "identity_event.v0.avsc").write_text(json.dumps(OLDER))
    receiver, d = start(procs, workdir, db_url, broker,
                        {"HOOKBRIDGE_WRITER_SCHEMAS_DIR": str(schemas)})
    newer = an_event(riskScore=90)
    newer["actor"]["department"] = "Finance"
    older = an_event()
    unknown = an_event(notRegisteredAnywhere="x")
    send(broker, single_object(NEWER, newer))
    send(broker, single_object(OLDER, older))
    poison = single_object(UNKNOWN, unknown)
    send(broker, poison)

    got = wait_until(lambda: len(d := delivered(receiver)) == 2 and d, 30,
                     "the events of the newer and the older writer")
    assert set(got) == {newer["uuid"], older["uuid"]}
    # What the reader knows arrives; the newer writer's extra fields do not.
    assert got[newer["uuid"]]["actor"] == {"id": newer["actor"]["id"], "type": "User",
                                           "alternateId": newer["actor"]["alternateId"]}
    assert "riskScore" not in got[newer["uuid"]]
    assert got[older["uuid"]]["target"] == older["target"]

    msgs = dlq_messages(broker, want=1)
    assert [m.value for m in msgs] == [poison]
    assert dict(msgs[0].headers)["hookbridge-reason"] == (
        b"unknown writer schema fingerprint 0x%016x" % fingerprint(UNKNOWN))
    assert "writer schemas: 2 from" in d.proc.output()


def test_a_writer_schema_that_does_not_resolve_stops_the_start(db_url, broker, procs, workdir):
    schemas = workdir / "writer-schemas"
    schemas.mkdir()
    (schemas / "broken.avsc").write_text(json.dumps(UNRESOLVABLE))
    d = Dispatcher(procs, db_url, broker.bootstrap,
                   extra_env={"HOOKBRIDGE_WRITER_SCHEMAS_DIR": str(schemas)})
    wait_until(lambda: not d.proc.alive(), 20, "the dispatcher to refuse to start")
    assert d.proc.p.returncode != 0
    out = d.proc.output()
    assert "broken.avsc" in out
    assert ("reader field hookbridge.IdentityEvent.published is missing from the writer schema"
            " and has no default") in out


def test_schema_registry_framing_is_read_and_unknown_ids_dead_lettered(
        db_url, broker, procs, workdir, monkeypatch):
    registry = StandInRegistry()
    try:
        registry.add(11, NEWER)
        registry.add(12, UNRESOLVABLE)
        receiver, d = start(procs, workdir, db_url, broker, {
            "HOOKBRIDGE_SCHEMA_REGISTRY_URL": registry.url,
            "HOOKBRIDGE_SCHEMA_REGISTRY_USER_INFO": registry.user_info})
        first, second = an_event(riskScore=1), an_event(riskScore=2)
        send(broker, registry_framed(NEWER, first, 11))
        send(broker, registry_framed(NEWER, second, 11))
        # below an id the registry gave (11): dead-lettered at once (a newer
        # one waits for a lagging replica first: test_review18_faults.py)
        not_found = registry_framed(event_schema(), an_event(), 9)
        send(broker, not_found)
        unresolvable = registry_framed(UNRESOLVABLE, {"uuid": 5}, 12)
        send(broker, unresolvable)
        # Our own producer in the registry framing: it registers the schema
        # under <topic>-value and frames with the id it gets.
        monkeypatch.setenv("HOOKBRIDGE_SCHEMA_REGISTRY_URL", registry.url)
        monkeypatch.setenv("HOOKBRIDGE_SCHEMA_REGISTRY_USER_INFO", registry.user_info)
        ours = an_event()
        produce(broker.bootstrap, [ours], args=["--framing", "registry"])
        assert registry.subjects == {f"{broker.events_topic}-value": [13]}

        wait_until(lambda: len(delivered(receiver)) == 3, 30, "the registry-framed events")
        assert set(delivered(receiver)) == {first["uuid"], second["uuid"], ours["uuid"]}
        msgs = dlq_messages(broker, want=2)
        assert len(msgs) == 2, msgs
        reasons = {m.value: dict(m.headers)["hookbridge-reason"].decode() for m in msgs}
        assert reasons[not_found] == "schema id 9 not found in the schema registry: " \
                                     "Schema 9 not found"
        assert reasons[unresolvable].startswith("schema id 12 from the registry: reader field "
                                                "hookbridge.IdentityEvent.published is missing")
        # Ids never change meaning: each was asked for once.
        assert [p for _, p, _ in registry.requests if p.startswith("/schemas/ids/")].count(
            "/schemas/ids/11") == 1
        assert d.get("/readyz")[0] == 200
        assert registry.user_info.split(":")[1] not in d.proc.output()
    finally:
        registry.stop()


def test_a_registry_that_is_down_delays_consumption_then_everything_arrives(
        db_url, broker, procs, workdir):
    registry = StandInRegistry(start=False)  # nothing listens on its port yet
    try:
        registry.add(11, NEWER)
        receiver, d = start(procs, workdir, db_url, broker, {
            "HOOKBRIDGE_SCHEMA_REGISTRY_URL": registry.url,
            "HOOKBRIDGE_SCHEMA_REGISTRY_USER_INFO": registry.user_info})
        first, second, other = an_event(), an_event(), an_event()
        send(broker, registry_framed(NEWER, first, 11), partition=0)
        send(broker, registry_framed(NEWER, second, 11), partition=0)
        # another partition is not held up
        send(broker, single_object(event_schema(), other), partition=1)
        wait_until(lambda: other["uuid"] in delivered(receiver), 30,
                   "the event on the other partition")

        def not_ready_because(text):
            status, body = d.get("/readyz")
            return status == 503 and text in body

        wait_until(lambda: not_ready_because("schema registry unavailable"), 20,
                   "/readyz to name the registry")
        assert "schema registry unavailable" in d.proc.output()
        assert "\nhookbridge_schema_registry_unavailable 1\n" in d.get("/metrics")[1]
        # A registry that answers but fails: still waiting, still not ready.
        registry.mode = "503"
        registry.start()
        wait_until(lambda: not_ready_because("HTTP 503"), 20, "/readyz to say HTTP 503")
        assert first["uuid"] not in delivered(receiver)
        assert second["uuid"] not in delivered(receiver)

        registry.mode = "up"
        wait_until(lambda: {first["uuid"], second["uuid"]} <= set(delivered(receiver)), 30,
                   "the waiting events once the registry is back")
        wait_until(lambda: d.get("/readyz")[0] == 200, 20, "the dispatcher to be ready again")
        assert "schema registry reachable again" in d.proc.output()
        assert "\nhookbridge_schema_registry_unavailable 0\n" in d.get("/metrics")[1]
        assert dlq_messages(broker) == []
        assert sorted(e["uuid"] for _, e in receiver.events()) == sorted(
            [first["uuid"], second["uuid"], other["uuid"]])
    finally:
        registry.stop()
