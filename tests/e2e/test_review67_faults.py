"""Review 67: adversarial review of reviews 63 (replay_dropped, claim_replays'
stale drops) and 64 (the store's idle check, the read-only back-off, the
producer's full queue, the revoked partitions' message), and review 64's
leftover: the ingest endpoint's 503 came seconds after
HOOKBRIDGE_INGEST_TIMEOUT.

Each test says what it did on main's binaries (febf69c)."""
import signal
import time

from hbtest.ingest import Ingest
from hbtest.procs import SLOW
from hbtest.stack import topic_records
from test_broker_frozen import freezable  # noqa: F401 (a fixture)
from test_delivery import event
from test_review18_faults import read_event
from test_review50_faults import freeze


def test_an_ingest_delivery_the_frozen_brokers_do_not_take_is_answered_503_within_the_timeout(
        freezable, procs):  # noqa: F811
    """HOOKBRIDGE_INGEST_TIMEOUT=3s (Okta waits 3 s), the brokers frozen: a
    delivery of 3 events is answered 503 after the 3 s, not later, and so is
    one of 15 events with a local
    queue of 10 (5 wait for room that never comes); once the brokers are
    back Okta's retry is answered 200 and every event is on the topic.

    On main (febf69c): the first 503 came after 3.9 s (librdkafka's message
    timeout was the whole 3 s, and its expiry scan runs once a second), the
    second after 5.0 s (the wait for room was the 3 s plus a 2 s margin):
    Okta had given up on both. About 12 s."""
    ing = Ingest(procs, freezable.bootstrap,
                 extra_env={"HOOKBRIDGE_KAFKA_QUEUE_BUFFERING_MAX_MESSAGES": "10",
                            "HOOKBRIDGE_INGEST_TIMEOUT": "3s"})
    ing.wait_ready()
    small = [event("user.session.start") for _ in range(3)]
    large = [event("user.session.start") for _ in range(15)]
    freeze(freezable)
    try:
        t0 = time.monotonic()
        status, headers, answer = ing.post(small)
        took_small = time.monotonic() - t0
        assert status == 503 and "retry-after" in headers, (status, headers, answer)
        assert "did not acknowledge 3 of 3 events in 3000 ms" in answer["error"], answer
        time.sleep(1.5)  # the first request's events out of the queue
        t0 = time.monotonic()
        status, headers, answer = ing.post(large)
        took_large = time.monotonic() - t0
        assert status == 503 and "retry-after" in headers, (status, headers, answer)
    finally:
        freezable.proc.signal(signal.SIGCONT)
    print(f"503 after {took_small:.2f} s and {took_large:.2f} s")
    assert 2.8 <= took_small <= 3.0 + 0.2 * SLOW, took_small
    assert 2.8 <= took_large <= 3.0 + 0.2 * SLOW, took_large
    ing.wait_ready(30)
    for events in (small, large):
        status, _, answer = ing.post(events)
        assert (status, answer) == (200, {"produced": len(events)})
    on_topic = [read_event(m.value)["uuid"]
                for m in topic_records(freezable.bootstrap, "identity.events", want=18)]
    print("copies on the topic:", sorted(on_topic.count(e["uuid"]) for e in small + large))
    assert {e["uuid"] for e in small + large} <= set(on_topic)
