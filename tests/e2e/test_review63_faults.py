"""Review 63: replay_dropped() against the retrier dropping, at the same
moment, a retry that a deactivation left pending.

The retrier judges a due retry by the delivery log's answer to its look-up
(was a resume asked for: deliveries.resume_requested_at) and writes the drop
a moment later, in the log writer's next round. The tests hold the retrier
inside that window deterministically: the test's own transaction locks the
delivery's row (FOR UPDATE) before the retry comes due, so the look-up (a
plain read) is answered but the drop's write waits for the lock; the test
sees the writer waiting (pg_blocking_pids), then lets replay_dropped run
inside the window, and only then releases the lock. No sleep guesses the
timing."""
import threading

import psycopg2
import pytest

from hbtest.procs import SLOW, wait_until
from hbtest.stack import produce
from test_delivery import event, register_verified, sql
from test_reactivate import changes_seen, deactivate_then_activate, delivery_of, register_active
from test_retry import stack

DROP_WHY = "subscription was deactivated after this delivery began"


def blocked_by(db_url, pid):
    """The backends waiting for a lock that backend pid holds."""
    return [r[0] for r in sql(db_url, "SELECT pid FROM pg_stat_activity "
                              "WHERE %s = ANY (pg_blocking_pids(pid))", pid)]


def waiting(db_url, pid):
    """Backend pid waits for a lock (held by the test, or by a backend
    queued before it for the same row)."""
    return sql(db_url, "SELECT cardinality(pg_blocking_pids(%s)) > 0", pid)[0][0]


