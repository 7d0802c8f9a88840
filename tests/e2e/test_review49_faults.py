"""Review 49: the webhook lifecycle as an identity-platform user knows it
(register, subscribe, payload options, the verification challenge, batches,
retries, deactivate, deregister), under faults.

Each check says what it did on main's binaries (637fabe) and what holds it."""
import http.server
import json

import pytest

from hbtest.endpoints import serve
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql, verify_once
from test_reactivate import changes_seen, deactivate_then_activate, delivery_of
from test_retry import stack

BATCH_CT = {"cloudevents": "application/cloudevents-batch+json", "event": "application/json"}


@pytest.mark.parametrize("fmt", sorted(BATCH_CT))
def test_a_batching_subscription_gets_an_array_also_when_its_window_closes_on_one_event(
        db_url, broker, procs, workdir, fmt):
    """docs/payloads.md: "A batch (batch_max > 1): Content-Type:
    application/cloudevents-batch+json, a JSON array". A subscriber that asked
    for batches of up to 5 writes its receiver for an array; at night a
    window closes on a single event.

    On main (637fabe): that event came as the bare object (cloudevents:
    application/cloudevents+json), so the body's shape followed the traffic
    and a receiver iterating the array broke on the quiet hours. Now it is an
    array of one, with the batch content type; the webhook-id is still the
    event's own (a redelivery de-duplicates as before)."""
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"],
                      {"batch_max": 5, "batch_window_ms": 300, "format": fmt})
    ev = event("user.session.start")
    produce(broker.bootstrap, [ev])
    p = wait_until(lambda: receiver.posts(), 20 * SLOW, "the window's one event")[0]
    body = json.loads(p["body"])
    assert p["headers"]["content-type"] == BATCH_CT[fmt]
    assert isinstance(body, list) and len(body) == 1, body
    assert (body[0]["id"] if fmt == "cloudevents" else body[0]["uuid"]) == ev["uuid"]
    assert p["verified"] is True


def test_replay_dropped_right_after_a_reactivation_brings_back_the_retries_still_waiting(
        db_url, procs, workdir):
    """docs/sql.md: "After an endpoint was down long enough to be deactivated
    automatically, activate, then replay_failed and replay_dropped since the
    outage began bring back every delivery it missed while it was active."
    Event A failed and waits for its retry (on the default schedule, up to
    10 hours) when the subscription is deactivated; the operator fixes the
    endpoint, activates it and calls replay_dropped at once, as the recipe
    says.

    On main (637fabe): replay_dropped returned 0 (A was not dropped yet: it
    is recorded dropped only when its retry comes due), and then A's retry
    came due and was dropped: A never reached the endpoint unless the
    operator knew to call replay_dropped again after the longest delay of
    the schedule. Now replay_dropped takes A too (it counts it), and A's
    retry, when it comes due, goes to the endpoint instead of being
    dropped."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "5s", receiver_args={"fail_first": 1})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    wait_until(lambda: changes_seen(d) and changes_seen(r), 10, "the services to see it active")
    a = event("user.session.start")
    produce(broker.bootstrap, [a])
    did_a = wait_until(lambda: (row := delivery_of(db_url, a)) and row[1] == "retry" and row[0],
                       20 * SLOW, "A's first attempt to fail and wait for its retry")
    deactivate_then_activate(db_url, sub, d, r)

    assert sql(db_url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
               sub) == [(1,)], "A, pending at the deactivation"
    _, status, n, _ = wait_until(
        lambda: (row := delivery_of(db_url, a)) and row[1] not in ("retry", "replay") and row,
        20 * SLOW, "A's retry to come due")
    assert (status, n) == ("delivered", 2)
    assert [p["status"] for p in receiver.posts()] == [503, 204]
    assert {p["headers"]["webhook-id"] for p in receiver.posts()} == {did_a}
    # nothing left to take, and nothing sent twice
    assert sql(db_url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
               sub) == [(0,)]


class ChallengeAnswers(http.server.BaseHTTPRequestHandler):
    """Answers the challenge at /bom with a UTF-8 byte order mark before the
    JSON echo (what .NET's UTF8Encoding(true) or PowerShell write), at /big
    with the echo and 20 KB of other members, at /moved with a 301 to /moved/
    (the trailing slash a framework insists on)."""

    def do_GET(self):
        v = self.headers.get("X-Okta-Verification-Challenge", "")
        if self.path in ("/bom", "/big"):
            body = json.dumps({"verification": v, **({"pad": "x" * 20000}
                                                     if self.path == "/big" else {})}).encode()
            if self.path == "/bom":
                body = b"\xef\xbb\xbf" + body
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
        else:
            body = b""
            self.send_response(301)
            self.send_header("Location", self.path + "/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_the_challenge_s_answer_with_a_byte_order_mark_verifies_and_a_failure_says_why(
        db_url, broker, procs):
    """docs/design.md, Verification challenge: the endpoint proves control by
    answering 200 with {"verification": "<value>"}; RFC 8259 (8.1) lets a
    parser ignore a byte order mark before JSON, and common ones do. A
    redirect fails the challenge, as it fails a delivery. Of an answer only
    the first 16 KiB are read.

    On main (637fabe): the answer with a byte order mark failed as "response
    is not JSON" (the operator sees valid JSON in the endpoint's logs), and
    the 301 was recorded as "HTTP 301" where a delivery says "redirect (HTTP
    301) not followed"; the 20 KB answer failed as "response is not JSON"
    (it is JSON: only its start was read). Now the first verifies, the 301
    says that the redirect was not followed, and the long answer says it is
    too long."""
    srv = serve(ChallengeAnswers)
    try:
        d = Dispatcher(procs, db_url, broker.bootstrap)
        d.wait_ready()
        base = srv.url.rsplit("/", 1)[0]
        assert verify_once(db_url, base + "/bom")[1:] == ("verified", None)
        assert verify_once(db_url, base + "/moved")[1:] == (
            "failed", "redirect (HTTP 301) not followed")
        assert verify_once(db_url, base + "/big")[1:] == (
            "failed", "response is not JSON within its first 16384 bytes (answer only the JSON "
            "object)")
    finally:
        srv.shutdown()
