"""Review 46: the ingest spool as the lead reordered it in b5104c4 (a
delivery is produced first and written to the spool only when the brokers
have not acknowledged it within HOOKBRIDGE_INGEST_SPOOL_WAIT; the stop
skips its flush while every broker is away). Each test fails on b5104c4.
Real parts on loopback: the producer (hookbridge-producer --listen) and the
devbroker (SIGUSR1 takes every broker down, SIGUSR2 brings them back)."""
import contextlib
import json
import signal
import socket
import threading
import time

from hbtest.ingest import AUTH_HEADER, AUTH_VALUE, PATH, Ingest
from hbtest.procs import SLOW, wait_until
from test_ingest_spool import (FAILURES, REPLAYED, body_of, brokers_down, brokers_up, said,
                               spool_env, spooled, user_event, wait_published)

FAILED = 'hookbridge_ingest_events_total{outcome="failed"}'


@contextlib.contextmanager
def frozen_until_refused(broker, ing, more):
    """The brokers frozen (SIGSTOP) from now until `more` seconds after the
    spool has refused a delivery (the first spool failure counted), or the
    with-block's end. Not a timer started before the request: a request
    that reached its producing late (the test process or the endpoint held
    off the CPU, as in the sanitizer pass: CI 106) found the brokers back
    within the spool wait, was acknowledged in time, and the spool never
    refused it."""
    broker.proc.signal(signal.SIGSTOP)
    done = threading.Event()

    def thaw():
        deadline = time.monotonic() + 20 * SLOW
        while (not done.is_set() and time.monotonic() < deadline and
               (ing.metric(FAILURES) or 0) < 1):
            time.sleep(0.05)
        done.wait(more)
        broker.proc.signal(signal.SIGCONT)
    thawing = threading.Thread(target=thaw)
    thawing.start()
    try:
        yield
    finally:
        done.set()
        thawing.join()
        broker.proc.signal(signal.SIGCONT)


