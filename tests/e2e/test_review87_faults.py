"""Review 87: every service when it runs out of open files (RLIMIT_NOFILE
reached while it runs: thousands of endpoints, slow receivers, a flood of
ingest clients, something else holding descriptors). Real parts on
loopback: PostgreSQL, the devbroker, the dispatcher, the producer's ingest
endpoint, receivers. Out of files is made as review 78 makes it
(out_of_files: the soft limit lowered to the descriptors open). What was
found right is pinned in test_review78_faults.py and test_review79_faults.py
(deliveries) and said in the report of review 87."""
import socket
import time

from hbtest.ingest import Ingest
from hbtest.procs import SLOW, http_get
from hbtest.stack import Dispatcher, Receiver
from test_review78_faults import cpu_seconds, out_of_files


def busy_while(pid, seconds=1.5):
    """The share of a core pid used over the next `seconds`."""
    before, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - t0)


def waiting_request(port, request):
    """A connection to port with a whole request sent, not yet accepted."""
    s = socket.create_connection(("127.0.0.1", port), timeout=2 * SLOW)
    s.sendall(request)
    return s


def answer(s):
    """The status line of what s was answered (it waits up to 5 s)."""
    s.settimeout(5 * SLOW)
    try:
        return s.recv(4096).split(b"\r\n", 1)[0].decode()
    finally:
        s.close()


def test_out_of_open_files_a_waiting_connection_costs_no_cpu_and_is_answered_after(
        db_url, broker, procs, workdir):
    """libmicrohttpd meets accept(2) failing with EMFILE, no connection
    open, by trying again at once ("Hit process or system resource limit
    at FIRST connection ... Will try busy waiting"): while the process was
    out of open files, one request waiting made it spin at 81-101 % of a
    core (the core it needed to finish the work that gives descriptors
    back): the dispatcher for a /healthz probe, the ingest endpoint for an
    Okta delivery, the reference receiver for a delivery. Now each tries
    to accept ten times a second, the process idle (0-2 % measured), and
    the waiting request is answered once descriptors are back."""
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={"HOOKBRIDGE_LOG_LEVEL": "info"})
    ing = Ingest(procs, broker.bootstrap)
    rec = Receiver(procs, workdir)
    d.wait_ready()
    ing.wait_ready()
    spun, answered = {}, {}
    for name, svc, port, request in (
            ("dispatcher's health port", d, d.health_port,
             b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("ingest endpoint", ing, ing.port, b"GET /okta/events HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("receiver", rec, rec.port, b"GET /hook HTTP/1.1\r\nHost: x\r\n\r\n")):
        with out_of_files(svc):
            s = waiting_request(port, request)
            time.sleep(0.3)
            busy = busy_while(svc.proc.pid)
        spun[name] = f"{busy:.0%}"
        answered[name] = answer(s)
    assert not [n for n, b in spun.items() if float(b[:-1]) >= 25 * SLOW], \
        f"share of a core while out of open files: {spun}"
    assert all(a.startswith("HTTP/1.1 ") for a in answered.values()), answered
    out = d.proc.output()
    assert "httpd: Hit process or system resource limit at FIRST connection" in out, out[-2000:]
    assert d.get("/healthz")[0] == 200
    assert http_get(ing.health_port, "/healthz")[0] == 200
