"""Review 78: hookbridge when the process runs out of a resource, as in a
production container: open files (RLIMIT_NOFILE) for the ingest endpoint
(hookbridge-producer --listen). Real parts on loopback: the producer and the
devbroker. The dispatcher's and retrier's start check is pinned in
test_review27_faults.py, the spool on a full disk in test_review42_faults.py.
"""
import contextlib
import os
import resource
import socket
import struct
import threading
import time
import uuid
from urllib.parse import urlparse

import pytest

from hbtest.ingest import Ingest, topic_messages
from hbtest.procs import BIN, SLOW, free_port, http_get, wait_until
from hbtest.stack import Dispatcher, Receiver, Retrier, produce
from hbtest.tcpproxy import TcpProxy
from test_delivery import event, sql
from test_ingest_spool import brokers_down, brokers_up
from test_review27_faults import start_error
from test_review42_faults import mounted_tmpfs


class Limited:
    """A ProcessGroup whose programs start under prlimit --nofile=SOFT:HARD."""

    def __init__(self, group, nofile):
        self.group, self.nofile = group, nofile

    def start(self, name, argv, env=None):
        return self.group.start(name, ["prlimit", f"--nofile={self.nofile}", "--", *argv], env)


class TooManyClients(TcpProxy):
    """A TcpProxy to PostgreSQL that, while `full` is set, answers each new
    connection as a server at max_connections does: FATAL 53300 "sorry, too
    many clients already" after the startup message (SSL refused first)."""

    def __init__(self, upstream_port):
        super().__init__(upstream_port)
        self.full = threading.Event()
        self.refused = []  # monotonic time of each connection refused

    def _accept(self, listener):
        while self.full.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._refuse, args=(client,), daemon=True).start()
        super()._accept(listener)

    def _refuse(self, client):
        fields = b"SFATAL\0VFATAL\0C53300\0Msorry, too many clients already\0\0"
        try:
            while True:
                n = struct.unpack("!I", client.recv(4))[0]
                code = struct.unpack("!I", client.recv(n - 4)[:4])[0]
                if code not in (80877103, 80877104):  # the SSL or GSS request: "N"
                    break
                client.sendall(b"N")
            self.refused.append(time.monotonic())
            client.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)
        except (OSError, struct.error):
            pass
        client.close()


