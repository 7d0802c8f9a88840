"""Review 27: a platform team's first week with hookbridge in production.

Each test is a promise of README.md, docs/configuration.md or
docs/operations.md that did not hold on 08777cb."""
import os
import re
import shutil
import signal
import subprocess
import time

from hbtest.endpoints import ChallengeAnswering, hung_listeners, posted_uuids, serve
from hbtest.lifecycle import event, sql
from hbtest.pg import MIGRATIONS
from hbtest.procs import BIN, SECRET_KEY, SLOW, free_port, http_get, wait_until
from hbtest.stack import Broker, Dispatcher, Retrier, produce
from hbtest.tcpproxy import TcpProxy


def test_a_database_one_migration_behind_keeps_the_new_services_not_ready_until_migrated(
        procs, workdir, pg_cluster):
    """Upgrading with the migrate Job (docs/operations.md) but rolling the
    Deployments before it ran: the new dispatcher and retrier start on a
    database without this release's newest migration. They must say so on
    /readyz (which stops the rollout) rather than be ready and fail later;
    once `hookbridge-migrate up` has run they become ready by themselves."""
    versions = sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    newest = versions[-1]
    tree = workdir / "previous"
    (tree / "migrations").mkdir(parents=True)
    for f in versions[:-1]:
        shutil.copy(f, tree / "migrations" / f.name)
    # Only the state: this release's sql/ may need what the newest migration
    # adds, and the services' first question is the schema's version.
    name = pg_cluster.create_database("behind")
    url = pg_cluster.url(name)
    try:
        pg_cluster.migrate(name, "up", migrations_dir=tree / "migrations")
        broker = Broker(procs, workdir)
        services = [Dispatcher(procs, url, broker.bootstrap), Retrier(procs, url, broker.bootstrap)]
        want = "database not ready: it lacks this release's schema (run hookbridge-migrate up)"
        for svc in services:
            wait_until(lambda: svc.get("/readyz") == (503, want + "\n") and
                       "this release's migration" in svc.proc.output(), 20,
                       f"the {svc.program} to name the missing migration")
        time.sleep(1.5)  # reconnected again: still not ready
        for svc in services:
            assert svc.get("/readyz") == (503, want + "\n"), svc.get("/readyz")
            assert (f"this release's migration {newest.name[:4]} is not applied (the newest "
                    f"applied is {versions[-2].name[:4]})") in svc.proc.output()
        pg_cluster.migrate(name, "up")
        for svc in services:
            svc.wait_ready(timeout=15)
    finally:
        pg_cluster.drop_database(name)


# A service's settings with nothing to reach: each bad value below must stop
# it at once, before it connects to anything.
DEAD_ENDS = {"HOOKBRIDGE_DATABASE_URL": "postgresql://hb:pw@127.0.0.1:1/hb",
             "HOOKBRIDGE_SECRET_KEY": SECRET_KEY, "HOOKBRIDGE_HTTP_LISTEN": "127.0.0.1:0"}


