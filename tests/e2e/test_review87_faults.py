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
from hbtest.procs import SLOW, http_get, wait_until
from hbtest.stack import Dispatcher, Receiver
from test_delivery import sql
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


def verify_lane(sub):
    """The store's lane (hb_store.c: request()) of a claim for the id sub."""
    h = 0
    for ch in sub.encode():
        h = (h * 31 + ch) % 2**32
    return h % 4


def overview(db_url, sub):
    return sql(db_url, "SELECT verification, verification_error, verification_retrying "
                       "FROM hookbridge.subscription_overview WHERE id = %s", sub)[0]


def test_out_of_open_files_a_preview_and_a_challenge_name_the_dispatcher_not_the_endpoint(
        db_url, broker, procs, workdir):
    """A preview and a verification challenge the dispatcher could not
    send for want of open files were tried again each second, then (after
    12 x HOOKBRIDGE_MAX_QUEUE_WAIT) the preview was recorded failed, and
    the challenge's verification_retrying noted, as "not sent: its
    endpoint stayed busy through 3 s of tries: not sent: this process is
    out of open files ...": the user was sent to look at an endpoint that
    had been sent nothing. Now both say "not sent: the dispatcher stayed
    out of open files through 3 s of tries (the endpoint was not
    reached): this process is out of open files (Too many open files;
    ulimit -n N): lower HOOKBRIDGE_MAX_CONNECTIONS or raise the limit";
    asked again once descriptors are back, both reach the endpoint."""
    warm, rec = Receiver(procs, workdir, name="warm"), Receiver(procs, workdir)
    b = sql(db_url, "SELECT hookbridge.register('r87', %s, ARRAY['user.session.start'], '{}')",
            rec.url)[0][0]
    sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                "status = 'active' WHERE id = %s", b)
    d = Dispatcher(procs, db_url, broker.bootstrap,
                   extra_env={"HOOKBRIDGE_LOG_LEVEL": "info", "HOOKBRIDGE_MAX_QUEUE_WAIT": "250ms"})
    d.wait_ready()
    # Claims and outcomes go to four database lanes by the id's hash, each
    # connecting at its first request: all four are connected first, with
    # challenges to another receiver (the dispatcher keeps no connection
    # to rec's port), so that out of files only the endpoint's socket fails.
    warm_ids = {}
    while len(warm_ids) < 4:
        a = sql(db_url, "SELECT hookbridge.register('r87w', %s, ARRAY['user.session.start'], "
                        "'{}')", warm.url)[0][0]
        warm_ids.setdefault(verify_lane(a), a)
    for a in warm_ids.values():
        sql(db_url, "SELECT hookbridge.verify(%s)", a)
    wait_until(lambda: all(overview(db_url, a)[0] == "verified" for a in warm_ids.values()), 15,
               "the four lanes' challenges verified")
    with out_of_files(d):
        sql(db_url, "SELECT hookbridge.verify(%s)", b)
        # while it is tried again, its note says why once (it said "not sent
        # yet (tried again): not sent: this process ...")
        first = wait_until(lambda: overview(db_url, b)[2], 10 * SLOW, "the challenge's first note")
        assert first.startswith("not sent yet (tried again): this process is out of open "
                                "files (Too many open files; ulimit -n "), first
        pv = sql(db_url, "SELECT hookbridge.preview(%s, 'user.session.start')", b)[0][0]
        row = wait_until(lambda: (r := sql(db_url, "SELECT status, http_status, error FROM "
                                                   "hookbridge.previews WHERE id = %s", pv)[0])[0]
                         == "failed" and r, 20 * SLOW, "the preview to fail")
        retrying = wait_until(lambda: (r := overview(db_url, b)[2]) and "through" in r and r,
                              10 * SLOW, "the challenge's note after its tries")
    for text in (row[2], retrying):
        assert text.startswith("not sent: the dispatcher stayed out of open files through "), text
        assert "(the endpoint was not reached): this process is out of open files (Too many " \
               "open files; ulimit -n " in text, text
        assert "endpoint stayed busy" not in text, text
    assert row[1] is None, row
    # the endpoint was sent nothing (GET / is the harness's: is it up?)
    assert not [r for r in rec.requests() if r["path"] != "/"], rec.requests()
    # descriptors back: asked again, both reach the endpoint at once
    sql(db_url, "SELECT hookbridge.verify(%s)", b)
    pv = sql(db_url, "SELECT hookbridge.preview(%s, 'user.session.start')", b)[0][0]
    wait_until(lambda: overview(db_url, b) == ("verified", None, None) and sql(
        db_url, "SELECT status FROM hookbridge.previews WHERE id = %s", pv)[0][0] == "delivered",
        10, "the challenge verified and the preview delivered once descriptors are back")
    assert d.get("/healthz")[0] == 200
