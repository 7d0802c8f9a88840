"""Review 32: an adversarial review of what was merged on 6 December
(reviews 29 and 30: the producer CLI's 30 s message timeout, /readyz with
everything out from the start, strict integer settings, the payload budget
against the cgroup memory limit, split batches in subscription_overview, the
retrier's verification lanes, hb_hash's shrinking rehash, rotate_secret and
update(secret) deleting the secrets that sign no more, deregister deleting
the rate-limit bucket, the circuit breaker's stale circuits), attacked as a
production user or a fault would: a crash, a restart, a slow endpoint, a
dead broker or database, old and new binaries side by side, odd input.

Each test here holds something that misbehaved, and says how it was shown
to fail on main (7fdc4dc), built in a scratch worktree and run with
HOOKBRIDGE_BIN pointing there. What held up is in the review's report."""
import json
import os
import re
import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit

import psycopg2
import pytest

from hbtest.procs import BIN, REPO, SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from hbtest.tcpproxy import TcpProxy
from test_delivery import SECRET, event, sql

EVENT = ('{"eventType":"user.lifecycle.create","actor":{"id":"00u1","type":"User"},'
         '"target":[{"id":"00u1","type":"User"}]}\n')


def test_the_producer_names_every_line_that_timed_out_so_they_can_be_sent_again(tmp_path):
    """`hookbridge-producer FILE` against brokers that do not answer: since
    review 29 the first 10 timed-out lines are named one by one and the rest
    only counted ("24 lines not delivered: ..."). A user whose file of
    thousands of events was cut off by a broker outage could not tell which
    lines to publish again, and publishing the whole file again sends the
    delivered ones twice (new uuids for events given without one: duplicate
    webhooks). Now one more line names them all, as ranges: here a bad line
    13 (refused before producing) between 24 that time out.

    Checked to fail without the change: on 7fdc4dc no line names lines 11
    to 25. About 7 s (the producer's 5 s wait for the topic's metadata)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # accepts, never answers: a broker behind a black hole
    events = tmp_path / "events.jsonl"
    events.write_text(EVENT * 12 + "not json\n" + EVENT * 12)
    env = dict(os.environ, HOOKBRIDGE_KAFKA_BROKERS=f"127.0.0.1:{sock.getsockname()[1]}",
               HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS="1000")
    try:
        r = subprocess.run([str(BIN / "hookbridge-producer"), str(events)], env=env,
                           capture_output=True, text=True, timeout=60 * SLOW)
    finally:
        sock.close()
    assert r.returncode == 1, r.stderr
    assert "produced 0, failed 25" in r.stdout, r.stdout
    assert "line 13: invalid JSON" in r.stderr, r.stderr
    assert "24 lines not delivered: the Kafka brokers" in r.stderr, r.stderr
    named = [line for line in r.stderr.splitlines() if "the lines that timed out:" in line]
    assert named == ["hookbridge-producer: the lines that timed out: 1-12, 14-25"], r.stderr


def test_an_open_circuit_is_not_forgotten_between_two_waves_of_retries(db_url, broker, procs,
                                                                        workdir):
    """A failing host's deliveries come back in waves, from the delay tiers
    (5 min, 30 min, ... apart by default). Between two waves its circuit,
    open, goes a cool-down without a probe, and review 30 made such a
    circuit 'stale': once 1,024 circuits were kept (an outage of a region,
    a dead egress proxy: many hosts failing at once), the sweep forgot it,
    and the next wave went whole to the dead host (HOOKBRIDGE_CIRCUIT_FAILURES
    failures, up to HOOKBRIDGE_MAX_HOST_CONNECTIONS at once, each waiting
    for its timeout) instead of one probe. Now an open circuit is forgotten
    only once the longest delay of the retry schedule has passed without a
    probe; closed ones still go after a cool-down.

    Here 1,023 hosts that refuse connections open their circuits (1 failure,
    1 s cool-down) with a failing receiver's, 1,024 in all; 2.5 s later one
    more host fails (its new circuit sweeps), then six events reach the
    failing receiver: one probe, the others wait.

    Checked to fail without the change: on 7fdc4dc the receiver gets all six
    (seven requests in all). About 8 s."""
    rcv = Receiver(procs, workdir, secret=SECRET, status=500)
    sql(db_url, "SELECT hookbridge.register('dead-' || i, 'http://127.0.' || (i / 250 + 1) || '.'"
        " || (i %% 250 + 1) || ':9/hook', ARRAY['user.session.start'], '{}') "
        "FROM generate_series(0, 1022) AS i")
    sql(db_url, "SELECT hookbridge.register('later', 'http://127.0.9.9:9/hook', "
        "ARRAY['user.session.end'], '{}')")
    sql(db_url, "SELECT hookbridge.register('target', %s, "
        "ARRAY['user.session.start', 'user.account.lock'], %s::jsonb)", rcv.url,
        json.dumps({"secret": SECRET}))
    sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', status = 'active'")
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_CIRCUIT_FAILURES": "1", "HOOKBRIDGE_CIRCUIT_COOLDOWN": "1s",
        "HOOKBRIDGE_LOG_LEVEL": "info"})
    d.wait_ready()
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.secret_status "
                           "WHERE signing_secret <> 'sealed'")[0][0] == 0, 30 * SLOW,
               "every secret sealed")
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: d.metric("hookbridge_circuit_opens_total") >= 1024, 30 * SLOW,
               "every host's circuit open")
    assert len(rcv.posts()) == 1
    time.sleep(2.5 * SLOW)  # past the cool-down and one more: 'stale' since review 30
    produce(broker.bootstrap, [event("user.session.end")])
    wait_until(lambda: d.metric("hookbridge_circuit_opens_total") >= 1025, 15 * SLOW,
               "the later host's circuit open (the sweep)")
    produce(broker.bootstrap, [event("user.account.lock") for _ in range(6)])
    wait_until(lambda: d.metric("hookbridge_circuit_skips_total") + len(rcv.posts()) - 1 >= 6,
               15 * SLOW, "the wave handled")
    # every request of the wave probed the open circuit, one at a time (one
    # in all, unless the wave took longer than a cool-down on a busy machine)
    sent, probes = len(rcv.posts()) - 1, d.metric("hookbridge_circuit_probes_total")
    assert sent == probes and sent < 6, \
        f"{sent} requests, {probes} probes: the open circuit was forgotten, the wave went out"


def test_readyz_keeps_naming_the_brokers_when_the_database_comes_back_first(db_url, procs):
    """A dispatcher started with PostgreSQL and the brokers both out says
    so since review 29 ("Kafka brokers not answering for N s; database not
    connected"), from a stand-in probe on its producer until its consumer
    runs. When the database came back first, the consumer started and its
    own probe began afresh: /readyz said "checking that the delay tiers and
    the dead-letter topic exist" for 4 s, then "Kafka brokers not answering
    for 4 s", as if the outage had just begun. Now the consumer's probe goes
    on from the stand-in's: the brokers stay named, and the count goes on.

    Checked to fail without the change: on 7fdc4dc /readyz says "checking
    that the delay tiers ..." after the database is back. About 14 s."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # a broker that never answers
    pg = TcpProxy(urlsplit(db_url).port)  # not started: the database refuses
    try:
        d = Dispatcher(procs, db_url.replace(f":{urlsplit(db_url).port}/", f":{pg.port}/"),
                       f"127.0.0.1:{sock.getsockname()[1]}")
        both = re.compile(r"^Kafka brokers not answering for (\d+) s; database not connected\n$")
        _, body = wait_until(lambda: (r := d.get("/readyz"))[1] and both.match(r[1])
                             and int(both.match(r[1])[1]) >= 5 and r, 20 * SLOW,
                             "/readyz to name both for 5 s")
        before = int(both.match(body)[1])
        pg.start()
        kafka = re.compile(r"^Kafka brokers not answering for (\d+) s\n$")
        wait_until(lambda: (r := d.get("/readyz"))[0] and "database" not in r[1], 15 * SLOW,
                   "the database back")
        seen = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5 * SLOW:
            if (r := d.get("/readyz"))[0]:  # (a probe of a busy machine may time out)
                seen.append(r)
            time.sleep(0.25)
        # (librdkafka's own "all brokers down", once its connection attempt
        # times out, is said too: "no Kafka broker reachable")
        assert all(status == 503 and (kafka.match(body) or body == "no Kafka broker reachable\n")
                   for status, body in seen), seen
        counts = [int(kafka.match(body)[1]) for _, body in seen if kafka.match(body)]
        assert counts and counts[0] >= before and counts == sorted(counts), seen
    finally:
        pg.close()
        sock.close()


@pytest.mark.sql_only
def test_a_draw_racing_deregister_leaves_no_rate_limit_bucket_behind(db_url):
    """Review 30 made deregister delete the subscription's rate-limit
    bucket. A take_rate_tokens() of a replica drawing for it at that moment
    (a rate-limited backlog draws all the time) read the subscription live,
    then put a new bucket back once deregister had deleted the old one (or
    found none to delete), and nothing ever drew for it again: the bucket
    stayed for good. Now deregister holds the bucket's key until it commits
    and a draw that waited for it looks at the subscription again.

    Three connections draw in a loop while the subscription is deregistered,
    30 times. Checked to fail without the change: on 7fdc4dc 15 to 25 of the
    30 buckets are left. About 2 s."""
    left = 0
    for _ in range(30):
        sub = sql(db_url, "SELECT hookbridge.register('raced', 'https://example.com/hook', "
                  "ARRAY['user.session.start'], '{\"rate_limit\": {\"per_second\": 1}}')")[0][0]
        stop = threading.Event()
        errors = []

        def draw():
            conn = psycopg2.connect(db_url)
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    while not stop.is_set():
                        cur.execute("SELECT * FROM hookbridge.take_rate_tokens(%s, 1)", (sub,))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
            finally:
                conn.close()
        drawers = [threading.Thread(target=draw) for _ in range(3)]
        for t in drawers:
            t.start()
        time.sleep(0.02)
        sql(db_url, "SELECT hookbridge.deregister(%s)", sub)
        stop.set()
        for t in drawers:
            t.join()
        assert not errors, errors
        left += sql(db_url, "SELECT count(*) FROM hookbridge.rate_limit_buckets "
                    "WHERE subscription_id = %s", sub)[0][0]
    assert left == 0, f"{left} of 30 deregistered subscriptions kept a rate-limit bucket"


@pytest.mark.sql_only
def test_a_draw_putting_the_bucket_while_deregister_runs_does_not_deadlock(db_url):
    """deregister locked the subscription's row first and then took its
    rate-limit bucket's key; a take_rate_tokens() putting the bucket (the
    first draw, or one after a deletion) took the key first and then, for
    the foreign key, a share lock on the row. Met in that order, each waited
    for the other: PostgreSQL's deadlock detector failed one of them after a
    second (seen in a loaded run of the test above: DeadlockDetected in the
    draw). deregister now takes the bucket's key before the row.

    The interleaving is forced: another transaction holds the subscription's
    secret row, so deregister waits at its secrets; the draw then starts;
    the holder commits. On 8fe588a: DeadlockDetected. About 1 s."""
    sub = sql(db_url, "SELECT hookbridge.register('deadlock', 'https://example.com/hook', "
              "ARRAY['user.session.start'], '{\"rate_limit\": {\"per_second\": 1}}')")[0][0]
    holder = psycopg2.connect(db_url)
    errors, pids = [], {}

    def run(name, query):
        conn = psycopg2.connect(db_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                pids[name] = cur.fetchone()[0]
                cur.execute(query, (sub,))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{name}: {e!r}")
        finally:
            conn.close()

    def waiting(name):
        return pids.get(name) and sql(db_url, "SELECT wait_event_type = 'Lock' FROM "
                                      "pg_stat_activity WHERE pid = %s", pids[name])[0][0]
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1 FROM hookbridge.subscription_secrets "
                        "WHERE subscription_id = %s FOR UPDATE", (sub,))
            assert cur.rowcount >= 1
        dereg = threading.Thread(target=run, args=("deregister", "SELECT hookbridge.deregister(%s)"))
        dereg.start()
        wait_until(lambda: waiting("deregister"), 10 * SLOW, "deregister to wait for a lock")
        draw = threading.Thread(target=run, args=(
            "draw", "SELECT * FROM hookbridge.take_rate_tokens(%s, 1)"))
        draw.start()
        wait_until(lambda: waiting("draw"), 10 * SLOW, "the draw to wait for a lock")
    finally:
        holder.commit()
        holder.close()
    dereg.join(30)
    draw.join(30)
    assert not errors, errors
    assert sql(db_url, "SELECT deregistered_at IS NOT NULL FROM hookbridge.subscriptions "
               "WHERE id = %s", sub)[0][0]
    assert sql(db_url, "SELECT count(*) FROM hookbridge.rate_limit_buckets "
               "WHERE subscription_id = %s", sub)[0][0] == 0


@pytest.mark.sql_only
def test_make_lint_refuses_a_python_file_that_does_not_parse(tmp_path):
    """make lint (review 29) ran flake8 with pyflakes' checks only
    (--select=F); a file that does not parse is flake8's E999, so it was
    left out, pyflakes checked nothing in the file, and make lint said
    'lint: ok' (this review met it: a test file with a quoting slip). Now
    E999 is selected too.

    Checked to fail without the change: on 7fdc4dc make lint exits 0 (the
    file list there is always every tracked file: LINT_FILES is new, so
    the broken file is not even looked at). Under a second."""
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n    pass\n")
    r = subprocess.run(["make", "-s", "-C", str(REPO), "lint", f"LINT_FILES={broken}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "E999 SyntaxError" in r.stdout + r.stderr, r.stdout + r.stderr
    assert "lint: ok" not in r.stdout
