"""Review 66: the previews of review 62 (a preview not sent now is given
back and tried again a second later; one whose subscription the dispatcher
cannot load is failed), as an operator whose endpoint stays busy, or who
rolls out a new secret key replica by replica, or whose database blinks,
sees them.

On main before this review each test here fails: a preview to an endpoint
that stayed busy was tried again every second for as long as it stayed
busy (minutes, hours), pending all that time, one warning line a second
in the dispatcher's log; and a preview claimed by the one replica of a key
rollout that lacked the new key was failed at once, though the replica
that had the key would have sent it; and a preview given back while the
database did not answer for a moment waited its whole lease (74 s)."""
import time

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver
from hbtest.tcpproxy import TcpProxy
from test_delivery import AUTH_VALUE, SECRET, register_verified, sql
from test_review62_faults import STATUS, finished
from test_review69_faults import Stuck, busy_endpoint


def test_a_preview_to_an_endpoint_that_stays_busy_fails_after_its_tries_saying_why(
        db_url, broker, procs, workdir):
    """docs/sql.md, preview: a preview not sent because its endpoint stays
    busy is tried again each second for up to 12 x HOOKBRIDGE_MAX_QUEUE_WAIT,
    then recorded failed, its error saying the endpoint stayed busy; the
    dispatcher says so once, not at each try. An endpoint whose one
    connection is held by a real delivery: the preview is failed within
    12 s + slack (before: still pending, tried every second for as long as
    the endpoint stayed busy, and a warning line at each try)."""
    srv, d, sub = busy_endpoint(procs, db_url, broker)
    try:
        t0 = time.monotonic()
        preview = sql(db_url, "SELECT hookbridge.preview(%s)", sub)[0][0]
        status, http_status, error = finished(db_url, preview, 25 * SLOW)
        took = time.monotonic() - t0
        assert (status, http_status) == ("failed", None), (status, error)
        assert error.startswith("not sent: its endpoint stayed busy through "), error
        assert "endpoint slow" in error, error
        assert 11 <= took, took
        assert preview not in Stuck.ids
        out = d.proc.output()
        warned = out.count("preview not sent")
        assert warned == 1, warned
        assert out.count("preview failed") == 1
    finally:
        Stuck.release.set()
        srv.shutdown()

def test_a_preview_claimed_by_a_replica_without_the_key_is_sent_by_one_with_it(
        db_url, broker, procs, workdir):
    """docs/sql.md, preview: during a key rollout, a dispatcher that cannot
    load a preview's subscription gives it back to the others for a few
    seconds before failing it. The replica without the new key takes a
    preview first; the replica with the key, started 2 s later, sends it
    (before: failed at once by the first, `this dispatcher cannot load the
    subscription`, and nothing sent)."""
    from test_secrets import new_key, wait_sealed
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    key = new_key()
    keyed = {"HOOKBRIDGE_SECRET_KEY": key}
    d_new = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-newkey",
                       extra_env=keyed)
    d_new.wait_ready()
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    wait_sealed(db_url, sub)
    d_new.proc.stop()
    d_old = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-nokey")
    d_old.wait_ready()
    preview = sql(db_url, "SELECT hookbridge.preview(%s)", sub)[0][0]
    wait_until(lambda: "preview not sent" in d_old.proc.output(), 5 * SLOW,
               "the replica without the key to take the preview")
    time.sleep(1)
    assert sql(db_url, STATUS, preview)[0][0] == "pending"
    d_new = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-newkey2",
                       extra_env=keyed)
    d_new.wait_ready()
    assert finished(db_url, preview, 10 * SLOW)[0] == "delivered"
    got = [p for p in receiver.posts() if p["headers"]["webhook-id"] == preview]
    assert len(got) == 1


def test_a_preview_given_back_while_the_database_blinks_is_sent_seconds_after_it_answers(
        pg_cluster, db_url, broker, procs, workdir):
    """docs/sql.md, preview: a preview not sent now is tried again a second
    later. The database is unreachable for 3 s just as the dispatcher gives
    such a preview back; the endpoint is free again when the database is
    back: the preview is sent within seconds (the dispatcher still held its
    claim, and gives it back again once the database answers). Before, it
    waited for its whole lease, 74 s, pending."""
    proxy = TcpProxy(pg_cluster.port)
    url = db_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/")
    proxy.start()
    srv, d, sub = busy_endpoint(procs, db_url, broker, service_db_url=url)
    try:
        preview = sql(db_url, "SELECT hookbridge.preview(%s)", sub)[0][0]
        wait_until(lambda: "sending preview" in d.proc.output(), 10 * SLOW, "the preview's try")
        proxy.cut()  # its queue wait (1 s) ends while the database is away
        wait_until(lambda: "cannot give back a preview not sent" in d.proc.output(), 5 * SLOW,
                   "the give-back to fail")
        time.sleep(2)
        proxy.start()
        Stuck.release.set()
        back = time.monotonic()
        assert finished(db_url, preview, 20 * SLOW)[0] == "delivered"
        assert time.monotonic() - back < 15 * SLOW, time.monotonic() - back
        assert Stuck.ids.count(preview) == 1
    finally:
        Stuck.release.set()
        srv.shutdown()
