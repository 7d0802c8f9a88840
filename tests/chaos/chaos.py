#!/usr/bin/env python3
"""hookbridge's fault suite (`make chaos`, issue 10): the real binaries under
faults that are ordinary in production, and what a subscriber would notice.

Each scenario starts its own stack with the end-to-end harness
(tests/e2e/hbtest): a throwaway PostgreSQL cluster, hookbridge-devbroker,
example receivers (hookbridge-receiver, recording every request), the
dispatcher and the retrier; registers, verifies and activates one
subscription per receiver, each subscribed to every event type produced;
feeds hookbridge-producer events at a steady rate (every uuid is known), and
injects its fault mid-stream. When the stream has ended and the fault is
healed it waits until every event has reached every healthy subscription
(for a failing receiver: reached it or been dead-lettered) or the drain
time is up, then compares three accounts of what happened:

  * the receivers' records: a delivery counts as delivered only when the
    receiver answered it with a 2xx (by webhook-id, and by event uuid);
  * hookbridge.dlq, decoded with tests/e2e/hbtest/avro.py;
  * the delivery log, hookbridge.deliveries (and delivery_attempts).

A scenario PASSes when nothing is lost (every produced event delivered to
every healthy subscription; for the failing receiver delivered or
dead-lettered), there is no false dead letter (a delivery a receiver
acknowledged but logged failed or put on the DLQ), the log agrees with the
receivers (every acknowledged delivery has a `delivered` row, no `delivered`
row lacks an acknowledgement), the producer lost nothing, plus the scenario's
own check: the healthy endpoint's pace next to a hung one (deliveries per
5 s window at least CHAOS_PACE_MIN of the produce rate), and /readyz leaving
200 while the broker is frozen. Duplicates (at least once) are reported,
never a failure.

One exception, and it is counted in its own column ("lost in kill"): an
acknowledgement that reached the receiver less than CHAOS_KILL_WINDOW_MS
before a kill -9 of the service that made the request, for a delivery the
log never recorded as delivered. That answer died with the process before
it was written down (hookbridge promises the log holds every outcome that
moved an offset, not one the process never got to record), so the attempt
is made again after the restart, with the same webhook-id; a receiver that
de-duplicates answers 2xx again, while this suite's 50 %-failing receiver
may not, and may see the delivery dead-lettered. Such a delivery is neither
a false dead letter nor a log disagreement; one logged `delivered` and then
failed, or acknowledged long before any kill, is.

Usage: tests/chaos/chaos.py [SCENARIO ...]   (or CHAOS_SCENARIOS=a,b)
Settings (environment): see SETTINGS below; HOOKBRIDGE_BIN picks the binaries.
Exit status: 0 when every scenario passed, 1 otherwise.
"""
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from hbtest.avro import decode  # noqa: E402
from hbtest.ingest import AUTH_HEADER, AUTH_VALUE, PATH, envelope  # noqa: E402
from hbtest.endpoints import ChallengeAnswering, serve  # noqa: E402
from hbtest.lifecycle import ACTIVE, changes_applied, event, register_active, sql  # noqa: E402
from hbtest.pg import PgCluster  # noqa: E402
from hbtest.procs import BIN, ProcessGroup, free_port, http_get, wait_until  # noqa: E402
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier  # noqa: E402


def _env(name, default, conv=str):
    v = os.environ.get(name, "")
    return conv(v) if v.strip() else default


