"""endpoint_health with several delivery-log writers (replicas) logging for the
same subscription (sql/60_deliveries.sql, _track_health).

A batch whose rows for a subscription are all successes leaves that
subscription's row alone when the row, as last committed, says 0 consecutive
failures and a last_success_at less than 1 s older than the batch's newest
success; so replicas logging successes for a busy subscription do not wait for
each other's lock on its one row. Failures, and the first success after them,
are written at once. Each test here uses its own
subscription id and attempt times from T0 on; "at(0.4)" is T0 + 0.4 s.
"""
import datetime
import uuid

import psycopg2
import psycopg2.errors
import pytest

# SQL only: the sanitizer pass (make test-asan) skips it.
pytestmark = pytest.mark.sql_only


T0 = datetime.datetime(2026, 12, 4, 10, 0, 0, tzinfo=datetime.timezone.utc)


def at(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


def log(conn, sub, *attempts):
    """One delivery-log batch: one INSERT of attempts (seconds, outcome, error),
    as a writer thread logs them."""
    rows = [(str(uuid.uuid4()), at(s), outcome, error, sub) for s, outcome, error in attempts]
    with conn.cursor() as cur:
        cur.execute("INSERT INTO hookbridge.delivery_attempts (delivery_id, attempt, started_at, "
                    "outcome, error, subscription_id) VALUES "
                    + ",".join(["(%s, 1, %s, %s, %s, %s)"] * len(rows)),
                    [v for r in rows for v in r])


def ok(s):
    return (s, "delivered", None)


def fail(s, error="HTTP 503"):
    return (s, "retry", error)


def health(conn, sub):
    with conn.cursor() as cur:
        cur.execute("SELECT consecutive_failures, failing_since, last_success_at, "
                    "last_failure_at, last_error FROM hookbridge.endpoint_health "
                    "WHERE subscription_id = %s", (sub,))
        return cur.fetchone()


def row_version(conn, sub):
    with conn.cursor() as cur:
        cur.execute("SELECT xmin::text FROM hookbridge.endpoint_health WHERE subscription_id = %s",
                    (sub,))
        return cur.fetchone()[0]


@pytest.fixture
def db(pg_cluster):  # noqa: F811
    name = pg_cluster.migrated_database("hlock")
    conns = []

    def connect(autocommit=True):
        c = pg_cluster.connect(name, autocommit=autocommit)
        conns.append(c)
        return c

    try:
        yield connect
    finally:
        for c in conns:
            c.close()
        pg_cluster.drop_database(name)


def test_steady_successes_write_the_row_about_once_a_second(db):
    conn, sub = db(), str(uuid.uuid4())
    log(conn, sub, ok(0))
    assert health(conn, sub) == (0, None, at(0), None, None)
    first = row_version(conn, sub)
    log(conn, sub, ok(0.4))
    log(conn, sub, ok(0.2), ok(0.999))
    # left alone: no new row version, last_success_at less than 1 s behind
    assert row_version(conn, sub) == first
    assert health(conn, sub) == (0, None, at(0), None, None)
    log(conn, sub, ok(1.0))  # 1 s behind: written
    second = row_version(conn, sub)
    assert second != first
    assert health(conn, sub) == (0, None, at(1.0), None, None)
    log(conn, sub, ok(1.5))  # an updated row is left alone as well
    assert row_version(conn, sub) == second
    assert health(conn, sub) == (0, None, at(1.0), None, None)


@pytest.mark.parametrize("first,second", [("left the row alone", "success"),
                                          ("left the row alone", "failure"),
                                          ("wrote the row", "success")])
def test_a_replica_logging_does_not_wait_for_another_replicas_open_success_batch(
        db, first, second):
    """Two writers' transactions open at once, the first having logged only
    successes for a subscription whose row says 0 failures: the second's batch
    for the same subscription goes through at once when the first left the row
    alone, or, when the first wrote it (its successes were 1 s newer), when the
    second's own successes are within 1 s of the row as last committed. Before,
    the first held the row's lock until it committed, and the second's INSERT
    waited for it (here: failed on its lock_timeout)."""
    setup, sub = db(), str(uuid.uuid4())
    log(setup, sub, ok(0))
    log(setup, sub, fail(0.5))
    log(setup, sub, ok(1))  # a row inserted, then updated: as a busy subscription's
    a, b = db(autocommit=False), db(autocommit=False)
    log(a, sub, ok(1.3) if first == "left the row alone" else ok(2))
    with b.cursor() as cur:
        cur.execute("SET lock_timeout = '2s'")
    try:
        log(b, sub, ok(1.5) if second == "success" else fail(1.5))
    except psycopg2.errors.LockNotAvailable:
        pytest.fail("the second writer's batch waited for the first's lock on endpoint_health")
    b.commit()
    a.commit()  # after b: a's successes were logged before b's batch, so they come first
    if first == "wrote the row":
        assert health(setup, sub) == (0, None, at(2), at(0.5), "HTTP 503")
    elif second == "success":
        assert health(setup, sub) == (0, None, at(1), at(0.5), "HTTP 503")
    else:
        assert health(setup, sub) == (1, at(1.5), at(1), at(1.5), "HTTP 503")


def test_a_failure_after_successes_shows_at_once(db):
    conn, sub = db(), str(uuid.uuid4())
    log(conn, sub, ok(0))
    log(conn, sub, ok(0.5))  # left alone
    log(conn, sub, fail(0.6))
    assert health(conn, sub) == (1, at(0.6), at(0), at(0.6), "HTTP 503")
    log(conn, sub, ok(0.7), fail(0.8, "timeout after 10000 ms"))  # a success, then a failure
    assert health(conn, sub) == (1, at(0.8), at(0.7), at(0.8), "timeout after 10000 ms")
    log(conn, sub, fail(0.9, "circuit open: 5 failures"))  # not the endpoint's answer: ignored
    assert health(conn, sub) == (1, at(0.8), at(0.7), at(0.8), "timeout after 10000 ms")


def test_a_success_after_failures_resets_the_count_at_once(db):
    conn, sub = db(), str(uuid.uuid4())
    log(conn, sub, ok(0))
    log(conn, sub, fail(0.2), fail(0.3, "HTTP 500"))
    assert health(conn, sub) == (2, at(0.2), at(0), at(0.3), "HTTP 500")
    log(conn, sub, ok(0.4))  # less than 1 s after the last success, yet written
    assert health(conn, sub) == (0, None, at(0.4), at(0.3), "HTTP 500")


def test_a_success_logged_while_a_failure_is_being_committed_comes_before_it(db):
    """The order the row follows: a batch that leaves the row alone counts where it
    read the row; one that writes it, where it commits. So a success logged
    while another writer's failure is not yet committed (a few milliseconds)
    counts before that failure, even if it commits after it; the next success
    resets the count. (Before, it waited for the failure's commit and counted
    after it. Waiting for an open writer instead would make every success batch
    that comes while the row is being written wait too, one after the other.)"""
    watch, sub = db(), str(uuid.uuid4())
    log(watch, sub, ok(0))
    a, b = db(autocommit=False), db(autocommit=False)
    log(a, sub, fail(0.2))
    with b.cursor() as cur:
        cur.execute("SET lock_timeout = '2s'")
    log(b, sub, ok(0.4))  # does not wait for a
    a.commit()
    b.commit()
    assert health(watch, sub) == (1, at(0.2), at(0), at(0.2), "HTTP 503")
    log(watch, sub, ok(0.5))
    assert health(watch, sub) == (0, None, at(0.5), at(0.2), "HTTP 503")


def test_subscription_overview_follows_failures_and_successes_at_once(db):
    """What a user sees: last_delivered_at may be less than 1 s behind, while
    health turns failing with a delivery that fails and healthy again with the
    next one delivered."""
    conn = db()
    with conn.cursor() as cur:
        cur.execute("SELECT hookbridge.register('h', 'https://example.com/h', "
                    "ARRAY['user.session.start'])")
        sub = cur.fetchone()[0]
        cur.execute("SELECT hookbridge.record_verification(%s, true)", (sub,))
        cur.execute("SELECT hookbridge.activate(%s)", (sub,))

    def deliver(s, status):
        did = str(uuid.uuid4())
        with conn.cursor() as cur:
            cur.execute("INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, "
                        "event_ids, event_type, status, attempts, first_attempt_at, "
                        "last_attempt_at, last_error) VALUES (%s, %s, %s, 'user.session.start', "
                        "%s, 1, %s, %s, %s)",
                        (did, sub, str(uuid.uuid4()), status, at(s), at(s),
                         None if status == "delivered" else "HTTP 500"))
            cur.execute("INSERT INTO hookbridge.delivery_attempts (delivery_id, subscription_id, "
                        "attempt, started_at, http_status, outcome, error) "
                        "VALUES (%s, %s, 1, %s, %s, %s, %s)",
                        (did, sub, at(s), 200 if status == "delivered" else 500, status,
                         None if status == "delivered" else "HTTP 500"))

    def overview():
        with conn.cursor() as cur:
            cur.execute("SELECT health, consecutive_failures, last_delivered_at "
                        "FROM hookbridge.subscription_overview WHERE id = %s", (sub,))
            return cur.fetchone()

    deliver(0, "delivered")
    deliver(0.5, "delivered")
    assert overview() == ("healthy", 0, at(0))  # 0.5 s behind the last delivery
    deliver(0.7, "failed")
    assert overview() == ("failing", 1, at(0))
    deliver(0.9, "delivered")
    assert overview() == ("healthy", 0, at(0.9))
