"""Review 76: the rate-limited log lines (review 71) from the operator's
side: a summary still comes at shutdown, a topic refusing held messages does
not write a line per message a second, and many tenants failing at once do
not write a line each per window."""
import collections
import re
import signal
import time

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce, topic_records
from test_delivery import event, sql

from test_review71_faults import LEFT_OUT, kind, log_lines


def many_subscriptions(db_url, base, n):
    """n active, verified subscriptions to user.session.start, each on its own
    path of base."""
    sql(db_url, "SELECT hookbridge.register('t' || i, %s || '/p' || i, "
                "ARRAY['user.session.start'], '{}'::jsonb) FROM generate_series(1, %s) i",
        base, n)
    sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                "status = 'active'")


def failed_then_stopped(db_url, broker, procs, workdir, subscriptions, events, within):
    """subscriptions on one receiver answering 503, events produced (retry
    schedule 1h: each delivery's first attempt only), every retry logged,
    then SIGTERM: the dispatcher's log lines."""
    rcv = Receiver(procs, workdir, status=503, args=["--quiet"])
    many_subscriptions(db_url, rcv.url, subscriptions)
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": "1h", "HOOKBRIDGE_RETRY_JITTER": "0",
           "HOOKBRIDGE_LOG_LEVEL": "info"}
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    produce(broker.bootstrap, [event("user.session.start") for _ in range(events)])
    n = subscriptions * events
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries")[0][0] == n,
               within * SLOW, f"{n} retries logged")
    d.proc.signal(signal.SIGTERM)
    assert d.proc.p.wait(20 * SLOW) == 0
    return log_lines(d)


def test_the_count_of_lines_left_out_is_said_at_shutdown_not_lost(db_url, broker, procs, workdir):
    """An endpoint answers 503 to 40 deliveries (retry schedule 1h: the
    retries wait on the tier), then the dispatcher is stopped well inside
    the 30 s window. Before, the lines left out of that window were never
    counted anywhere in the log: no "N more ... not logged" line came before
    "stopped" (hb_log_limits_flush waited for the window's end, which the
    process did not live to see). Now the stop writes each limit's summary,
    and the lines written plus the counts add up to the 40 deliveries."""
    lines = failed_then_stopped(db_url, broker, procs, workdir, 1, 40, 20)
    said = [l["msg"] for l in lines if re.match(r"attempt 1 (failed|not made) ", l["msg"])]
    summaries = [l["msg"] for l in lines if LEFT_OUT in l["msg"]]
    print(len(said), summaries)
    assert summaries, "no count of the lines left out before the stop"
    counted = sum(int(s.split(" ", 1)[0]) for s in summaries if '"attempt N ' in s)
    assert len(said) + counted == 40, (len(said), summaries)
    stopped = [i for i, l in enumerate(lines) if l["msg"] == "stopped"][0]
    assert all(i < stopped for i, l in enumerate(lines) if LEFT_OUT in l["msg"])


def test_a_thousand_subscriptions_failing_at_once_are_not_a_line_each(db_url, broker, procs,
                                                                       workdir):
    """1,000 subscriptions (tenants) on one receiver answering 503, one event
    for all of them (retry schedule 1h). Before, the first line of each
    subscription was written past the limit for up to 256 subscriptions per
    kind and per 30 s, again every window: 266 "attempt 1 not made (circuit
    open ...)" lines at once here, and with retries the retrier wrote 532
    lines in a minute of two kinds (8.9 lines/s of each, more than the 5
    lines/s review 71 set out to end). Now the first of at most 20
    subscriptions per window is written besides the 10 lines: at most 30 of
    a kind, and at the stop the counts of the others add up to the 1,000."""
    lines = failed_then_stopped(db_url, broker, procs, workdir, 1000, 1, 30)
    by_kind = collections.Counter(kind(l["msg"]) for l in lines
                                  if re.match(r"attempt 1 (failed|not made) ", l["msg"]))
    print(by_kind)
    assert all(n <= 10 + 20 for n in by_kind.values()), by_kind
    counted = sum(int(l["msg"].split(" ", 1)[0]) for l in lines
                  if LEFT_OUT in l["msg"] and '"attempt N ' in l["msg"])
    assert sum(by_kind.values()) + counted == 1000, (by_kind, counted)


