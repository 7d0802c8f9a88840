"""Operating hookbridge: the configuration reference cannot drift from the
code, secrets never reach the logs, SIGTERM drains without losing or
repeating deliveries, and readiness follows the database.

Also a script: `/usr/bin/python3 tests/e2e/test_ops.py --write-config-doc [BIN_DIR]`
rewrites the generated table in docs/configuration.md from the binary.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from hbtest.opscheck import config_reference, parse_reference, reference_text  # noqa: E402
from hbtest.procs import BIN, REPO  # noqa: E402

DOC = REPO / "docs" / "configuration.md"
BEGIN = re.compile(r"^<!-- BEGIN config-reference.*-->\n", re.M)
END = "<!-- END config-reference -->"
# Read by one program outside the settings table, documented by hand.
EXTRA_VARIABLES = {"HOOKBRIDGE_MIGRATIONS_DIR"}
# The doc's example of a property librdkafka refuses.
REFUSED_EXAMPLE = "HOOKBRIDGE_KAFKA_NO_SUCH_THING"


def doc_table(text):
    m = BEGIN.search(text)
    assert m and END in text, f"{DOC}: the generated-table markers are missing"
    return text[m.end():text.index(END)]


def write_config_doc(reference):
    text = DOC.read_text()
    m = BEGIN.search(text)
    DOC.write_text(text[:m.end()] + reference + text[text.index(END):])


def json_msgs(output):
    """The "msg" of every JSON log line in a program's output."""
    out = []
    for line in output.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line)["msg"])
    return out


# ------------------------------------------------------ configuration doc


def test_configuration_doc_is_the_binarys_reference():
    """Every variable is documented with the binary's default, type, programs
    and text; a setting added to the code without regenerating fails here."""
    want = config_reference()
    got = parse_reference(doc_table(DOC.read_text()))
    problems = []
    for var in sorted(set(want) - set(got)):
        problems.append(f"{var} is not documented")
    for var in sorted(set(got) - set(want)):
        problems.append(f"{var} is documented but the program does not read it")
    for var in sorted(set(want) & set(got)):
        for field in ("default", "type", "flag", "programs"):
            if want[var][field] != got[var][field]:
                problems.append(f"{var}: {field} is {want[var][field]!r} in the code, "
                                f"{got[var][field]!r} in the doc")
    assert not problems, ("docs/configuration.md is out of date (regenerate: /usr/bin/python3 "
                          "tests/e2e/test_ops.py --write-config-doc):\n  " + "\n  ".join(problems))
    # Byte for byte, so descriptions cannot drift either.
    assert doc_table(DOC.read_text()) == reference_text(), \
        "descriptions differ: regenerate with tests/e2e/test_ops.py --write-config-doc"


def test_every_program_prints_the_same_reference():
    ref = reference_text()
    for prog in ("hookbridge-retrier", "hookbridge-producer", "hookbridge-secret"):
        assert reference_text(prog) == ref, prog
    # hookbridge-migrate prints the same table (followed by its usage).
    assert reference_text("hookbridge-migrate").startswith(ref)
    # Each program's --help lists exactly the settings whose programs column
    # names it (the column the doc's readers go by).
    table = config_reference()
    for prog in ("dispatcher", "retrier", "migrate", "producer", "secret"):
        r = subprocess.run([str(BIN / f"hookbridge-{prog}"), "--help"], capture_output=True,
                           text=True, timeout=30)
        listed = set(re.findall(r"^  (?:--[a-z-]+|-X property=value), (HOOKBRIDGE_[A-Z0-9_<>]+)",
                                r.stdout + r.stderr, re.M))
        assert listed == {v for v, d in table.items() if prog in d["programs"]}, prog


