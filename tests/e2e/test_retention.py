"""Delivery-log retention (issue 14, part 3): deliveries and delivery_attempts
are partitioned by UTC day; the retrier creates the partitions ahead and drops
both tables' days past the retention (hookbridge.maintain_delivery_log, which
takes the time to act as of, so tests can pretend); the operator sets the
retention with hookbridge.set_retention (HB026 for a bad value); replay works
within it and says clearly (HB027) when a delivery is past it; an upgrade from
the unpartitioned tables keeps every row."""
import datetime
import re
import json
import time
import uuid

import psycopg2
import pytest

from hbtest.pg import REPO
from hbtest.procs import SLOW, wait_until
from hbtest.pyavro import single_object
from hbtest.avro import SCHEMA_DIR
from hbtest.stack import produce
from test_delivery import event, register_verified, sql
from test_retry import delivery, failed_delivery, stack

OLD_LAYOUT = REPO / "tests" / "fixtures" / "migrations-0008"
DAY = datetime.timedelta(days=1)


def today():
    return datetime.datetime.now(datetime.timezone.utc).date()


def partitions(db_url, table):
    """The day partitions of hookbridge.<table>, as dates."""
    rows = sql(db_url, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
               "WHERE i.inhparent = %s::regclass AND c.relname ~ '_p[0-9]{8}$'",
               f"hookbridge.{table}")
    return sorted(datetime.datetime.strptime(r[0][-8:], "%Y%m%d").date() for r in rows)


def maintain(db_url, now="now()", ahead=3):
    return sql(db_url, f"SELECT action, object FROM hookbridge.maintain_delivery_log({now}, {ahead})")


def log_delivery(db_url, sub, day, status="delivered", did=None, body=None):
    """A delivery and its one attempt, as the services log them, on `day`."""
    did = did or str(uuid.uuid4())
    at = datetime.datetime.combine(day, datetime.time(12), datetime.timezone.utc)
    sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
        "event_type, status, attempts, first_attempt_at, last_attempt_at, body, log_day, created_at)"
        " VALUES (%s, %s, 'e', 'user.session.start', %s, 1, %s, %s, %s, %s, %s)",
        did, sub, status, at, at, body, day, at)
    sql(db_url, "INSERT INTO hookbridge.delivery_attempts (delivery_id, subscription_id, attempt, "
        "started_at, http_status, outcome) VALUES (%s, %s, 1, %s, %s, %s)",
        did, sub, at, 204 if status == "delivered" else 500, status)
    return did


def sqlstate(db_url, query, *args):
    with pytest.raises(psycopg2.Error) as e:
        sql(db_url, query, *args)
    return e.value.pgcode, e.value.pgerror


def test_the_retrier_creates_the_partitions_ahead(db_url, procs, workdir):
    """A fresh log has today's partitions; the running retrier makes the next
    days' of both tables (at start, then hourly) and says so in its log."""
    for d in partitions(db_url, "deliveries"):
        if d > today():
            sql(db_url, f"DROP TABLE hookbridge.deliveries_p{d:%Y%m%d}, "
                f"hookbridge.delivery_attempts_p{d:%Y%m%d}")
    assert partitions(db_url, "deliveries") == [today()]
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s")
    want = [today() + i * DAY for i in range(4)]
    wait_until(lambda: partitions(db_url, "deliveries") == want
               and partitions(db_url, "delivery_attempts") == want,
               20 * SLOW, "the partitions of the next three days")
    wait_until(lambda: f"created deliveries_p{want[3]:%Y%m%d}" in r.proc.output(), 10 * SLOW,
               "the retrier's log line")
    # And the services' deliveries land in today's partitions.
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: (row := delivery(db_url, sub)) and row[1] == "delivered", 30 * SLOW,
               "the delivery logged")
    assert sql(db_url, "SELECT tableoid::regclass::text, log_day FROM hookbridge.deliveries") \
        == [(f"hookbridge.deliveries_p{today():%Y%m%d}", today())]
    assert sql(db_url, "SELECT tableoid::regclass::text, subscription_id::text "
               "FROM hookbridge.delivery_attempts") \
        == [(f"hookbridge.delivery_attempts_p{today():%Y%m%d}", sub)]


