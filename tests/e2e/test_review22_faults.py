"""The SQL API and the delivery log under production load (review 22): the
delivery log's retention (hookbridge.maintain_delivery_log) run while the
services write the log and operators read it, a verification outcome
recorded while an operator deregisters the subscription, a large
replay_failed() of a rate-limited subscription, two operators replaying one
subscription at once, and the query docs/sql.md
gives for a subscription's newest deliveries, on a busy subscription.

Each test was shown to fail on 9ec6cf5."""
import datetime
import json
import re
import threading
import time
import uuid

import psycopg2
import pytest

from hbtest.pg import REPO
from hbtest.procs import SLOW, wait_until
from test_delivery import register_verified
from test_retry import stack

SERVICE = "hookbridge_service"
OPERATOR = "hookbridge_operator"


def connect(db_url, role=None, autocommit=True):
    conn = psycopg2.connect(db_url)
    conn.autocommit = autocommit
    if role:
        with conn.cursor() as cur:
            cur.execute(f"SET ROLE {role}")
        if not autocommit:
            conn.commit()
    return conn


def sql(db_url, query, *args, role=None):
    conn = connect(db_url, role)
    try:
        with conn.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def days_ago(n):
    return datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=n)


def old_days(db_url, first, count):
    """Partitions of `count` days from `first` days ago on (past the default
    30 days' retention), each with a delivery and its attempt."""
    sql(db_url, "SELECT * FROM hookbridge.maintain_delivery_log("
        f"now() - interval '{first} days', {count - 1})")
    days = [days_ago(first - i) for i in range(count)]
    for day in days:
        did = str(uuid.uuid4())
        sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
            "event_type, status, attempts, log_day) VALUES (%s, gen_random_uuid(), 'e', "
            "'user.session.start', 'delivered', 1, %s)", did, day)
        sql(db_url, "INSERT INTO hookbridge.delivery_attempts (delivery_id, attempt, started_at, "
            "outcome) VALUES (%s, 1, %s::date + interval '12 hours', 'delivered')", did, day)
    return days


def partition_names(days):
    return {f"{t}_p{d:%Y%m%d}" for d in days for t in ("deliveries", "delivery_attempts")}


def waiting_on_a_lock(db_url, pid):
    return sql(db_url, "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", pid)[0][0]


class Maintenance(threading.Thread):
    """hookbridge.maintain_delivery_log() as the retrier runs it: its role,
    one statement, in a thread; .result holds its rows or the error."""

    def __init__(self, db_url):
        super().__init__(daemon=True)
        self.conn = connect(db_url, SERVICE)
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            self.pid = cur.fetchone()[0]
        self.result = None
        self.took = None

    def run(self):
        t0 = time.monotonic()
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT action, object FROM hookbridge.maintain_delivery_log()")
                self.result = cur.fetchall()
        except psycopg2.Error as e:
            self.result = e
        finally:
            self.took = time.monotonic() - t0
            self.conn.close()


@pytest.mark.sql_only
def test_retention_and_the_delivery_log_writer_do_not_deadlock(db_url):
    """The writer of the delivery log (hb_dlog.c) writes a batch's deliveries,
    then their attempts, in one transaction. The retention's drops took the
    two tables the other way round (a day's delivery_attempts partition first):
    a maintenance that came while a batch was between its two statements
    deadlocked with it, and PostgreSQL cancelled one of them, most often the
    maintenance, which undid everything it had done (under a steady write load
    six runs in ten failed so, and the next try is a minute later). Now it
    takes the tables in the writer's order: it waits for the batch, which
    commits, and then drops the days past the retention."""
    days = old_days(db_url, 40, 1)
    writer = connect(db_url, SERVICE, autocommit=False)
    try:
        did = str(uuid.uuid4())
        with writer.cursor() as cur:
            cur.execute("INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, "
                        "event_ids, event_type, status, attempts, first_attempt_at, "
                        "last_attempt_at) VALUES (%s, gen_random_uuid(), 'e', "
                        "'user.session.start', 'delivered', 1, now(), now())", (did,))
        m = Maintenance(db_url)
        m.start()
        wait_until(lambda: waiting_on_a_lock(db_url, m.pid) or not m.is_alive(), 10,
                   "the maintenance waiting for the writer's batch")
        with writer.cursor() as cur:
            cur.execute("INSERT INTO hookbridge.delivery_attempts (delivery_id, attempt, "
                        "started_at, outcome) VALUES (%s, 1, now(), 'delivered')", (did,))
        writer.commit()
    finally:
        writer.close()
    m.join(30 * SLOW)
    assert not isinstance(m.result, Exception), m.result
    assert {o for a, o in m.result if a == "dropped"} == partition_names(days), m.result
    assert sql(db_url, "SELECT count(*) FROM hookbridge.delivery_attempts WHERE delivery_id = %s",
               did) == [(1,)]


