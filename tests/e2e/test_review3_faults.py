"""Faults of the event intake (hookbridge-producer --listen, the Okta
event-hook endpoint), found in review: each test shows what a user saw
before its fix.

- A delivery still waiting for the brokers when a stop's 20 s drain ends is
  answered 503 with Retry-After, as docs/ingest.md says, instead of having
  its connection shut without an answer while the log and the metrics said
  503.
- An ingest secret no HTTP request can carry (a newline at its end, as
  `kubectl create secret --from-file` of an echoed file gives, or leading
  blanks, which HTTP drops) or an auth header name that is not one stops the
  producer at start, naming the variable, instead of answering every
  delivery 401 "unauthorized" while Okta sends the very secret it was given."""
import signal
import threading
import time

from hbtest.ingest import Ingest
from hbtest.procs import SLOW, free_port, wait_until
from test_delivery import event
from test_ingest import brokers_refuse


def test_a_delivery_still_waiting_when_the_stop_s_drain_ends_is_answered_503(broker, procs):
    """docs/ingest.md, Operating it: "Stopping (SIGTERM, SIGINT): ... the
    requests in flight finish (at most 20 s; any still waiting then are
    answered 503)". The brokers are away and the ingest timeout is longer
    than the drain, so the delivery is still waiting when the drain ends.
    Okta must get the 503 with Retry-After the log and the metrics speak of.
    (Before: the handler was woken to answer 503, but MHD_stop_daemon shut
    every connection's socket at once, so the client saw the connection
    close without an answer.)"""
    ing = Ingest(procs, broker.bootstrap, extra_env={"HOOKBRIDGE_INGEST_TIMEOUT": "60s"})
    ing.wait_ready()
    broker.proc.signal(signal.SIGUSR1)  # every broker down: the delivery waits
    wait_until(lambda: brokers_refuse(broker.bootstrap), 10, "every broker down")
    answer = {}

    def post():
        try:
            answer["r"] = ing.post([event("user.session.start")], timeout=60)
        except OSError as e:  # the connection ended without an answer
            answer["error"] = repr(e)

    t = threading.Thread(target=post)
    t.start()
    ing.wait_in_progress()  # the delivery is in, waiting for its acknowledgements
    t0 = time.monotonic()
    ing.proc.signal(signal.SIGTERM)
    t.join(40 * SLOW)
    took = time.monotonic() - t0
    assert "r" in answer, f"no answer {took:.1f} s after SIGTERM: {answer}"
    status, hdrs, body = answer["r"]
    assert status == 503 and hdrs["retry-after"].isdigit(), answer
    assert "stopping" in body["error"] and body["acknowledged"] == 0, body
    assert 19 < took < 25 * SLOW, f"answered {took:.1f} s after SIGTERM, not at the drain's end"


def test_an_ingest_secret_or_header_no_request_can_carry_stops_the_start(procs):
    """docs/operations.md: "A setting the program cannot use stops it with one
    line naming the variable and exit status 2". A secret with a line break
    or a leading blank can never equal a header's value (a header ends at the
    line break; HTTP drops the blanks before a value), and a header name with
    a blank or a colon is no header's name: every delivery would be 401.
    (Before: the producer started and refused every delivery; the operator
    saw only "unauthorized" while Okta's secret was right.)"""
    secret = "Bearer ingest-secret-9f3e1c"
    brokers = f"127.0.0.1:{free_port()}"  # never reached: the start is refused first
    cases = [({"HOOKBRIDGE_INGEST_AUTH_VALUE": secret + "\n"}, "HOOKBRIDGE_INGEST_AUTH_VALUE"),
             ({"HOOKBRIDGE_INGEST_AUTH_VALUE": secret + "\r\n"}, "HOOKBRIDGE_INGEST_AUTH_VALUE"),
             ({"HOOKBRIDGE_INGEST_AUTH_VALUE": " " + secret}, "HOOKBRIDGE_INGEST_AUTH_VALUE"),
             ({"HOOKBRIDGE_INGEST_AUTH_HEADER": "Authorization:"}, "HOOKBRIDGE_INGEST_AUTH_HEADER"),
             ({"HOOKBRIDGE_INGEST_AUTH_HEADER": "X Okta Secret"}, "HOOKBRIDGE_INGEST_AUTH_HEADER")]
    for i, (env, names) in enumerate(cases):
        ing = Ingest(procs, brokers, auth_value=secret, extra_env=env, name=f"ingest-{i}",
                     wait=False)
        wait_until(lambda: not ing.proc.alive(), 5, f"the producer to refuse {env!r}")
        out = ing.proc.output()
        assert ing.proc.p.returncode == 2, (env, out)
        assert names in out and "secret-9f3e1c" not in out, (env, out)
    # Blanks and tabs inside the value are fine: the producer starts.
    ing = Ingest(procs, brokers, auth_value="Bearer a\tb c", name="ingest-ok")
    assert ing.proc.alive()
