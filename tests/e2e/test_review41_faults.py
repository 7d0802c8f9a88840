"""Review 41: a careful C read of the ingest endpoint's dead letters
(lib/hb_ingest.c, producer/ingest.c as of 71f572d). Each test fails on main
as of 71f572d."""
from hbtest.ingest import Ingest
from hbtest.procs import SLOW
from test_review39_faults import delivered_twice_beside_a_uuid_of


def test_a_refused_event_whose_uuid_alone_is_over_a_megabyte_does_not_cost_its_delivery(
        broker, procs):
    """hb_ingest_refused_shrink keeps a too-large refused event as its uuid,
    eventType and published, each of any length: review 39's test took a
    500,000-character uuid (the copy then fits), but one of 1,100,000
    characters (the body is within the 4 MiB default) makes even the shrunk
    copy larger than librdkafka's message.max.bytes. produce_event fails,
    the delivery is answered 503 with the events after it never produced,
    and Okta's retry meets the same: every event after it is lost."""
    delivered_twice_beside_a_uuid_of(broker, procs, 1100000)


def test_a_dead_letter_topic_named_as_the_events_topic_is_refused_at_start(broker, procs):
    """on_delivery took a report as a dead-letter copy's by its topic's name
    (strcmp with dlq_topic), and nothing refused HOOKBRIDGE_DLQ_TOPIC equal
    to HOOKBRIDGE_EVENTS_TOPIC. Then an *accepted* event the brokers refused
    as too large (the topic's max.message.bytes below it) was marked as a
    dead-letter copy to send again smaller, and resend_refused_smaller called
    hb_ingest_refused_shrink on it, whose m->refused is NULL: strlen(NULL),
    the process died with every request in flight unanswered (Apache Kafka,
    events topic max.message.bytes 4000, one 20 KB event).

    Now a report is a dead-letter copy's by its event (slot_t.dead), and the
    setting is refused at start, for every program that reads it: dead
    letters on the events topic would be read again as events."""
    ing = Ingest(procs, broker.bootstrap, wait=False,
                 extra_env={"HOOKBRIDGE_DLQ_TOPIC": "identity.events"})
    assert ing.proc.p.wait(10 * SLOW) == 2
    assert "HOOKBRIDGE_DLQ_TOPIC names the events topic" in ing.proc.output()