@pytest.mark.sql_only
def test_retention_creating_and_dropping_days_does_not_deadlock_with_a_reader(db_url):
    """The first maintenance of a UTC day creates the partitions of a new day
    and drops those of an old one. It created first: attaching a partition
    holds the table's DEFAULT partition exclusively until the end, so a
    reader of the log (the services' look-ups read every partition) that
    came meanwhile took the parent table and waited for the DEFAULT
    partition, and the drops, which need the parent, deadlocked with it. Now
    the drops come first: the reader waits for the maintenance, no more."""
    days = old_days(db_url, 40, 1)
    ahead = days_ago(-3)
    sql(db_url, f"DROP TABLE hookbridge.deliveries_p{ahead:%Y%m%d}, "
        f"hookbridge.delivery_attempts_p{ahead:%Y%m%d}")
    holder = connect(db_url, autocommit=False)  # a moment's read of the attempts' DEFAULT
    reader = connect(db_url, SERVICE)
    out = {}
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE hookbridge.delivery_attempts_default IN ACCESS SHARE MODE")
        m = Maintenance(db_url)
        m.start()
        wait_until(lambda: waiting_on_a_lock(db_url, m.pid), 10, "the maintenance waiting")
        with reader.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]

        def look_up():
            try:
                with reader.cursor() as c:
                    c.execute("SELECT status FROM hookbridge.deliveries WHERE delivery_id = "
                              "gen_random_uuid()")
                    out["rows"] = c.fetchall()
            except psycopg2.Error as e:
                out["error"] = f"{e.pgcode}: {e.pgerror}"

        t = threading.Thread(target=look_up, daemon=True)
        t.start()
        wait_until(lambda: waiting_on_a_lock(db_url, pid), 10, "the look-up waiting")
        holder.rollback()
        m.join(30 * SLOW)
        t.join(30 * SLOW)
    finally:
        holder.close()
        reader.close()
    assert out == {"rows": []}, out
    assert not isinstance(m.result, Exception), m.result
    assert {o for a, o in m.result if a == "dropped"} == partition_names(days), m.result
    assert {o for a, o in m.result if a == "created"} == partition_names([ahead]), m.result


@pytest.mark.sql_only
def test_retention_waiting_for_a_long_report_does_not_stop_the_log(db_url):
    """A long report reading hookbridge.deliveries when the retention runs:
    the maintenance gave up on each day after its lock_timeout (5 s), but it
    had dropped that day's delivery_attempts partition first and kept its
    exclusive lock on delivery_attempts until the end, so every write of the
    delivery log waited 5 s times the days to drop (after lowering the
    retention by weeks, minutes), and so did everything else on the retrier's
    store connection. Now it waits once (the writes queue behind that wait,
    at most the 5 s docs/operations.md states), holds nothing after it, and
    says which days it left for next time; the next run drops them."""
    days = old_days(db_url, 45, 6)
    report = connect(db_url, OPERATOR, autocommit=False)
    try:
        with report.cursor() as cur:
            cur.execute("SELECT count(*) FROM hookbridge.deliveries")
        m = Maintenance(db_url)
        m.start()
        wait_until(lambda: waiting_on_a_lock(db_url, m.pid), 10, "the maintenance waiting")
        # the delivery log's writer goes on meanwhile
        t0 = time.monotonic()
        conn = connect(db_url, SERVICE)
        conn.cursor().execute("SET statement_timeout = '20s'")
        try:
            with conn.cursor() as cur:
                for _ in range(5):
                    cur.execute("INSERT INTO hookbridge.delivery_attempts (delivery_id, attempt, "
                                "started_at, outcome) VALUES (gen_random_uuid(), 1, now(), "
                                "'delivered')")
                    time.sleep(0.2)
        finally:
            conn.close()
        wrote = time.monotonic() - t0
        m.join(60 * SLOW)
    finally:
        report.rollback()
        report.close()
    assert wrote < 8 * SLOW, f"the log's writes waited for the maintenance: {wrote:.1f} s"
    assert not isinstance(m.result, Exception), m.result
    assert m.took < 8 * SLOW, f"maintenance took {m.took:.1f} s"
    skipped = {o for a, o in m.result if a == "skipped"}
    assert skipped == {n + " (busy: dropped next time)" for n in partition_names(days)}, m.result
    done = sql(db_url, "SELECT action, object FROM hookbridge.maintain_delivery_log()", role=SERVICE)
    assert {o for a, o in done if a == "dropped"} == partition_names(days), done


