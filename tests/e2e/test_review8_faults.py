"""Review 8: writer schemas, end to end, with events written by Apache's
Python Avro. A writer that resolves by Avro's rules is read (one without
`client`, whose record defines the GeographicalContext that request.ipChain
uses again); one whose union holds a type the reader cannot read is refused
where the operator sees it: at start for HOOKBRIDGE_WRITER_SCHEMAS_DIR, as
poison that names the field for the registry. And a poison copy keeps its
key byte for byte."""
import copy
import json

from hbtest.procs import wait_until
from hbtest.pyavro import _record, event_schema, registry_framed, single_object
from hbtest.registry import StandInRegistry
from hbtest.stack import Dispatcher
from test_retry import dlq_messages
from test_schema_evolution import an_event, delivered, send, start


def without_client():
    """The reader without `client`; GeographicalContext defined where
    request.ipChain[] uses it instead."""
    s = copy.deepcopy(event_schema())
    geo = next(t for t in next(f for f in _record(s, "client")["fields"]
                               if f["name"] == "geographicalContext")["type"]
               if isinstance(t, dict))
    s["fields"] = [f for f in s["fields"] if f["name"] != "client"]
    ipchain = next(f for f in _record(s, "request")["fields"] if f["name"] == "ipChain")
    ip = next(t for t in ipchain["type"] if isinstance(t, dict))["items"]
    next(f for f in ip["fields"] if f["name"] == "geographicalContext")["type"] = ["null", geo]
    return s


def as_number_long():
    """The reader with securityContext.asNumber ["null", "long"] (the
    reader's is ["null", "int"]: long does not narrow to int)."""
    s = copy.deepcopy(event_schema())
    f = next(f for f in _record(s, "securityContext")["fields"] if f["name"] == "asNumber")
    f["type"] = ["null", "long"]
    return s


def test_writer_schemas_resolve_by_avro_rules(db_url, broker, procs, workdir):
    schemas = workdir / "writer-schemas"
    schemas.mkdir()
    (schemas / "no-client.avsc").write_text(json.dumps(without_client()))
    registry = StandInRegistry()
    try:
        registry.add(22, as_number_long())
        receiver, d = start(procs, workdir, db_url, broker, {
            "HOOKBRIDGE_WRITER_SCHEMAS_DIR": str(schemas),
            "HOOKBRIDGE_SCHEMA_REGISTRY_URL": registry.url,
            "HOOKBRIDGE_SCHEMA_REGISTRY_USER_INFO": registry.user_info})
        ev = an_event()
        ev.pop("client", None)
        ev["request"] = {"ipChain": [{"ip": "192.0.2.7", "geographicalContext": {
            "city": "Z\u00fcrich", "geolocation": {"lat": 47.3769, "lon": 8.5417}}}]}
        send(broker, single_object(without_client(), ev))
        wide = registry_framed(as_number_long(), an_event(securityContext={"asNumber": 7}), 22)
        send(broker, wide)
        # A poison message keeps its key, all of its bytes: Confluent's Avro
        # keys start with 0x00 (design.md: "a poison copy keeps its original key").
        binary_key = b"\x00\x00\x00\x00\x15\x02k\x00y"
        garbage = b"\xc3\x02 not an event"
        send(broker, garbage, key=binary_key)

        got = wait_until(lambda: delivered(receiver).get(ev["uuid"]), 30,
                         "the event of the writer without client")
        assert got["request"] == ev["request"]
        msgs = {m.value: m for m in dlq_messages(broker, want=2)}
        assert set(msgs) == {wide, garbage}
        assert dict(msgs[wide].headers)["hookbridge-reason"].decode() == (
            "schema id 22 from the registry: writer schema does not resolve into the reader: "
            "securityContext.asNumber: the writer's long is not among the reader's types")
        assert msgs[garbage].key == binary_key
        assert dict(msgs[garbage].headers)["hookbridge-reason"] == \
            b"not single-object encoded (bad magic)"
    finally:
        registry.stop()

    # The same writer in the directory stops the start, naming file and field.
    (schemas / "no-client.avsc").unlink()
    (schemas / "wide.avsc").write_text(json.dumps(as_number_long()))
    d2 = Dispatcher(procs, db_url, broker.bootstrap,
                    extra_env={"HOOKBRIDGE_WRITER_SCHEMAS_DIR": str(schemas)})
    wait_until(lambda: not d2.proc.alive(), 20, "the dispatcher to refuse to start")
    assert d2.proc.p.returncode != 0
    assert "wide.avsc: writer schema does not resolve into the reader: " \
           "securityContext.asNumber" in d2.proc.output()
