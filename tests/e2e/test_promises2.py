"""More promises of the documentation that no other test held the code to,
end to end with the real services:

- retrier replicas share the delay tiers as dispatchers share the events
  topic, in one consumer group (README.md, Operating it: "Retrier replicas
  share the delay tiers the same way"): each due retry is attempted by one of
  them, and one killed mid-way loses none (docs/design.md, Guarantees);
- a dispatcher beyond the partition count gets nothing and sits idle, ready,
  and takes the partition over when its holder leaves (docs/operations.md,
  Scaling);
- TLS 1.2 is the minimum version (docs/security.md, TLS): an endpoint that
  speaks only TLS 1.1 is refused with the TLS reason, retried and failed as
  a TLS error is, even where the system's OpenSSL would allow TLS 1.1;
- proxies from the environment are ignored (docs/security.md, Schemes and
  proxies): a delivery and a challenge go straight to the endpoint, over
  http:// and https://, with every proxy variable set;
- /healthz is 503 once the main loop has not turned for 30 s, and 200 again
  when it turns (docs/operations.md, Health, shutdown and logs), the loop
  stuck on its log output (a log shipper that stopped reading).

The ones that need Apache Kafka (a broker that refuses a retry or a dead
letter, a member fenced out by its instance id) are in
test_promises2_kafka.py."""
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections import defaultdict

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.lifecycle import ACTIVE, changes_applied, changes_in
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier, produce
from hbtest.tls import Pki, TlsReceiver
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql, verify_once
from test_promises import checking, verified_active


def partitions_held(svc):
    """Partitions the service holds now, from its log: assigned minus revoked."""
    out = svc.proc.output()
    return (sum(int(n) for n in re.findall(r'"msg":"assigned (\d+) partition', out))
            - sum(int(n) for n in re.findall(r'"msg":"revoking (\d+) partition', out)))


def posts_by_id(rcv):
    """webhook-id -> the statuses the receiver answered, in order."""
    got = defaultdict(list)
    for p in rcv.posts():
        got[p["headers"]["webhook-id"]].append(p["status"])
    return got


