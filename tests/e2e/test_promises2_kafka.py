"""Promises that need Apache Kafka.

README.md, Dead letters: "A broker that refuses a retry or dead letter gets
it again every second; the source offset waits, nothing is dropped"
(docs/design.md, Guarantees: "A message the broker refuses is produced again
every second; its source offset waits"). On Apache Kafka (the devbroker
enforces no topic's max.message.bytes): the delay tier and the dead-letter
topic take at most 512 bytes per message, less than one DeliveryRetry, so the
broker refuses both with MESSAGE_TOO_LARGE; each limit is raised in turn and
the refused message goes through.

docs/operations.md, Failover: "a second process with an id already in use
fences the first one out": the one fenced out says so and is not ready."""
import json
import re
import signal
import time
from datetime import datetime

from hbtest.kafka import alter_topic_configs
from hbtest.kfaults import committed
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Retrier, produce, topic_records
from test_delivery import event, sql
from test_promises import checking, verified_active

KAFKA_DEFAULT_MAX_MESSAGE_BYTES = "1048588"


def set_max_message_bytes(bootstrap, topics, value):
    """Sets max.message.bytes on the topics (AlterConfigs: the topics' other
    settings go back to the broker's defaults, which does not matter here),
    once the broker applies it."""
    alter_topic_configs(bootstrap, {t: {"max.message.bytes": value} for t in topics})


def refusal_lines(svc, topic):
    """The service's log lines (parsed) saying the broker refused a message
    for topic."""
    return [json.loads(line) for line in svc.proc.output().splitlines()
            if f"did not take a message for {topic} " in line]


