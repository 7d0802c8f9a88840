"""Delivery policies under faults (review 11): what an endpoint's answers do
to the verification challenge and to the per-host circuit breaker, and how a
closed connection is reported.

- A challenge answered "try later" (503, 429) is asked again, not recorded
  as a refusal: on 534b5fd it was recorded `failed`, which deactivated the
  active subscription.
- Answers that show the host up (a 404 or a 429 for one subscription) do not
  count towards the host's circuit: on 534b5fd one subscription's 404s opened
  the circuit for every other subscription on its host.
- An HTTPS endpoint that closes the connection without answering, having
  asked for no client certificate, is reported as a closed connection, not
  as a TLS error asking about client certificates (534b5fd did).

Each test was shown to fail on 534b5fd."""
import ctypes
import http.server
import json
import socket
import ssl
import threading
import time

import pytest

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, produce
from hbtest.tls import Pki
from test_delivery import event, register_verified, sql, verify_once
from test_tls import https_dispatcher


def scripted_challenges(gets, answers):
    """An endpoint whose challenge answers are scripted per path: answers[path]
    lists the statuses to give before the echo (consumed in order; 429 and 503
    with Retry-After: 1); gets[path] records when each challenge came. POSTs
    are answered 204."""

    class Endpoint(ChallengeAnswering):
        def do_GET(self):
            gets.setdefault(self.path, []).append(time.time())
            queue = answers.get(self.path) or []
            status = queue.pop(0) if queue else 200
            if status == 200:
                return super().do_GET()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            if status in (429, 503):
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.answer()

    return Endpoint


def test_a_try_later_answer_to_the_challenge_is_asked_again_not_recorded(db_url, broker, procs):
    """Two active subscriptions are verified again while their endpoint is
    briefly overloaded: one challenge is answered 503, the other 429. Neither
    is recorded as failed nor deactivated; each challenge is sent again (when
    the dispatcher's claim expires) and, answered 200 then, verifies. A 404
    is still a refusal, recorded at once."""
    gets = {}
    answers = {}  # path -> statuses to give before echoing (consumed in order)
    srv = serve(scripted_challenges(gets, answers))
    try:
        # The claim's lease is MAX_QUEUE_WAIT + VERIFY_TIMEOUT + 10 s: 12 s.
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_MAX_QUEUE_WAIT": "1s", "HOOKBRIDGE_VERIFY_TIMEOUT": "1s"})
        d.wait_ready()
        subs = {p: register_verified(db_url, srv.url + p, ["user.session.start"])
                for p in ("/busy", "/limited", "/gone")}
        answers.update({"/hook/busy": [503], "/hook/limited": [429], "/hook/gone": [404]})
        for sub in subs.values():
            sql(db_url, "SELECT hookbridge.verify(%s)", sub)

        def state(p):
            """(status, verification, verification_error, a request pending)"""
            return tuple(sql(db_url, "SELECT status, verification, verification_error, "
                                     "verification_requested_at IS NOT NULL "
                                     "FROM hookbridge.subscriptions WHERE id=%s", subs[p])[0])

        wait_until(lambda: all(len(gets.get("/hook" + p, [])) >= 2
                               for p in ("/busy", "/limited", "/gone")), 10 * SLOW,
                   "the second challenges")
        # A refusal is recorded at once and deactivates, as before.
        wait_until(lambda: state("/gone")[1] == "failed" or None, 5 * SLOW, "the 404 recorded")
        assert state("/gone") == ("inactive", "failed", "HTTP 404", False)
        time.sleep(1.5)  # an outcome would have been recorded by now (the 404's was)
        for p in ("/busy", "/limited"):  # still verified by the earlier challenge, asked again
            assert state(p) == ("active", "verified", None, True), (p, state(p))
        # Asked again once the claim has expired; answered 200, verified.
        wait_until(lambda: not any(state(p)[3] for p in ("/busy", "/limited")) or None,
                   30 * SLOW, "the challenges sent again to be answered")
        for p in ("/busy", "/limited"):
            assert state(p) == ("active", "verified", None, False), (p, state(p))
            assert len(gets["/hook" + p]) == 3, (p, gets["/hook" + p])
            assert gets["/hook" + p][2] - gets["/hook" + p][1] >= 5, "asked again at once"
        assert "verification challenge answered HTTP 503 (try later): not recorded" in \
            d.proc.output()
        # Delivered to as active subscriptions.
        produce(broker.bootstrap, [event("user.session.start")])
        wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE "
                                       "subscription_id = ANY(%s::uuid[]) AND "
                                       "status='delivered'",
                               [subs["/busy"], subs["/limited"]])[0][0] == 2 or None,
                   10 * SLOW, "a delivery to each")
    finally:
        srv.shutdown()