@pytest.mark.sql_only
def test_a_short_retention_drops_the_old_days_of_both_tables_and_nothing_else(db_url):
    sub = str(uuid.uuid4())  # the log has no foreign key to subscriptions
    # Partitions for the last ten days (pretending it is ten days ago, 10 ahead).
    maintain(db_url, "now() - interval '10 days'", 10)
    days = [today() - i * DAY for i in range(11)]
    assert set(days) <= set(partitions(db_url, "deliveries"))
    kept = {}
    for d in days:
        kept[log_delivery(db_url, sub, d)] = d
    stray = log_delivery(db_url, sub, today() - 40 * DAY)  # no partition: the DEFAULT one
    assert sql(db_url, "SELECT tableoid::regclass::text FROM hookbridge.deliveries "
               "WHERE delivery_id = %s", stray) == [("hookbridge.deliveries_default",)]
    other = {t: sql(db_url, f"SELECT * FROM hookbridge.{t} ORDER BY 1::text")
             for t in ("subscriptions", "endpoint_health", "event_types")}

    assert sql(db_url, "SELECT hookbridge.set_retention('5 days')") == [(5,)]
    done = maintain(db_url)
    first_kept = today() - 5 * DAY
    dropped = sorted(o for a, o in done if a == "dropped")
    assert dropped == sorted([f"deliveries_p{d:%Y%m%d}" for d in days if d < first_kept]
                             + [f"delivery_attempts_p{d:%Y%m%d}" for d in days if d < first_kept])
    assert ("deleted", f"deliveries_default: 1 rows before {first_kept}") in done
    assert ("deleted", f"delivery_attempts_default: 1 rows before {first_kept}") in done
    # Exactly the deliveries and attempts of the kept days remain, in their partitions.
    left = dict(sql(db_url, "SELECT delivery_id::text, log_day FROM hookbridge.deliveries"))
    assert left == {k: d for k, d in kept.items() if d >= first_kept}
    assert sorted(r[0] for r in sql(db_url, "SELECT delivery_id::text FROM "
                                    "hookbridge.delivery_attempts")) == sorted(left)
    assert min(partitions(db_url, "deliveries")) == first_kept
    assert min(partitions(db_url, "delivery_attempts")) == first_kept
    assert {t: sql(db_url, f"SELECT * FROM hookbridge.{t} ORDER BY 1::text")
            for t in other} == other

    # Pretend two days went by: two more days go; running it again does nothing.
    done = maintain(db_url, "now() + interval '2 days'")
    assert sorted(o for a, o in done if a == "dropped") == sorted(
        [f"deliveries_p{first_kept + i * DAY:%Y%m%d}" for i in range(2)]
        + [f"delivery_attempts_p{first_kept + i * DAY:%Y%m%d}" for i in range(2)])
    assert ("created", f"deliveries_p{today() + 5 * DAY:%Y%m%d}") in done
    assert [a for a, _ in maintain(db_url, "now() + interval '2 days'")] == []


@pytest.mark.sql_only
def test_writes_for_a_day_without_a_partition_wait_in_the_default_one_and_move_in(db_url):
    """A row of a day not created yet (a clock ahead) is written to the DEFAULT
    partition; when the day's partition is created, the row moves into it."""
    sub = str(uuid.uuid4())
    later = today() + 6 * DAY
    did = log_delivery(db_url, sub, later)
    assert sql(db_url, "SELECT tableoid::regclass::text FROM hookbridge.deliveries") \
        == [("hookbridge.deliveries_default",)]
    done = maintain(db_url, "now() + interval '5 days'", 1)
    assert ("created", f"deliveries_p{later:%Y%m%d} (1 rows from deliveries_default)") in done
    assert ("created", f"delivery_attempts_p{later:%Y%m%d} (1 rows from delivery_attempts_default)") \
        in done
    assert sql(db_url, "SELECT delivery_id::text, tableoid::regclass::text FROM hookbridge.deliveries") \
        == [(did, f"hookbridge.deliveries_p{later:%Y%m%d}")]


