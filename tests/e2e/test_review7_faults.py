"""Review 7: what happens to a delivery after it failed (replay, cancel, dead
letters, automatic deactivation, the delivery log's upkeep), attacked where a
user would notice. Each test shares one stack among several checks."""
import time

import psycopg2
import pytest

from hbtest.lifecycle import ACTIVE, changes_applied
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Receiver, Retrier
from test_delivery import AUTH_VALUE, SECRET, sql
from test_promises import failed_delivery, verified_active


def test_a_replay_whose_retrier_died_after_queueing_it_is_sent_once_more_not_twice(
        db_url, procs, workdir):
    """docs/sql.md, claim_replays: a request whose lease is over "whose attempt
    is not logged yet is handed out again". A retrier claims a replay, queues
    it on the first tier and dies while its attempt is on the wire; it comes
    back after the lease (moved back by SQL instead of waiting 5 minutes). The
    queued message is read again (its offset was never committed) and the
    request is claimed again: two messages of the same attempt. The endpoint
    must get the replay once more (at least once: the killed attempt may have
    reached it), not twice."""
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": "1s", "HOOKBRIDGE_RETRY_JITTER": "0"}
    broker = Broker(procs, workdir, retry_schedule="1s")
    rcv = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                   delay_ms=1500)
    r1 = Retrier(procs, db_url, broker.bootstrap, extra_env=env, name="retrier1")
    r1.wait_ready()
    sub = verified_active(db_url, rcv.url)
    did = failed_delivery(db_url, sub)
    wait_until(lambda: changes_applied(r1, sub, ACTIVE) >= 1, 10, "the retrier to see it active")

    sql(db_url, "SELECT hookbridge.replay(%s)", did)
    wait_until(lambda: "attempt 2 is due" in r1.proc.output(), 10 * SLOW,
               "the replay's attempt under way")
    r1.proc.kill()
    time.sleep(2 * SLOW)  # the killed attempt, if it reached the receiver, is answered
    before = len(rcv.posts())
    sql(db_url, "UPDATE hookbridge.deliveries SET replay_claimed_at = replay_claimed_at "
        "- interval '6 minutes' WHERE delivery_id = %s", did)
    # (A group of its own, read from the start: as the dead one's group once
    # its session times out, without waiting for that.)
    Retrier(procs, db_url, broker.bootstrap, extra_env=env, name="retrier2",
            group_id="hookbridge-retrier-2")
    wait_until(lambda: sql(db_url, "SELECT status FROM hookbridge.deliveries "
                           "WHERE delivery_id = %s", did) == [("delivered",)], 30 * SLOW,
               "the replay delivered after the restart")
    time.sleep(2 * SLOW)  # a second copy would be answered by now
    posts = rcv.posts()[before:]
    assert [p["headers"]["webhook-id"] for p in posts] == [did], posts

    # docs/sql.md, activate/deactivate: "a replay asked for after the
    # reactivation is delivered", also when the three are one transaction
    # (a script run with psql -1): the replay is asked for after the
    # deactivation, though the transaction began before it.
    again = failed_delivery(db_url, sub)
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT hookbridge.deactivate(%s)", (sub,))
        cur.execute("SELECT hookbridge.activate(%s)", (sub,))
        cur.execute("SELECT hookbridge.replay(%s)", (again,))
    status = wait_until(lambda: (s := sql(db_url, "SELECT status, last_error FROM "
                                          "hookbridge.deliveries WHERE delivery_id = %s",
                                          again)[0])[0] not in ("replay", "retry") and s,
                        20 * SLOW, "the replay in one transaction with the reactivation")
    assert status[0] == "delivered", status


def failing_attempts(db_url, sub, ago):
    """Failed attempts of sub logged as a service logs them: one `ago` back
    and one now (endpoint_health: failing since `ago`)."""
    for when in (ago, "0 seconds"):
        sql(db_url, "INSERT INTO hookbridge.delivery_attempts (delivery_id, attempt, started_at, "
            "duration_ms, http_status, outcome, error, subscription_id) VALUES "
            "(gen_random_uuid(), 1, now() - %s::interval, 5, 500, 'retry', 'HTTP 500', %s)",
            when, sub)


