"""Review 27: a platform team's first week with hookbridge in production.

Each test is a promise of README.md, docs/configuration.md or
docs/operations.md that did not hold on 08777cb."""
import os
import shutil
import subprocess
import time

from hbtest.lifecycle import sql
from hbtest.pg import MIGRATIONS
from hbtest.procs import BIN, SECRET_KEY, wait_until
from hbtest.stack import Broker, Dispatcher, Retrier

SQL_DIR = MIGRATIONS.parent / "sql"


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
    shutil.copytree(SQL_DIR, tree / "sql")
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
    (a blank from a template, a lone comma) as no broker at all; in each
    case every program ran on, trying for ever, not ready for a reason that
    did not name the setting. Now each stops at once, naming
    HOOKBRIDGE_KAFKA_BROKERS and the entry, exit status 2 (migrate: 1);
    the forms librdkafka does read still start."""
    programs = [([BIN / "hookbridge-dispatcher"], 2), ([BIN / "hookbridge-retrier"], 2),
                ([BIN / "hookbridge-producer", "--generate", "1"], 2),
                ([BIN / "hookbridge-migrate", "topics", "--check"], 1)]
    bad = {" ": "no broker in it", ",": "no broker in it", " , ": "no broker in it",
           "kafka:99999": '"kafka:99999" has no valid port (1 to 65535)',
           "kafka-0:9093,kafka-1:9o93": '"kafka-1:9o93" has no valid port',
           "kafka:0": '"kafka:0" has no valid port', "kafka:": '"kafka:" has no valid port',
           ":9092": '":9092" has no host', "[]:9092": '"[]:9092" is not [IPv6 address]:port'}
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