def retry_message(sub, did, attempt, first_attempt_ms, body='{"x":1}'):
    schema = json.loads((SCHEMA_DIR / "delivery_retry.avsc").read_text())
    return single_object(schema, {
        "delivery_id": did, "subscription_id": sub, "event_ids": [str(uuid.uuid4())],
        "event_type": "user.session.start", "content_type": "application/json", "body": body,
        "attempt": attempt, "not_before_ms": int(time.time() * 1000),
        "first_attempt_ms": first_attempt_ms, "last_status": 503, "last_error": "HTTP 503",
        "schedule_offset": 0})


def test_a_delivery_retried_the_next_day_keeps_its_one_row(db_url, procs, workdir):
    """A delivery whose first attempt was yesterday and whose retry is today:
    the retry (its DeliveryRetry carries first_attempt_ms) updates the same row,
    in yesterday's partition, and its attempt goes to today's. A retry so old
    that its day has no partition any more is still logged (DEFAULT)."""
    from kafka import KafkaProducer
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s")
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    maintain(db_url, "now() - interval '1 day'", 0)
    yesterday = today() - DAY
    first_ms = int(datetime.datetime.combine(yesterday, datetime.time(23, 59, 59, 500000),
                                             datetime.timezone.utc).timestamp() * 1000)
    did = str(uuid.uuid4())
    # attempt 1, as the dispatcher logged it yesterday
    sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
        "event_type, status, attempts, first_attempt_at, last_attempt_at, log_day) VALUES "
        "(%s, %s, 'e', 'user.session.start', 'retry', 1, to_timestamp(%s / 1000.0), "
        "to_timestamp(%s / 1000.0), %s)", did, sub, first_ms, first_ms, yesterday)
    old_did = str(uuid.uuid4())
    old_ms = int((time.time() - 40 * 86400) * 1000)
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap.split(","))
    for m in (retry_message(sub, did, 2, first_ms), retry_message(sub, old_did, 2, old_ms)):
        kp.send(broker.retry_prefix + "1s", key=sub.encode(), value=m)
    kp.flush()
    kp.close()
    wait_until(lambda: len(receiver.posts()) == 2, 30 * SLOW, "both retries delivered")
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries "
                           "WHERE status = 'delivered'") == [(2,)], 20 * SLOW, "both logged")
    assert sql(db_url, "SELECT tableoid::regclass::text, status, attempts FROM "
               "hookbridge.deliveries WHERE delivery_id = %s", did) \
        == [(f"hookbridge.deliveries_p{yesterday:%Y%m%d}", "delivered", 2)]
    assert sql(db_url, "SELECT tableoid::regclass::text, attempt, outcome FROM "
               "hookbridge.delivery_attempts WHERE delivery_id = %s", did) \
        == [(f"hookbridge.delivery_attempts_p{today():%Y%m%d}", 2, "delivered")]
    assert sql(db_url, "SELECT tableoid::regclass::text, status FROM hookbridge.deliveries "
               "WHERE delivery_id = %s", old_did) == [("hookbridge.deliveries_default", "delivered")]