def deactivation_evidence(db_url):
    """docs/sql.md, Automatic deactivation: "An endpoint whose every attempt
    has failed for HOOKBRIDGE_AUTO_DEACTIVATE_AFTER ... is deactivated". An
    operator moves a failing subscription to a new URL (the fix for an
    endpoint that moved): the old URL's failures say nothing about the new
    one, which has not been tried; it must not be deactivated for them at
    the next sweep, with a reason claiming every attempt failed."""
    sub = verified_active(db_url, "http://127.0.0.1:9/old")
    failing_attempts(db_url, sub, "2 hours")
    sql(db_url, "SELECT hookbridge.update(%s, url => 'http://127.0.0.1:9/new')", sub)
    sql(db_url, "SELECT hookbridge.record_verification(%s, true, NULL, "
        "'http://127.0.0.1:9/new')", sub)
    assert sql(db_url, "SELECT * FROM hookbridge.deactivate_failing('1 hour')") == []
    assert sql(db_url, "SELECT status FROM hookbridge.subscriptions WHERE id = %s",
               sub) == [("active",)]
    # The new URL's own failures count as before.
    failing_attempts(db_url, sub, "2 hours")
    assert [r[0] for r in sql(db_url, "SELECT * FROM hookbridge.deactivate_failing('1 hour')")] \
        == [sub]

    # A quiet subscription's one failed attempt, two hours ago, and no
    # attempt since: nothing says its endpoint has been failing for an hour
    # (it may have been up all along). Deactivating it would skip, unseen,
    # every event after; its failures must span the period.
    quiet = verified_active(db_url, "http://127.0.0.1:9/quiet")
    sql(db_url, "INSERT INTO hookbridge.delivery_attempts (delivery_id, attempt, started_at, "
        "duration_ms, http_status, outcome, error, subscription_id) VALUES (gen_random_uuid(), "
        "1, now() - interval '2 hours', 5, 400, 'failed', 'HTTP 400', %s)", quiet)
    assert sql(db_url, "SELECT * FROM hookbridge.deactivate_failing('1 hour')") == []
    failing_attempts(db_url, quiet, "1 minute")  # failing still, two hours on
    assert [r[0] for r in sql(db_url, "SELECT * FROM hookbridge.deactivate_failing('1 hour')")] \
        == [quiet]


def test_attempts_the_retrier_s_circuit_skipped_are_not_the_endpoint_s_failures(
        db_url, procs, workdir):
    """docs/sql.md, Automatic deactivation: "A delivery the services did not
    attempt is not counted (logged retry with why: circuit open, ...)". Two
    subscriptions on one host: A's failures open the host's circuit in the
    dispatcher and the retrier (one failure each, a long cool-down). B's
    event is then never attempted: parked by the dispatcher, skipped by the
    retrier until its schedule ends (the retrier counts a skip as an attempt,
    so the schedule ends). B's endpoint never answered anything: it is not
    failing, and deactivate_failing leaves it active (before: the retrier's
    skips, logged 'attempt not made: circuit open ...', counted as B's
    failures, and B was deactivated for A's)."""
    from hbtest.lifecycle import event
    from hbtest.stack import produce
    from test_retry import stack
    from test_delivery import register_verified
    broker, rcv, d, r = stack(
        procs, workdir, db_url, "1s,1s", receiver_args={"status": 500},
        env={"HOOKBRIDGE_CIRCUIT_FAILURES": "1", "HOOKBRIDGE_CIRCUIT_COOLDOWN": "10m"})
    a = register_verified(db_url, rcv.url, ["user.session.start"])
    b = register_verified(db_url, rcv.url, ["user.session.end"])

    def status(sub):
        return sql(db_url, "SELECT status FROM hookbridge.deliveries WHERE subscription_id = %s",
                   sub)
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: status(a) == [("failed",)], 30 * SLOW, "A's delivery to fail")
    produce(broker.bootstrap, [event("user.session.end")])
    wait_until(lambda: status(b) == [("failed",)], 30 * SLOW, "B's delivery to fail")
    assert len(rcv.posts()) == 2, "A's two attempts; B's were all skipped"
    errors = [e for (e,) in sql(db_url, "SELECT error FROM hookbridge.delivery_attempts "
                                "WHERE subscription_id = %s ORDER BY attempt", b)]
    assert any(e.startswith("attempt not made: circuit open") for e in errors), errors
    assert sql(db_url, "SELECT coalesce(consecutive_failures, 0), failing_since "
               "FROM hookbridge.subscriptions s LEFT JOIN hookbridge.endpoint_health h "
               "ON h.subscription_id = s.id WHERE s.id = %s", b) == [(0, None)]
    time.sleep(1.2)
    assert [x[0] for x in sql(db_url, "SELECT * FROM hookbridge.deactivate_failing('1 second')")] \
        == [a]


