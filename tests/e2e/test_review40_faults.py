"""Review 40: hookbridge-producer --okta-logs (cdf6847, c219e66) against a
stand-in Okta on loopback that misbehaves: a request it never answers, and a
next link that names the page just read. The producer and the devbroker are
the real ones. Each check says what it did on c219e66."""
import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import topic_records
from test_delivery import event
from test_okta_logs import TOKEN, WINDOW, send_json


class Okta:
    """GET anything: answer(handler) -> (status, events, headers), or None
    to answer nothing until released (stop())."""

    def __init__(self, answer):
        self.requests = []
        self.release = threading.Event()
        okta = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                okta.requests.append(self.path)
                got = answer(self)
                if got is None:
                    okta.release.wait()
                    return
                send_json(self, *got)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def start(bootstrap, url):
    env = dict(os.environ, HOOKBRIDGE_KAFKA_BROKERS=bootstrap,
               HOOKBRIDGE_EVENTS_TOPIC="identity.events", HOOKBRIDGE_OKTA_API_TOKEN=TOKEN)
    return subprocess.Popen([str(BIN / "hookbridge-producer"), "--okta-logs", url, *WINDOW],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, out, err
    return proc.returncode, out, err


def test_sigterm_while_okta_does_not_answer_stops_the_run_at_once(broker):
    """SIGTERM (a Ctrl-C, a systemd stop) while Okta has accepted the request
    and not answered stops the run within seconds, the summary printed. On
    c219e66 the transfer ran on to its 300 s timeout (measured: 298 s after
    SIGTERM), the signal unseen by curl (CURLOPT_NOSIGNAL, no progress
    callback): a systemd stop ended in SIGKILL, without the summary."""
    okta = Okta(lambda h: None)
    proc = start(broker.bootstrap, okta.url)
    try:
        wait_until(lambda: okta.requests, 30, "the first request")
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc, out, err = finish(proc, 15 * SLOW)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        okta.stop()
    assert rc is not None, f"still running {took:.0f} s after SIGTERM: {out}{err}"
    assert rc == 1, out + err
    assert "produced 0, failed 0" in out, out + err
    assert TOKEN not in out + err


def test_a_next_link_to_the_page_just_read_publishes_it_once(broker):
    """A page whose Link rel="next" is the URL just read (a proxy or cache
    in front of Okta, a polling-style answer) is not read again: its events
    are published once. On c219e66 the same page was read and published
    again for as long as it was served (here 20 times: produced 20, exit 0,
    each event 20 times on the topic); nothing bounded it."""
    ev = event("user.session.start")
    served = []

    def answer(h):
        served.append(h.path)
        if len(served) > 20:  # bounds the test on c219e66
            return 200, [], {}
        return 200, [ev], {"Link": f'<{okta.url}{h.path}>; rel="next"'}

    okta = Okta(answer)
    proc = start(broker.bootstrap, okta.url)
    try:
        rc, out, err = finish(proc, 60 * SLOW)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        okta.stop()
    assert rc is not None, out + err
    assert len(okta.requests) <= 2, f"{len(okta.requests)} requests for one page: {out}"
    assert "produced 1, failed 0" in out, out + err
    uuids = [m.key for m in topic_records(broker.bootstrap, "identity.events")]
    assert len(uuids) == 1, f"{len(uuids)} copies of one event"


def test_print_writes_only_the_events_to_stdout():
    """`--okta-logs ... --print` (docs/ingest.md: "--print shows the events
    instead of publishing them") writes the window's events to stdout, one
    per line, so that `> saved.jsonl` then `hookbridge-producer saved.jsonl`
    publishes them. On c219e66 the run's log lines (JSON, "level":"info":
    reading ..., page 1: ...) went to stdout among the events: the saved
    file had 2 lines more than events, and publishing it said
    "line 1: eventType: missing", "line 2: ...", exit 1."""
    evs = [event("user.session.start") for _ in range(3)]
    okta = Okta(lambda h: (200, evs, {}))
    env = dict(os.environ, HOOKBRIDGE_OKTA_API_TOKEN=TOKEN)
    try:
        r = subprocess.run([str(BIN / "hookbridge-producer"), "--okta-logs", okta.url,
                            *WINDOW, "--print"], env=env, capture_output=True, text=True,
                           timeout=60 * SLOW)
    finally:
        okta.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "printed 3, failed 0" in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert [json.loads(line).get("uuid") for line in lines] == [e["uuid"] for e in evs], \
        r.stdout


def test_an_org_url_with_userinfo_is_refused_before_the_token_goes_anywhere():
    """"plain http only to loopback" holds for the host the request goes
    to: http://127.0.0.1:1@HOST/ is HOST with user "127.0.0.1" and
    password "1" (RFC 3986), so an ORG_URL with userinfo is refused (Okta
    uses none; a password in it would be logged as given). On c219e66 the
    check read the text before the @: the token went in clear text to
    HOST (shown with 192.0.2.2, this machine's non-loopback address, as
    with 127.0.0.2 here), exit 0."""
    class Catch(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            got.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

    got = []
    srv = ThreadingHTTPServer(("127.0.0.2", 0), Catch)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    env = dict(os.environ, HOOKBRIDGE_OKTA_API_TOKEN=TOKEN)
    try:
        r = subprocess.run([str(BIN / "hookbridge-producer"), "--okta-logs",
                            f"http://127.0.0.1:1@127.0.0.2:{srv.server_address[1]}", *WINDOW,
                            "--print"], env=env, capture_output=True, text=True,
                           timeout=60 * SLOW)
    finally:
        srv.shutdown()
        srv.server_close()
    assert got == [], f"the token went to 127.0.0.2: {got}"
    assert r.returncode == 2, r.stdout + r.stderr
