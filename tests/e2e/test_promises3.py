"""A third pass over promises of the documentation that no test held the code
to, end to end with the real services, about what an operator or a webhook
receiver notices when something goes wrong:

- a service draining on SIGTERM says `shutting down` on /readyz while
  /healthz stays 200 (docs/operations.md, Health, shutdown and logs);
- a running dispatcher keeps delivering while PostgreSQL is unreachable, and
  the operator sees what the runbook says (docs/operations.md, PostgreSQL
  unreachable); SIGTERM then still exits 0 in time and loses nothing;
- every Kafka broker down: not ready within seconds, the error counter
  rising, one line each way (docs/operations.md, Kafka unreachable);
- redirects are never followed; response headers over the bounds are
  retried; only HOOKBRIDGE_RESPONSE_SNIPPET_BYTES of a response are kept
  (docs/security.md, Redirects, bounds and headers; docs/design.md);
- the producer refuses an event whose encoding is over 256 KiB, with a
  per-line error, so nothing oversized enters Kafka (docs/security.md);
- a flag wins over its variable, an empty variable counts as unset
  (docs/design.md, Configuration principles);
- HOOKBRIDGE_LOG_LEVEL: `warn` keeps info lines out, `debug` adds a line per
  delivery (docs/operations.md, Logs)."""
import json
import re
import signal
import time

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.lifecycle import ACTIVE, changes_applied
from hbtest.procs import BIN, SECRET_KEY, SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, produce, topic_records
from hbtest.tcpproxy import TcpProxy
from test_delivery import event, register_verified, sql


def deliveries(db_url, sub):
    """(status, attempts, last_error) of each of sub's deliveries."""
    return sql(db_url, "SELECT status, attempts, coalesce(last_error, '') FROM "
               "hookbridge.deliveries WHERE subscription_id = %s ORDER BY created_at", sub)


def log_lines(proc):
    """Every JSON line the process wrote, parsed."""
    return [json.loads(l) for l in proc.output().splitlines() if l.startswith("{")]


# ------------------------------------------------------------ draining

def test_a_draining_service_says_shutting_down_on_readyz_and_stays_live(db_url, procs,
                                                                        workdir):
    """docs/operations.md, Health, shutdown and logs: /readyz is 503 with the
    reason in the body, among them `shutting down`; /healthz "is 200 while
    the service's main loop turns"; SIGTERM lets the deliveries in flight
    finish, then the service exits 0.

    What the operator sees: a pod draining a slow request (4 s here) is
    reported not ready, with the reason `shutting down` (a rollout or an alert
    reads it), and its liveness probe keeps passing, so Kubernetes does not
    kill it mid-drain; the request finishes and is logged delivered.

    Checked to fail without the behaviour: with update_readiness's
    `hb_stop_requested` branch removed (lib/hb_worker.c), /readyz stays 200
    during the drain ("/readyz to say shutting down" times out)."""
    broker = Broker(procs, workdir)
    rcv = Receiver(procs, workdir, delay_ms=4000)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sub = register_verified(db_url, rcv.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: d.metric("hookbridge_requests_in_flight") >= 1, 20,
               "the slow request in flight")
    d.proc.signal(signal.SIGTERM)
    wait_until(lambda: "stopping:" in d.proc.output(), 5, "the drain to start")
    status, body = wait_until(lambda: (r := d.get("/readyz"))[0] != 200 and r, 2,
                              "/readyz to say shutting down")
    assert (status, body.strip()) == (503, "shutting down"), (status, body)
    assert d.get("/healthz")[0] == 200, "the liveness probe failed during the drain"
    assert d.proc.alive(), "exited before its request finished: the test checks nothing"
    assert d.proc.p.wait(30 * SLOW) == 0
    assert deliveries(db_url, sub) == [("delivered", 1, "")]
    assert len(rcv.events()) == 1


# ----------------------------------------------------- database outage

