"""Outbound HTTP delivery as a hostile or broken endpoint sees it: what the
dispatcher counts and decides when the endpoint's answer is incomplete or
its headers play with the bounds (docs/security.md, Redirects, bounds and
headers; docs/operations.md, Metrics; docs/design.md, How an answer is
classified)."""
import json
import socket
import time

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.procs import wait_until
from hbtest.stack import Broker, Dispatcher, produce
from test_delivery import AUTH_VALUE, event, register_verified, sql


def deliveries(db_url, sub):
    """(status, attempts, last_http_status, last_error) of sub's deliveries."""
    return sql(db_url, "SELECT status, attempts, last_http_status, coalesce(last_error, '') "
               "FROM hookbridge.deliveries WHERE subscription_id = %s ORDER BY created_at", sub)


def settled(db_url, subs):
    """Each sub's one delivery once its first attempt is logged."""
    rows = {k: deliveries(db_url, s) for k, s in subs.items()}
    return rows if all(len(r) == 1 for r in rows.values()) else None


# ------------------------------------------------ incomplete answers

class Incomplete(ChallengeAnswering):
    """Answers each POST with a status line and headers promising a body of
    100 bytes, then: /hookstall sends nothing more (the attempt times out),
    /hookcut sends 3 bytes and closes the connection."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200 if self.path.endswith("stall") else 503)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.flush()
        if self.path.endswith("stall"):
            time.sleep(3)
        else:
            self.wfile.write(b"abc")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


def test_an_answer_cut_short_is_counted_as_no_answer(db_url, procs, workdir):
    """docs/operations.md, Metrics: `hookbridge_responses_total{class}` counts
    attempts "by the HTTP status class of the answer: `2xx` ... `5xx`, or
    `none` (timeout, connection error, refused address)"; docs/design.md:
    a timeout or connection error is retried.

    What the operator sees: an endpoint that sends "200" and its headers but
    never the body it announced times out, and one that sends "503" and cuts
    the connection mid-body fails with a connection error; both are retried,
    and neither is an answer: they count as `none`, not as a 2xx (which a
    success-rate panel reads as delivered) or a 5xx, and the delivery log
    records them with no HTTP status (docs/payloads.md; docs/sql.md:
    "NULL status: no response").

    Checked to fail without the fixes: on c959b5a the attempts are logged
    with HTTP status 200 and 503, and (the log checks left out) class none
    stays 0: they were counted as 2xx and 5xx."""
    srv = serve(Incomplete)
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap,
                       extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1h"})
        d.wait_ready()
        subs = {kind: register_verified(db_url, srv.url + kind, ["user.session.start"],
                                        {"timeout_ms": 1000})
                for kind in ("stall", "cut")}
        produce(broker.bootstrap, [event("user.session.start")])
        rows = wait_until(lambda: settled(db_url, subs), 20, "both attempts' outcomes")
        # docs/payloads.md, timeout_ms: "the attempt is recorded ... with no
        # HTTP status and the error `timeout after <timeout_ms> ms`"
        assert rows["stall"] == [("retry", 1, None, "timeout after 1000 ms")], rows
        assert rows["cut"][0][:3] == ("retry", 1, None), rows
        assert "transfer closed with 97 bytes remaining" in rows["cut"][0][3], rows
        status = sql(db_url, "SELECT http_status FROM hookbridge.delivery_attempts "
                     "WHERE subscription_id = ANY(%s::uuid[])", list(subs.values()))
        assert status == [(None,), (None,)], status
        assert d.metric('hookbridge_deliveries_total{outcome="retry"}') == 2
        assert d.metric('hookbridge_responses_total{class="none"}') == 2
        assert d.metric('hookbridge_responses_total{class="2xx"}') == 0
        assert d.metric('hookbridge_responses_total{class="5xx"}') == 0
    finally:
        srv.shutdown()


# ------------------------------------------------ response header bounds

class HeaderCounting(ChallengeAnswering):
    """Answers each POST 200: to /hook100 with exactly 100 header lines
    (Server and Date from http.server, 97 fillers, Content-Length), to
    /hookstatus with 150 headers of which every 50th is named like a status
    line ("HTTP/1.1: x")."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)  # and Server, Date
        if self.path.endswith("100"):
            for i in range(97):
                self.send_header(f"X-Filler-{i}", "x")
        else:
            for i in range(148):
                self.send_header("HTTP/1.1" if i % 50 == 0 else f"X-Filler-{i}", "x")
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_the_response_header_bound_is_100_headers_and_no_line_resets_it(db_url, procs,
                                                                        workdir):
    """docs/security.md, Redirects, bounds and headers: "Response headers: at
    most 100 headers and 32 KiB per response; over either the transfer is
    aborted with `response headers over the limit` (retried)".

    What the receiver sees: its 200 with exactly 100 headers acknowledges the
    delivery (the bound is at most 100, and the blank line ending the headers
    is no header); its 200 with 150 headers is retried even when some of them
    are named like a status line ("HTTP/1.1: x"), which used to count as the
    start of a new response and reset the count.

    Checked to fail without the fix: on c959b5a the 100-header answer is
    retried with `response headers over the limit`, and the 150-header one
    is logged delivered."""
    srv = serve(HeaderCounting)
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap,
                       extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1h"})
        d.wait_ready()
        subs = {kind: register_verified(db_url, srv.url + kind, ["user.session.start"])
                for kind in ("100", "status")}
        produce(broker.bootstrap, [event("user.session.start")])
        rows = wait_until(lambda: settled(db_url, subs), 20, "both attempts' outcomes")
        assert rows["100"] == [("delivered", 1, 200, "")], rows
        assert rows["status"][0][:2] == ("retry", 1), rows
        assert rows["status"][0][3].startswith("response headers over the limit"), rows
    finally:
        srv.shutdown()