SETTINGS = {  # name: (default, meaning)
    "CHAOS_RATE": (100.0, "events per second produced in every scenario but hung-receiver"),
    "CHAOS_SECONDS": (30.0, "seconds of production per scenario"),
    "CHAOS_FAULT_AT": (10.0, "seconds into production when the fault starts"),
    "CHAOS_FAULT_SECONDS": (15.0, "how long an outage lasts (PostgreSQL, brokers, freeze)"),
    "CHAOS_RETRIER_DOWN": (10.0, "seconds the retrier stays dead before its restart"),
    "CHAOS_SCHEDULE": ("1s,2s,4s,8s", "retry schedule (every scenario but hung-receiver)"),
    "CHAOS_FAIL_RATE": (50, "percent of requests the failing receiver answers 503"),
    "CHAOS_HUNG_RATE": (500.0, "events per second in hung-receiver"),
    "CHAOS_HUNG_SECONDS": (30.0, "seconds of production in hung-receiver"),
    "CHAOS_PACE_MIN": (0.9, "lowest share of the produce rate the healthy endpoint must keep"),
    "CHAOS_DRAIN": (90.0, "seconds to wait, after production and healing, for delivery to finish"),
    "CHAOS_ORDER_KEYS": (300, "ordered-kill: keys (users, the message key) the events are spread over"),
    "CHAOS_ORDERING": ("key", "ordered-kill: the ordering option; none: without it (a control run, "
                       "in which the order check should find violations)"),
    "CHAOS_ORDER_FAIL_RATE": (20, "ordered-kill: percent of requests the ordered receiver answers 503"),
    "CHAOS_LIMIT_RATE": (50.0, "rate-limited-kill: the limited subscription's per_second"),
    "CHAOS_LIMIT_BURST": (10, "rate-limited-kill: the limited subscription's burst"),
    "CHAOS_KEEP": (0, "1: keep every scenario's work directory (logs, records)"),
    "CHAOS_KILL_WINDOW_MS": (1000, "an acknowledgement this close before a kill -9, never logged "
                             "delivered, died with the process (see the top of this file)"),
}
CFG = {k: _env(k, d, type(d)) for k, (d, _) in SETTINGS.items()}
TYPES = ["user.session.start", "user.lifecycle.create", "user.account.lock"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- what the receivers acknowledged ---------------------------------------

class Tally:
    """Reads a receiver's --record file incrementally: per webhook-id the
    requests, the 2xx answers, the event uuids and the first 2xx's time."""

    def __init__(self, path):
        self.path = Path(path)
        self.offset = 0
        self.posts = {}      # webhook-id -> number of POSTs
        self.acks = {}       # webhook-id -> number of 2xx answers
        self.uuids = {}      # webhook-id -> event uuids in the body
        self.first_ack = {}  # webhook-id -> time_ms of the first 2xx
        self.ack_seq = {}    # webhook-id -> the first 2xx's place in the record (arrival order)
        self.post_times = []  # time_ms of every POST
        self.lines = 0

    def refresh(self):
        if not self.path.exists():
            return self
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self.offset += end
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            self.lines += 1
            if r["method"] != "POST":
                continue
            self.post_times.append(r["time_ms"])
            wid = r["headers"].get("webhook-id", "")
            self.posts[wid] = self.posts.get(wid, 0) + 1
            if wid not in self.uuids:
                self.uuids[wid] = body_uuids(r.get("body") or "")
            if 200 <= r["status"] < 300:
                self.acks[wid] = self.acks.get(wid, 0) + 1
                self.first_ack.setdefault(wid, r["time_ms"])
                self.ack_seq.setdefault(wid, self.lines)
        return self

    def acked_uuids(self):
        return {u for wid in self.acks for u in self.uuids.get(wid, ())}

    def duplicates(self):
        return sum(n - 1 for n in self.acks.values())

    def requests(self):
        return sum(self.posts.values())


def body_uuids(body):
    try:
        b = json.loads(body)
    except ValueError:
        return []
    if isinstance(b, dict) and isinstance(b.get("data"), dict) and "events" in b["data"]:
        evs = b["data"]["events"]
    elif isinstance(b, list):
        evs = b
    else:
        evs = [b]
    return [e.get("uuid") for e in evs if isinstance(e, dict)]


class HungEndpoint:
    """Answers the verification challenge; reads every POST and never answers
    it (until the scenario ends: then the connection is closed unanswered)."""

    def __init__(self):
        release = self.release = threading.Event()
        counts = self.counts = {"posts": 0}
        lock = threading.Lock()

        class Handler(ChallengeAnswering):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    counts["posts"] += 1
                release.wait()
                self.close_connection = True

        self.srv = serve(Handler)
        self.url = self.srv.url

    def stop(self):
        self.release.set()
        self.srv.shutdown()
        self.srv.server_close()


# ---- the event stream -------------------------------------------------------

class Timed:
    """A stream's clock: production started at t0 (wall time)."""

    def elapsed(self):
        return time.time() - self.t0

    def sleep_until(self, t):
        """Sleeps until `t` seconds after production started."""
        d = self.t0 + t - time.time()
        if d > 0:
            time.sleep(d)


class Feed(Timed):
    """hookbridge-producer reading JSON lines on stdin, fed `rate` events a
    second for `seconds` by a thread; remembers every uuid it wrote."""

    def __init__(self, workdir, brokers, rate, seconds, keys=0):
        self.rate, self.seconds = rate, seconds
        self.keys = keys  # > 0: every event about one of that many users (its message key)
        self.key_of = {}  # uuid -> its user (the message key), when keys
        self.total = int(rate * seconds)
        self.uuids = []
        self.marks = []  # (wall time, events written then)
        self.log_path = Path(workdir) / "producer.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, HOOKBRIDGE_KAFKA_BROKERS=brokers,
                   HOOKBRIDGE_EVENTS_TOPIC="identity.events")
        # A stream through an outage: events wait for the brokers as long as
        # librdkafka lets them by default (the producer's own wait once the
        # brokers answered at start; set here whatever happens at start), so
        # a longer CHAOS_FAULT_SECONDS loses nothing.
        env.setdefault("HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS", "300000")
        self.proc = subprocess.Popen([str(BIN / "hookbridge-producer"), "-"], env=env,
                                     stdin=subprocess.PIPE, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.t0 = time.time()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        start = time.monotonic()
        i = 0
        try:
            while i < self.total:
                due = min(self.total, int((time.monotonic() - start) * self.rate) + 1)
                chunk = []
                while i < due:
                    user = f"00uchaos{random.randrange(self.keys):05d}" if self.keys else None
                    ev = event(TYPES[i % len(TYPES)], user)
                    self.uuids.append(ev["uuid"])
                    if user:
                        self.key_of[ev["uuid"]] = user
                    chunk.append(json.dumps(ev))
                    i += 1
                if chunk:
                    self.proc.stdin.write(("\n".join(chunk) + "\n").encode())
                    self.proc.stdin.flush()
                    self.marks.append((time.time(), len(chunk)))
                time.sleep(0.01)
        except (BrokenPipeError, OSError):
            pass
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def finish(self, timeout=180):
        """Waits for the stream to end and the producer to exit: (produced, failed)."""
        self.thread.join()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        out = self.log_path.read_text(errors="replace")
        for line in reversed(out.splitlines()):
            if line.startswith("produced "):
                a, b = line.split(",")
                return int(a.split()[1]), int(b.split()[1])
        return 0, len(self.uuids)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class OktaFeed(Timed):
    """Okta's event hook in front of the ingest endpoint: deliveries of
    BATCH events POSTed at `rate` events a second for `seconds`, each from a
    thread of its own (Okta keeps several requests open). A delivery not
    answered 2xx within 3 s (Okta's timeout) is sent once more a second
    later, and then given up, as Okta does. `uuids` are the events of the
    deliveries answered 2xx: what the endpoint promised to publish; finish()
    says how many events Okta gave up (the scenario's "producer failed")."""

    BATCH = 5
    TIMEOUT = 3.0

    def __init__(self, port, rate, seconds):
        self.port, self.rate, self.seconds = port, rate, seconds
        self.total = int(rate * seconds)
        self.uuids = []
        self.gave_up = []
        self.answers = {}  # status (None: no answer in time) -> count, every attempt
        self.slowest = 0.0  # the longest answered attempt, s
        self.lock = threading.Lock()
        self.threads = []
        self.t0 = time.time()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        start = time.monotonic()
        for i in range(0, self.total, self.BATCH):
            due = start + i / self.rate
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            evs = [event(TYPES[(i + k) % len(TYPES)]) for k in range(min(self.BATCH, self.total - i))]
            t = threading.Thread(target=self._deliver, args=(evs,), daemon=True)
            t.start()
            self.threads.append(t)

    def _attempt(self, body):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.TIMEOUT)
        t = time.monotonic()
        try:
            conn.request("POST", PATH, body=body, headers={
                AUTH_HEADER: AUTH_VALUE, "Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            with self.lock:
                self.slowest = max(self.slowest, time.monotonic() - t)
            return r.status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def _deliver(self, evs):
        body = json.dumps(envelope(evs))
        for attempt in (1, 2):
            status = self._attempt(body)
            with self.lock:
                self.answers[status] = self.answers.get(status, 0) + 1
                if status and 200 <= status < 300:
                    self.uuids.extend(e["uuid"] for e in evs)
                    return
            if attempt == 1:
                time.sleep(1)
        with self.lock:
            self.gave_up.extend(e["uuid"] for e in evs)

    def finish(self, timeout=180):
        self.thread.join()
        for t in self.threads:
            t.join(timeout)
        return len(self.uuids), len(self.gave_up)

    def kill(self):
        pass  # daemon threads; nothing to stop


# ---- one scenario's stack ---------------------------------------------------

class Sub:
    def __init__(self, name, kind, url, tally=None, endpoint=None, options=None):
        self.name, self.kind, self.url = name, kind, url  # kind: healthy, failing, hung
        self.tally, self.endpoint = tally, endpoint
        self.options = options or {}  # the subscription's options (ordering, rate_limit)
        self.id = None


class Stack:
    def __init__(self, name, schedule):
        self.name = name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"hbchaos-{name}-", dir="/tmp"))
        os.chmod(self.workdir, 0o755)
        self.group = ProcessGroup(self.workdir)
        self.schedule = schedule
        self.pg = PgCluster().start()
        self.db_url = self.pg.url(self.pg.migrated_database("chaos"))
        self.broker = Broker(self.group, self.workdir, retry_schedule=schedule)
        self.env = {"HOOKBRIDGE_LOG_LEVEL": "info"}
        if schedule:
            self.env["HOOKBRIDGE_RETRY_SCHEDULE"] = schedule
        self.services = []
        self.killed = set()  # services a scenario killed on purpose
        self.kills_ms = []   # wall-clock times of those kill -9s
        self.subs = []
        self.hung = []
        self.feed = None

    def receiver(self, name, kind="healthy", args=(), options=None):
        r = Receiver(self.group, self.workdir, name=name, args=["--quiet", *args])
        sub = Sub(name, kind, r.url, tally=Tally(r.record), options=options)
        self.subs.append(sub)
        return sub

    def hung_endpoint(self, name="hung"):
        h = HungEndpoint()
        self.hung.append(h)
        sub = Sub(name, "hung", h.url, endpoint=h)
        self.subs.append(sub)
        return sub

    def service(self, cls, name=None, ready=True):
        s = cls(self.group, self.db_url, self.broker.bootstrap, extra_env=self.env, name=name)
        self.services.append(s)
        if ready:
            s.wait_ready(60)
        return s

    def register_all(self):
        """Registers, verifies and activates every receiver's subscription and
        waits until every running service has applied it."""
        first = self.services[0]
        for sub in self.subs:
            sub.id = register_active(first, self.db_url, sub.url, TYPES, options=sub.options,
                                     name=sub.name)
            for s in self.services[1:]:
                wait_until(lambda s=s, sub=sub: changes_applied(s, sub.id, ACTIVE) > 0, 20,
                           f"{s.name} to apply subscription {sub.name}")

    def ingest(self, name="ingest", port=None, spool=None, ready=True):
        """hookbridge-producer --listen (the Okta ingest endpoint) on `port`
        (default: a free one), spooling to `spool` (default: the workdir's
        ingest-spool), health on a free port, once ready (else once it
        listens): (Proc, port, health port)."""
        port = port or free_port()
        health = free_port()
        env = dict(self.env, HOOKBRIDGE_KAFKA_BROKERS=self.broker.bootstrap,
                   HOOKBRIDGE_HTTP_LISTEN=f"127.0.0.1:{health}",
                   HOOKBRIDGE_INGEST_AUTH_VALUE=AUTH_VALUE,
                   HOOKBRIDGE_INGEST_SPOOL_DIR=str(spool or self.workdir / "ingest-spool"))
        proc = self.group.start(name, [BIN / "hookbridge-producer", "--listen",
                                       f"127.0.0.1:{port}"], env)
        wait_until(lambda: http_get(health, "/readyz" if ready else "/healthz")[0] == 200
                   or not proc.alive(), 60, f"{name} to be {'ready' if ready else 'up'}")
        if not proc.alive():
            raise RuntimeError(f"{name} exited: {proc.output()[-2000:]}")
        return proc, port, health

    def start_feed(self, rate, seconds, keys=0):
        self.feed = Feed(self.workdir, self.broker.bootstrap, rate, seconds, keys)
        return self.feed

    def pg_ctl(self, *args):
        r = self.pg._run([self.pg.bindir / "pg_ctl", "-D", self.pg.data, *args], timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)}: {r.stdout}{r.stderr}")

    def pg_start(self):
        opts = (f"-p {self.pg.port} -k {self.pg.run_dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200")
        self.pg_ctl("-l", self.pg.run_dir / "pg.log", "-w", "-t", "60", "-o", opts, "start")
        self.pg.running = True

    def stop(self):
        """Stops everything; returns the sanitizer reports found in the
        processes' output (a sanitizer build: HOOKBRIDGE_BIN=bin-san)."""
        if self.feed:
            self.feed.kill()
        for h in self.hung:
            h.stop()
        self.group.stop_all()
        self.pg.stop()
        reports = []
        logs = [(p.name, p.output()) for p in self.group.procs]
        if getattr(self.feed, "log_path", None):  # an OktaFeed has none: its producer is a service
            logs.append(("producer", self.feed.log_path.read_text(errors="replace")))
        for name, out in logs:
            for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                if marker in out:
                    reports.append(f"{name}: {marker}")
        return reports

    def remove(self):
        shutil.rmtree(self.workdir, ignore_errors=True)


