"""Memory per open HTTPS connection of the HTTP engine (issue 12).

A production dispatcher keeps a connection open to each of many customers'
HTTPS endpoints, so what one open connection costs is the memory that scales.
tests/bench/bench_tlsconn opens one connection to each of HOSTS loopback
addresses (127.79.0.1 ... here, served by a small TLS server in this test that
keeps idle connections open), sends a request on each twice (the second round
reuses them) and reports the heap in use (mallinfo2) per open socket.

With the system CA bundle (no HOOKBRIDGE_CA_FILE, as in production), curl built
with a CA directory besides its bundle (Debian's) parsed the whole bundle again
for every new connection and kept that copy while the connection was open:
~0.9 MB per connection, against ~40 KB for everything else. The system case
runs the engine in a mount namespace of its own whose /etc/ssl/certs is the
system bundle with the test CA added (root and unshare(1) needed, else
skipped; the machine's files are untouched). The bound, 200 KiB of heap per
connection, is five times what a connection costs now and a quarter of what
the bundle alone cost: a memory figure, not a timing, so a loaded machine does
not move it. Sanitizer builds replace malloc (mallinfo2 sees nothing): there
only the connections are checked.
"""
import asyncio
import re
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from hbtest.procs import BIN, REPO, free_port
from hbtest.tls import Pki

BUILD = REPO / ("build-san" if BIN.name == "bin-san" else "build")
TOOL = BUILD / "tests/bench/bench_tlsconn"
HOSTS = 50
MAX_HEAP_KIB_PER_CONNECTION = 200
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def addresses(n):
    """bench_tlsconn's hosts: scripts/bench_lib.sh's bench_loopback_addresses 127.79."""
    return [f"127.79.{i // 250}.{i % 250 + 1}" for i in range(n)]


class KeepAliveTlsServer:
    """One TLS listener per address on one port, in a thread of this process:
    every request is answered 200 "ok" and its connection is kept open until
    the client closes it."""

    def __init__(self, addrs, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.loop = asyncio.new_event_loop()
        self.servers = []
        self.port = None
        started = threading.Event()
        errors = []

        async def listen():
            for _ in range(5):  # another process may hold the port on one of the addresses
                port = free_port()
                try:
                    for a in addrs:
                        self.servers.append(await asyncio.start_server(
                            self._serve, a, port, ssl=self.ctx, backlog=len(addrs)))
                    self.port = port
                    return
                except OSError as e:
                    errors.append(e)
                    for s in self.servers:
                        s.close()
                    self.servers = []

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(listen())
            started.set()
            if self.port:
                self.loop.run_forever()
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(30)
        assert self.port, f"could not listen on {len(addrs)} loopback addresses: {errors}"

    async def _serve(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m and int(m.group(1)):
                    await reader.readexactly(int(m.group(1)))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ssl.SSLError, OSError):
            pass
        finally:
            writer.close()

    def stop(self):
        """Stops listening, ends the connections still open (their tasks are
        cancelled and awaited, so none is left pending when the loop closes),
        then the loop and its thread."""
        async def shutdown():
            for s in self.servers:
                s.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in self.servers:
                await s.wait_closed()
        if self.port:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def tls_hosts(workdir):
    pki = Pki(workdir)
    addrs = addresses(HOSTS)
    cert, key = pki.server(san=",".join(f"IP:{a}" for a in addrs))
    server = KeepAliveTlsServer(addrs, cert, key)
    yield pki, server
    server.stop()


def system_cas_with(pki, workdir):
    """A copy of /etc/ssl/certs for a mount namespace: the system bundle with
    the test CA appended, and the test CA in the hashed directory."""
    d = Path(workdir) / "etc-ssl-certs"
    d.mkdir()
    (d / SYSTEM_BUNDLE.name).write_bytes(SYSTEM_BUNDLE.read_bytes() + pki.ca.read_bytes())
    shutil.copy(pki.ca, d / "hookbridge-test-ca.pem")
    subprocess.run(["openssl", "rehash", str(d)], capture_output=True, timeout=60)
    return d


def unshare_works():
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30)
    return r.returncode == 0


def run_tool(argv, timeout=120):
    assert TOOL.exists(), f"{TOOL} is missing (run make)"
    r = subprocess.run(["bash", "-c", 'ulimit -n 4096 && exec "$@"', "bash", *map(str, argv)],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"bench_tlsconn failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def check(out):
    """Both rounds delivered to every host over HOSTS open connections, and the
    heap per connection is under the bound."""
    rounds = re.findall(r"^round (\d+): ok (\d+) failed (\d+).*?sockets (\d+);.*"
                        r"heap in use ([+-]\d+) KiB \(([\d.]+) KiB per socket\)", out, re.M)
    assert len(rounds) == 2, out
    for _, ok, failed, sockets, _, _ in rounds:
        assert (int(ok), int(failed)) == (HOSTS, 0), out
        assert int(sockets) == HOSTS, out  # one connection per host, reused in round 2
    if BIN.name == "bin-san":
        return
    heap_kib, per_connection = int(rounds[-1][4]), float(rounds[-1][5])
    assert heap_kib > 0, out  # mallinfo2 sees the heap
    assert per_connection < MAX_HEAP_KIB_PER_CONNECTION, out


def test_open_connections_with_a_ca_file_stay_small(tls_hosts):
    pki, server = tls_hosts
    check(run_tool([TOOL, "https", server.port, HOSTS, pki.ca]))


def test_open_connections_with_the_system_cas_share_one_parsed_bundle(tls_hosts, workdir):
    if not SYSTEM_BUNDLE.exists():
        pytest.skip(f"no {SYSTEM_BUNDLE}")
    if not unshare_works():
        pytest.skip("needs root and unshare(1) for a mount namespace")
    pki, server = tls_hosts
    certs = system_cas_with(pki, workdir)
    out = run_tool(["unshare", "-m", "sh", "-c",
                    'mount --bind "$1" /etc/ssl/certs && shift && exec "$@"', "sh", certs,
                    TOOL, "https", server.port, HOSTS, "-"])
    check(out)
