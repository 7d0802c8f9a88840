"""The producer's Okta event-hook endpoint (hookbridge-producer --listen):
what Okta, and the operator, see. Real parts on loopback: the devbroker,
PostgreSQL, the dispatcher and the example receiver; the topic is read back
with a Kafka client."""
import http.client
import json
import os
import re
import signal
import socket
import time

from hbtest.clockshim import build_shim
from hbtest.ingest import AUTH_VALUE, PATH, Ingest, envelope, topic_messages
from hbtest.lifecycle import wait_read
from hbtest.procs import BIN, SLOW, free_port, wait_until
from hbtest.stack import Dispatcher, Receiver, topic_records
from hbtest.webhooks import signature_valid
from test_delivery import SECRET, event, register_verified

PRODUCED = 'hookbridge_ingest_events_total{outcome="produced"}'


def marker_is_all_there_is(ing, bootstrap):
    """Posts one good event and reads the whole topic back: exactly that event
    is there. (So the read really saw the topic, and nothing else was on it.)"""
    marker = event("user.session.start")
    status, _, body = ing.post([marker])
    assert status == 200, body
    msgs = topic_messages(bootstrap)
    assert len(msgs) == 1, f"{len(msgs)} messages on the topic, want only the marker"
    assert msgs[0].key.decode() == marker["actor"]["id"]


def test_okta_delivery_reaches_the_subscriber_once_signed(db_url, broker, procs, workdir):
    """Okta verifies the hook, then delivers three events: the subscribed
    one arrives at the receiver signed, once; the other known type and the
    type outside the catalogue are produced but match no subscription."""
    receiver = Receiver(procs, workdir, secret=SECRET)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    ing = Ingest(procs, broker.bootstrap)
    d.wait_ready()
    ing.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"])

    # Okta's one-time verification (after the auth check).
    status, hdrs, body = ing.request("GET", headers={"X-Okta-Verification-Challenge": "Y2hhbGxlbmdl"})
    assert status == 200 and hdrs["content-type"] == "application/json"
    assert body == {"verification": "Y2hhbGxlbmdl"}

    wanted = event("user.session.start")
    other = event("user.lifecycle.create")
    unknown = event("policy.evaluate_sign_on")  # not in our catalogue: accepted anyway
    status, hdrs, body = ing.post([wanted, other, unknown])
    assert status == 200, body
    assert body == {"produced": 3}
    ing.wait_in_progress(0)  # answered: none in progress

    wait_until(lambda: receiver.events(), 30, "the subscribed event at the receiver")
    wait_read(d, 3, "all three events")  # a duplicate or another event is sent by then
    got = receiver.events()
    assert [e["uuid"] for _, e in got] == [wanted["uuid"]]
    req = got[0][0]
    assert signature_valid(SECRET, req) and req["verified"] is True
    # All three are on the topic, keyed by the user as the CLI keys them.
    msgs = topic_messages(broker.bootstrap)
    assert sorted(m.key.decode() for m in msgs) == sorted(
        e["actor"]["id"] for e in (wanted, other, unknown))
    assert all(m.value[:2] == b"\xc3\x01" for m in msgs)
    assert ing.metric(PRODUCED) == 3
    assert ing.metric('hookbridge_ingest_requests_total{class="2xx"}') == 2


def test_missing_or_wrong_auth_is_401_and_nothing_is_produced(broker, procs):
    ing = Ingest(procs, broker.bootstrap)
    ing.wait_ready()
    events = [event("user.session.start")]
    for auth in (False, "Bearer wrong", AUTH_VALUE + "x", AUTH_VALUE[:-1], ""):
        status, _, body = ing.post(events, auth=auth)
        assert status == 401, (auth, body)
        assert body == {"error": "unauthorized"}
    # The verification challenge is not answered without the secret either.
    status, _, body = ing.request("GET", auth="Bearer wrong",
                                  headers={"X-Okta-Verification-Challenge": "abc"})
    assert status == 401 and "abc" not in str(body)
    assert ing.metric(PRODUCED) == 0
    assert ing.metric('hookbridge_ingest_requests_total{class="4xx"}') == 6
    marker_is_all_there_is(ing, broker.bootstrap)


