"""A frozen broker: the devbroker's process stopped (SIGSTOP) keeps its
connections open, so librdkafka reports nothing for up to a minute. The
services notice within seconds that the brokers do not answer: /readyz turns
503 and says so, and 200 again soon after the broker resumes (SIGCONT); what
is produced afterwards is delivered."""
import signal
import time

import pytest

from hbtest.ingest import Ingest, topic_messages
from hbtest.procs import wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified

# Seconds from SIGSTOP to a 503 (4 s without an answer, a probe's timeout,
# margin), and from SIGCONT to a 200; wait_until stretches both by SLOW.
NOT_READY_WITHIN = 8
READY_AGAIN_WITHIN = 8
REASON = "Kafka brokers not answering for"


@pytest.fixture
def freezable(broker):
    """The devbroker, resumed (SIGCONT) when the test ends whatever happened,
    before the process group stops everything: a stopped process ignores
    SIGTERM and would hold up the teardown."""
    yield broker
    broker.proc.signal(signal.SIGCONT)


def freeze_until_not_ready(broker, readyz):
    """SIGSTOPs the broker and waits for readyz() to answer 503 with the
    reason; returns (seconds it took, body)."""
    start = time.monotonic()
    broker.proc.signal(signal.SIGSTOP)
    status, body = wait_until(lambda: (r := readyz())[0] == 503 and r, NOT_READY_WITHIN,
                              "/readyz to turn 503 with the broker frozen")
    return time.monotonic() - start, body


def thaw_until_ready(broker, readyz):
    start = time.monotonic()
    broker.proc.signal(signal.SIGCONT)
    wait_until(lambda: readyz()[0] == 200, READY_AGAIN_WITHIN, "/readyz to turn 200 again")
    return time.monotonic() - start


def test_a_frozen_broker_makes_the_dispatcher_not_ready_until_it_resumes(db_url, freezable,
                                                                         procs, workdir):
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, freezable.bootstrap)
    d.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"])
    before = event("user.session.start")
    produce(freezable.bootstrap, [before])
    wait_until(lambda: len(receiver.events()) == 1, 30, "the first delivery")

    took, body = freeze_until_not_ready(freezable, lambda: d.get("/readyz"))
    print(f"dispatcher: not ready {took:.1f} s after SIGSTOP: {body!r}")
    assert REASON in body
    assert d.get("/healthz")[0] == 200 and d.proc.alive()  # the loop turns; no restart

    took = thaw_until_ready(freezable, lambda: d.get("/readyz"))
    print(f"dispatcher: ready {took:.1f} s after SIGCONT")
    after = event("user.session.start")
    produce(freezable.bootstrap, [after])
    wait_until(lambda: len(receiver.events()) == 2, 30, "the delivery after the thaw")
    assert sorted(e["uuid"] for _, e in receiver.events()) == sorted(
        [before["uuid"], after["uuid"]])
    # One line each way in the log.
    out = d.proc.output()
    assert out.count(REASON) == 1, out[-4000:]
    assert out.count("Kafka reachable again") == 1, out[-4000:]


def test_a_frozen_broker_makes_the_ingest_endpoint_not_ready_until_it_resumes(freezable, procs):
    ing = Ingest(procs, freezable.bootstrap)
    ing.wait_ready()

    took, body = freeze_until_not_ready(freezable, lambda: ing.ops("/readyz"))
    print(f"ingest: not ready {took:.1f} s after SIGSTOP: {body!r}")
    assert REASON in body
    assert ing.ops("/healthz")[0] == 200 and ing.proc.alive()

    took = thaw_until_ready(freezable, lambda: ing.ops("/readyz"))
    print(f"ingest: ready {took:.1f} s after SIGCONT")
    events = [event("user.session.start") for _ in range(3)]
    status, _, answer = ing.post(events)
    assert status == 200 and answer == {"produced": 3}
    keys = {m.key.decode() for m in topic_messages(freezable.bootstrap)}
    assert {e["actor"]["id"] for e in events} <= keys
    out = ing.proc.output()
    assert out.count(REASON) == 1, out[-4000:]
    assert out.count("Kafka reachable again") == 1, out[-4000:]