# ------------------------------------------------ an answer that is not HTTP

class NotHttp(ChallengeAnswering):
    """Answers the challenge like any receiver, and each POST with what an
    SSH server says first, as a URL with the wrong port gets."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.wfile.write(b"SSH-2.0-OpenSSH_9.2p1\r\n")
        self.wfile.flush()
        self.close_connection = True


def test_an_answer_that_is_not_http_is_said_so_not_called_a_refused_protocol(db_url, procs,
                                                                            workdir):
    """docs/design.md, How an answer is classified: a connection error is
    retried, while an "address or scheme refused by policy" fails finally;
    docs/security.md: the reason tells the operator what happened.

    What the operator sees: a URL whose port answers something else than
    HTTP is retried with the reason `not an HTTP response: ...`, not with
    `protocol not allowed: ...`, which reads like the scheme refusal of
    HOOKBRIDGE_ALLOW_HTTP (a final failure with a setting to change).

    Checked to fail without the fix: on c959b5a the reason is `protocol not
    allowed: Received HTTP/0.9 when not allowed`."""
    srv = serve(NotHttp)
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap,
                       extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1h"})
        d.wait_ready()
        sub = register_verified(db_url, srv.url, ["user.session.start"])
        produce(broker.bootstrap, [event("user.session.start")])
        rows = wait_until(lambda: settled(db_url, {"": sub}), 20, "the attempt's outcome")
        assert rows[""] == [("retry", 1, None, "not an HTTP response: Received HTTP/0.9 "
                             "when not allowed")], rows
    finally:
        srv.shutdown()


# ------------------------------------------------ one host, two spellings

class Holding(ChallengeAnswering):
    """Answers each POST 200 after holding it 0.6 s."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(0.6)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_host_spelled_in_another_case_shares_its_connection_slots(db_url, procs, workdir):
    """docs/design.md: "at most `HOOKBRIDGE_MAX_HOST_CONNECTIONS` (16) requests
    run to one host, out of `HOOKBRIDGE_MAX_IN_FLIGHT` (512) in all; ... none
    [wait] longer than `HOOKBRIDGE_MAX_QUEUE_WAIT`"; a timeout is an attempt
    that failed.

    What the receiver sees: two subscriptions to one host, one registered as
    http://localhost:PORT/hooka and one as http://LOCALHOST:PORT/hookb, with
    one connection allowed per host: the second request waits its turn and
    both are delivered. Host names are case insensitive, and curl allowed
    one connection to the host whatever the spelling, so each spelling
    getting slots of its own put the second request into curl's own wait,
    with its 1 s timeout running: it timed out without ever being sent, and
    the attempt counted as the endpoint's failure.

    Checked to fail without the fix: on c959b5a the second delivery is
    logged `retry` with `timeout after 1000 ms`."""
    srv = serve(Holding)
    port = srv.server_address[1]
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap,
                       extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1h",
                                  "HOOKBRIDGE_MAX_HOST_CONNECTIONS": "1"})
        d.wait_ready()
        subs = {host: register_verified(db_url, f"http://{host}:{port}/hook{host[0]}",
                                        ["user.session.start"], {"timeout_ms": 1000})
                for host in ("localhost", "LOCALHOST")}
        produce(broker.bootstrap, [event("user.session.start")])
        rows = wait_until(lambda: settled(db_url, subs), 20, "both attempts' outcomes")
        assert rows == {host: [("delivered", 1, 200, "")] for host in subs}, rows
    finally:
        srv.shutdown()


