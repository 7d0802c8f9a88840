"""Review 73: receivers as they behave in the wild (frameworks, proxies,
serverless gateways, broken code), each a raw-socket endpoint on its own
loopback port, one subscription each, one dispatcher: what the delivery log
says of each (docs/design.md, How an answer is classified).

Each check says what it did on faf072a (before this review's commits)."""
import socket
import threading
import time

from hbtest.lifecycle import wait_taken
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, produce
from test_delivery import event, sql
from test_review57_faults import subscribe

ETYPE = "user.session.start"


def read_head(conn):
    """Reads a request's head (up to the blank line); returns (head, rest)
    or (None, b"") at end of stream."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


def read_request(conn):
    """Reads one whole request; returns its head, or None at end of stream."""
    head, rest = read_head(conn)
    if head is None:
        return None
    n = 0
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            n = int(v)
    while len(rest) < n:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return head


def rst(conn):
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()


class Raw:
    """A loopback listener running behave(conn, raw) for each connection on
    its own thread; raw.heads are the request heads it read (behave appends),
    raw.conns counts connections."""

    def __init__(self, behave):
        self.behave, self.heads, self.conns = behave, [], 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            self.behave(conn, self)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def close(self):
        self.sock.close()


def answering(response, keep=True, after=None):
    """behave: reads each request whole, answers response (bytes); keep:
    serve the next request on the connection; after(conn): what follows."""
    def behave(conn, raw):
        while True:
            head = read_request(conn)
            if head is None:
                return
            raw.heads.append(head)
            conn.sendall(response)
            if after:
                after(conn)
                return
            if not keep:
                return
    return behave


def attempts(db_url, sub):
    return sql(db_url, "SELECT a.attempt, a.outcome, a.http_status, coalesce(a.error, ''), "
               "a.duration_ms FROM hookbridge.delivery_attempts a JOIN hookbridge.deliveries d "
               "USING (delivery_id) WHERE d.subscription_id = %s ORDER BY a.started_at", sub)


def subscribe_to(db_url, url, etype=ETYPE, timeout_ms=None):
    return subscribe(db_url, url, etype, {"timeout_ms": timeout_ms} if timeout_ms else None)


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def early(status):
    """behave: answers status as soon as the request's head is read (its body
    not read), then closes."""
    def behave(conn, raw):
        head, _ = read_head(conn)
        if head is None:
            return
        raw.heads.append(head)
        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status)
        time.sleep(0.2)
    return behave


def trickle(data, every):
    def behave(conn, raw):
        head = read_request(conn)
        raw.heads.append(head)
        for i in range(len(data)):
            conn.sendall(data[i:i + 1])
            time.sleep(every)
    return behave


def stream(first, chunk, total):
    def behave(conn, raw):
        head = read_request(conn)
        raw.heads.append(head)
        conn.sendall(first)
        sent = 0
        while sent < total:
            conn.sendall(chunk)
            sent += len(chunk)
    return behave


def silent_close(conn, raw=None):
    """after: the connection stays open (keep-alive, nothing said) until the
    next request arrives, then closes without answering it."""
    read_head(conn)
    rst(conn)


def start(procs, workdir, db_url):
    broker = Broker(procs, workdir, retry_schedule="1h")
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_RETRY_SCHEDULE": "1h", "HOOKBRIDGE_LOG_LEVEL": "info",
        "HOOKBRIDGE_CIRCUIT_FAILURES": "100"})
    d.wait_ready()
    return broker, d


def settle(db_url, subs, want):
    """Waits for want[k] attempts of each subscription k; returns them."""
    wait_until(lambda: all(len(attempts(db_url, subs[k])) >= want[k] for k in subs) or None,
               30 * SLOW, "every attempt's outcome")
    return {k: attempts(db_url, subs[k]) for k in subs}


H200 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_an_answer_cut_short_after_its_headers_says_which_answer_it_was(db_url, procs, workdir):
    """Receivers whose answer's status line and headers came whole and whose
    body did not: a Content-Length one longer than the body (a framework
    counting bytes before a middleware rewrote them), two Content-Lengths
    that disagree, a 200 with Content-Length 100 and 2 bytes then a reset.
    Each is retried (docs/design.md: an exchange cut short; the receiver
    de-duplicates by webhook-id), and now the delivery log says it was an
    answer: `timeout after 1000 ms, reading the body of an HTTP 200
    answer`. On faf072a it said `timeout after 1000 ms` and `connection
    error: Recv failure: Connection reset by peer`, no status: the operator
    told the endpoint's owner it was slow or down; its owner saw 200s sent
    within milliseconds.

    And a header line that never ends (over curl's 100 KiB) said `Out of
    memory: Out of memory`, which sent the operator to the dispatcher's
    memory (RSS unchanged); now `response headers over the limit`, as for
    too many headers. A WebSocket server at the URL answering 101 Switching
    Protocols and closing was `the endpoint closed the connection without a
    response (empty reply)`; now it names the 101."""
    cases = {
        "cl_longer": answering(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok"),
        "cl_twice": answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3"
                              b"\r\n\r\nok"),
        "reset_mid_body": answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok",
                                    after=rst),
        "endless_line": stream(b"HTTP/1.1 200 OK\r\nX-A: ", b"a" * 65536, 1 << 22),
        "upgrade": answering(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\n\r\n", keep=False),
    }
    raws = {k: Raw(v) for k, v in cases.items()}
    try:
        broker, d = start(procs, workdir, db_url)
        subs = {k: subscribe_to(db_url, raws[k].url, timeout_ms=1000) for k in cases}
        wait_taken(d, subs.values())
        produce(broker.bootstrap, [event(ETYPE)])
        got = settle(db_url, subs, dict.fromkeys(subs, 1))
        cut = "timeout after 1000 ms, reading the body of an HTTP 200 answer"
        assert [a[1:4] for a in got["cl_longer"]] == [("retry", None, cut)], got
        assert [a[1:4] for a in got["cl_twice"]] == [("retry", None, cut)], got
        assert [a[1:4] for a in got["reset_mid_body"]] == [(
            "retry", None, "connection error: Recv failure: Connection reset by peer, reading "
            "the body of an HTTP 200 answer")], got
        assert [a[1:4] for a in got["endless_line"]] == [(
            "retry", None, "response headers over the limit (100 headers, 32768 bytes): "
            "not read")], got
        assert [a[1:4] for a in got["upgrade"]] == [(
            "retry", None, "the endpoint closed the connection after an interim HTTP 101 answer, "
            "with no final one")], got
    finally:
        for r in raws.values():
            r.close()


def test_a_kept_connection_the_endpoint_drops_at_our_next_request_costs_no_attempt(
        db_url, procs, workdir):
    """An endpoint that answers with keep-alive and then drops the connection
    when our next request on it arrives, without answering it (its idle
    timeout meeting our reuse: Node's keepAliveTimeout, a load balancer's
    idle timeout), beside one that says `Connection: close` on every answer.

    On faf072a curl sent most such requests again on a fresh connection by
    itself, not all: of 400 deliveries 7 were logged as failed attempts,
    `connection error: Recv failure: Connection reset by peer`, waiting for
    the first delay tier (5 s by default) although the endpoint never saw
    them whole. Now each is sent once more on a fresh connection within its
    timeout: 400 delivered at the first attempt, each taken once."""
    cases = {
        "drops": answering(H200, after=silent_close),
        "close": answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                           keep=False),
    }
    raws = {k: Raw(v) for k, v in cases.items()}
    try:
        broker, d = start(procs, workdir, db_url)
        subs = {k: subscribe_to(db_url, raws[k].url, timeout_ms=3000) for k in cases}
        wait_taken(d, subs.values())
        t0 = time.monotonic()
        produce(broker.bootstrap, [event(ETYPE) for _ in range(400)])
        wait_until(lambda: all(sum(n for *_, n in sql(
            db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE subscription_id = %s",
            s)) >= 400 for s in subs.values()) or None, 30 * SLOW, "400 outcomes each")
        took = time.monotonic() - t0
        for k, s in subs.items():
            rows = sql(db_url, "SELECT status, attempts, coalesce(last_error, ''), count(*) "
                       "FROM hookbridge.deliveries WHERE subscription_id = %s GROUP BY 1, 2, 3", s)
            assert rows == [("delivered", 1, "", 400)], (k, rows)
            assert len(raws[k].heads) == 400, (k, len(raws[k].heads))  # each taken once
        # a connection per request: still well under a second's work here
        assert raws["close"].conns == 400 and took < 10 * SLOW, (raws["close"].conns, took)
    finally:
        for r in raws.values():
            r.close()


def test_what_receivers_in_the_wild_answer_is_classified_as_documented(db_url, procs, workdir):
    """Right on faf072a too, pinned (docs/design.md, How an answer is
    classified; docs/security.md, Response bodies and headers), one
    subscription each, one dispatcher, request timeout 2 s:

    delivered: an HTTP/1.0 200 ended by the close, a 200 without length
    ended by the close, a 200 then a reset (the answer was whole), 103 Early
    Hints before the 200, a 204 with a stray body (three in a row, its
    stray bytes never read as the next answer), a Content-Length given twice alike, Transfer-Encoding with
    a Content-Length (chunked wins), a status line without reason, a gzip
    body we never decode; a 100 KiB batch answered 200 before its body was
    read. Failed at once: a 302 (not followed), a 410 (as any 4xx: not
    deactivated), a status 600, a 401 before the body was read. Retried: a
    1 GiB body (given up at 16 MiB within a second, the dispatcher's memory
    not growing with it), a status line trickled a byte every 0.5 s (cut at
    the request timeout, not later), 101 Switching Protocols. Meanwhile a
    healthy endpoint's deliveries take milliseconds. No request carries
    `Expect:` (no 100-continue round trip)."""
    gz = (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcb\xcf\x06\x00G\xdd\xdc\x79\x02\x00\x00\x00")
    small = {
        "control": (answering(H200), "delivered"),
        "http10": (answering(b"HTTP/1.0 200 OK\r\n\r\nthanks", keep=False), "delivered"),
        "eof_body": (answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthanks",
                               keep=False), "delivered"),
        "ok_then_rst": (answering(H200, after=rst), "delivered"),
        "hints": (answering(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" + H200),
                  "delivered"),
        "204_body": (answering(b"HTTP/1.1 204 No Content\r\n\r\ngarbage"), "delivered"),
        "cl_twice": (answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2"
                               b"\r\n\r\nok"), "delivered"),
        "te_cl": (answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: "
                            b"chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"), "delivered"),
        "no_reason": (answering(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"), "delivered"),
        "gzip": (answering(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d"
                           b"\r\n\r\n" % len(gz) + gz), "delivered"),
        "redirect": (answering(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/x\r\n"
                               b"Content-Length: 0\r\n\r\n"), "failed"),
        "gone": (answering(b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n"), "failed"),
        "s600": (answering(b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n"), "failed"),
        "huge": (stream(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n", b"x" * 65536,
                        1 << 30), "retry"),
        "trickle": (trickle(H200, 0.5), "retry"),
        "upgrade": (answering(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\n\r\n", keep=False), "retry"),
    }
    big = {"early_200": (early(200), "delivered"), "early_401": (early(401), "failed")}
    raws = {k: Raw(v[0]) for k, v in {**small, **big}.items()}
    try:
        broker, d = start(procs, workdir, db_url)
        subs = {k: subscribe_to(db_url, raws[k].url, timeout_ms=2000) for k in small}
        subs.update({k: subscribe_to(db_url, raws[k].url, "user.account.lock", 2000)
                     for k in big})
        wait_taken(d, subs.values())
        rss0 = rss_kb(d.proc.pid)
        bigev = event("user.account.lock")
        bigev["displayMessage"] = "z" * 100000
        produce(broker.bootstrap, [event(ETYPE), bigev])
        time.sleep(0.3)
        produce(broker.bootstrap, [event(ETYPE)])
        time.sleep(0.3)
        produce(broker.bootstrap, [event(ETYPE)])
        got = settle(db_url, subs, {k: 3 if k in small else 1 for k in subs})
        want = {k: v[1] for k, v in {**small, **big}.items()}
        assert {k: sorted({a[1] for a in v}) for k, v in got.items()} == {
            k: [w] for k, w in want.items()}, got
        assert {a[3] for a in got["redirect"]} == {"redirect (HTTP 302) not followed"}
        assert {a[2:4] for a in got["gone"]} == {(410, "HTTP 410")}
        assert {a[2:4] for a in got["early_401"]} == {(401, "HTTP 401")}
        assert {a[3] for a in got["s600"]} == {"unexpected HTTP status 600"}
        assert {a[3] for a in got["huge"]} == {
            "response body over the limit (16777216 bytes): not read to its end"}
        assert max(a[4] for a in got["huge"]) < 1000 * SLOW, got["huge"]
        assert {a[3] for a in got["trickle"]} == {"timeout after 2000 ms"}
        assert all(2000 <= a[4] < 2300 * SLOW for a in got["trickle"]), got["trickle"]
        assert max(a[4] for a in got["control"]) < 500 * SLOW, got["control"]
        assert len(raws["204_body"].heads) == 3  # its stray bytes never read as an answer
        assert rss_kb(d.proc.pid) - rss0 < 60000, (rss0, rss_kb(d.proc.pid))
        heads = [h for r in raws.values() for h in r.heads]
        assert heads and not any("\r\nexpect:" in h.lower() for h in heads)
        sizes = [int(line.split(":")[1]) for h in raws["early_200"].heads
                 for line in h.split("\r\n") if line.lower().startswith("content-length:")]
        assert sizes and min(sizes) > 100000, sizes  # answered before a body that size was read
        assert sql(db_url, "SELECT status FROM hookbridge.subscriptions WHERE id = %s",
                   subs["gone"]) == [("active",)]
    finally:
        for r in raws.values():
            r.close()
