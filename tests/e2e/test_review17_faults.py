"""The verification challenge and the delivery log's health as the operator
sees it (review 17).

- An active subscription's challenge that fails as a delivery would be
  retried (a 502, a timeout, a connection refused) is asked again, not
  recorded: on 4a269d1 only 503 and 429 were, and a 502, a timeout or a
  refused connection during a re-verification (verify() again, or a new
  URL) deactivated the subscription at once. A refusal (401) still is
  recorded at once, and so is any failure of an inactive subscription's
  challenge (nothing to deactivate, the operator learns why now).
- The challenge is signed like a delivery (Standard Webhooks, over an empty
  body, webhook-id = the challenge value), and the example receiver given a
  secret answers only a challenge signed with it: on 4a269d1 the GET was
  unsigned, and anyone could make the receiver answer.
- A delivery log the database refuses makes the service not ready with the
  reason, and shows in hookbridge_delivery_log_stalled_seconds: on 4a269d1
  the pods stayed ready and no metric said how long nothing had been
  logged.

Each test was shown to fail on 4a269d1."""
import base64
import hashlib
import hmac
import http.server
import re
import threading
import time
import urllib.error
import urllib.request

import psycopg2
import pytest

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.procs import SLOW, free_port, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, produce
from test_delivery import SECRET, event, register_verified, sql, verify_once


def state(db_url, sub):
    """(status, verification, verification_error, a request pending)"""
    return tuple(sql(db_url, "SELECT status, verification, verification_error, "
                             "verification_requested_at IS NOT NULL "
                             "FROM hookbridge.subscriptions WHERE id=%s", sub)[0])


def retrying(db_url, subs):
    """subscription_overview.verification_retrying of /gateway, /slow, /moved."""
    return [sql(db_url, "SELECT verification_retrying FROM hookbridge.subscription_overview "
                        "WHERE id = %s", subs[p])[0] for p in ("/gateway", "/slow", "/moved")]


def test_a_passing_failure_of_an_active_subscription_s_challenge_does_not_deactivate_it(
        db_url, broker, procs):
    """Three active subscriptions are challenged again while their endpoint
    has a bad moment: one answered 502, one too slow (a timeout), one moved
    to a URL where nothing listens yet (connection refused). None is
    recorded or deactivated; each challenge is sent again when the claim
    expires and verifies then. Meanwhile a 401 to an active subscription's
    challenge and a 502 to an inactive one's are recorded at once."""
    gets = {}
    answers = {}  # path -> answers to give before the echo (consumed in order)

    class Endpoint(ChallengeAnswering):
        def do_GET(self):
            gets.setdefault(self.path, []).append(time.time())
            queue = answers.get(self.path) or []
            status = queue.pop(0) if queue else 200
            if status == "sleep":
                time.sleep(2)  # past HOOKBRIDGE_VERIFY_TIMEOUT
                status = 200
            if status == 200:
                return super().do_GET()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = serve(Endpoint)
    later = None
    try:
        # The claim's lease is MAX_QUEUE_WAIT + VERIFY_TIMEOUT + 10 s: 12 s.
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_MAX_QUEUE_WAIT": "1s", "HOOKBRIDGE_VERIFY_TIMEOUT": "1s"})
        d.wait_ready()
        subs = {p: register_verified(db_url, srv.url + p, ["user.session.start"])
                for p in ("/gateway", "/slow", "/denied", "/moved")}
        gets.clear()
        answers.update({"/hook/gateway": [502], "/hook/slow": ["sleep"], "/hook/denied": [401],
                        "/hook/new": [502]})
        for p in ("/gateway", "/slow", "/denied"):
            sql(db_url, "SELECT hookbridge.verify(%s)", subs[p])
        port = free_port()  # nothing listens there yet
        moved_to = f"http://127.0.0.1:{port}/hook"
        sql(db_url, "SELECT hookbridge.update(%s, url => %s)", subs["/moved"], moved_to)
        inactive = sql(db_url, "SELECT hookbridge.register('new', %s, ARRAY['user.session.start'])",
                       srv.url + "/new")[0][0]
        sql(db_url, "SELECT hookbridge.verify(%s)", inactive)

        # Refusals, and the inactive subscription's failure: recorded at once.
        wait_until(lambda: state(db_url, subs["/denied"])[1] == "failed" or None, 10 * SLOW,
                   "the 401 recorded")
        assert state(db_url, subs["/denied"]) == ("inactive", "failed", "HTTP 401", False)
        wait_until(lambda: state(db_url, inactive)[1] == "failed" or None, 10 * SLOW,
                   "the inactive subscription's 502 recorded")
        assert state(db_url, inactive) == ("inactive", "failed", "HTTP 502", False)

        # The passing failures: not recorded, still active, asked again.
        wait_until(lambda: len(gets.get("/hook/slow", [])) >= 1
                   and "verification challenge failed (timeout after 1000 ms)" in d.proc.output()
                   and "verification challenge failed (connection refused" in d.proc.output()
                   and "verification challenge answered HTTP 502: not recorded" in d.proc.output(),
                   10 * SLOW, "the three passing failures")
        for p in ("/gateway", "/slow"):
            assert state(db_url, subs[p]) == ("active", "verified", None, True), p
        assert state(db_url, subs["/moved"]) == ("active", "unverified", None, True)
        # What the operator waiting for the outcome sees meanwhile: why.
        notes = wait_until(lambda: (r := retrying(db_url, subs)) and all(n[0] for n in r) and r,
                           5 * SLOW, "the notes of the challenges asked again")
        assert notes == [("HTTP 502 (asked again; recorded as the failure if it lasts 10m)",),
                         ("timeout after 1000 ms (asked again; recorded as the failure if it "
                          "lasts 10m)",),
                         ("connection refused (asked again; recorded as the failure if it "
                          "lasts 10m)",)], notes

        # The moved-to endpoint comes up; every challenge sent again verifies.
        later = http.server.ThreadingHTTPServer(("127.0.0.1", port), ChallengeAnswering)
        threading.Thread(target=later.serve_forever, daemon=True).start()
        wait_until(lambda: not any(state(db_url, subs[p])[3]
                                   for p in ("/gateway", "/slow", "/moved")) or None,
                   30 * SLOW, "the challenges sent again to be answered")
        for p in ("/gateway", "/slow", "/moved"):
            assert state(db_url, subs[p]) == ("active", "verified", None, False), p
        assert retrying(db_url, subs) == [(None,)] * 3
        assert len(gets["/hook/gateway"]) == 2 and gets["/hook/gateway"][1] - \
            gets["/hook/gateway"][0] >= 5, ("asked again at once", gets["/hook/gateway"])
        assert d.metric('hookbridge_verifications_total{result="failed"}') == 2
    finally:
        srv.shutdown()
        if later:
            later.shutdown()


