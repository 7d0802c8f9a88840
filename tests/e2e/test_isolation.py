"""Endpoint isolation: a slow or dead endpoint costs its own deliveries time
and nobody else anything.

A hung endpoint (the example receiver sleeping in its handler: it accepts
connections and never answers in time) next to a healthy one: the healthy
one keeps receiving every event, the events topic's committed offsets keep
moving, and the hung endpoint's deliveries wait in the first delay tier,
not in the dispatcher's memory. The circuit breaker keys on the endpoint
host, takes what waits for it out of the queue at once, and says so when it
closes again. Pausing every partition is the last resort, and says why."""
import re
import time

from kafka import KafkaConsumer, TopicPartition

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql

HUNG_MS = 600000  # the receiver sleeps this long in its handler: it never answers in time


def receiver(procs, workdir, name, **kw):
    return Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                    name=name, **kw)


def committed(bootstrap, group, topic="identity.events"):
    """The group's committed offsets on topic, summed over its partitions
    (asked without joining the group)."""
    kc = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=group,
                       enable_auto_commit=False)
    try:
        parts = kc.partitions_for_topic(topic) or set()
        return sum(kc.committed(TopicPartition(topic, p)) or 0 for p in parts)
    finally:
        kc.close()


def statuses(db_url, sub):
    return sql(db_url, "SELECT status, attempts, coalesce(last_error, '') "
               "FROM hookbridge.deliveries WHERE subscription_id=%s", sub)


def test_a_hung_endpoint_stops_neither_a_healthy_one_nor_the_offsets(db_url, procs, workdir):
    """What the user sees: the healthy endpoint gets every event while the
    other one hangs, the dispatcher's committed offsets keep moving and reach
    the end of the topic, and the hung endpoint's deliveries are in the
    delivery log as waiting in the delay tier, nearly all of them without an
    attempt ('endpoint slow'): only the requests its 4 connections took
    were made, and they timed out."""
    broker = Broker(procs, workdir, retry_schedule="1h")
    hung = receiver(procs, workdir, "hung", delay_ms=HUNG_MS)
    healthy = receiver(procs, workdir, "healthy")
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_RETRY_SCHEDULE": "1h",
        "HOOKBRIDGE_MAX_HOST_CONNECTIONS": "4",
        # Before the fix, the hung host's queue grew until this many events
        # were unfinished and every partition paused.
        "HOOKBRIDGE_MAX_PENDING_EVENTS": "600",
        "HOOKBRIDGE_REQUEST_TIMEOUT": "3s",
        "HOOKBRIDGE_CIRCUIT_FAILURES": "0",   # the queue bounds alone
        "HOOKBRIDGE_MAX_QUEUE_WAIT": "1s",
        "HOOKBRIDGE_SHUTDOWN_TIMEOUT": "1s",
    })
    d.wait_ready()
    hung_sub = register_verified(db_url, hung.url, ["user.session.start"])
    register_verified(db_url, healthy.url, ["user.session.start"])
    events = [event("user.session.start") for _ in range(1600)]
    moving = []
    for i in range(0, len(events), 100):  # a stream of about 150 events/s
        produce(broker.bootstrap, events[i:i + 100])
        moving.append(committed(broker.bootstrap, "hookbridge-dispatcher"))
        time.sleep(0.5)
    want = {e["uuid"] for e in events}
    wait_until(lambda: want <= {e["uuid"] for _, e in healthy.events()}, 30 * SLOW,
               "every event at the healthy endpoint")
    # Commits move while the endpoint hangs: each partition trails by at most
    # what the hung host's few running requests hold (request timeout).
    steps = sum(1 for a, b in zip(moving, moving[1:]) if b > a)
    assert steps >= 3, f"committed offsets stood still while events arrived: {moving}"
    # Once the hung host's last requests have timed out, everything is committed.
    wait_until(lambda: committed(broker.bootstrap, "hookbridge-dispatcher") == len(events),
               20 * SLOW, "the committed offsets to reach the end of the topic")
    rows = wait_until(lambda: (rs := statuses(db_url, hung_sub)) and len(rs) == len(events)
                      and rs, 20 * SLOW, "the hung endpoint's deliveries in the log")
    assert all(r[0] == "retry" for r in rows), [r for r in rows if r[0] != "retry"][:5]
    waiting = [r for r in rows if r[1] == 0]
    assert all(re.match(r"endpoint (slow|busy)", r[2]) for r in waiting), waiting[:5]
    attempted = len(rows) - len(waiting)
    assert attempted <= 4 * 12, f"{attempted} attempts: more than its 4 connections could make"
    assert "consumption of every partition paused" not in d.proc.output()
    assert d.metric("hookbridge_endpoint_busy_total", None) == len(waiting)