def test_two_retriers_share_a_tier_and_one_killed_loses_nothing(db_url, procs, workdir):
    """Two retriers in one group on a 6-partition tier, 12 subscriptions (a
    retry's key is its subscription, so they spread over the partitions), a
    receiver failing the first attempt of each webhook-id. Wave 1: both
    retriers hold partitions and attempt retries, and every retry is
    attempted exactly once across the two (503 then one 204 per webhook-id).
    Wave 2: one retrier is killed (SIGKILL) once it has read some of the
    wave's retries but before they are due; the other takes its partitions
    after the session timeout and every retry is attempted, a duplicate
    allowed only as the same webhook-id.

    Checked to fail without the promise: with the second retrier in a group
    of its own (group_id="hookbridge-retrier-b"), wave 1 sees attempt 2 twice
    per webhook-id ("attempted more than once"); with the killed one committing
    what it reads before attempting it (HOOKBRIDGE_KAFKA_ENABLE_AUTO_OFFSET_STORE=true,
    _AUTO_COMMIT_INTERVAL_MS=100, killed 0.5 s after its read), its wave-2
    retries are never attempted ("every wave-2 retry acknowledged" times out).
    14-16 s on the devbroker."""
    tier = 2  # s
    schedule = f"{tier}s"
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0",
           "HOOKBRIDGE_KAFKA_SESSION_TIMEOUT_MS": "4000",
           # 120 first attempts fail at one host: its circuit must stay closed.
           "HOOKBRIDGE_CIRCUIT_FAILURES": "0"}
    broker = Broker(procs, workdir, retry_schedule=schedule)
    rcv = checking(procs, workdir, fail_first=1)
    subs = [verified_active(db_url, rcv.url) for _ in range(12)]
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    a = Retrier(procs, db_url, broker.bootstrap, extra_env=env, name="retrier-a")
    b = Retrier(procs, db_url, broker.bootstrap, extra_env=env, name="retrier-b")
    for svc in (d, a, b):
        svc.wait_ready()
    # the 2s tier and the default hop tiers (20s, 1m), 6 partitions each
    wait_until(lambda: partitions_held(a) > 0 and partitions_held(b) > 0
               and partitions_held(a) + partitions_held(b) == 18, 20,
               "both retriers to hold partitions of the tier")
    print(f"partitions: a {partitions_held(a)}, b {partitions_held(b)}")

    # Wave 1: every retry attempted once, by both retriers together.
    wave1 = [event("user.session.start", user=f"00uw1{i:07d}") for i in range(10)]
    produce(broker.bootstrap, wave1)
    want = len(wave1) * len(subs)
    got = wait_until(lambda: (g := posts_by_id(rcv)) and len(g) == want
                     and all(204 in s for s in g.values()) and g, (tier + 20) * SLOW,
                     "every wave-1 retry acknowledged")
    wait_until(lambda: a.metric('hookbridge_deliveries_total{outcome="delivered"}')
               + b.metric('hookbridge_deliveries_total{outcome="delivered"}') >= want, 10,
               "the retriers to count the deliveries")
    by_a = a.metric('hookbridge_deliveries_total{outcome="delivered"}')
    by_b = b.metric('hookbridge_deliveries_total{outcome="delivered"}')
    print(f"wave 1: {want} retries, {by_a:.0f} by a, {by_b:.0f} by b")
    more = {i: s for i, s in got.items() if s != [503, 204]}
    assert not more, f"attempted more than once (or not as 503, 204): {list(more.items())[:5]}"
    assert by_a > 0 and by_b > 0, "one retrier attempted every retry"
    assert by_a + by_b == want

    # Wave 2: a is killed once it has read some of the wave's retries, before
    # they are due (they are its, uncommitted, paused until due).
    # (read, not taken: a retry read before it is due waits, and is counted
    # in hookbridge_messages_consumed_total only when taken, since review15)
    def waiting(svc):
        return svc.proc.output().count(": it waits at hookbridge.retry.")

    read_a, read_b = waiting(a), waiting(b)
    wave2 = [event("user.session.start", user=f"00uw2{i:07d}") for i in range(10)]
    produce(broker.bootstrap, wave2)
    wait_until(lambda: waiting(a) > read_a and waiting(b) > read_b, 10,
               "both retriers to read wave-2 retries")
    a.proc.kill()
    got = wait_until(lambda: len(g := posts_by_id(rcv)) == 2 * want
                     and all(204 in s for s in g.values()) and g, (tier + 30) * SLOW,
                     "every wave-2 retry acknowledged, the killed retrier's too")
    assert all(s[0] == 503 and s.count(503) == 1 for s in got.values()), \
        "a first attempt repeated, or a retry failed"
    dups = sum(s.count(204) - 1 for s in got.values())
    print(f"wave 2: {want} retries after the kill, {dups} attempted twice (same webhook-id); "
          f"b holds {partitions_held(b)} partitions")
    # The group has given b the killed one's partitions (after its session
    # timeout, if a's retries were all through before that).
    wait_until(lambda: partitions_held(b) == 18, 20, "b to hold every partition")
    # The delivery log agrees: every delivery delivered, in two attempts.
    rows = wait_until(lambda: (r := sql(db_url, "SELECT delivery_id::text, status, attempts "
                                        "FROM hookbridge.deliveries"))
                      and len(r) == 2 * want and all(x[1] == "delivered" for x in r) and r,
                      10 * SLOW, "every delivery logged delivered")
    assert {x[0] for x in rows} == set(got)
    assert all(x[2] == 2 for x in rows)