def test_replay_within_the_retention_works_and_past_it_says_why_not(db_url, procs, workdir):
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s",
                                   receiver_args={"fail_first": 2})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    did, *_ = failed_delivery(db_url, sub, 30 * SLOW, "the first dead-lettered delivery")
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries "
                           "WHERE status = 'failed'") == [(2,)], 30 * SLOW, "the second")
    other = sql(db_url, "SELECT delivery_id::text FROM hookbridge.deliveries "
                "WHERE delivery_id <> %s", did)[0][0]
    # Both are twenty days old now (as if they had failed then).
    old = today() - 20 * DAY
    maintain(db_url, "now() - interval '20 days'", 0)
    sql(db_url, "UPDATE hookbridge.deliveries SET log_day = %s", old)

    # Within the retention (30 days): replayed, and moved to today, so a
    # retention that ends tomorrow cannot drop it under the replay.
    sql(db_url, "SELECT hookbridge.replay(%s)", did)
    assert sql(db_url, "SELECT log_day FROM hookbridge.deliveries WHERE delivery_id = %s",
               did) == [(today(),)]
    wait_until(lambda: len(receiver.events()) == 1, 30 * SLOW, "the replayed delivery")
    wait_until(lambda: sql(db_url, "SELECT status, log_day FROM hookbridge.deliveries "
                           "WHERE delivery_id = %s", did) == [("delivered", today())],
               20 * SLOW, "the replay logged under today")

    # Past it: the day is dropped, and replay says so, naming the retention.
    sql(db_url, "SELECT hookbridge.set_retention('10 days')")
    maintain(db_url)
    code, msg = sqlstate(db_url, "SELECT hookbridge.replay(%s)", other)
    assert code == "HB027", msg
    assert (f"delivery {other} is not in the delivery log, which keeps 10 days "
            f"(since {today() - 10 * DAY:%Y-%m-%d}): it was never made, its first attempt is still "
            "under way (a delivery is logged at its outcome), or it has been removed") in msg
    # The replayed one is still there.
    assert sql(db_url, "SELECT status FROM hookbridge.deliveries WHERE delivery_id = %s",
               did) == [("delivered",)]


@pytest.mark.sql_only
@pytest.mark.parametrize("value", ["NULL", "'0 days'", "'-3 days'", "'12 hours'",
                                   "'1 day 6 hours'", "'1 month'", "'3651 days'"])
def test_a_bad_retention_is_refused(db_url, value):
    code, msg = sqlstate(db_url, f"SELECT hookbridge.set_retention({value})")
    assert code == "HB026", msg
    assert "retention must" in msg
    assert sql(db_url, "SELECT hookbridge.limit('delivery_log_retention_days')") == [(30,)]


@pytest.mark.sql_only
@pytest.mark.parametrize("value,days", [("'24 hours'", 1), ("'168 hours'", 7), ("'2 weeks'", 14),
                                        ("'1 day 24 hours'", 2)])
def test_a_retention_of_whole_days_is_taken_however_it_is_written(db_url, value, days):
    """'24 hours' is a day: before, only intervals written in days were
    taken, and '24 hours' was refused as 'not whole days'."""
    assert sql(db_url, f"SELECT hookbridge.set_retention({value})") == [(days,)]
    assert sql(db_url, "SELECT hookbridge.limit('delivery_log_retention_days')") == [(days,)]


@pytest.mark.sql_only
def test_the_retention_row_is_checked_however_it_is_written(db_url):
    code, msg = sqlstate(db_url, "UPDATE hookbridge.limits SET value = 0 "
                         "WHERE name = 'delivery_log_retention_days'")
    assert code == "HB026" and "1 to 3650 days" in msg
    assert sql(db_url, "SELECT hookbridge.set_retention('7 days')") == [(7,)]
    assert sql(db_url, "SELECT hookbridge.limit('delivery_log_retention_days')") == [(7,)]


