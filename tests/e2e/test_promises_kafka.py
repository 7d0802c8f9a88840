"""docs/operations.md, Adding partitions: "The groups see the new partitions
at their next metadata refresh ... and rebalance; new partitions have no
committed offset and are read from the beginning (auto.offset.reset=earliest),
so nothing is skipped." On Apache Kafka (the devbroker has no
CreatePartitions): the events topic grows from 6 to 12 partitions under a
running dispatcher, and events produced to the new partitions before the
dispatcher has them are all delivered.

Checked to fail without the promise: with HOOKBRIDGE_KAFKA_AUTO_OFFSET_RESET=latest
added to the dispatcher's environment, the events on the new partitions are
skipped (the dispatcher starts there at the end) and the test times out. It
can pass without checking anything only if the dispatcher refreshes its
metadata and rebalances between the partitions' creation and the produce
(about 0.3 s of the REFRESH_MS period); it prints which happened."""
import time

from hbtest.lifecycle import consumed
from hbtest.procs import wait_until
from hbtest.stack import Dispatcher, Receiver, produce, topic_records
from test_delivery import AUTH_VALUE, SECRET, event, register_verified

REFRESH_MS = 4000  # how often the dispatcher refreshes metadata (default 5 minutes)


def test_events_on_partitions_added_while_running_are_not_skipped(apache_kafka, db_url, procs,
                                                                  workdir):
    from kafka import KafkaAdminClient
    from kafka.admin import NewPartitions

    space = apache_kafka.space()
    rcv = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    env = {"HOOKBRIDGE_KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS": str(REFRESH_MS)}
    d = Dispatcher(procs, db_url, space.bootstrap, extra_env=env)
    d.wait_ready()
    register_verified(db_url, rcv.url, ["user.session.start"])
    warm = event("user.session.start", user="00uwarm0000")
    produce(space.bootstrap, [warm])
    wait_until(lambda: warm["uuid"] in {e["uuid"] for _, e in rcv.events()}, 20,
               "the dispatcher delivering")
    assigned = d.proc.output().count("assigned ")

    admin = KafkaAdminClient(bootstrap_servers=space.bootstrap.split(","))
    try:
        admin.create_partitions({space.events_topic: NewPartitions(total_count=12)})
    finally:
        admin.close()

    def partitions():  # as the broker has them: it applies the change a moment later
        admin = KafkaAdminClient(bootstrap_servers=space.bootstrap.split(","))
        try:
            return len(admin.describe_topics([space.events_topic])[0]["partitions"])
        finally:
            admin.close()
    wait_until(lambda: partitions() == 12, 20, "the broker to have the 12 partitions")
    t_grown = time.monotonic()
    # A new producer process sees 12 partitions: keys spread over all of them.
    events = [event("user.session.start", user=f"00u{i:010d}") for i in range(24)]
    produce(space.bootstrap, events)
    produced_before_rebalance = d.proc.output().count("assigned ") == assigned
    on_new = {m.key.decode() for m in topic_records(space.bootstrap, space.events_topic,
                                                    want=len(events) + 1) if m.partition >= 6}
    assert on_new, "no event landed on a new partition: the test checks nothing"
    want = {e["uuid"] for e in events}
    wait_until(lambda: want <= {e["uuid"] for _, e in rcv.events()},
               (REFRESH_MS / 1000 + 20), "every event, those on the new partitions too")
    print(f"{len(on_new)} of {len(events)} events on the new partitions, produced "
          f"{'before' if produced_before_rebalance else 'after'} the dispatcher had them; "
          f"all delivered {time.monotonic() - t_grown:.1f} s after the partitions were added")
    assert consumed(d) >= len(events) + 1