def test_a_dispatcher_beyond_the_partition_count_sits_idle_and_ready_then_takes_over(
        db_url, procs, workdir):
    """docs/operations.md, Scaling: "members beyond the partition count get
    nothing and sit idle (ready, but doing nothing)"; /readyz: "the consumer
    group has assigned partitions (possibly none)". Two dispatchers in one
    group on a one-partition events topic: both are ready, one holds the
    partition and delivers every event once; the holder stops (SIGTERM) and
    the idle one takes the partition and delivers what comes next.

    Checked to fail without the promise: with the idle one counted ready only
    once it holds a partition (hb_consumer.c's rebalance callback setting
    `assigned` only when parts->cnt > 0), the second dispatcher never becomes
    ready ("the dispatcher to be ready" times out). About 9 s."""
    topic = "events.one"
    broker = Broker(procs, workdir, topics=[f"{topic}:1"])
    rcv = checking(procs, workdir)
    verified_active(db_url, rcv.url)
    ds = [Dispatcher(procs, db_url, broker.bootstrap, topic=topic, name=f"dispatcher-{i}")
          for i in (1, 2)]
    for d in ds:
        d.wait_ready()
    held = wait_until(lambda: (h := [partitions_held(d) for d in ds]) and sorted(h) == [0, 1]
                      and h, 20 * SLOW, "one dispatcher to hold the partition, one none")
    holder, idle = (ds[0], ds[1]) if held[0] == 1 else (ds[1], ds[0])
    assert idle.get("/readyz")[0] == 200, idle.get("/readyz")
    first = [event("user.session.start", user=f"00ui1{i:07d}") for i in range(5)]
    produce(broker.bootstrap, first, topic=topic)
    wait_until(lambda: len(rcv.events()) == len(first), 15 * SLOW, "the first events")
    assert idle.metric("hookbridge_messages_consumed_total") == 0, "the idle one consumed"

    assert holder.proc.stop() == 0
    wait_until(lambda: partitions_held(idle) == 1, 20 * SLOW, "the idle one to take over")
    assert idle.get("/readyz")[0] == 200
    then = [event("user.session.start", user=f"00ui2{i:07d}") for i in range(5)]
    produce(broker.bootstrap, then, topic=topic)
    wait_until(lambda: len(rcv.events()) == len(first) + len(then), 15 * SLOW,
               "the events after the take-over")
    assert sorted(e["uuid"] for _, e in rcv.events()) == sorted(e["uuid"] for e in first + then)
    assert idle.metric("hookbridge_messages_consumed_total") == len(then)


# ----------------------------------------------------------- TLS 1.2 at least

# An OpenSSL configuration that allows TLS 1.0 and 1.1 (security level 0, as
# on older distributions or a loosened openssl.cnf): Debian 12's default
# already refuses a TLS 1.1 server's handshake ("legacy sigalg disallowed"),
# which would hide whether hookbridge's own minimum is set.
LOOSE_OPENSSL_CNF = """openssl_conf = init
[init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = sys
[sys]
MinProtocol = TLSv1
CipherString = DEFAULT:@SECLEVEL=0
"""