def test_bad_requests_in_bulk_do_not_flood_the_log_and_every_client_is_named(broker, procs):
    """A client sending wrong requests in bulk (a scanner, a hook with the
    wrong auth value) gets at most 10 log lines per 30 s (50 per 10 s
    before review 71), then one line says how many more there were; another client's first refusal in that window is
    still logged, with its address; the metrics count every request."""
    ing = Ingest(procs, broker.bootstrap, extra_env={"HOOKBRIDGE_LOG_LEVEL": "info"})
    ing.wait_ready()
    t0 = time.monotonic()
    for _ in range(120):
        assert ing.post([event("user.session.start")], auth="Bearer wrong")[0] == 401
    conn = http.client.HTTPConnection("127.0.0.1", ing.port, timeout=30 * SLOW,
                                      source_address=("127.0.0.2", 0))
    conn.request("POST", PATH, body=b"{}", headers={"Content-Type": "application/json"})
    assert conn.getresponse().status == 401
    conn.close()

    def lines():
        out = [json.loads(l) for l in ing.proc.output().splitlines() if l.startswith("{")]
        refused = [l for l in out if l["msg"] == "ingest: unauthorized"]
        left = [l for l in out if " line(s) not logged in the last " in l["msg"]]
        return refused, left

    # the window's summary comes once it is over (30 s after its first line)
    wait_until(lambda: lines()[1] or None, max(0, 32 - (time.monotonic() - t0)) + 10 * SLOW,
               "the line that says how many were left out")
    refused, left = lines()
    assert len(refused) <= 10 + 2, len(refused)  # and the first of each client
    assert [l for l in refused if l["remote"] == "127.0.0.2"], "the other client's line"
    assert sum(int(l["msg"].split()[0]) for l in left) + len(refused) == 121
    assert "hookbridge_ingest_requests_total counts every request" in left[0]["msg"]
    assert ing.metric('hookbridge_ingest_requests_total{class="4xx"}') == 121


def test_a_body_that_is_no_event_hook_is_400_naming_the_problem_and_nothing_is_produced(
        broker, procs):
    ing = Ingest(procs, broker.bootstrap)
    ing.wait_ready()
    cases = [
        ("{\"eventType\": \"com.okta.event_hook\", ", "invalid JSON"),
        ({"eventType": "com.okta.event_hook", "data": {"events": {}}},
         "data.events: expected an array"),
        # A bare LogEvent instead of Okta's envelope.
        (event("user.session.start"), "want \"com.okta.event_hook\""),
        # A NUL character in a key: jansson cannot hold it.
        ('{"eventType": "com.okta.event_hook", "data": {"events": [{"a\\u0000b": 1}]}}',
         "invalid JSON"),
    ]
    for body, says in cases:
        status, hdrs, answer = ing.post(body)
        assert status == 400, (body, answer)
        assert hdrs["content-type"] == "application/json"
        assert says in answer["error"], answer
        assert "event" not in answer, answer
    assert ing.metric(PRODUCED) == 0
    assert ing.metric("hookbridge_ingest_rejected_requests_total") == len(cases)
    marker_is_all_there_is(ing, broker.bootstrap)


