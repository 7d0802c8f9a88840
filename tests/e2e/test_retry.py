"""Retries end to end with the real retrier: delay tiers on the broker, the
schedule kept, Retry-After honoured, final failures dead-lettered, replay,
crash safety, deactivation, and a slow endpoint kept from the others.

Schedules here are seconds long and jitter is off (HOOKBRIDGE_RETRY_JITTER=0)
so times can be checked: an attempt may come late by the tolerance, never
early."""
import json
import os
import subprocess
import time

import psycopg2
import pytest

from hbtest.avro import decode
from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier, produce, topic_records
from hbtest.webhooks import signature_valid
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql

LATE_TOLERANCE_S = 2.5 * SLOW  # how late an attempt may fire on a loaded 2-core machine


def stack(procs, workdir, db_url, schedule, receiver_args=None, retrier=True, env=None,
          new_broker=None, broker_schedule=None):
    """new_broker: the fixture, for a test that runs on Apache Kafka too;
    broker_schedule: the tiers to create, when not the services' schedule's."""
    if new_broker:
        broker = new_broker(retry_schedule=broker_schedule or schedule)
    else:
        broker = Broker(procs, workdir, retry_schedule=broker_schedule or schedule)
    env = dict({"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0"},
               **(env or {}))
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                        **(receiver_args or {}))
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=env) if retrier else None
    d.wait_ready()
    if r:
        r.wait_ready()
    return broker, receiver, d, r


def attempts(db_url, delivery_id):
    return sql(db_url, "SELECT attempt, outcome, http_status, error FROM hookbridge.delivery_attempts "
               "WHERE delivery_id=%s ORDER BY attempt, started_at", delivery_id)


def delivery(db_url, sub):
    rows = sql(db_url, "SELECT delivery_id, status, attempts, last_error FROM hookbridge.deliveries "
               "WHERE subscription_id=%s", sub)
    return rows[0] if rows else None


def failed_delivery(db_url, sub, timeout, what):
    """Waits until sub's delivery has failed finally; its delivery() row."""
    return wait_until(lambda: (row := delivery(db_url, sub)) and row[1] == "failed" and row,
                      timeout, what)


def dlq_messages(broker, want=0):
    """Everything on the dead-letter topic now, after waiting until at least
    `want` messages are there (a service may still be producing them)."""
    return topic_records(broker.bootstrap, broker.dlq_topic, want=want)


