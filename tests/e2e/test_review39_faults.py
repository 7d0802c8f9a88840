"""Review 39: the ingest endpoint's dead letters (commits 68064a8, 670ffd2),
as Okta and an operator meet them. Each test fails on main as of 670ffd2."""
import json
import subprocess

from hbtest.ingest import Ingest, envelope
from hbtest.kafka import alter_topic_configs
from hbtest.procs import BIN, SLOW
from hbtest.stack import topic_records
from test_delivery import event


def test_a_dead_letter_the_broker_refuses_is_not_lost_after_okta_s_retry(apache_kafka, procs):
    """docs/ingest.md, Events the schema refuses: a refused event goes to the
    dead-letter topic as Okta sent it, up to 512 KiB. A dead-letter topic
    whose max.message.bytes is below the copy refuses it for good: the
    delivery is answered 503, Okta sends it once more, 503 again, and gives
    up: the refused event is on neither topic (the good one is on the events
    topic twice). The dispatcher's poison copies shrink for this
    (design.md, Poison); the endpoint's dead letters do not."""
    space = apache_kafka.space()
    alter_topic_configs(space.bootstrap, {space.dlq_topic: {"max.message.bytes": 4000}})
    ing = Ingest(procs, space.bootstrap)
    ing.wait_ready(30)
    good = event("user.session.start")
    bad = {"uuid": "refused-and-big", "displayMessage": "x" * 20000}  # no eventType
    answers = [ing.post([good, bad]) for _ in range(2)]  # Okta's attempt and its one retry
    # every message had its report before its answer: the topics stay as they are
    dead = [m for m in topic_records(space.bootstrap, space.dlq_topic)
            if m.key == b"refused-and-big"]
    copies = len(topic_records(space.bootstrap, space.events_topic))
    assert dead and answers[-1][0] == 200, (
        f"answers {[(s, a.get('error')) for s, _, a in answers]}: the refused event is on no "
        f"topic after Okta's retry ({copies} copies of the good one on the events topic)")


def test_a_refused_event_with_a_long_uuid_does_not_cost_its_delivery(broker, procs):
    """keep_refused bounds a refused event's JSON to 512 KiB so that its copy
    fits a Kafka message, but the copy's key is its uuid, of any length: an
    event with a 500,000-character uuid and no eventType makes a message over
    librdkafka's message.max.bytes (1,000,000), refused at producev. The
    delivery is answered 503 with the events after it never produced, and
    Okta's retry meets the same: every event of the delivery is lost."""
    delivered_twice_beside_a_uuid_of(broker, procs, 500000)
    assert topic_records(broker.bootstrap, broker.dlq_topic)


def delivered_twice_beside_a_uuid_of(broker, procs, length):
    """Okta's attempt and its one retry of a delivery holding a refused event
    whose uuid has `length` characters and a good event: both answered 200,
    the good event on the events topic."""
    ing = Ingest(procs, broker.bootstrap)
    ing.wait_ready()
    good = event("user.session.start")
    answers = [ing.post([{"uuid": "u" * length}, good]) for _ in range(2)]
    on_topic = len(topic_records(broker.bootstrap, broker.events_topic))
    assert [s for s, _, _ in answers] == [200, 200], (
        f"answers {[(s, str(a.get('error'))[:300]) for s, _, a in answers]}; "
        f"{on_topic} event(s) on the events topic")
    assert on_topic >= 1


def test_the_dead_letter_copy_holds_the_values_okta_sent(broker, procs):
    """docs/ingest.md said the refused event goes to the dead-letter topic
    "as Okta sent it (its JSON, compact)". It is jansson's writing of a
    second parse: the same values, not the same text (37.7749 is written
    37.774900000000002, 1e2 is 100.0, \\u00e9 the character itself). The
    docs now say so; what must hold is the values."""
    ing = Ingest(procs, broker.bootstrap)
    ing.wait_ready()
    text = ('{"uuid":"fidelity-1","client":{"geographicalContext":{"geolocation":'
            '{"lat":37.7749,"lon":-122.4194}}},"n":1e2,"z":-0,"s":"caf\\u00e9 \\/"}')
    body = json.dumps(envelope([])).replace('"events": []', '"events": [' + text + "]")
    status, _, answer = ing.post(body)
    assert status == 200 and answer["dead_lettered"] == 1, answer
    dead = [m for m in topic_records(broker.bootstrap, broker.dlq_topic, want=1)
            if m.key == b"fidelity-1"]
    assert json.loads(dead[0].value) == json.loads(text)


def test_a_number_as_an_object_key_stays_invalid_json(broker, procs):
    """quote_huge_numbers puts quotes around a number jansson cannot hold,
    wherever it stands: a body holding one as an object's key (not JSON)
    then parses, and its events are published (200) where any other
    invalid body is a 400."""
    ing = Ingest(procs, broker.bootstrap)
    ing.wait_ready()
    good = json.dumps(event("user.session.start"))
    body = json.dumps(envelope([])).replace(
        '"events": []', '"events": [' + good[:-1] + ', 99999999999999999999: 1}]')
    status, _, answer = ing.post(body)
    assert status == 400, answer


def test_what_the_endpoint_publishes_the_cli_publishes_again(tmp_path):
    """docs/ingest.md: a dead-lettered event "can be published again with
    hookbridge-producer from its JSON", and after an outage the System Log's
    events are to be published "with hookbridge-producer FILE". The CLI does
    not adjust what the endpoint adjusts: a debugData value that is not a
    string, a geolocation without coordinates, a NUL, an integer beyond 64
    bits: it refuses each of these events, which the endpoint publishes."""
    lines = []
    for extra in ({"debugContext": {"debugData": {"risk": 3}}},
                  {"client": {"geographicalContext": {"geolocation": {"lat": None,
                                                                      "lon": None}}}},
                  {"displayMessage": "typed \u0000 NUL"}):
        e = event("user.session.start")
        e.update(extra)
        lines.append(json.dumps(e))
    e = event("user.session.start")
    lines.append(json.dumps(e)[:-1] + ', "debugContext": {"debugData": '
                 '{"n": 123456789012345678901234567890}}}')
    path = tmp_path / "system-log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    r = subprocess.run([BIN / "hookbridge-producer", "--print", str(path)],
                       capture_output=True, text=True, timeout=30 * SLOW)
    assert r.returncode == 0 and "printed 4, failed 0" in r.stderr + r.stdout, (
        r.stdout[-500:] + r.stderr[-1500:])
