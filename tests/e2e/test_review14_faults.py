"""Resource bounds under faults (review 14)."""
import http.server
import json
import re
import socket
import threading
import time

from hbtest.endpoints import ChallengeAnswering, posted_uuids
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from test_delivery import event, sql



def subscribe_many(db_url, urls, n):
    """n active, verified subscriptions to user.session.start, spread over urls."""
    sql(db_url, "SELECT hookbridge.register('many-' || i, (%s::text[])[1 + i %% %s], "
                "ARRAY['user.session.start'], '{}') FROM generate_series(1, %s) AS i",
        urls, len(urls), n)
    sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                "status = 'active' WHERE name LIKE 'many-%%'")


class Hung:
    """Listeners on n ports that accept every connection and never answer."""

    def __init__(self, n):
        self.socks, self.held, self.stop = [], [], False
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(1024)
            s.settimeout(0.2)
            self.socks.append(s)
            threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s):
        while not self.stop:
            try:
                c, _ = s.accept()
                self.held.append(c)
            except OSError:
                pass

    def close(self):
        self.stop = True
        for s in self.socks + self.held:
            s.close()


def serve_many(handler):
    """serve(), with a listen backlog for hundreds of connections at once."""
    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 1024
        daemon_threads = True

    srv = Server(("127.0.0.1", 0), handler)
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/hook"
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0



def test_large_payloads_held_for_hung_hosts_stay_within_the_memory_budget(db_url, broker, procs):
    """Four endpoint hosts that take requests and do not answer, 210
    subscriptions on them matching every event, 19 events of 50 KB: 3,990
    deliveries of about 50 KB, all held (in flight or waiting for their host;
    the wait and the request timeout are long here). The dispatcher stops
    taking events once its deliveries hold HOOKBRIDGE_MAX_PENDING_BYTES of
    payloads, says so on /readyz, and its peak RSS stays far below what the
    held deliveries would take (e5ce68b: about 400 MiB, every one held twice,
    whatever the budget). Once the hosts answer, every delivery arrives:
    nothing was dropped for the budget."""
    release = threading.Event()
    got = []

    class Holding(ChallengeAnswering):
        def do_POST(self):
            got.extend(posted_uuids(self))
            release.wait(120)
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    servers = [serve_many(Holding) for _ in range(4)]
    try:
        subscribe_many(db_url, [s.url for s in servers], 210)
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_LOG_LEVEL": "info", "HOOKBRIDGE_MAX_QUEUE_WAIT": "120s",
            "HOOKBRIDGE_REQUEST_TIMEOUT": "120s", "HOOKBRIDGE_MAX_PENDING_BYTES": "16777216"})
        d.wait_ready()
        evs = [dict(event("user.session.start"), displayMessage="x" * 50_000) for _ in range(19)]
        produce(broker.bootstrap, evs)
        # paused, or (e5ce68b) every delivery taken
        wait_until(lambda: "consumption paused" in d.get("/readyz")[1] or
                   d.metric("hookbridge_requests_in_flight") >= 3990 or None,
                   30 * SLOW, "consumption to pause")
        time.sleep(1)  # what a dispatcher that went on taking events would take meanwhile
        held = hwm_kib(d.proc.pid)
        assert held < 200 * 1024, f"peak RSS {held} KiB"
        why = d.get("/readyz")[1]
        assert "consumption paused" in why and "HOOKBRIDGE_MAX_PENDING_BYTES" in why, why
        assert 16 << 20 <= d.metric("hookbridge_pending_payload_bytes") < 64 << 20
        release.set()
        wait_until(lambda: len(got) >= 3990 or None, 60 * SLOW, "every delivery")
        wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries "
                                       "WHERE status = 'delivered'")[0][0] == 3990 or None,
                   30 * SLOW, "every delivery logged")
        assert len(set(got)) == 19 and len(got) == 3990
        assert "consumption paused" not in d.get("/readyz")[1]
    finally:
        release.set()
        for s in servers:
            s.shutdown()


def test_an_endpoint_failing_every_delivery_does_not_flood_the_log(db_url, broker, procs,
                                                                   workdir):
    """An endpoint answering 500 to everything, 1,500 events for it in a
    burst: its circuit opens after 20 failures, and every delivery is handed
    to the delay tier. At info, the log does not get one line per delivery
    (e5ce68b: 1,500 "attempt 1 failed" / "attempt 1 not made" lines): at most
    50 of each kind per 10 s, then one line that says how many were left out;
    the lines written and the ones counted as left out add up to every
    delivery, and the delivery log has each of them."""
    receiver = Receiver(procs, workdir, status=500, args=["--quiet"])
    subscribe_many(db_url, [receiver.url], 1)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={"HOOKBRIDGE_LOG_LEVEL": "info"})
    d.wait_ready()
    t0 = time.monotonic()
    produce(broker.bootstrap, [event("user.session.start") for _ in range(1500)])
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries "
                                   "WHERE status = 'retry'")[0][0] == 1500 or None,
               60 * SLOW, "every delivery logged as a retry")

    def lines():
        out = [json.loads(l) for l in d.proc.output().splitlines() if l.startswith("{")]
        per = [l for l in out if re.match(r"attempt 1 (failed|not made)", l["msg"])]
        left = [l for l in out if " line(s) not logged in the last " in l["msg"]]
        return per, left

    # the window's summary comes once it is over (10 s after its first line)
    wait_until(lambda: sum(int(l["msg"].split()[0]) for l in lines()[1]) + len(lines()[0]) >= 1500
               or None, max(0, 15 - (time.monotonic() - t0)) + 10 * SLOW, "the summary lines")
    per, left = lines()
    assert len(per) <= 4 * 50, len(per)
    assert sum(int(l["msg"].split()[0]) for l in left) + len(per) == 1500
    assert all(l["level"] == "info" for l in left), left
    assert any('"attempt N not made"' in l["msg"] for l in left), left