def test_an_event_the_schema_refuses_is_dead_lettered_and_its_delivery_s_others_delivered(
        db_url, broker, procs, workdir):
    """docs/ingest.md, Events the schema refuses: Okta does not send a
    delivery answered 4xx again, so one event the schema refuses must not
    cost the others. Before, the whole delivery was answered 400 and
    nothing of it published: every event of it lost.

    Now the refused events go to the dead-letter topic as Okta sent them,
    with the reason in the header hookbridge-reason, the others are
    published and delivered, and the answer is 200 once all are written.
    Also what the schema takes once adjusted: a NUL character in free text
    (it used to make the whole body invalid JSON), integers beyond 64 bits
    and reals beyond double in debugData (the same), a geolocation whose
    coordinates are null (Okta's, for an address it cannot place)."""
    receiver = Receiver(procs, workdir, secret=SECRET)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    ing = Ingest(procs, broker.bootstrap, extra_env={"HOOKBRIDGE_LOG_LEVEL": "info"})
    d.wait_ready()
    ing.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"])

    odd = event("user.session.start")
    odd["displayMessage"] = "User login to Okta\u0000 from a typed NUL"
    odd["debugContext"] = {"debugData": {"big": 123456789012345678901234567890,
                                         "requestId": "r-1"}}
    odd["client"] = {"ipAddress": "10.1.2.3", "geographicalContext": {
        "city": None, "country": "Nowhere", "geolocation": {"lat": None, "lon": None}}}
    no_type = {"uuid": "refused-no-type", "displayMessage": "no eventType"}
    as_number = event("user.session.start")
    as_number["securityContext"] = {"asNumber": 4200000000, "isp": "private AS"}
    plain = event("user.session.start")
    status, _, answer = ing.post([odd, no_type, as_number, plain])
    assert status == 200, answer
    assert answer["produced"] == 2 and answer["dead_lettered"] == 2, answer
    assert [(r["event"], r.get("uuid")) for r in answer["refused"]] == [
        (1, "refused-no-type"), (2, as_number["uuid"])]
    assert answer["refused"][0]["error"] == "data.events[1]: eventType: missing"
    assert answer["refused"][1]["error"].startswith("data.events[2]: securityContext.asNumber")

    # The others reach the subscriber, NUL and all.
    wait_until(lambda: len(receiver.events()) >= 2 or None, 30, "both events at the receiver")
    got = {e["uuid"]: e for _, e in receiver.events()}
    assert set(got) == {odd["uuid"], plain["uuid"]}
    assert got[odd["uuid"]]["displayMessage"] == odd["displayMessage"]
    assert got[odd["uuid"]]["debugContext"]["debugData"] == {
        "big": "123456789012345678901234567890", "requestId": "r-1"}
    assert got[odd["uuid"]]["client"]["geographicalContext"].get("geolocation") is None
    assert got[odd["uuid"]]["client"]["geographicalContext"]["country"] == "Nowhere"

    # The refused ones are on the dead-letter topic as they were sent.
    dead = topic_records(broker.bootstrap, broker.dlq_topic, want=2)
    assert len(dead) == 2
    by_uuid = {m.key.decode(): m for m in dead}
    assert set(by_uuid) == {"refused-no-type", as_number["uuid"]}
    for sent, why in ((no_type, "data.events[1]: eventType: missing"),
                      (as_number, "data.events[2]: securityContext.asNumber")):
        m = by_uuid[sent["uuid"]]
        hdrs = {k: v.decode() for k, v in m.headers}
        assert hdrs["hookbridge-reason"].startswith(why), hdrs
        assert hdrs["hookbridge-source"] == "okta-event-hook"
        assert json.loads(m.value) == sent

    assert ing.metric(PRODUCED) == 2
    assert ing.metric('hookbridge_ingest_events_total{outcome="dead_lettered"}') == 2
    assert ing.metric("hookbridge_ingest_rejected_requests_total") == 0
    # The operator reads which events were refused, and where they went.
    said = [json.loads(l) for l in ing.proc.output().splitlines()
            if l.startswith("{") and "refused; sending it to the dead-letter topic" in l]
    assert [(l["level"], l["uuid"]) for l in said] == [
        ("warn", "refused-no-type"), ("warn", as_number["uuid"])], said
    assert said[1]["event_type"] == "user.session.start"


def test_without_the_dead_letter_topic_the_endpoint_is_not_ready(apache_kafka, procs):
    """A refused event goes to the dead-letter topic, so without it the
    endpoint says it is not ready, naming the topic, as the dispatcher does,
    rather than answer 503 to the deliveries that hold one; once the topic
    is made it becomes ready by itself and uses it. (Apache Kafka: the
    devbroker makes any topic asked for.)"""
    space = apache_kafka.space()
    later = apache_kafka.space(create=False)  # its dead-letter topic comes later
    ing = Ingest(procs, space.bootstrap, extra_env={
        "HOOKBRIDGE_EVENTS_TOPIC": space.events_topic, "HOOKBRIDGE_DLQ_TOPIC": later.dlq_topic})
    wait_until(lambda: later.dlq_topic in ing.ops("/readyz")[1] or None, 20,
               "/readyz to name the missing dead-letter topic")
    assert ing.ops("/readyz")[0] == 503
    later.create_topics()
    ing.wait_ready(30)
    refused = {"uuid": "no-type-here"}
    status, _, answer = ing.post([event("user.session.start"), refused])
    assert status == 200 and answer["dead_lettered"] == 1, answer
    dead = topic_records(space.bootstrap, later.dlq_topic, want=1)
    assert [json.loads(m.value) for m in dead] == [refused]
    assert dict(dead[0].headers)["hookbridge-reason"] == b"data.events[1]: eventType: missing"


