"""The subscription lifecycle end to end: each step is made in SQL while the
dispatcher runs, and observed where a subscriber would notice it - at the
receiver. (The SQL-only rules and every refusal are in test_sql.py.)"""
import signal
import time

from hbtest.lifecycle import (ACTIVE, ACTIVE_UNVERIFIED, INACTIVE, REMOVED, apply, challenges,
                              consumed, event, register_active, sql, uuids, verification,
                              wait_read, wait_verification_outcome)
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from hbtest.webhooks import expected_signature

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# How long to keep watching for a request that must NOT come, where the
# dispatcher has nothing left to read that would show it is done (else
# hbtest.lifecycle.wait_read). Events are matched within milliseconds of
# being produced; this is generous for a loaded 2-core machine.
QUIET = 2.0 * SLOW


def start(procs, workdir, broker, db_url, receivers=("receiver",)):
    d = Dispatcher(procs, db_url, broker.bootstrap)
    rs = [Receiver(procs, workdir, name=n) for n in receivers]
    d.wait_ready()
    return d, rs


def deliver(broker, receiver, etype, timeout=30):
    """Produces one event and waits until the receiver has it; returns its uuid."""
    ev = event(etype)
    produce(broker.bootstrap, [ev])
    wait_until(lambda: ev["uuid"] in uuids(receiver), timeout, f"the {etype} event to arrive")
    return ev["uuid"]


def test_activate_starts_deactivate_stops_activate_resumes(db_url, broker, procs, workdir):
    d, (rcv,) = start(procs, workdir, broker, db_url)
    sub = register_active(d, db_url, rcv.url, ["user.session.start"])

    first = deliver(broker, rcv, "user.session.start")

    apply(d, db_url, sub, INACTIVE, "SELECT hookbridge.deactivate(%s)", sub)
    while_stopped = [event("user.session.start") for _ in range(3)]
    n = consumed(d)
    produce(broker.bootstrap, while_stopped)
    wait_read(d, n + 3)
    assert uuids(rcv) == [first], "a deactivated subscription must receive nothing"

    apply(d, db_url, sub, ACTIVE, "SELECT hookbridge.activate(%s)", sub)
    resumed = deliver(broker, rcv, "user.session.start")
    time.sleep(QUIET / 2)
    # Events of the stopped period are not delivered late: stopped means skipped.
    assert uuids(rcv) == [first, resumed]


def test_subscribe_adds_a_type_and_unsubscribe_removes_one(db_url, broker, procs, workdir):
    d, (rcv,) = start(procs, workdir, broker, db_url)
    sub = register_active(d, db_url, rcv.url, ["user.session.start"])

    # Not subscribed yet: a lock event is not delivered.
    early = event("user.account.lock")
    n = consumed(d)
    produce(broker.bootstrap, [early])
    deliver(broker, rcv, "user.session.start")
    wait_read(d, n + 2)  # past `early` too
    assert early["uuid"] not in uuids(rcv)

    apply(d, db_url, sub, ACTIVE, "SELECT hookbridge.subscribe(%s, ARRAY['user.account.lock'])",
          sub)
    deliver(broker, rcv, "user.account.lock")

    apply(d, db_url, sub, ACTIVE,
          "SELECT hookbridge.unsubscribe(%s, ARRAY['user.session.start'])", sub)
    gone = event("user.session.start")
    n = consumed(d)
    produce(broker.bootstrap, [gone])
    deliver(broker, rcv, "user.account.lock")  # still subscribed
    wait_read(d, n + 2)
    assert gone["uuid"] not in uuids(rcv), "an unsubscribed type must not arrive"
    assert sql(db_url, "SELECT event_types FROM hookbridge.subscription_overview WHERE id = %s",
               sub) == [(["user.account.lock"],)]


