"""Broker faults on a three-node Apache Kafka cluster, as scenarios that both
the end-to-end tests (tests/e2e/test_kafka_faults.py, which assert) and the
fault report (tests/chaos/kafka_faults.py, which prints) run.

Each scenario takes the cluster (hbtest.kafka.ApacheKafka, nodes=3), a
migrated database URL, a ProcessGroup and a work directory, starts its own
receiver, dispatcher and retrier on a fresh TopicSpace, does its fault, waits
for every event, and returns a dict of figures:

    produced        events hookbridge-producer wrote (and Kafka acknowledged)
    delivered       distinct events the receiver acknowledged (2xx)
    lost            produced but never delivered
    dups_receiver   extra acknowledged deliveries of an event
    dups_topic      extra copies of an event on the events topic (our producer)
    tier_msgs       DeliveryRetry messages on the delay tier
    dups_tier       extra copies of a DeliveryRetry (same delivery and attempt)
    pids_events / pids_tier   producer ids of the record batches on those topics
                    (-1 would mean a producer without idempotence)
    recover_s       scenario-specific: the longest silence at the receiver
                    after the fault (broker kill), or from the cluster's
                    restart to both services ready (cluster restart), or from
                    the leader's kill to a new leader (leader move)
    early / late_s  retries attempted before their due time (must be 0), and
                    the latest a retry came after it was due

Events are read back from the topics with kafka-python (an independent
client) and decoded with hbtest.avro; the batches' producer ids come from
Kafka's own kafka.tools.DumpLogSegments run on a node's log directory.
"""
import json
import os
import subprocess
import threading
import time
import uuid
from collections import Counter

from .avro import decode, read_string
from .kafka import KAFKA_SH
from .procs import BIN, SLOW, wait_until
from .stack import Dispatcher, Receiver, Retrier


def event(etype="user.session.start"):
    user = "00u" + uuid.uuid4().hex[:12]
    return {"uuid": str(uuid.uuid4()), "eventType": etype, "displayMessage": "kfaults",
            "severity": "INFO",
            "actor": {"id": user, "type": "User", "alternateId": f"{user}@example.com"},
            "target": [{"id": user, "type": "User"}], "outcome": {"result": "SUCCESS"}}


class Feeder:
    """One hookbridge-producer reading JSON lines from a pipe, fed at `rate`
    events/s until stop(); stop() checks that it exited 0 (every event
    acknowledged by Kafka)."""

    def __init__(self, space, rate, workdir):
        self.produced = {}  # uuid -> time written (s, time.time())
        self.rate = rate
        self.stop_flag = threading.Event()
        self.log = open(os.path.join(workdir, "feeder.log"), "ab")
        # a stream through broker faults: librdkafka's 300 s for each event
        # (the producer's own once the brokers answered at start; set here
        # whatever happens at start)
        env = dict(os.environ, **space.env())
        env.setdefault("HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS", "300000")
        self.p = subprocess.Popen([str(BIN / "hookbridge-producer"), "-"],
                                  env=env, stdin=subprocess.PIPE,
                                  stdout=self.log, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        n, start = 0, time.monotonic()
        while not self.stop_flag.is_set():
            due = start + n / self.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            ev = event()
            self.p.stdin.write(json.dumps(ev) + "\n")
            self.produced[ev["uuid"]] = time.time()
            n += 1

    def stop(self):
        self.stop_flag.set()
        self.t.join()
        self.p.stdin.close()
        rc = self.p.wait(60 * SLOW)
        self.log.close()
        assert rc == 0, f"hookbridge-producer exited {rc}"


def produce_lines(space, evs):
    r = subprocess.run([str(BIN / "hookbridge-producer"), "-"],
                       input="".join(json.dumps(e) + "\n" for e in evs),
                       env=dict(os.environ, **space.env()), capture_output=True, text=True,
                       timeout=60 * SLOW)
    assert r.returncode == 0, f"hookbridge-producer: {r.stdout}{r.stderr}"


def read_topic(bootstrap, topic, timeout=30):
    """Every message of every partition of topic, from the start to the end
    offsets of now: [(partition, offset, key, value)]."""
    from kafka import KafkaConsumer, TopicPartition
    kc = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False,
                       consumer_timeout_ms=1000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(kc.partitions_for_topic(topic) or ())]
        assert parts, f"topic {topic} has no partitions"
        kc.assign(parts)
        kc.seek_to_beginning(*parts)
        end = kc.end_offsets(parts)
        out = []
        deadline = time.monotonic() + timeout * SLOW
        while any(kc.position(tp) < end[tp] for tp in parts):
            assert time.monotonic() < deadline, f"reading {topic}: timed out"
            for recs in kc.poll(500).values():
                out += [(m.partition, m.offset, m.key, m.value) for m in recs]
        return out
    finally:
        kc.close()