# ------------------------------------------------ the longest auth value

LONG_AUTH = "Bearer " + "t" * (4096 - len("Bearer "))  # docs/sql.md: 1..4096 characters


class AuthRecording(ChallengeAnswering):
    """Answers like a receiver and keeps the auth header of each request."""
    seen = []

    def do_GET(self):
        self.seen.append(("GET", self.headers.get("Authorization")))
        super().do_GET()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append(("POST", self.headers.get("Authorization")))
        self.send_response(204)
        self.end_headers()


def test_an_auth_value_of_the_documented_4096_characters_is_sent(db_url, procs, workdir):
    """docs/sql.md, options: "auth_header, auth_value | a header sent with
    every request and with the challenge ... the value 1..4096 characters
    without control characters".

    What the receiver sees: a subscription whose auth value is 4096
    characters long, which register() accepts, is verified and gets its
    delivery, with the whole value in its auth header. Before, the header
    line was built in a 4096-byte buffer, too small for the name, ": " and
    the value: the challenge failed with `auth header is malformed or too
    long` and the subscription could never be activated.

    Checked to fail without the fix: on c959b5a the verification is recorded
    `failed` (register_verified's assertion)."""
    AuthRecording.seen = []
    srv = serve(AuthRecording)
    try:
        broker = Broker(procs, workdir)
        d = Dispatcher(procs, db_url, broker.bootstrap)
        d.wait_ready()
        sub = register_verified(db_url, srv.url, ["user.session.start"],
                                {"auth_value": LONG_AUTH})
        produce(broker.bootstrap, [event("user.session.start")])
        rows = wait_until(lambda: settled(db_url, {"": sub}), 20, "the delivery's outcome")
        assert rows[""] == [("delivered", 1, 204, "")], rows
        assert [m for m, _ in AuthRecording.seen] == ["GET", "POST"], AuthRecording.seen
        assert all(v == LONG_AUTH for _, v in AuthRecording.seen), "the auth value was cut"
    finally:
        srv.shutdown()


# ------------------------------------------------ an endpoint echoing the request

