"""A slow database does not stall deliveries: the services' round trips to
PostgreSQL run on the store's own threads, off the delivery loop
(lib/hb_store.h). Here one statement waits for a lock the test holds, for as
long as the test likes, while events keep arriving at an endpoint at their
pace."""
import psycopg2

from hbtest.lifecycle import event, register_active, sql, uuids
from hbtest.procs import wait_until
from hbtest.stack import Dispatcher, Receiver, produce


def claims_waiting(db_url):
    """Statements of the services waiting for a lock on a verification claim."""
    return sql(db_url,
               "SELECT count(*) FROM pg_stat_activity"
               " WHERE wait_event_type = 'Lock' AND query LIKE '%%claim_verification%%'"
               "   AND pid <> pg_backend_pid()")[0][0]


def test_a_blocked_verification_claim_does_not_stall_deliveries(db_url, broker, procs, workdir):
    d = Dispatcher(procs, db_url, broker.bootstrap)
    rcv = Receiver(procs, workdir)
    d.wait_ready()
    sub = register_active(d, db_url, rcv.url, ["user.session.start"])
    blocked = sql(db_url, "SELECT hookbridge.register(%s, %s, %s, '{}'::jsonb)", "blocked",
                  rcv.url, ["user.account.lock"])[0][0]

    # A verification request, pending (this column changes nothing the services
    # hold, so it notifies nobody: the dispatcher does not claim it yet).
    sql(db_url, "UPDATE hookbridge.subscriptions SET verification_requested_at = now()"
        " WHERE id = %s", blocked)

    lock = psycopg2.connect(db_url)
    try:
        with lock.cursor() as cur:
            # The claim updates this row: it waits until the test lets go.
            cur.execute("SELECT 1 FROM hookbridge.subscriptions WHERE id = %s FOR UPDATE",
                        (blocked,))
        # verify() would wait for the row lock itself; notify as it does.
        sql(db_url, "SELECT pg_notify('hookbridge_verify', %s)", blocked)
        wait_until(lambda: claims_waiting(db_url) == 1, 15,
                   "the dispatcher's verification claim to wait for the row lock")

        # Events keep being delivered, one after another, meanwhile.
        for _ in range(5):
            ev = event("user.session.start")
            produce(broker.bootstrap, [ev])
            wait_until(lambda: ev["uuid"] in uuids(rcv), 15,
                       "an event to arrive while the database is slow")
        assert claims_waiting(db_url) == 1, "the claim still waits: the deliveries went on beside it"
        assert d.get("/readyz")[0] == 200
    finally:
        lock.rollback()
        lock.close()
    wait_until(lambda: claims_waiting(db_url) == 0, 15, "the claim to finish")
    # ... and the dispatcher is still in order afterwards.
    ev = event("user.session.start")
    produce(broker.bootstrap, [ev])
    wait_until(lambda: ev["uuid"] in uuids(rcv), 15, "an event after the lock is gone")
    assert sql(db_url, "SELECT status FROM hookbridge.subscriptions WHERE id = %s",
               sub) == [("active",)]