def event_uuids(bootstrap, topic):
    """Counter of the uuid of each event on the events topic."""
    c = Counter()
    for _, _, _, v in read_topic(bootstrap, topic):
        assert v[:2] == b"\xc3\x01", "not Avro single-object encoded"
        c[read_string(v, 10)[0]] += 1  # uuid is the schema's first field
    return c


def tier_messages(bootstrap, topic):
    """The DeliveryRetry messages on a delay tier, decoded, with 'raw' (the value)."""
    out = []
    for p, off, _, v in read_topic(bootstrap, topic):
        dr = decode("delivery_retry", v)
        dr["partition"], dr["raw"] = p, v
        out.append(dr)
    return out


def producer_ids(kafka, topic, node=1):
    """The producer ids of the record batches of topic in node's log
    directory (kafka.tools.DumpLogSegments): a set; -1 is a batch from a
    producer without idempotence."""
    data = kafka.dir / f"node-{node}" / "data"
    files = sorted(str(f) for d in data.glob(topic + "-*") for f in d.glob("*.log"))
    assert files, f"no log segment of {topic} on node {node}"
    cache = subprocess.run([str(KAFKA_SH), "fetch"], capture_output=True, text=True,
                           check=True).stdout.strip()
    r = subprocess.run(["java", "-Xmx128m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
                        "-Dlog4j2.configurationFile=" + str(kafka.dir / "log4j2.properties"),
                        "-cp", cache + "/*", "kafka.tools.DumpLogSegments", "--files",
                        ",".join(files)], capture_output=True, text=True, timeout=60 * SLOW)
    assert r.returncode == 0, r.stdout + r.stderr
    pids = set()
    for line in r.stdout.splitlines():
        if line.startswith("baseOffset:") and " producerId: " in line:
            pids.add(int(line.split(" producerId: ")[1].split()[0]))
    assert pids, f"no record batch of {topic}:\n{r.stdout[-2000:]}"
    return pids


def leaders(bootstrap, topic):
    """{partition: leader node id} as the cluster says now (-1: none)."""
    from kafka import KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=5000)
    try:
        meta = admin.describe_topics([topic])[0]
        return {p["partition"]: p["leader"] for p in meta["partitions"]}
    finally:
        admin.close()


def committed(bootstrap, group, topic):
    """The sum of the offsets group committed on topic's partitions."""
    from kafka import KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=5000)
    try:
        offs = admin.list_consumer_group_offsets(group)
        return sum(o.offset for tp, o in offs.items() if tp.topic == topic and o.offset > 0)
    finally:
        admin.close()


def try_leaders(bootstrap, topic):
    try:
        return leaders(bootstrap, topic)
    except Exception:  # a metadata request to the node just killed
        return None


def ready(svc):
    try:
        return svc.get("/readyz")[0] == 200
    except OSError:
        return False


