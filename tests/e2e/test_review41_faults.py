"""Review 41: a careful C read of the ingest endpoint's dead letters
(lib/hb_ingest.c, producer/ingest.c as of 71f572d). Each test fails on main
as of 71f572d."""
from hbtest.ingest import Ingest
from hbtest.stack import topic_records
from test_delivery import event


def test_a_refused_event_whose_uuid_alone_is_over_a_megabyte_does_not_cost_its_delivery(
        broker, procs):
    """hb_ingest_refused_shrink keeps a too-large refused event as its uuid,
    eventType and published, each of any length: review 39's test took a
    500,000-character uuid (the copy then fits), but one of 1,100,000
    characters (the body is within the 4 MiB default) makes even the shrunk
    copy larger than librdkafka's message.max.bytes. produce_event fails,
    the delivery is answered 503 with the events after it never produced,
    and Okta's retry meets the same: every event after it is lost."""
    ing = Ingest(procs, broker.bootstrap)
    ing.wait_ready()
    good = event("user.session.start")
    answers = [ing.post([{"uuid": "u" * 1100000}, good]) for _ in range(2)]
    on_topic = len(topic_records(broker.bootstrap, broker.events_topic))
    assert [s for s, _, _ in answers] == [200, 200], (
        f"answers {[(s, str(a.get('error'))[:300]) for s, _, a in answers]}; "
        f"{on_topic} event(s) on the events topic")
    assert on_topic >= 1