def delivering_through(pg_cluster, db_url, procs, workdir, extra_env=None):
    """A dispatcher reaching PostgreSQL through a TcpProxy, one subscription,
    and one event delivered and logged. Returns (proxy, broker, receiver,
    dispatcher, subscription); the caller closes the proxy."""
    proxy = TcpProxy(pg_cluster.port)
    proxy.start()
    try:
        broker = Broker(procs, workdir)
        rcv = Receiver(procs, workdir)
        d = Dispatcher(procs, db_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/"),
                       broker.bootstrap, extra_env=extra_env)
        d.wait_ready()
        sub = register_verified(db_url, rcv.url, ["user.session.start"])
        # the activation reaches the dispatcher by NOTIFY, through the proxy:
        # an event consumed before it would find the subscription inactive
        wait_until(lambda: changes_applied(d, sub, ACTIVE) >= 1, 10 * SLOW,
                   "the dispatcher to see the subscription active")
        produce(broker.bootstrap, [event("user.session.start")])
        wait_until(lambda: deliveries(db_url, sub) == [("delivered", 1, "")], 20,
                   "the first event delivered and logged")
    except BaseException:
        proxy.close()
        raise
    return proxy, broker, rcv, d, sub


def test_a_running_dispatcher_keeps_delivering_through_a_database_outage(pg_cluster, db_url,
                                                                        procs, workdir):
    """docs/operations.md, Runbooks, PostgreSQL unreachable: "What you see:
    `/readyz` 503 with `database not connected` ..., `hookbridge_database_
    errors_total` rising ... `delivery log: cannot write, will retry: ...`";
    "A running pod keeps its subscription index in memory and keeps
    delivering; attempts wait in a queue for the delivery log, and a delivery
    counts as done only once its row is written ... Readiness returns by
    itself".

    What the receiver sees: events produced while the database is away still
    arrive, once each. What the operator sees: the readiness reason, the
    error counter and the warn line of the runbook (the alert
    HookbridgeDatabaseErrors rests on that counter), and once the database is
    back every delivery in the log as delivered, with no request made twice.

    Checked to fail without the behaviour: with the dispatcher's
    one_pass() taking messages only while the store is connected (adding
    `hb_store_connected(w->store) &&` to its consume condition in
    lib/hb_worker.c), the events wait for the database ("the events
    delivered while the database is away" times out). Reasoning for the
    counter: it is compared with its value before the cut, so a build that
    does not count failed reconnections fails the assertion. The runbook's
    line `database: ...; next attempt in N s` was written `database:
    database: ...` before lib/hb_worker.c stopped adding its prefix to the
    store's messages, which already carry it ("the runbook's reconnection
    line" timed out on main's build)."""
    proxy, broker, rcv, d, sub = delivering_through(pg_cluster, db_url, procs, workdir)
    try:
        errors_before = d.metric("hookbridge_database_errors_total")

        proxy.cut()
        status, body = wait_until(lambda: (r := d.get("/readyz"))[0] == 503 and r, 20,
                                  "/readyz 503 without the database")
        assert body.strip() == "database not connected", body
        assert d.get("/healthz")[0] == 200
        during = [event("user.session.start") for _ in range(3)]
        produce(broker.bootstrap, during)
        wait_until(lambda: {e["uuid"] for e in during} <= {e["uuid"] for _, e in rcv.events()},
                   20, "the events delivered while the database is away")
        wait_until(lambda: "delivery log: cannot write, will retry: " in d.proc.output(), 10,
                   "the runbook's warn line")
        assert d.metric("hookbridge_database_errors_total") > errors_before, \
            "hookbridge_database_errors_total did not rise during the outage"
        # the runbook's reconnection line, said once as "database: ..."
        wait_until(lambda: re.search(r'"level":"warn".*"msg":"database: (?!database: )[^"]*; '
                                     r'next attempt in [1-5] s"', d.proc.output()), 10,
                   "the runbook's reconnection line")
        assert [r for r in deliveries(db_url, sub) if r[0] != "delivered"] == []
        assert len(deliveries(db_url, sub)) == 1, "logged without the database?"

        proxy.start()
        wait_until(lambda: d.get("/readyz")[0] == 200, 15, "ready again")
        wait_until(lambda: deliveries(db_url, sub) == [("delivered", 1, "")] * 4, 20,
                   "the outage's deliveries in the log once it is back")
        ids = [p["headers"]["webhook-id"] for p in rcv.posts()]
        assert len(ids) == len(set(ids)) == 4, "a request was made twice"
        assert d.proc.stop() == 0
    finally:
        proxy.close()