# ---- the three accounts, compared -------------------------------------------

class Dlq:
    """Everything on hookbridge.dlq: every partition assigned from the start,
    and each refresh() reads up to the end offsets as they are then."""

    def __init__(self, bootstrap):
        from kafka import KafkaConsumer, TopicPartition
        self.kc = KafkaConsumer(bootstrap_servers=bootstrap.split(","),
                                auto_offset_reset="earliest", enable_auto_commit=False)
        parts = wait_until(lambda: self.kc.partitions_for_topic("hookbridge.dlq"), 30,
                           "the partitions of hookbridge.dlq")
        self.tps = [TopicPartition("hookbridge.dlq", p) for p in sorted(parts)]
        self.kc.assign(self.tps)
        self.kc.seek_to_beginning(*self.tps)
        self.msgs = []  # (subscription_id, delivery_id, event uuids)

    def refresh(self):
        ends = self.kc.end_offsets(self.tps)
        deadline = time.monotonic() + 30
        while any(self.kc.position(tp) < ends[tp] for tp in self.tps):
            if time.monotonic() > deadline:
                raise RuntimeError("cannot read hookbridge.dlq to its end")
            for records in self.kc.poll(timeout_ms=300).values():
                for m in records:
                    d = decode("delivery_retry", m.value)
                    self.msgs.append((d["subscription_id"], d["delivery_id"],
                                      body_uuids(d.get("body", ""))))
        return self

    def close(self):
        self.kc.close()


