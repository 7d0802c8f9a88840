"""Review 78: hookbridge when the process runs out of a resource, as in a
production container: open files (RLIMIT_NOFILE) for the ingest endpoint
(hookbridge-producer --listen). Real parts on loopback: the producer and the
devbroker. The dispatcher's and retrier's start check is pinned in
test_review27_faults.py, the spool on a full disk in test_review42_faults.py.
"""
import os
import socket
import time
import uuid

from hbtest.ingest import Ingest
from hbtest.procs import BIN, SLOW, free_port, http_get, wait_until
from test_delivery import event
from test_review27_faults import start_error


class Limited:
    """A ProcessGroup whose programs start under prlimit --nofile=SOFT:HARD."""

    def __init__(self, group, nofile):
        self.group, self.nofile = group, nofile

    def start(self, name, argv, env=None):
        return self.group.start(name, ["prlimit", f"--nofile={self.nofile}", "--", *argv], env)


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