def test_a_database_that_accepts_but_does_not_answer_makes_the_service_not_ready(
        pg_cluster, db_url, procs, workdir):
    """docs/operations.md, Runbooks, PostgreSQL not answering: a server that
    keeps its connections but answers nothing (stopped, overloaded, or the
    delivery log's statement waiting for a lock) fails nothing, so nothing
    said so: /readyz stayed 200 "ready" while offsets stopped moving. Now,
    once the delivery log has waited 10 s for its answer, /readyz is 503
    `database not answering (the delivery log has waited N s)`, one warn line
    says so, hookbridge_database_errors_total counts it once; deliveries go
    on meanwhile, and when the database answers again the service is ready,
    says so once, and the deliveries are in the log.

    Checked to fail without the behaviour: on a build without
    db_unanswered() in lib/hb_worker.c, /readyz stays 200 (the 503 wait
    times out)."""
    proxy, broker, rcv, d, sub = delivering_through(pg_cluster, db_url, procs, workdir)
    try:
        errors_before = d.metric("hookbridge_database_errors_total")

        proxy.pause()
        t0 = time.monotonic()
        during = [event("user.session.start") for _ in range(2)]
        produce(broker.bootstrap, during)
        wait_until(lambda: {e["uuid"] for e in during} <= {e["uuid"] for _, e in rcv.events()},
                   20, "the events delivered while the database does not answer")
        status, body = wait_until(lambda: (r := d.get("/readyz"))[0] == 503 and r, 30,
                                  "/readyz 503 while the database does not answer")
        waited = time.monotonic() - t0
        print(f"not ready {waited:.1f} s after the database stopped answering: {body.strip()}")
        assert re.fullmatch(r"database not answering \(the delivery log has waited 1\d s\)",
                            body.strip()), body
        assert waited >= 9.5, "not ready before the delivery log waited 10 s"
        assert d.get("/healthz")[0] == 200
        warn = [ln for ln in log_lines(d.proc) if "no answer to the delivery log" in
                ln.get("msg", "")]
        assert len(warn) == 1 and warn[0]["level"] == "warn", warn
        assert d.metric("hookbridge_database_errors_total") == errors_before + 1

        proxy.resume()
        wait_until(lambda: d.get("/readyz")[0] == 200, 15, "ready again")
        wait_until(lambda: deliveries(db_url, sub) == [("delivered", 1, "")] * 3, 20,
                   "the deliveries in the log once it answers")
        assert "the delivery log has its answer again" in d.proc.output()
        assert len([ln for ln in log_lines(d.proc)
                    if "no answer to the delivery log" in ln.get("msg", "")]) == 1
    finally:
        proxy.close()


def test_sigterm_while_the_database_is_away_exits_0_in_time_and_loses_nothing(
        pg_cluster, db_url, procs, workdir):
    """docs/operations.md, Health, shutdown and logs: SIGTERM "lets the
    deliveries in flight finish for at most `HOOKBRIDGE_SHUTDOWN_TIMEOUT`
    ..., flushes ... the delivery log (at most 5 s), commits offsets, leaves
    the consumer group and exits 0", `terminationGracePeriodSeconds` being
    the drain plus 10 s; README.md, Guarantees: an offset is stored only
    when every delivery it caused is durable and logged.

    A rollout or a node drain during a database outage: the dispatcher has
    delivered events whose rows it cannot write. What the operator sees: it
    still exits 0 within the drain plus 10 s (not killed by Kubernetes);
    what the receiver sees: those events again after the restart, with the
    same webhook-id, and then the log has them delivered (at least once,
    nothing lost).

    Checked to fail without the behaviour: reasoning: an offset committed
    for an outcome not in the log (the promise broken) makes the restarted
    dispatcher skip those events, and "the outage's events logged after the
    restart" times out; a drain that waits for the log without its bound
    exits after the 15 s assertion or not at all."""
    proxy = TcpProxy(pg_cluster.port)
    proxy.start()
    try:
        broker = Broker(procs, workdir)
        rcv = Receiver(procs, workdir)
        url = db_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/")
        env = {"HOOKBRIDGE_SHUTDOWN_TIMEOUT": "5s"}
        d = Dispatcher(procs, url, broker.bootstrap, extra_env=env)
        d.wait_ready()
        sub = register_verified(db_url, rcv.url, ["user.session.start"])
        wait_until(lambda: changes_applied(d, sub, ACTIVE) >= 1, 10,
                   "the dispatcher to see the subscription active")
        proxy.cut()
        wait_until(lambda: d.get("/readyz")[0] == 503, 20, "/readyz 503 without the database")
        during = [event("user.session.start") for _ in range(3)]
        produce(broker.bootstrap, during)
        wait_until(lambda: len(rcv.events()) == 3, 20, "the events delivered meanwhile")
        t0 = time.monotonic()
        d.proc.signal(signal.SIGTERM)
        rc = d.proc.p.wait(60 * SLOW)
        took = time.monotonic() - t0
        print(f"stopped with status {rc} in {took:.1f} s")
        assert rc == 0, d.proc.output()[-2000:]
        assert took <= 5 + 10, f"stopping with the database away took {took:.1f}s"
        assert deliveries(db_url, sub) == []

        proxy.start()
        d2 = Dispatcher(procs, url, broker.bootstrap, extra_env=env, name="dispatcher-again")
        wait_until(lambda: deliveries(db_url, sub) == [("delivered", 1, "")] * 3, 30,
                   "the outage's events logged after the restart")
        first = {p["headers"]["webhook-id"] for p in rcv.posts()[:3]}
        again = {p["headers"]["webhook-id"] for p in rcv.posts()[3:]}
        assert first == again, "not the same webhook-ids"
        assert d2.proc.stop() == 0
    finally:
        proxy.close()