class Stack:
    """Receiver (first attempt of each delivery answered 503 when fail_first),
    dispatcher and retrier on a fresh TopicSpace of kafka with one delay tier
    of `delay`, one subscription to user.session.start."""

    def __init__(self, kafka, db, group, workdir, delay, fail_first=1):
        from test_delivery import AUTH_VALUE, SECRET, register_verified  # the e2e suite's
        self.space = kafka.space(retry_schedule=delay)
        self.delay, self.tier = delay, self.space.retry_prefix + delay
        self.receiver = Receiver(group, workdir, secret=SECRET,
                                 auth=f"Authorization: {AUTH_VALUE}", fail_first=fail_first)
        env = {"HOOKBRIDGE_RETRY_SCHEDULE": delay, "HOOKBRIDGE_RETRY_JITTER": "0",
               "HOOKBRIDGE_LOG_LEVEL": "info",
               # every first attempt fails: that must not open the circuit
               "HOOKBRIDGE_CIRCUIT_FAILURES": "0"}
        self.d = Dispatcher(group, db, self.space.bootstrap, extra_env=env)
        self.r = Retrier(group, db, self.space.bootstrap, extra_env=env)
        self.d.wait_ready(60)
        self.r.wait_ready(60)
        self.sub = register_verified(db, self.receiver.url, ["user.session.start"])

    def delivered(self):
        """{uuid: number of acknowledged deliveries}"""
        return Counter(e["uuid"] for _, e in self.receiver.events())

    def wait_all(self, want, timeout):
        wait_until(lambda: set(want) <= set(self.delivered()), timeout,
                   f"all {len(want)} events delivered")

    def dups_new_id(self):
        """Events acknowledged more than once under different webhook-ids
        (the contract: a redelivery carries the same webhook-id)."""
        ids = {}
        for req, e in self.receiver.events():
            ids.setdefault(e["uuid"], set()).add(req["headers"].get("webhook-id"))
        return sum(len(v) > 1 for v in ids.values())

    def acked_between(self, t0, t1):
        """Acknowledged POSTs the receiver got between t0 and t1 (time.time())."""
        return sum(1 for r in self.receiver.posts()
                   if 200 <= r["status"] < 300 and t0 <= r["time_ms"] / 1000 <= t1)

    def retry_timing(self, delay_ms):
        """(early, latest lateness s): per delivery (webhook-id), attempt 2's
        POST against attempt 1's POST plus the tier's delay."""
        by_id = {}
        for req in self.receiver.posts():
            wid = {k.lower(): v for k, v in req["headers"].items()}.get("webhook-id")
            by_id.setdefault(wid, []).append(req["time_ms"])
        early, late = 0, 0.0
        for times in by_id.values():
            if len(times) < 2:
                continue
            gap = times[1] - times[0]
            early += gap < delay_ms - 50  # the receiver's clock; 50 ms of slack
            late = max(late, (gap - delay_ms) / 1000)
        return early, late

    def tier_written(self):
        """(handed, hops): the retries both services say they handed to the
        delay tier (a failed attempt, or one not made because the endpoint was
        busy), and the retrier's hops (a retry due later than the tier's span
        produced again, unchanged, onto the tier). Every message on the tier is
        one of these, or a copy no service meant to write."""
        series = f'hookbridge_retries_enqueued_total{{tier="{self.delay}"}}'
        return (int(self.d.metric(series) + self.r.metric(series)),
                int(self.r.metric("hookbridge_retry_hops_total")))

    def settled_tier(self, timeout=10):
        """The tier's messages and tier_written(), once the tier holds as many
        messages as the services say they wrote (a hop or a parked retry may
        still be on its way to the broker), or after timeout s."""
        deadline = time.time() + timeout * SLOW
        while True:
            written = self.tier_written()
            tier = tier_messages(self.space.bootstrap, self.tier)
            if len(tier) == sum(written) and self.tier_written() == written:
                return tier, written
            if time.time() > deadline:
                return tier, written
            time.sleep(0.5)

    def figures(self, kafka, produced, delay_ms, node=1):
        got = self.delivered()
        on_topic = event_uuids(self.space.bootstrap, self.space.events_topic)
        tier, (handed, hops) = self.settled_tier()
        per_attempt = Counter((m["delivery_id"], m["attempt"]) for m in tier)
        early, late = self.retry_timing(delay_ms)
        return {
            "produced": len(produced),
            "delivered": len(set(produced) & set(got)),
            "lost": len(set(produced) - set(got)),
            "dups_receiver": sum(n - 1 for n in got.values()),
            "dups_new_id": self.dups_new_id(),
            "missing_topic": len(set(produced) - set(on_topic)),
            "dups_topic": sum(n - 1 for n in on_topic.values()),
            "tier_msgs": len(tier),
            "dups_tier": sum(n - 1 for n in per_attempt.values()),
            "dups_tier_identical": len(tier) - len({m["raw"] for m in tier}),
            "tier_handed": handed,
            "hops": hops,
            # deliveries whose second attempt is on the tier
            "retried": len({m["delivery_id"] for m in tier if m["attempt"] == 2}),
            "early": early,
            "late_s": late,
            "pids_events": producer_ids(kafka, self.space.events_topic, node),
            "pids_tier": producer_ids(kafka, self.tier, node),
        }


