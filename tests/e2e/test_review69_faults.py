"""Review 69: the verification challenge compared with what reviews 62 and
66 did for previews, as an operator who rolls out a new secret key replica
by replica, or whose endpoint is busy with slow deliveries, sees it.

On main before this review each test here fails: a verification whose
subscription the dispatcher could not load (its secret sealed under a key
it lacks) was held to each lease's end and claimed again, a warning each
time, for as long as the request stayed, the user seeing only
`verification_request = pending` and no reason, and a replica of the key
rollout that had the key got it only at the other's lease end; a challenge
the HTTP engine did not send (its endpoint's one connection busy) waited
for its whole lease (16 s here, 20 s by default) before it was tried again,
and `sending preview` was logged at each try of a preview given back."""
import threading
import time

import psycopg2
import pytest

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql
from test_review61_faults import service_sql

STATE = ("SELECT status, verification, verification_request, verification_error,"
         " verification_retrying FROM hookbridge.subscription_overview WHERE id = %s")
VERIFIED_AT = "SELECT verified_at FROM hookbridge.subscriptions WHERE id = %s"


def said(out, msg):
    """How many lines of out say msg at info level or above (the tests run
    the services at debug: a try again is logged at debug)."""
    return sum(1 for line in out.splitlines()
               if msg in line and '"level":"debug"' not in line)


def state(db_url, sub):
    return sql(db_url, STATE, sub)[0]


def sealed_under_a_key_the_next_dispatcher_lacks(procs, db_url, broker, receiver, key=None):
    """A verified, active subscription whose secrets a dispatcher with `key`
    (None: the tests' default key) sealed; that dispatcher stopped."""
    from test_secrets import wait_sealed
    d = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-sealer",
                   extra_env={"HOOKBRIDGE_SECRET_KEY": key} if key else None)
    d.wait_ready()
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    wait_sealed(db_url, sub)
    d.proc.stop()
    return sub


def test_a_verification_no_dispatcher_can_load_says_why_and_changes_nothing_else(
        db_url, broker, procs, workdir):
    """docs/sql.md, verify: a request whose subscription no dispatcher can
    load (its secrets sealed under a key none has) stays pending, and
    subscription_overview.verification_retrying says why within seconds (no
    secret in it); nothing is recorded of the endpoint (still verified,
    active), and the dispatcher says it once per state, not at each lease.
    Before: verification_retrying NULL, only `pending`/`running` to see,
    and a warning at each lease's end (every 12 s here)."""
    from test_secrets import new_key
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    sub = sealed_under_a_key_the_next_dispatcher_lacks(procs, db_url, broker, receiver)
    d = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-otherkey",
                   extra_env={"HOOKBRIDGE_SECRET_KEY": new_key(),
                              "HOOKBRIDGE_MAX_QUEUE_WAIT": "1s", "HOOKBRIDGE_VERIFY_TIMEOUT": "1s"})
    d.wait_ready()
    verified_at = sql(db_url, VERIFIED_AT, sub)[0][0]
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    claims = set()

    def told():
        claims.add(sql(db_url, "SELECT verification_claimed_until FROM hookbridge.subscriptions"
                       " WHERE id = %s", sub)[0][0])
        r = state(db_url, sub)
        return (r[4] or "").startswith("not sent: no dispatcher could load") and r
    status, verification, request, error, retrying = wait_until(told, 15 * SLOW, "the reason")
    # pending; running only for the moment a dispatcher holds it to try again
    assert (status, verification, error) == ("active", "verified", None)
    assert request in ("pending", "running"), request
    assert "cannot open its" in retrying, retrying
    assert SECRET not in retrying and AUTH_VALUE not in retrying
    # tried again at the lease's pace (12 s), silently: at least one more claim
    wait_until(lambda: told() and len(claims - {None}) >= 3, 30 * SLOW, "a later try")
    status, verification, request, error, _ = state(db_url, sub)
    assert (status, verification, error) == ("active", "verified", None)
    assert request in ("pending", "running"), request
    assert sql(db_url, VERIFIED_AT, sub)[0][0] == verified_at
    out = d.proc.output()
    assert out.count("verification challenge not sent") == 2, out.count(
        "verification challenge not sent")  # "here: ... left to the others", then the reason