# ----------------------------------------------------------- redirects

class Redirecting(ChallengeAnswering):
    """Answers each POST to /hook<code> with <code> and a Location to the
    server's `target`."""
    target = None
    posts = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).posts.append(self.path)
        code = int(self.path.rsplit("hook", 1)[1])
        self.send_response(code)
        self.send_header("Location", type(self).target)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_redirects_are_never_followed(db_url, procs, workdir):
    """docs/security.md, Redirects: "Redirects are never followed: a 3xx
    answer fails the delivery with `redirect (HTTP 302) not followed`";
    docs/design.md, How an answer is classified: "3xx | failed"; README.md,
    Retries: "3xx (redirects are not followed) and other 4xx final".

    What the receiver sees: one POST to the registered URL, nothing at the
    Location (which could be anywhere, an internal address included), for a
    302 as for a 307 (which a client following redirects would POST again);
    the operator sees each delivery failed with that reason, dead-lettered,
    no retry scheduled, and the answer counted as 3xx.

    Checked to fail without the behaviour: with CURLOPT_FOLLOWLOCATION set
    to 1 in lib/hb_http.c the deliveries are logged delivered (the target
    answered them)."""
    target = Receiver(procs, workdir, name="target")

    class Handler(Redirecting):
        posts = []
    Handler.target = target.url
    srv = serve(Handler)
    try:
        broker = Broker(procs, workdir, retry_schedule="1s")
        d = Dispatcher(procs, db_url, broker.bootstrap,
                       extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1s"})
        d.wait_ready()
        subs = {code: register_verified(db_url, srv.url + str(code), ["user.account.lock"])
                for code in (302, 307)}
        produce(broker.bootstrap, [event("user.account.lock")])
        for code, sub in subs.items():
            rows = wait_until(lambda: (r := deliveries(db_url, sub)) and r[0][0] != "retry"
                              and r, 20, f"the {code} delivery's outcome")
            assert rows == [("failed", 1, f"redirect (HTTP {code}) not followed")], rows
        wait_until(lambda: d.metric("hookbridge_dead_letters_total") == 2, 10,
                   "both dead-lettered")
        assert d.metric('hookbridge_responses_total{class="3xx"}') == 2
        assert d.metric('hookbridge_retries_enqueued_total{tier="1s"}', default=-1) == 0
        assert topic_records(broker.bootstrap, broker.retry_prefix + "1s") == []
        assert sorted(Handler.posts) == ["/hook302", "/hook307"], Handler.posts
        # (the harness's own GET / saw it listen)
        followed = [r for r in target.requests()
                    if "urllib" not in r["headers"].get("user-agent", "")]
        assert followed == [], "a redirect was followed"
    finally:
        srv.shutdown()


# ------------------------------------------------ response header bounds

class HeaderHeavy(ChallengeAnswering):
    """Answers each POST 200, to /hookmany with 150 headers, to /hookbig with
    40 KiB of one header."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        if self.path.endswith("many"):
            for i in range(150):
                self.send_header(f"X-Filler-{i}", "x")
        else:
            self.send_header("X-Filler", "x" * (40 * 1024))
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_2xx_with_response_headers_over_the_bounds_is_retried(db_url, procs, workdir):
    """docs/security.md, Redirects, bounds and headers: "Response headers: at
    most 100 headers and 32 KiB per response; over either the transfer is
    aborted with `response headers over the limit` (retried)"; docs/design.md,
    How an answer is classified: "response headers over the bounds |
    retried".

    What the receiver sees: its 200 with 150 headers, or with a 40 KiB
    header, does not acknowledge; the delivery is handed to the first delay
    tier (it is sent again later). The operator sees status `retry` and the
    reason in the delivery log.

    Checked to fail without the behaviour: with hb_http_on_header's bound
    disabled (lib/hb_http.c), the deliveries are logged delivered."""
    srv = serve(HeaderHeavy)
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap,
                       extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1h"})
        d.wait_ready()
        subs = [register_verified(db_url, srv.url + kind, ["user.session.start"])
                for kind in ("many", "big")]
        produce(broker.bootstrap, [event("user.session.start")])
        for sub in subs:
            rows = wait_until(lambda: deliveries(db_url, sub), 20, "the delivery's outcome")
            assert len(rows) == 1 and rows[0][:2] == ("retry", 1), rows
            assert rows[0][2].startswith("response headers over the limit"), rows
        assert d.metric('hookbridge_retries_enqueued_total{tier="1h"}') == 2
        assert d.metric('hookbridge_deliveries_total{outcome="delivered"}') == 0
    finally:
        srv.shutdown()


# ---------------------------------------------------- response snippet

BIG = 1 << 20  # bytes of the endpoint's answer


class Talkative(ChallengeAnswering):
    """Answers each POST 200 with a 1 MiB body of digits."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", str(BIG))
        self.end_headers()
        chunk = b"0123456789" * 6554
        sent = 0
        while sent < BIG:
            part = chunk[:BIG - sent]
            self.wfile.write(part)
            sent += len(part)