def tls11_endpoint(pki):
    """An HTTPS endpoint (the test CA's certificate for 127.0.0.1) that speaks
    TLS 1.1 and nothing else, answering challenges and POSTs (204, recorded in
    its .posts)."""
    posts = []

    class Handler(ChallengeAnswering):
        def do_POST(self):
            posts.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self.answer()

    cert, key = pki.server("tls11")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    srv = serve(Handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.url = srv.url.replace("http://", "https://")
    srv.posts = posts
    return srv


def test_an_endpoint_that_speaks_only_tls_1_1_is_refused_retried_then_failed(
        db_url, procs, workdir):
    """docs/security.md, TLS: "TLS 1.2 is the minimum version", set by
    hookbridge on every request, not left to the system. The endpoint speaks
    only TLS 1.1, and the services run with an OpenSSL configuration that
    allows it: curl with that configuration does reach the endpoint, but the
    verification challenge fails with the TLS reason, and a delivery to it
    (the subscription verified before the endpoint was downgraded) fails its
    attempts with that reason, retried on the schedule (a TLS error is a
    transport error) and then failed; nothing gets past the handshake.

    Checked to fail without the promise: with the CURLOPT_SSLVERSION line of
    lib/hb_http.c removed, the challenge passes over TLS 1.1 ("verification
    over TLS 1.1" fails: state verified). About 8 s."""
    pki = Pki(workdir)
    loose = workdir / "openssl-loose.cnf"
    loose.write_text(LOOSE_OPENSSL_CNF)
    ep = tls11_endpoint(pki)
    try:
        # The machine, so configured, speaks TLS 1.1 to the endpoint: what
        # refuses it below is hookbridge's own minimum.
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            "--cacert", str(pki.ca), "-d", "{}", ep.url],
                           env={"OPENSSL_CONF": str(loose), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, timeout=20)
        assert r.stdout == "204", f"curl could not reach the TLS 1.1 endpoint: {r.stderr}"
        assert len(ep.posts) == 1
        schedule = "1s"
        env = {"OPENSSL_CONF": str(loose), "HOOKBRIDGE_ALLOW_HTTP": "0",
               "HOOKBRIDGE_CA_FILE": str(pki.ca), "HOOKBRIDGE_RETRY_SCHEDULE": schedule,
               "HOOKBRIDGE_RETRY_JITTER": "0"}
        broker = Broker(procs, workdir, retry_schedule=schedule)
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
        rt = Retrier(procs, db_url, broker.bootstrap, extra_env=env)
        d.wait_ready()
        rt.wait_ready()

        _, state, why = verify_once(db_url, ep.url)
        print(f"verification: {state}: {why}")
        assert state == "failed", "verification over TLS 1.1"
        assert why.startswith("TLS error: ") and "protocol version" in why, why

        # A subscription verified when its endpoint spoke TLS 1.2, since downgraded.
        sub = verified_active(db_url, ep.url)
        wait_until(lambda: changes_applied(rt, sub, ACTIVE) >= 1 and
                   changes_applied(d, sub, ACTIVE) >= 1, 10 * SLOW, "both services to see it")
        produce(broker.bootstrap, [event("user.session.start")])
        rows = wait_until(lambda: (x := sql(db_url, "SELECT status, attempts, last_error "
                                            "FROM hookbridge.deliveries WHERE subscription_id "
                                            "= %s", sub)) and x[0][0] == "failed" and x,
                          20 * SLOW, "the delivery failed")
        print(f"delivery: {rows[0]}")
        status, n, error = rows[0]
        assert n == 2 and error.startswith("TLS error: ") and "protocol version" in error, rows
        tries = sql(db_url, "SELECT attempt, outcome, error FROM hookbridge.delivery_attempts "
                    "WHERE subscription_id = %s ORDER BY attempt", sub)
        assert [(a, o) for a, o, _ in tries] == [(1, "retry"), (2, "failed")], tries
        assert all(e.startswith("TLS error: ") for _, _, e in tries), tries
        assert len(ep.posts) == 1, "a request got past the handshake"
    finally:
        ep.shutdown()


# ------------------------------------------------- proxies from the environment