def refusals(svc, topic):
    """The times (s) of the service's log lines saying the broker refused a
    message for topic."""
    return [datetime.strptime(rec["time"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
            for rec in refusal_lines(svc, topic)]


def gaps(times):
    return [round(b - a, 2) for a, b in zip(times, times[1:])]


def test_a_retry_and_a_dead_letter_the_broker_refuses_are_produced_again_until_taken(
        apache_kafka, db_url, procs, workdir):
    """One event, an endpoint answering 503, one retry ("1s"). The
    dispatcher's retry is refused: a warn line about every second naming the
    topic and Kafka's reason, hookbridge_kafka_errors_total counting, no
    second HTTP attempt, nothing in the delivery log, the event's offset not
    committed. Once the tier takes 1 MiB again the retry goes through (the
    offset is committed), the retrier attempts it, and its dead letter is
    refused likewise until the dead-letter topic takes it: then the log says
    failed, the dead letter is on the topic once, the tier's offset committed;
    only then is it said and counted as dead-lettered.

    Checked to fail without the promise: with hb_outbox.c dropping a refused
    message (on_produced releasing its gate instead of queueing it again),
    the refusal is logged once, not every second ("refused again every
    second" times out). About 12 s, plus the broker's start (5 s) when it is
    the worker's first Apache Kafka test."""
    schedule = "1s"
    space = apache_kafka.space(retry_schedule=schedule)
    tier = space.retry_prefix + schedule
    set_max_message_bytes(space.bootstrap, [tier, space.dlq_topic], 512)
    rcv = checking(procs, workdir, status=503)
    sub = verified_active(db_url, rcv.url)
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0"}
    d = Dispatcher(procs, db_url, space.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, space.bootstrap, extra_env=env)
    d.wait_ready()
    r.wait_ready()
    produce(space.bootstrap, [event("user.session.start")])

    # The retry refused, again and again: what an operator sees.
    wait_until(lambda: len(refusals(d, tier)) >= 4, 20 * SLOW,
               "the retry refused again every second")
    print(f"dispatcher: refused every {gaps(refusals(d, tier))} s")
    assert all(0.9 <= g <= 3 * SLOW for g in gaps(refusals(d, tier))), gaps(refusals(d, tier))
    assert "(Broker: Message size too large): trying again in 1 s" in d.proc.output()
    assert d.metric("hookbridge_kafka_errors_total") >= 4
    assert len(rcv.posts()) == 1, "the endpoint was attempted again instead of the broker"
    assert sql(db_url, "SELECT count(*) FROM hookbridge.deliveries")[0][0] == 0
    dgroup, rgroup = space.group("hookbridge-dispatcher"), space.group("hookbridge-retrier")
    assert committed(space.bootstrap, dgroup, space.events_topic) == 0, \
        "the event's offset moved before its retry was on the tier"

    # The cause removed: the retry goes through, its dead letter is refused.
    set_max_message_bytes(space.bootstrap, [tier], KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
    wait_until(lambda: committed(space.bootstrap, dgroup, space.events_topic) == 1, 20 * SLOW,
               "the event's offset committed once the retry was taken")
    wait_until(lambda: len(refusals(r, space.dlq_topic)) >= 3, 20 * SLOW,
               "the dead letter refused again every second")
    print(f"retrier: refused every {gaps(refusals(r, space.dlq_topic))} s")
    posts = rcv.posts()
    assert [p["status"] for p in posts] == [503, 503]
    assert posts[0]["headers"]["webhook-id"] == posts[1]["headers"]["webhook-id"]
    # Each refusal names the delivery it holds back, and its subscription.
    for svc, topic in ((d, tier), (r, space.dlq_topic)):
        assert {(x.get("delivery_id"), x.get("subscription_id"))
                for x in refusal_lines(svc, topic)} == {(posts[0]["headers"]["webhook-id"], sub)}
    assert sql(db_url, "SELECT status, attempts FROM hookbridge.deliveries") == [("retry", 1)]
    assert committed(space.bootstrap, rgroup, tier) == 0, \
        "the retry's offset moved before its dead letter was on the topic"
    # Not dead-lettered yet, and not said or counted as if it were.
    assert "dead-lettered" not in r.proc.output()
    assert r.metric("hookbridge_dead_letters_total") == 0

    set_max_message_bytes(space.bootstrap, [space.dlq_topic], KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
    wait_until(lambda: sql(db_url, "SELECT status, attempts FROM hookbridge.deliveries")
               == [("failed", 2)], 20 * SLOW, "the delivery logged failed")
    wait_until(lambda: committed(space.bootstrap, rgroup, tier) == 1, 20 * SLOW,
               "the retry's offset committed once the dead letter was taken")
    dlq = topic_records(space.bootstrap, space.dlq_topic, want=1)
    assert len(dlq) == 1
    assert len(rcv.posts()) == 2
    assert r.proc.output().count("delivery failed after 2 attempt(s), dead-lettered") == 1
    assert r.metric("hookbridge_dead_letters_total") == 1
    assert not re.search(r'"level":"error"', d.proc.output() + r.proc.output())


def test_a_retry_still_refused_at_sigterm_is_left_unsent_said_so_and_made_again_after_restart(
        apache_kafka, db_url, procs, workdir):
    """docs/operations.md, Health, shutdown and logs: SIGTERM lets the work in
    flight finish for at most HOOKBRIDGE_SHUTDOWN_TIMEOUT, then exits 0; what
    is unfinished is consumed again by the next owner. A retry the broker
    keeps refusing is resent until that deadline, then left: the service says
    so (it used to leave it without a word), exits 0, and the event's offset
    is not committed. Restarted once the tier takes the message again, the
    dispatcher reads the event again and makes the attempt again (the same
    webhook-id), and its retry goes through.

    Checked to fail without the fix: before hb_outbox_drain counted the
    refused messages, the stop said nothing about the retry left unsent
    ("left unsent" not in the log). About 15 s."""
    schedule = "1h"  # the retry goes to the tier; no retrier needed
    space = apache_kafka.space(retry_schedule=schedule)
    tier = space.retry_prefix + schedule
    set_max_message_bytes(space.bootstrap, [tier], 512)
    rcv = checking(procs, workdir, status=503)
    verified_active(db_url, rcv.url)
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0",
           "HOOKBRIDGE_SHUTDOWN_TIMEOUT": "2s"}
    d = Dispatcher(procs, db_url, space.bootstrap, extra_env=env)
    d.wait_ready()
    produce(space.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(refusals(d, tier)) >= 2, 20 * SLOW, "the retry refused")

    t0 = time.monotonic()
    d.proc.signal(signal.SIGTERM)
    rc = d.proc.p.wait(30 * SLOW)
    took = time.monotonic() - t0
    print(f"stopped in {took:.1f} s, exit {rc}, refused {len(refusals(d, tier))} times")
    out = d.proc.output()
    assert rc == 0, out[-2000:]
    assert took < 2 + 5 * SLOW, f"the stop took {took:.1f} s"
    assert "1 retry or dead-letter message(s) left unsent (1 refused by the broker); " \
        "their sources will be read again" in out, out[-2000:]
    dgroup = space.group("hookbridge-dispatcher")
    assert committed(space.bootstrap, dgroup, space.events_topic) == 0
    assert sql(db_url, "SELECT count(*) FROM hookbridge.deliveries")[0][0] == 0

    set_max_message_bytes(space.bootstrap, [tier], KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
    d.restart()
    wait_until(lambda: sql(db_url, "SELECT status, attempts FROM hookbridge.deliveries")
               == [("retry", 1)], 30 * SLOW, "the attempt made again and its retry logged")
    wait_until(lambda: committed(space.bootstrap, dgroup, space.events_topic) == 1, 20 * SLOW,
               "the event's offset committed")
    posts = rcv.posts()
    assert [p["status"] for p in posts] == [503, 503]
    assert posts[0]["headers"]["webhook-id"] == posts[1]["headers"]["webhook-id"]
    assert len(topic_records(space.bootstrap, tier, want=1)) == 1


def test_a_dispatcher_fenced_out_by_another_with_its_instance_id_says_so_and_is_not_ready(
        apache_kafka, db_url, procs, workdir):
    """Two dispatchers with the same HOOKBRIDGE_INSTANCE_ID: the second fences
    the first out of the group (Kafka's static membership). The first one's
    consumer is unusable from then on: it logs that at error and /readyz is
    503 with the reason, so the misconfiguration is seen; the second one
    delivers. (It used to stay ready, consuming nothing, after one librdkafka
    line.)

    Checked to fail without the fix: before hb_consumer.c's fatal_check, the
    fenced dispatcher stayed ready ("/readyz 503 on the fenced one" times
    out). About 10 s."""
    space = apache_kafka.space()
    rcv = checking(procs, workdir)
    verified_active(db_url, rcv.url)
    env = {"HOOKBRIDGE_INSTANCE_ID": "hookbridge-dispatcher-0"}
    first = Dispatcher(procs, db_url, space.bootstrap, extra_env=env, name="dispatcher-first")
    first.wait_ready()
    second = Dispatcher(procs, db_url, space.bootstrap, extra_env=env, name="dispatcher-second")
    second.wait_ready()
    status, body = wait_until(lambda: (r := first.get("/readyz"))[0] == 503 and r, 20 * SLOW,
                              "/readyz 503 on the fenced one")
    print(f"fenced: {body.strip()!r}")
    assert body.startswith("Kafka consumer unusable: ") and "fenced" in body, body
    assert re.search(r'"level":"error".*"msg":"Kafka consumer unusable: .*fenced.*; it '
                     r'consumes nothing more until the service is restarted"',
                     first.proc.output()), first.proc.output()[-3000:]
    assert first.proc.alive() and first.get("/healthz")[0] == 200
    ev = event("user.session.start")
    produce(space.bootstrap, [ev])
    wait_until(lambda: [e["uuid"] for _, e in rcv.events()] == [ev["uuid"]], 20 * SLOW,
               "the event delivered by the other one")
    assert second.get("/readyz")[0] == 200
    assert first.metric("hookbridge_messages_consumed_total") == 0