def test_a_tier_refusing_held_retries_writes_no_line_per_retry_a_second(
        apache_kafka, db_url, procs, workdir):
    """A delay tier takes at most 512 bytes a message (Apache Kafka's
    max.message.bytes), less than any retry: 100 deliveries failing (503)
    make 100 retries the broker refuses, each produced again every second.
    Before, each refusal wrote a warn line: 100 lines a second while they
    were held (500 in 5 s), growing with the traffic. Now the first line
    names the topic and Kafka's reason at once, at most 10 more per 30 s
    follow, hookbridge_kafka_errors_total counts every refusal, and the stop
    says how many lines were left out."""
    from test_promises2_kafka import refusals, set_max_message_bytes
    schedule = "1h"
    space = apache_kafka.space(retry_schedule=schedule)
    tier = space.retry_prefix + schedule
    set_max_message_bytes(space.bootstrap, [tier], 512)
    rcv = Receiver(procs, workdir, status=503, args=["--quiet"])
    many_subscriptions(db_url, rcv.url, 1)
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0",
           "HOOKBRIDGE_SHUTDOWN_TIMEOUT": "1s", "HOOKBRIDGE_CIRCUIT_FAILURES": "1000",
           "HOOKBRIDGE_LOG_LEVEL": "info"}
    d = Dispatcher(procs, db_url, space.bootstrap, extra_env=env)
    d.wait_ready()
    produce(space.bootstrap, [event("user.session.start") for _ in range(100)])
    wait_until(lambda: d.metric("hookbridge_kafka_errors_total") >= 100, 20 * SLOW,
               "the 100 retries refused")
    first = len(refusals(d, tier))
    time.sleep(5)
    refused = len(refusals(d, tier))
    print(f"refusal lines: {first} at 100 refused, {refused} 5 s later; "
          f"kafka errors {d.metric('hookbridge_kafka_errors_total')}")
    assert refused >= 1
    assert "(Broker: Message size too large): trying again in 1 s" in d.proc.output()
    assert refused <= 1 + 10, f"{refused} refusal lines in about 5 s"
    assert d.metric("hookbridge_kafka_errors_total") >= 300, "resent every second"
    d.proc.signal(signal.SIGTERM)
    assert d.proc.p.wait(20 * SLOW) == 0
    summary = [l["msg"] for l in log_lines(d)
               if '"... trying again in 1 s"' + LEFT_OUT in l["msg"]]
    print(summary)
    assert summary, d.proc.output()[-2000:]
    assert int(summary[0].split(" ", 1)[0]) >= 500 - refused


def test_poison_messages_too_large_for_the_dead_letter_topic_are_not_a_line_each(
        apache_kafka, db_url, procs, workdir):
    """The dead-letter topic takes at most 100 kB a batch and a producer
    writes 60 undecodable messages of 120 kB: each copy is refused, shrunk
    (without its value) and produced again. Before, each shrink wrote a warn
    line, "poison message copy for ... too large" (60 lines at once, at the
    producer's rate), besides the poison lines review 71 limited. Now the
    first names the topic and where to read the message, at most 10 more
    per 30 s follow, and each copy still reaches the dead-letter topic."""
    from kafka import KafkaProducer
    from test_promises2_kafka import set_max_message_bytes
    space = apache_kafka.space()
    set_max_message_bytes(space.bootstrap, [space.dlq_topic], 100000)
    d = Dispatcher(procs, db_url, space.bootstrap, extra_env={"HOOKBRIDGE_LOG_LEVEL": "info"})
    d.wait_ready()
    kp = KafkaProducer(bootstrap_servers=space.bootstrap.split(","), linger_ms=5)
    for i in range(60):
        kp.send(space.events_topic, value=b"\x00not avro %d " % i + b"x" * 120000)
    kp.flush()
    kp.close()
    wait_until(lambda: len(topic_records(space.bootstrap, space.dlq_topic, want=60)) >= 60
               or None, 30 * SLOW, "every poison message dead-lettered")
    shrunk = [l for l in log_lines(d) if l["msg"].startswith("poison message copy for ")]
    print(f"{len(shrunk)} shrink lines")
    assert shrunk and "too large: dead-lettered without its" in shrunk[0]["msg"]
    assert len(shrunk) <= 1 + 10, len(shrunk)