def test_new_url_is_verified_then_receives_and_the_old_one_gets_nothing(db_url, broker, procs,
                                                                        workdir):
    d, (old, new) = start(procs, workdir, broker, db_url, receivers=("old", "new"))
    sub = register_active(d, db_url, old.url, ["user.session.start"])
    deliver(broker, old, "user.session.start")
    old_count = len(old.requests())
    assert challenges(new) == []

    sql(db_url, "SELECT hookbridge.update(%s, url => %s)", sub, new.url)
    # The new endpoint is challenged at once, without hookbridge.verify().
    wait_until(lambda: challenges(new), 20, "the challenge at the new URL")
    assert wait_verification_outcome(db_url, sub) == "verified"
    # Deliveries resume by themselves: the subscription stayed active.
    wait_until(lambda: sql(db_url, "SELECT status, health FROM hookbridge.subscription_overview "
                           "WHERE id = %s", sub) == [("active", "healthy")], 5, "health")
    uuid_new = deliver(broker, new, "user.session.start")
    more = [event("user.session.start") for _ in range(3)]
    produce(broker.bootstrap, more)
    wait_until(lambda: {e["uuid"] for e in more} <= set(uuids(new)), 30,
               "the next events at the new URL")
    time.sleep(QUIET / 2)
    assert len(old.requests()) == old_count, "the old URL must get nothing after the change"
    assert uuid_new in uuids(new)
    # The dispatcher applied the change in two steps: paused, then resumed.
    log = d.proc.output()
    assert ACTIVE_UNVERIFIED in log


def test_new_url_that_fails_verification_gets_nothing_and_says_why(db_url, broker, procs,
                                                                  workdir):
    d, (rcv,) = start(procs, workdir, broker, db_url)
    sub = register_active(d, db_url, rcv.url, ["user.session.start"])
    # The dispatcher's own health endpoint answers 200 "ok": not the echo.
    bad = f"http://127.0.0.1:{d.health_port}/healthz"
    sql(db_url, "SELECT hookbridge.update(%s, url => %s)", sub, bad)
    assert wait_verification_outcome(db_url, sub) == "failed"
    assert sql(db_url, "SELECT status, verification, verification_error, health, "
               "verification_at IS NOT NULL FROM hookbridge.subscription_overview "
               "WHERE id = %s", sub) == [("inactive", "failed", "response is not JSON",
                                          "inactive", True)]
    before = len(rcv.requests())
    n = consumed(d)
    produce(broker.bootstrap, [event("user.session.start")])
    wait_read(d, n + 1)
    assert len(rcv.requests()) == before


def test_deregister_stops_deliveries_and_keeps_history(db_url, broker, procs, workdir):
    d, (rcv,) = start(procs, workdir, broker, db_url)
    sub = register_active(d, db_url, rcv.url, ["user.session.start"])
    delivered = deliver(broker, rcv, "user.session.start")
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries "
                           "WHERE subscription_id = %s AND status = 'delivered'", sub)[0][0] == 1,
               15, "the delivery in the log")

    apply(d, db_url, sub, REMOVED, "SELECT hookbridge.deregister(%s)", sub)
    n = consumed(d)
    produce(broker.bootstrap, [event("user.session.start") for _ in range(3)])
    wait_read(d, n + 3)
    assert uuids(rcv) == [delivered], "a deregistered subscription must receive nothing"
    # Gone from the live views, history still in the delivery log.
    assert sql(db_url, "SELECT count(*) FROM hookbridge.subscription_overview") == [(0,)]
    assert sql(db_url, "SELECT count(*) FROM hookbridge.recent_deliveries") == [(0,)]
    assert sql(db_url, "SELECT status, event_ids FROM hookbridge.deliveries "
               "WHERE subscription_id = %s", sub) == [("delivered", delivered)]

    # The same URL registered again is a new subscription, with its own verification.
    again = register_active(d, db_url, rcv.url, ["user.session.start"], name="again")
    assert again != sub
    deliver(broker, rcv, "user.session.start")
    assert sql(db_url, "SELECT id FROM hookbridge.subscription_overview") == [(again,)]


def signatures(req):
    return req["headers"]["webhook-signature"].split(" ")


def signed_with(secret, req):
    h = req["headers"]
    return expected_signature(secret, h["webhook-id"], h["webhook-timestamp"], req["body"])


