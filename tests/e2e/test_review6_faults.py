"""Outbound HTTP delivery as a hostile or broken endpoint sees it, end to end
with a real dispatcher and hand-made endpoints: what it records, counts and
sends when an answer is cut short, plays with the header bounds, is not HTTP
at all or echoes the request; a long auth value; one host under two
spellings; a challenge that never got a connection (docs/security.md,
docs/design.md, docs/payloads.md, docs/sql.md, docs/operations.md).

Each check says which commit it holds; each was shown to fail on c959b5a."""
import json
import socket
import time

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.procs import wait_until
from hbtest.stack import Broker, Dispatcher, produce
from test_delivery import AUTH_VALUE, event, register_verified, sql

LONG_AUTH = "Bearer " + "t" * (4096 - len("Bearer "))  # docs/sql.md: 1..4096 characters


def deliveries(db_url, sub):
    """(status, attempts, last_http_status, last_error) of sub's deliveries."""
    return sql(db_url, "SELECT status, attempts, last_http_status, coalesce(last_error, '') "
               "FROM hookbridge.deliveries WHERE subscription_id = %s ORDER BY created_at", sub)


def settled(db_url, subs):
    """Each sub's one delivery once its first attempt is logged."""
    rows = {k: deliveries(db_url, s) for k, s in subs.items()}
    return rows if all(len(r) == 1 for r in rows.values()) else None


class Hostile(ChallengeAnswering):
    """Answers the challenge like any receiver; each POST as its path says:

    stall   "200" and headers promising 100 bytes, then nothing (times out)
    cut     "503" and headers promising 100 bytes, 3 of them, then a close
    h100    200 with exactly 100 header lines (Server, Date, 97, Content-Length)
    hstatus 200 with 150 headers, every 50th named like a status line
    nothttp what an SSH server says first (a URL with the wrong port)
    echo    200 with the request's headers as JSON (echo services do that)
    ecut    200 with 500 bytes of padding, then the auth value (cut at 512)
    auth    204, keeping the auth header it got (GET and POST) in `seen`
    """
    seen = []

    def do_GET(self):
        if self.path.endswith("auth"):
            self.seen.append(("GET", self.headers.get("Authorization")))
        super().do_GET()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        kind = self.path[len("/hook"):]
        if kind in ("stall", "cut"):
            self.send_response(200 if kind == "stall" else 503)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.flush()
            if kind == "stall":
                time.sleep(3)
            else:
                self.wfile.write(b"abc")
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif kind in ("h100", "hstatus"):
            self.send_response(200)  # and Server, Date
            if kind == "h100":
                for i in range(97):
                    self.send_header(f"X-Filler-{i}", "x")
            else:
                for i in range(148):
                    self.send_header("HTTP/1.1" if i % 50 == 0 else f"X-Filler-{i}", "x")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "nothttp":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.2p1\r\n")
            self.wfile.flush()
            self.close_connection = True
        elif kind in ("echo", "ecut"):
            if kind == "echo":
                body = json.dumps({"headers": dict(self.headers.items())}).encode()
            else:
                body = b"p" * 500 + self.headers["Authorization"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.seen.append(("POST", self.headers.get("Authorization")))
            self.answer()


def test_what_a_hostile_endpoint_s_answers_leave_in_the_log_and_the_metrics(db_url, procs,
                                                                           workdir):
    """One dispatcher, one event, a subscription per hostile endpoint.

    An answer cut short after its status line (5438910, 6eacd3d): the stalled
    "200" and the "503" cut mid-body are retried with their reason, are
    logged with no HTTP status (docs/payloads.md, timeout_ms: "recorded ...
    with no HTTP status"; docs/sql.md: "NULL status: no response") and count
    as `none` in hookbridge_responses_total (docs/operations.md: "`none`
    (timeout, connection error, ...)"), not as 2xx or 5xx. On c959b5a: logged
    with 200 and 503, counted as 2xx and 5xx.

    The header bound (2ec7f03; docs/security.md: "at most 100 headers and 32
    KiB per response; over either the transfer is aborted with `response
    headers over the limit` (retried)"): exactly 100 headers are delivered;
    150 are retried even when some are named like a status line. On c959b5a:
    the first retried, the second delivered.

    An answer that is not HTTP (42a2fdb) is retried with `not an HTTP
    response: ...`, not `protocol not allowed: ...`, which reads like the
    scheme refusal of HOOKBRIDGE_ALLOW_HTTP. On c959b5a: the latter.

    An endpoint echoing the request (6be9956; docs/security.md: auth values
    are stored in PostgreSQL only sealed, and never appear in logs): the
    response snippet in delivery_attempts has the auth value replaced by
    `[redacted]`, also where the snippet's bound cut it. On c959b5a: in
    plaintext.

    An auth value of the documented 4096 characters (eaca9e1; docs/sql.md:
    "the value 1..4096 characters") is verified and sent whole. On c959b5a:
    the challenge failed (`auth header is malformed or too long`)."""
    Hostile.seen = []
    srv = serve(Hostile)
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap,
                       extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1h"})
        d.wait_ready()
        kinds = ("stall", "cut", "h100", "hstatus", "nothttp", "echo", "ecut")
        subs = {kind: register_verified(db_url, srv.url + kind, ["user.session.start"],
                                        {"timeout_ms": 1000} if kind == "stall" else None)
                for kind in kinds}
        subs["auth"] = register_verified(db_url, srv.url + "auth", ["user.session.start"],
                                         {"auth_value": LONG_AUTH})
        produce(broker.bootstrap, [event("user.session.start")])
        rows = wait_until(lambda: settled(db_url, subs), 20, "every attempt's outcome")

        # cut short: retried, no status logged, class none
        assert rows["stall"] == [("retry", 1, None, "timeout after 1000 ms, reading the body of "
                                  "an HTTP 200 answer")], rows  # review 73: which answer
        assert rows["cut"][0][:3] == ("retry", 1, None), rows
        assert "transfer closed with 97 bytes remaining" in rows["cut"][0][3], rows
        status = sql(db_url, "SELECT http_status FROM hookbridge.delivery_attempts "
                     "WHERE subscription_id = ANY(%s::uuid[])", [subs["stall"], subs["cut"]])
        assert status == [(None,), (None,)], status
        # the header bound
        assert rows["h100"] == [("delivered", 1, 200, "")], rows
        assert rows["hstatus"][0][:3] == ("retry", 1, None), rows
        assert rows["hstatus"][0][3].startswith("response headers over the limit"), rows
        # not HTTP
        assert rows["nothttp"] == [("retry", 1, None, "not an HTTP response: Received "
                                    "HTTP/0.9 when not allowed")], rows
        # echoed auth value
        snip = dict(sql(db_url, "SELECT subscription_id::text, response_snippet FROM "
                        "hookbridge.delivery_attempts WHERE subscription_id = ANY(%s::uuid[])",
                        [subs["echo"], subs["ecut"]]))
        echo, ecut = snip[subs["echo"]], snip[subs["ecut"]]
        assert rows["echo"][0][0] == rows["ecut"][0][0] == "delivered", rows
        assert AUTH_VALUE not in echo and AUTH_VALUE[:8] not in echo, echo
        assert '"Authorization": "[redacted]"' in echo, echo
        assert ecut == "p" * 500 + "[redacted]", ecut
        # the long auth value
        assert rows["auth"] == [("delivered", 1, 204, "")], rows
        assert [m for m, _ in Hostile.seen] == ["GET", "POST"], Hostile.seen
        assert all(v == LONG_AUTH for _, v in Hostile.seen), "the auth value was cut"

        # the metrics: only complete answers have a class
        assert d.metric('hookbridge_responses_total{class="none"}') == 4  # stall cut hstatus nothttp
        assert d.metric('hookbridge_responses_total{class="2xx"}') == 4  # h100 echo ecut auth
        assert d.metric('hookbridge_responses_total{class="5xx"}') == 0
        assert d.metric('hookbridge_deliveries_total{outcome="retry"}') == 4
    finally:
        srv.shutdown()


class Holding(ChallengeAnswering):
    """Answers the challenge at once and each POST 204 after `hold` s."""
    hold = 1.0
    posts = 0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).posts += 1
        time.sleep(self.hold)
        self.answer()


