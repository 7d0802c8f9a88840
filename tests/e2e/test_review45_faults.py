"""Review 45: how subscription changes made in SQL reach the running
dispatcher and retrier, as an operator meets it under faults (a change
committed in a long transaction, ...).

Each check says what it did on main's binaries (9de0a62) and what holds it."""
import re
import socket
import time

import psycopg2

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Retrier, produce
from hbtest.tcpproxy import TcpProxy
from test_delivery import event, register_verified, sql
from test_reactivate import DROP_REASON, changes_seen, delivery_of
from test_retry import stack


def test_a_retry_begun_while_a_deactivation_was_uncommitted_is_dropped_at_its_commit(
        db_url, procs, workdir):
    """docs/design.md: deactivate(id) "drops the retries pending at that
    moment, even if the subscription is activated again before they come
    due". An operator deactivates inside a transaction that stays open a
    while (a script doing more work, a psql session with autocommit off);
    the services still see the subscription active, so event A is
    delivered meanwhile, fails and waits 5 s for its retry. Then the
    transaction commits (the deactivation takes effect: A's retry is
    pending at that moment) and the subscription is activated again. A's
    retry is dropped when due, as any retry pending at a deactivation.

    On main (9de0a62): deactivated_at was the clock of the UPDATE, before A
    began, so the reactivated subscription received A's retry (the
    receiver's posts were [503, 204], A delivered at attempt 2)."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "5s", receiver_args={"fail_first": 1})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    wait_until(lambda: changes_seen(d) and changes_seen(r), 10, "the services to see it active")

    op = psycopg2.connect(db_url)
    try:
        op.cursor().execute("SELECT hookbridge.deactivate(%s)", (sub,))  # not committed yet
        a = event("user.session.start")
        produce(broker.bootstrap, [a])
        wait_until(lambda: (row := delivery_of(db_url, a)) and row[1] == "retry", 20 * SLOW,
                   "A's first attempt, failed and logged, while the deactivation is open")
        seen = (changes_seen(d), changes_seen(r))
        op.commit()
    finally:
        op.close()
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    wait_until(lambda: changes_seen(d) > seen[0] and changes_seen(r) > seen[1], 10 * SLOW,
               "both services to see the subscription active again")

    _, status, n, err = wait_until(
        lambda: (row := delivery_of(db_url, a)) and row[1] != "retry" and row, 20 * SLOW,
        "A's pending retry to be settled")
    print(f"receiver's posts: {[p['status'] for p in receiver.posts()]}; A: {status}, {n}")
    assert (status, n, err) == ("dropped", 1, DROP_REASON)
    assert [p["status"] for p in receiver.posts()] == [503], "A's retry reached the endpoint"


class StoreRefusingProxy(TcpProxy):
    """A TcpProxy that, while `refuse_store` is set, closes each connection
    whose startup message names application_name 'hookbridge' (the
    subscription store's lanes) and forwards the others (the delivery log's,
    'hookbridge-dlog'): the database back for one of a service's connections
    before the other, as the two back-offs can have it."""

    STORE = b"application_name\x00hookbridge\x00"

    def __init__(self, upstream_port):
        super().__init__(upstream_port)
        self.refuse_store = False

    def _pump(self, src, dst):
        if src in self._conns[0::2]:  # client -> server: look at the startup
            head = b""
            try:
                while len(head) < 4096 and b"\x00\x00" not in head[8:]:
                    data = src.recv(65536)
                    if not data:
                        break
                    head += data
                    if self.STORE in head or b"hookbridge-dlog" in head:
                        break
                    if head[:7] == b"\x00\x00\x00\x08\x04\xd2\x16":  # SSL/GSS request
                        dst.sendall(head)
                        head = b""
                if self.refuse_store and self.STORE in head:
                    for s in (src, dst):
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                    return
                dst.sendall(head)
            except OSError:
                return
        super()._pump(src, dst)


def retrier_behind(proxy, pg_cluster, procs, workdir, db_url, schedule, url_suffix=""):
    """A stack whose retrier reaches the database through proxy (its URL +
    url_suffix), the retry schedule `schedule` without jitter, a subscription
    the services see active, and an event A whose first attempt failed
    (the receiver answers 503 once) and is logged `retry`: (broker,
    receiver, dispatcher, retrier, subscription id, A). Review 48 uses it."""
    broker, receiver, d, _ = stack(
        procs, workdir, db_url, schedule, receiver_args={"fail_first": 1}, retrier=False)
    r = Retrier(procs, db_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/") + url_suffix,
                broker.bootstrap,
                extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0"})
    r.wait_ready()
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    wait_until(lambda: changes_seen(d) and changes_seen(r), 10 * SLOW,
               "the services to see it active")
    a = event("user.session.start")
    produce(broker.bootstrap, [a])
    wait_until(lambda: (row := delivery_of(db_url, a)) and row[1] == "retry", 20 * SLOW,
               "A's first attempt, failed and logged")
    return broker, receiver, d, r, sub, a


def test_a_retry_due_before_the_retrier_has_its_subscriptions_again_waits_for_them(
        pg_cluster, db_url, procs, workdir):
    """docs/operations.md, PostgreSQL unreachable: "The retrier asks the log
    about each retry before attempting it, so its retries wait for the
    database (neither dropped nor attempted blindly). Subscription changes
    made meanwhile apply once the database is back and the subscriptions
    are reloaded". The retrier's connections come back one by one (the
    delivery log's back-off and the subscription store's are their own):
    here the log's first, the store's a few seconds later. A retry that
    comes due in between, of a subscription deactivated during the outage,
    waits for the reload and is dropped, not sent.

    On main (9de0a62): the log answered, and the retry went to the endpoint
    with the subscription as it was before the outage (the receiver's posts
    were [503, 204]: A delivered at attempt 2 to a deactivated
    subscription)."""
    proxy = StoreRefusingProxy(pg_cluster.port)
    proxy.start()
    try:
        broker, receiver, d, r, sub, a = retrier_behind(
            proxy, pg_cluster, procs, workdir, db_url, "4s")

        proxy.cut()  # the retrier's database goes away; meanwhile A's sub is deactivated
        wait_until(lambda: "database not connected" in r.get("/readyz")[1], 10 * SLOW,
                   "the retrier to see the database gone")
        sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
        proxy.refuse_store = True
        proxy.start()  # the delivery log reconnects; the store cannot yet

        # A comes due (4 s after its first attempt) while the store is still away
        time.sleep(6 * SLOW)
        posts = [p["status"] for p in receiver.posts()]
        assert posts == [503], f"A's retry went out before the retrier reloaded: {posts}"
        proxy.refuse_store = False
        _, status, n, err = wait_until(
            lambda: (row := delivery_of(db_url, a)) and row[1] != "retry" and row, 20 * SLOW,
            "A's retry settled once the subscriptions are reloaded")
        assert (status, n, err) == ("dropped", 1, "subscription inactive")
        assert [p["status"] for p in receiver.posts()] == [503]
        out = r.proc.output()
        assert ("due retries wait until the subscriptions are current again (the connection "
                "to the database is lost" in out), out[-3000:]
        assert "subscriptions current again: 1 due retry that waited for them goes on" in out
    finally:
        proxy.close()


def test_a_change_whose_load_waits_for_a_lock_holds_deliveries_10_s_not_for_as_long(
        db_url, procs, workdir):
    """docs/operations.md, PostgreSQL not answering: a server that keeps its
    connections but answers nothing, or a statement waiting for a lock (a
    migration or a manual statement holding one), and "What hookbridge does:
    the same as when PostgreSQL is unreachable; it waits, loses nothing":
    deliveries go on with the subscriptions in memory. A change is notified
    while a lock on hookbridge.subscriptions is held (a migration's ALTER
    TABLE, a LOCK by hand): the dispatcher's load of it waits for the lock.
    Events produced meanwhile are held at most 10 s, then delivered with the
    subscriptions in memory (one warn line says so), not for as long as the
    lock is held.

    On main (9de0a62): consumption stopped until the lock was released (here
    25 s: no event delivered; with a proxy that stopped answering instead of
    a lock, it stopped 60 s into the outage, at the store's first sweep of the
    secret inbox, for the rest of it)."""
    broker, receiver, d, _ = stack(procs, workdir, db_url, "5s", retrier=False)
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    wait_until(lambda: changes_seen(d), 10 * SLOW, "the dispatcher to see it active")
    first = event("user.session.start")
    produce(broker.bootstrap, [first])
    wait_until(lambda: len(receiver.events()) == 1, 20 * SLOW, "the first event delivered")

    lock = psycopg2.connect(db_url)
    try:
        lock.cursor().execute("LOCK TABLE hookbridge.subscriptions IN ACCESS EXCLUSIVE MODE")
        # a change committed just before the lock was taken: its load waits
        sql(db_url, "SELECT pg_notify('hookbridge_subscriptions', %s)", sub)
        t0 = time.monotonic()
        during = event("user.session.start")
        produce(broker.bootstrap, [during])
        wait_until(lambda: during["uuid"] in {e["uuid"] for _, e in receiver.events()},
                   25 * SLOW, "the event produced while the lock is held")
        took = time.monotonic() - t0
        print(f"delivered {took:.1f} s after the change was notified")
        assert took >= 9, "events were not held for the notified change"
        assert re.search(r"no answer to the subscription store for 1\d s", d.proc.output())
    finally:
        lock.close()
    wait_until(lambda: "the subscription store has its answer again" in d.proc.output(),
               10 * SLOW, "the store's answer")
    after = event("user.session.start")
    produce(broker.bootstrap, [after])
    wait_until(lambda: after["uuid"] in {e["uuid"] for _, e in receiver.events()}, 20 * SLOW,
               "the event after the lock")