def test_a_database_at_max_connections_is_named_retried_calmly_and_left_when_it_takes_them(
        db_url, broker, procs):
    """Pins what is right (no fix): PostgreSQL refusing new connections for
    too many clients (max_connections reached) is named in the services'
    log (`database unavailable, retrying in 2 s: database: sorry, too many
    clients already`), they try again every 2 s (not in a loop), answer
    /healthz and say not ready on /readyz meanwhile, and become ready
    once the server takes connections again."""
    url = urlparse(db_url)
    proxy = TooManyClients(url.port or 5432)
    proxy.full.set()
    proxy.start()
    try:
        proxied = db_url.replace(f"{url.hostname}:{url.port}", f"127.0.0.1:{proxy.port}")
        assert proxied != db_url
        services = [cls(procs, proxied, broker.bootstrap, extra_env={"HOOKBRIDGE_LOG_LEVEL": "info"})
                    for cls in (Dispatcher, Retrier)]
        t0 = time.monotonic()
        for svc in services:
            wait_until(lambda: "sorry, too many clients already" in svc.proc.output(), 10,
                       f"the {svc.program} to name the refusal")
        time.sleep(3)
        for svc in services:
            assert svc.get("/healthz")[0] == 200
            status, body = svc.get("/readyz")
            assert status == 503 and "database" in body, (status, body)
            assert "database unavailable, retrying in 2 s: database: sorry, too many clients " \
                   "already" in svc.proc.output()
        took = time.monotonic() - t0
        assert 2 <= len(proxy.refused) <= 2 * (took / 2 + 2), (len(proxy.refused), took)
        proxy.full.clear()
        proxy.cut()  # the next connection is forwarded (a new listener on the same port)
        proxy.start()
        for svc in services:
            svc.wait_ready(15)
    finally:
        proxy.close()


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def test_an_ingest_endpoint_below_its_open_files_needs_raises_the_limit_or_refuses_to_start(
        broker, procs):
    """hookbridge-producer --listen kept a soft open-files limit far below
    what HOOKBRIDGE_INGEST_MAX_CONNECTIONS needs, and said nothing. Under
    `prlimit --nofile=64:64` 120 connections at once (an Okta burst, a slow
    load balancer) took every descriptor: accept(2) failed with EMFILE and
    libmicrohttpd busy-waited on it ("Hit process or system resource limit
    at FIRST connection ... Will try busy waiting"), 96 % CPU, and /healthz
    and /readyz stopped answering (the liveness probe restarts the pod, the
    deliveries in hand with it). Now, as the dispatcher and retrier do, the
    soft limit is raised to the hard one at start (logged), and a hard limit
    below the need stops the start in one line naming the setting; under the
    raised limit the same burst leaves the health port answering, the
    process idle, and a delivery after it is produced."""
    env = {"HOOKBRIDGE_KAFKA_BROKERS": broker.bootstrap, "HOOKBRIDGE_INGEST_AUTH_VALUE": "x" * 24,
           "HOOKBRIDGE_HTTP_LISTEN": f"127.0.0.1:{free_port()}"}
    rc, out = start_error(["prlimit", "--nofile=64:64", "--", BIN / "hookbridge-producer",
                           "--listen", f"127.0.0.1:{free_port()}"], env)
    assert rc == 2 and out.startswith(
        "hookbridge-producer: HOOKBRIDGE_INGEST_MAX_CONNECTIONS (64) needs 336 open files, but "
        "this process may open 64 (ulimit -n, RLIMIT_NOFILE): lower it or raise the limit"), \
        (rc, out[-600:])
    assert len(out.strip().splitlines()) == 1, out

    ing = Ingest(Limited(procs, "64:4096"), broker.bootstrap)
    ing.wait_ready()
    assert "open files limit raised from 64 to the hard limit, 4096" in ing.proc.output()
    socks = []
    try:
        for _ in range(120):
            s = socket.create_connection(("127.0.0.1", ing.port), timeout=2 * SLOW)
            s.sendall(b"POST /okta/events HTTP/1.1\r\nHost: x\r\n")  # half a request
            socks.append(s)
        time.sleep(0.5)
        before, t0 = cpu_seconds(ing.proc.pid), time.monotonic()
        time.sleep(1.5)
        busy = (cpu_seconds(ing.proc.pid) - before) / (time.monotonic() - t0)
        assert http_get(ing.health_port, "/healthz")[0] == 200, ing.proc.output()[-2000:]
        assert busy < 0.5 * SLOW, f"{busy:.0%} CPU with 120 connections open"
    finally:
        for s in socks:
            s.close()
    ev = event("user.session.start", user="00u" + uuid.uuid4().hex[:10])
    wait_until(lambda: ing.post([ev])[0] == 200, 10, "a delivery after the burst produced")
    assert "Too many open files" not in ing.proc.output()


@pytest.fixture
def one_mib_fs(workdir):
    """A 1 MiB tmpfs (root only), unmounted after the test, also when it fails."""
    yield from mounted_tmpfs(workdir, "1m")


def test_a_full_spool_disk_acknowledges_only_what_it_wrote_and_spools_again_once_it_drains(
        broker, procs, one_mib_fs):
    """Pins what is right (no fix): with the brokers away and the spool's
    1 MiB disk filling, each delivery is answered 200 only once it is on
    the disk; the first that does not fit is answered 503 (Okta sends it
    again), the warn line names the disk error and the setting to look at,
    and nothing answered 503 is counted as spooled. Brokers back: every
    event answered 200 is on the topic, the disk drains, and the next
    delivery is spooled again with the brokers away."""
    spool = one_mib_fs / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env={
        "HOOKBRIDGE_INGEST_SPOOL_DIR": str(spool), "HOOKBRIDGE_INGEST_SPOOL_WAIT": "200ms",
        "HOOKBRIDGE_INGEST_TIMEOUT": "500ms", "HOOKBRIDGE_LOG_LEVEL": "info"})
    ing.wait_ready()
    brokers_down(broker)
    answered = {}
    for _ in range(20):  # about 120 KB a delivery: 8 fill the 1 MiB
        user = "00u" + uuid.uuid4().hex[:10]  # the message key on the topic
        ev = event("user.session.start", user=user)
        ev["displayMessage"] = "x" * 120000
        status, _, body = ing.post([ev])
        answered.setdefault(status, []).append(user)
        if status == 503:
            break
    assert sorted(answered) == [200, 503] and len(answered[200]) >= 4, answered
    out = ing.proc.output()
    assert "No space left on device" in out and \
        "this delivery waits for the brokers as without a spool" in out, out[-3000:]
    assert ing.metric("hookbridge_ingest_spool_answered_total") == len(answered[200])
    brokers_up(broker)
    wait_until(lambda: not [p for p in spool.iterdir() if p.name.endswith(".okta")] or None,
               30, "the spool drained")
    on_topic = {m.key.decode() for m in topic_messages(broker.bootstrap)}
    assert set(answered[200]) <= on_topic, set(answered[200]) - on_topic
    brokers_down(broker)
    ev = event("user.session.start", user="00u" + uuid.uuid4().hex[:10])
    status, _, body = ing.post([ev])
    assert status == 200 and "spooled" in body, (status, body)
    brokers_up(broker)