class Echoing(ChallengeAnswering):
    """Answers each POST 200 with what echo services answer: the request's
    headers, auth header included (/hookecho); or with 500 bytes of padding
    and then the auth value, which the 512-byte snippet cuts (/hookcut)."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.endswith("echo"):
            body = json.dumps({"headers": dict(self.headers.items())}).encode()
        else:
            body = b"p" * 500 + self.headers["Authorization"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_an_endpoint_echoing_the_auth_header_does_not_put_it_in_the_delivery_log(db_url, procs,
                                                                                workdir):
    """docs/security.md, Secrets at rest: "Signing secrets and auth header
    values are stored in PostgreSQL only sealed"; Secrets in logs: "Auth
    header values ... never appear in logs, error texts".

    What the operator sees: the response snippet of an endpoint that echoes
    the request (echo services and test endpoints do) is kept in the
    delivery log with the auth value replaced by `[redacted]`, also where the
    snippet's bound cut the value; before, the value stood there in
    plaintext, in the table, its WAL and its backups.

    Checked to fail without the fix: on c959b5a the snippets hold the auth
    value (and its first 12 characters)."""
    srv = serve(Echoing)
    try:
        broker = Broker(procs, workdir)
        d = Dispatcher(procs, db_url, broker.bootstrap)
        d.wait_ready()
        subs = {kind: register_verified(db_url, srv.url + kind, ["user.session.start"])
                for kind in ("echo", "cut")}
        produce(broker.bootstrap, [event("user.session.start")])
        rows = wait_until(lambda: settled(db_url, subs), 20, "both deliveries")
        assert all(r[0][0] == "delivered" for r in rows.values()), rows
        snip = dict(sql(db_url, "SELECT subscription_id::text, response_snippet FROM "
                        "hookbridge.delivery_attempts WHERE subscription_id = ANY(%s::uuid[])",
                        list(subs.values())))
        echo, cut = snip[subs["echo"]], snip[subs["cut"]]
        assert AUTH_VALUE not in echo and AUTH_VALUE[:8] not in echo, echo
        assert '"Authorization": "[redacted]"' in echo, echo
        assert cut == "p" * 500 + "[redacted]", cut
    finally:
        srv.shutdown()


# ------------------------------------------------ a challenge that was never sent

class BusyHost(ChallengeAnswering):
    """Answers the challenge at once and holds each POST 4 s."""
    posts = 0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).posts += 1
        time.sleep(4)
        self.send_response(204)
        self.end_headers()


def test_a_challenge_that_could_not_be_sent_says_why_not_http_0(db_url, procs, workdir):
    """docs/design.md, Verification challenge: anything but the echo "records
    `failed` with the reason (`HTTP 404`, `wrong echo`, `response is not
    JSON`, a timeout or connection error)"; docs/operations.md, A slow
    endpoint: a request waits at most HOOKBRIDGE_MAX_QUEUE_WAIT for a
    connection to its host.

    What the operator sees: a challenge to a host whose one connection is
    busy waits its turn, gives up after HOOKBRIDGE_MAX_QUEUE_WAIT without
    being sent, and verification_error says so (`endpoint slow: waited ...
    for a connection to 127.0.0.1 (max_queue_wait)`), not `HTTP 0`, a status
    no endpoint answered.

    Checked to fail without the fix: on c959b5a verification_error is
    `HTTP 0`."""
    BusyHost.posts = 0
    srv = serve(BusyHost)
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap,
                       extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1h",
                                  "HOOKBRIDGE_MAX_HOST_CONNECTIONS": "1",
                                  "HOOKBRIDGE_MAX_QUEUE_WAIT": "1s"})
        d.wait_ready()
        register_verified(db_url, srv.url + "a", ["user.session.start"])
        produce(broker.bootstrap, [event("user.session.start")])
        wait_until(lambda: BusyHost.posts == 1, 15, "the POST holding the host's connection")
        sub = sql(db_url, "SELECT hookbridge.register('e2e', %s, %s)", srv.url + "b",
                  ["user.session.start"])[0][0]
        sql(db_url, "SELECT hookbridge.verify(%s)", sub)
        state = wait_until(
            lambda: (r := sql(db_url, "SELECT verification, verification_error FROM "
                              "hookbridge.subscriptions WHERE id = %s", sub)[0])[0]
            not in ("unverified", "pending") and r, 15, "the challenge's outcome")
        assert state[0] == "failed", state
        assert state[1].startswith("endpoint slow: "), state
        assert "127.0.0.1" in state[1] and state[1].endswith("(max_queue_wait)"), state
    finally:
        srv.shutdown()