def test_a_verification_claimed_by_a_replica_without_the_key_is_sent_by_one_with_it(
        db_url, broker, procs, workdir):
    """docs/sql.md, verify: during a key rollout, a dispatcher that cannot
    load the subscription gives its verification back to the others at
    once. The replica without the new key claims it first; the replica with
    the key, started then, verifies it within seconds of starting, and the
    note is gone (before: held to the first one's lease's end, 45 s here,
    20 s by default, nothing said to the user)."""
    from test_secrets import new_key
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    key = new_key()
    sub = sealed_under_a_key_the_next_dispatcher_lacks(procs, db_url, broker, receiver, key=key)
    # its lease 45 s (HOOKBRIDGE_MAX_QUEUE_WAIT + VERIFY_TIMEOUT + 10 s)
    d_old = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-nokey",
                       extra_env={"HOOKBRIDGE_VERIFY_TIMEOUT": "30s"})
    d_old.wait_ready()
    verified_at = sql(db_url, VERIFIED_AT, sub)[0][0]
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    wait_until(lambda: "verification challenge not sent" in d_old.proc.output(), 10 * SLOW,
               "the replica without the key to take the request")
    t0 = time.monotonic()
    d_new = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-newkey",
                       extra_env={"HOOKBRIDGE_SECRET_KEY": key})
    d_new.wait_ready()
    wait_until(lambda: sql(db_url, VERIFIED_AT, sub)[0][0] != verified_at, 25 * SLOW,
               "the replica with the key to verify it")
    took = time.monotonic() - t0  # its start included
    assert took < 20 * SLOW, took
    assert state(db_url, sub) == ("active", "verified", None, None, None)
    assert "endpoint verified" in d_new.proc.output()


class Stuck(ChallengeAnswering):
    """Holds every POST until released (the host's one connection busy by
    real deliveries); answers the challenge at once. Records when each
    challenge came, and every POST's webhook-id."""
    release = threading.Event()
    first = threading.Event()
    gets, ids = [], []

    def do_GET(self):
        Stuck.gets.append(time.monotonic())
        super().do_GET()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        Stuck.ids.append(self.headers["webhook-id"])
        Stuck.first.set()
        Stuck.release.wait(60)
        self.answer(204)