def test_the_challenge_is_signed_and_the_example_receiver_answers_only_a_signed_one(
        db_url, broker, procs, workdir):
    """The challenge carries webhook-id (the challenge value),
    webhook-timestamp and webhook-signature over an empty body, made with
    the subscription's secret, as any Standard Webhooks library checks it.
    The example receiver with --secret verifies a subscription with that
    secret, refuses (401) the challenge of one with another secret, and a
    bare GET with a challenge header."""
    seen = []

    class Recording(ChallengeAnswering):
        def do_GET(self):
            seen.append(dict(self.headers))
            return super().do_GET()

    srv = serve(Recording)
    try:
        d = Dispatcher(procs, db_url, broker.bootstrap)
        d.wait_ready()
        _, st, why = verify_once(db_url, srv.url)
        assert st == "verified", why
        h = {k.lower(): v for k, v in seen[-1].items()}
        challenge = h["x-okta-verification-challenge"]
        assert h.get("webhook-id") == challenge, h
        assert abs(int(h["webhook-timestamp"]) - time.time()) < 60, h
        key = base64.b64decode(SECRET[len("whsec_"):])
        want = base64.b64encode(hmac.new(key, f"{challenge}.{h['webhook-timestamp']}.".encode(),
                                         hashlib.sha256).digest()).decode()
        assert h["webhook-signature"].split() == [f"v1,{want}"], h

        rcv = Receiver(procs, workdir, secret=SECRET)
        _, st, why = verify_once(db_url, rcv.url, name="same secret")
        assert (st, why) == ("verified", None)
        other = "whsec_" + base64.b64encode(b"another secret of 24 bytes!!").decode()
        _, st, why = verify_once(db_url, rcv.url, name="other secret",
                                 options={"secret": other})
        assert (st, why) == ("failed", "HTTP 401")
        req = urllib.request.Request(rcv.url, headers={"X-Okta-Verification-Challenge": "x"})
        try:
            urllib.request.urlopen(req, timeout=5)
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == 401, "an unsigned challenge was answered"
    finally:
        srv.shutdown()