class RecordingProxy:
    """A listener standing in for a proxy: counts the connections it gets and
    answers each with 502, so a request sent through it fails."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with c:
                c.recv(65536)
                c.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")

    def close(self):
        self.sock.close()


def test_proxies_from_the_environment_are_ignored(db_url, broker, procs, workdir):
    """Every proxy variable curl reads points the dispatcher at a proxy
    (which would answer 502); the challenges and the deliveries, to an
    http:// and an https:// endpoint, go straight to them, and the proxy gets
    no connection.

    Checked to fail without the promise: with the CURLOPT_PROXY line of
    lib/hb_http.c removed, the challenge goes to the proxy and fails with
    HTTP 502 ("the verification outcome" is failed). About 5 s."""
    proxy = RecordingProxy()
    try:
        pki = Pki(workdir)
        cert, key = pki.server()
        plain = checking(procs, workdir, "plain")
        tls = TlsReceiver(procs, workdir, cert, key, secret=SECRET,
                          auth=f"Authorization: {AUTH_VALUE}")
        env = {v: proxy.url for v in ("http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy",
                                      "ALL_PROXY")}
        env.update({"HOOKBRIDGE_CA_FILE": str(pki.ca), "no_proxy": "", "NO_PROXY": ""})
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
        d.wait_ready()
        subs = [register_verified(db_url, plain.url, ["user.session.start"]),
                register_verified(db_url, tls.url, ["user.session.start"])]
        ev = event("user.session.start")
        produce(broker.bootstrap, [ev])
        for rcv in (plain, tls):
            wait_until(lambda: [e["uuid"] for _, e in rcv.events()] == [ev["uuid"]],
                       15 * SLOW, f"the delivery at {rcv.name}")
        assert proxy.connections == 0, "a request went through the proxy"
        wait_until(lambda: sql(db_url, "SELECT status FROM hookbridge.deliveries WHERE "
                               "subscription_id = ANY(%s::uuid[])", subs)
                   == [("delivered",), ("delivered",)], 10 * SLOW, "both logged delivered")
    finally:
        proxy.close()


# ------------------------------------------------------ /healthz: a stuck loop

STALL_MS = 30000  # docs/operations.md: "503 once it has not turned for 30 s"


class Shipped:
    """A process group whose programs write their stdout into `fifo`, read by
    a log shipper (`cat`, its own output the log) that a test can stop."""

    def __init__(self, group, workdir):
        self.group = group
        self.fifo = os.path.join(workdir, "stdout.fifo")
        os.mkfifo(self.fifo)
        self.shipper = group.start("log-shipper", ["cat", self.fifo])

    def start(self, name, argv, env=None, **kw):
        return self.group.start(name, ["sh", "-c", 'exec "$@" >"$0"', self.fifo, *argv], env,
                                **kw)


def test_healthz_turns_503_when_the_main_loop_is_stuck_for_30_s_and_200_when_it_turns(
        db_url, procs, workdir):
    """The dispatcher logs to stdout, a pipe read by a log shipper. The
    shipper stops (SIGSTOP) and events keep the dispatcher logging: once the
    pipe is full the main loop blocks in write(2). /healthz (its own thread)
    stays 200 until the loop has been silent for 30 s, then answers 503
    "stalled: main loop silent for N ms"; the shipper resumes, the loop
    turns, /healthz is 200 again and every event is delivered.

    Checked to fail without the promise: with hb_worker.c's stall limit set
    to 0 (never stalled), /healthz stays 200 ("/healthz to turn 503" times
    out). About 40 s: the 30 s cannot be shortened by any setting."""
    broker = Broker(procs, workdir)
    rcv = Receiver(procs, workdir, args=["--quiet"])
    logs = Shipped(procs, workdir)
    d = Dispatcher(logs, db_url, broker.bootstrap)
    d.wait_ready()
    sub = verified_active(db_url, rcv.url)
    wait_until(lambda: changes_in(logs.shipper.output(), sub, ACTIVE) >= 1, 10 * SLOW,
               "the dispatcher to see the subscription")

    logs.shipper.signal(signal.SIGSTOP)
    try:
        t_stop = time.monotonic()
        events = [event("user.session.start", user=f"00uh{i:08d}") for i in range(400)]
        produce(broker.bootstrap, events)
        # The loop blocks once the pipe (64 KiB) is full: some of the events
        # are delivered, not all.
        wait_until(lambda: d.metric("hookbridge_messages_consumed_total") > 0, 10 * SLOW,
                   "the dispatcher to read events")
        assert d.get("/healthz")[0] == 200, "503 before 30 s of silence"
        status, body = wait_until(lambda: (r := d.get("/healthz"))[0] != 200 and r,
                                  (STALL_MS / 1000 + 10), "/healthz to turn 503")
        took = time.monotonic() - t_stop
        print(f"/healthz {status} {took:.1f} s after the shipper stopped: {body.strip()!r}; "
              f"{len(rcv.events())} of {len(events)} events delivered meanwhile")
        assert status == 503, (status, body)
        silent = int(re.search(r"^stalled: main loop silent for (\d+) ms$", body).group(1))
        assert STALL_MS < silent <= STALL_MS + 2000 * SLOW, body
        assert took >= STALL_MS / 1000
        assert len(rcv.events()) < len(events), "the loop did not block: the test checks nothing"
    finally:
        logs.shipper.signal(signal.SIGCONT)
    wait_until(lambda: d.get("/healthz")[0] == 200, 5 * SLOW, "/healthz 200 again")
    # Every event delivered, or (those that waited for a connection longer
    # than HOOKBRIDGE_MAX_QUEUE_WAIT while the loop was stuck) handed to the
    # first delay tier unattempted, as documented: no retrier runs here.
    rows = wait_until(lambda: (r := sql(db_url, "SELECT status, count(*) FROM "
                                        "hookbridge.deliveries GROUP BY status ORDER BY 1"))
                      and sum(n for _, n in r) == len(events) and r, 20 * SLOW,
                      "every event's delivery logged once the loop turns")
    print(f"delivery log: {rows}")
    assert {st for st, _ in rows} <= {"delivered", "retry"}, rows
    assert dict(rows).get("delivered", 0) > 0
