"""The spine's tools as a user runs them (issue 2): the embedded broker, the
example receiver, the migration lock and the producer's --rate and defaults.
Each test says what the user sees."""
import io
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone

import psycopg2
import pytest
from kafka import KafkaConsumer

from hbtest.pg import MIGRATIONS
from hbtest.procs import (BIN, PORTS_REMEMBERED, REPO, SLOW, free_port, port_range,
                          port_slot, wait_until)
from hbtest.stack import Broker, Receiver, produce, topic_records
from hbtest.webhooks import expected_signature

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AUTH = "Bearer tools-token-51c2"
# migrations/migrate.c, MIGRATE_LOCK_KEY: "hookbrdg" as a bigint
MIGRATE_LOCK_KEY = 7526676533394417767


# --- the test stack's ports ------------------------------------------------------


@pytest.mark.no_programs
def test_the_test_stack_never_hands_out_one_port_twice(monkeypatch):
    """A server started in the background may not listen yet when the next
    port is chosen, and the kernel can give the same free port again: CI once
    saw a dispatcher and its receiver given one port, so the dispatcher could
    not start ('cannot listen on ...: address in use'). Without the memory of
    what was handed out, 1,000 picks would repeat about 130 ports with 6
    workers (22 in a run without workers), and the shell's 100 picks from
    300 to 600 ports about 8 to 16 (the shell part would pass about 1 time in
    3,800 at worst: it chose 400 from the worker's whole class, 10 to 60 s of
    starting Python, and passed 1 time in 30 in a run without workers)."""
    ports = [free_port() for _ in range(PORTS_REMEMBERED)]
    assert len(set(ports)) == len(ports)

    # A long run goes on choosing: the memory keeps the last 1,000. It kept
    # every port a worker had handed out, and once those covered the
    # worker's class (about 2,800 ports with 8 workers) the next choice
    # spun forever: the worker hung, its tests never started. Here 3,000
    # choices from a part of this worker's class that holds 1,400 to 2,800
    # ports whatever the number of workers (a fixed 16 parts left 12
    # workers' classes 950 ports, fewer than the 1,000 remembered).
    i, n = port_slot()
    lo, hi = port_range()
    m = max(1, (hi - lo + 1) // (n * 1400))  # the class i mod n*m lies within i mod n
    monkeypatch.setenv("HOOKBRIDGE_PORT_SLOT", f"{i}/{n * m}")
    assert PORTS_REMEMBERED < (hi - lo) // (n * m) + 1 < 3000
    ports = [free_port() for _ in range(3000)]
    for j in range(len(ports) - PORTS_REMEMBERED):
        assert ports[j] not in ports[j + 1:j + PORTS_REMEMBERED], j
    monkeypatch.undo()

    # the shell side (make run, make bench, kafka.sh): deploy/local/stack.sh.
    # Each choice starts Python (25 ms on an idle machine, up to 150 ms in
    # CI): 100 choices from a part of this worker's class holding 300 to 600
    # ports, where choices without the memory meet more surely than 400 from the
    # whole class did (a birthday bound: 1 - exp(-100 * 99 / (2 * size))).
    m = max(1, (hi - lo + 1) // (n * 300))
    env = {**os.environ, "HOOKBRIDGE_PORT_SLOT": f"{i}/{n * m}"}
    assert 100 < (hi - lo) // (n * m) + 1 < 600
    out = subprocess.run(
        ["bash", "-c", ". deploy/local/stack.sh; for i in $(seq 100); do free_port p; "
         "echo $p; done"], cwd=REPO, env=env, capture_output=True, text=True,
        check=True).stdout.split()
    assert len(out) == 100 and len(set(out)) == 100
    # kafka.sh's brokers: a cluster's ports chosen at once
    out = subprocess.run(["/usr/bin/python3", "deploy/local/free_ports.py", "600"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    assert len(out) == 600 and len(set(out)) == 600


@pytest.mark.no_programs
def test_more_ports_than_a_worker_s_class_holds_is_an_error_not_a_hang():
    """Asked for more ports than its class can give, the chooser says so and
    exits 1 at once (it used to loop without end), and the shell's
    free_port stops the script with its error."""
    env = {**os.environ, "HOOKBRIDGE_PORT_SLOT": "3/16"}
    lo, hi = port_range()
    size = (hi - (lo + (3 - lo) % 16)) // 16 + 1
    t0 = time.monotonic()
    r = subprocess.run(["/usr/bin/python3", "deploy/local/free_ports.py", str(size + 1)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 30
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout[:200])
    assert r.stderr == (f"free_ports.py: cannot choose {size + 1} port(s): class 3/16 of ports "
                        f"{lo}-{hi} holds {size}, 0 of them taken\n"), r.stderr


@pytest.mark.no_programs
def test_two_test_workers_never_choose_one_port():
    """Each pytest-xdist worker (and the scripts it starts) chooses ports of
    its own residue class, so a port one worker chose and has not bound yet is
    never chosen by another."""
    env = dict(os.environ)
    chosen = []
    for slot in ("0/4", "1/4", "3/4"):
        env["HOOKBRIDGE_PORT_SLOT"] = slot
        out = subprocess.run(["/usr/bin/python3", "deploy/local/free_ports.py", "200"],
                             cwd=REPO, env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        assert {int(p) % 4 for p in out} == {int(slot[0])}
        chosen.append(set(out))
    assert not (chosen[0] & chosen[1]) and not (chosen[1] & chosen[2])


# --- hookbridge-devbroker ---------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_devbroker_runs_three_brokers_with_our_topics_until_signalled(procs, workdir, sig):
    """The bootstrap file lists three loopback brokers; the hookbridge topics
    exist before anyone produces; SIGTERM and SIGINT stop it with status 0 and
    remove the bootstrap file (so a stale one never points at nothing)."""
    b = Broker(procs, workdir)
    hosts = b.bootstrap.split(",")
    assert len(hosts) == 3 and all(h.startswith("127.0.0.1:") for h in hosts), b.bootstrap
    kc = KafkaConsumer(bootstrap_servers=hosts)
    try:
        topics = kc.topics()
        assert {"identity.events", "hookbridge.dlq", "hookbridge.retry.5s"} <= topics, topics
        assert len(kc.partitions_for_topic("identity.events")) > 1
        assert len(kc._client.cluster.brokers()) == 3
    finally:
        kc.close()
    b.proc.signal(sig)
    b.proc.p.wait(15 * SLOW)
    assert b.proc.p.returncode == 0, b.proc.output()[-2000:]
    assert not b.bootstrap_file.exists()


def test_devbroker_without_bootstrap_file_says_what_is_missing():
    r = subprocess.run([str(BIN / "hookbridge-devbroker")], capture_output=True, text=True,
                       timeout=30 * SLOW)
    assert r.returncode != 0
    assert "--bootstrap-file" in r.stderr


# --- hookbridge-receiver ----------------------------------------------------------


def http(method, url, headers=None, body=None):
    req = urllib.request.Request(url, data=body.encode() if body is not None else None,
                                 method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def signed(body, secret=SECRET, ts=None, msg_id=None):
    msg_id = msg_id or str(uuid.uuid4())
    ts = str(int(time.time()) if ts is None else ts)
    return {"webhook-id": msg_id, "webhook-timestamp": ts,
            "webhook-signature": expected_signature(secret, msg_id, ts, body),
            "Content-Type": "application/json"}


def okta_envelope(*events):
    return json.dumps({"eventType": "com.okta.event_hook", "eventId": str(uuid.uuid4()),
                       "data": {"events": list(events)}})


def test_receiver_answers_the_challenge_checks_auth_and_signature(procs, workdir):
    """The reference consumer: the challenge is echoed (with the auth header,
    signed like a delivery over an empty body, its webhook-id the challenge
    value); a POST without the auth header, with a wrong one, with a bad or
    stale signature gets 401 and a log line saying why; a good one gets 204
    and a line per event."""
    rc = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH}")
    auth = {"Authorization": AUTH}

    chal = {**auth, "X-Okta-Verification-Challenge": "chal-123"}
    status, body = http("GET", rc.url, {**chal, **signed("", msg_id="chal-123")})
    assert status == 200 and json.loads(body) == {"verification": "chal-123"}
    assert http("GET", rc.url, {"X-Okta-Verification-Challenge": "x"})[0] == 401
    assert http("GET", rc.url, chal)[0] == 401  # not signed
    assert http("GET", rc.url, {**chal, **signed("", msg_id="other")})[0] == 401

    ev = {"uuid": str(uuid.uuid4()), "eventType": "user.session.start",
          "published": "2026-01-02T03:04:05.000Z"}
    good = okta_envelope(ev)
    assert http("POST", rc.url, signed(good), good)[0] == 401  # no auth header
    assert http("POST", rc.url, {**signed(good), "Authorization": "Bearer wrong"}, good)[0] == 401
    other = "whsec_" + "QUJD" * 8
    assert http("POST", rc.url, {**signed(good, secret=other), **auth}, good)[0] == 401
    stale = signed(good, ts=int(time.time()) - 3600)
    assert http("POST", rc.url, {**stale, **auth}, good)[0] == 401
    tampered = signed(good)
    assert http("POST", rc.url, {**tampered, **auth}, good.replace("session", "sessioX"))[0] == 401

    status, body = http("POST", rc.url, {**signed(good), **auth}, good)
    assert status == 204 and body == ""

    out = rc.proc.output()
    assert "missing or wrong Authorization header" in out
    assert "invalid signature" in out
    assert AUTH not in out and SECRET not in out
    printed = [json.loads(line) for line in out.splitlines()
               if line.startswith("{") and '"event user.session.start' in line]
    assert [p["uuid"] for p in printed] == [ev["uuid"]], out  # only the accepted POST


# --- hookbridge-migrate -------------------------------------------------------------


def test_migrate_up_waits_for_the_migration_lock(pg_cluster):  # noqa: F811
    """While another `up` holds the advisory lock, a second one applies
    nothing; it proceeds as soon as the lock is released."""
    db = pg_cluster.create_database("miglock")
    url = pg_cluster.url(db)
    holder = psycopg2.connect(url)
    holder.autocommit = True
    holder.cursor().execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK_KEY,))
    env = {"HOOKBRIDGE_DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    p = subprocess.Popen([str(BIN / "hookbridge-migrate"), "up", "--dir", str(MIGRATIONS)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Its session waits for the advisory lock (not merely still starting).
        def waiting():
            assert p.poll() is None, "migrate up did not wait for the lock: " + p.communicate()[1]
            with psycopg2.connect(url) as c, c.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                            "wait_event_type = 'Lock' AND wait_event = 'advisory'", (db,))
                return cur.fetchone()[0] == 1
        wait_until(waiting, 20, "migrate up to wait for the advisory lock")
        assert p.poll() is None, "migrate up did not wait for the lock: " + p.communicate()[1]
        with psycopg2.connect(url) as c, c.cursor() as cur:
            cur.execute("SELECT to_regclass('hookbridge.hookbridge_migrations')")
            assert cur.fetchone() == (None,), "applied while another migrate held the lock"
        holder.close()
        out, err = p.communicate(timeout=60 * SLOW)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        holder.close()
    assert p.returncode == 0, err
    assert "applied 0001_baseline.sql" in out


def test_migrate_up_from_several_replicas_at_once_applies_each_migration_once(pg_cluster):  # noqa: F811
    db = pg_cluster.create_database("migrace")
    env = {"HOOKBRIDGE_DATABASE_URL": pg_cluster.url(db), "PATH": "/usr/bin:/bin"}
    ps = [subprocess.Popen([str(BIN / "hookbridge-migrate"), "up", "--dir", str(MIGRATIONS)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for _ in range(3)]
    results = [p.communicate(timeout=120 * SLOW) + (p.returncode,) for p in ps]
    assert all(rc == 0 for _, _, rc in results), results
    applied = [line for out, _, _ in results for line in out.splitlines()
               if line.startswith("applied ")]
    files = sorted(f.name for f in MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert sorted(line.split()[1] for line in applied) == files  # each once, by one replica


# --- hookbridge-producer ------------------------------------------------------------


def test_generate_with_a_rate_spreads_the_events_over_time(broker):
    """--generate 15 --rate 10: event i goes out at i/10 s, so the run lasts
    at least 1.4 s and produces all 15."""
    t0 = time.monotonic()
    r = produce(broker.bootstrap, [], args=("--generate", "15", "--rate", "10"))
    took = time.monotonic() - t0
    assert "produced 15, failed 0" in r.stdout.decode()
    assert took >= 1.35, f"15 events at 10/s took only {took:.2f}s"


@pytest.mark.parametrize("args,what", [
    (("--generate", "5", "--rate", "0"), "--rate"),
    (("--generate", "many"), "--generate"),
    (("--rate", "5"), "--rate goes with --generate"),
])
def test_bad_generate_arguments_are_named(broker, args, what):
    r = produce(broker.bootstrap, [], args=args, check=False)
    assert r.returncode == 2
    assert what in r.stderr.decode()


def test_uuid_and_published_are_filled_in_and_the_event_is_keyed_by_its_user(broker):
    """A line with only eventType (and an actor) reaches the topic with a
    fresh UUID and the current time, keyed by the actor's id."""
    import avro.io
    import avro.schema
    from hbtest.avro import SCHEMA_DIR
    before = datetime.now(timezone.utc)
    produce(broker.bootstrap, [{"eventType": "user.session.start",
                                "actor": {"id": "00uACTOR", "type": "User"}},
                               {"eventType": "user.session.end",
                                "actor": {"id": "00uADMIN", "type": "User"},
                                "target": [{"id": "00gGROUP", "type": "UserGroup"},
                                           {"id": "00uTARGET", "type": "User"}]}])
    msgs = topic_records(broker.bootstrap, "identity.events")
    assert len(msgs) == 2
    schema = avro.schema.parse((SCHEMA_DIR / "identity_event.avsc").read_text())
    reader = avro.io.DatumReader(schema)
    by_type = {}
    for m in msgs:
        assert m.value[:2] == b"\xc3\x01"
        ev = reader.read(avro.io.BinaryDecoder(io.BytesIO(m.value[10:])))
        by_type[ev["eventType"]] = (m.key, ev)
    key, ev = by_type["user.session.start"]
    assert key == b"00uACTOR"
    assert uuid.UUID(ev["uuid"]).version == 4
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ev["published"])
    published = datetime.strptime(ev["published"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc)
    assert abs((published - before).total_seconds()) < 60
    # A target user wins over the actor; a group target is not a user.
    assert by_type["user.session.end"][0] == b"00uTARGET"
    assert by_type["user.session.start"][1]["uuid"] != by_type["user.session.end"][1]["uuid"]
