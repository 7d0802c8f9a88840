"""Review 18: the producer's Okta ingest endpoint and the Schema Registry
client, as a user meets them: a registry replica that has not caught up, a
producer framing Apicurio's way, and what the ingest endpoint does with
what clients send it.

Each test says what it holds and how it was shown to fail on 4a269d1."""
import http.client
import io
import json
import socket
import time

import avro.io
import avro.schema

from hbtest.ingest import AUTH_VALUE, PATH, Ingest, envelope, topic_messages
from hbtest.procs import SLOW, wait_until
from hbtest.pyavro import body, event_schema, registry_framed
from hbtest.registry import StandInRegistry
from test_retry import dlq_messages
from test_delivery import event
from test_schema_evolution import NEWER, an_event, delivered, send, start

ROOM = 'hookbridge_http_connections_closed_total{port="ingest",reason="room"}'


def test_a_schema_id_the_registry_replica_lacks_yet_waits_and_id_0_names_apicurio(
        db_url, broker, procs, workdir):
    """docs/schemas.md, A new id the registry does not have yet: a "schema
    not found" for an id above every id the registry has given is not
    believed for HOOKBRIDGE_SCHEMA_REGISTRY_NOT_FOUND_GRACE: the event waits,
    and is delivered once the registry has the schema; an id it never gets is
    dead-lettered when the grace ends, not before; an older id, and id 0,
    at once, id 0 with the likely cause (Apicurio's 8-byte ids).

    A registry's replicas catch up asynchronously: a producer registers its
    schema with the primary and writes the event, the dispatcher asks a
    replica that has not read the registration. On 4a269d1 that event was
    dead-lettered at once, and every event of the id for the next 30 s with
    it ("the event of the id the replica gets a moment later" timed out);
    an event framed with Apicurio's default 8-byte id was dead-lettered as
    "schema id 0 not found in the schema registry: Schema 0 not found",
    nothing saying why."""
    registry = StandInRegistry()
    try:
        registry.add(11, NEWER)
        receiver, d = start(procs, workdir, db_url, broker, {
            "HOOKBRIDGE_SCHEMA_REGISTRY_URL": registry.url,
            "HOOKBRIDGE_SCHEMA_REGISTRY_USER_INFO": registry.user_info,
            "HOOKBRIDGE_SCHEMA_REGISTRY_NOT_FOUND_GRACE": "3s"})
        first = an_event()
        send(broker, registry_framed(NEWER, first, 11), partition=0)
        wait_until(lambda: first["uuid"] in delivered(receiver), 30, "the event of id 11")

        lagging, never, older, apicurio = an_event(), an_event(), an_event(), an_event()
        send(broker, registry_framed(NEWER, lagging, 12), partition=1)
        sent_never = time.monotonic()
        never_bytes = registry_framed(NEWER, never, 13)
        send(broker, never_bytes, partition=2)
        older_bytes = registry_framed(event_schema(), older, 5)
        send(broker, older_bytes, partition=3)
        # Apicurio 2.x's default framing: 0x00, the id as 8 bytes, the body.
        apicurio_bytes = b"\x00" + (11).to_bytes(8, "big") + body(NEWER, apicurio)
        send(broker, apicurio_bytes, partition=4)

        # The replica catches up once the dispatcher has been told "not found".
        wait_until(lambda: "schema id 12 not found in the schema registry" in d.proc.output(),
                   20, "the registry's answer for id 12")
        registry.add(12, NEWER)
        wait_until(lambda: lagging["uuid"] in delivered(receiver), 20,
                   "the event of the id the replica gets a moment later")

        msgs = dlq_messages(broker, want=3)
        waited = time.monotonic() - sent_never
        reasons = {m.value: dict(m.headers)["hookbridge-reason"].decode() for m in msgs}
        assert set(reasons) == {older_bytes, apicurio_bytes, never_bytes}, reasons
        assert reasons[older_bytes] == "schema id 5 not found in the schema registry: " \
                                       "Schema 5 not found"
        assert reasons[apicurio_bytes].startswith(
            "schema id 0 not found in the schema registry: Schema 0 not found (id 0 is what an "
            "event framed with Apicurio's 8-byte schema ids reads as"), reasons[apicurio_bytes]
        assert reasons[never_bytes] == "schema id 13 not found in the schema registry: " \
                                       "Schema 13 not found"
        assert waited >= 3, f"id 13 dead-lettered {waited:.1f} s after it was sent, grace 3 s"
        # the older id and id 0 did not wait for the grace
        at = {m.value: m.timestamp for m in msgs}
        for quick in (older_bytes, apicurio_bytes):
            assert at[never_bytes] - at[quick] >= 2000, (reasons[quick], at)
        out = d.proc.output()
        assert ("schema id 12 not found in the schema registry, which has given us ids up to 11: "
                "its events wait up to 3000 ms") in out
        assert "schema id 13 still not found in the schema registry" in out
        assert set(delivered(receiver)) == {first["uuid"], lagging["uuid"]}
        assert d.get("/readyz")[0] == 200
    finally:
        registry.stop()


def read_event(value):
    """A single-object-encoded IdentityEvent from the topic, read with
    Apache's Python Avro and the reader schema (its own writer here)."""
    assert value[:2] == b"\xc3\x01"
    schema = avro.schema.parse(json.dumps(event_schema()))
    return avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(value[10:])))