def test_only_the_snippet_of_a_large_response_is_kept(db_url, procs, workdir):
    """docs/security.md, Redirects, bounds and headers: "Response bodies: only
    `HOOKBRIDGE_RESPONSE_SNIPPET_BYTES` (default 512) of a delivery's response
    are kept ...; the rest is read and discarded, never buffered"; README.md,
    Delivery log: delivery_attempts has "the first
    `HOOKBRIDGE_RESPONSE_SNIPPET_BYTES` of the response body".

    What the user sees: an endpoint answering 2xx with 1 MiB acknowledges
    normally (the transfer is read to its end, not failed for its size, on
    the same keep-alive connection for the next requests), and the delivery
    log keeps exactly the first 100 bytes (the setting here) of each answer.

    Checked to fail without the behaviour: with the bound removed from
    hb_http.c's body callback (hb_http_on_body copying all of the body), the
    snippet assertion fails (the column holds the whole MiB). Reasoning for
    the other half: a transfer aborted at the bound (the callback returning
    less than it was given) would log the deliveries as retry, not
    delivered."""
    srv = serve(Talkative)
    try:
        broker = Broker(procs, workdir)
        d = Dispatcher(procs, db_url, broker.bootstrap,
                       extra_env={"HOOKBRIDGE_RESPONSE_SNIPPET_BYTES": "100"})
        d.wait_ready()
        sub = register_verified(db_url, srv.url, ["user.session.start"])
        produce(broker.bootstrap, [event("user.session.start") for _ in range(3)])
        wait_until(lambda: deliveries(db_url, sub) == [("delivered", 1, "")] * 3, 20,
                   "three deliveries acknowledged")
        snippets = sql(db_url, "SELECT a.http_status, a.response_snippet FROM "
                       "hookbridge.delivery_attempts a JOIN hookbridge.deliveries d USING "
                       "(delivery_id) WHERE d.subscription_id = %s", sub)
        assert len(snippets) == 3
        for status, snippet in snippets:
            assert status == 200
            assert snippet == ("0123456789" * 10), snippet[:200]
    finally:
        srv.shutdown()


# ------------------------------------------------------------ producer