def test_rotation_sends_both_signatures_during_the_grace_then_only_the_new(db_url, broker, procs,
                                                                          workdir):
    d, (rcv,) = start(procs, workdir, broker, db_url)
    sub = register_active(d, db_url, rcv.url, ["user.session.start"], options={"secret": SECRET})
    before = deliver(broker, rcv, "user.session.start")
    req = next(r for r, e in rcv.events() if e["uuid"] == before)
    assert signatures(req) == [signed_with(SECRET, req)]

    # Rotation with a grace of an hour: two signatures, one for each secret.
    new = apply(d, db_url, sub, ACTIVE, "SELECT hookbridge.rotate_secret(%s, interval '1 hour')",
                sub)[0][0]
    during = deliver(broker, rcv, "user.session.start")
    req = next(r for r, e in rcv.events() if e["uuid"] == during)
    sigs = signatures(req)
    assert len(sigs) == 2, req["headers"]["webhook-signature"]
    assert sorted(sigs) == sorted([signed_with(SECRET, req), signed_with(new, req)])

    # Rotation with a short grace: once it has passed, only the newest secret signs.
    newest = apply(d, db_url, sub, ACTIVE,
                   "SELECT hookbridge.rotate_secret(%s, interval '2 seconds')", sub)[0][0]
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.subscription_secrets "
                           "WHERE subscription_id = %s AND expires_at > now()", sub)[0][0] == 0,
               10, "the grace period to pass")
    time.sleep(0.2)  # the dispatcher's clock, not only the database's, is past it
    after = deliver(broker, rcv, "user.session.start")
    req = next(r for r, e in rcv.events() if e["uuid"] == after)
    assert signatures(req) == [signed_with(newest, req)]
    assert signed_with(new, req) not in signatures(req)
    assert verification(db_url, sub) == "verified"


# --------------------------------------------- a challenge whose dispatcher goes away

SLOW_ANSWER = 3.0  # seconds the slow endpoint takes to answer the challenge


def slow_challenge_endpoint():
    """An endpoint that answers the challenge correctly but SLOW_ANSWER s late
    (got_get is set when a GET arrives), and records the events POSTed to it."""
    import threading

    from hbtest.endpoints import ChallengeAnswering, posted_uuids, serve

    got_get = threading.Event()
    events = []

    class Slow(ChallengeAnswering):
        def do_GET(self):
            got_get.set()
            time.sleep(SLOW_ANSWER)
            try:
                super().do_GET()
            except OSError:
                pass  # the dispatcher is gone

        def do_POST(self):
            events.extend(posted_uuids(self))
            self.answer(200)

    srv = serve(Slow)
    srv.got_get, srv.events = got_get, events
    return srv


# The claim's lease with these settings: max_queue_wait 1 s + verify_timeout
# 5 s + 10 s; then the next look for expired leases (every 5 s).
GONE_ENV = {"HOOKBRIDGE_MAX_QUEUE_WAIT": "1s", "HOOKBRIDGE_VERIFY_TIMEOUT": "5s",
            "HOOKBRIDGE_SHUTDOWN_TIMEOUT": "10s"}
LEASE = 16


def challenge_then_stop(procs, workdir, broker, db_url, stop):
    """A verified, active subscription moves to a slow endpoint; once the
    endpoint has the challenge, the dispatcher is stopped by `stop(d, sub)` and
    another one is started. Returns (new dispatcher, subscription, endpoint)."""
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=GONE_ENV)
    rcv = Receiver(procs, workdir)
    d.wait_ready()
    sub = register_active(d, db_url, rcv.url, ["user.session.start"])
    slow = slow_challenge_endpoint()
    sql(db_url, "SELECT hookbridge.update(%s, url => %s)", sub, slow.url)
    assert slow.got_get.wait(20 * SLOW), "the challenge at the new URL"
    stop(d, sub)
    d2 = Dispatcher(procs, db_url, broker.bootstrap, extra_env=GONE_ENV, name="dispatcher-2")
    d2.wait_ready()
    return d2, sub, slow