def log_rows(db_url):
    rows = sql(db_url, "SELECT delivery_id::text, subscription_id::text, event_ids, status "
               "FROM hookbridge.deliveries")
    out = {}
    for did, sid, eids, status in rows:
        out.setdefault(sid, {})[did] = (status, [e for e in eids.split(",") if e])
    return out


def attempts_logged(db_url):
    rows = sql(db_url, "SELECT d.subscription_id::text, count(*) FROM hookbridge.delivery_attempts a "
               "JOIN hookbridge.deliveries d USING (delivery_id) WHERE a.attempt > 0 GROUP BY 1")
    return dict(rows)


def lost_in_kill(tally, kills_ms, delivered_rows):
    """webhook-ids first acknowledged within CHAOS_KILL_WINDOW_MS before a
    kill -9, with no delivered row: answers that died with the process."""
    window = CFG["CHAOS_KILL_WINDOW_MS"]
    return {wid for wid, t in tally.first_ack.items() if wid not in delivered_rows
            and any(0 <= k - t <= window for k in kills_ms)}


def assess(stack, produced_uuids, dlq, rows):
    """Per subscription: the figures and the problems found."""
    out = []
    expected = set(produced_uuids)
    for sub in stack.subs:
        t = sub.tally.refresh() if sub.tally else None
        acks = set(t.acks) if t else set()
        mine = rows.get(sub.id, {})
        dlq_ids = [did for sid, did, _ in dlq.msgs if sid == sub.id]
        dlq_uuids = {u for sid, _, us in dlq.msgs if sid == sub.id for u in us}
        failed = {did for did, (st, _) in mine.items() if st == "failed"}
        failed_uuids = {u for did in failed for u in mine[did][1]}
        delivered_rows = {did for did, (st, _) in mine.items() if st == "delivered"}
        in_kill = lost_in_kill(t, stack.kills_ms, delivered_rows) if t else set()
        f = {
            "sub": sub.name, "kind": sub.kind,
            "delivered": len(t.acked_uuids() & expected) if t else 0,
            "dups": t.duplicates() if t else 0,
            "dead": len(set(dlq_ids) | failed),
            "dlq_msgs": len(dlq_ids),
            "false_dl": len((acks - in_kill) & (set(dlq_ids) | failed)),
            "ack_no_row": len(acks - delivered_rows - in_kill),
            "lost_in_kill": len(in_kill),
            "row_no_ack": len(delivered_rows - acks),
            "requests": t.requests() if t else sub.endpoint.counts["posts"],
        }
        if sub.kind == "healthy":
            f["lost"] = len(expected - t.acked_uuids())
        elif sub.kind == "failing":
            f["lost"] = len(expected - t.acked_uuids() - dlq_uuids - failed_uuids)
        else:
            f["lost"] = None  # a hung endpoint receives nothing; not counted
        f["log_ok"] = f["ack_no_row"] == 0 and f["row_no_ack"] == 0
        out.append(f)
    return out


def missing(stack, expected, dlq):
    """How many (subscription, event) pairs are still neither acknowledged nor,
    for a failing receiver, dead-lettered."""
    n = 0
    for sub in stack.subs:
        if sub.kind == "hung":
            continue
        got = sub.tally.refresh().acked_uuids()
        if sub.kind == "failing":
            got = got | {u for sid, _, us in dlq.msgs if sid == sub.id for u in us}
        n += len(expected - got)
    return n


def settle(stack, result):
    """After the stream and the fault: waits until every delivery is finished
    (or CHAOS_DRAIN is up), then until the log agrees (30 s at most, the log
    is written asynchronously); fills result with the figures."""
    produced, failed = stack.feed.finish()
    result["produced"] = len(stack.feed.uuids)
    result["producer_failed"] = failed
    expected = set(stack.feed.uuids)
    dlq = Dlq(stack.broker.bootstrap)
    t0 = time.monotonic()
    try:
        while missing(stack, expected, dlq.refresh()) and time.monotonic() - t0 < CFG["CHAOS_DRAIN"]:
            time.sleep(1)
        result["drain_s"] = time.monotonic() - t0
        t1 = time.monotonic()
        while True:
            figures = assess(stack, stack.feed.uuids, dlq.refresh(), log_rows(stack.db_url))
            if all(f["log_ok"] for f in figures) or time.monotonic() - t1 > 30:
                break
            time.sleep(1)
        logged = attempts_logged(stack.db_url)
    finally:
        dlq.close()
    for sub, f in zip(stack.subs, figures):
        f["attempts_logged"] = logged.get(sub.id, 0)
    result["subs"] = figures
    for s in stack.services:
        if s.name not in stack.killed and not s.proc.alive():
            result["notes"].append(f"{s.name} exited on its own (status {s.proc.p.returncode})")


# ---- the scenarios ------------------------------------------------------------

