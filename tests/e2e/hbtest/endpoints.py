"""Hand-made endpoints for behaviour the example receiver does not have
(dropping the connection, answering late): a Python HTTP server that answers
the verification challenge like any receiver, and whatever a test wants to
POSTs."""
import http.server
import json
import socket
import threading


class ChallengeAnswering(http.server.BaseHTTPRequestHandler):
    """Answers GET with the echo of X-Okta-Verification-Challenge; subclasses
    define do_POST."""

    def do_GET(self):
        v = self.headers.get("X-Okta-Verification-Challenge", "")
        body = json.dumps({"verification": v}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def answer(self, status=204):
        """Acknowledges the request with status and no body."""
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def posted_uuids(handler):
    """The uuids of the events in the POST a hand-made endpoint is reading
    (any payload format: an Okta event-hook envelope, a list, one event)."""
    body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
    evs = body["data"]["events"] if isinstance(body, dict) and "events" in body.get(
        "data", {}) else (body if isinstance(body, list) else [body])
    return [e["uuid"] for e in evs]


def serve(handler):
    """Starts a threaded server for handler on a free loopback port; returns it
    (its url attribute is http://127.0.0.1:PORT/hook). Call .shutdown()."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/hook"
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def hung_listeners(n, backlog=128):
    """n loopback sockets that listen and never accept: connections complete
    in the kernel, and nothing ever answers. The caller closes them."""
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(backlog)
        out.append(s)
    return out
