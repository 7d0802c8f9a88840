#!/usr/bin/python3
"""A slow webhook receiver for make bench (scripts/bench_slow.sh).

    slow_receiver.py PORT DELAY_SECONDS ADDRESS...

Listens on every ADDRESS at PORT (e.g. 100 loopback addresses 127.77.0.1 ...,
so each is a distinct endpoint host for the dispatcher's per-host connection
limit) and speaks just enough HTTP/1.1 with keep-alive:

  - a GET carrying X-Okta-Verification-Challenge is answered at once with
    200 {"verification": "<the challenge>"} (the subscription's verification);
  - a POST is answered 204 DELAY_SECONDS after its body has arrived
    ("Expect: 100-continue" gets its 100 at once);
  - GET /stats answers JSON: served (POSTs answered), pending (POSTs received
    and not yet answered), max_pending, connections, max_connections, first
    and last (wall-clock seconds of the first and the last POST answered),
    headers (the header names of the last POST received, lower-case, in
    order);
    GET /stats?reset=1 zeroes served, max_pending, max_connections, first
    and last after reading them.

One thread, asyncio protocols (no per-request task): it holds 10,000 requests
in flight and answers a few thousand per second on one core. Stops on SIGTERM
or SIGINT.
"""
import asyncio
import json
import signal
import sys
import time


class Stats:
    def __init__(self):
        self.served = 0
        self.pending = 0
        self.max_pending = 0
        self.connections = 0
        self.max_connections = 0
        self.first = 0.0
        self.last = 0.0
        self.headers = []

    def as_json(self, reset):
        body = json.dumps({k: getattr(self, k) for k in (
            "served", "pending", "max_pending", "connections", "max_connections", "first", "last",
            "headers")})
        if reset:
            self.served = 0
            self.max_pending = self.pending
            self.max_connections = self.connections
            self.first = self.last = 0.0
        return body


STATS = Stats()
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def response(status, body, ctype="application/json"):
    data = body.encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


class Receiver(asyncio.Protocol):
    def __init__(self, delay):
        self.delay = delay
        self.buf = b""
        self.transport = None
        self.busy = False  # a POST is waiting for its answer: read no further request
        self.head = None   # (method, target, headers) of a request whose body is awaited
        self.need = 0

    def connection_made(self, transport):
        self.transport = transport
        STATS.connections += 1
        STATS.max_connections = max(STATS.max_connections, STATS.connections)

    def connection_lost(self, exc):
        STATS.connections -= 1
        if self.busy:
            STATS.pending -= 1
        self.transport = None

    def data_received(self, data):
        self.buf += data
        self.process()

    def process(self):
        while not self.busy and self.transport is not None:
            if self.head is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = self.buf[:end].decode("latin-1").split("\r\n")
                self.buf = self.buf[end + 4:]
                method, target = lines[0].split(" ")[:2]
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                self.head = (method, target, headers)
                self.need = int(headers.get("content-length", "0"))
                if headers.get("expect", "").lower() == "100-continue":
                    self.transport.write(CONTINUE)
            if len(self.buf) < self.need:
                return
            self.buf = self.buf[self.need:]
            method, target, headers = self.head
            self.head = None
            if method == "POST":
                STATS.headers = list(headers)
                self.busy = True
                STATS.pending += 1
                STATS.max_pending = max(STATS.max_pending, STATS.pending)
                asyncio.get_running_loop().call_later(self.delay, self.answer)
            elif target.startswith("/stats"):
                self.transport.write(response("200 OK", STATS.as_json("reset=1" in target)))
            else:
                challenge = headers.get("x-okta-verification-challenge", "")
                self.transport.write(response("200 OK", json.dumps({"verification": challenge})))

    def answer(self):
        if self.transport is None:  # the client went away; connection_lost counted it
            return
        self.busy = False
        STATS.pending -= 1
        STATS.served += 1
        now = time.time()
        if not STATS.first:
            STATS.first = now
        STATS.last = now
        self.transport.write(NO_CONTENT)
        self.process()


async def main(argv):
    if len(argv) < 4:
        sys.exit(__doc__)
    port, delay, hosts = int(argv[1]), float(argv[2]), argv[3:]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Receiver(delay), host=hosts, port=port,
                                      backlog=4096, reuse_address=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    print(f"listening on {len(hosts)} addresses, port {port}, answering POSTs after {delay}s",
          flush=True)
    await stop
    server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv))