def test_the_producer_refuses_an_event_over_256_kib_and_produces_the_rest(broker):
    """docs/security.md, Redirects, bounds and headers: "The producer refuses
    an event whose encoding is over 256 KiB, with a per-line error, so
    nothing oversized enters Kafka".

    What the operator sees: the oversized line named by its number and the
    limit, the exit status non-zero, the lines before and after it on the
    events topic, and no message over 256 KiB there.

    Checked to fail without the behaviour: with producer.c's
    HB_EVENT_MAX_BYTES check removed the big event is produced (three
    messages on the topic, one over 256 KiB)."""
    small = event("user.session.start")
    big = dict(event("user.session.start"), displayMessage="x" * (300 * 1024))
    after = event("user.session.start")
    r = produce(broker.bootstrap, [small, big, after], check=False)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode != 0, out + err
    assert "produced 2, failed 1" in out, out + err
    assert re.search(r"line 2:.*262144", err), err
    msgs = topic_records(broker.bootstrap, "identity.events", want=2)
    assert len(msgs) == 2
    assert max(len(m.value) for m in msgs) <= 256 * 1024


# -------------------------------------------------------- configuration

def test_a_flag_wins_over_a_variable_and_an_empty_variable_counts_as_unset(procs):
    """docs/design.md, Configuration principles: "a flag wins over the
    variable, the variable over the default, and an empty variable counts as
    unset"; README.md, Configuration: "an empty one counts as unset".

    What the operator sees: a retrier whose ConfigMap has a bad
    HOOKBRIDGE_RETRY_JITTER (150) and whose command line overrides it with
    `--retry-jitter 10` starts (here: waits for its unreachable database,
    as documented), and so does one with HOOKBRIDGE_MAX_IN_FLIGHT set to
    the empty string; it is not stopped with exit status 2 for a value the
    flag replaced.

    The promise was false: the variable was parsed, and refused, before the
    flags were read, so the retrier exited 2 with `HOOKBRIDGE_RETRY_JITTER:
    150 is out of range [0, 100]` ("the retrier to wait for its database"
    failed on main's build). lib/hb_config.c now leaves a variable unread
    when its flag is given (unit test: flag_wins_over_an_invalid_variable)."""
    env = {"HOOKBRIDGE_DATABASE_URL": "postgresql://hookbridge@127.0.0.1:1/none",
           "HOOKBRIDGE_SECRET_KEY": SECRET_KEY, "HOOKBRIDGE_HTTP_LISTEN": "127.0.0.1:0",
           "HOOKBRIDGE_KAFKA_BROKERS": "127.0.0.1:1",
           "HOOKBRIDGE_RETRY_JITTER": "150", "HOOKBRIDGE_MAX_IN_FLIGHT": ""}
    r = procs.start("retrier", [BIN / "hookbridge-retrier", "--retry-jitter", "10"], env)
    wait_until(lambda: "database unavailable" in r.output() or not r.alive(), 10,
               "the retrier to wait for its database")
    assert r.alive(), f"exited {r.p.returncode}: {r.output()}"
    assert r.stop() == 0


# ---------------------------------------------------------------- logs

def test_log_level_warn_keeps_info_out_and_debug_adds_a_line_per_delivery(db_url, procs,
                                                                          workdir):
    """docs/operations.md, Health, shutdown and logs: "`HOOKBRIDGE_LOG_LEVEL=
    debug` adds a line per delivery"; docs/configuration.md,
    HOOKBRIDGE_LOG_LEVEL: `debug`, `info`, `warn`, `error`.

    What the operator sees: at `warn`, a dispatcher that starts, delivers and
    stops writes no info or debug line at all (only warn and error, and
    librdkafka's); at `debug` (the harness's default) each delivery has its
    own line naming its delivery_id.

    Checked to fail without the behaviour: with hb_log's level filter
    removed (lib/hb_log.c), the warn dispatcher writes info lines; reasoning
    for the debug half: the assertion names each delivery id in a debug
    line, so a build without the per-delivery line fails it."""
    broker = Broker(procs, workdir)
    rcv = Receiver(procs, workdir)
    quiet = Dispatcher(procs, db_url, broker.bootstrap, name="quiet",
                       extra_env={"HOOKBRIDGE_LOG_LEVEL": "warn"})
    loud = Dispatcher(procs, db_url, broker.bootstrap, name="loud",
                      extra_env={"HOOKBRIDGE_CONSUMER_GROUP": "loud"})
    quiet.wait_ready()
    loud.wait_ready()
    sub = register_verified(db_url, rcv.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start") for _ in range(3)])
    # Both groups read the events: each delivery twice, under one webhook-id.
    wait_until(lambda: len(rcv.posts()) == 6, 20, "both dispatchers to deliver the events")
    ids = {p["headers"]["webhook-id"] for p in rcv.posts()}
    assert len(ids) == 3
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE "
                           "subscription_id = %s AND status = 'delivered'", sub)[0][0] == 3,
               10, "the deliveries logged")
    assert quiet.proc.stop() == 0 and loud.proc.stop() == 0
    levels = {l["level"] for l in log_lines(quiet.proc) if l.get("source") != "librdkafka"}
    assert levels <= {"warn", "error"}, f"HOOKBRIDGE_LOG_LEVEL=warn wrote {levels}"
    debug_ids = {l.get("delivery_id") for l in log_lines(loud.proc) if l["level"] == "debug"}
    assert ids <= debug_ids, f"no debug line for {ids - debug_ids}"