def test_a_challenge_whose_dispatcher_dies_is_sent_again_after_its_lease(db_url, broker, procs,
                                                                         workdir):
    d2, sub, slow = challenge_then_stop(procs, workdir, broker, db_url, lambda d, sub: d.proc.kill())
    try:
        assert verification(db_url, sub) == "unverified"
        # Nothing recorded it; once the lease expired, the new dispatcher sends it again.
        assert wait_verification_outcome(db_url, sub, timeout=LEASE + 5 + 30) == "verified"
        assert sql(db_url, "SELECT status, verification_requested_at FROM hookbridge.subscriptions"
                   " WHERE id = %s", sub) == [("active", None)]
        ev = event("user.session.start")
        produce(broker.bootstrap, [ev])
        wait_until(lambda: ev["uuid"] in slow.events, 60, "the event at the new URL")
    finally:
        slow.shutdown()


def test_a_challenge_running_at_sigterm_is_finished_and_recorded(db_url, broker, procs,
                                                                 workdir):
    exited = {}

    def sigterm(d, sub):
        t0 = time.monotonic()
        d.proc.signal(signal.SIGTERM)
        d.proc.p.wait(60 * SLOW)
        exited["after"] = time.monotonic() - t0
        exited["verification"] = verification(db_url, sub)

    d2, sub, slow = challenge_then_stop(procs, workdir, broker, db_url, sigterm)
    try:
        # The stopping dispatcher waited for the challenge (within its drain
        # bound, shutdown_timeout 10 s) and recorded it.
        assert exited["after"] < 10 + 5 * SLOW, exited
        assert exited["verification"] == "verified", exited
        assert wait_verification_outcome(db_url, sub) == "verified"
        ev = event("user.session.start")
        produce(broker.bootstrap, [ev])
        wait_until(lambda: ev["uuid"] in slow.events, 60, "the event at the new URL")
    finally:
        slow.shutdown()


def test_an_older_challenge_s_failure_does_not_undo_a_newer_one_s_success(db_url, broker, procs,
                                                                          workdir):
    """An active subscription moves to a new URL whose endpoint is not ready:
    the first challenge hangs. The user fixes the endpoint and calls verify();
    the second challenge passes. When the first challenge then fails, its
    outcome is out of date and is not recorded: the subscription stays active
    and verified, and events go to the new URL (before, that late failure
    deactivated the subscription, and nothing was delivered any more)."""
    import threading

    from hbtest.endpoints import ChallengeAnswering, posted_uuids, serve

    first_get, events = threading.Event(), []

    class NotReadyThenFixed(ChallengeAnswering):
        def do_GET(self):
            if first_get.is_set():
                return super().do_GET()
            first_get.set()
            time.sleep(SLOW_ANSWER)  # within the dispatcher's verify timeout (5 s)
            # the endpoint as it was: not ready (a 404, a refusal; a 503 or
            # 429 says "try later" and would be asked again, not recorded)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            events.extend(posted_uuids(self))
            self.answer(200)

    d, (rcv,) = start(procs, workdir, broker, db_url)
    sub = register_active(d, db_url, rcv.url, ["user.session.start"])
    srv = serve(NotReadyThenFixed)
    try:
        sql(db_url, "SELECT hookbridge.update(%s, url => %s)", sub, srv.url)
        assert first_get.wait(20 * SLOW), "the first challenge at the new URL"
        sql(db_url, "SELECT hookbridge.verify(%s)", sub)
        assert wait_verification_outcome(db_url, sub) == "verified"
        wait_until(lambda: "endpoint verification failed: HTTP 404" in d.proc.output(),
                   SLOW_ANSWER + 10, "the first challenge's failure")
        wait_until(lambda: "verification outcome not recorded: out of date" in d.proc.output(),
                   10, "the dispatcher to say it is out of date")
        assert sql(db_url, "SELECT status, verification, verification_error, "
                   "verification_requested_at FROM hookbridge.subscriptions WHERE id = %s",
                   sub) == [("active", "verified", None, None)]
        ev = event("user.session.start")
        produce(broker.bootstrap, [ev])
        wait_until(lambda: ev["uuid"] in events, 30, "the event at the new URL")
    finally:
        srv.shutdown()