def expired_retries_runbook(db_url):
    """docs/operations.md, Messages expired before they were read: the query
    finds the deliveries to give up with cancel(). An ordered delivery
    waiting behind its key's head is logged once ('retry', 'waiting behind
    <head>') and not written to again while it waits, which lasts as long as
    the head's retries (hours in the long tiers): the query must not list it
    while its head is still being retried, or the operator cancels an event
    that would have gone on by itself once the head is final."""
    import re
    from pathlib import Path
    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = text.split("### Messages expired before they were read", 1)[1].split("\n### ")[0]
    m = re.search(r"```sql\n(.*?)```", section, re.S) or re.search(
        r"To find them: `(.*?)`", section, re.S)
    query = m.group(1).replace("<longer than your longest tier>", "1 hour").replace("%", "%%")
    sub = verified_active(db_url, "http://127.0.0.1:9/ordered")
    head, waiter = (sql(db_url, "SELECT gen_random_uuid()")[0][0] for _ in range(2))
    for did, err in ((head, "HTTP 503"), (waiter, f"waiting behind {head}")):
        sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
            "event_type, status, attempts, first_attempt_at, last_attempt_at, last_error) "
            "VALUES (%s, %s, 'e', 'user.session.start', 'retry', 0, now() - interval '3 hours', "
            "now() - interval '3 hours', %s)", did, sub, err)
    assert [r[0] for r in sql(db_url, query)] == [head]
    sql(db_url, "SELECT hookbridge.cancel(%s, 'retry expired')", head)
    # Its head final, a waiter that has still not moved is stuck too.
    assert [r[0] for r in sql(db_url, query)] == [waiter]


def replay_failed_two_days(db_url):
    """A crash redelivered at a day's end leaves a delivery two rows, one per
    day (lib/hb_dlog.h, Partitions); the later one answers for it, as in
    replay() and the services' look-ups. replay_failed must do the same:
    not send again a delivery whose later row says the endpoint
    acknowledged it (its earlier day's attempt failed), and replay once,
    not fail with a unique violation, one whose two rows both failed."""
    sub = verified_active(db_url, "http://127.0.0.1:9/two-days")
    acked, failed = (sql(db_url, "SELECT gen_random_uuid()")[0][0] for _ in range(2))
    for did, later in ((acked, "delivered"), (failed, "failed")):
        for ago, status in ((1, "failed"), (0, later)):
            sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, "
                "event_ids, event_type, status, attempts, first_attempt_at, last_attempt_at, "
                "last_error, body, content_type, log_day) VALUES (%s, %s, 'e', "
                "'user.session.start', %s, 1, now() - %s * interval '1 day', "
                "now() - %s * interval '1 day', 'HTTP 400', '{}', 'application/json', "
                "((now() - %s * interval '1 day') AT TIME ZONE 'UTC')::date)",
                did, sub, status, ago, ago, ago)
    assert sql(db_url, "SELECT hookbridge.replay_failed(%s, now() - interval '3 days')",
               sub) == [(1,)]
    assert sorted(sql(db_url, "SELECT delivery_id, status FROM hookbridge.deliveries "
                      "WHERE status = 'replay'")) == [(failed, "replay")]


@pytest.mark.sql_only
def test_deactivation_evidence_expired_retries_and_replay_failed_in_sql(db_url):
    """The SQL side's checks, one database: each helper's docstring says
    what it holds the code (or the runbook) to."""
    deactivation_evidence(db_url)
    expired_retries_runbook(db_url)
    replay_failed_two_days(db_url)