def test_a_delivery_log_the_database_refuses_makes_the_service_not_ready_with_the_reason(
        db_url, procs, workdir):
    """A trigger refuses every row of the delivery log. The event is still
    delivered; after 10 s of refused writes /readyz is 503 and says why,
    with PostgreSQL's message, and hookbridge_delivery_log_stalled_seconds
    counts the time. Once the trigger is gone the attempt is logged, the
    service is ready again and the gauge reads 0. A row rejected as invalid
    (a CHECK constraint) is counted in
    hookbridge_delivery_log_rows_rejected_total."""
    broker = Broker(procs, workdir)
    rcv = Receiver(procs, workdir)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    register_verified(db_url, rcv.url, ["user.session.start"])
    sql(db_url, "CREATE FUNCTION public.log_closed() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'the delivery log is closed for maintenance'; END $$")
    sql(db_url, "CREATE TRIGGER log_closed BEFORE INSERT ON hookbridge.delivery_attempts "
        "FOR EACH ROW EXECUTE FUNCTION public.log_closed()")
    e = event("user.session.start")
    produce(broker.bootstrap, [e])
    wait_until(lambda: e["uuid"] in {ev["uuid"] for _, ev in rcv.events()}, 20 * SLOW,
               "the event at its endpoint")
    status, body = wait_until(lambda: (r := d.get("/readyz"))[0] == 503 and r, 20 * SLOW,
                              "/readyz 503 while the log is refused")
    assert re.match(r"delivery log refused by the database for \d+ s: ", body), body
    assert "the delivery log is closed for maintenance" in body, body
    assert d.metric("hookbridge_delivery_log_stalled_seconds", None) >= 10
    assert d.get("/healthz")[0] == 200
    sql(db_url, "DROP TRIGGER log_closed ON hookbridge.delivery_attempts")
    wait_until(lambda: d.get("/readyz")[0] == 200, 15 * SLOW, "ready again")
    assert d.metric("hookbridge_delivery_log_stalled_seconds") == 0
    assert sql(db_url, "SELECT status FROM hookbridge.deliveries") == [("delivered",)]

    # A row the database rejects as invalid (a constraint added by hand) is
    # not retried: the offset moves on, the log misses the attempt, and the
    # operator is told by a counter (and its alert), not only a log line.
    assert d.metric("hookbridge_delivery_log_rows_rejected_total", None) == 0
    now = sql(db_url, "SELECT now()::text")[0][0]
    sql(db_url, "ALTER TABLE hookbridge.delivery_attempts ADD CONSTRAINT nothing_new "
        f"CHECK (started_at < '{now}')")
    e2 = event("user.session.start")
    produce(broker.bootstrap, [e2])
    wait_until(lambda: d.metric("hookbridge_delivery_log_rows_rejected_total") == 1, 20 * SLOW,
               "the rejected row counted")
    assert "delivery log: attempt rejected by the database and not recorded" in d.proc.output()
    assert e2["uuid"] in {ev["uuid"] for _, ev in rcv.events()}
    assert d.get("/readyz")[0] == 200, "a rejected row stalls nothing"


@pytest.mark.sql_only
def test_the_note_of_a_challenge_asked_again_is_kept_under_its_claim_and_cleared_by_news(db_url):
    """defer_verification notes what a challenge asked again got, only under
    the claim that holds and for the URL challenged (else false, nothing
    changed), without notifying the services; an outcome, verify() and a new
    URL clear it."""
    from test_promises_sql import URL, registered, vclaim_until

    def note():
        return sql(db_url, "SELECT verification_retrying FROM hookbridge.subscription_overview "
                           "WHERE id = %s", sub)[0][0]

    def defer(claim, url=URL):
        return sql(db_url, "SELECT hookbridge.defer_verification(%s, 'HTTP 502', %s, %s)",
                   sub, url, claim)[0][0]

    sub = registered(db_url)
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    claim = vclaim_until(db_url, sub)
    listener = psycopg2.connect(db_url)
    try:
        listener.autocommit = True
        listener.cursor().execute("LISTEN hookbridge_subscriptions")
        assert defer(claim, URL + "/other") is False and note() is None
        assert defer(claim) is True and note() == "HTTP 502"
        time.sleep(0.2)
        listener.poll()
        assert listener.notifies == [], "a note is bookkeeping: the services reload nothing"
        sql(db_url, "SELECT hookbridge.update(%s, name => 'renamed')", sub)  # and a change does
        wait_until(lambda: listener.poll() or listener.notifies, 5, "the listener to hear it")
    finally:
        listener.close()
    assert sql(db_url, "SELECT hookbridge.record_verification(%s, true, NULL, %s, %s)",
               sub, URL, claim)[0][0] is True
    assert note() is None
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    claim = vclaim_until(db_url, sub)
    assert defer(claim) is True
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert note() is None and defer(claim) is False, "a new request: the old claim's note"
    claim = vclaim_until(db_url, sub)
    assert defer(claim) is True
    sql(db_url, "SELECT hookbridge.update(%s, url => %s)", sub, URL + "/v2")
    assert note() is None