@pytest.mark.sql_only
def test_a_verification_outcome_for_a_subscription_being_deregistered_is_out_of_date(db_url):
    """record_verification() returns false for a subscription deregistered
    while its challenge ran (docs/sql.md). When the deregister() was still
    open as the outcome came, the outcome waited for its lock and then failed
    with HB010, which the dispatcher logs as an error ("cannot record
    verification") and counts as a database error."""
    sub = sql(db_url, "SELECT hookbridge.register('r22', 'https://r22.example.com/hook', "
              "ARRAY['user.session.start'])", role=OPERATOR)[0][0]
    sql(db_url, "SELECT hookbridge.verify(%s)", sub, role=OPERATOR)
    claim = sql(db_url, "SELECT hookbridge.claim_verification_until(%s)", sub, role=SERVICE)[0][0]
    assert claim is not None
    op = connect(db_url, OPERATOR, autocommit=False)
    out = {}
    try:
        with op.cursor() as cur:
            cur.execute("SELECT hookbridge.deregister(%s)", (sub,))
        svc = connect(db_url, SERVICE)
        with svc.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]

        def record():
            try:
                with svc.cursor() as c:
                    c.execute("SELECT hookbridge.record_verification(%s, false, 'HTTP 500', "
                              "'https://r22.example.com/hook', %s)", (sub, claim))
                    out["recorded"] = c.fetchone()[0]
            except psycopg2.Error as e:
                out["error"] = f"{e.pgcode}: {e.pgerror}"

        t = threading.Thread(target=record, daemon=True)
        t.start()
        wait_until(lambda: waiting_on_a_lock(db_url, pid), 10, "the outcome waiting")
        op.commit()
        t.join(10 * SLOW)
        svc.close()
    finally:
        op.close()
    assert out == {"recorded": False}, out
    assert sql(db_url, "SELECT status, verification, deregistered_at IS NOT NULL "
               "FROM hookbridge.subscriptions WHERE id = %s", sub) == [("inactive", "unverified",
                                                                       True)]


def test_a_large_replay_of_a_rate_limited_subscription_is_paced_not_churned(db_url, procs,
                                                                           workdir):
    """replay_failed() made every delivery due at once and the retrier claimed
    100 a second: for a subscription with a rate limit, those over the limit
    went back to the first delay tier unattempted, logged as an attempt each
    time ('rate limited: ...'), and came round again and again until their
    turn (3000 replays at 5/s: 59,000 attempt rows in a minute for 300
    requests made). Now they are given their turns, at half the limit, and
    handed out only when due: each request is logged once, and the endpoint
    gets no more than the limit."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "2s,5s")
    sub = register_verified(db_url, receiver.url, ["user.session.start"],
                            {"rate_limit": {"per_second": 4, "burst": 2}})
    sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
        "event_type, status, attempts, first_attempt_at, last_attempt_at, last_http_status, "
        "last_error, body, content_type) SELECT gen_random_uuid(), %s, gen_random_uuid()::text, "
        "'user.session.start', 'failed', 8, now() - interval '2 hours' + i * interval '1 ms', "
        "now() - interval '1 hour', 500, 'HTTP 500', '{\"data\": {}}', 'application/json' "
        "FROM generate_series(1, 200) i", sub)
    t0 = time.monotonic()
    assert sql(db_url, "SELECT hookbridge.replay_failed(%s, now() - interval '1 day')", sub,
               role=OPERATOR) == [(200,)]
    # one at once (half the burst), then one every 0.5 s: the last in about 100 s
    due = sql(db_url, "SELECT count(*) FILTER (WHERE replay_due_at IS NULL), "
              "extract(epoch FROM max(replay_due_at) - min(replay_requested_at)) "
              "FROM hookbridge.deliveries WHERE subscription_id = %s", sub)[0]
    assert due[0] == 1 and 99 <= due[1] <= 100.5, due
    time.sleep(8 * SLOW)
    logged = sql(db_url, "SELECT count(*) FILTER (WHERE error LIKE 'rate limited%%'), count(*) "
                 "FROM hookbridge.delivery_attempts WHERE subscription_id = %s", sub)[0]
    delivered = sql(db_url, "SELECT count(*) FROM hookbridge.deliveries "
                    "WHERE subscription_id = %s AND status = 'delivered'", sub)[0][0]
    assert logged[0] <= 3, f"replays came round the delay tiers: {logged}"
    took = time.monotonic() - t0
    assert took / 2 - 2 <= delivered <= 2 * took + 2, (delivered, took)  # about 2 a second
    times = sorted(p["time_ms"] for p in receiver.posts())
    assert max(sum(1 for u in times if t <= u < t + 1000) for t in times) <= 2 + 4, times


@pytest.mark.sql_only
def test_the_documented_newest_deliveries_of_a_subscription_do_not_read_them_all(db_url):
    """docs/sql.md's query for "the last 20 deliveries of one subscription"
    filtered recent_deliveries on subscription_name: PostgreSQL joined, then
    fetched and sorted every delivery of the subscription in the week (15 s
    for one with 2 million a day), holding the log's tables meanwhile, which
    the retention's drops wait for. The query it gives now reads a few rows
    of each day's index."""
    text = (REPO / "docs" / "sql.md").read_text()
    query = re.search(r"-- The last 20 deliveries of one subscription\n(.*?;)", text, re.S).group(1)
    sub = sql(db_url, "SELECT hookbridge.register('crm sync', 'https://crm.example.com/hook', "
              "ARRAY['user.session.start'])", role=OPERATOR)[0][0]
    sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
        "event_type, status, attempts, created_at, log_day) SELECT gen_random_uuid(), %s, 'e', "
        "'user.session.start', 'delivered', 1, t, (t AT TIME ZONE 'UTC')::date "
        "FROM (SELECT now() - i * interval '1 second' AS t FROM generate_series(1, 50000) i) g",
        sub)
    sql(db_url, "ANALYZE hookbridge.deliveries")
    plan = sql(db_url, "EXPLAIN (ANALYZE, FORMAT JSON) " + query, role=OPERATOR)[0][0]
    read = []

    def walk(node):
        if node.get("Relation Name", "").startswith("deliveries"):
            read.append(node["Actual Rows"] * node.get("Actual Loops", 1))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    assert 20 <= sum(read) <= 200, (sum(read), json.dumps(plan)[:3000])
    assert len(sql(db_url, query, role=OPERATOR)) == 20