def test_a_dead_letter_topic_deleted_while_ready_makes_the_endpoint_not_ready(
        apache_kafka, procs):
    """Review 39: with the dead-letter topic deleted after the endpoint was
    ready, every delivery holding a refused event was answered 503 and
    /readyz stayed 200, so the load balancer kept sending Okta's deliveries
    there. Now the first refusal for an unknown topic makes the endpoint
    learn its topics again: not ready, naming the missing one, until it is
    back; then deliveries are taken again."""
    from hbtest.kafka import delete_topics
    space = apache_kafka.space()
    ing = Ingest(procs, space.bootstrap, extra_env={"HOOKBRIDGE_INGEST_TIMEOUT": "3s"})
    ing.wait_ready()
    delete_topics(space.bootstrap, [space.dlq_topic])
    refused = {"uuid": "no-type-after-delete"}
    status, _, answer = ing.post([event("user.session.start"), refused])
    assert status == 503, answer
    wait_until(lambda: ing.ops("/readyz")[0] == 503 and
               space.dlq_topic in ing.ops("/readyz")[1] or None, 20 * SLOW,
               "/readyz to name the deleted dead-letter topic")
    assert "checking the events and dead-letter topics again" in ing.proc.output()
    space._schedules.clear()
    space.create_topics()
    ing.wait_ready(30)
    status, _, answer = ing.post([event("user.session.start"), refused])
    assert status == 200 and answer["dead_lettered"] == 1, answer


def test_a_refused_event_too_large_for_the_dead_letter_topic_is_kept_by_its_ids(
        apache_kafka, procs):
    """A refused event's copy larger than the dead-letter topic takes (its
    max.message.bytes, refused by the broker in the delivery report) or
    than this producer sends (message.max.bytes, refused at once) goes
    again as what identifies it, {"uuid","eventType","published"}, the
    reason saying so: the delivery is still 200 and its other events
    published. Without that, every attempt of the delivery was answered
    503, and Okta gave it up after its one retry: every event lost."""
    from hbtest.kafka import alter_topic_configs
    space = apache_kafka.space()
    alter_topic_configs(space.bootstrap, {space.dlq_topic: {"max.message.bytes": 4000}})
    ing = Ingest(procs, space.bootstrap)
    ing.wait_ready()
    big = {"uuid": "big-refused", "eventType": "user.session.start",
           "published": "2026-12-06T10:00:00Z", "actor": "not an object",
           "displayMessage": "x" * 6000}
    good = event("user.session.start")
    status, _, answer = ing.post([good, big])
    assert status == 200, answer
    assert (answer["produced"], answer["dead_lettered"]) == (1, 1), answer
    dead = topic_records(space.bootstrap, space.dlq_topic, want=1)
    assert len(dead) == 1
    assert json.loads(dead[0].value) == {k: big[k] for k in ("uuid", "eventType", "published")}
    reason = dict(dead[0].headers)["hookbridge-reason"].decode()
    assert reason.startswith("data.events[1]: actor: expected null or an object"), reason
    assert "is larger than the dead-letter topic takes: only its uuid, eventType and " \
           "published are kept" in reason, reason
    assert [m.key.decode() for m in topic_messages(space.bootstrap, space.events_topic)] == \
        [good["actor"]["id"]]
    assert "sending its uuid, eventType and published only" in ing.proc.output()

    # This producer's own limit: refused before it is sent, the same way out.
    local = Ingest(procs, space.bootstrap, name="ingest-small-messages",
                   extra_env={"HOOKBRIDGE_KAFKA_MESSAGE_MAX_BYTES": "3000"})
    local.wait_ready()
    status, _, answer = local.post([dict(big, uuid="big-refused-2")])
    assert status == 200 and answer["dead_lettered"] == 1, answer
    mine = [m for m in topic_records(space.bootstrap, space.dlq_topic, want=2)
            if json.loads(m.value)["uuid"] == "big-refused-2"]
    assert len(mine) == 1
    assert "is larger than this producer sends (message.max.bytes): only its uuid" in \
        dict(mine[0].headers)["hookbridge-reason"].decode()