def start_error(argv, env, timeout=5):
    """Runs a program that must refuse its settings: (exit status, stderr)."""
    try:
        r = subprocess.run([str(a) for a in argv], env=dict(os.environ, **env), timeout=timeout,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"{argv[0]} still running after {timeout} s"
    return r.returncode, r.stdout + r.stderr


def test_a_kafka_broker_list_librdkafka_would_misread_stops_every_program_at_start():
    """librdkafka reads a port it cannot parse as 0 and one over 65535
    modulo 65536 (kafka:99999 is port 34463), and a list with no host in it
    (a blank from a template, a lone comma, an entry whose protocol:// is not
    security.protocol's) as no broker at all; in each
    case the services ran on, trying for ever, not ready for a reason that
    did not name the setting, and `hookbridge-migrate topics` failed after
    30 s on "the cluster's metadata" (resolving kafka:34463). Now each
    program stops at once, naming
    HOOKBRIDGE_KAFKA_BROKERS and the entry, exit status 2 (migrate: 1);
    the forms librdkafka does read still start."""
    programs = [([BIN / "hookbridge-dispatcher"], 2), ([BIN / "hookbridge-retrier"], 2),
                ([BIN / "hookbridge-producer", "--generate", "1"], 2),
                ([BIN / "hookbridge-migrate", "topics", "--check"], 1)]
    bad = {" ": "no broker in it", ",": "no broker in it", " , ": "no broker in it",
           "kafka:99999": '"kafka:99999" has no valid port (1 to 65535)',
           "kafka-0:9093,kafka-1:9o93": '"kafka-1:9o93" has no valid port',
           "kafka:0": '"kafka:0" has no valid port', "kafka:": '"kafka:" has no valid port',
           ":9092": '":9092" has no host', "[]:9092": '"[]:9092" is not [IPv6 address]:port',
           # an advertised listener copied with its protocol, the passthrough
           # not set to it: librdkafka drops the entry ("No brokers configured")
           "SSL://kafka-0:9093": '"SSL://kafka-0:9093" names protocol SSL, but '
                                 'security.protocol is plaintext'}
    for value, why in bad.items():
        for argv, status in programs:
            rc, out = start_error(argv, dict(DEAD_ENDS, HOOKBRIDGE_KAFKA_BROKERS=value))
            assert rc == status and f"HOOKBRIDGE_KAFKA_BROKERS: {why}" in out, \
                (argv[0].name, value, rc, out[-600:])
            assert len(out.strip().splitlines()) == 1, out
    # Read by librdkafka as written: not refused (each waits for its broker).
    running = {}
    for value in ("127.0.0.1:1", "kafka-0:9093, kafka-1:9093", "[::1]:1", "::1",
                  "PLAINTEXT://127.0.0.1:1", "127.0.0.1:1,,"):
        running[value] = subprocess.Popen(
            [BIN / "hookbridge-dispatcher"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=dict(os.environ, **DEAD_ENDS,
                                                HOOKBRIDGE_KAFKA_BROKERS=value))
    time.sleep(1.5)
    try:
        assert {v: p.poll() for v, p in running.items()} == {v: None for v in running}
    finally:
        for p in running.values():
            p.kill()
            p.wait()


def consumed(port):
    """hookbridge_messages_consumed_total on the health port; 0 unanswered."""
    status, body = http_get(port, "/metrics")
    m = re.search(r"^hookbridge_messages_consumed_total ([0-9.]+)$", body or "", re.M)
    return float(m.group(1)) if status == 200 and m else 0


def test_a_low_open_files_limit_is_raised_or_refused_not_hit_under_load(procs, workdir, db_url,
                                                                        broker):
    """Every connection to an endpoint is an open file. Under a soft limit
    of 1024 (a shell's, containerd 2's) and a hard one far above it, the
    dispatcher kept the soft one: a hung endpoint host taking more
    connections than that made every new socket fail (EMFILE), so /healthz
    stopped answering (the liveness probe restarts the pod), the healthy
    endpoints got nothing, and the hung host's circuit opened on failures
    that were the dispatcher's own. Now the soft limit is raised to the hard
    one; a hard limit below what HOOKBRIDGE_MAX_CONNECTIONS and
    HOOKBRIDGE_MAX_IN_FLIGHT need stops the start, naming them."""
    base = dict(DEAD_ENDS, HOOKBRIDGE_KAFKA_BROKERS="127.0.0.1:1")
    for program in ("hookbridge-dispatcher", "hookbridge-retrier"):
        rc, out = start_error(["prlimit", "--nofile=600:600", "--", BIN / program], base)
        assert rc == 2 and out.startswith(
            f"{program}: HOOKBRIDGE_MAX_CONNECTIONS (1024) and HOOKBRIDGE_MAX_IN_FLIGHT (512) "
            "need 1280 open files, but this process may open 600"), (rc, out[-600:])
        assert len(out.strip().splitlines()) == 1, out

    got = []

    class Answering(ChallengeAnswering):
        def do_POST(self):
            got.extend(posted_uuids(self))
            self.answer()

    healthy = serve(Answering)
    hung = hung_listeners(1, 512)
    try:
        sql(db_url, "SELECT hookbridge.register('hung', %s, ARRAY['user.session.start'], '{}')",
            f"http://127.0.0.1:{hung[0].getsockname()[1]}/hook")
        sql(db_url, "SELECT hookbridge.register('ok', %s, ARRAY['user.session.end'], '{}')",
            healthy.url)
        sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                    "status = 'active'")
        port = free_port()
        d = procs.start("dispatcher", ["prlimit", "--nofile=128:4096", "--",
                                       BIN / "hookbridge-dispatcher"], {
            "HOOKBRIDGE_DATABASE_URL": db_url, "HOOKBRIDGE_SECRET_KEY": SECRET_KEY,
            "HOOKBRIDGE_KAFKA_BROKERS": broker.bootstrap,
            "HOOKBRIDGE_HTTP_LISTEN": f"127.0.0.1:{port}", "HOOKBRIDGE_ALLOW_HTTP": "1",
            "HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS": "1", "HOOKBRIDGE_MAX_IN_FLIGHT": "200",
            "HOOKBRIDGE_MAX_HOST_CONNECTIONS": "200", "HOOKBRIDGE_REQUEST_TIMEOUT": "30s",
            "HOOKBRIDGE_MAX_QUEUE_WAIT": "20s", "HOOKBRIDGE_LOG_LEVEL": "info"})
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 30, "the dispatcher to be ready")
        produce(broker.bootstrap, [event("user.session.start") for _ in range(200)])
        wait_until(lambda: consumed(port) >= 200, 15, "the dispatcher to read the 200 events")
        # 150 of them in flight to the hung host (a quarter of the slots is
        # kept for hosts that answer): more connections than the soft limit
        wait_until(lambda: len(os.listdir(f"/proc/{d.pid}/fd")) > 150, 10,
                   "150 connections to the hung host")
        evs = [event("user.session.end") for _ in range(3)]
        produce(broker.bootstrap, evs)
        wait_until(lambda: len(got) >= 3, 10, "the healthy endpoint's deliveries")
        assert sorted(got) == sorted(e["uuid"] for e in evs)
        assert http_get(port, "/healthz") == (200, "ok\n")
        assert "open files limit raised from 128 to the hard limit, 4096" in d.output()
        assert "Too many open files" not in d.output()
    finally:
        healthy.shutdown()
        for s in hung:
            s.close()


