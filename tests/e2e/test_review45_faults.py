"""Review 45: how subscription changes made in SQL reach the running
dispatcher and retrier, as an operator meets it under faults (a change
committed in a long transaction, ...).

Each check says what it did on main's binaries (9de0a62) and what holds it."""
import psycopg2

from hbtest.procs import SLOW, wait_until
from hbtest.stack import produce
from test_delivery import event, register_verified, sql
from test_reactivate import DROP_REASON, changes_seen, delivery_of
from test_retry import stack


def test_a_retry_begun_while_a_deactivation_was_uncommitted_is_dropped_at_its_commit(
        db_url, procs, workdir):
    """docs/design.md: deactivate(id) "drops the retries pending at that
    moment, even if the subscription is activated again before they come
    due". An operator deactivates inside a transaction that stays open a
    while (a script doing more work, a psql session with autocommit off);
    the services still see the subscription active, so event A is
    delivered meanwhile, fails and waits 5 s for its retry. Then the
    transaction commits (the deactivation takes effect: A's retry is
    pending at that moment) and the subscription is activated again. A's
    retry is dropped when due, as any retry pending at a deactivation.

    On main (9de0a62): deactivated_at was the clock of the UPDATE, before A
    began, so the reactivated subscription received A's retry (the
    receiver's posts were [503, 204], A delivered at attempt 2)."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "5s", receiver_args={"fail_first": 1})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    wait_until(lambda: changes_seen(d) and changes_seen(r), 10, "the services to see it active")

    op = psycopg2.connect(db_url)
    try:
        op.cursor().execute("SELECT hookbridge.deactivate(%s)", (sub,))  # not committed yet
        a = event("user.session.start")
        produce(broker.bootstrap, [a])
        wait_until(lambda: (row := delivery_of(db_url, a)) and row[1] == "retry", 20 * SLOW,
                   "A's first attempt, failed and logged, while the deactivation is open")
        seen = (changes_seen(d), changes_seen(r))
        op.commit()
    finally:
        op.close()
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    wait_until(lambda: changes_seen(d) > seen[0] and changes_seen(r) > seen[1], 10 * SLOW,
               "both services to see the subscription active again")

    _, status, n, err = wait_until(
        lambda: (row := delivery_of(db_url, a)) and row[1] != "retry" and row, 20 * SLOW,
        "A's pending retry to be settled")
    print(f"receiver's posts: {[p['status'] for p in receiver.posts()]}; A: {status}, {n}")
    assert (status, n, err) == ("dropped", 1, DROP_REASON)
    assert [p["status"] for p in receiver.posts()] == [503], "A's retry reached the endpoint"