def test_answers_that_show_the_host_up_do_not_open_its_circuit(db_url, broker, procs):
    """Three subscriptions on one host: one whose path answers 404, one whose
    path answers 429 (its own rate limit), one healthy. Ten answers of the
    first two, with a circuit that opens after 3 failures, leave the host's
    circuit closed: the healthy subscription's deliveries are attempted and
    delivered, none waits with "circuit open". A 5xx still counts."""
    posts = []

    class Endpoint(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"verification": self.headers.get(
                "X-Okta-Verification-Challenge", "")}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.append(self.path)
            status = {"/hook/gone": 404, "/hook/limited": 429, "/hook/down": 503}.get(
                self.path, 204)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = serve(Endpoint)
    try:
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_RETRY_SCHEDULE": "1h",
            "HOOKBRIDGE_CIRCUIT_FAILURES": "3",
            "HOOKBRIDGE_CIRCUIT_COOLDOWN": "10m",
        })
        d.wait_ready()
        register_verified(db_url, srv.url + "/gone", ["user.session.start"])
        register_verified(db_url, srv.url + "/limited", ["user.session.start"])
        good = register_verified(db_url, srv.url + "/ok", ["user.lifecycle.create"])
        produce(broker.bootstrap, [event("user.session.start") for _ in range(5)])
        wait_until(lambda: len(posts) >= 10, 15 * SLOW, "the 404 and 429 answers")
        produce(broker.bootstrap, [event("user.lifecycle.create") for _ in range(3)])
        rows = wait_until(
            lambda: (r := sql(db_url, "SELECT status, coalesce(last_error, '') FROM "
                                      "hookbridge.deliveries WHERE subscription_id=%s", good))
            and len(r) == 3 and r, 15 * SLOW, "the healthy subscription's deliveries")
        assert sorted(rows) == [("delivered", "")] * 3, rows
        assert "circuit open" not in d.proc.output()
        assert d.metric("hookbridge_circuit_opens_total") == 0

        # Answers that say the host is failing still open it.
        register_verified(db_url, srv.url + "/down", ["user.lifecycle.deactivate"])
        produce(broker.bootstrap, [event("user.lifecycle.deactivate") for _ in range(3)])
        wait_until(lambda: "circuit open after 3 consecutive failures" in d.proc.output(),
                   15 * SLOW, "the circuit to open on 503s")
    finally:
        srv.shutdown()


