"""Review 65: what a long-running dispatcher or retrier keeps per endpoint
host and per subscription while subscriptions come and go (thousands a day,
each on its own host name), endpoints move, hosts go away.

Host names resolve to loopback through an LD_PRELOAD getaddrinfo shim built
here (it stands in for the operating system's resolver, not for any part of
hookbridge): every name under .hbchurn is 127.0.0.1.

Each check says what it did on 58f732a (before this review's commits)."""
import http.server
import json
import os
import subprocess
import threading
import time

import pytest

from hbtest.endpoints import ChallengeAnswering, posted_uuids
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, produce
from test_delivery import AUTH_VALUE, event, sql

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <string.h>
#include <strings.h>

typedef int gai_fn(const char *, const char *, const struct addrinfo *, struct addrinfo **);

/* A name under .hbchurn: 127.0.0.1. Any other name: the real resolver. */
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res) {
    gai_fn *real = (gai_fn *)dlsym(RTLD_NEXT, "getaddrinfo");
    size_t n = node ? strlen(node) : 0;
    if (n < 8 || strcasecmp(node + n - 8, ".hbchurn"))
        return real(node, service, hints, res);
    struct addrinfo h2;
    memset(&h2, 0, sizeof(h2));
    if (hints)
        h2 = *hints;
    h2.ai_family = AF_INET;
    h2.ai_flags |= AI_NUMERICHOST;
    return real("127.0.0.1", service, &h2, res);
}
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    d = tmp_path_factory.mktemp("gaichurn")
    (d / "shim.c").write_text(SHIM_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(d / "shim.so"), str(d / "shim.c"),
                    "-ldl"], check=True)
    return str(d / "shim.so")


def switchable(status):
    """A keep-alive endpoint on 127.0.0.1 answering status[0] to every POST
    (change status[0] to change the answer)."""
    got = []

    class Handler(ChallengeAnswering):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            got.extend(posted_uuids(self))
            self.answer(status[0])

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.got = got
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def subscribe(db_url, url, etype="user.session.start"):
    """An active, verified subscription to url for etype (no challenge)."""
    opts = json.dumps({"auth_header": "Authorization", "auth_value": AUTH_VALUE})
    sub = sql(db_url, "SELECT hookbridge.register(%s, %s, ARRAY[%s], %s::jsonb)", "r65-" + url,
              url, etype, opts)[0][0]
    sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
        "status = 'active' WHERE id = %s", sub)
    return sub


def outcomes(db_url, sub):
    """{(status, attempts, last_error): count} of sub's deliveries."""
    return dict(((s, a, e), n) for s, a, e, n in sql(
        db_url, "SELECT status, attempts, coalesce(last_error, ''), count(*) "
        "FROM hookbridge.deliveries WHERE subscription_id = %s GROUP BY 1, 2, 3", sub))


def test_a_host_subscribed_to_again_starts_without_the_circuit_of_its_previous_life(
        db_url, procs, workdir, shim):
    """Two subscriptions on api.customer.hbchurn, whose endpoint answers 503:
    its circuit opens (3 failures, cool-down 60 s). The endpoint is fixed;
    one subscription is deregistered: the other still has its URL there, so
    the circuit stays (its next deliveries are not attempted). Then the last
    one is deregistered too, and a new subscription (the customer's new one,
    a new secret) is made to the same URL.

    On 58f732a the new subscription met the circuit of the host's previous
    life: of its first 10 events 0 were sent, all 10 went to the delay tier
    (`circuit open: endpoint failing`; after the cool-down it would have
    been 1 probe and 9 so), and in the retrier a circuit left so counts as
    failed attempts. Now a host no subscription has any more is forgotten
    (circuit, pacing, the HTTP engine's memory of it): all 10 are delivered
    at the first attempt, and the log says `circuit forgotten`."""
    status = [503]
    srv = switchable(status)
    url = f"http://api.customer.hbchurn:{srv.server_address[1]}/hook"
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_RETRY_SCHEDULE": "1h", "HOOKBRIDGE_LOG_LEVEL": "info",
            "HOOKBRIDGE_CIRCUIT_FAILURES": "3", "HOOKBRIDGE_CIRCUIT_COOLDOWN": "60s",
            "LD_PRELOAD": shim,
            "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"})
        d.wait_ready()
        a, c = subscribe(db_url, url), subscribe(db_url, url + "?c")
        time.sleep(1.5)  # the dispatcher hears of them (LISTEN)
        produce(broker.bootstrap, [event("user.session.start") for _ in range(3)])
        wait_until(lambda: d.metric("hookbridge_circuit_opens_total") >= 1, 20 * SLOW,
                   "the circuit to open")
        status[0] = 204

        sql(db_url, "SELECT hookbridge.deregister(%s)", a)
        time.sleep(1.5)
        produce(broker.bootstrap, [event("user.session.start") for _ in range(2)])
        wait_until(lambda: sum(outcomes(db_url, c).values()) >= 5, 20 * SLOW, "c's outcomes")
        skipped = outcomes(db_url, c).get((
            "retry", 0, "circuit open: endpoint failing"), 0)
        assert skipped == 2, outcomes(db_url, c)  # c is still there: the circuit stays

        sql(db_url, "SELECT hookbridge.deregister(%s)", c)
        b = subscribe(db_url, url)
        time.sleep(1.5)
        sent = [event("user.session.start") for _ in range(10)]
        produce(broker.bootstrap, sent)
        wait_until(lambda: sum(outcomes(db_url, b).values()) >= 10, 20 * SLOW, "b's outcomes")
        assert outcomes(db_url, b) == {("delivered", 1, ""): 10}, outcomes(db_url, b)
        assert {e["uuid"] for e in sent} <= set(srv.got)
        assert "circuit forgotten: no subscription has its URL at the endpoint any more" in (
            d.proc.output())
    finally:
        srv.shutdown()