def test_a_dispatcher_out_of_open_files_makes_no_attempt_and_opens_no_circuit(
        db_url, broker, procs, workdir):
    """When the dispatcher's open files ran out while it ran (the limit
    fits the settings at start, but something else holds descriptors, or
    the limit is lowered under it), every delivery failed "could not
    connect: Failed to connect to 127.0.0.1 port N after 0 ms: Couldn't
    connect to server" (curl leaves the socket(2) errno out), counted as
    the endpoint's failure: 30 of them opened its circuit ("circuit open
    after 20 consecutive failures"), so a healthy endpoint got nothing for
    a minute for a fault that was the dispatcher's. Now a socket that cannot
    be opened is an attempt not made (no verdict on the endpoint, handed to
    the first delay tier), said at warn with the cause and the settings:
    "not sent: this process is out of open files (Too many open files;
    ulimit -n N): lower HOOKBRIDGE_MAX_CONNECTIONS or raise the limit".
    With descriptors back, every event is delivered."""
    rec = Receiver(procs, workdir)
    for i in range(3):
        sql(db_url, "SELECT hookbridge.register('r78', %s, ARRAY['user.session.start'], '{}')",
            rec.url + f"?s={i}")
    sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                "status = 'active'")
    d = services_at_info(db_url, broker, procs)
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(rec.posts()) >= 3, 10, "the first event's three deliveries")
    with out_of_files(d):
        evs = [event("user.session.start") for _ in range(10)]
        produce(broker.bootstrap, evs)
        wait_until(lambda: "out of open files" in d.proc.output(), 10,
                   "the dispatcher to say it is out of open files")
        time.sleep(0.5)
    out = d.proc.output()
    assert "circuit open" not in out, out[-3000:]
    assert '"level":"warn","component":"dispatcher","msg":"not sent: this process is out of ' \
           'open files (Too many open files; ulimit -n ' in out, out[-3000:]
    assert "lower HOOKBRIDGE_MAX_CONNECTIONS or raise the limit" in out
    delivered_after(d, rec, evs, 30)


def services_at_info(db_url, broker, procs):
    """A dispatcher and a retrier logging at info, both ready: the dispatcher."""
    quiet = {"HOOKBRIDGE_LOG_LEVEL": "info"}
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=quiet)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=quiet)
    d.wait_ready()
    r.wait_ready()
    return d


@contextlib.contextmanager
def out_of_files(svc):
    """While the block runs, every descriptor svc may open is open: its next
    socket fails (EMFILE). Its health port is left alone meanwhile (its
    accept(2) would wait for a descriptor, tried ten times a second:
    lib/hb_mhd.c). The limit is given back also when the block fails."""
    pid = svc.proc.pid
    old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")), old[1]))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, old)


def delivered_after(d, rec, evs, n):
    """n deliveries of evs arrive once the descriptors are back, and d is alive."""
    want = {e["uuid"] for e in evs}
    wait_until(lambda: sum(e["uuid"] in want for _, e in rec.events()) >= n, 30,
               f"the {n} deliveries after the descriptors came back")
    assert d.get("/healthz")[0] == 200