def closing_tls_endpoint(ctx):
    """A TLS endpoint on a loopback port that completes the handshake, reads
    the request and closes the connection without answering; returns (its
    listening socket, the list it appends 1 to per request read)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    closed = []

    def serve_tls():
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)  # the request, unanswered
                    closed.append(1)
            except (OSError, ssl.SSLError):
                pass

    threading.Thread(target=serve_tls, daemon=True).start()
    return lsock, closed


def test_an_https_endpoint_closing_without_an_answer_is_not_called_a_tls_error(
        db_url, broker, procs, workdir):
    """An HTTPS endpoint that completes the handshake (asking for no client
    certificate), reads the request and closes the connection: the reason
    says so, without "TLS error" or a question about client certificates.
    One that asked for a client certificate and closes the same way still
    gets the hint, which now says that it asked."""
    pki = Pki(workdir)
    cert, key = pki.server()
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    plain.load_cert_chain(str(cert), str(key))
    asking = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    asking.load_cert_chain(str(cert), str(key))
    asking.load_verify_locations(str(pki.ca))
    asking.verify_mode = ssl.CERT_OPTIONAL  # asks, takes none
    (lplain, closed_plain), (lasking, closed_asking) = map(closing_tls_endpoint, (plain, asking))
    try:
        https_dispatcher(procs, db_url, broker, pki)
        url = "https://127.0.0.1:%d/hook"
        _, state, why = verify_once(db_url, url % lplain.getsockname()[1], name="plain")
        assert closed_plain, "the endpoint never got the request"
        assert state == "failed"
        assert why.startswith("the endpoint closed the connection without a response"), why
        assert "client certificate" not in why and "TLS error" not in why, why

        _, state, why = verify_once(db_url, url % lasking.getsockname()[1], name="asking")
        assert closed_asking, "the endpoint never got the request"
        assert state == "failed"
        assert why.startswith("TLS error: the endpoint closed the connection after the "
                              "handshake without a response (it asked for a client "
                              "certificate, and HOOKBRIDGE_TLS_CLIENT_CERT gives none)"), why
    finally:
        lplain.close()
        lasking.close()


@pytest.mark.sql_only
def test_sql_and_the_dispatcher_agree_on_numbers_at_the_64_bit_edge(conn, c_filter):
    """filters.md: a filter register() accepts never fails in the dispatcher.
    The dispatcher reads the filter as PostgreSQL prints the jsonb, and reads
    a number with a decimal point as a double: 9223372036854775807.0 is 2^63
    there, outside the range. On 534b5fd SQL accepted it and the dispatcher
    skipped the subscription ("subscription skipped"): it received nothing."""
    texts = ["9223372036854775807.0", "9223372036854775500.5", "9223372036854775000.5",
             "9223372036854775807", "9223372036854775808", "-9223372036854775808",
             "-9223372036854775808.4", "-9223372036854775809", "-9223372036854777000.5",
             "1e400", "1.5", "-0.0"]
    for t in texts:
        spec = '{"x": %s}' % t
        with conn.cursor() as cur:
            cur.execute("SELECT hookbridge.filter_problem(%s::jsonb), %s::jsonb::text",
                        (spec, spec))
            sql_msg, stored = cur.fetchone()
        j = c_filter.lib.json_loads(stored.encode(), 0, None)
        if not j:
            c_msg = "jansson cannot read it"
        else:
            err = ctypes.create_string_buffer(1024)
            f = c_filter.lib.hb_filter_compile(j, err, len(err))
            c_filter.lib.json_delete(j)
            c_msg = None if f else err.value.decode()
            if f:
                c_filter.lib.hb_filter_free(f)
        assert (sql_msg is None) == (c_msg is None), (t, stored, sql_msg, c_msg)
        if sql_msg is not None and c_msg != "jansson cannot read it":
            assert sql_msg == c_msg, (t, sql_msg, c_msg)


def test_a_new_verification_request_gets_its_own_try_later_span(db_url, broker, procs):
    """HOOKBRIDGE_VERIFY_TRY_LATER_FOR=3s. The challenge to /flaky is
    answered 503 (not recorded); the operator moves the subscription to
    /other (verified) and, after more than the 3 s, back to /flaky, whose
    new challenge is answered 503 again. That is the new request's first
    'try later': asked again, not recorded. Before, the dispatcher still
    counted from the old request's 503 and recorded this one as the failure
    ('answered so for ...'), deactivating the subscription over a single
    'try later'."""
    gets = {}
    answers = {}
    srv = serve(scripted_challenges(gets, answers))
    try:
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_MAX_QUEUE_WAIT": "1s", "HOOKBRIDGE_VERIFY_TIMEOUT": "1s",
            "HOOKBRIDGE_VERIFY_TRY_LATER_FOR": "3s"})
        d.wait_ready()
        sub = register_verified(db_url, srv.url + "/flaky", ["user.session.start"])

        def state():
            return tuple(sql(db_url, "SELECT status, verification, verification_error "
                                     "FROM hookbridge.subscriptions WHERE id=%s", sub)[0])

        answers["/hook/flaky"] = [503]
        sql(db_url, "SELECT hookbridge.verify(%s)", sub)
        wait_until(lambda: len(gets.get("/hook/flaky", [])) >= 2, 10 * SLOW, "the 503")
        first_503 = gets["/hook/flaky"][1]
        sql(db_url, "SELECT hookbridge.update(%s, url => %s)", sub, srv.url + "/other")
        wait_until(lambda: state()[1] == "verified" or None, 10 * SLOW, "/other verified")
        time.sleep(max(0.0, first_503 + 4 - time.time()))
        answers["/hook/flaky"] = [503]
        sql(db_url, "SELECT hookbridge.update(%s, url => %s)", sub, srv.url + "/flaky")
        wait_until(lambda: len(gets["/hook/flaky"]) >= 3, 10 * SLOW, "the new request's 503")
        time.sleep(1.5)  # an outcome would have been recorded by now
        assert state() == ("active", "unverified", None), state()
        # Asked again when the claim expires; answered 200 then: verified.
        wait_until(lambda: state()[1] == "verified" or None, 30 * SLOW, "verified again")
        assert state() == ("active", "verified", None)
    finally:
        srv.shutdown()
