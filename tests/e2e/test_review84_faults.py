"""Review 84: the HTTP engine's reused easy handles (711ee74) and the loop's
wake pipe read only when readable (9031c17), attacked with real endpoints.
Neither change carried anything from one transfer to the next that an
endpoint or an operator could see (the report lists the probes); what the
attack found is older: how a request that timed out is described."""
import json
import os
import random
import subprocess
import time

from hbtest.endpoints import hung_listeners
from hbtest.lifecycle import wait_taken
from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import Dispatcher
from test_delivery import event
from test_review31_faults import add_subscriptions, outcomes


def test_a_request_the_endpoint_took_and_never_answered_is_a_timeout_not_a_connect_timeout(
        db_url, broker, procs, workdir):
    """docs/payloads.md, timeout_ms: a request that ran out of time is
    `timeout after <timeout> ms`, and `connect timeout after <connect
    timeout> ms` only when no request went out, the connection (TCP, then
    TLS) not set up in time. Three endpoints whose listeners never answer:
    over http (two of them) the kernel accepts the connection and the
    request goes out, over https the handshake never gets an answer. 80
    events, one every 0.05 s or so; request timeout 1 s, connect timeout
    500 ms.

    On main (b6ee0a0) the engine told the two apart by the time the
    transfer took, in its own milliseconds: curl ends a transfer up to a
    millisecond before its timeout by that clock, so some requests sent on
    a connection the endpoint had accepted at once were said to have hit
    the connect timeout, in the delivery log and the dispatcher's log
    (`attempt 1 failed (connect timeout after 500 ms)`): seven runs, 7, 5,
    7, 7, 2, 1 and 6 of the first endpoint's 80 deliveries (the engine
    alone, one request at a time: 7 of 30). Now the engine asks curl
    whether the request went out. About 12 s (up to 18 s on a busy
    machine)."""
    socks = hung_listeners(3, backlog=512)
    try:
        ports = [s.getsockname()[1] for s in socks]
        plain = [f"http://127.0.0.1:{port}/hook" for port in ports[:2]]
        tls = f"https://127.0.0.1:{ports[2]}/hook"
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_REQUEST_TIMEOUT": "1s", "HOOKBRIDGE_CONNECT_TIMEOUT": "500ms",
            "HOOKBRIDGE_CIRCUIT_FAILURES": "0", "HOOKBRIDGE_LOG_LEVEL": "info"})
        d.wait_ready()
        subs = add_subscriptions(db_url, [*plain, tls])
        wait_taken(d, subs.values())
        env = dict(os.environ, HOOKBRIDGE_KAFKA_BROKERS=broker.bootstrap,
                   HOOKBRIDGE_EVENTS_TOPIC="identity.events")
        producer = subprocess.Popen([str(BIN / "hookbridge-producer"), "-"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=env)
        n = 80
        for _ in range(n):  # attempts that start at every phase of the millisecond
            producer.stdin.write((json.dumps(event("user.session.start")) + "\n").encode())
            producer.stdin.flush()
            time.sleep(0.03 + random.random() * 0.04)
        producer.stdin.close()
        assert producer.wait(30 * SLOW) == 0, producer.stdout.read().decode()

        def settled():
            got = {url: outcomes(db_url, sub) for url, sub in subs.items()}
            return all(sum(o.values()) >= n for o in got.values()) and got
        got = wait_until(settled, 20 * SLOW, "every delivery's first attempt")
    finally:
        for s in socks:
            s.close()
    for url in plain:
        assert got[url] == {("retry", 1, "timeout after 1000 ms"): n}, got[url]
    assert got[tls] == {("retry", 1, "connect timeout after 500 ms"): n}, got[tls]
    said = [line for line in d.proc.output().splitlines()
            if "connect timeout after" in line and f'"{subs[tls]}"' not in line]
    assert not said, said[:3]