@pytest.mark.apache
def test_fails_twice_then_arrives_on_schedule(db_url, procs, workdir, new_broker):
    """503, 503, then 204: the receiver sees the same delivery three times,
    1 s and then 2 s apart (the schedule), each freshly signed."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s,2s,3s",
                                   receiver_args={"fail_first": 2}, new_broker=new_broker)
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    ev = event("user.session.start")
    produce(broker.bootstrap, [ev])
    wait_until(lambda: len(receiver.events()) == 1, 30 * SLOW, "the event after two failures")
    posts = receiver.posts()
    assert [p["status"] for p in posts] == [503, 503, 204]
    assert len({p["headers"]["webhook-id"] for p in posts}) == 1, "same webhook-id every attempt"
    assert all(signature_valid(SECRET, p) for p in posts)
    stamps = [int(p["headers"]["webhook-timestamp"]) for p in posts]
    assert stamps == sorted(stamps)
    t = [p["time_ms"] / 1000 for p in posts]
    for gap, want in ((t[1] - t[0], 1.0), (t[2] - t[1], 2.0)):
        assert want - 0.05 <= gap <= want + LATE_TOLERANCE_S, f"gap {gap:.2f}s, schedule {want}s"
    did, status, n, _ = wait_until(
        lambda: (row := delivery(db_url, sub)) and row[1] == "delivered" and row, 10, "the log")
    assert n == 3
    # /metrics: the dispatcher's attempt failed (a 5xx answer, enqueued on the 1s
    # tier); the retrier's two attempts: one 5xx (to the 2s tier), one 2xx.
    assert d.metric('hookbridge_responses_total{class="5xx"}') == 1
    assert d.metric('hookbridge_retries_enqueued_total{tier="1s"}') == 1
    assert r.metric('hookbridge_responses_total{class="5xx"}') == 1
    assert r.metric('hookbridge_responses_total{class="2xx"}') == 1
    assert r.metric('hookbridge_retries_enqueued_total{tier="2s"}') == 1
    assert r.metric('hookbridge_deliveries_total{outcome="delivered"}') == 1
    assert [(a[0], a[1], a[2]) for a in attempts(db_url, did)] == [
        (1, "retry", 503), (2, "retry", 503), (3, "delivered", 204)]


@pytest.mark.apache
def test_always_failing_ends_in_the_dlq_with_every_attempt_logged(db_url, procs, workdir,
                                                                  new_broker):
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s,1s",
                                   receiver_args={"status": 500}, new_broker=new_broker)
    sub = register_verified(db_url, receiver.url, ["user.account.lock"])
    produce(broker.bootstrap, [event("user.account.lock")])
    did, status, n, err = failed_delivery(db_url, sub, 30 * SLOW, "the delivery to fail finally")
    assert n == 3, "the first attempt plus one per schedule step"
    assert "HTTP 500" in err and "attempts used up" in err
    assert [(a[0], a[1], a[2]) for a in attempts(db_url, did)] == [
        (1, "retry", 500), (2, "retry", 500), (3, "failed", 500)]
    assert len(receiver.posts()) == 3
    # On the dead-letter topic: a DeliveryRetry with the body and the final error.
    msgs = dlq_messages(broker, want=1)
    assert len(msgs) == 1
    assert msgs[0].key.decode() == sub
    dr = decode("delivery_retry", msgs[0].value)
    assert dr["delivery_id"] == did and dr["subscription_id"] == sub
    assert dr["attempt"] == 3 and dr["last_status"] == 500
    assert json.loads(dr["body"])["data"]["events"][0]["eventType"] == "user.account.lock"
    # review 14: nothing unfinished, nothing counted against HOOKBRIDGE_MAX_PENDING_BYTES
    wait_until(lambda: d.metric("hookbridge_pending_payload_bytes", -1) ==
               r.metric("hookbridge_pending_payload_bytes", -1) == 0 or None,
               10 * SLOW, "the payload bytes held to come back to 0")


def test_retry_after_is_honoured(db_url, procs, workdir):
    """A 503 with Retry-After: 3 waits 3 s although the schedule says 1 s."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s",
                                   receiver_args={"fail_first": 1, "retry_after": 3})
    register_verified(db_url, receiver.url, ["user.session.end"])
    produce(broker.bootstrap, [event("user.session.end")])
    wait_until(lambda: len(receiver.events()) == 1, 30 * SLOW, "the retried event")
    t = [p["time_ms"] / 1000 for p in receiver.posts()]
    assert len(t) == 2
    assert 3.0 - 0.05 <= t[1] - t[0] <= 3.0 + LATE_TOLERANCE_S


def test_4xx_is_final_no_retry(db_url, procs, workdir):
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s,1s",
                                   receiver_args={"status": 410})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    did, status, n, err = failed_delivery(db_url, sub, 20 * SLOW, "the final failure")
    assert n == 1 and "HTTP 410" in err
    assert len(dlq_messages(broker, want=1)) == 1
    # A second attempt can only come from a delay tier: nothing was put there
    # (instead of watching for one longer than the whole schedule).
    assert topic_records(broker.bootstrap, broker.retry_prefix + "1s") == []
    assert len(receiver.posts()) == 1, "a 4xx is not retried"


