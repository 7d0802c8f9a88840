"""A deactivation drops the retries pending at that moment (docs/design.md:
"drops the retries pending at that moment"), even when the
subscription is active again before they come due; new deliveries after the
reactivation, and replays asked for after it, go through as usual.

subscriptions.deactivated_at (migration 0008) records when a subscription
last went from active to inactive, however that happened."""
import psycopg2
import pytest

from hbtest.procs import SLOW, wait_until
from hbtest.stack import produce
from test_delivery import event, register_verified, sql
from test_retry import stack
from test_roles import login_role

DROP_REASON = "subscription was deactivated after this delivery began"


def register_active(db_url):
    """A verified, active subscription, without a dispatcher to verify it."""
    sub = sql(db_url, "SELECT hookbridge.register('r', 'https://example.com/h', "
              "ARRAY['user.session.start'])")[0][0]
    sql(db_url, "SELECT hookbridge.record_verification(%s, true)", sub)
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    return sub


def deactivated_at(db_url, sub):
    return sql(db_url, "SELECT deactivated_at FROM hookbridge.subscriptions WHERE id = %s",
               sub)[0][0]


def db_now(db_url):
    return sql(db_url, "SELECT clock_timestamp()")[0][0]


def make_failing(db_url, sub):
    sql(db_url, "INSERT INTO hookbridge.endpoint_health (subscription_id, consecutive_failures,"
        " failing_since, last_failure_at, last_error)"
        " VALUES (%s, 9, now() - interval '2 hours', now(), 'HTTP 500')", sub)
    assert sql(db_url, "SELECT subscription_id FROM hookbridge.deactivate_failing('1 hour')") == [
        (sub,)]


# Every way a subscription stops: the API, the retrier's sweep, a failed
# re-verification, a plain UPDATE, deregistration.
STOPS = {
    "deactivate": lambda db, sub: sql(db, "SELECT hookbridge.deactivate(%s)", sub),
    "deactivate_failing": make_failing,
    "failed re-verification": lambda db, sub: sql(
        db, "SELECT hookbridge.record_verification(%s, false, 'wrong echo')", sub),
    "plain SQL": lambda db, sub: sql(
        db, "UPDATE hookbridge.subscriptions SET status = 'inactive' WHERE id = %s", sub),
    "deregister": lambda db, sub: sql(db, "SELECT hookbridge.deregister(%s)", sub),
}


@pytest.mark.sql_only
@pytest.mark.parametrize("how", sorted(STOPS))
def test_deactivated_at_is_when_it_last_stopped_however_it_stopped(db_url, how):
    sub = register_active(db_url)
    assert deactivated_at(db_url, sub) is None, "never deactivated yet"
    before = db_now(db_url)
    STOPS[how](db_url, sub)
    when = deactivated_at(db_url, sub)
    assert when is not None and before <= when <= db_now(db_url)


@pytest.mark.sql_only
def test_deactivated_at_survives_reactivation_and_moves_only_on_a_new_deactivation(db_url):
    sub = register_active(db_url)
    sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
    first = deactivated_at(db_url, sub)
    sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)  # already inactive: no change
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    sql(db_url, "UPDATE hookbridge.subscriptions SET name = 'renamed' WHERE id = %s", sub)
    assert deactivated_at(db_url, sub) == first, "kept by activate() and other changes"
    # Nobody writes it by hand: the trigger keeps the recorded time.
    sql(db_url, "UPDATE hookbridge.subscriptions SET deactivated_at = NULL WHERE id = %s", sub)
    assert deactivated_at(db_url, sub) == first
    sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
    assert deactivated_at(db_url, sub) > first


@pytest.mark.sql_only
def test_an_operator_can_read_when_a_subscription_was_deactivated(db_url):
    sub = register_active(db_url)
    sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
    ops = login_role(db_url, "hookbridge_operator")
    assert sql(ops, "SELECT deactivated_at FROM hookbridge.subscriptions WHERE id = %s",
               sub)[0][0] == deactivated_at(db_url, sub)
    with pytest.raises(psycopg2.Error) as e:
        sql(ops, "UPDATE hookbridge.subscriptions SET deactivated_at = NULL")
    assert e.value.pgcode == "42501"


# --- end to end -----------------------------------------------------------------


def changes_seen(svc, what="subscription changed: active, verified"):
    return svc.proc.output().count(what)


def deactivate_then_activate(db_url, sub, d, r):
    """deactivate() then activate() at once, and wait until both services
    have taken the subscription in as active again."""
    seen = (changes_seen(d), changes_seen(r))
    sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    wait_until(lambda: changes_seen(d) > seen[0] and changes_seen(r) > seen[1], 10,
               "both services to see the subscription active again")


def delivery_of(db_url, ev):
    rows = sql(db_url, "SELECT delivery_id, status, attempts, last_error FROM hookbridge.deliveries "
               "WHERE event_ids = %s", ev["uuid"])
    return rows[0] if rows else None


