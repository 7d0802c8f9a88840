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
import http.server
import json
import socket
import ssl
import threading
import time

from hbtest.endpoints import serve
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, produce
from hbtest.tls import Pki
from test_delivery import event, register_verified, sql, verify_once
from test_tls import https_dispatcher


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