def test_replay_sends_a_dead_lettered_delivery_again(db_url, procs, workdir):
    """Fails its two attempts, is dead-lettered; replay() delivers it with
    the same webhook-id and the log ends 'delivered'."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s",
                                   receiver_args={"fail_first": 2})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    did, *_ = failed_delivery(db_url, sub, 30 * SLOW, "the dead-lettered delivery")
    assert sql(db_url, "SELECT hookbridge.replay(%s)", did)[0][0] == did
    wait_until(lambda: len(receiver.events()) == 1, 20 * SLOW, "the replayed delivery")
    assert {p["headers"]["webhook-id"] for p in receiver.posts()} == {did}
    wait_until(lambda: delivery(db_url, sub)[1] == "delivered", 10, "the log to say delivered")
    # Replaying something that is not failed is refused with its own SQLSTATE.
    try:
        sql(db_url, "SELECT hookbridge.replay(%s)", did)
        raise AssertionError("replay of a delivered delivery was accepted")
    except psycopg2.Error as e:
        assert e.pgcode == "HB021" and "only failed or dropped deliveries" in e.pgerror


def test_cancel_stops_the_retries_of_a_delivery(db_url, procs, workdir):
    """docs/sql.md, cancel: a delivery being retried is given up on. Its
    status becomes dropped with the reason, the retry that was pending is
    discarded when it comes due (the retrier says so) instead of being sent,
    and what cannot be cancelled is refused with HB028 naming its status."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "3s,3s,3s,3s",
                                   receiver_args={"status": 503})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    did = wait_until(lambda: (row := delivery(db_url, sub)) and row[1] == "retry" and row[0],
                     20 * SLOW, "the first attempt failed and retried")
    sql(db_url, "SELECT hookbridge.cancel(%s, %s)", did, "endpoint retired")
    assert delivery(db_url, sub)[1:] == ("dropped", 1, "cancelled: endpoint retired")
    wait_until(lambda: "the delivery is already dropped" in r.proc.output(), 20 * SLOW,
               "the pending retry discarded when due")
    assert len(receiver.posts()) == 1, "a cancelled delivery was attempted again"
    assert delivery(db_url, sub)[1:] == ("dropped", 1, "cancelled: endpoint retired")
    with pytest.raises(psycopg2.Error) as e:
        sql(db_url, "SELECT hookbridge.cancel(%s)", did)
    assert e.value.pgcode == "HB028" and f"delivery {did} is dropped" in e.value.pgerror


