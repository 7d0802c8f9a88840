"""The spine end to end: an identity event on Kafka reaches a verified
webhook endpoint, signed, once, and only when subscribed."""
import json
import time
import uuid

import psycopg2
import pytest

from hbtest.lifecycle import wait_read
from hbtest.procs import wait_until
from hbtest.stack import Dispatcher, Receiver, produce, topic_records
from hbtest.webhooks import signature_valid

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AUTH_VALUE = "Bearer e2e-token-7f3a9c"


def sql(db_url, query, *args):
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall() if cur.description else None


def register_verified(db_url, receiver_url, types, options=None):
    """register -> verify (the dispatcher runs the challenge) -> activate."""
    opts = {"auth_header": "Authorization", "auth_value": AUTH_VALUE, "secret": SECRET}
    opts.update(options or {})
    sub = sql(db_url, "SELECT hookbridge.register(%s, %s, %s, %s::jsonb)", "e2e", receiver_url,
              types, json.dumps(opts))[0][0]
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    state = wait_until(
        lambda: (s := sql(db_url, "SELECT verification FROM hookbridge.subscriptions WHERE id=%s",
                          sub)[0][0]) != "unverified" and s, 15, "the verification outcome")
    assert state == "verified"
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    return sub


def verify_once(db_url, url, name="e2e", options=None):
    """Registers a subscription for url and runs its verification; returns
    (subscription id, verification state, verification_error)."""
    opts = {"auth_header": "Authorization", "auth_value": AUTH_VALUE, "secret": SECRET}
    opts.update(options or {})
    sub = sql(db_url, "SELECT hookbridge.register(%s, %s, %s, %s::jsonb)", name, url,
              ["user.session.start"], json.dumps(opts))[0][0]
    return (sub, *verification_outcome(db_url, sub))


def verification_outcome(db_url, sub):
    """Asks for sub's verification and waits for it: (state, verification_error)."""
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    wait_until(lambda: sql(db_url, "SELECT verification FROM hookbridge.subscriptions "
                           "WHERE id=%s", sub)[0][0] != "unverified" or None, 15,
               "the verification outcome")
    return sql(db_url, "SELECT verification, verification_error "
               "FROM hookbridge.subscriptions WHERE id=%s", sub)[0]


def event(etype, user="00u" + uuid.uuid4().hex[:10]):
    return {"uuid": str(uuid.uuid4()), "eventType": etype, "displayMessage": "e2e",
            "severity": "INFO",
            "actor": {"id": user, "type": "User", "alternateId": f"{user}@example.com"},
            "target": [{"id": user, "type": "User"}], "outcome": {"result": "SUCCESS"}}


