"""Review 16: today's changes attacked as a production user or a fault would.

A batch still filling when its subscription is deactivated is dropped like a
pending retry (docs/sql.md: "for the events of a batch still filling"), and
docs/sql.md promises that such a dropped delivery keeps its payload, so that
replay_dropped brings back what the deactivation took.
"""
import json

from hbtest.lifecycle import INACTIVE, changes_applied
from hbtest.procs import SLOW, wait_until
from hbtest.stack import produce
from test_delivery import event, register_verified, sql
from test_reactivate import changes_seen
from test_retry import stack


def test_a_batch_dropped_while_filling_is_brought_back_by_replay_dropped(db_url, procs, workdir):
    """Two events wait in a batch (window 3 s); the subscription is
    deactivated meanwhile, so the batch is dropped when its window closes.
    Once active again, replay_dropped sends that batch: both events, in one
    request under the dropped delivery's webhook-id. Before, the batch was
    logged dropped without its payload: replay_dropped skipped it (0) and
    replay() refused it, the events lost."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "2s")
    sub = register_verified(db_url, receiver.url, ["user.session.start"],
                            {"batch_max": 10, "batch_window_ms": 3000})
    wait_until(lambda: changes_seen(d) and changes_seen(r), 10, "the services to see it active")
    evs = [event("user.session.start") for _ in range(2)]
    n = d.metric("hookbridge_messages_consumed_total")
    produce(broker.bootstrap, evs)
    wait_until(lambda: d.metric("hookbridge_messages_consumed_total") >= n + 2, 10 * SLOW,
               "both events read (and waiting in the batch)")
    sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
    wait_until(lambda: changes_applied(d, sub, INACTIVE) >= 1, 10 * SLOW,
               "the dispatcher to see the deactivation")
    row = wait_until(lambda: (rs := sql(db_url, "SELECT delivery_id, status, last_error FROM "
                                        "hookbridge.deliveries WHERE subscription_id = %s",
                                        sub)) and rs, 20 * SLOW, "the dropped batch logged")
    assert len(row) == 1 and row[0][1:] == ("dropped", "subscription inactive"), row
    assert receiver.posts() == [], "the window closed before the deactivation: raise it"

    seen = (changes_seen(d), changes_seen(r))
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    wait_until(lambda: changes_seen(d) > seen[0] and changes_seen(r) > seen[1], 10 * SLOW,
               "both services to see the subscription active again")
    assert sql(db_url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
               sub) == [(1,)], "the dropped batch is replayed"
    post = wait_until(lambda: receiver.posts(), 20 * SLOW, "the replayed batch")[0]
    body = json.loads(post["body"])
    got = body["data"]["events"] if isinstance(body, dict) else body
    assert sorted(e["uuid"] for e in got) == sorted(e["uuid"] for e in evs)
    assert post["headers"]["webhook-id"] == row[0][0]
    wait_until(lambda: sql(db_url, "SELECT status FROM hookbridge.deliveries WHERE "
                           "delivery_id = %s", row[0][0]) == [("delivered",)], 10 * SLOW,
               "the log to say delivered")


def test_a_registry_user_info_from_a_file_ending_in_a_newline_reads_the_registry(
        db_url, broker, procs, workdir):
    """The Schema Registry's credentials come from a Secret, often made with
    --from-file from a file an editor ended with a newline (as the database
    URL, which loses its line end). With the newline, every fetch was refused
    (401: 'refused our credentials'), the registry-framed events waited for
    ever and the dispatcher was never ready again; now the line end goes and
    the event is delivered."""
    from hbtest.pyavro import registry_framed
    from hbtest.registry import StandInRegistry
    from test_schema_evolution import NEWER, an_event, delivered, send, start
    registry = StandInRegistry()
    try:
        registry.add(11, NEWER)
        receiver, d = start(procs, workdir, db_url, broker, {
            "HOOKBRIDGE_SCHEMA_REGISTRY_URL": registry.url,
            "HOOKBRIDGE_SCHEMA_REGISTRY_USER_INFO": registry.user_info + "\n"})
        ev = an_event(riskScore=7)
        send(broker, registry_framed(NEWER, ev, 11))
        wait_until(lambda: ev["uuid"] in delivered(receiver), 15 * SLOW,
                   "the registry-framed event delivered")
        assert registry.served() == [("GET", "/schemas/ids/11", 200)]
    finally:
        registry.stop()
