"""Faults behind tests that failed now and then in clean-clone CI runs
(session 15): each test shows what a user saw before its fix.

- A subscription change committed while a service loads the subscriptions
  (its first load, or the reload after a reconnect) is applied at once, not
  a minute later. PostgreSQL sends the notification of a change committed
  while a statement runs before that statement's answer: libpq took it in
  with the load's answer, the socket never turned readable for it, and the
  service applied it only at its next sweep (60 s). Seen in CI as two
  dispatchers started together: one sealed the new subscription's values
  while the other loaded it, skipped it as not sealed yet, and then consumed
  events for a minute without it (test_promises2's take-over test)."""
import psycopg2

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, produce
from test_delivery import event, sql
from test_promises import checking, verified_active

# The services' load of the subscriptions (lib/hb_snapshot.c, SNAPSHOT_SELECT)
LOAD_SQL = "SELECT s.id::text, s.name, s.url, s.status%"


def load_running(cur):
    """The (pid, xact_start) of a load of the subscriptions under way with its
    snapshot taken, or None. Parse, bind and execute each restart
    query_start, and the snapshot is taken at bind: a statement whose phase
    has run for 10 ms is executing (parsing and binding it take well under a
    millisecond)."""
    cur.execute("SELECT pid, xact_start FROM pg_stat_activity"
                " WHERE datname = current_database() AND state = 'active'"
                "   AND query_start < clock_timestamp() - interval '10 ms'"
                "   AND query LIKE %s", (LOAD_SQL,))
    row = cur.fetchone()
    return row and tuple(row)


def test_a_change_committed_during_the_first_load_is_applied_at_once(db_url, procs, workdir):
    """A verified subscription is activated while the dispatcher's first load
    of the subscriptions runs (after its snapshot: the load still sees it
    inactive). The dispatcher applies the activation as soon as the load is
    in, and delivers the event produced next. (Before: it kept the
    subscription inactive until its sweep a minute later, and the event,
    consumed meanwhile, went nowhere.) The load is made to take a moment by a
    subscription with a large option value (set by plain SQL, read by every
    snapshot)."""
    broker = Broker(procs, workdir)
    rcv = checking(procs, workdir)
    sub = verified_active(db_url, rcv.url)
    sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
    sql(db_url, "INSERT INTO hookbridge.subscriptions (name, url, options)"
        " SELECT 'large', 'http://127.0.0.1:9/', jsonb_build_object('padding',"
        "        string_agg(md5(i::text), '')) FROM generate_series(1, 500000) i")
    # not "with conn": a transaction, in which pg_stat_activity stays as it was
    conn = psycopg2.connect(db_url)
    try:
        conn.autocommit = True
        cur = conn.cursor()
        for attempt in range(3):
            d = Dispatcher(procs, db_url, broker.bootstrap, name=f"dispatcher-{attempt}")
            running = wait_until(lambda: load_running(cur), 20,
                                 "the dispatcher's first load of the subscriptions",
                                 interval=0.002)
            # the activation committed while that load still ran, so that its
            # notification reaches the loading session before the load's
            # answer (pg_stat_activity is read afresh at its first use in a
            # transaction); a test held up past the load tries again
            cur.execute("BEGIN")
            cur.execute("SELECT hookbridge.activate(%s)", (sub,))
            if load_running(cur) == running:
                cur.execute("COMMIT")
                break
            cur.execute("ROLLBACK")
            d.proc.stop()
        else:
            raise AssertionError("the load ended before the activation three times")
    finally:
        conn.close()
    d.wait_ready()
    ev = event("user.session.start")
    produce(broker.bootstrap, [ev])
    wait_until(lambda: [e["uuid"] for _, e in rcv.events()] == [ev["uuid"]], 15 * SLOW,
               "the event delivered to the subscription activated during the load")
    assert "subscription changed: active, verified" in d.proc.output()