@pytest.mark.apache
def test_only_subscribed_events_arrive_once_signed_with_auth(db_url, broker, procs, workdir):
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    # The verification challenge reached the receiver as a GET with the auth header.
    gets = [r for r in receiver.requests()
            if r["method"] == "GET" and "x-okta-verification-challenge" in r["headers"]]
    assert len(gets) == 1 and gets[0]["headers"]["authorization"] == AUTH_VALUE

    wanted = [event("user.session.start") for _ in range(10)]
    others = [event(t) for t in ("user.lifecycle.create", "user.account.lock",
                                 "group.user_membership.add") for _ in range(5)]
    mixed = wanted + others
    mixed.sort(key=lambda e: e["uuid"])
    produce(broker.bootstrap, mixed)

    wait_until(lambda: len(receiver.events()) >= len(wanted), 30, "10 deliveries")
    wait_read(d, len(mixed), "every event")  # anything extra or duplicated is sent by then
    got = receiver.events()
    assert sorted(e["uuid"] for _, e in got) == sorted(e["uuid"] for e in wanted)
    for req, ev in got:
        h = req["headers"]
        assert h["authorization"] == AUTH_VALUE
        assert h["content-type"].startswith("application/json")
        assert h["user-agent"].startswith("hookbridge/")
        assert signature_valid(SECRET, req), "signature does not verify"
        assert req["verified"] is True  # the example receiver agrees
        body = json.loads(req["body"])
        assert body["eventType"] == "com.okta.event_hook"
        assert body["eventId"] == h["webhook-id"]
        assert ev["eventType"] == "user.session.start"
    # Distinct events get distinct webhook-ids.
    assert len({r["headers"]["webhook-id"] for r, _ in got}) == len(wanted)

    # The operator sees the same numbers on /metrics.
    import re
    status, metrics = d.get("/metrics")
    assert status == 200
    consumed = re.search(r"^hookbridge_messages_consumed_total (\d+)", metrics, re.M)
    delivered = re.search(r'^hookbridge_deliveries_total\{outcome="delivered"\} (\d+)',
                          metrics, re.M)
    assert consumed and int(consumed.group(1)) == len(mixed)
    assert delivered and int(delivered.group(1)) == len(wanted)
    # Consumer lag per partition: a series for each of the 6 partitions, all
    # caught up (refreshed every 5 s).
    def lag():
        series = re.findall(r'^hookbridge_consumer_lag\{topic="' + re.escape(broker.events_topic)
                            + r'",partition="(\d+)"\} (\d+)', d.get("/metrics")[1], re.M)
        return len(series) == 6 and all(v == "0" for _, v in series)
    wait_until(lag, 15, "per-partition consumer lag at 0")

    # Every attempt is in the delivery log.
    rows = wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.delivery_attempts a "
                                  "JOIN hookbridge.deliveries d USING (delivery_id) "
                                  "WHERE d.subscription_id=%s AND a.outcome='delivered'",
                                  sub)[0][0] >= len(wanted) or None, 10, "the delivery log")
    assert rows


def test_subscription_applies_without_restart_and_inactive_gets_nothing(db_url, broker, procs,
                                                                        workdir):
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    # Registered but never activated: nothing is delivered.
    sql(db_url, "SELECT hookbridge.register('idle', %s, ARRAY['user.lifecycle.create'])",
        receiver.url + "/idle")
    produce(broker.bootstrap, [event("user.lifecycle.create")])
    wait_read(d, 1)
    assert receiver.posts() == []
    # Registered and activated while the dispatcher runs: the next event arrives.
    register_verified(db_url, receiver.url, ["user.lifecycle.create"])
    produce(broker.bootstrap, [event("user.lifecycle.create")])
    wait_until(lambda: len(receiver.events()) == 1, 20, "the delivery after activation")


@pytest.mark.parametrize("endpoint,reason", [
    ("health", "not JSON"),        # answers 200 "ok": no echo of the challenge
    ("closed", "refused"),         # nothing listens there
])
def test_failed_verification_is_recorded_and_activation_refused(db_url, broker, procs, workdir,
                                                                endpoint, reason):
    from hbtest.procs import free_port
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    url = (f"http://127.0.0.1:{d.health_port}/healthz" if endpoint == "health"
           else f"http://127.0.0.1:{free_port()}/hook")
    sub = sql(db_url, "SELECT hookbridge.register('bad', %s, ARRAY['user.session.start'])",
              url)[0][0]
    state, why = verification_outcome(db_url, sub)
    assert state == "failed"
    assert reason in why
    with pytest.raises(psycopg2.Error) as e:
        sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    assert e.value.pgcode == "HB011"