def test_a_passthrough_that_would_store_offsets_at_consumption_stops_the_services_at_start():
    """docs/configuration.md marks enable.auto.offset.store *keep*: the
    at-least-once guarantee rests on it. A shared "standard Kafka client"
    ConfigMap with HOOKBRIDGE_KAFKA_ENABLE_AUTO_OFFSET_STORE=true (librdkafka's
    own default) was taken: librdkafka then stored each offset as the
    message was handed over and committed it within a second, so the events
    whose deliveries were in flight at a crash were never delivered (on
    08777cb: 5 events in flight to an endpoint that had not answered yet,
    SIGKILL, restart: none sent again; without the setting all 5 are). Now
    the dispatcher and the retrier refuse it at start, naming it, exit 2."""
    env = dict(DEAD_ENDS, HOOKBRIDGE_KAFKA_BROKERS="127.0.0.1:1")
    for program in ("hookbridge-dispatcher", "hookbridge-retrier"):
        for argv, extra in (([], {"HOOKBRIDGE_KAFKA_ENABLE_AUTO_OFFSET_STORE": "true"}),
                            (["-X", "enable.auto.offset.store=1"], {})):
            rc, out = start_error([BIN / program, *argv], dict(env, **extra))
            assert rc == 2 and out.startswith(
                f"{program}: HOOKBRIDGE_KAFKA_ENABLE_AUTO_OFFSET_STORE "
                "(enable.auto.offset.store) must stay false"), (program, argv, rc, out[-600:])
            assert len(out.strip().splitlines()) == 1, out