def a_retry_held_in_the_drop_window(db_url, procs, workdir):
    """A subscription whose event A failed once and waits for its retry;
    the subscription deactivated and activated again (so A's retry is
    dropped when due); the test's transaction holds A's row, and the
    retrier, its retry due, has looked A up and waits to write the drop.
    Returns (stack, subscription, A, A's delivery id, the lock's connection)."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "5s", receiver_args={"fail_first": 1})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    wait_until(lambda: changes_seen(d) and changes_seen(r), 10, "the services to see it active")
    a = event("user.session.start")
    produce(broker.bootstrap, [a])
    did = wait_until(lambda: (row := delivery_of(db_url, a)) and row[1] == "retry" and row[0],
                     20 * SLOW, "A's first attempt to fail and wait for its retry")
    hold = psycopg2.connect(db_url)
    hold.cursor().execute("SELECT 1 FROM hookbridge.deliveries WHERE delivery_id = %s FOR UPDATE",
                          (did,))
    deactivate_then_activate(db_url, sub, d, r)
    wait_until(lambda: blocked_by(db_url, hold.get_backend_pid()), 20 * SLOW,
               "the retrier's log writer to wait for A's row with the drop")
    assert f"delivery dropped: {DROP_WHY}" in r.proc.output()
    assert delivery_of(db_url, a)[1:3] == ("retry", 1), "the drop is not written yet"
    return (broker, receiver, d, r), sub, a, did, hold


def arrived(receiver, did):
    return [p["status"] for p in receiver.posts() if p["headers"].get("webhook-id") == did]


def wait_delivered(db_url, receiver, a, did, counted):
    """Waits for A to reach the endpoint again; fails saying what the user
    sees: what replay_dropped counted against what arrived."""
    try:
        wait_until(lambda: arrived(receiver, did) == [503, 204], 15 * SLOW,
                   "A to be delivered")
    except Exception:
        raise AssertionError(
            f"replay_dropped returned {counted}, and the endpoint got A {arrived(receiver, did)} "
            f"(its first attempt only); A's row: {delivery_of(db_url, a)}") from None
    wait_until(lambda: delivery_of(db_url, a)[1] == "delivered", 10 * SLOW,
               "A's delivery to be logged")


def replay_dropped_meanwhile(db_url, sub):
    """replay_dropped(sub, the last hour) called in a thread, on a session of
    its own: (that session, the thread, {"n": its answer} once it returned)."""
    user = psycopg2.connect(db_url)
    user.autocommit = True
    got = {}

    def call():
        with user.cursor() as cur:
            cur.execute("SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')", (sub,))
            got["n"] = cur.fetchone()[0]
    t = threading.Thread(target=call)
    t.start()
    return user, t, got


def test_a_retry_counted_by_replay_dropped_while_the_retrier_drops_it_is_delivered(
        db_url, procs, workdir):
    """docs/sql.md: replay_dropped "returns how many": each goes to the
    endpoint. A retry pending at the deactivation comes due just before the
    operator's replay_dropped: the retrier has looked it up (no resume asked
    for yet) and decided to drop it, its write still under way, when
    replay_dropped marks it (resume_requested_at) and counts it.

    On main (58f732a): replay_dropped returned 1, then the retrier's drop was
    written over the mark: A stayed `dropped` ("subscription was deactivated
    after this delivery began") and the endpoint never got it again; only a
    second replay_dropped brought it back. Now the drop, stale (a resume
    asked for since the deactivation, the subscription active), is turned
    into a replay within about a second (claim_replays): A arrives, once."""
    (_, receiver, _, _), sub, a, did, hold = a_retry_held_in_the_drop_window(
        db_url, procs, workdir)
    with hold.cursor() as cur:  # inside the window: the drop decided, not written
        cur.execute("SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')", (sub,))
        counted = cur.fetchone()[0]
    hold.commit()
    hold.close()
    assert counted == 1
    wait_delivered(db_url, receiver, a, did, counted)
    # nothing left to take back, and A came once
    assert sql(db_url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
               sub) == [(0,)]
    assert arrived(receiver, did) == [503, 204]


def test_a_retry_dropped_while_replay_dropped_runs_is_counted_and_delivered(
        db_url, procs, workdir):
    """The same race, the drop's write landing while replay_dropped runs:
    after its look for dropped deliveries, before its look for retries still
    waiting (the drop's write holds A's row, which replay_dropped waits for).

    On main (58f732a): replay_dropped returned 1 and A stayed dropped: A
    was not dropped yet when it looked for dropped deliveries, and its
    marking of the waiting retries, once the drop's write let go of A's
    row, marked the row without looking at its status again (dropped by
    then): counted, never sent. Now the waiting retries are looked for
    first, each row checked as it is after the wait (A, dropped, is left),
    then the dropped deliveries (A among them): it returns 1, and A
    arrives, once."""
    (_, receiver, _, _), sub, a, did, hold = a_retry_held_in_the_drop_window(
        db_url, procs, workdir)
    user, t, got = replay_dropped_meanwhile(db_url, sub)
    try:
        wait_until(lambda: waiting(db_url, user.get_backend_pid()),
                   10 * SLOW, "replay_dropped to wait for A's row too")
    finally:
        hold.rollback()  # the retrier's drop is written, then replay_dropped goes on
        hold.close()
        t.join(30)
    user.close()
    assert got.get("n") == 1, f"replay_dropped returned {got.get('n')}; A: {delivery_of(db_url, a)}"
    wait_delivered(db_url, receiver, a, did, got["n"])
    assert sql(db_url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
               sub) == [(0,)]
    assert arrived(receiver, did) == [503, 204]


def test_a_retry_dropped_between_replay_dropped_s_two_looks_is_counted_and_delivered(
        db_url, procs, workdir):
    """The drop's write landing after replay_dropped looked for the dropped
    deliveries, before it looks for the retries still waiting: B (dropped
    earlier by the deactivation) is being replayed, its row held a moment
    (another session's lock), while the retrier's drop of A commits.

    On main (58f732a): replay_dropped returned 1 (B): A was still waiting
    when it looked for dropped deliveries and dropped when it looked for
    waiting retries; A never reached the endpoint, though the operator was
    told that everything the deactivation took was coming back. Now the
    waiting retries are looked for first, the dropped deliveries after: it
    returns 2, and A and B arrive."""
    (_, receiver, _, _), sub, a, did, hold_a = a_retry_held_in_the_drop_window(
        db_url, procs, workdir)
    b = sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
            "event_type, status, attempts, first_attempt_at, last_attempt_at, last_error, body, "
            "log_day) SELECT gen_random_uuid(), %s, gen_random_uuid()::text, 'user.session.start', "
            "'dropped', 1, s.deactivated_at - interval '1 minute', s.deactivated_at, %s, "
            "'{\"b\": 1}', (now() AT TIME ZONE 'UTC')::date FROM hookbridge.subscriptions s "
            "WHERE s.id = %s RETURNING delivery_id::text", sub, DROP_WHY, sub)[0][0]
    hold_b = psycopg2.connect(db_url)
    hold_b.cursor().execute("SELECT 1 FROM hookbridge.deliveries WHERE delivery_id = %s "
                            "FOR UPDATE", (b,))
    user, t, got = replay_dropped_meanwhile(db_url, sub)
    try:
        wait_until(lambda: waiting(db_url, user.get_backend_pid()), 10 * SLOW,
                   "replay_dropped to wait for a row")
        hold_a.rollback()  # the retrier's drop of A commits
        hold_a.close()
        wait_until(lambda: sql(db_url, "SELECT status FROM hookbridge.deliveries "
                               "WHERE delivery_id = %s", did) == [("dropped",)], 10 * SLOW,
                   "the drop of A to be written")
    finally:
        hold_b.rollback()
        hold_b.close()
        t.join(30)
    user.close()
    assert got.get("n") == 2, f"replay_dropped returned {got.get('n')}; A: {delivery_of(db_url, a)}"
    wait_delivered(db_url, receiver, a, did, got["n"])
    wait_until(lambda: any(p["headers"].get("webhook-id") == b and p["status"] == 204
                           for p in receiver.posts()), 10 * SLOW, "B to be replayed")
    assert sql(db_url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
               sub) == [(0,)]


def waiting_retry(db_url, sub):
    """A retry of sub that began before any deactivation to come, its body kept."""
    return sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
               "event_type, status, attempts, first_attempt_at, last_attempt_at, body, log_day) "
               "VALUES (gen_random_uuid(), %s, gen_random_uuid()::text, 'user.session.start', "
               "'retry', 1, now() - interval '1 minute', now() - interval '1 minute', '{}', "
               "(now() AT TIME ZONE 'UTC')::date) RETURNING delivery_id::text", sub)[0][0]


def stop_and_resume(db_url, sub):
    """deactivate, activate, replay_dropped: what it counted."""
    sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    return sql(db_url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
               sub)[0][0]


def retrier_drops(db_url, did):
    """What the retrier's log writer makes of a drop written after its look-up."""
    sql(db_url, "UPDATE hookbridge.deliveries SET status = 'dropped', last_error = %s, "
        "last_attempt_at = now() WHERE delivery_id = %s", DROP_WHY, did)


@pytest.mark.sql_only
def test_claim_replays_sends_a_retry_dropped_after_replay_dropped_took_it_back_and_only_it(
        db_url):
    """The SQL behind the first test: a retry replay_dropped marked and
    counted, dropped all the same by a retrier that judged it before (or by
    one of an earlier release), is handed out by the next claim_replays as a
    replay asked for now; not one cancelled since, not one a retrier
    attempted after the request (a second replica, after a rebalance, read
    it again and made the attempt: sending it again would be a duplicate),
    not one dropped by a deactivation after the request.

    On main (58f732a): claim_replays handed out nothing; the dropped retry
    stayed dropped, though replay_dropped had counted it."""
    sub = register_active(db_url)
    stale, cancelled, attempted = (waiting_retry(db_url, sub) for _ in range(3))
    again = register_active(db_url)
    later = waiting_retry(db_url, again)
    assert stop_and_resume(db_url, sub) == 3
    assert stop_and_resume(db_url, again) == 1
    sql(db_url, "SELECT hookbridge.deactivate(%s)", again)  # a deactivation after the request
    sql(db_url, "SELECT hookbridge.activate(%s)", again)
    for did in (stale, attempted, later):
        retrier_drops(db_url, did)
    sql(db_url, "SELECT hookbridge.cancel(%s, 'not wanted')", cancelled)
    sql(db_url, "INSERT INTO hookbridge.delivery_attempts (delivery_id, attempt, started_at, "
        "outcome, error, subscription_id) VALUES (%s, 2, now(), 'delivered', NULL, %s)",
        attempted, sub)

    claimed = sql(db_url, "SELECT delivery_id::text, attempts, replay_requested_at > now() - "
                  "interval '1 minute' FROM hookbridge.claim_replays(100)")
    assert claimed == [(stale, 1, True)]
    assert sql(db_url, "SELECT delivery_id::text, status FROM hookbridge.deliveries "
               "WHERE delivery_id = ANY (%s::uuid[]) ORDER BY 1",
               [cancelled, attempted, later]) == sorted(
                   [(cancelled, "dropped"), (attempted, "dropped"), (later, "dropped")])
    assert sql(db_url, "SELECT count(*) FROM hookbridge.claim_replays(100)") == [(0,)]
