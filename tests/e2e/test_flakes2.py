"""A subscription whose new secret a service could not seal because another
session held its row at that moment (secrets_to_seal skips a locked row):
the service loads it again as soon as the row is free, not at the next
minute's sweep (docs/sql.md: "seals it once your transaction has ended")."""
import signal
import time

import psycopg2

from hbtest.lifecycle import ACTIVE, changes_applied, last_change
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
    dispatcher, let go, cannot seal the secret meanwhile: it keeps the
    subscription as it was (an event read meanwhile is delivered, signed
    with the secret it had: the change applies a moment later, nothing goes
    nowhere); once the operator's transaction ends it seals the secret and
    applies the change within seconds, signing with the new secret. Before
    (649344a), the event read meanwhile went nowhere; before that, the
    subscription stayed out until the next sweep, up to a minute later."""
    rcv = Receiver(procs, workdir)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sub = register_verified(db_url, rcv.url, ["user.session.start"])
    wait_until(lambda: changes_applied(d, sub, ACTIVE) >= 1, 10, "the dispatcher to have it")
    applied = changes_applied(d, sub, ACTIVE)
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
        wait_until(lambda: "change not applied until its new values are sealed"
                   in d.proc.output(), 10, "the dispatcher to find the secret unsealed")
        assert sealed_state(db_url, sub)[0] == "pending", "sealed through the operator's lock?"
        produce(broker.bootstrap, [event("user.session.start")])
        held = wait_until(lambda: rcv.posts(), 10, "the delivery while the row is held")[0]
        assert signature_valid(SECRET, held), "not signed with the secret it had"
        assert last_change(d, sub) == ACTIVE, "dropped while its new secret waited"
        op.rollback()
    finally:
        op.close()
    wait_until(lambda: changes_applied(d, sub, ACTIVE) > applied, 5,
               "the dispatcher to apply the change once the row is free")
    assert sealed_state(db_url, sub)[0] == "sealed"
    produce(broker.bootstrap, [event("user.session.start")])
    post = wait_until(lambda: len(rcv.posts()) >= 2 and rcv.posts(), 10, "the next delivery")[-1]
    assert signature_valid(NEW_SECRET, post) and not signature_valid(SECRET, post)
    log = d.proc.output()
    assert "deliveries to it stop" not in log, "not a broken row, not unsealed for long"


def test_a_subscription_held_during_the_first_load_is_loaded_once_the_row_is_free(
        db_url, broker, procs, workdir):
    """A dispatcher starts while the subscription's new secret waits to be
    sealed and an operator's transaction holds its row (SELECT ... FOR
    UPDATE: its end notifies nothing). The first load skips it, and the
    dispatcher takes no event meanwhile (matched without it, an event would
    go to it nowhere); once the row is free it loads it within seconds and
    delivers the event produced while the row was held, signing with the
    new secret. Before, it stayed out until the minute's sweep, and that
    event was consumed and went nowhere."""
    rcv = Receiver(procs, workdir)
    first = Dispatcher(procs, db_url, broker.bootstrap)
    first.wait_ready()
    sub = register_verified(db_url, rcv.url, ["user.session.start"])
    first.proc.stop()
    sql(db_url, "SELECT hookbridge.rotate_secret(%s, interval '0', %s)", sub, NEW_SECRET)
    op = psycopg2.connect(db_url)
    try:
        with op.cursor() as cur:  # autocommit off: the row lock stays
            cur.execute("SELECT 1 FROM hookbridge.subscriptions WHERE id = %s FOR UPDATE", (sub,))
        d = Dispatcher(procs, db_url, broker.bootstrap)
        d.wait_ready()
        assert "subscription skipped until its values are sealed" in d.proc.output()
        assert sealed_state(db_url, sub)[0] == "pending", "sealed through the operator's lock?"
        produce(broker.bootstrap, [event("user.session.start")])
        time.sleep(1)
        op.rollback()
    finally:
        op.close()
    post = wait_until(lambda: rcv.posts(), 15, "the delivery once the row is free")[-1]
    assert signature_valid(NEW_SECRET, post)