def test_the_circuit_keys_on_the_host_and_diverts_what_waits(db_url, procs, workdir):
    """Two subscriptions on one host: the failures of their requests open one
    circuit, and the requests already waiting for that host leave the queue at
    once (not one timeout at a time); deliveries then skip the host."""
    broker = Broker(procs, workdir, retry_schedule="1h")
    hung = receiver(procs, workdir, "hung", delay_ms=HUNG_MS)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_RETRY_SCHEDULE": "1h",
        "HOOKBRIDGE_MAX_HOST_CONNECTIONS": "2",
        "HOOKBRIDGE_REQUEST_TIMEOUT": "2s",
        "HOOKBRIDGE_MAX_QUEUE_WAIT": "10m",   # only the circuit takes them out
        "HOOKBRIDGE_CIRCUIT_FAILURES": "2",
        "HOOKBRIDGE_CIRCUIT_COOLDOWN": "10m",
        "HOOKBRIDGE_SHUTDOWN_TIMEOUT": "1s",
    })
    d.wait_ready()
    a = register_verified(db_url, hung.url + "/a", ["user.session.start"])
    b = register_verified(db_url, hung.url + "/b", ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start") for _ in range(10)])
    started = time.time()
    # 20 deliveries: 2 run and time out after 2 s, opening the circuit; the
    # 17 or 18 waiting leave the queue then, instead of 2 per timeout (18 s).
    wait_until(lambda: len(statuses(db_url, a)) + len(statuses(db_url, b)) == 20, 15 * SLOW,
               "all 20 deliveries in the log")
    took = time.time() - started
    rows = statuses(db_url, a) + statuses(db_url, b)
    skipped = [r for r in rows if r[2].startswith("circuit open")]
    # The two that opened it, and at most one more that took a freed
    # connection in the same moment, were attempted; the rest never were.
    assert len(skipped) >= 17 and all(r[0] == "retry" and r[1] == 0 for r in skipped), rows
    assert took < 10 * SLOW, f"the waiting requests drained one timeout at a time ({took:.1f} s)"
    out = d.proc.output()
    assert re.search(r"circuit open after 2 consecutive failures: .* (17|18) waiting requests",
                     out), out[-3000:]
    assert f'"endpoint":"http://127.0.0.1:{hung.port}"' in out, "the log names the endpoint"
    # New deliveries to the host skip it while the circuit is open.
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(statuses(db_url, a)) + len(statuses(db_url, b)) == 22, 10 * SLOW,
               "the next deliveries")
    assert sum(1 for r in statuses(db_url, a) + statuses(db_url, b)
               if r[2].startswith("circuit open")) == len(skipped) + 2


def test_a_successful_probe_closes_the_circuit_and_says_so(db_url, procs, workdir):
    """An endpoint that fails twice, then recovers: the circuit opens, and
    after the cool-down the probe gets through and the log says the circuit
    closed."""
    from hbtest.endpoints import ChallengeAnswering, serve
    posts = []

    class Recovering(ChallengeAnswering):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.append(self.path)
            self.send_response(503 if len(posts) <= 2 else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = serve(Recovering)
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_RETRY_SCHEDULE": "1h",
            "HOOKBRIDGE_CIRCUIT_FAILURES": "2",
            "HOOKBRIDGE_CIRCUIT_COOLDOWN": "2s",
        })
        d.wait_ready()
        register_verified(db_url, srv.url, ["user.session.start"])
        for _ in range(2):
            produce(broker.bootstrap, [event("user.session.start")])
        wait_until(lambda: "circuit open after 2 consecutive failures" in d.proc.output(),
                   15 * SLOW, "the circuit to open")
        time.sleep(2.5)
        produce(broker.bootstrap, [event("user.session.start")])
        wait_until(lambda: len(posts) == 3, 15 * SLOW, "the probe")
        wait_until(lambda: "circuit closed: the endpoint answered again" in d.proc.output(),
                   5 * SLOW, "'circuit closed' in the log")
    finally:
        srv.shutdown()


