"""Review 15: observability under faults, as the on-call engineer sees it
(docs/operations.md: /healthz, /readyz, /metrics, the runbooks' log lines,
the SQL views).

Each test says what it holds and how it was shown to fail on a9304ca."""
import time

import psycopg2

from hbtest.procs import wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, produce
from test_delivery import event, register_verified


def test_a_service_started_while_the_subscriptions_are_locked_keeps_its_loop_turning(
        db_url, procs, workdir):
    """docs/operations.md, Health: "/healthz ... does not depend on
    PostgreSQL or Kafka, so an outage of either never restarts pods"; the
    runbook "PostgreSQL not answering": "it waits, loses nothing, and does
    not restart".

    A dispatcher (or retrier) started while its first load of the
    subscriptions waits for the database (a lock on hookbridge.subscriptions:
    a migration's ALTER TABLE queued behind an operator's open transaction
    makes every reader wait) made that load on its main loop's thread. The
    loop stood still for as long as the lock held: /readyz kept saying
    "starting", nothing was logged, and after 30 s /healthz answered 503
    "stalled: main loop silent for 30000 ms", so the liveness probe
    (6 failures 10 s apart) restarted the pod, which waited again on its
    next start: a restart loop, CrashLoopBackOff delaying the recovery after
    the lock was gone. Now the first load runs on the store's own thread, as
    a reload after an outage does: the loop turns, /readyz says why the
    service is not ready, and it becomes ready once the lock is released.

    On a9304ca /readyz said "starting" for the whole 6 s the lock was held
    (and, measured, /healthz 503 from 30 s on)."""
    broker = Broker(procs, workdir)
    rcv = Receiver(procs, workdir)
    lock = psycopg2.connect(db_url)
    try:
        lock.cursor().execute("LOCK TABLE hookbridge.subscriptions IN ACCESS EXCLUSIVE MODE")
        d = Dispatcher(procs, db_url, broker.bootstrap)
        wait_until(lambda: "health on port" in d.proc.output(), 10, "the dispatcher to start")
        time.sleep(2)
        wait_until(lambda: d.get("/readyz") == (503, "subscription index not loaded\n"),
                   4, "/readyz saying what the service waits for, its loop turning")
        assert d.get("/healthz")[0] == 200
        assert d.proc.alive()
        lock.rollback()
        d.wait_ready(timeout=15)
        assert "database connection restored" not in d.proc.output(), \
            "the first load is no restoration"
    finally:
        lock.close()
    sub = register_verified(db_url, rcv.url, ["user.session.start"])
    e = event("user.session.start")
    produce(broker.bootstrap, [e])
    wait_until(lambda: e["uuid"] in {ev["uuid"] for _, ev in rcv.events()}, 20,
               "the event at its endpoint")
    assert sub


def test_the_retriers_counters_count_each_retry_once(db_url, procs, workdir):
    """docs/operations.md, What to watch: hookbridge_messages_consumed_total
    counts "messages consumed from the input topics (... delay tiers for
    the retrier)".

    A retry read before it is due has its partition paused and rewound to
    it, and is read again when due: the retrier counted it at each read, so
    its consumed count ran at up to twice the retries on the tiers (on
    a9304ca: 6 for the 4 messages here), and a comparison of the retrier's
    consumption with rate(hookbridge_retries_enqueued_total) (the runbook's
    retry backlog reading) was off by that factor. Now a message is counted
    once, when it is taken. The other counters of the same retries, checked
    against what the tiers, the dead-letter topic and the delivery log hold:
    each attempt in hookbridge_responses_total, each hand-over to a tier in
    hookbridge_retries_enqueued_total{tier}, each dead letter once."""
    from hbtest.stack import Retrier, topic_records
    from test_delivery import sql
    schedule = "1s,1s"
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0"}
    broker = Broker(procs, workdir, retry_schedule=schedule)
    ok = Receiver(procs, workdir)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    r.wait_ready()
    sub = register_verified(db_url, ok.url, ["user.session.start"])
    failing = Receiver(procs, workdir, status=503, name="failing")
    sql(db_url, "UPDATE hookbridge.subscriptions SET url = %s, verification = 'verified' "
        "WHERE id = %s", failing.url, sub)
    wait_until(lambda: d.metric("hookbridge_subscriptions") == 1 and
               r.metric("hookbridge_subscriptions") == 1, 10, "the new URL taken")
    produce(broker.bootstrap, [event("user.session.start") for _ in range(2)])
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries "
                           "WHERE status = 'failed'")[0][0] == 2, 20, "both dead-lettered")
    on_tier = topic_records(broker.bootstrap, "hookbridge.retry.1s", want=4)
    assert len(on_tier) == 4
    assert len(topic_records(broker.bootstrap, "hookbridge.dlq", want=2)) == 2
    assert r.metric("hookbridge_partition_pauses_total") >= 1, "no retry read before it was due"
    wait_until(lambda: r.metric("hookbridge_dead_letters_total") == 2, 5, "the dead letters")
    assert d.metric("hookbridge_messages_consumed_total") == 2
    assert r.metric("hookbridge_messages_consumed_total") == len(on_tier)
    assert d.metric('hookbridge_retries_enqueued_total{tier="1s"}') == 2
    assert r.metric('hookbridge_retries_enqueued_total{tier="1s"}') == 2
    assert d.metric('hookbridge_responses_total{class="5xx"}') == 2
    assert r.metric('hookbridge_responses_total{class="5xx"}') == 4
    assert r.metric('hookbridge_deliveries_total{outcome="failed"}') == 2
    assert d.metric("hookbridge_dead_letters_total") == 0