# ---------------------------------------------------------- Kafka outage

def test_every_broker_down_is_seen_within_seconds_counted_and_said_once_each_way(db_url, procs,
                                                                                  workdir):
    """docs/operations.md, Runbooks, Kafka unreachable: "What you see:
    `hookbridge_kafka_errors_total` rising; log lines with
    `"source":"librdkafka"` ...; `/readyz` turns 503 `no Kafka broker
    reachable` within about 5 s of the consumer losing every broker, and 200
    again when one is back (one log line each way)"; Pods are not restarted
    (liveness does not depend on Kafka).

    What the operator sees: not ready within about 5 s, with that reason,
    the error counter the HookbridgeKafkaErrors alert reads rising, one
    error line when the brokers go and one info line when they are back
    however long the outage lasts, /healthz 200 throughout; and the
    service delivers again afterwards.

    Checked to fail without the behaviour: with hb_kafka_reach_down
    returning 0 (lib/hb_kafka.c), /readyz says `Kafka brokers not answering
    for 4 s` instead, and the reason assertion fails."""
    broker = Broker(procs, workdir)
    rcv = Receiver(procs, workdir)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sub = register_verified(db_url, rcv.url, ["user.session.start"])
    errors_before = d.metric("hookbridge_kafka_errors_total")

    broker.proc.signal(signal.SIGUSR1)  # the devbroker takes every broker down
    t0 = time.monotonic()
    status, body = wait_until(lambda: (r := d.get("/readyz"))[0] != 200 and r, 15,
                              "/readyz 503 without brokers")
    took = time.monotonic() - t0
    print(f"/readyz {status} {took:.1f} s after every broker went down: {body.strip()!r}")
    assert (status, body.strip()) == (503, "no Kafka broker reachable"), (status, body)
    assert took <= 5 + 2 * SLOW, f"not ready only {took:.1f} s after the brokers went"
    wait_until(lambda: d.metric("hookbridge_kafka_errors_total") > errors_before, 10,
               "hookbridge_kafka_errors_total to rise")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # an outage of some seconds: still one line
        assert d.get("/healthz")[0] == 200, "liveness failed for a Kafka outage"
        assert d.get("/readyz")[0] == 503
        time.sleep(0.5)
    broker.proc.signal(signal.SIGUSR2)
    t1 = time.monotonic()
    wait_until(lambda: d.get("/readyz")[0] == 200, 40, "ready again")
    print(f"ready again {time.monotonic() - t1:.1f} s after the brokers came back")
    msgs = [l["msg"] for l in log_lines(d.proc)]
    assert sum(m.startswith("no Kafka broker reachable") for m in msgs) == 1, msgs[-30:]
    assert sum(m.startswith("Kafka reachable again") for m in msgs) == 1, msgs[-30:]
    assert any(l.get("source") == "librdkafka" for l in log_lines(d.proc))
    produce(broker.bootstrap, [event("user.session.start")])
    t2 = time.monotonic()
    wait_until(lambda: deliveries(db_url, sub) == [("delivered", 1, "")], 30,
               "a delivery after the outage")
    print(f"delivered {time.monotonic() - t2:.1f} s after it was produced")