def test_events_that_fail_within_the_spool_wait_are_not_counted_failed_once_spooled(
        broker, procs, workdir):
    """The operator: hookbridge_ingest_events_total{outcome="failed"} counts
    events not acknowledged and not on the spool (docs/operations.md), so
    that a rise means events Okta may have lost. Since the reorder, an event
    whose delivery report says failed before its delivery is written to the
    spool (here the brokers away and librdkafka's message.timeout.ms 300 ms,
    within a 2.5 s spool wait; the same for a report arriving while the
    file is written) was counted failed, and its delivery spooled, answered
    200 and published all the same: 3 failed for a delivery wholly on the
    topic. A delivery the spool cannot take (full) still counts its
    failures."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(
        spool, HOOKBRIDGE_INGEST_SPOOL_WAIT="2500ms", HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS="300",
        HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES="4096", HOOKBRIDGE_INGEST_TIMEOUT="1s"))
    ing.wait_ready()
    brokers_down(broker)
    sent = [user_event() for _ in range(3)]
    status, _, answer = ing.post(sent)
    assert status == 200 and answer == {"spooled": 3, "acknowledged": 0}, answer
    assert ing.metric(FAILED) == 0, f"{ing.metric(FAILED):.0f} events counted failed"

    # the spool is full now (one 4 KiB block): the next delivery's failures count
    status, _, answer = ing.post([user_event(), user_event()])
    assert status == 503, answer
    assert ing.metric(FAILURES) == 1
    assert ing.metric(FAILED) == 2

    brokers_up(broker)
    wait_published(spool, broker.bootstrap, sent, "brokers back")
    wait_until(lambda: ing.metric(REPLAYED) == 1 or None, 5, "the replay's count")
    assert ing.metric(FAILED) == 2


def test_a_stop_just_after_the_brokers_return_publishes_what_the_outage_spooled(
        broker, procs, workdir):
    """The operator rolls the endpoint out just after a broker outage ended
    (or Kubernetes drains the node then). The stop skipped its last flush on
    the broker probe's word, which lags the brokers' return by up to a
    second or more (it asks once a second, over librdkafka's reconnection):
    a delivery spooled during the outage, its events still queued for the
    brokers that were back, was purged instead of published: the stop said
    "1 deliveries stay on the ingest spool" and exited in 0.4 s, the events
    not on the topic. With the Deployment's emptyDir the pod's deletion then
    loses the delivery, answered 200 to Okta, with the brokers up. Now the
    flush goes on while acknowledgements come (5 s at most) and ends after
    a second without one while the probe says the brokers are away."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(spool))
    ing.wait_ready()
    brokers_down(broker)
    sent = [user_event() for _ in range(3)]
    status, _, answer = ing.post(sent)
    assert status == 200 and answer == {"spooled": 3, "acknowledged": 0}, answer
    time.sleep(1)
    brokers_up(broker)
    t0 = time.monotonic()
    ing.proc.signal(signal.SIGTERM)
    assert ing.proc.p.wait(30 * SLOW) == 0
    took = time.monotonic() - t0
    assert not said(ing, "warn", "stay on the ingest spool"), said(ing, "warn", "stay on")
    assert not spooled(spool)
    wait_published(spool, broker.bootstrap, sent, "the stop's flush")
    assert took < 8 * SLOW, f"exited {took:.1f}s after SIGTERM"


def test_a_delivery_the_full_spool_cannot_take_waits_for_queue_room_as_without_a_spool(
        broker, procs, workdir):
    """Okta, with the spool full and the brokers slow (frozen here until
    1.5 s after the spool has refused the delivery), librdkafka's queue
    full (HOOKBRIDGE_KAFKA_QUEUE_BUFFERING_MAX_MESSAGES 10, a delivery of
    20 events): docs/ingest.md says such a delivery is answered as without
    a spool, whose producing waits for room as the brokers acknowledge,
    within HOOKBRIDGE_INGEST_TIMEOUT. Since the reorder its producing
    waited the spool wait only (1 s), then the spool refused it, and it
    was answered 503 "event 10 could not be queued (Local: Queue full)"
    although the brokers took all of it a second later. Now the rest is
    produced once the spool has refused it, and the delivery is answered
    200 {"produced": 20}."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(
        spool, HOOKBRIDGE_INGEST_SPOOL_WAIT="1s", HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES="4096",
        HOOKBRIDGE_KAFKA_QUEUE_BUFFERING_MAX_MESSAGES="10", HOOKBRIDGE_INGEST_TIMEOUT="10s"))
    ing.wait_ready()
    sent = [dict(user_event(), displayMessage="x" * 300) for _ in range(20)]
    assert len(body_of(sent)) > 4096  # the spool cannot take it
    with frozen_until_refused(broker, ing, 1.5):
        status, _, answer = ing.post(sent)
    assert (status, answer) == (200, {"produced": 20}), answer
    assert ing.metric(FAILURES) == 1
    assert ing.metric(FAILED) == 0
    wait_published(spool, broker.bootstrap, sent, "the delivery")


def test_a_slow_upload_the_full_spool_cannot_take_still_waits_its_ingest_timeout(
        broker, procs, workdir):
    """Okta on a slow link (its body arrives over 6 s), the spool full, the
    brokers slow (frozen from the body's end until 1 s after the spool has
    refused the delivery, its 0.5 s wait over): a delivery the spool
    cannot take is answered as without a spool, which waits
    HOOKBRIDGE_INGEST_TIMEOUT (3 s here, and its 2 s margin) from the whole
    body's arrival. Since the reorder that wait was counted from the
    request's headers: the 6 s upload had spent it, and the delivery was
    answered 503 ("did not acknowledge 1 of 1 events in 3000 ms") right
    after the 0.5 s spool wait, its event on the topic a second later.
    Now 200."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(
        spool, HOOKBRIDGE_INGEST_SPOOL_WAIT="500ms", HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES="4096",
        HOOKBRIDGE_INGEST_TIMEOUT="3s"))
    ing.wait_ready()
    sent = [dict(user_event(), displayMessage="x" * 5000)]
    body = body_of(sent)
    s = socket.create_connection(("127.0.0.1", ing.port), timeout=20 * SLOW)
    try:
        s.sendall((f"POST {PATH} HTTP/1.1\r\nHost: x\r\n{AUTH_HEADER}: {AUTH_VALUE}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   ).encode())
        for i in range(8):  # 6 s
            s.sendall(body[i * 100:(i + 1) * 100])
            time.sleep(0.75)
        with frozen_until_refused(broker, ing, 1.0):
            s.sendall(body[800:])
            answer = s.recv(65536).decode()
    finally:
        s.close()
    status = answer.split(" ", 2)[1]
    got = json.loads(answer.split("\r\n\r\n", 1)[1])
    assert (status, got) == ("200", {"produced": 1}), answer
    assert ing.metric(FAILURES) == 1
