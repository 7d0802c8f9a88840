"""Review 28: what review 25, review 26 and the lead merged on 2026-12-06,
under faults a production user meets.

Each test says what it holds and how it was shown to fail on d126e82."""
import json
import os
import subprocess
import time

import psycopg2

from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, Retrier
from test_delivery import SECRET
from test_migrate_layout import PROBE, sql
from test_secrets import sealed_state


def test_an_upgrade_caught_in_a_deadlock_with_a_writer_rolls_back_and_tries_again(
        pg_cluster, tree):  # noqa: F811
    """docs/operations.md, Locks during an upgrade: a step of `up` that cannot
    have its locks rolls back, so the services' writes go on, and is tried
    again until HOOKBRIDGE_MIGRATE_LOCK_WAIT. The SQL files lock the tables
    one after another (a trigger of subscriptions, later one of
    delivery_attempts), so a writer holding one of those and then asking for
    the other closes a cycle. PostgreSQL's deadlock check runs after
    deadlock_timeout (1 s by default), before HOOKBRIDGE_MIGRATE_LOCK_TIMEOUT
    (2 s), in the session that waited first: `up`, which failed at once with
    "deadlock detected" (40P01, not the lock timeout's 55P03) and exit 1. Now
    a deadlock is tried again as a lock timeout is: the writer goes on, and
    `up` finishes once it has committed. A step that fails for another reason
    is still not tried again (test_migrate_layout's failing SQL file).

    Checked to fail without the change: on d126e82 `up` exits 1 with
    "deadlock detected (SQLSTATE 40P01)". About 4 s."""
    db = pg_cluster.create_database("deadlock")
    url = pg_cluster.url(db)
    writer = None
    up = None
    try:
        pg_cluster.migrate(db, "up", migrations_dir=tree / "migrations")
        subs = tree / "sql" / "40_subscriptions.sql"
        subs.write_text(subs.read_text() + PROBE % 28)
        writer = psycopg2.connect(url)
        with writer.cursor() as cur:  # a writer of the delivery log, mid-transaction
            cur.execute("SET application_name = 'log-writer'")
            # `up` is the one to find the cycle (the first to wait), as it is
            # with the defaults; only later than the writer could ask
            cur.execute("SET deadlock_timeout = '60s'")
            cur.execute("LOCK TABLE hookbridge.delivery_attempts IN ROW EXCLUSIVE MODE")
            cur.execute("SELECT pg_backend_pid()")
            writer_pid = cur.fetchone()[0]
        # deadlock_timeout: 1 s by default, before the lock timeout; 1.5 s
        # and 5 s here so that the test's writer surely asks in between
        env = dict(os.environ, HOOKBRIDGE_DATABASE_URL=url, HOOKBRIDGE_MIGRATE_LOCK_TIMEOUT="5s",
                   HOOKBRIDGE_MIGRATE_LOCK_WAIT="60s", PGOPTIONS="-c deadlock_timeout=1500ms")
        up = subprocess.Popen([str(BIN / "hookbridge-migrate"), "up", "--dir",
                               str(tree / "migrations")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)

        def up_waits_for_the_writer():
            return sql(url, "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                            " WHERE NOT l.granted AND a.application_name = 'hookbridge-migrate'"
                            "   AND l.relation = 'hookbridge.delivery_attempts'::regclass") \
                or up.poll() is not None
        wait_until(up_waits_for_the_writer, 10,
                   "`up` to hold subscriptions and wait for delivery_attempts")
        assert up.poll() is None, up.stdout.read()
        # The writer now needs subscriptions, which `up` holds: a cycle.
        with writer.cursor() as cur:
            cur.execute("SET statement_timeout = %s", (f"{int(10000 * SLOW)}ms",))
            cur.execute("UPDATE hookbridge.subscriptions SET name = name WHERE false")
        # the writer went on: `up` gave its locks up (and names the writer)
        time.sleep(0.5)
        writer.commit()
        out, _ = up.communicate(timeout=30 * SLOW)
        assert up.returncode == 0, out
        assert "deadlock" in out and "trying again" in out, out
        assert f"pid {writer_pid} (log-writer" in out, out
        assert "sql/40_subscriptions.sql applied (changed)" in out, out
        assert sql(url, "SELECT hookbridge.layout_probe()") == [(28,)]
    finally:
        if up is not None and up.poll() is None:
            up.kill()
            up.communicate()
        if writer is not None:
            writer.close()
        pg_cluster.drop_database(db)


def test_a_stop_does_not_wait_for_a_verification_claim_held_by_a_row_lock(
        db_url, broker, procs, workdir):
    """docs/operations.md: on SIGTERM a dispatcher lets its in-flight
    deliveries finish for at most HOOKBRIDGE_SHUTDOWN_TIMEOUT and stops. A
    verification claim waiting for the row of its subscription (an
    operator's transaction left open; review 26 gave the claims lanes of
    their own so that such a wait holds up no other verification) still held
    up the stop: the loop waited for every store request, the claim
    included, its whole shutdown timeout (20 s; the harness's stop gave up at
    15 s). A claim at a stop is worth nothing (the challenge it would start is
    not wanted any more): the stop no longer waits for it, its statement is
    cancelled with the store, and the subscription is verified after the
    restart once the transaction ends.

    Checked to fail without the change: on d126e82 the stop takes the whole
    shutdown timeout (killed after 15 s). About 10 s (the restarted
    dispatcher takes the verification up at its look for pending ones)."""
    rcv = Receiver(procs, workdir, secret=SECRET)
    sub = sql(db_url, "SELECT hookbridge.register('held', %s, ARRAY['user.session.start'], "
              "%s::jsonb)", rcv.url, json.dumps({"secret": SECRET}))[0][0]
    # a retrier seals it (its consumer group is not the dispatchers')
    r = Retrier(procs, db_url, broker.bootstrap)
    wait_until(lambda: sealed_state(db_url, sub) == ("sealed", "none"), 15, "the secrets sealed")
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    lock = psycopg2.connect(db_url)
    try:
        with lock.cursor() as cur:  # an operator's transaction, left open
            cur.execute("SELECT 1 FROM hookbridge.subscriptions WHERE id = %s FOR UPDATE",
                        (sub,))
        d = Dispatcher(procs, db_url, broker.bootstrap)
        wait_until(lambda: sql(db_url, "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a"
                                       " ON a.pid = l.pid WHERE NOT l.granted"
                                       "   AND a.application_name = 'hookbridge'"), 15,
                   "the dispatcher's claim waiting for the row")
        # its first assignment had (librdkafka 2.0.2 aborts on a stop before
        # it: docs/operations.md, issue #4312)
        wait_until(lambda: '"msg":"assigned ' in d.proc.output(), 15,
                   "the dispatcher's partitions assigned")
        t0 = time.monotonic()
        assert d.proc.stop() == 0
        took = time.monotonic() - t0
        assert '"level":"error"' not in d.proc.output(), d.proc.output()
        assert took < 5 * SLOW, f"the stop took {took:.1f} s"
    finally:
        lock.rollback()
        lock.close()
    d = Dispatcher(procs, db_url, broker.bootstrap, name="again")
    wait_until(lambda: sql(db_url, "SELECT verification FROM hookbridge.subscriptions "
                                   "WHERE id = %s", sub)[0][0] == "verified", 20,
               "the subscription verified after the restart")
    for p in (d, r):
        wait_until(lambda: '"msg":"assigned ' in p.proc.output(), 15, "an assignment")
        assert p.proc.stop() == 0