def test_a_retry_pending_at_a_deactivation_is_dropped_though_reactivated_before_it_is_due(
        db_url, procs, workdir):
    """Event A fails and waits 5 s for its retry; meanwhile the operator
    deactivates and reactivates the subscription. A's retry is dropped when it
    comes due (the receiver never sees A again; the log says why), while B,
    sent after the reactivation, fails once too and is retried and delivered."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "5s", receiver_args={"fail_first": 1})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    wait_until(lambda: changes_seen(d) and changes_seen(r), 10, "the services to see it active")

    a = event("user.session.start")
    produce(broker.bootstrap, [a])
    wait_until(lambda: len(receiver.posts()) == 1, 20 * SLOW, "A's first attempt")
    deactivate_then_activate(db_url, sub, d, r)
    b = event("user.session.start")
    produce(broker.bootstrap, [b])

    wait_until(lambda: b["uuid"] in [e["uuid"] for _, e in receiver.events()], 30 * SLOW,
               "B, retried and delivered")
    did_a, status, n, err = wait_until(
        lambda: (row := delivery_of(db_url, a)) and row[1] != "retry" and row, 20 * SLOW,
        "A's pending retry to be settled")
    assert (status, n, err) == ("dropped", 1, DROP_REASON)
    assert [e["uuid"] for _, e in receiver.events()] == [b["uuid"]], "A never arrived"
    assert [p["status"] for p in receiver.posts()] == [503, 503, 204], "A once, B twice"
    assert did_a not in {p["headers"]["webhook-id"] for p in receiver.posts()[1:]}
    assert wait_until(lambda: (row := delivery_of(db_url, b)) and row[1] == "delivered" and row,
                      10, "B's log")[2] == 2
    assert f"delivery dropped: {DROP_REASON}" in r.proc.output()


def test_a_replay_asked_for_after_the_reactivation_is_delivered(db_url, procs, workdir):
    """A delivery failed for good before the deactivation; after deactivate()
    and activate(), the operator replays it: it is sent again (its replay
    attempt fails once and its retry gets through), not dropped as something
    the deactivation stopped."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s", receiver_args={"fail_first": 3})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    wait_until(lambda: changes_seen(d) and changes_seen(r), 10, "the services to see it active")
    ev = event("user.session.start")
    produce(broker.bootstrap, [ev])
    did, *_ = wait_until(lambda: (row := delivery_of(db_url, ev)) and row[1] == "failed" and row,
                         30 * SLOW, "the delivery to fail for good")
    deactivate_then_activate(db_url, sub, d, r)

    assert sql(db_url, "SELECT hookbridge.replay(%s)", did)[0][0] == did
    wait_until(lambda: len(receiver.events()) == 1, 20 * SLOW, "the replayed delivery")
    assert [p["status"] for p in receiver.posts()] == [503, 503, 503, 204]
    assert {p["headers"]["webhook-id"] for p in receiver.posts()} == {did}
    _, status, n, _ = wait_until(
        lambda: (row := delivery_of(db_url, ev)) and row[1] == "delivered" and row, 10,
        "the log to say delivered")
    assert n == 4
    assert DROP_REASON not in r.proc.output()


def test_deliveries_dropped_by_a_deactivation_can_be_replayed_cancelled_ones_not(
        db_url, procs, workdir):
    """An endpoint fails; A and C wait for their retries. The operator
    cancels C, then the subscription is deactivated (as the automatic
    deactivation of a failing endpoint does): A's retry is dropped when it
    comes due. Once the endpoint is fixed and the subscription active again,
    replay_dropped brings A back (C, cancelled on purpose, stays dropped).
    Before, dropped deliveries could not be replayed at all: what a
    deactivation took was lost for good."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "2s", receiver_args={"fail_first": 1})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    wait_until(lambda: changes_seen(d) and changes_seen(r), 10, "the services to see it active")
    a, c = event("user.session.start"), event("user.session.start")
    produce(broker.bootstrap, [a, c])
    wait_until(lambda: len(receiver.posts()) == 2, 20 * SLOW, "the first attempts")
    did_c = wait_until(lambda: (row := delivery_of(db_url, c)) and row[1] == "retry" and row[0],
                       10, "C's retry row")
    sql(db_url, "SELECT hookbridge.cancel(%s, 'not wanted')", did_c)
    sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
    did_a, status, n, err = wait_until(
        lambda: (row := delivery_of(db_url, a)) and row[1] != "retry" and row, 20 * SLOW,
        "A's pending retry to be dropped")
    assert (status, n, err) == ("dropped", 1, "subscription inactive")
    assert len(receiver.posts()) == 2, "nothing sent while inactive"

    seen = (changes_seen(d), changes_seen(r))
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    wait_until(lambda: changes_seen(d) > seen[0] and changes_seen(r) > seen[1], 10,
               "both services to see the subscription active again")
    assert sql(db_url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
               sub) == [(1,)], "A, not the cancelled C"
    wait_until(lambda: len(receiver.events()) == 1, 20 * SLOW, "A replayed")
    assert receiver.posts()[-1]["headers"]["webhook-id"] == did_a
    assert wait_until(lambda: (row := delivery_of(db_url, a)) and row[1] == "delivered" and row,
                      10, "A's log to say delivered")[2] == 2
    assert delivery_of(db_url, c)[1] == "dropped"

    # C was cancelled while waiting for its retry: nothing of it was stored
    # to send again, and replay() says so.
    with pytest.raises(psycopg2.Error) as e:
        sql(db_url, "SELECT hookbridge.replay(%s)", did_c)
    assert e.value.pgcode == "HB021" and "no stored payload" in str(e.value)
    # A second replay_dropped finds nothing left to bring back.
    assert sql(db_url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
               sub) == [(0,)]
