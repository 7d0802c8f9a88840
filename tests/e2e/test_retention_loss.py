"""Messages the broker deleted before they were consumed are lost; the
operator must hear of it. A dispatcher stopped longer than the events topic's
retention comes back to a committed offset the broker no longer has: it
starts again from the partition's first message (auto.offset.reset), and
what lay between was never read. The user sees an error line naming the
topic, partition, offsets and how many, and hookbridge_messages_expired_total
counts them (the alert in docs/operations.md).

The devbroker keeps about the last 5 MiB of a partition (ENVIRONMENT.md), so
a backlog over that on one partition is trimmed the way retention would."""
import re

from kafka import KafkaConsumer, TopicPartition

from hbtest.procs import wait_until
from hbtest.stack import Broker, Dispatcher, produce
from test_delivery import event

BIG = "x" * 4000  # about 4 KB an event: 1,600 of them pass the 5 MiB a partition keeps


def offsets(bootstrap, topic):
    """{partition: (first offset kept, end offset)} of topic."""
    kc = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in kc.partitions_for_topic(topic)]
        first, end = kc.beginning_offsets(parts), kc.end_offsets(parts)
        return {tp.partition: (first[tp], end[tp]) for tp in parts}
    finally:
        kc.close()


def test_messages_deleted_before_they_were_consumed_are_counted_and_logged(db_url, procs,
                                                                           workdir):
    broker = Broker(procs, workdir)
    group = "hookbridge-retention-test"
    env = {"HOOKBRIDGE_SHUTDOWN_TIMEOUT": "2s"}
    d = Dispatcher(procs, db_url, broker.bootstrap, group_id=group, extra_env=env)
    d.wait_ready()
    user = "00uretention1"  # one key: every event on one partition
    produce(broker.bootstrap, [event("user.session.start", user)])
    wait_until(lambda: d.metric("hookbridge_messages_consumed_total") == 1, 30,
               "the first event consumed")
    d.proc.stop()  # a clean stop commits offset 1

    before = offsets(broker.bootstrap, broker.events_topic)
    (part,) = [p for p, (_, end) in before.items() if end == 1]
    backlog = [dict(event("user.session.start", user), displayMessage=BIG) for _ in range(1600)]
    produce(broker.bootstrap, backlog)
    first, end = offsets(broker.bootstrap, broker.events_topic)[part]
    assert end == 1 + len(backlog)
    assert first > 1, "the devbroker kept the whole backlog: make it bigger"

    d2 = Dispatcher(procs, db_url, broker.bootstrap, group_id=group, extra_env=env,
                    name="dispatcher-after")
    d2.wait_ready()
    wait_until(lambda: d2.metric("hookbridge_messages_consumed_total") == end - first, 60,
               f"the {end - first} events still on the partition consumed")
    # Offsets 1 .. first-1 were deleted unread: counted once, and told.
    wait_until(lambda: d2.metric("hookbridge_messages_expired_total") == first - 1, 10,
               f"{first - 1} messages counted as expired")
    log = d2.proc.output()
    lines = [l for l in log.splitlines() if "deleted by the broker before they were consumed" in l]
    assert len(lines) == 1, log[-3000:]
    assert re.search(rf"{re.escape(broker.events_topic)} \[{part}\]: {first - 1} messages "
                     rf"\(offsets 1 to {first - 1}\).*they are lost", lines[0]), lines[0]
    assert '"level":"error"' in lines[0]


def test_a_new_group_starting_at_the_beginning_counts_nothing_expired(db_url, procs, workdir):
    """A group with no committed offset starts at the first message kept: no
    message was ever its to lose, so nothing is counted (a trimmed partition
    is not a loss to a group that never read it)."""
    broker = Broker(procs, workdir)
    user = "00uretention2"
    produce(broker.bootstrap,
            [dict(event("user.session.start", user), displayMessage=BIG) for _ in range(1600)])
    part, (first, end) = next((p, o) for p, o in offsets(broker.bootstrap,
                                                         broker.events_topic).items() if o[1])
    assert first > 0
    d = Dispatcher(procs, db_url, broker.bootstrap, group_id="hookbridge-retention-new")
    d.wait_ready()
    wait_until(lambda: d.metric("hookbridge_messages_consumed_total") == end - first, 60,
               "every event kept consumed")
    assert d.metric("hookbridge_messages_expired_total", default=-1) == 0
    assert "deleted by the broker" not in d.proc.output()