def test_a_value_with_a_line_end_is_refused_in_one_line():
    """A ConfigMap made --from-file or a YAML block scalar ends a value in a
    line end. The settings that refuse it quoted it as it was, so the "one
    line naming the variable" (docs/configuration.md) came out as two, the
    second a stray quote that log collectors keep as an event of its own.
    Now a control character in the error is written escaped."""
    env = dict(DEAD_ENDS, HOOKBRIDGE_KAFKA_BROKERS="127.0.0.1:1")
    cases = [([BIN / "hookbridge-dispatcher"], "HOOKBRIDGE_REQUEST_TIMEOUT", "10s\n", 2,
              '"10s\\n" is not a duration'),
             ([BIN / "hookbridge-retrier"], "HOOKBRIDGE_MAX_IN_FLIGHT", "512\r\n", 2,
              '"512\\r\\n" is not an integer'),
             ([BIN / "hookbridge-dispatcher"], "HOOKBRIDGE_ALLOW_HTTP", "1\n", 2,
              '"1\\n" is not a boolean'),
             ([BIN / "hookbridge-retrier"], "HOOKBRIDGE_LOG_LEVEL", "info\n", 2,
              '"info\\n" is not one of'),
             ([BIN / "hookbridge-dispatcher"], "HOOKBRIDGE_RETRY_SCHEDULE", "5s,5m\n", 2,
              '"5m\\n" is not a delay'),
             ([BIN / "hookbridge-producer", "--generate", "1"], "HOOKBRIDGE_INGEST_TIMEOUT",
              "\t10s", 2, '"\\t10s" is not a duration'),
             ([BIN / "hookbridge-migrate", "topics", "--check"], "HOOKBRIDGE_TOPIC_PARTITIONS",
              "12\n", 1, '"12\\n" is not an integer')]
    for argv, var, value, status, why in cases:
        rc, out = start_error(argv, dict(env, **{var: value}))
        assert rc == status and f"{var}: " in out and why in out, (var, rc, out[-600:])
        assert len(out.strip("\n").splitlines()) == 1, (var, out)


def test_readyz_names_the_database_and_the_broker_when_both_are_out(procs, workdir, broker,
                                                                     db_url, pg_cluster):
    """With the broker frozen and PostgreSQL then gone too, /readyz named
    only the broker: whoever fixed Kafka first then met a second outage the
    probe had not mentioned. Now it names both, promptly, and the health
    port goes on answering."""
    proxy = TcpProxy(pg_cluster.port)
    proxy.start()
    svc = Dispatcher(procs, db_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/"),
                     broker.bootstrap)
    try:
        svc.wait_ready()
        broker.proc.signal(signal.SIGSTOP)
        wait_until(lambda: svc.get("/readyz")[1].startswith("Kafka brokers not answering"),
                   10, "not ready for the broker")
        proxy.cut()
        status, body = wait_until(lambda: (r := svc.get("/readyz"))[1].rstrip().endswith(
            "; database not connected") and r, 10, "not ready for the database too")
        assert status == 503 and body.startswith("Kafka brokers not answering for "), body
        t0 = time.monotonic()
        assert svc.get("/healthz") == (200, "ok\n") and svc.get("/metrics")[0] == 200
        # a second, stretched by SLOW as every bound here: the sanitizer pass
        # on a loaded 2-core machine slows both answers
        assert time.monotonic() - t0 < 1 * SLOW
        broker.proc.signal(signal.SIGCONT)
        wait_until(lambda: svc.get("/readyz") == (503, "database not connected\n"), 15,
                   "only the database once the broker answers")
        proxy.start()
        svc.wait_ready(timeout=15)
    finally:
        broker.proc.signal(signal.SIGCONT)
        proxy.close()