def test_a_replay_asked_for_by_mistake_is_cancelled_before_it_is_made(db_url, procs, workdir):
    """A delivery refused for good (410); its replay is asked for while no
    retrier runs, then cancelled: when a retrier starts, nothing is sent
    again and the delivery stays dropped with the reason. Before, cancel()
    refused a delivery whose replay was requested (HB028) until the replay
    had been made."""
    broker, receiver, d, _ = stack(procs, workdir, db_url, "1s", receiver_args={"status": 410},
                                   retrier=False)
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    did, *_ = failed_delivery(db_url, sub, 20 * SLOW, "the delivery refused for good")
    sql(db_url, "SELECT hookbridge.replay(%s)", did)
    sql(db_url, "SELECT hookbridge.cancel(%s, %s)", did, "replayed by mistake")
    assert delivery(db_url, sub)[1:] == ("dropped", 1, "cancelled: replayed by mistake")
    r = Retrier(procs, db_url, broker.bootstrap,
                extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1s", "HOOKBRIDGE_RETRY_JITTER": "0"})
    r.wait_ready()
    time.sleep(3 * SLOW)  # a replay is claimed within a second
    assert len(receiver.posts()) == 1, "the cancelled replay was sent"
    assert "replay requested" not in r.proc.output()
    assert delivery(db_url, sub)[1:] == ("dropped", 1, "cancelled: replayed by mistake")


def test_a_replay_gets_the_whole_schedule_again(db_url, procs, workdir):
    """A replay is a fresh start: when its first attempt fails, it is retried
    on the whole schedule again (two retries here), not dead-lettered at once
    because the original attempts used the schedule up."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s,1s",
                                   receiver_args={"fail_first": 5})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    did, *_ = failed_delivery(db_url, sub, 30 * SLOW, "the dead-lettered delivery (3 attempts)")
    sql(db_url, "SELECT hookbridge.replay(%s)", did)
    # replay attempt fails (4), its first retry fails (5), its second is taken (6)
    wait_until(lambda: len(receiver.events()) == 1, 30 * SLOW, "the replay's last retry")
    assert [p["status"] for p in receiver.posts()] == [503] * 5 + [204]
    wait_until(lambda: delivery(db_url, sub)[1] == "delivered", 10, "the log to say delivered")


def test_retrier_killed_while_retries_wait_loses_nothing_and_sends_nothing_early(
        db_url, procs, workdir):
    broker, receiver, d, r = stack(procs, workdir, db_url, "5s",
                                   receiver_args={"fail_first": 1},
                                   env={"HOOKBRIDGE_KAFKA_SESSION_TIMEOUT_MS": "6000"})
    register_verified(db_url, receiver.url, ["user.session.start"])
    n = 30
    produce(broker.bootstrap, [event("user.session.start") for _ in range(n)])
    wait_until(lambda: len(receiver.posts()) >= n, 20 * SLOW, "every first attempt")
    time.sleep(1)  # the retrier has read the waiting retries and paused on them
    r.proc.kill()
    r.restart()
    wait_until(lambda: len(receiver.events()) == n, 60 * SLOW, "every retried event")
    by_id = {}
    for p in receiver.posts():
        by_id.setdefault(p["headers"]["webhook-id"], []).append(p)
    assert len(by_id) == n
    for posts in by_id.values():
        assert posts[0]["status"] == 503
        ok = [p for p in posts if p["status"] == 204]
        assert ok, "delivered after the restart"
        assert ok[0]["time_ms"] - posts[0]["time_ms"] >= 5000 - 50, "never early"


@pytest.mark.apache
def test_a_tier_removed_from_the_schedule_is_drained_not_stranded(db_url, procs, workdir,
                                                                  new_broker):
    """The schedule changes from 1s,6s to 1s,2s while a retry waits in the 6s
    tier: the retriers of the new schedule still read that tier, send the
    retry when it is due (not early), and say so. Before, nothing consumed a
    tier that left the schedule, so its retries were never sent nor
    dead-lettered."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s,6s",
                                   receiver_args={"fail_first": 2}, new_broker=new_broker,
                                   broker_schedule="1s,2s,6s")  # the tiers of both schedules
    new = {"HOOKBRIDGE_RETRY_SCHEDULE": "1s,2s", "HOOKBRIDGE_RETRY_JITTER": "0"}
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    # attempt 2 failed: attempt 3 waits in the 6s tier
    did = wait_until(lambda: (row := delivery(db_url, sub)) and row[2] == 2 and row[0], 30 * SLOW,
                     "the second attempt to fail")
    r.proc.stop()
    d.proc.stop()
    d2 = Dispatcher(procs, db_url, broker.bootstrap, extra_env=new, name="dispatcher-new")
    r2 = Retrier(procs, db_url, broker.bootstrap, extra_env=new, name="retrier-new")
    d2.wait_ready()
    r2.wait_ready()
    wait_until(lambda: len(receiver.events()) == 1, 30 * SLOW, "the retry of the removed tier")
    posts = receiver.posts()
    assert [p["status"] for p in posts] == [503, 503, 204]
    assert posts[2]["time_ms"] - posts[1]["time_ms"] >= 6000 - 50, "never early"
    wait_until(lambda: delivery(db_url, sub)[1] == "delivered", 10, "the log to say delivered")
    assert [(a[0], a[1]) for a in attempts(db_url, did)] == [
        (1, "retry"), (2, "retry"), (3, "delivered")]
    tier6 = broker.retry_prefix + "6s"
    assert f"{tier6} is not a tier of HOOKBRIDGE_RETRY_SCHEDULE" in r2.proc.output()
    if not hasattr(broker, "env"):
        return  # the devbroker has no DescribeConfigs for hookbridge-migrate topics
    # The operator's view: hookbridge-migrate topics names the retired tier,
    # which is not a problem (exit 0), and says when to delete it.
    env = dict(os.environ, **broker.env("1s,2s"))
    check = subprocess.run([str(BIN / "hookbridge-migrate"), "topics", "--check"], env=env,
                           capture_output=True, text=True, timeout=60 * SLOW)
    assert check.returncode == 0, check.stdout + check.stderr
    line = next(l for l in check.stdout.splitlines() if tier6 in l)
    assert line.startswith("retired") and "delete it once" in line, line