def busy_endpoint(procs, db_url, broker, service_db_url=None):
    """An endpoint (Stuck) and a dispatcher with one connection to it, held by
    a real delivery: (the endpoint, the dispatcher, the subscription). The
    dispatcher reaches the database at service_db_url when given (a proxy)."""
    Stuck.release, Stuck.first, Stuck.gets, Stuck.ids = (threading.Event(), threading.Event(),
                                                         [], [])
    srv = serve(Stuck)
    d = Dispatcher(procs, service_db_url or db_url, broker.bootstrap,
                   extra_env={"HOOKBRIDGE_MAX_HOST_CONNECTIONS": "1",
                              "HOOKBRIDGE_MAX_QUEUE_WAIT": "1s",
                              "HOOKBRIDGE_REQUEST_TIMEOUT": "50s"})
    d.wait_ready(30 * SLOW)
    sub = register_verified(db_url, srv.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    assert Stuck.first.wait(10 * SLOW), "the real delivery"
    return srv, d, sub


def test_a_challenge_to_a_busy_endpoint_is_sent_a_second_after_it_frees_saying_why_meanwhile(
        db_url, broker, procs, workdir):
    """docs/sql.md, verify: a challenge the dispatcher could not hand to
    its endpoint now (no connection within max_queue_wait) is given back
    and tried again a second later, verification_retrying saying why
    meanwhile; each of it and a preview waiting so is said once, not at each
    try. The host's one connection is held 4 s by a real delivery: verified
    within about 2 s of it freeing (before: at the lease's end, 16 s after
    the first try, and `sending preview` logged at each try)."""
    srv, d, sub = busy_endpoint(procs, db_url, broker)
    try:
        verified_at = sql(db_url, VERIFIED_AT, sub)[0][0]
        sql(db_url, "SELECT hookbridge.verify(%s)", sub)
        preview = sql(db_url, "SELECT hookbridge.preview(%s)", sub)[0][0]
        waiting = wait_until(lambda: (r := state(db_url, sub))[4] and r, 5 * SLOW,
                             "the request to say why it waits")
        assert waiting[:4] == ("active", "verified", waiting[2], None), waiting
        assert waiting[4].startswith("not sent yet (tried again): endpoint slow"), waiting
        time.sleep(3)
        Stuck.release.set()
        freed = time.monotonic()
        wait_until(lambda: sql(db_url, VERIFIED_AT, sub)[0][0] != verified_at, 20 * SLOW,
                   "the challenge")
        took = time.monotonic() - freed
        assert took < 4 * SLOW, took
        assert state(db_url, sub) == ("active", "verified", None, None, None)
        wait_until(lambda: sql(db_url, "SELECT status FROM hookbridge.previews WHERE id = %s",
                               preview)[0][0] == "delivered", 10 * SLOW, "the preview")
        out = d.proc.output()
        assert out.count("verification challenge not sent") == 1
        assert said(out, "sending verification challenge") == 2  # register's, this one
        assert said(out, "sending preview") == 1, said(out, "sending preview")
        assert out.count("sending preview") > 1  # tried more than once
        assert out.count("preview not sent") == 1
    finally:
        Stuck.release.set()
        srv.shutdown()


def test_a_challenge_to_an_endpoint_that_stays_busy_says_so_after_its_tries(
        db_url, broker, procs, workdir):
    """docs/sql.md, verify: a challenge not sent because its endpoint stays
    busy is tried each second for up to 12 x HOOKBRIDGE_MAX_QUEUE_WAIT, then
    verification_retrying says the endpoint stayed busy and it is tried at
    its lease's pace; nothing is recorded of the endpoint (it never saw the
    challenge: still verified, active), and the dispatcher says each state
    once (before: nothing said to the user, a warning at each lease)."""
    srv, d, sub = busy_endpoint(procs, db_url, broker)
    try:
        t0 = time.monotonic()
        sql(db_url, "SELECT hookbridge.verify(%s)", sub)
        r = wait_until(lambda: (r := state(db_url, sub))[4] and "stayed busy" in r[4] and r,
                       25 * SLOW, "the bound to be said")
        assert time.monotonic() - t0 >= 11
        assert r[:4] == ("active", "verified", r[2], None), r
        assert r[4].startswith("not sent: its endpoint stayed busy through 12 s of tries: "
                               "endpoint slow"), r
        out = d.proc.output()
        assert out.count("verification challenge not sent") == 2
        assert said(out, "sending verification challenge") == 2  # register's, this one
        assert Stuck.gets.__len__() == 1  # register's
    finally:
        Stuck.release.set()
        srv.shutdown()


@pytest.mark.sql_only
def test_a_verification_given_back_is_claimable_again_after_its_delay_and_says_why(db_url):
    """docs/sql.md, release_verification: the claim's holder gives a
    request back: still pending, claimable by any dispatcher once `after`
    has passed, verification_retrying saying why; nothing recorded (still
    unverified); a claim that no longer holds changes nothing; a negative
    delay is HB012; the outcome clears the note."""
    sub = sql(db_url, "SELECT hookbridge.register('back', 'https://example.com/h', %s)",
              ["user.session.start"])[0][0]
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    claim = service_sql(db_url, "SELECT hookbridge.claim_verification_until(%s)", sub)[0][0]
    assert service_sql(db_url, "SELECT hookbridge.claim_verification_until(%s)",
                       sub) == [(None,)]  # held
    why = "not sent yet (tried again): endpoint slow"
    assert service_sql(db_url, "SELECT hookbridge.release_verification(%s, %s, %s,"
                       " interval '300 milliseconds')", sub, claim, why) == [(True,)]
    assert state(db_url, sub) == ("inactive", "unverified", "running", None, why)
    assert service_sql(db_url, "SELECT hookbridge.release_verification(%s, %s, 'x')",
                       sub, claim) == [(False,)]  # given back already
    time.sleep(0.4)
    assert state(db_url, sub)[2] == "pending"
    again = service_sql(db_url, "SELECT hookbridge.claim_verification_until(%s)", sub)[0][0]
    assert again is not None and again != claim
    with pytest.raises(psycopg2.Error) as e:
        service_sql(db_url, "SELECT hookbridge.release_verification(%s, %s, 'x', interval '-1 s')",
                    sub, again)
    assert e.value.pgcode == "HB012"
    assert service_sql(db_url, "SELECT hookbridge.record_verification(%s, true, NULL,"
                       " 'https://example.com/h', %s)", sub, again) == [(True,)]
    assert state(db_url, sub) == ("inactive", "verified", None, None, None)