def test_a_body_of_countless_empty_objects_is_400_and_the_process_stays_small(broker, procs):
    """A client with the secret sends 4 MiB of empty objects (1.4 million
    events `{}`): parsed whole, jansson's tree of them made the process
    peak at 524 MB, over the manifest's 512 Mi limit, which kills the pod
    and every delivery in flight on it. It is refused 400 before it is
    parsed, naming why, and the peak stays small; a real delivery still
    gets its 200 afterwards."""
    from test_review14_faults import hwm_kib
    ing = Ingest(procs, broker.bootstrap)
    ing.wait_ready()
    n = (4 * 1024 * 1024 - 400) // 3
    text = json.dumps(envelope([])).replace('"events": []', '"events": [' + ",".join(["{}"] * n) + "]")
    status, _, body = ing.request("POST", text)
    assert status == 400, body
    assert f"{n + 3} JSON objects and arrays in {len(text)} bytes" in body["error"], body
    assert "more than an event-hook delivery holds" in body["error"]
    if BIN.name != "bin-san":  # ASan's shadow memory and quarantine: no figure there
        assert hwm_kib(ing.proc.pid) < 128 * 1024, f"peak RSS {hwm_kib(ing.proc.pid)} KiB"
    assert ing.post([event("user.session.start")])[0] == 200


def test_wrong_method_is_405_and_other_paths_404(broker, procs):
    ing = Ingest(procs, broker.bootstrap)
    status, hdrs, _ = ing.request("PUT", envelope([]))
    assert status == 405 and hdrs["allow"] == "GET, POST"
    assert ing.request("POST", envelope([]), path="/")[0] == 404
    assert ing.request("GET", path="/metrics")[0] == 404  # operations live on their own port
    # GET without the challenge header says what is missing.
    status, _, body = ing.request("GET")
    assert status == 400 and "X-Okta-Verification-Challenge" in body["error"]