def longest_silence(receiver, since):
    """The longest time (s) the receiver acknowledged nothing, from `since`
    (time.time()) to its last acknowledged delivery."""
    times = sorted(r["time_ms"] / 1000 for r in receiver.posts()
                   if 200 <= r["status"] < 300 and r["time_ms"] / 1000 >= since)
    return max([b - a for a, b in zip([since] + times, times)] or [float("nan")])


def broker_killed_mid_stream(kafka, db, group, workdir, rate=40, down_s=3.0):
    """kill -9 of the node leading partition 0 of the events topic while
    hookbridge-producer writes `rate` events/s and every delivery's first
    attempt fails (so the dispatcher writes each to the 1s delay tier and
    the retrier delivers it): the node stays down down_s, is restarted, and
    production goes on 2 s more."""
    s = Stack(kafka, db, group, workdir, "1s")
    feeder = Feeder(s.space, rate, workdir)
    wait_until(lambda: len(s.delivered()) >= rate, 30, "deliveries to flow")
    victim = leaders(s.space.bootstrap, s.space.events_topic)[0]
    t_kill = time.time()
    kafka.kill_node(victim)
    time.sleep(down_s)  # the fault's length: production goes on meanwhile
    kafka.start_node(victim)
    kafka.wait_node(victim)
    time.sleep(2)
    feeder.stop()
    s.wait_all(feeder.produced, 60)
    f = s.figures(kafka, feeder.produced, 1000, node=victim % kafka.nodes + 1)
    f["victim"] = victim
    f["recover_s"] = longest_silence(s.receiver, t_kill)
    return f


def cluster_restarted(kafka, db, group, workdir, n=10):
    """n events whose first attempt fails wait on the 5s tier (the events'
    offsets committed) when all three nodes get SIGTERM at once; both services must go not ready; the nodes
    start again on the same data; both services ready again, the waiting
    retries fire (not early), and n events produced then are delivered."""
    s = Stack(kafka, db, group, workdir, "5s")
    before = [event() for _ in range(n)]
    produce_lines(s.space, before)
    wait_until(lambda: len([p for p in s.receiver.posts() if p["status"] == 503]) >= n, 30,
               "every first attempt (503)")
    # The dispatcher is done with them: the events' offsets committed (else
    # it would deliver them again after the restart, at least once) and the
    # retries on the tier, where the retrier holds them until due.
    wait_until(lambda: committed(s.space.bootstrap, s.d.env["HOOKBRIDGE_CONSUMER_GROUP"],
                                 s.space.events_topic) == n, 30, "the dispatcher's commit")
    wait_until(lambda: len(tier_messages(s.space.bootstrap, s.tier)) == n, 30,
               "the retries on the tier")
    t_stop = time.time()
    for i in range(1, kafka.nodes + 1):
        kafka.terminate_node(i)  # all at once, as kafka.sh stop does
    # A node whose controlled shutdown begins after the other two are gone
    # waits minutes for a controller quorum that is no more, and answers
    # meanwhile (CI 111, under the sanitizers' load: the services, still
    # connected to it, stayed ready). As an operator would, it gets SIGKILL.
    stuck, deadline = [], time.monotonic() + 20 * SLOW
    for i in range(1, kafka.nodes + 1):
        try:
            kafka.procs[i].wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kafka.kill_node(i)
            stuck.append(i)
    stopped_s = time.time() - t_stop
    wait_until(lambda: not ready(s.d) and not ready(s.r), 30, "both services not ready")
    not_ready_s = time.time() - t_stop
    t_start = time.time()
    for i in range(1, kafka.nodes + 1):
        kafka.start_node(i)
    for i in range(1, kafka.nodes + 1):
        kafka.wait_node(i)
    nodes_up_s = time.time() - t_start
    wait_until(lambda: ready(s.d) and ready(s.r), 60, "both services ready again")
    t_ready = time.time()
    after = [event() for _ in range(n)]
    produce_lines(s.space, after)
    produced = {e["uuid"]: 0 for e in before + after}
    s.wait_all(produced, 60)
    f = s.figures(kafka, produced, 5000)
    f["not_ready_s"] = not_ready_s
    f["stopped_s"] = stopped_s
    f["killed_stuck"] = stuck
    f["nodes_up_s"] = nodes_up_s
    f["acked_while_down"] = s.acked_between(t_stop, t_start)
    f["recover_s"] = t_ready - t_start
    f["resumed_s"] = time.time() - t_start
    f["alive"] = s.d.proc.alive() and s.r.proc.alive()
    return f