def test_an_upgrade_from_the_unpartitioned_log_keeps_every_row(pg_cluster):
    """A database of the old layout with deliveries and attempts of several
    days (one past the retention): `up` keeps every row, each in its day's
    partition; the first maintenance drops only the day past the retention."""
    db = pg_cluster.create_database("retupgrade")
    url = pg_cluster.url(db)
    try:
        pg_cluster.migrate(db, "up", migrations_dir=OLD_LAYOUT)
        sub = sql(url, "SELECT hookbridge.register('old', 'https://hooks.example.com/x', "
                  "ARRAY['user.session.start'], '{}'::jsonb)")[0][0]
        rows = {}
        for age in (0, 1, 2, 29, 45):
            did = str(uuid.uuid4())
            rows[did] = today() - age * DAY
            at = datetime.datetime.combine(rows[did], datetime.time(8), datetime.timezone.utc)
            sql(url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
                "event_type, status, attempts, first_attempt_at, last_attempt_at, created_at, body)"
                " VALUES (%s, %s, 'e', 'user.session.start', 'failed', 2, %s, %s, %s, '{}')",
                did, sub, at, at + datetime.timedelta(hours=30), at)
            for n, started in ((1, at), (2, at + datetime.timedelta(hours=30))):
                sql(url, "INSERT INTO hookbridge.delivery_attempts (delivery_id, attempt, "
                    "started_at, http_status, outcome, error) VALUES (%s, %s, %s, 500, %s, "
                    "'HTTP 500')", did, n, started, "retry" if n == 1 else "failed")
        cols = ("delivery_id, subscription_id, event_ids, event_type, status, attempts, "
                "first_attempt_at, last_attempt_at, last_error, body, created_at")
        before = sql(url, f"SELECT {cols} FROM hookbridge.deliveries ORDER BY 1")
        attempts_before = sql(url, "SELECT id, delivery_id, attempt, started_at, outcome "
                              "FROM hookbridge.delivery_attempts ORDER BY id")

        pg_cluster.migrate(db, "up")
        assert sql(url, f"SELECT {cols} FROM hookbridge.deliveries ORDER BY 1") == before
        assert sql(url, "SELECT id, delivery_id, attempt, started_at, outcome "
                   "FROM hookbridge.delivery_attempts ORDER BY id") == attempts_before
        assert dict(sql(url, "SELECT delivery_id::text, log_day FROM hookbridge.deliveries")) \
            == rows
        assert sql(url, "SELECT count(*) FROM hookbridge.deliveries_default") == [(0,)]
        assert sql(url, "SELECT DISTINCT subscription_id::text FROM "
                   "hookbridge.delivery_attempts") == [(sub,)]
        assert to_regclass(url, "deliveries_unpartitioned") is None
        # New attempts get ids after the old ones.
        assert sql(url, "SELECT nextval('hookbridge.delivery_attempts_id_seq')")[0][0] \
            > max(a[0] for a in attempts_before)

        done = maintain(url)
        oldest = today() - 45 * DAY
        assert sorted(o for a, o in done if a == "dropped") == sorted(
            [f"deliveries_p{oldest:%Y%m%d}", f"delivery_attempts_p{oldest:%Y%m%d}",
             f"deliveries_p{oldest + DAY:%Y%m%d}", f"delivery_attempts_p{oldest + DAY:%Y%m%d}"])
        assert dict(sql(url, "SELECT delivery_id::text, log_day FROM hookbridge.deliveries")) \
            == {k: d for k, d in rows.items() if d != oldest}
    finally:
        pg_cluster.drop_database(db)


def to_regclass(url, name):
    return sql(url, "SELECT to_regclass(%s)::text", f"hookbridge.{name}")[0][0]


@pytest.mark.sql_only
def test_the_services_role_maintains_and_the_operators_role_sets_the_retention(db_url):
    """maintain_delivery_log is the services' (hookbridge_service), set_retention
    the operators' (hookbridge_operator); neither may call the other's."""
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SET ROLE hookbridge_service")
        cur.execute("SELECT action FROM hookbridge.maintain_delivery_log(now() + interval '9 days', 0)")
        assert cur.fetchall() == [("created",), ("created",)]
        cur.execute("SELECT nextval('hookbridge.delivery_attempts_id_seq')")  # its attempts' ids
        with pytest.raises(psycopg2.Error) as e:
            cur.execute("SELECT hookbridge.set_retention('3 days')")
        assert e.value.pgcode == "42501"
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SET ROLE hookbridge_operator")
        cur.execute("SELECT hookbridge.set_retention('3 days')")
        assert cur.fetchall() == [(3,)]
        with pytest.raises(psycopg2.Error) as e:
            cur.execute("SELECT * FROM hookbridge.maintain_delivery_log()")
        assert e.value.pgcode == "42501"