@pytest.mark.parametrize("how,why", [("deactivate", "inactive"), ("deregister", "deregistered")])
def test_pending_retries_of_a_stopped_subscription_are_dropped(db_url, procs, workdir, how, why):
    broker, receiver, d, r = stack(procs, workdir, db_url, "3s",
                                   receiver_args={"status": 503})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start") for _ in range(3)])
    wait_until(lambda: len(receiver.posts()) == 3, 20 * SLOW, "the first attempts")
    sql(db_url, f"SELECT hookbridge.{how}(%s)", sub)
    rows = wait_until(
        lambda: (rs := sql(db_url, "SELECT status, last_error FROM hookbridge.deliveries "
                           "WHERE subscription_id=%s", sub)) and
        all(s == "dropped" for s, _ in rs) and rs, 20 * SLOW, "the retries to be dropped")
    assert len(rows) == 3 and all(why in e for _, e in rows)
    assert len(receiver.posts()) == 3, "no attempt after deactivation"
    assert r.proc.alive()


def test_a_slow_endpoint_does_not_delay_a_healthy_one(db_url, procs, workdir):
    """The slow endpoint may hold only max_host_connections requests; the
    healthy one gets its events at once."""
    broker = Broker(procs, workdir)
    slow = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                    name="slow", delay_ms=3000)
    fast = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                    name="fast")
    d = Dispatcher(procs, db_url, broker.bootstrap,
                   extra_env={"HOOKBRIDGE_MAX_HOST_CONNECTIONS": "4",
                              "HOOKBRIDGE_MAX_IN_FLIGHT": "16",
                              "HOOKBRIDGE_SHUTDOWN_TIMEOUT": "1s"})  # do not wait for slow
    d.wait_ready()
    register_verified(db_url, slow.url, ["user.session.start"])
    register_verified(db_url, fast.url, ["user.session.start"])
    n = 40
    produce(broker.bootstrap, [event("user.session.start") for _ in range(n)])
    wait_until(lambda: len(fast.events()) == n, 10 * SLOW, "all events at the healthy endpoint")
    assert len(slow.posts()) < n, "the healthy endpoint did not wait for the slow one"


def test_circuit_breaker_skips_a_failing_endpoint_then_probes_it(db_url, procs, workdir):
    """After 3 consecutive failures, new deliveries to that endpoint are not
    attempted but wait in the first delay tier (logged 'circuit open');
    after the cool-down one attempt probes it again."""
    broker, receiver, d, r = stack(
        procs, workdir, db_url, "30s", receiver_args={"status": 503}, retrier=False,
        env={"HOOKBRIDGE_CIRCUIT_FAILURES": "3", "HOOKBRIDGE_CIRCUIT_COOLDOWN": "4s"})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start") for _ in range(3)])
    wait_until(lambda: len(receiver.posts()) == 3, 20 * SLOW, "three failed attempts")
    opened = time.time()
    produce(broker.bootstrap, [event("user.session.start") for _ in range(5)])
    rows = wait_until(
        lambda: (rs := sql(db_url, "SELECT status, attempts, last_error FROM hookbridge.deliveries "
                           "WHERE subscription_id=%s AND last_error LIKE 'circuit open%%'", sub))
        and len(rs) == 5 and rs, 20 * SLOW, "five skipped deliveries")
    assert all(s == "retry" and n == 0 for s, n, _ in rows), rows
    assert len(receiver.posts()) == 3, "no attempt while the circuit is open"
    assert "circuit open after 3 consecutive failures" in d.proc.output()
    # After the cool-down, the next new delivery is attempted (the probe).
    time.sleep(max(0, 4.5 - (time.time() - opened)))
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(receiver.posts()) == 4, 20 * SLOW, "the probe attempt")