def test_a_half_open_circuit_lets_one_probe_through_and_routes_the_rest_as_open(
        db_url, procs, workdir):
    """A hung endpoint (reads each request, never answers): once the circuit
    has opened and the cool-down passed, 20 deliveries arrive at once. The
    endpoint gets exactly one request while that probe runs (until it times
    out); the 19 others wait in the first delay tier unattempted, as with the
    circuit open, and the probe's failure opens the circuit again."""
    import threading
    from hbtest.endpoints import ChallengeAnswering, serve
    posts = []
    release = threading.Event()

    class Hung(ChallengeAnswering):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.append(time.time())
            release.wait(120)  # never answers in time

    srv = serve(Hung)
    try:
        broker = Broker(procs, workdir, retry_schedule="1h")
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_RETRY_SCHEDULE": "1h",
            "HOOKBRIDGE_MAX_HOST_CONNECTIONS": "8",
            "HOOKBRIDGE_REQUEST_TIMEOUT": "3s",
            "HOOKBRIDGE_CIRCUIT_FAILURES": "2",
            "HOOKBRIDGE_CIRCUIT_COOLDOWN": "2s",
            "HOOKBRIDGE_SHUTDOWN_TIMEOUT": "1s",
        })
        d.wait_ready()
        sub = register_verified(db_url, srv.url, ["user.session.start"])
        produce(broker.bootstrap, [event("user.session.start") for _ in range(2)])
        wait_until(lambda: "circuit open after 2 consecutive failures" in d.proc.output(),
                   15 * SLOW, "the circuit to open")
        opened = time.time()
        assert len(posts) == 2
        skips = d.metric("hookbridge_circuit_skips_total")
        time.sleep(max(0.0, 2.5 - (time.time() - opened)))  # the cool-down passes
        produce(broker.bootstrap, [event("user.session.start") for _ in range(20)])
        # The probe times out (3 s) and is logged; the others are logged at once.
        rows = wait_until(lambda: (rs := statuses(db_url, sub)) and len(rs) == 22 and rs,
                          20 * SLOW, "the 20 new deliveries in the log")
        assert len(posts) == 3, f"{len(posts) - 2} requests while the circuit was half open"
        skipped = [r for r in rows if r[1] == 0]
        assert len(skipped) == 19, rows
        assert all(r[0] == "retry" and r[2].startswith("circuit open") for r in skipped), skipped
        attempted = [r for r in rows if r[1] == 1]
        assert len(attempted) == 3 and all(r[0] == "retry" for r in attempted), attempted
        assert d.metric("hookbridge_circuit_skips_total") - skips == 19
        assert d.metric("hookbridge_circuit_probes_total") == 1
        out = d.proc.output()
        assert "circuit half open: one attempt probes the endpoint" in out
        assert "circuit open again: the probe failed" in out, out[-3000:]
        assert d.metric("hookbridge_circuit_opens_total") == 2
    finally:
        release.set()
        srv.shutdown()


def test_pausing_every_partition_is_the_last_resort_and_says_why(db_url, procs, workdir):
    """A slow but answering endpoint, too many events unfinished: consumption
    pauses, logged at warn with the reason, shown by a metric and by /readyz
    (still 200: the service works, slowly), then resumes."""
    broker = Broker(procs, workdir)
    slow = receiver(procs, workdir, "slow", delay_ms=100)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_MAX_PENDING_EVENTS": "20",
        "HOOKBRIDGE_MAX_QUEUE_WAIT": "10m",
    })
    d.wait_ready()
    register_verified(db_url, slow.url, ["user.session.start"])
    events = [event("user.session.start") for _ in range(60)]
    produce(broker.bootstrap, events)

    def paused_now():
        status, text = d.get("/readyz")
        return (status == 200 and "consumption paused" in text
                and d.metric("hookbridge_consumption_paused", None) == 1)
    wait_until(paused_now, 15 * SLOW, "/readyz and the metric to show the pause")
    wait_until(lambda: len(slow.events()) == len(events), 30 * SLOW, "every event, slowly")
    out = d.proc.output()
    assert re.search(r'"level":"warn".*consumption of every partition paused: \d+ consumed '
                     r'messages unfinished \(HOOKBRIDGE_MAX_PENDING_EVENTS=20\)', out), out[-3000:]
    wait_until(lambda: "consumption resumed" in d.proc.output(), 10 * SLOW, "the resume")
    wait_until(lambda: d.get("/readyz") == (200, "ready\n"), 10 * SLOW, "plain ready again")