def test_one_connection_per_host_a_host_s_two_spellings_and_a_challenge_left_waiting(
        db_url, procs, workdir):
    """One dispatcher allowed one connection per host, waiting at most 2 s for
    it (HOOKBRIDGE_MAX_HOST_CONNECTIONS=1, HOOKBRIDGE_MAX_QUEUE_WAIT=2s).

    One host, two spellings (1bc3197; docs/design.md: "at most
    HOOKBRIDGE_MAX_HOST_CONNECTIONS requests run to one host"): subscriptions
    to http://localhost:PORT/ and http://LOCALHOST:PORT/, whose endpoint
    holds each POST 1 s, with a 1.8 s timeout: the second request waits its
    turn and both are delivered. On c959b5a each spelling had slots of its
    own, while curl allowed one connection to the host whatever the case:
    the second request waited inside curl with its timeout running, and was
    logged `timeout after 1800 ms` without ever being sent.

    A challenge that never got a connection (docs/design.md, Verification
    challenge): verify() for a second subscription on a host whose one
    connection a 4 s POST holds gives up after the queue wait, unsent; it
    records nothing (the endpoint never saw it: review4's 0aa0180) and the
    dispatcher says why, `endpoint slow: ... (max_queue_wait)`. On c959b5a it
    was recorded failed with `HTTP 0`."""
    class Quick(Holding):
        hold = 1.0
        posts = 0

    class Busy(Holding):
        hold = 4
        posts = 0
    quick, busy = serve(Quick), serve(Busy)
    qport = quick.server_address[1]
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap,
                       extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1h",
                                  "HOOKBRIDGE_MAX_HOST_CONNECTIONS": "1",
                                  "HOOKBRIDGE_MAX_QUEUE_WAIT": "2s"})
        d.wait_ready()
        subs = {host: register_verified(db_url, f"http://{host}:{qport}/hook{host[0]}",
                                        ["user.session.start"], {"timeout_ms": 1800})
                for host in ("localhost", "LOCALHOST")}
        register_verified(db_url, busy.url + "a", ["user.session.start"])
        produce(broker.bootstrap, [event("user.session.start")])

        wait_until(lambda: Busy.posts == 1, 15, "the POST holding the busy host's connection")
        sub = sql(db_url, "SELECT hookbridge.register('e2e', %s, %s)", busy.url + "b",
                  ["user.session.start"])[0][0]
        sql(db_url, "SELECT hookbridge.verify(%s)", sub)

        rows = wait_until(lambda: settled(db_url, subs), 20, "both spellings' outcomes")
        assert rows == {host: [("delivered", 1, 204, "")] for host in subs}, rows

        line = wait_until(
            lambda: next((l for l in d.proc.output().splitlines()
                          if "verification challenge not sent: endpoint slow: " in l), None),
            15, "the challenge given up unsent")
        assert "127.0.0.1" in line and "(max_queue_wait)" in line, line
        assert sql(db_url, "SELECT verification, verification_error IS NULL, "
                   "verification_requested_at IS NOT NULL FROM hookbridge.subscriptions "
                   "WHERE id = %s", sub) == [("unverified", True, True)]
    finally:
        quick.shutdown()
        busy.shutdown()