@pytest.mark.sql_only
def test_a_delivery_is_found_by_its_id_alone_through_each_days_key(db_url):
    """The services' look-up and replay know only the delivery id: every day
    holding rows is searched by its primary key index, not scanned."""
    maintain(db_url, "now() - interval '2 days'", 2)
    for age in range(3):
        sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
            "event_type, log_day) SELECT gen_random_uuid(), gen_random_uuid(), 'e', 't', %s "
            "FROM generate_series(1, 3000)", today() - age * DAY)
    sql(db_url, "ANALYZE hookbridge.deliveries")
    some = "'00000000-0000-4000-8000-000000000001'::uuid"
    for query in (f"SELECT r.i, d.status FROM unnest(ARRAY[{some}]) WITH ORDINALITY "
                  "AS r(id, i) JOIN hookbridge.deliveries d ON d.delivery_id = r.id",
                  f"SELECT * FROM hookbridge.deliveries d WHERE d.delivery_id = {some} "
                  "ORDER BY d.log_day DESC LIMIT 1 FOR UPDATE"):
        plan = "\n".join(r[0] for r in sql(db_url, "EXPLAIN " + query))
        for age in range(3):
            assert f"deliveries_p{today() - age * DAY:%Y%m%d}_pkey" in plan, plan
        for part in re.findall(r"Seq Scan on (deliveries\w*)", plan):
            assert sql(db_url, f"SELECT count(*) FROM hookbridge.{part}") == [(0,)], plan


@pytest.mark.sql_only
def test_maintenance_gives_way_to_a_long_lock_and_does_it_next_time(db_url):
    """A session holding the log's tables (a long report, say) makes the
    maintenance skip what it cannot lock within its lock_timeout, say so, and
    do it next time; it never waits on it for long."""
    later = today() + 6 * DAY
    holder = psycopg2.connect(db_url)
    try:
        with holder.cursor() as cur:
            # What a long report holds: a new partition needs the DEFAULT
            # partition exclusively, so its creation waits (lock_timeout, 5 s).
            cur.execute("LOCK TABLE hookbridge.deliveries_default IN ACCESS SHARE MODE")
        t0 = time.monotonic()
        done = maintain(db_url, "now() + interval '6 days'", 0)
        assert time.monotonic() - t0 < 30 * SLOW
        assert ("skipped", f"partitions of {later} (busy: created next time)") in done, done
        assert later not in partitions(db_url, "deliveries")
    finally:
        holder.rollback()
        holder.close()
    done = maintain(db_url, "now() + interval '6 days'", 0)
    assert ("created", f"deliveries_p{later:%Y%m%d}") in done
    assert later in partitions(db_url, "deliveries") and later in partitions(db_url, "delivery_attempts")


@pytest.mark.sql_only
def test_maintenance_forgets_ordered_keys_whose_last_delivery_is_final(db_url):
    """ordering_tails grows with every key an ordered subscription ever saw;
    maintenance deletes the tails of keys quiet for an hour whose last
    delivery is final (or gone from the log), and keeps the tail of a key
    whose last delivery still waits, which later events must wait behind."""
    sub = str(uuid.uuid4())
    done = log_delivery(db_url, sub, today(), status="delivered")
    waiting = log_delivery(db_url, sub, today(), status="retry")
    gone = str(uuid.uuid4())
    fresh = log_delivery(db_url, sub, today(), status="delivered")
    for key, did, age in (("done", done, "2 hours"), ("waiting", waiting, "2 hours"),
                          ("gone", gone, "2 hours"), ("fresh", fresh, "1 minute")):
        sql(db_url, "INSERT INTO hookbridge.ordering_tails (subscription_id, ordering_key, "
            f"delivery_id, updated_at) VALUES (%s, %s, %s, now() - interval '{age}')",
            sub, key, did)
    out = maintain(db_url)
    assert ("deleted", "ordering_tails: 2 keys whose last delivery is final") in out, out
    left = sorted(r[0] for r in sql(db_url, "SELECT ordering_key FROM hookbridge.ordering_tails "
                                    "WHERE subscription_id = %s", sub))
    assert left == ["fresh", "waiting"]