def test_a_short_pause_only_stops_taking_messages_a_lasting_one_stops_fetching(db_url, procs,
                                                                             workdir):
    """A last-resort pause that lasts under 3 s only stops the dispatcher taking
    messages: what librdkafka fetched ahead is kept and taken on resume (pausing
    fetching discards it and refetches it after a delay: a second or more of no
    delivery at all, measured in the benchmark). One that lasts 3 s pauses
    fetching too and says so. Either way every event is delivered once."""
    broker = Broker(procs, workdir)
    brief = receiver(procs, workdir, "brief", delay_ms=100)
    # the example receiver answers two requests at a time: resuming at 3/4 of
    # 20 takes at least five answers, 3 s or more
    long = receiver(procs, workdir, "long", delay_ms=1000)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_MAX_PENDING_EVENTS": "20",
        "HOOKBRIDGE_MAX_QUEUE_WAIT": "10m",
        "HOOKBRIDGE_REQUEST_TIMEOUT": "60s",
    })
    d.wait_ready()
    register_verified(db_url, brief.url, ["user.session.start"])
    register_verified(db_url, long.url, ["user.session.end"])
    pause = "consumption of every partition paused"
    fetching = "fetching paused too"

    first = [event("user.session.start") for _ in range(60)]
    produce(broker.bootstrap, first)
    wait_until(lambda: len(brief.events()) == len(first), 30 * SLOW, "the burst, slowly")
    out = d.proc.output()
    assert pause in out, out[-3000:]  # it did pause, more than once ...
    assert fetching not in out, out[-3000:]  # ... briefly: fetching went on

    second = [event("user.session.end") for _ in range(22)]
    produce(broker.bootstrap, second)
    wait_until(lambda: fetching in d.proc.output(), 15 * SLOW, "fetching paused too")
    wait_until(lambda: len(long.events()) == len(second), 60 * SLOW, "every event, slowly")
    got = sorted(e["uuid"] for _, e in long.events())
    assert got == sorted(e["uuid"] for e in second)  # each once: none lost, none twice
    assert sorted(e["uuid"] for _, e in brief.events()) == sorted(e["uuid"] for e in first)


def test_a_pause_longer_than_max_poll_interval_keeps_the_group_and_delivers_once(
        db_url, procs, workdir):
    """Every partition paused for longer than max.poll.interval.ms (here 6 s;
    librdkafka's default is 5 min: a long database outage or a hung endpoint
    holding every pending event): the dispatcher still serves its consumer
    group, so librdkafka does not throw it out ("Application maximum poll
    interval exceeded ... leaving group"), and once the endpoint answers
    every event arrives exactly once. Before, it left the group, and the
    events it had in flight were consumed and sent again after it rejoined."""
    import threading
    from hbtest.endpoints import ChallengeAnswering, serve
    posts = []
    release = threading.Event()

    class Held(ChallengeAnswering):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            release.wait(120)
            posts.append(self.headers["webhook-id"])
            self.answer()

    srv = serve(Held)
    try:
        broker = Broker(procs, workdir)
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
            "HOOKBRIDGE_MAX_HOST_CONNECTIONS": "4",
            "HOOKBRIDGE_MAX_PENDING_EVENTS": "8",
            "HOOKBRIDGE_MAX_QUEUE_WAIT": "10m",
            "HOOKBRIDGE_REQUEST_TIMEOUT": "60s",
            "HOOKBRIDGE_KAFKA_MAX_POLL_INTERVAL_MS": "6000",
        })
        d.wait_ready()
        register_verified(db_url, srv.url, ["user.session.start"])
        produce(broker.bootstrap, [event("user.session.start") for _ in range(12)])
        wait_until(lambda: "fetching paused too" in d.proc.output(), 15 * SLOW, "the pause")
        time.sleep(7.5)  # longer than max.poll.interval.ms
        release.set()
        wait_until(lambda: len(posts) >= 12, 30 * SLOW, "every event once the endpoint answers")
        time.sleep(2)  # a second copy would come now
        out = d.proc.output()
        assert "maximum poll interval" not in out, out[-3000:]
        assert len(posts) == 12 and len(set(posts)) == 12, f"{len(posts)} posts"
    finally:
        release.set()
        srv.shutdown()