def sc_dispatcher_kill(st, result):
    """kill -9 of the dispatcher mid-stream, restarted at once."""
    st.receiver("receiver")
    d = st.service(Dispatcher)
    st.service(Retrier)
    st.register_all()
    feed = st.start_feed(CFG["CHAOS_RATE"], CFG["CHAOS_SECONDS"])
    feed.sleep_until(CFG["CHAOS_FAULT_AT"])
    st.kills_ms.append(int(time.time() * 1000))
    d.proc.kill()
    result["notes"].append(f"dispatcher killed -9 at {feed.elapsed():.1f}s, restarted")
    d.restart()
    settle(st, result)


def sc_retrier_kill(st, result):
    """kill -9 of the retrier with retries pending (receiver failing 50 %),
    restarted CHAOS_RETRIER_DOWN seconds later."""
    st.receiver("flaky", "failing", ["--fail-rate", CFG["CHAOS_FAIL_RATE"]])
    st.service(Dispatcher)
    r = st.service(Retrier)
    st.register_all()
    feed = st.start_feed(CFG["CHAOS_RATE"], CFG["CHAOS_SECONDS"])
    feed.sleep_until(CFG["CHAOS_FAULT_AT"])
    pending = sql(st.db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE status='retry'")[0][0]
    st.kills_ms.append(int(time.time() * 1000))
    r.proc.kill()
    result["notes"].append(f"retrier killed -9 at {feed.elapsed():.1f}s with {pending} retries "
                           f"pending, restarted {CFG['CHAOS_RETRIER_DOWN']:.0f}s later")
    time.sleep(CFG["CHAOS_RETRIER_DOWN"])
    r.restart()
    settle(st, result)


def two_dispatchers_one_killed(st, result):
    """Two dispatcher replicas in one group and a retrier, the receivers
    registered, the feed started; at CHAOS_FAULT_AT one replica is killed
    with -9 and not restarted; then the stack settles."""
    st.service(Dispatcher, name="dispatcher-a")
    b = st.service(Dispatcher, name="dispatcher-b")
    st.service(Retrier)
    st.register_all()
    feed = st.start_feed(CFG["CHAOS_RATE"], CFG["CHAOS_SECONDS"])
    feed.sleep_until(CFG["CHAOS_FAULT_AT"])
    st.kills_ms.append(int(time.time() * 1000))
    b.proc.kill()
    st.killed.add(b.name)
    result["notes"].append(f"dispatcher-b killed -9 at {feed.elapsed():.1f}s, not restarted")
    settle(st, result)


def sc_replica_kill(st, result):
    """Two dispatcher replicas in one consumer group; one killed with -9."""
    st.receiver("receiver")
    two_dispatchers_one_killed(st, result)


def sc_pg_restart(st, result):
    """PostgreSQL restarted (fast shutdown, start again) mid-stream."""
    st.receiver("receiver")
    st.service(Dispatcher)
    st.service(Retrier)
    st.register_all()
    feed = st.start_feed(CFG["CHAOS_RATE"], CFG["CHAOS_SECONDS"])
    feed.sleep_until(CFG["CHAOS_FAULT_AT"])
    t = time.monotonic()
    st.pg_ctl("-l", st.pg.run_dir / "pg.log", "-m", "fast", "-w", "-t", "60", "restart")
    result["notes"].append(f"PostgreSQL restarted at {feed.elapsed():.1f}s "
                           f"(down {time.monotonic() - t:.1f}s)")
    settle(st, result)


def sc_pg_down(st, result):
    """PostgreSQL stopped for CHAOS_FAULT_SECONDS mid-stream."""
    st.receiver("receiver")
    st.service(Dispatcher)
    st.service(Retrier)
    st.register_all()
    feed = st.start_feed(CFG["CHAOS_RATE"], CFG["CHAOS_SECONDS"])
    feed.sleep_until(CFG["CHAOS_FAULT_AT"])
    st.pg_ctl("-m", "fast", "-w", "stop")
    st.pg.running = False
    result["notes"].append(f"PostgreSQL stopped at {feed.elapsed():.1f}s "
                           f"for {CFG['CHAOS_FAULT_SECONDS']:.0f}s")
    time.sleep(CFG["CHAOS_FAULT_SECONDS"])
    st.pg_start()
    settle(st, result)


def sc_broker_down(st, result):
    """Every broker down (devbroker SIGUSR1) for CHAOS_FAULT_SECONDS, then up (SIGUSR2)."""
    st.receiver("receiver")
    st.service(Dispatcher)
    st.service(Retrier)
    st.register_all()
    feed = st.start_feed(CFG["CHAOS_RATE"], CFG["CHAOS_SECONDS"])
    feed.sleep_until(CFG["CHAOS_FAULT_AT"])
    st.broker.proc.signal(signal.SIGUSR1)
    result["notes"].append(f"brokers down at {feed.elapsed():.1f}s "
                           f"for {CFG['CHAOS_FAULT_SECONDS']:.0f}s")
    time.sleep(CFG["CHAOS_FAULT_SECONDS"])
    st.broker.proc.signal(signal.SIGUSR2)
    settle(st, result)


def sc_broker_freeze(st, result):
    """The broker process frozen (SIGSTOP) for CHAOS_FAULT_SECONDS, then SIGCONT.
    Also checks that /readyz of the dispatcher and the retrier leaves 200
    while the broker is frozen, and is 200 again after."""
    st.receiver("receiver")
    d = st.service(Dispatcher)
    r = st.service(Retrier)
    st.register_all()
    feed = st.start_feed(CFG["CHAOS_RATE"], CFG["CHAOS_SECONDS"])
    feed.sleep_until(CFG["CHAOS_FAULT_AT"])
    st.broker.proc.signal(signal.SIGSTOP)
    t0 = time.monotonic()
    not_ready = {d.name: None, r.name: None}
    try:
        while time.monotonic() - t0 < CFG["CHAOS_FAULT_SECONDS"]:
            for s in (d, r):
                if not_ready[s.name] is None and s.get("/readyz")[0] != 200:
                    not_ready[s.name] = time.monotonic() - t0
            time.sleep(0.5)
    finally:
        st.broker.proc.signal(signal.SIGCONT)
    result["notes"].append(f"broker frozen at {feed.elapsed() - CFG['CHAOS_FAULT_SECONDS']:.1f}s "
                           f"for {CFG['CHAOS_FAULT_SECONDS']:.0f}s")
    for name, after in not_ready.items():
        if after is None:
            result["checks"].append((False, f"{name} /readyz stayed 200 while the broker was frozen"))
        else:
            result["checks"].append((True, f"{name} /readyz left 200 {after:.1f}s into the freeze"))
    settle(st, result)
    for s in (d, r):
        back = s.get("/readyz")[0] == 200 or _wait_ready(s, 30)
        result["checks"].append((back, f"{s.name} /readyz " + ("200 again after the freeze" if back
                                                                else "not 200 30s after the freeze")))


def order_violations(feed, tally):
    """Per key, the events' first acknowledged arrivals (de-duplicated on the
    event uuid, the earliest 2xx in the receiver's record) against the order
    produced: an event acknowledged after a later event of its key is a
    violation. Events never acknowledged (dead-lettered: counted as lost
    unless the log or the DLQ has them) leave a gap, not a violation.
    Returns (violating events, keys with one, a few examples)."""
    place, per_key = {}, {}
    for u in feed.uuids:
        k = feed.key_of.get(u)
        if k is not None:
            lst = per_key.setdefault(k, [])
            place[u] = (k, len(lst))
            lst.append(u)
    first = {}  # uuid -> the place of its first acknowledgement in the record
    for wid, seq in tally.ack_seq.items():
        for u in tally.uuids.get(wid, ()):
            if u in place and (u not in first or seq < first[u]):
                first[u] = seq
    arrivals = {}
    for u, seq in first.items():
        arrivals.setdefault(place[u][0], []).append((seq, place[u][1], u))
    events, keys, examples = 0, 0, []
    for k, arr in sorted(arrivals.items()):
        arr.sort()
        highest, n = -1, 0
        for _, i, u in arr:
            if i < highest:
                n += 1
                if len(examples) < 5:
                    examples.append(f"key {k}: event #{i} ({u}) first acknowledged after "
                                    f"#{highest}")
            highest = max(highest, i)
        events += n
        keys += 1 if n else 0
    return events, keys, examples


def busiest_second(times_ms):
    """The most requests in any 1 s window (sliding, ms resolution)."""
    t = sorted(times_ms)
    best, lo = 0, 0
    for hi in range(len(t)):
        while t[hi] - t[lo] >= 1000:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def figures_of(result, sub):
    return next(f for f in result["subs"] if f["sub"] == sub.name)


def sc_ordered_kill(st, result):
    """An ordered subscription ("ordering": "key") on a receiver answering
    CHAOS_ORDER_FAIL_RATE % of requests with 503, events of CHAOS_ORDER_KEYS
    keys; kill -9 of the dispatcher (restarted at once) and, 5 s later, of the
    retrier (restarted CHAOS_RETRIER_DOWN s later). Per key, the first
    acknowledged arrivals must be in the order produced (gaps only where a
    delivery was dead-lettered)."""
    ordered = st.receiver("ordered", "failing", ["--fail-rate", CFG["CHAOS_ORDER_FAIL_RATE"]],
                          options=None if CFG["CHAOS_ORDERING"] == "none"
                          else {"ordering": CFG["CHAOS_ORDERING"]})
    d = st.service(Dispatcher)
    r = st.service(Retrier)
    st.register_all()
    feed = st.start_feed(CFG["CHAOS_RATE"], CFG["CHAOS_SECONDS"], keys=CFG["CHAOS_ORDER_KEYS"])
    feed.sleep_until(CFG["CHAOS_FAULT_AT"])
    st.kills_ms.append(int(time.time() * 1000))
    d.proc.kill()
    result["notes"].append(f"dispatcher killed -9 at {feed.elapsed():.1f}s, restarted")
    d.restart()
    feed.sleep_until(CFG["CHAOS_FAULT_AT"] + 5)
    waiting = sql(st.db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE status='retry'")[0][0]
    st.kills_ms.append(int(time.time() * 1000))
    r.proc.kill()
    result["notes"].append(f"retrier killed -9 at {feed.elapsed():.1f}s with {waiting} retries "
                           f"pending, restarted {CFG['CHAOS_RETRIER_DOWN']:.0f}s later")
    time.sleep(CFG["CHAOS_RETRIER_DOWN"])
    r.restart()
    settle(st, result)
    f = figures_of(result, ordered)
    events, keys, examples = order_violations(feed, ordered.tally)
    f["order_viol"] = events
    result["notes"].extend(examples)
    result["notes"].append(f"{len(set(feed.key_of.values()))} keys, "
                           f"{len(feed.uuids) / max(1, len(set(feed.key_of.values()))):.1f} "
                           f"events a key on average")
    result["checks"].append((events == 0, f"order per key: {events} events acknowledged after a "
                                          f"later event of their key, in {keys} keys"))


def sc_rate_limited_kill(st, result):
    """A rate-limited subscription (CHAOS_LIMIT_RATE/s, burst CHAOS_LIMIT_BURST)
    next to an unlimited one, two dispatcher replicas, one killed with -9
    (not restarted). Nothing lost, none failed for the limit, and the limited
    receiver's busiest 1 s window within per_second + burst + per_second x 0.25."""
    rate, burst = CFG["CHAOS_LIMIT_RATE"], CFG["CHAOS_LIMIT_BURST"]
    limited = st.receiver("limited", options={"rate_limit": {"per_second": rate, "burst": burst}})
    st.receiver("unlimited")
    two_dispatchers_one_killed(st, result)
    f = figures_of(result, limited)
    failed_limit = sql(st.db_url, "SELECT count(DISTINCT d.delivery_id) FROM hookbridge.deliveries d "
                       "JOIN hookbridge.delivery_attempts a USING (delivery_id) "
                       "WHERE d.subscription_id = %s AND d.status = 'failed' "
                       "AND a.error LIKE 'rate limited%%'", limited.id)[0][0]
    deferred = sql(st.db_url, "SELECT count(DISTINCT a.delivery_id) FROM hookbridge.deliveries d "
                   "JOIN hookbridge.delivery_attempts a USING (delivery_id) "
                   "WHERE d.subscription_id = %s AND a.error LIKE 'rate limited%%'",
                   limited.id)[0][0]
    result["checks"].append((f["dead"] == 0 and failed_limit == 0,
                             f"limited: {f['dead']} dead-lettered, {failed_limit} failed with a "
                             f"'rate limited' attempt ({deferred} deliveries sent round the delay "
                             f"tiers by the limit)"))
    busiest = busiest_second(limited.tally.post_times)
    bound = rate + burst + rate * 0.25
    span = (max(limited.tally.post_times) - min(limited.tally.post_times)) / 1000
    result["notes"].append(f"limited: {limited.tally.requests()} requests over {span:.0f}s "
                           f"({limited.tally.requests() / max(span, 1):.1f}/s on average)")
    result["checks"].append((busiest <= bound, f"limited: busiest 1 s window {busiest} requests "
                                               f"(bound {bound:g})"))


def _wait_ready(s, timeout):
    try:
        wait_until(lambda: s.get("/readyz")[0] == 200, timeout, "readyz")
        return True
    except AssertionError:
        return False


def sc_flaky_receiver(st, result):
    """A receiver answering CHAOS_FAIL_RATE % of requests with 503 at random;
    short retry schedule, so some deliveries are legitimately dead-lettered."""
    st.receiver("flaky", "failing", ["--fail-rate", CFG["CHAOS_FAIL_RATE"]])
    st.service(Dispatcher)
    st.service(Retrier)
    st.register_all()
    st.start_feed(CFG["CHAOS_RATE"], CFG["CHAOS_SECONDS"])
    settle(st, result)


def sc_hung_receiver(st, result):
    """A hung endpoint (reads each request, never answers) next to a healthy
    one, both subscribed to every event, CHAOS_HUNG_RATE events/s, default
    settings (retry schedule included). The healthy endpoint must keep pace:
    acknowledged deliveries per 5 s window >= CHAOS_PACE_MIN x rate."""
    healthy = st.receiver("healthy", args=["--threads", "4"])
    st.hung_endpoint("hung")
    st.service(Dispatcher)
    st.service(Retrier)
    st.register_all()
    rate, seconds = CFG["CHAOS_HUNG_RATE"], CFG["CHAOS_HUNG_SECONDS"]
    feed = st.start_feed(rate, seconds)
    settle(st, result)
    # Pace: the healthy endpoint's first acknowledgements per 5 s window of
    # the production period, against the events fed in the same window (the
    # feed itself may fall behind the nominal rate on a loaded machine). The
    # delivery windows are shifted by the median latency (fed to acknowledged),
    # so that a window is not short by the pipeline's own delay.
    n = max(1, int(seconds // 5))
    delivered, fed = [0] * n, [0] * n
    fed_at, i = {}, 0
    for t, count in feed.marks:
        k = int((t - feed.t0) // 5)
        if 0 <= k < n:
            fed[k] += count
        for u in feed.uuids[i:i + count]:
            fed_at[u] = t
        i += count
    t = healthy.tally
    lat = sorted(t.first_ack[w] / 1000 - fed_at[u] for w in t.first_ack for u in t.uuids[w]
                 if u in fed_at)
    shift = lat[len(lat) // 2] if lat else 0.0
    for ms in t.first_ack.values():
        k = int((ms / 1000 - shift - feed.t0) // 5)
        if 0 <= k < n:
            delivered[k] += 1
    result["notes"].append(f"healthy endpoint: median latency {shift * 1000:.0f} ms, "
                           f"hung endpoint: {st.hung[0].counts['posts']} requests read")
    pace = [d / f if f else 1.0 for d, f in zip(delivered, fed)]
    worst = min(pace)
    result["checks"].append((worst >= CFG["CHAOS_PACE_MIN"],
                             "healthy endpoint, events/s per 5 s window: "
                             + " ".join(f"{d / 5:.0f}" for d in delivered)
                             + f" (produced: {' '.join(f'{f / 5:.0f}' for f in fed)}); "
                             f"lowest {worst:.0%} of the produce rate"))


def sc_ingest_spool_kill(st, result):
    """Okta's event hook through the ingest endpoint with its spool: every
    broker down for CHAOS_FAULT_SECONDS, the endpoint killed -9 halfway
    through and restarted at once on the same spool. Okta must get a 2xx
    for every delivery within its 3 s (at most one retry), and every event
    so answered must reach the subscriber."""
    st.receiver("receiver")
    st.service(Dispatcher)
    st.service(Retrier)
    st.register_all()
    ing, port, health = st.ingest()
    feed = st.feed = OktaFeed(port, CFG["CHAOS_RATE"], CFG["CHAOS_SECONDS"])
    feed.sleep_until(CFG["CHAOS_FAULT_AT"])
    st.broker.proc.signal(signal.SIGUSR1)
    result["notes"].append(f"brokers down at {feed.elapsed():.1f}s "
                           f"for {CFG['CHAOS_FAULT_SECONDS']:.0f}s")
    time.sleep(CFG["CHAOS_FAULT_SECONDS"] / 2)
    spooled = sum(1 for p in (st.workdir / "ingest-spool").glob("*.okta"))
    st.kills_ms.append(int(time.time() * 1000))
    ing.kill()
    st.killed.add("ingest")
    result["notes"].append(f"ingest endpoint killed -9 at {feed.elapsed():.1f}s with {spooled} "
                           "deliveries on its spool, restarted at once")
    ing, port, health = st.ingest("ingest-again", port, ready=False)  # what Okta meets
    time.sleep(CFG["CHAOS_FAULT_SECONDS"] / 2)
    st.broker.proc.signal(signal.SIGUSR2)
    settle(st, result)
    answers = ", ".join(f"{k or 'no answer'}: {v}" for k, v in sorted(
        feed.answers.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
    result["notes"].append(f"Okta's attempts by answer: {answers}; slowest answer "
                           f"{feed.slowest:.2f}s")
    result["checks"].append((not feed.gave_up, f"Okta gave up {len(feed.gave_up)} events (a "
                             "delivery not answered 2xx within 3 s twice)"))
    left = sorted(p.name for p in (st.workdir / "ingest-spool").glob("*.okta*"))
    result["checks"].append((not left, f"the spool holds nothing at the end ({len(left)} files)"))


def _schedule_default():
    return CFG["CHAOS_SCHEDULE"]


SCENARIOS = [  # name, function, retry schedule (None: the default)
    ("dispatcher-kill", sc_dispatcher_kill, _schedule_default),
    ("retrier-kill", sc_retrier_kill, _schedule_default),
    ("replica-kill", sc_replica_kill, _schedule_default),
    ("pg-restart", sc_pg_restart, _schedule_default),
    ("pg-down", sc_pg_down, _schedule_default),
    ("broker-down", sc_broker_down, _schedule_default),
    ("broker-freeze", sc_broker_freeze, _schedule_default),
    ("flaky-receiver", sc_flaky_receiver, _schedule_default),
    ("hung-receiver", sc_hung_receiver, lambda: None),
    ("ordered-kill", sc_ordered_kill, _schedule_default),
    ("rate-limited-kill", sc_rate_limited_kill, _schedule_default),
    ("ingest-spool-kill", sc_ingest_spool_kill, _schedule_default),
]


# ---- running and reporting ----------------------------------------------------

def verdict(result):
    problems = []
    if result.get("error"):
        problems.append("error: " + result["error"])
    if result.get("producer_failed"):
        problems.append(f"producer failed {result['producer_failed']}")
    for f in result.get("subs", []):
        if f["lost"]:
            problems.append(f"{f['sub']}: {f['lost']} lost")
        if f["false_dl"]:
            problems.append(f"{f['sub']}: {f['false_dl']} false dead letters")
        if not f["log_ok"]:
            problems.append(f"{f['sub']}: log disagrees ({f['ack_no_row']} acknowledged without "
                            f"a delivered row, {f['row_no_ack']} delivered rows without an ack)")
    problems += [text for ok, text in result.get("checks", []) if not ok]
    return problems


def print_result(name, result):
    print(f"\n=== {name}: {result['doc']}")
    for n in result["notes"]:
        print(f"    {n}")
    if "subs" in result:
        print(f"    produced {result['produced']} (producer failed {result['producer_failed']}), "
              f"drained in {result['drain_s']:.0f}s")
        hdr = ("subscription", "kind", "delivered", "dups", "dead-lettered", "dlq msgs", "lost",
               "false DL", "ack w/o row", "row w/o ack", "lost in kill", "requests",
               "attempts logged", "order viol")
        print("    " + " | ".join(hdr))
        for f in result["subs"]:
            lost = "-" if f["lost"] is None else f["lost"]
            vals = (f["sub"], f["kind"], f["delivered"], f["dups"], f["dead"], f["dlq_msgs"], lost,
                    f["false_dl"], f["ack_no_row"], f["row_no_ack"], f["lost_in_kill"],
                    f["requests"], f["attempts_logged"], f.get("order_viol", "-"))
            print("    " + " | ".join(str(v).rjust(len(h)) for v, h in zip(vals, hdr)))
    for ok, text in result["checks"]:
        print(f"    {'ok  ' if ok else 'FAIL'} {text}")
    problems = verdict(result)
    print(f"--> {name}: {'PASS' if not problems else 'FAIL: ' + '; '.join(problems)}", flush=True)


def run_one(name, fn, schedule):
    result = {"notes": [], "checks": [], "doc": " ".join(fn.__doc__.split())}
    log(f"{name}: starting")
    st = None
    t = time.monotonic()
    try:
        st = Stack(name, schedule())
        fn(st, result)
    except Exception as e:  # a scenario that breaks is a failed scenario, with its reason
        result["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        if st:
            for report in st.stop():
                result["checks"].append((False, f"sanitizer report in {report}"))
            if CFG["CHAOS_KEEP"] == 1 or verdict(result):
                result["notes"].append(f"work directory kept: {st.workdir}")
            else:
                st.remove()
    result["seconds"] = time.monotonic() - t
    print_result(name, result)
    return result


def summary(results):
    print("\n=== summary")
    hdr = ("scenario", "produced", "delivered", "dups", "dead-lettered", "lost", "false DL",
           "log agrees", "time", "result")
    rows = []
    for name, r in results:
        subs = r.get("subs", [])
        counted = [f for f in subs if f["lost"] is not None]
        rows.append((name, r.get("produced", "-"),
                     "/".join(str(f["delivered"]) for f in counted) or "-",
                     sum(f["dups"] for f in subs), sum(f["dead"] for f in subs),
                     sum(f["lost"] for f in counted), sum(f["false_dl"] for f in subs),
                     "yes" if subs and all(f["log_ok"] for f in subs) else "no",
                     f"{r['seconds']:.0f}s", "FAIL" if verdict(r) else "PASS"))
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    for row in (hdr, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))


def main(argv):
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("Scenarios:")
        for name, fn, _ in SCENARIOS:
            print(f"  {name:16} {' '.join(fn.__doc__.split())}")
        print("Settings:")
        for k, (d, what) in SETTINGS.items():
            print(f"  {k}={d}  {what}")
        return 0
    wanted = argv or [s for s in os.environ.get("CHAOS_SCENARIOS", "").replace(",", " ").split()]
    known = {name for name, _, _ in SCENARIOS}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}",
              file=sys.stderr)
        return 2
    if not (BIN / "hookbridge-dispatcher").exists():
        print(f"no binaries in {BIN}: run make first (or set HOOKBRIDGE_BIN)", file=sys.stderr)
        return 2
    log("settings: " + " ".join(f"{k}={v}" for k, v in CFG.items()) + f" binaries={BIN}")
    results = []
    for name, fn, schedule in SCENARIOS:
        if not wanted or name in wanted:
            results.append((name, run_one(name, fn, schedule)))
    summary(results)
    return 1 if any(verdict(r) for _, r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