def test_every_variable_the_doc_names_is_real(tmp_path):
    """The prose and examples name only variables that exist: settings,
    passthrough properties librdkafka knows, or the documented extras (and
    those are really read)."""
    from test_deploy import librdkafka_properties
    ref = config_reference()
    props = librdkafka_properties()
    text = DOC.read_text()
    for name in sorted(set(re.findall(r"HOOKBRIDGE_[A-Z0-9_]+", text))):
        if name in ref or name in EXTRA_VARIABLES or name in ("HOOKBRIDGE_KAFKA_",
                                                              REFUSED_EXAMPLE):
            continue
        assert name.startswith("HOOKBRIDGE_KAFKA_"), f"docs name {name}, which nothing reads"
        prop = name[len("HOOKBRIDGE_KAFKA_"):].lower().replace("_", ".")
        assert prop in props, f"docs name {name}: librdkafka has no property {prop}"
    for name in EXTRA_VARIABLES:
        assert f"`{name}`" in text
    # The refused property: the program stops at start with the line the doc shows.
    line = re.search(r"^    (cannot start: .*)$", text, re.M).group(1)
    env = dict(os.environ, HOOKBRIDGE_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
               HOOKBRIDGE_HTTP_LISTEN="127.0.0.1:0", **{REFUSED_EXAMPLE: "1"})
    r = subprocess.run([str(BIN / "hookbridge-dispatcher")], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and json_msgs(r.stdout + r.stderr)[-1] == line
    # HOOKBRIDGE_MIGRATIONS_DIR: hookbridge-migrate looks where it points.
    missing = tmp_path / "no-such-dir"
    env = dict(os.environ, HOOKBRIDGE_MIGRATIONS_DIR=str(missing),
               HOOKBRIDGE_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    r = subprocess.run([str(BIN / "hookbridge-migrate"), "status"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and str(missing) in r.stdout + r.stderr


# ------------------------------------------------------- running services
# (imports here so that the --write-config-doc script needs no test deps)

import base64  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

from hbtest.procs import SECRET_KEY, SLOW, free_port, wait_until  # noqa: E402
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier, produce  # noqa: E402
from hbtest.tcpproxy import TcpProxy  # noqa: E402

LOG_SECRET = "whsec_" + base64.b64encode(b"ops-test signing key 0123456789!").decode()
LOG_AUTH_VALUE = "Bearer ops-auth-9d1c4e77a2"
DB_PASSWORD = "pg-Pa55-ops-4417"
SASL_PASSWORD = "sasl-pw-ops-8c2f"


class SlowReceiver(Receiver):
    """hookbridge-receiver answering each POST after delay_ms, with enough
    server threads (one request per thread at a time) for `threads`
    concurrent requests."""

    def __init__(self, group, workdir, secret, auth, delay_ms, threads, name="slow-receiver"):
        self.port = free_port()
        self.record = Path(workdir) / f"{name}.jsonl"
        self.name = name
        self.group = group
        self.argv = [BIN / "hookbridge-receiver", "--listen", f"127.0.0.1:{self.port}",
                     "--record", self.record, "--secret", secret, "--auth", auth,
                     "--delay-ms", str(delay_ms), "--threads", str(threads)]
        self.proc = group.start(name, self.argv)
        self.url = f"http://127.0.0.1:{self.port}/hook"
        wait_until(self._up, 10, "the receiver to listen")


def metric(svc, name, labels=""):
    status, text = svc.get("/metrics")
    if status != 200:
        return None
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def assert_json_lines(proc, component):
    """Every line a service writes is one JSON object with time, level,
    component and msg."""
    lines = [l for l in proc.output().splitlines() if l.strip()]
    assert lines, f"{proc.name} wrote nothing"
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"{proc.name}: not a JSON line: {line[:300]}")
        assert obj.get("level") in ("debug", "info", "warn", "error"), line
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", obj.get("time", "")), line
        assert obj.get("component") == component, line
        assert isinstance(obj.get("msg"), str), line


def test_secrets_never_reach_the_logs(pg_cluster, db_url, procs, workdir):
    """Deliveries that succeed, fail and are retried, and a verification that
    fails, all at debug level: the dispatcher's and the retrier's output never
    contain the auth value, the signing secret (whsec_ form, raw base64, or
    the key's bytes in hex), the database password, the Kafka SASL password or
    the sealing key (HOOKBRIDGE_SECRET_KEY), and every line is JSON with time,
    level and component; nor do their /metrics and /readyz pages."""
    from test_delivery import event, register_verified, sql

    # The database URL carries a password (the test cluster trusts loopback,
    # so any password is accepted and the URL works).
    url = db_url.replace("postgresql://postgres@", f"postgresql://postgres:{DB_PASSWORD}@")
    assert DB_PASSWORD in url
    schedule = "1s,1s"
    broker = Broker(procs, workdir, retry_schedule=schedule)
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0",
           # Passed through to librdkafka (unused without SASL, but parsed).
           "HOOKBRIDGE_KAFKA_SASL_USERNAME": "hookbridge",
           "HOOKBRIDGE_KAFKA_SASL_PASSWORD": SASL_PASSWORD}
    ok = Receiver(procs, workdir, secret=LOG_SECRET, auth=f"Authorization: {LOG_AUTH_VALUE}",
                  name="receiver-ok")
    failing = Receiver(procs, workdir, secret=LOG_SECRET,
                       auth=f"Authorization: {LOG_AUTH_VALUE}", status=500,
                       name="receiver-500")
    d = Dispatcher(procs, url, broker.bootstrap, extra_env=env)
    r = Retrier(procs, url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    r.wait_ready()
    opts = {"auth_header": "Authorization", "auth_value": LOG_AUTH_VALUE, "secret": LOG_SECRET}
    register_verified(url, ok.url, ["user.session.start"], opts)
    bad = register_verified(url, failing.url, ["user.session.start"], opts)
    # A verification that fails: the endpoint does not echo the challenge.
    unverifiable = sql(url, "SELECT hookbridge.register('nope', %s, ARRAY['user.session.start'],"
                       " %s::jsonb)", f"http://127.0.0.1:{d.health_port}/healthz",
                       json.dumps(opts))[0][0]
    sql(url, "SELECT hookbridge.verify(%s)", unverifiable)

    events = [event("user.session.start") for _ in range(3)]
    produce(broker.bootstrap, events)
    wait_until(lambda: len(ok.events()) == 3, 30, "the deliveries to the healthy endpoint")
    # The failing endpoint: first attempt, two retries, then the dead-letter topic.
    wait_until(lambda: sql(url, "SELECT count(*) FROM hookbridge.deliveries WHERE "
                           "subscription_id=%s AND status='failed'", bad)[0][0] == 3 or None,
               60, "the failing deliveries to be dead-lettered")
    wait_until(lambda: sql(url, "SELECT verification FROM hookbridge.subscriptions WHERE id=%s",
                           unverifiable)[0][0] == "failed" or None, 20, "the failed verification")
    assert len(failing.posts()) == 9
    assert all(p["verified"] for p in ok.posts() + failing.posts()), "signed with our secret"
    # The failures were logged, with the ids an operator searches by.
    lines = [json.loads(l) for p in (d.proc, r.proc) for l in p.output().splitlines()
             if l.startswith("{")]
    failures = [l for l in lines if re.match(r"attempt \d+ failed|delivery failed", l["msg"])]
    assert any("HTTP 500" in f["msg"] for f in failures), "no failed attempt was logged"
    for f in failures:
        assert f.get("delivery_id") and f.get("subscription_id") == bad, f
    assert "endpoint verification failed" in d.proc.output()
    pages = {svc: svc.get("/metrics")[1] + svc.get("/readyz")[1] for svc in (d, r)}
    assert d.proc.stop() == 0 and r.proc.stop() == 0

    raw = LOG_SECRET.removeprefix("whsec_")
    key = base64.b64decode(raw)
    needles = {
        "auth value": LOG_AUTH_VALUE,
        "auth token": LOG_AUTH_VALUE.split()[1],
        "whsec_ secret": LOG_SECRET,
        "secret (base64)": raw,
        "secret (url-safe base64)": base64.urlsafe_b64encode(key).decode().rstrip("="),
        "secret (hex)": key.hex(),
        "database password": DB_PASSWORD,
        "Kafka SASL password": SASL_PASSWORD,
        "sealing key": SECRET_KEY,
        "sealing key (hex)": base64.b64decode(SECRET_KEY).hex(),
    }
    for svc, component in ((d, "dispatcher"), (r, "retrier")):
        out = svc.proc.output() + pages[svc]
        for what, value in needles.items():
            assert value not in out and value.lower() not in out.lower(), \
                f"the {what} appears in the {component}'s log or its /metrics or /readyz"
        assert_json_lines(svc.proc, component)


def test_sigterm_drains_in_flight_deliveries_then_a_restart_resends_nothing_acknowledged(
        db_url, broker, procs, workdir):
    """A slow endpoint (1 s per request), a stream of events, SIGTERM while
    requests are in flight: the dispatcher takes no new events, lets the
    requests it started finish, writes them to the delivery log, commits and
    exits 0 within the drain bound. Restarted, it delivers the rest, and no
    delivery the endpoint acknowledged is sent a second time."""
    from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql

    receiver = SlowReceiver(procs, workdir, SECRET, f"Authorization: {AUTH_VALUE}",
                            delay_ms=1000, threads=8)
    drain_s = int(20 * SLOW)
    # The endpoint is slow, not hung: its queue may wait (no retrier runs here),
    # and so may a request inside the receiver, whose threads each serve their
    # connections one request at a time: on a loaded machine one waited 9 s
    # there, timed out (10 s by default) 5 ms before its 2xx, and was
    # acknowledged without the dispatcher knowing (CI, 6 workers).
    env = {"HOOKBRIDGE_MAX_HOST_CONNECTIONS": "8", "HOOKBRIDGE_SHUTDOWN_TIMEOUT": f"{drain_s}s",
           "HOOKBRIDGE_MAX_QUEUE_WAIT": "10m", "HOOKBRIDGE_REQUEST_TIMEOUT": f"{drain_s}s"}
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    sub = register_verified(db_url, receiver.url, ["user.session.start"])

    before = [event("user.session.start") for _ in range(14)]
    after = [event("user.session.start") for _ in range(16)]
    produce(broker.bootstrap, before)
    wait_until(lambda: len(receiver.events()) >= 2 and (metric(d, "hookbridge_requests_in_flight")
                                                         or 0) >= 1,
               30, "acknowledged deliveries and more in flight")
    t0 = time.monotonic()
    d.proc.signal(signal.SIGTERM)
    # The stream goes on: these arrive after the signal and must wait for the restart.
    produce(broker.bootstrap, after)
    rc = d.proc.p.wait(60 * SLOW)
    took = time.monotonic() - t0
    out = d.proc.output()
    assert rc == 0, out[-3000:]
    assert took < drain_s + 10 * SLOW, f"stopping took {took:.1f}s"
    m = re.search(r"stopping: (\d+) deliveries in flight", out)
    assert m and int(m.group(1)) > 0, "SIGTERM came while deliveries were in flight"
    assert "abandoning" not in out, "in-flight deliveries were abandoned within the bound"

    first = receiver.posts()
    acked = {p["headers"]["webhook-id"] for p in first if 200 <= p["status"] < 300}
    first_events = {e["uuid"] for _, e in receiver.events()}
    assert not first_events & {e["uuid"] for e in after}, \
        "events produced after SIGTERM were consumed by the stopping dispatcher"
    # What the endpoint acknowledged, the dispatcher saw and logged before exiting.
    logged = {row[0] for row in sql(db_url, "SELECT a.delivery_id::text FROM "
                                    "hookbridge.delivery_attempts a JOIN hookbridge.deliveries "
                                    "d USING (delivery_id) WHERE d.subscription_id=%s AND "
                                    "a.outcome='delivered'", sub)}
    assert acked <= logged, f"{len(acked - logged)} acknowledged deliveries not in the log"

    d2 = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env, name="dispatcher-restarted")
    want = {e["uuid"] for e in before + after}
    wait_until(lambda: want <= {e["uuid"] for _, e in receiver.events()}, 60,
               "every event after the restart")
    time.sleep(2)  # a resend would show up by now
    resent = [p for p in receiver.posts()[len(first):] if p["headers"]["webhook-id"] in acked]
    assert not resent, f"{len(resent)} acknowledged deliveries were sent again after the restart"
    assert d2.proc.stop() == 0


def test_a_second_sigterm_stops_at_once_and_loses_nothing(db_url, broker, procs, workdir):
    """SIGTERM while requests to a slow endpoint (3 s each) are in flight: the
    dispatcher drains. A second SIGTERM (an impatient operator, or a pod's
    grace period ending in a second signal) exits at once, with status 1, not
    after the drain. What it abandoned (nothing of it in the delivery log) is
    consumed again after a restart, sent again and logged delivered."""
    from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql

    # Two connections can share one of the receiver's threads (each answers
    # one request at a time): the request timeout leaves room for that.
    receiver = SlowReceiver(procs, workdir, SECRET, f"Authorization: {AUTH_VALUE}",
                            delay_ms=3000, threads=16)
    env = {"HOOKBRIDGE_MAX_HOST_CONNECTIONS": "8", "HOOKBRIDGE_SHUTDOWN_TIMEOUT": "30s",
           "HOOKBRIDGE_REQUEST_TIMEOUT": "30s"}
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    events = [event("user.session.start") for _ in range(6)]
    produce(broker.bootstrap, events)
    wait_until(lambda: (metric(d, "hookbridge_requests_in_flight") or 0) >= 1, 30,
               "requests in flight")
    d.proc.signal(signal.SIGTERM)
    wait_until(lambda: "stopping:" in d.proc.output(), 10 * SLOW, "the drain to start")
    t0 = time.monotonic()
    d.proc.signal(signal.SIGTERM)
    rc = d.proc.p.wait(30)
    took = time.monotonic() - t0
    assert rc == 1, d.proc.output()[-2000:]
    assert took < 2 * SLOW, f"the second SIGTERM took {took:.1f}s to stop it"

    delivered = "SELECT count(*) FROM hookbridge.deliveries WHERE subscription_id=%s AND " \
                "status='delivered'"
    assert sql(db_url, delivered, sub)[0][0] < len(events), "nothing was left in flight"
    d2 = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env, name="dispatcher-restarted")
    wait_until(lambda: sql(db_url, delivered, sub)[0][0] == len(events) or None, 60 * SLOW,
               "every event delivered and logged after the restart")
    assert {e["uuid"] for e in events} <= {e["uuid"] for _, e in receiver.events()}
    assert d2.proc.stop() == 0


def test_readyz_follows_the_database_and_recovers(pg_cluster, db_url, broker, procs):
    """Database unreachable at start: alive, not ready. It comes up: ready.
    It goes away for 20 s: not ready (still alive, no restart needed), the
    runbook's warn line. Back: ready within about 5 s (the reconnection
    back-off stops at 5 s; it used to double up to 30 s, so readiness came
    back up to 11 s after a 20 s outage)."""
    proxy = TcpProxy(pg_cluster.port)
    url = db_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/")
    d = Dispatcher(procs, url, broker.bootstrap)
    try:
        wait_until(lambda: "database unavailable" in d.proc.output(), 15, "the database error")
        assert d.get("/healthz")[0] == 200
        assert d.get("/readyz")[0] == 503
        proxy.start()
        d.wait_ready(30)
        proxy.cut()
        wait_until(lambda: d.get("/readyz")[0] == 503, 20, "readiness to drop with the database")
        status, body = d.get("/readyz")
        assert "database" in body, body
        assert d.get("/healthz")[0] == 200, "liveness must not fail for a database outage"
        time.sleep(20)
        assert d.proc.alive()
        assert re.search(r'"level":"warn".*"msg":"database: .*; next attempt in [1-5] s"',
                         d.proc.output()), d.proc.output()[-2000:]
        proxy.start()
        back = time.monotonic()
        wait_until(lambda: d.get("/readyz")[0] == 200, 30, "readiness to come back")
        assert time.monotonic() - back <= 5 + 3 * SLOW, "readiness came back late"
        assert d.proc.stop() == 0
    finally:
        proxy.close()


def test_operations_doc_lists_exactly_the_exported_metrics(db_url, broker, procs, tmp_path):
    """docs/operations.md's metric table names every metric family the
    dispatcher, the retrier and the ingest endpoint (with its spool, as
    deploy/k8s/optional/ingest runs it) export once running, and nothing
    else."""
    from hbtest.ingest import Ingest
    ing = Ingest(procs, broker.bootstrap,
                 extra_env={"HOOKBRIDGE_INGEST_SPOOL_DIR": str(tmp_path / "ingest-spool")})
    exported = set(re.findall(r"^# TYPE (\S+) ", ing.ops("/metrics")[1], re.M))
    assert ing.proc.stop() == 0
    for cls in (Dispatcher, Retrier):
        svc = cls(procs, db_url, broker.bootstrap)
        svc.wait_ready()
        # Per-partition series appear once partitions are assigned and measured.
        text = wait_until(lambda: (r := svc.get("/metrics"))[0] == 200 and
                          "hookbridge_consumer_lag{" in r[1] and r[1], 20,
                          f"{cls.program} /metrics with the consumer lag")
        exported |= set(re.findall(r"^# TYPE (\S+) ", text, re.M))
        assert svc.proc.stop() == 0
    doc = (REPO / "docs" / "operations.md").read_text()
    table = set(re.findall(r"^\| `(hookbridge_[a-z_]+)(?:\{[^}]*\})?` \|", doc, re.M))
    assert exported, "no metric families exported"
    assert not exported - table, f"exported but not documented: {sorted(exported - table)}"
    assert not table - exported, f"documented but not exported: {sorted(table - exported)}"


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "--write-config-doc":
        sys.exit("usage: test_ops.py --write-config-doc [BIN_DIR]")
    program = (Path(sys.argv[2]) if len(sys.argv) > 2 else BIN) / "hookbridge-dispatcher"
    r = subprocess.run([str(program), "--config-reference"], capture_output=True, text=True,
                       check=True)
    write_config_doc(r.stdout)
    print(f"{DOC}: configuration table rewritten from {program}")


def test_sigterm_with_every_broker_down_exits_within_the_grace_period(db_url, broker, procs,
                                                                       workdir):
    """Every broker down (the devbroker's SIGUSR1) when the dispatcher is told
    to stop: the final offset commit and the group's leave cannot reach a
    broker. It still exits 0 within the drain plus 10 s, the margin
    terminationGracePeriodSeconds gives it (docs/operations.md), not killed
    by Kubernetes later; what it delivered is not delivered again by the
    next dispatcher once the brokers are back (the offsets were stored, and
    committed when they could be, or the events are consumed again: at least
    once, checked through the log)."""
    from test_delivery import event, register_verified, sql

    receiver = Receiver(procs, workdir)
    env = {"HOOKBRIDGE_SHUTDOWN_TIMEOUT": "5s"}
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    events = [event("user.session.start") for _ in range(3)]
    produce(broker.bootstrap, events)
    wait_until(lambda: len(receiver.events()) == 3, 30, "the deliveries")
    broker.proc.signal(signal.SIGUSR1)
    try:
        time.sleep(1)
        t0 = time.monotonic()
        d.proc.signal(signal.SIGTERM)
        rc = d.proc.p.wait(120)
        took = time.monotonic() - t0
    finally:
        broker.proc.signal(signal.SIGUSR2)
    assert rc == 0, d.proc.output()[-2000:]
    assert took <= 5 + 10, f"stopping with the brokers down took {took:.1f}s"
    d2 = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env, name="dispatcher-again")
    d2.wait_ready()
    logged = "SELECT count(*) FROM hookbridge.deliveries WHERE subscription_id=%s"
    assert sql(db_url, logged, sub)[0][0] == 3
    assert d2.proc.stop() == 0