def test_the_retriers_circuit_counts_skipped_attempts_so_the_schedule_ends(db_url, procs,
                                                                            workdir):
    """An endpoint that refuses connections, a circuit that opens after one
    failure and stays open: the retrier does not attempt it again, yet the
    delivery still ends 'failed' on the dead-letter topic after the
    scheduled number of attempts, the skipped ones logged as attempts not
    made."""
    from hbtest.endpoints import ChallengeAnswering, serve

    class Refusing(ChallengeAnswering):
        def do_POST(self):
            raise AssertionError("the endpoint is closed: nothing can reach it")

    broker, receiver, d, r = stack(
        procs, workdir, db_url, "1s,1s,1s,1s",
        env={"HOOKBRIDGE_CIRCUIT_FAILURES": "1", "HOOKBRIDGE_CIRCUIT_COOLDOWN": "10m"})
    srv = serve(Refusing)
    sub = register_verified(db_url, srv.url, ["user.session.start"])
    srv.shutdown()
    srv.server_close()  # verified, then closed: connections are refused
    produce(broker.bootstrap, [event("user.session.start")])
    did, status, n, err = failed_delivery(db_url, sub, 40 * SLOW, "the delivery to fail finally")
    assert n == 5, "the first attempt plus one per schedule step"
    assert "circuit open" in err and "attempts used up" in err, err
    rows = attempts(db_url, did)
    assert [(a[0], a[1]) for a in rows] == [
        (1, "retry"), (2, "retry"), (3, "retry"), (4, "retry"), (5, "failed")], rows
    # The dispatcher's attempt and the retrier's first were made (and refused);
    # the retrier's circuit then skipped the other three.
    assert all("circuit open" not in (a[3] or "") for a in rows[:2]), rows
    assert all((a[3] or "").startswith("attempt not made: circuit open") for a in rows[2:]), rows
    assert r.metric("hookbridge_circuit_skips_total") == 3
    assert r.metric("hookbridge_circuit_opens_total") == 1
    msgs = dlq_messages(broker, want=1)
    assert len(msgs) == 1
    dr = decode("delivery_retry", msgs[0].value)
    assert dr["delivery_id"] == did and dr["attempt"] == 5


def test_endpoint_failing_for_the_period_is_deactivated_with_the_reason(db_url, procs, workdir):
    broker, receiver, d, r = stack(
        procs, workdir, db_url, "1s,1s,1s,1s,1s,1s,1s,1s", receiver_args={"status": 500},
        env={"HOOKBRIDGE_AUTO_DEACTIVATE_AFTER": "3s"})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    status, reason = wait_until(
        lambda: (row := sql(db_url, "SELECT status, deactivation_reason FROM hookbridge.subscriptions "
                            "WHERE id=%s", sub)[0]) and row[0] == "inactive" and row,
        30 * SLOW, "the automatic deactivation")
    assert reason.startswith("deactivated automatically: every attempt failed since")
    assert "HTTP 500" in reason
    # The retrier logs the reason once PostgreSQL has answered, which may be
    # a moment after the row is visible here.
    wait_until(lambda: "deactivated automatically" in r.proc.output(), 10 * SLOW,
               "the retrier to log the deactivation")
    # Its remaining retries are dropped, and activate() clears the reason.
    wait_until(lambda: delivery(db_url, sub)[1] == "dropped", 20 * SLOW, "the retry to be dropped")
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    assert sql(db_url, "SELECT deactivation_reason FROM hookbridge.subscriptions WHERE id=%s",
               sub)[0][0] is None