def test_a_delivery_log_the_database_refuses_counts_as_database_errors(db_url, procs, workdir):
    """docs/operations.md, What to watch: hookbridge_database_errors_total
    counts "PostgreSQL errors", and the alert HookbridgeDatabaseErrors
    (rate > 0 for 5 m) is what tells the on-call engineer about them.

    When the database refuses the delivery log's writes while the rest of
    it works (disk full, a permission taken away, a trigger or constraint
    that fails), nothing is committed any more: deliveries go on, offsets
    stand still, and a restart sends everything since again. The writer
    retried every few seconds and logged a warning every 30 s, but counted
    nothing: the counter stayed at 0 (on a9304ca: 0 after 40 s of refused
    writes), so the alert never fired. Now each refused round counts."""
    from test_delivery import sql
    broker = Broker(procs, workdir)
    rcv = Receiver(procs, workdir)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    register_verified(db_url, rcv.url, ["user.session.start"])
    assert d.metric("hookbridge_database_errors_total") == 0
    sql(db_url, "CREATE FUNCTION public.disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'could not extend file: No space left on device' "
        "USING ERRCODE = '53100'; END $$")
    sql(db_url, "CREATE TRIGGER disk_full BEFORE INSERT ON hookbridge.delivery_attempts "
        "FOR EACH ROW EXECUTE FUNCTION public.disk_full()")
    e = event("user.session.start")
    produce(broker.bootstrap, [e])
    wait_until(lambda: e["uuid"] in {ev["uuid"] for _, ev in rcv.events()}, 20,
               "the event at its endpoint")
    wait_until(lambda: "delivery log: cannot write, will retry: could not extend file"
               in d.proc.output(), 10, "the writer's warning")
    wait_until(lambda: d.metric("hookbridge_database_errors_total") >= 2, 10,
               "the refused writes counted as database errors, again while they go on")
    sql(db_url, "DROP TRIGGER disk_full ON hookbridge.delivery_attempts")
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.delivery_attempts")[0][0] == 1,
               15, "the attempt logged once the database takes it")
    errors = d.metric("hookbridge_database_errors_total")
    time.sleep(1.5)
    assert d.metric("hookbridge_database_errors_total") == errors, "counted after it recovered"


def test_alerts_on_any_increase_also_fire_on_a_new_pods_first_sample():
    """docs/operations.md, Alerts worth having: HookbridgeMessagesExpired is
    the alert for "a dispatcher or retrier was down for longer than the
    topic's retention". Such a pod, back, counts the expired messages about
    6 s after it starts (measured with the scenario of
    test_retention_loss.py: /metrics served at 0.1 s reading 0, the count at
    5.9 s), and Prometheus scrapes it every 30 s (the ServiceMonitor), so its
    series usually begins already above 0. `increase(x[1h]) > 0` counts
    nothing before a series' first sample: the alert stayed silent for the
    very loss it is there for. The same holds for a retrier that
    dead-letters, or a dispatcher that meets a poison message, in its first
    seconds after a restart, and the failing-endpoint sweep at start.

    Each rule alerting on any increase of a counter now also fires while a
    series is younger than its window and above 0 (`x > 0 unless x offset
    w`), and the section says why. On a9304ca none did (static check of
    the rules in deploy/k8s/optional/alerts, as test_review9_faults.py's)."""
    import re
    from test_review9_faults import alert_rules
    rules = alert_rules()
    checked = 0
    for rule in rules:
        for m in re.finditer(r"increase\((hookbridge_[a-z_]+)\[(\w+)\]\)\s*>\s*0", rule["expr"]):
            name, window = m.groups()
            first = rf"\(\s*{name}\s*>\s*0\s+unless\s+{name}\s+offset\s+{window}\s*\)"
            assert re.search(r"\bor\s+" + first, rule["expr"]), \
                f"{rule['alert']}: silent when {name} is above 0 at a pod's first scrape"
            checked += 1
    assert checked >= 4, "the rules on dead letters, expiry, poison, deactivation"