def test_the_ingest_endpoint_takes_okta_s_free_form_values_big_batches_and_own_connections(
        broker, procs):
    """docs/ingest.md, What each answer means: Okta types actor.detailEntry,
    target[].detailEntry, transaction.detail and debugContext.debugData as
    objects of any values (its System Log API: Map<String, Object>); the
    schema carries strings, and a value that is not one is taken as its JSON
    text.

    On 4a269d1 one number, boolean, null or object there made the whole
    delivery a 400 (`data.events[0]: debugContext.debugData.count: expected
    a string`): Okta does not send a 4xx again, so every event of that
    delivery was lost.

    And a delivery with more events than librdkafka's local queue holds
    (queue.buffering.max.messages, 100,000 by default; 10 here) waits for
    room as the brokers acknowledge, within HOOKBRIDGE_INGEST_TIMEOUT. On
    4a269d1 it was answered 503 at once (`event 10 could not be queued
    (... Local: Queue full)`), every time it was sent again: a 4 MiB body
    of small events never got in.

    And docs/ingest.md, Settings: "the request of a connection beyond them
    [HOOKBRIDGE_INGEST_MAX_CONNECTIONS] is answered 503 with Retry-After".
    Okta delivers on a kept-alive connection; with the limit at 2, another
    client holds a connection and a third opens one and trickles its
    headers (no secret needed). Okta's requests on its own connection,
    opened within the limit, are answered as usual. (Review 34: the third
    no longer goes beyond the limit: the connection that sent nothing is
    closed to make room for it, and its request is answered as any other.) On 4a269d1 the limit was
    checked against the count of open connections at each request, so
    while the third was open every connection's requests were answered
    503: Okta's delivery on its established connection got `too many
    connections: try again later`."""
    ing = Ingest(procs, broker.bootstrap,
                 extra_env={"HOOKBRIDGE_KAFKA_QUEUE_BUFFERING_MAX_MESSAGES": "10",
                            "HOOKBRIDGE_INGEST_MAX_CONNECTIONS": "2"})
    ing.wait_ready()
    batch = [event("user.session.start") for _ in range(50)]
    status, _, answer = ing.post(batch)
    assert (status, answer) == (200, {"produced": 50}), answer
    ev = event("user.session.start")
    ev["actor"]["detailEntry"] = {"methodTypeUsed": "Password", "attempts": 2}
    ev["target"] = [{"id": "00u2", "type": "User", "detailEntry": {"policyType": "OktaSignOn",
                                                                   "rules": ["r1", "r2"]}}]
    ev["transaction"] = {"type": "WEB", "id": "Zc3Vq1f", "detail": {"requestApiTokenId": None}}
    ev["debugContext"] = {"debugData": {"requestId": "Zc3Vq1f", "count": 3, "flag": True,
                                        "risk": {"level": "LOW"}}}
    other = event("user.lifecycle.create")
    status, _, answer = ing.post([ev, other])
    assert status == 200, answer
    assert answer == {"produced": 2}
    got = {e["uuid"]: e for e in (read_event(m.value) for m in topic_messages(broker.bootstrap))}
    assert set(got) == {ev["uuid"], other["uuid"]} | {b["uuid"] for b in batch}
    e = got[ev["uuid"]]
    assert e["actor"]["detailEntry"] == {"methodTypeUsed": "Password", "attempts": "2"}
    assert e["target"][0]["detailEntry"] == {"policyType": "OktaSignOn",
                                             "rules": '["r1","r2"]'}
    assert e["transaction"]["detail"] == {"requestApiTokenId": "null"}
    assert e["debugContext"]["debugData"] == {"requestId": "Zc3Vq1f", "count": "3",
                                              "flag": "true", "risk": '{"level":"LOW"}'}
    # The event's shape is still checked: a map that is not an object is
    # refused (and dead-lettered: test_ingest.py).
    bad = event("user.session.start")
    bad["debugContext"] = {"debugData": "not a map"}
    status, _, answer = ing.post([bad])
    assert status == 200 and answer["dead_lettered"] == 1, answer
    assert answer["refused"][0]["error"].startswith("data.events[0]: debugContext.debugData")

    okta = http.client.HTTPConnection("127.0.0.1", ing.port, timeout=10 * SLOW)

    def deliver():
        okta.request("POST", PATH, body=json.dumps(envelope([event("user.session.start")])),
                     headers={"Authorization": AUTH_VALUE, "Content-Type": "application/json"})
        r = okta.getresponse()
        return r.status, json.loads(r.read())

    held = []
    try:
        assert deliver() == (200, {"produced": 1})
        held.append(socket.create_connection(("127.0.0.1", ing.port)))  # within the limit
        over = socket.create_connection(("127.0.0.1", ing.port))  # beyond it
        held.append(over)
        over.sendall(b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n")
        # all three accepted: the third took the place of the one that sent
        # nothing (Review 34), so Okta's requests go on with one too many open
        wait_until(lambda: ing.metric(ROOM) == 1, 10, "the third connection accepted")
        for _ in range(2):
            assert deliver() == (200, {"produced": 1})
        over.sendall(b"Content-Length: 2\r\n\r\n{}")
        over.settimeout(5 * SLOW)
        answer = over.recv(4096)
        # Review 34: the connection that sent nothing was closed to make room
        # for it (it had waited longest, and had no request answered, as
        # Okta's has), so its request is read as any other: no secret, 401.
        assert answer.startswith(b"HTTP/1.1 401"), answer
        held[0].settimeout(5 * SLOW)
        assert held[0].recv(64) == b"", "the connection sending nothing was not closed"
    finally:
        okta.close()
        for s in held:
            s.close()
