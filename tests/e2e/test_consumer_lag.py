"""hookbridge_consumer_lag is what an operator alerts on: per partition, the
messages not yet finished and committed (the end offset minus the group's
committed offset). It reads 0 once everything is delivered and committed,
and the backlog while deliveries hang; on the retrier, a delay tier whose
retries were all delivered reads 0 too."""
import re

import pytest

from hbtest.procs import wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified
from test_isolation import HUNG_MS, committed
from test_retry import stack

PARTITIONS = 6  # the devbroker's events topic


def lags(svc, topic):
    """{partition: lag} of topic on svc's /metrics."""
    status, text = svc.get("/metrics")
    assert status == 200
    return {int(p): int(v) for p, v in re.findall(
        r'^hookbridge_consumer_lag\{topic="' + re.escape(topic) + r'",partition="(\d+)"\} (\d+)',
        text, re.M)}


def test_lag_is_zero_when_delivered_and_committed_and_the_backlog_when_hung(db_url, procs,
                                                                              workdir):
    broker = Broker(procs, workdir, retry_schedule="1h")
    healthy = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                       name="healthy")
    hung = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                    name="hung", delay_ms=HUNG_MS)
    group = "hookbridge-lag-test"
    d = Dispatcher(procs, db_url, broker.bootstrap, group_id=group, extra_env={
        "HOOKBRIDGE_RETRY_SCHEDULE": "1h",
        # a hung delivery stays in flight (unfinished) for the whole test
        "HOOKBRIDGE_REQUEST_TIMEOUT": "5m",
        "HOOKBRIDGE_MAX_QUEUE_WAIT": "10m",
        "HOOKBRIDGE_SHUTDOWN_TIMEOUT": "1s",
    })
    d.wait_ready()
    register_verified(db_url, healthy.url, ["user.session.start"])
    register_verified(db_url, hung.url, ["user.session.end"])

    # Delivered and committed: every partition's lag reads 0.
    events = [event("user.session.start") for _ in range(30)]
    produce(broker.bootstrap, events)
    wait_until(lambda: len(healthy.events()) == len(events), 30, "every event delivered")
    wait_until(lambda: committed(broker.bootstrap, group) == len(events), 15,
               "the offsets committed")
    wait_until(lambda: (l := lags(d, broker.events_topic)) and len(l) == PARTITIONS and
               not any(l.values()), 20, "the lag of every partition at 0")

    # Deliveries that hang: their events are unfinished, the committed
    # offsets stay before them, and the lag is exactly that backlog.
    stuck = [event("user.session.end") for _ in range(12)]
    produce(broker.bootstrap, stuck)
    wait_until(lambda: (m := re.search(r"^hookbridge_requests_in_flight (\d+)",
                                       d.get("/metrics")[1], re.M)) and
               int(m.group(1)) == len(stuck), 15, "the hung deliveries in flight")
    wait_until(lambda: sum(lags(d, broker.events_topic).values()) == len(stuck), 20,
               f"the lag to read the backlog of {len(stuck)}")
    assert committed(broker.bootstrap, group) == len(events)  # nothing was skipped


@pytest.mark.apache
def test_a_delay_tier_read_to_the_end_reads_zero_lag(db_url, procs, workdir, new_broker):
    """The reported case: the retrier's tier partition whose only message was
    delivered and committed read lag 1."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s",
                                   receiver_args={"fail_first": 1}, new_broker=new_broker)
    register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(receiver.events()) == 1, 30, "the delivery after one retry")
    tier = broker.retry_prefix + "1s"
    wait_until(lambda: (l := lags(r, tier)) and not any(l.values()) and l, 20,
               f"the retrier's lag on {tier} at 0")
    wait_until(lambda: (l := lags(d, broker.events_topic)) and not any(l.values()) and l, 20,
               "the dispatcher's lag at 0")
