"""A loopback TCP proxy a test can cut and restore, to take a dependency
(PostgreSQL) away from a running program and give it back, without touching
the dependency itself.

    proxy = TcpProxy(upstream_port)     # not listening yet: connections are refused
    proxy.start()                       # forwards 127.0.0.1:proxy.port -> upstream
    proxy.cut()                         # stops listening and resets every connection
    proxy.start()                       # same port again
    proxy.pause()                       # connections stay open, nothing is forwarded
    proxy.resume()                      # (a server that accepts but does not answer)
    proxy.delay = 0.05                  # each chunk forwarded 50 ms late (a far server)
    proxy.close()
"""
import socket
import struct
import threading
import time

from .procs import free_port



def reset(sock):
    """Closes sock with an RST (SO_LINGER 0), as a peer that drops it does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()

class TcpProxy:
    def __init__(self, upstream_port, upstream_host="127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns = []
        self._listener = None
        self._thread = None
        self._flowing = threading.Event()
        self._flowing.set()
        self.delay = 0.0  # seconds each chunk is held before it is forwarded
        self.accepted = []  # when it accepted each connection (monotonic s)
        self.ports = set()  # the local ports of its connections to the upstream

    def start(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        self._thread = threading.Thread(target=self._accept, args=(s,), daemon=True)
        self._thread.start()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            try:
                up = socket.create_connection(self.upstream, timeout=5)
                up.settimeout(None)
            except OSError:
                client.close()
                continue
            self.ports.add(up.getsockname()[1])
            with self._lock:
                self._conns += [client, up]
            for a, b in ((client, up), (up, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # paused: held, and nothing more is read
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def pause(self):
        """Keep every connection (and accept new ones) but forward nothing,
        as a stopped server would: nothing fails, nothing answers."""
        self._flowing.clear()

    def resume(self):
        self._flowing.set()

    def cut(self):
        """Refuse new connections and reset the open ones (as a dead host would)."""
        if self._listener:
            # shutdown() first: close() alone leaves the socket listening while
            # the accept thread is blocked in accept() on it (it holds the
            # socket), so new connections were still accepted and forwarded.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            reset(c)

    def close(self):
        self.resume()
        self.cut()


class SilencingProxy(TcpProxy):
    """A TcpProxy whose connections open at `silence()` go silent as over a
    network partition, or to a failed-over primary's old address: nothing
    is forwarded either way, nothing is closed or reset by the far side,
    while new connections are forwarded as usual (the database back, or at
    its new address). What the client's kernel does is played here: data it
    sends on a silent connection is never acknowledged, so the connection is
    reset `user_timeout` seconds after the first such bytes (hb_pg_connect's
    tcp_user_timeout, 15 s); a connection that sends nothing is left open
    (its keepalives, 30 s idle then probes, are not played: on a real
    network they end it after 40 s or more)."""

    def __init__(self, upstream_port, user_timeout=15.0):
        super().__init__(upstream_port)
        self.user_timeout = user_timeout
        self._silent = set()
        self._reset_at = {}
        self.resets = []  # (monotonic time, socket) of each reset played

    def silence(self):
        with self._lock:
            for i in range(0, len(self._conns), 2):
                self._silent.add(self._conns[i])
                self._silent.add(self._conns[i + 1])

    def _silenced(self, src, dst):
        with self._lock:
            return src in self._silent or dst in self._silent

    def _reset_later(self, client):
        with self._lock:
            if client in self._reset_at:
                return
            self._reset_at[client] = time.monotonic() + self.user_timeout

        def reset_later():
            time.sleep(self.user_timeout)
            self.resets.append((time.monotonic(), client))
            reset(client)

        threading.Thread(target=reset_later, daemon=True).start()

    def _pump(self, src, dst):
        with self._lock:
            from_client = src in self._conns[0::2]
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self._silenced(src, dst):
                    if from_client:
                        self._reset_later(src)
                    continue  # never forwarded, never acknowledged
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        if self._silenced(src, dst):
            return  # the far side's end is not seen either
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
