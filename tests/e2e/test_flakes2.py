"""A subscription whose new secret a service could not seal because another
session held its row at that moment (secrets_to_seal skips a locked row):
the service loads it again as soon as the row is free, not at the next
minute's sweep (docs/sql.md: "seals it once your transaction has ended")."""
import signal

import psycopg2

from hbtest.lifecycle import ACTIVE, REMOVED, changes_applied, last_change
from hbtest.procs import wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from hbtest.webhooks import signature_valid
from test_delivery import SECRET, event, register_verified, sql
from test_secrets import sealed_state

NEW_SECRET = "whsec_" + "bmV3LXNlY3JldC1zZWFsZWQtYWZ0ZXItYS1sb2NrLTAx"


def test_a_secret_left_unsealed_by_a_row_lock_is_sealed_once_the_lock_is_gone(
        db_url, broker, procs, workdir):
    """The secret is rotated (committed) while the dispatcher is paused; an
    operator's transaction then holds the row without changing it (SELECT
    ... FOR UPDATE, as before an update), so its end notifies nothing. The
    dispatcher, let go, cannot seal the secret meanwhile and stops
    delivering to the subscription; once the operator's transaction ends it
    seals it and has the subscription back within seconds, signing with the
    new secret. Before, it stayed without the subscription (events read
    meanwhile went nowhere) until the next sweep, up to a minute later."""
    rcv = Receiver(procs, workdir)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sub = register_verified(db_url, rcv.url, ["user.session.start"])
    wait_until(lambda: changes_applied(d, sub, ACTIVE) >= 1, 10, "the dispatcher to have it")
    op = psycopg2.connect(db_url)
    try:
        d.proc.signal(signal.SIGSTOP)
        try:
            sql(db_url, "SELECT hookbridge.rotate_secret(%s, interval '0', %s)", sub, NEW_SECRET)
            with op.cursor() as cur:  # autocommit off: the row lock stays
                cur.execute("SELECT 1 FROM hookbridge.subscriptions WHERE id = %s FOR UPDATE",
                            (sub,))
        finally:
            d.proc.signal(signal.SIGCONT)
        wait_until(lambda: last_change(d, sub) == REMOVED, 10,
                   "the dispatcher to stop delivering to it while its secret waits")
        assert sealed_state(db_url, sub)[0] == "pending", "sealed through the operator's lock?"
        op.rollback()
    finally:
        op.close()
    wait_until(lambda: last_change(d, sub) == ACTIVE, 5,
               "the dispatcher to have it back once the row is free")
    assert sealed_state(db_url, sub)[0] == "sealed"
    produce(broker.bootstrap, [event("user.session.start")])
    post = wait_until(lambda: rcv.posts(), 10, "the delivery")[0]
    assert signature_valid(NEW_SECRET, post) and not signature_valid(SECRET, post)
    log = d.proc.output()
    assert "subscription not loaded until its new values are sealed" in log
    assert "deliveries to it stop until it is fixed" not in log, "not a broken row"