@pytest.mark.sql_only
def test_two_operators_replaying_one_subscription_at_once_take_turns(db_url):
    """replay_failed() moves what it replays to today's partition. A second
    call for the same subscription while the first was not committed waited
    for the first's rows and then failed with SQLSTATE 40001 ("tuple to be
    locked was already moved to another partition due to concurrent
    update"), and so did a replay() or cancel() of one of them. Now they wait
    for the first: the second replay_failed() finds nothing left to replay,
    replay() finds the delivery being replayed (HB021), cancel() withdraws
    its replay."""
    sub = sql(db_url, "SELECT hookbridge.register('r22', 'https://r22.example.com/hook', "
              "ARRAY['user.session.start'])", role=OPERATOR)[0][0]
    sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
        "verified_at = now(), status = 'active' WHERE id = %s", sub)
    sql(db_url, "SELECT * FROM hookbridge.maintain_delivery_log(now() - interval '3 days', 0)")
    sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
        "event_type, status, attempts, first_attempt_at, last_attempt_at, body, log_day) "
        "SELECT gen_random_uuid(), %s, 'e', 'user.session.start', 'failed', 8, "
        "now() - interval '3 days', now() - interval '3 days', '{}', %s "
        "FROM generate_series(1, 50)", sub, days_ago(3))
    first = connect(db_url, OPERATOR, autocommit=False)
    out = {}
    try:
        with first.cursor() as cur:
            cur.execute("SELECT hookbridge.replay_failed(%s, now() - interval '7 days')", (sub,))
            assert cur.fetchone()[0] == 50
        second = connect(db_url, OPERATOR)
        with second.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]

        one, two = (r[0] for r in sql(db_url, "SELECT delivery_id FROM hookbridge.deliveries "
                                      "WHERE subscription_id = %s LIMIT 2", sub))
        calls = {"replayed": ("replay_failed(%s, now() - interval '7 days')", sub),
                 "one": ("replay(%s)", one), "two": ("cancel(%s)", two)}

        def call(key):
            conn = second if key == "replayed" else connect(db_url, OPERATOR)
            try:
                with conn.cursor() as c:
                    c.execute("SELECT hookbridge." + calls[key][0], (calls[key][1],))
                    out[key] = c.fetchone()[0]
            except psycopg2.Error as e:
                out[key] = f"{e.pgcode}: {e.pgerror}"

        threads = [threading.Thread(target=call, args=(k,), daemon=True) for k in calls]
        threads[0].start()
        wait_until(lambda: waiting_on_a_lock(db_url, pid), 10, "the second replay waiting")
        for t in threads[1:]:
            t.start()
        wait_until(lambda: sql(db_url, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                               "current_database() AND wait_event_type = 'Lock'")[0][0] >= 3,
                   10, "the replay and the cancel waiting")
        first.commit()
        for t in threads:
            t.join(10 * SLOW)
        second.close()
    finally:
        first.close()
    assert out["replayed"] == 0 and out["two"] == "", out  # (cancel returns void)
    assert out["one"].startswith("HB021: ERROR:  delivery ") and " is replay;" in out["one"], out
    assert sql(db_url, "SELECT status, count(*) FROM hookbridge.deliveries "
               "WHERE subscription_id = %s GROUP BY 1 ORDER BY 1", sub) == [("dropped", 1),
                                                                           ("replay", 49)]
