"""Review 89: what retire0015 (a deregistered subscription forgotten past the
delivery log's retention, by maintain_delivery_log) and review87 (services
out of open files) broke. Real PostgreSQL; what was found right is said in
the report of review 89."""
import threading
import time

import psycopg2
import pytest

from hbtest.procs import SLOW, wait_until
from test_delivery import sql


def connect(db_url):
    c = psycopg2.connect(db_url)
    c.autocommit = True
    return c


def waiting_on_a_lock(db_url, pid):
    return sql(db_url, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
               pid) == [(True,)]


def in_thread(db_url, query, *args):
    """Runs query on its own connection in a thread; returns (backend pid,
    thread, outcome: {'rows': ...} or {'error': (sqlstate, message)})."""
    conn = connect(db_url)
    pid = conn.get_backend_pid()
    out = {}

    def run():
        try:
            with conn.cursor() as cur:
                cur.execute(query, args)
                out["rows"] = cur.fetchall()
        except psycopg2.Error as e:
            out["error"] = (e.pgcode, (e.pgerror or "").strip().splitlines()[0])
        finally:
            conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return pid, t, out


@pytest.mark.sql_only
def test_cancel_of_a_forgotten_subscriptions_delivery_during_the_maintenance_is_no_deadlock(
        db_url):
    """An operator cancels (or replays) a delivery of a subscription
    deregistered before the first day the log keeps while the daily
    maintenance forgets it. The maintenance locks the subscription's row
    (the batch), then takes the delivery log's tables for the day it drops;
    cancel() read the log and waited for that row: each waited for the
    other. Before: the cancel failed with "deadlock detected" (40P01) after
    deadlock_timeout, the log's writers queued behind the maintenance
    meanwhile (stress run: 2 cancels and 2 replays of 57 such calls
    deadlocked while three purges of 6,000 and 3,000 ran). Now cancel()
    does not wait for a deregistered subscription's row (no one moves its
    deliveries): the cancel is made at once, the maintenance drops the day
    and forgets the subscription."""
    # a day past the retention to drop (the daily run that drops one)
    sql(db_url, "SELECT hookbridge._dlog_add_day(current_date - 40)")
    subs = [sql(db_url, "SELECT hookbridge.register(%s, %s, ARRAY['user.session.start'], '{}')",
                f"gone-{i}", f"https://gone{i}.example.com/hook")[0][0] for i in range(2)]
    gone, held = subs
    delivery = sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, "
                   "event_ids, event_type, status, body) VALUES (gen_random_uuid(), %s, 'e1', "
                   "'user.session.start', 'retry', '{}') RETURNING delivery_id", gone)[0][0]
    sql(db_url, "INSERT INTO hookbridge.endpoint_health (subscription_id) VALUES (%s)", held)
    for sub in subs:
        sql(db_url, "SELECT hookbridge.deregister(%s)", sub)
    sql(db_url, "UPDATE hookbridge.subscriptions SET deregistered_at = now() - interval '40 days'")

    # the maintenance's batch (both rows locked) waits a moment at the
    # second one's endpoint health, held by another session
    holder = connect(db_url)
    holder.autocommit = False
    with holder.cursor() as cur:
        cur.execute("SELECT 1 FROM hookbridge.endpoint_health WHERE subscription_id = %s "
                    "FOR UPDATE", (held,))
    m_pid, m_thread, m_out = in_thread(
        db_url, "SELECT action, object FROM hookbridge.maintain_delivery_log()")
    wait_until(lambda: waiting_on_a_lock(db_url, m_pid), 10 * SLOW, "the maintenance's batch")

    c_pid, c_thread, c_out = in_thread(db_url, "SELECT hookbridge.cancel(%s, 'operator')",
                                       delivery)
    # before: the cancel waits for the subscription's row
    time.sleep(0.3)
    holder.commit()
    holder.close()
    c_thread.join(20 * SLOW)
    m_thread.join(20 * SLOW)
    assert "error" not in c_out, f"cancel: {c_out['error']}"
    assert sql(db_url, "SELECT status, last_error FROM hookbridge.deliveries "
               "WHERE delivery_id = %s", delivery) == [("dropped", "cancelled: operator")]
    done = m_out.get("rows")
    assert done is not None, m_out
    assert not [o for a, o in done if a == "skipped"], done
    assert any(a == "dropped" for a, o in done), done
    assert sql(db_url, "SELECT count(*) FROM hookbridge.subscriptions WHERE id = %s", held) \
        == [(0,)]