@pytest.mark.apache
def test_poison_message_goes_to_dlq_and_consumption_continues(db_url, broker, procs, workdir):
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"])
    from kafka import KafkaProducer  # python3-kafka: an independent client
    poison = b"\x00garbage that is not avro"
    # retries: a topic just created on Apache Kafka may answer "not leader" for a moment.
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap.split(","), retries=10)
    kp.send(broker.events_topic, poison).get(timeout=30)
    kp.flush()
    kp.close()
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(receiver.events()) == 1, 20, "the event behind the poison message")
    # The two went to different partitions (the poison has no key): the
    # delivery does not mean the poison was read already.
    wait_until(lambda: "poison message" in d.proc.output(), 20, "the poison message's log line")
    assert d.proc.alive()
    # The poison message is not lost: its bytes are on the dead-letter topic with the reason.
    msgs = topic_records(broker.bootstrap, broker.dlq_topic, want=1)
    assert [m.value for m in msgs] == [poison]
    headers = dict(msgs[0].headers)
    # The reason names the problem, on the copy and in the dispatcher's log.
    # (0x00 is also the Schema Registry framing's magic: the reason says so too.)
    assert headers["hookbridge-reason"].startswith(b"not single-object encoded (bad magic)")
    assert (f"poison message sent to {broker.dlq_topic}: not single-object encoded"
            in d.proc.output())
    assert headers["hookbridge-source-topic"] == broker.events_topic.encode()


@pytest.mark.apache
def test_sigkill_mid_stream_loses_nothing(db_url, broker, procs, workdir):
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"])
    events = [event("user.session.start") for _ in range(400)]
    # Keep producing while the dispatcher is killed: 8 batches, 0.4 s apart.
    import threading
    producer = threading.Thread(target=lambda: [
        (produce(broker.bootstrap, events[i:i + 50]), time.sleep(0.4))
        for i in range(0, len(events), 50)])
    producer.start()
    wait_until(lambda: len(receiver.events()) >= 60, 30, "the stream to start arriving")
    d.proc.kill()  # SIGKILL: no drain, no commit
    before = len(receiver.events())
    d2 = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher2")
    producer.join()
    assert before < len(events), "the kill came after the whole stream: nothing was tested"
    d2.wait_ready(60)
    want = {e["uuid"] for e in events}
    wait_until(lambda: want <= {e["uuid"] for _, e in receiver.events()}, 60,
               "every event after the restart")
    got = receiver.events()
    # At least once: every event arrived; duplicates carry the same webhook-id.
    ids = {}
    for req, ev in got:
        ids.setdefault(ev["uuid"], set()).add(req["headers"]["webhook-id"])
    assert all(len(v) == 1 for v in ids.values())
    print(f"delivered before kill: {before}, total requests: {len(got)}, events: {len(want)}")


def test_dispatcher_waits_for_unreachable_database(broker, procs, workdir):
    d = Dispatcher(procs, "postgresql://hookbridge:s3cret-pw@127.0.0.1:1/none", broker.bootstrap)
    wait_until(lambda: "database unavailable" in d.proc.output(), 15, "the database error")
    # The operator is told which server could not be reached, and why.
    assert "connection refused (host 127.0.0.1 port 1)" in d.proc.output()
    assert d.proc.alive(), "must keep retrying, not exit"
    assert d.get("/readyz")[0] == 503
    assert "s3cret-pw" not in d.proc.output(), "the password leaked into the log"
    assert d.proc.stop() == 0


def test_endpoint_that_closes_the_connection_fails_with_a_reason(db_url, broker, procs, workdir):
    """A receiver that answers the challenge but drops every POST: a connection
    error is retryable, so the delivery is logged as waiting for a retry, with
    the reason, and the dispatcher carries on."""
    from hbtest.endpoints import ChallengeAnswering, serve

    class Rude(ChallengeAnswering):
        def do_POST(self):
            self.close_connection = True
            self.connection.shutdown(2)  # no status line at all

    srv = serve(Rude)
    try:
        d = Dispatcher(procs, db_url, broker.bootstrap)
        d.wait_ready()
        sub = register_verified(db_url, srv.url, ["user.account.lock"])
        produce(broker.bootstrap, [event("user.account.lock")])
        row = wait_until(lambda: sql(db_url, "SELECT status, last_error FROM hookbridge.deliveries "
                                     "WHERE subscription_id=%s", sub) or None, 20,
                         "the failed delivery in the log")[0]
        assert row[0] == "retry"
        # The delivery log says what happened, not just that something did.
        assert "closed the connection without a response" in row[1], row[1]
        assert d.proc.alive()
        assert "attempt 1 failed" in d.proc.output()
    finally:
        srv.shutdown()
