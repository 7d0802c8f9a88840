"""hookbridge-producer --okta-logs: a window of Okta's System Log published
as the ingest endpoint would have (docs/ingest.md, What Okta's retry does not
cover). Okta is a stand-in HTTP server on loopback speaking the System Log
API's paging (Link rel="next"), rate limit (429, X-Rate-Limit-Reset) and
errors; the producer and the devbroker are the real ones."""
import json
import os
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from hbtest.procs import BIN, SLOW
from hbtest.stack import topic_records
from test_delivery import event
from test_review18_faults import read_event

TOKEN = "okta-api-token-5d1e0c"


def send_json(handler, status, body, headers):
    """Answers a stand-in Okta's request: status, body as JSON, headers."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in headers.items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)


class FakeOkta:
    """GET /api/v1/logs: pages[key] answers the request whose `after` is key
    ("" for the first); a page is a list of answers given in turn, each
    (status, events or error body, headers), the last one repeating."""

    def __init__(self, pages):
        self.pages = pages
        self.requests = []
        okta = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(url.query))
                okta.requests.append((url.path, q, dict(self.headers)))
                if self.headers.get("Authorization") != "SSWS " + TOKEN:
                    return self.answer(401, {"errorCode": "E0000011",
                                             "errorSummary": "Invalid token provided"}, {})
                turns = okta.pages.get(q.get("after", ""))
                if turns is None:
                    return self.answer(404, {"errorSummary": "no such page"}, {})
                status, body, headers = turns.pop(0) if len(turns) > 1 else turns[0]
                self.answer(status, body, headers)

            def answer(self, status, body, headers):
                send_json(self, status, body, headers)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next_link(self, after, origin=None):
        return {"Link": f'<{origin or self.url}/api/v1/logs?limit=1000&after={after}>; '
                        f'rel="next", <{self.url}/api/v1/logs?limit=1000>; rel="self"'}

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def run_env(bootstrap, token=TOKEN):
    return dict(os.environ, HOOKBRIDGE_KAFKA_BROKERS=bootstrap,
                HOOKBRIDGE_EVENTS_TOPIC="identity.events", HOOKBRIDGE_OKTA_API_TOKEN=token)


def run(bootstrap, url, *args, token=TOKEN):
    return subprocess.run([str(BIN / "hookbridge-producer"), "--okta-logs", url, *args],
                          env=run_env(bootstrap, token), capture_output=True, text=True,
                          timeout=120 * SLOW)


WINDOW = ("--since", "2026-12-06T10:00:00Z", "--until", "2026-12-06T11:00:00Z")


def test_a_window_of_the_system_log_is_published_page_by_page(broker):
    """Three pages, the second rate-limited once and the third failing once
    with a 503: every event is published once, as the ingest endpoint would
    (Okta's free-form values as strings, a geolocation without coordinates
    as none, types outside the catalogue taken); an event the schema refuses
    is named by its uuid and the run exits 1. Every request carries the
    token, the window and the filter; nothing prints the token."""
    okta_events = [event("user.session.start") for _ in range(3)]
    odd = event("user.authentication.auth_via_mfa")
    odd["debugContext"] = {"debugData": {"risk": {"level": "LOW"}, "attempts": 2}}
    odd["client"] = {"geographicalContext": {"country": "X",
                                             "geolocation": {"lat": None, "lon": None}}}
    unknown = event("policy.evaluate_sign_on")  # not in hookbridge's catalogue
    refused = {"uuid": "refused-1", "displayMessage": "no eventType"}
    last = event("user.session.end")
    reset = str(int(time.time()) + 1)
    okta = FakeOkta({
        "": [(200, okta_events, {})],
        "p2": [(429, {"errorSummary": "API call exceeded rate limit"},
                {"X-Rate-Limit-Reset": reset}),
               (200, [odd, unknown, refused], {})],
        "p3": [(503, {"errorSummary": "Service unavailable"}, {}), (200, [last], {})],
        "p4": [(200, [], {})],
    })
    okta.pages[""][0][2].update(okta.next_link("p2"))
    okta.pages["p2"][1][2].update(okta.next_link("p3"))
    okta.pages["p3"][1][2].update(okta.next_link("p4"))
    try:
        r = run(broker.bootstrap, okta.url + "/", *WINDOW,
                "--filter", 'eventType sw "user."')
    finally:
        okta.stop()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "produced 6, failed 1" in r.stdout, r.stdout + r.stderr
    assert "event 6: uuid refused-1: eventType: missing" in r.stderr, r.stderr
    said = r.stdout  # the log (JSON lines) and the summary
    assert "rate limited (HTTP 429)" in said and "HTTP 503 (Service unavailable)" in said, said
    assert TOKEN not in r.stdout + r.stderr

    got = {e["uuid"]: e for e in (read_event(m.value) for m in
                                  topic_records(broker.bootstrap, "identity.events"))}
    want = okta_events + [odd, unknown, last]
    assert set(got) == {e["uuid"] for e in want}, "each event once"
    e = got[odd["uuid"]]
    assert e["debugContext"]["debugData"] == {"risk": '{"level":"LOW"}', "attempts": "2"}
    assert e["client"]["geographicalContext"]["geolocation"] is None

    paths = [(p, q.get("after"), h.get("Authorization")) for p, q, h in okta.requests]
    assert paths == [("/api/v1/logs", None, "SSWS " + TOKEN)] + \
        [("/api/v1/logs", a, "SSWS " + TOKEN) for a in ("p2", "p2", "p3", "p3", "p4")]
    first = okta.requests[0][1]
    assert (first["since"], first["until"], first["filter"], first["limit"]) == \
        ("2026-12-06T10:00:00Z", "2026-12-06T11:00:00Z", 'eventType sw "user."', "1000")


def test_a_wrong_token_or_a_next_page_elsewhere_stops_the_run_and_the_token_stays_home(broker):
    """A 401 stops at once with Okta's reason and what to check; a next link
    to another origin is not followed (the token would go there)."""
    elsewhere = FakeOkta({"": [(200, [event("user.session.start")], {})]})
    okta = FakeOkta({"": [(200, [event("user.session.start")], {})]})
    okta.pages[""][0][2].update(okta.next_link("p2", origin=elsewhere.url))
    try:
        r = run(broker.bootstrap, okta.url, *WINDOW, token="wrong-token-value")
        assert r.returncode == 1
        assert "Okta refused the API token (HTTP 401: Invalid token provided)" in r.stdout, \
            r.stdout
        assert "HOOKBRIDGE_OKTA_API_TOKEN" in r.stdout
        assert "wrong-token-value" not in r.stdout + r.stderr

        r = run(broker.bootstrap, okta.url, *WINDOW)
        assert r.returncode == 1
        assert "produced 1, failed 0" in r.stdout
        assert "the next page is on another origin" in r.stdout, r.stdout
        assert elsewhere.requests == [], "the token went to another origin"
    finally:
        okta.stop()
        elsewhere.stop()

    # Asked wrong: said before anything is read.
    for args, says in (((), "needs --since and --until"),
                       (WINDOW, None)):
        r = run(broker.bootstrap, "http://example.com", *args)
        assert r.returncode == 2
        assert "plain http only to loopback" in r.stderr or (says and says in r.stderr), r.stderr
    r = run(broker.bootstrap, "https://example.okta.com", *WINDOW, token="")
    assert r.returncode == 2 and "needs HOOKBRIDGE_OKTA_API_TOKEN" in r.stderr


def test_a_log_event_line_is_taken_as_the_ingest_endpoint_takes_it(broker):
    """The producer's input is Okta LogEvents, one per line: a line with
    Okta's free-form values (numbers, objects in debugData), a NUL in free
    text, or a geolocation without coordinates is published as the ingest
    endpoint publishes it. Before, the command line refused such a line
    (debugContext.debugData.attempts: expected a string), so an event saved
    from the System Log could not be published by hand."""
    from hbtest.stack import produce
    ev = event("user.session.start")
    ev["debugContext"] = {"debugData": {"attempts": 2, "risk": {"level": "LOW"}}}
    ev["displayMessage"] = "typed\u0000here"
    ev["client"] = {"geographicalContext": {"geolocation": {"lat": None, "lon": None}}}
    r = produce(broker.bootstrap, [ev])
    assert "produced 1, failed 0" in r.stdout.decode()
    [m] = topic_records(broker.bootstrap, "identity.events")
    got = read_event(m.value)
    assert got["debugContext"]["debugData"] == {"attempts": "2", "risk": '{"level":"LOW"}'}
    assert got["displayMessage"] == "typed\u0000here"
    assert got["client"]["geographicalContext"]["geolocation"] is None


def test_link_variants_are_followed_and_a_stop_says_where_to_go_on(broker):
    """RFC 8288 allows blanks around rel's '=', several relations in one
    value and a relative reference: all are followed (review 40: the window
    ended there, exit 0, silently short, or stopped on "another origin"). A page Okta refuses part-way stops the run and says
    the last event's published time, to run again --since it."""
    first, second = event("user.session.start"), event("user.session.end")
    first["published"], second["published"] = "2026-12-06T10:00:01.000Z", \
        "2026-12-06T10:00:02.000Z"
    okta = FakeOkta({
        "": [(200, [first], {})],
        "p2": [(200, [second], {})],
        "p3": [(400, {"errorSummary": "Invalid after"}, {})],
    })
    okta.pages[""][0][2]["Link"] = '</api/v1/logs?after=p2>; rel = "next"'  # relative too
    okta.pages["p2"][0][2]["Link"] = f'<{okta.url}/api/v1/logs?after=p3>; rel="self next"'
    try:
        r = run(broker.bootstrap, okta.url, *WINDOW)
    finally:
        okta.stop()
    assert [q.get("after") for _, q, _ in okta.requests] == [None, "p2", "p3"], r.stdout
    assert r.returncode == 1
    assert "produced 2, failed 0" in r.stdout
    assert "HTTP 400: Invalid after" in r.stdout
    assert "run again with --since 2026-12-06T10:00:02.000Z" in r.stdout, r.stdout

    # An org URL with a query or userinfo is refused before anything is sent.
    for url in (okta.url + "/?x=1", okta.url + "/#frag", "https://user:pw@example.okta.com"):
        r = run(broker.bootstrap, url, *WINDOW)
        assert r.returncode == 2, (url, r.stderr)
        assert "user:pw" not in r.stderr