def test_poison_on_a_delay_tier_is_dead_lettered_and_the_tier_moves_on(db_url, procs, workdir):
    from kafka import KafkaProducer
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s",
                                   receiver_args={"fail_first": 1})
    register_verified(db_url, receiver.url, ["user.session.start"])
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap.split(","))
    for p in range(6):  # one on every partition of the tier
        kp.send("hookbridge.retry.1s", b"\xc3\x01not really avro", partition=p)
    kp.flush()
    kp.close()
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(receiver.events()) == 1, 20 * SLOW, "the retry behind the poison")
    msgs = dlq_messages(broker, want=6)
    assert len(msgs) == 6
    h = dict(msgs[0].headers)
    assert h["hookbridge-source-topic"] == b"hookbridge.retry.1s"
    assert h["hookbridge-reason"]
    assert "poison message" in r.proc.output()


def test_replay_failed_sends_every_failure_of_a_subscription_since_a_time(db_url, procs, workdir):
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s",
                                   receiver_args={"fail_first": 2})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start") for _ in range(3)])
    wait_until(lambda: (rs := sql(db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE "
                                  "subscription_id=%s AND status='failed'", sub)) and
               rs[0][0] == 3, 30 * SLOW, "three failed deliveries")
    # Nothing failed after now: nothing to replay.
    assert sql(db_url, "SELECT hookbridge.replay_failed(%s, now())", sub)[0][0] == 0
    assert sql(db_url, "SELECT hookbridge.replay_failed(%s, now() - interval '1 hour')",
               sub)[0][0] == 3
    wait_until(lambda: len(receiver.events()) == 3, 20 * SLOW, "the three replayed deliveries")
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE "
                           "subscription_id=%s AND status='delivered'", sub)[0][0] == 3,
               10 * SLOW, "the log to say delivered")
    assert "replay requested" in r.proc.output()


@pytest.mark.sql_only
@pytest.mark.parametrize("call,code,msg", [
    ("SELECT hookbridge.replay('00000000-0000-4000-8000-000000000000')", "HB027",
     "is not in the delivery log, which keeps 30 days"),
    ("SELECT hookbridge.replay(NULL)", "HB020", "must not be NULL"),
    ("SELECT hookbridge.replay_failed('00000000-0000-4000-8000-000000000000', now())", "HB010",
     "not found"),
    ("SELECT hookbridge.replay_failed(NULL, now())", "HB015", "subscription id must not be NULL"),
    ("SELECT hookbridge.replay_failed('00000000-0000-4000-8000-000000000000', NULL)", "HB012",
     "since must not be NULL"),
    ("SELECT hookbridge.cancel('00000000-0000-4000-8000-000000000000')", "HB027",
     "is not in the delivery log, which keeps 30 days"),
    ("SELECT hookbridge.cancel(NULL)", "HB020", "must not be NULL"),
    ("SELECT hookbridge.replay_dropped(NULL, now())", "HB015", "subscription id must not be NULL"),
    ("SELECT hookbridge.replay_dropped('00000000-0000-4000-8000-000000000000', NULL)", "HB012",
     "since must not be NULL"),
    ("SELECT hookbridge.replay_dropped('00000000-0000-4000-8000-000000000000', now())", "HB010",
     "not found"),
])
def test_replay_and_cancel_errors(db_url, call, code, msg):
    with pytest.raises(psycopg2.Error) as e:
        sql(db_url, call)
    assert e.value.pgcode == code and msg in e.value.pgerror