def test_an_oversized_body_is_413_without_being_read(broker, procs):
    limit = 65536
    ing = Ingest(procs, broker.bootstrap,
                 extra_env={"HOOKBRIDGE_INGEST_MAX_BODY_BYTES": str(limit)})
    ing.wait_ready()
    # Announced by Content-Length: answered from the headers alone (no body sent).
    with socket.create_connection(("127.0.0.1", ing.port), timeout=10 * SLOW) as s:
        s.sendall((f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH_VALUE}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n\r\n")
                  .encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer
    # Chunked (no length): counted as it comes, nothing kept, 413 at the end.
    big = envelope([dict(event("user.session.start"), displayMessage="x" * 40000)
                    for _ in range(2)])
    import json

    def chunks():
        data = json.dumps(big).encode()
        for i in range(0, len(data), 8192):
            yield data[i:i + 8192]
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", ing.port, timeout=10 * SLOW)
    conn.request("POST", PATH, body=chunks(), encode_chunked=True,
                 headers={"Authorization": AUTH_VALUE, "Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    assert r.status == 413, r.read()
    conn.close()
    # Just under the limit is fine.
    status, _, body = ing.post([dict(event("user.session.start"), displayMessage="x" * 60000)])
    assert status == 200, body
    assert ing.metric(PRODUCED) == 1


def test_brokers_unreachable_is_503_with_retry_after_in_bounded_time(procs):
    closed = f"127.0.0.1:{free_port()}"
    ing = Ingest(procs, closed, extra_env={"HOOKBRIDGE_INGEST_TIMEOUT": "1s"})
    # Not ready: the events topic's metadata never comes.
    time.sleep(1)
    status, text = ing.ops("/readyz")
    assert status == 503 and "identity.events" in text
    t0 = time.monotonic()
    sent = [event("user.session.start"), event("user.session.end")]
    status, hdrs, body = ing.post(sent)
    took = time.monotonic() - t0
    assert status == 503, body
    assert hdrs["retry-after"].isdigit()
    assert "may already be written" in body["error"] and "send it again" in body["error"]
    assert body["acknowledged"] == 0 and body["events"] == 2
    assert took < 6 * SLOW, f"answered after {took:.1f}s"
    assert ing.metric('hookbridge_ingest_requests_total{class="5xx"}') == 1
    wait_until(lambda: ing.metric('hookbridge_ingest_events_total{outcome="failed"}') == 2, 5,
               "both events counted as failed")
    # The log names the events not written, for the operator to find them
    # in Okta's System Log should Okta's retry fail too (docs/ingest.md).
    said = [json.loads(l) for l in ing.proc.output().splitlines()
            if l.startswith("{") and '"status":"503"' in l]
    assert len(said) == 1 and said[0]["level"] == "warn", said
    assert said[0]["event_uuids"] == ",".join(e["uuid"] for e in sent)
    # Still healthy (the loop runs), and a stop is prompt and clean.
    assert ing.ops("/healthz")[0] == 200
    assert ing.proc.stop(timeout=15) == 0


def test_sigterm_while_idle_exits_0_promptly_and_never_prints_the_secret(broker, procs):
    ing = Ingest(procs, broker.bootstrap)
    ing.wait_ready()
    assert ing.post([event("user.session.start")])[0] == 200
    assert ing.post([event("user.session.start")], auth="Bearer guess")[0] == 401
    # An idle keep-alive connection does not hold the stop up.
    idle = socket.create_connection(("127.0.0.1", ing.port))
    t0 = time.monotonic()
    ing.proc.signal(signal.SIGTERM)
    ing.proc.p.wait(10 * SLOW)
    took = time.monotonic() - t0
    idle.close()
    assert ing.proc.p.returncode == 0
    assert took < 5 * SLOW, f"stopped after {took:.1f}s"
    out = ing.proc.output()
    assert "stopped" in out
    assert AUTH_VALUE not in out and "okta-hook-secret" not in out
    # --help and the configuration reference never show it either.
    import subprocess
    import os
    env = dict(os.environ, HOOKBRIDGE_INGEST_AUTH_VALUE=AUTH_VALUE)
    for args in (["--help"], ["--config-reference"]):
        r = subprocess.run([str(BIN / "hookbridge-producer"), *args], env=env,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and AUTH_VALUE not in r.stdout + r.stderr


def test_listen_without_an_auth_value_refuses_to_start(broker, procs):
    ing = Ingest(procs, broker.bootstrap, auth_value=None, wait=False)
    wait_until(lambda: not ing.proc.alive(), 10, "the producer to refuse")
    assert ing.proc.p.returncode == 2
    out = ing.proc.output()
    assert "HOOKBRIDGE_INGEST_AUTH_VALUE" in out
    assert "HOOKBRIDGE_INGEST_ALLOW_UNAUTHENTICATED=1" in out
    # Explicitly unauthenticated (local use): it serves without a header.
    ing = Ingest(procs, broker.bootstrap, auth_value=None, name="ingest-open",
                 extra_env={"HOOKBRIDGE_INGEST_ALLOW_UNAUTHENTICATED": "1"})
    ing.wait_ready()
    assert ing.post([event("user.session.start")], auth=False)[0] == 200
    assert "no authentication" in ing.proc.output()


def brokers_refuse(bootstrap):
    """Every broker of the devbroker refuses connections (SIGUSR1 took them
    down: their listeners close with their connections)."""
    for hp in str(bootstrap).split(","):
        host, port = hp.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return False
        except OSError:
            pass
    return True


def test_a_broker_that_stops_acking_is_503_and_nothing_is_lost(broker, procs):
    """Ready, then every broker goes down: the request is answered 503 after
    the ingest timeout, not 200; brokers back, the same request sent again
    is 200 and its events are on the topic (at least once). The brokers'
    outage counts in hookbridge_kafka_errors_total, as the dispatcher's and
    the retrier's do (the ingest endpoint did not serve it, and the alert
    HookbridgeKafkaErrors saw nothing of it)."""
    ing = Ingest(procs, broker.bootstrap, extra_env={"HOOKBRIDGE_INGEST_TIMEOUT": "2s"})
    ing.wait_ready()
    events = [event("user.session.start") for _ in range(3)]
    broker.proc.signal(signal.SIGUSR1)  # the devbroker takes every broker down
    # (a fixed wait was not always enough on a loaded machine: the events got in)
    wait_until(lambda: brokers_refuse(broker.bootstrap), 10 * SLOW, "every broker down")
    status, hdrs, body = ing.post(events)
    assert status == 503 and "retry-after" in hdrs, body
    # ... and the endpoint says it is not ready, so a load balancer stops sending
    wait_until(lambda: ing.ops("/readyz")[0] == 503, 15, "/readyz to say not ready")
    assert "no Kafka broker reachable" in ing.ops("/readyz")[1]
    errors = re.search(r"^hookbridge_kafka_errors_total (\S+)$", ing.ops("/metrics")[1], re.M)
    assert errors and float(errors.group(1)) > 0, ing.ops("/metrics")[1]
    broker.proc.signal(signal.SIGUSR2)
    wait_until(lambda: ing.ops("/readyz")[0] == 200, 30, "/readyz to say ready again")
    status, _, body = wait_until(lambda: (r := ing.post(events))[0] == 200 and r, 40,
                                 "a 200 once the brokers are back")
    assert body == {"produced": 3}
    keys = {m.key.decode() for m in topic_messages(broker.bootstrap)}
    assert {e["actor"]["id"] for e in events} <= keys


def test_sigterm_lets_a_request_in_flight_finish_and_takes_no_new_ones(broker, procs):
    """A delivery is waiting for the brokers when SIGTERM arrives: it still
    gets its answer (here 503, the brokers being down: Okta sends it again),
    new connections are refused at once, and the producer exits 0."""
    import threading
    ing = Ingest(procs, broker.bootstrap, extra_env={"HOOKBRIDGE_INGEST_TIMEOUT": "3s"})
    ing.wait_ready()
    broker.proc.signal(signal.SIGUSR1)  # every broker down: the request waits its timeout
    wait_until(lambda: brokers_refuse(broker.bootstrap), 10 * SLOW, "every broker down")
    answer = {}
    t = threading.Thread(target=lambda: answer.update(r=ing.post([event("user.session.start")])))
    t.start()
    ing.wait_in_progress()  # the delivery is in, waiting for its acknowledgements
    ing.proc.signal(signal.SIGTERM)
    time.sleep(0.3)
    try:
        socket.create_connection(("127.0.0.1", ing.port), timeout=2).close()
        refused = False
    except OSError:
        refused = True
    t.join(30 * SLOW)
    assert answer["r"][0] == 503, answer
    assert ing.proc.p.wait(25 * SLOW) == 0
    assert refused, "a new connection was accepted while stopping"


def test_the_kubernetes_manifests_run_what_this_file_tests():
    """deploy/k8s/optional/ingest: the producer with --listen's setting on the
    port the container, the Service and nothing else name; probes on the
    operations port; the secret from a Secret; a grace period longer than the
    stop takes (preStop + 20 s drain + 2 s for the last 503s + 5 s flush + 2 s
    purge)."""
    from hbtest.opscheck import default_http_port, rendered
    objs = rendered("deploy/k8s/optional/ingest")
    cm = next(o for o in objs if o["kind"] == "ConfigMap")["data"]
    dep = next(o for o in objs if o["kind"] == "Deployment")
    svc = next(o for o in objs if o["kind"] == "Service")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["command"] == ["/usr/local/bin/hookbridge-producer"]
    ingest_port = int(cm["HOOKBRIDGE_INGEST_LISTEN"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"ingest": ingest_port, "metrics": default_http_port()}
    assert svc["spec"]["ports"][0]["targetPort"] == "ingest"
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "metrics"}
    auth = next(e for e in c["env"] if e["name"] == "HOOKBRIDGE_INGEST_AUTH_VALUE")
    assert "secretKeyRef" in auth["valueFrom"]
    prestop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > prestop + 20 + 2 + 5 + 2


LATE_LISTEN_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/socket.h>
#include <unistd.h>

/* Every listen() starts half a second late: the gap between two listeners
 * opened one after the other is then wide enough to meet. */
int listen(int fd, int backlog) {
    static int (*real)(int, int);
    if (!real)
        real = (int (*)(int, int))dlsym(RTLD_NEXT, "listen");
    usleep(500000);
    return real(fd, backlog);
}
"""


def test_the_endpoint_accepts_connections_once_its_health_port_answers(broker, procs):
    """A probe, or Okta, that saw /healthz answer can connect to the ingest
    endpoint (answered 503 until the topics are known), never is refused:
    the endpoint listens before the health port does. Each listen() is made
    half a second late (an LD_PRELOAD shim), and Ingest() connects as soon as
    /healthz answers.

    Checked to fail without the change: on ea18b08 the health port listened
    first, and the connection was refused (CI's first post to an ingest
    endpoint once was too)."""
    shim = build_shim(LATE_LISTEN_SHIM, "late-listen")
    ing = Ingest(procs, broker.bootstrap, extra_env={
        "LD_PRELOAD": str(shim),
        "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"})
    ing.wait_ready()
    status, _, body = ing.post([event("user.session.start")])
    assert status == 200, body