def tier_leader_moved(kafka, db, group, workdir, n=10, delay="10s"):
    """n deliveries wait on the 10s tier (first attempts failed; one
    subscription, so one partition); its leader is killed (-9), a new leader
    elected, the old one restarted; the retries must fire when due, not
    before, and every event be delivered."""
    delay_ms = int(delay[:-1]) * 1000
    s = Stack(kafka, db, group, workdir, delay)
    evs = [event() for _ in range(n)]
    produce_lines(s.space, evs)
    wait_until(lambda: len([p for p in s.receiver.posts() if p["status"] == 503]) >= n, 30,
               "every first attempt (503)")
    t_first = max(p["time_ms"] for p in s.receiver.posts()) / 1000
    msgs = wait_until(lambda: (m := tier_messages(s.space.bootstrap, s.tier)) and len(m) == n and m,
                      30, "the retries on the tier")
    parts = {m["partition"] for m in msgs}
    assert len(parts) == 1, parts
    part = parts.pop()
    # The dispatcher's offsets committed first (auto-commit, every second).
    # Else, when the node killed is also its group's coordinator, the session
    # expires with the offsets uncommitted and the dispatcher reads the
    # events again and delivers them (at least once, same webhook-ids):
    # second POSTs 12 s after the first, which the timing check below would
    # take for retries sent early (CI run 65, under the sanitizers).
    wait_until(lambda: committed(s.space.bootstrap, s.d.env["HOOKBRIDGE_CONSUMER_GROUP"],
                                 s.space.events_topic) >= n, 10,
               "the dispatcher to commit the events' offsets")
    old = leaders(s.space.bootstrap, s.tier)[part]
    t_kill = time.time()
    kafka.kill_node(old)
    new = wait_until(lambda: (ls := try_leaders(s.space.bootstrap, s.tier))
                     and ls[part] not in (old, -1) and ls[part], 30, "a new leader of the tier")
    moved_s = time.time() - t_kill
    moved_before_due = time.time() < t_first + delay_ms / 1000
    kafka.start_node(old)
    kafka.wait_node(old)
    s.wait_all({e["uuid"]: 0 for e in evs}, 60)
    f = s.figures(kafka, {e["uuid"]: 0 for e in evs}, delay_ms, node=new)
    f.update(old_leader=old, new_leader=new, recover_s=moved_s,
             moved_before_due=moved_before_due)
    return f


def rolling_restart(kafka, db, group, workdir, rate=20, settle_s=8.0):
    """A rolling restart, as a platform team does one: each node in turn
    stopped (SIGTERM: a controlled shutdown), started again, and settle_s
    given before the next, while hookbridge-producer writes `rate` events/s
    and every delivery's first attempt fails (so each also goes through the
    5s delay tier). Besides the usual figures: not_ready, the /readyz
    answers other than 200 either service gave (sampled every 0.2 s)."""
    s = Stack(kafka, db, group, workdir, "5s")
    not_ready, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            for svc in (s.d, s.r):
                try:
                    st = svc.get("/readyz")
                except OSError as e:
                    st = (0, str(e))
                if st[0] != 200:
                    not_ready.append((svc.program, st))
            time.sleep(0.2)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    feeder = Feeder(s.space, rate, workdir)
    wait_until(lambda: len(s.delivered()) >= rate, 30, "deliveries to flow")
    t_roll = time.time()
    for node in range(1, kafka.nodes + 1):
        kafka.stop_node(node)
        kafka.start_node(node)
        kafka.wait_node(node)
        time.sleep(settle_s)
    feeder.stop()
    roll_s = time.time() - t_roll
    s.wait_all(feeder.produced, 120)
    stop.set()
    watcher.join()
    f = s.figures(kafka, feeder.produced, 5000)
    f.update(roll_s=roll_s, recover_s=longest_silence(s.receiver, t_roll),
             not_ready=not_ready)
    return f
