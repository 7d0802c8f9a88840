"""The hookbridge stack for end-to-end tests: broker, receiver, dispatcher,
producer, each a real process of ours talking real protocols on loopback."""
import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

from .procs import BIN, SECRET_KEY, SLOW, free_port, http_get, wait_until


class Broker:
    """hookbridge-devbroker: the embedded Kafka-protocol broker. The topic
    names are the defaults (a TopicSpace on Apache Kafka, hbtest.kafka, has
    the same attributes with prefixed names)."""
    events_topic = "identity.events"
    dlq_topic = "hookbridge.dlq"
    retry_prefix = "hookbridge.retry."

    def __init__(self, group, workdir, topics=(), retry_schedule=None, name="devbroker"):
        self.bootstrap_file = Path(workdir) / ("bootstrap" if name == "devbroker"
                                               else f"bootstrap-{name}")
        argv = [BIN / "hookbridge-devbroker", "--bootstrap-file", self.bootstrap_file]
        for t in topics:
            argv += ["--topic", t]
        if retry_schedule:
            argv += ["--retry-schedule", retry_schedule]
        self.proc = group.start(name, argv)
        self.proc.kill_at_teardown = True  # its clean stop: test_spine_tools
        self.bootstrap = wait_until(
            lambda: self.bootstrap_file.exists() and self.bootstrap_file.read_text().strip(),
            10, "the devbroker's bootstrap file")


class Receiver:
    """hookbridge-receiver recording every request it gets to a JSON-lines file."""

    def __init__(self, group, workdir, secret=None, auth=None, status=None, name="receiver",
                 fail_first=None, delay_ms=None, retry_after=None, args=()):
        self.port = free_port()
        self.record = Path(workdir) / f"{name}.jsonl"
        argv = [BIN / "hookbridge-receiver", "--listen", f"127.0.0.1:{self.port}",
                "--record", self.record]
        if secret:
            argv += ["--secret", secret]
        if auth:
            argv += ["--auth", auth]
        if status:
            argv += ["--status", str(status)]
        if fail_first:
            argv += ["--fail-first", str(fail_first)]
        if delay_ms:
            argv += ["--delay-ms", str(delay_ms)]
        if retry_after:
            argv += ["--retry-after", str(retry_after)]
        argv += [str(a) for a in args]  # any other flag (--quiet, --fail-rate ...)
        self.name = name
        self.argv = argv
        self.group = group
        self.proc = group.start(name, argv)
        if delay_ms and delay_ms > 15000:
            # Its handlers sleep past any stop: SIGTERM leaves it waiting for
            # them, so the stop at the end of the test kills it after 1 s.
            self.proc.stop_timeout = 1
        self.url = f"http://127.0.0.1:{self.port}/hook"
        wait_until(self._up, 10, "the receiver to listen")

    def _up(self):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def requests(self):
        if not self.record.exists():
            return []
        out = []
        text = self.record.read_text()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            lines.pop()  # the receiver is still writing it
        for line in lines:
            if line.strip():
                out.append(json.loads(line))
        return out

    def posts(self):
        return [r for r in self.requests() if r["method"] == "POST"]

    def events(self):
        """Every event delivered in an acknowledged POST, as (request, event)."""
        out = []
        for r in self.posts():
            if not 200 <= r["status"] < 300:
                continue
            body = json.loads(r["body"])
            if isinstance(body, dict) and "data" in body and "events" in body.get("data", {}):
                evs = body["data"]["events"]
            elif isinstance(body, list):
                evs = body
            else:
                evs = [body]
            out += [(r, e) for e in evs]
        return out


class Service:
    """A hookbridge service process (dispatcher or retrier) with its health port."""
    program = None

    def __init__(self, group, database_url, brokers, topic="identity.events", group_id=None,
                 extra_env=None, name=None):
        name = name or self.program
        self.health_port = free_port()
        # A TopicSpace's bootstrap (Apache Kafka): its topics and groups, the
        # schedule's delay tiers created first (auto-creation is off there).
        space = getattr(brokers, "space", None)
        if space and topic == "identity.events":
            topic = space.events_topic
        env = {
            "HOOKBRIDGE_DATABASE_URL": database_url,
            "HOOKBRIDGE_SECRET_KEY": SECRET_KEY,
            "HOOKBRIDGE_KAFKA_BROKERS": brokers,
            "HOOKBRIDGE_EVENTS_TOPIC": topic,
            "HOOKBRIDGE_CONSUMER_GROUP": group_id or f"hookbridge-{self.program}",
            "HOOKBRIDGE_HTTP_LISTEN": f"127.0.0.1:{self.health_port}",
            "HOOKBRIDGE_ALLOW_HTTP": "1",
            "HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS": "1",
            "HOOKBRIDGE_LOG_LEVEL": "debug",
            "HOOKBRIDGE_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "HOOKBRIDGE_LOG_FLUSH_INTERVAL": "100ms",
        }
        if space:
            env["HOOKBRIDGE_CONSUMER_GROUP"] = space.group(env["HOOKBRIDGE_CONSUMER_GROUP"])
            env["HOOKBRIDGE_DLQ_TOPIC"] = space.dlq_topic
            env["HOOKBRIDGE_RETRY_TOPIC_PREFIX"] = space.retry_prefix
            if space.auto_create:
                space.create_topics((extra_env or {}).get("HOOKBRIDGE_RETRY_SCHEDULE"))
        env.update(extra_env or {})
        self.env = env
        self.group = group
        self.name = name
        self.proc = group.start(name, [BIN / f"hookbridge-{self.program}"], env)

    def restart(self):
        """Starts the same program again with the same settings (after a kill)."""
        self.proc = self.group.start(self.name + "-again", [BIN / f"hookbridge-{self.program}"],
                                     self.env)

    def get(self, path):
        return http_get(self.health_port, path)

    def metric(self, series, default=0.0):
        """One series' value on /metrics, e.g. 'hookbridge_responses_total{class="5xx"}';
        default when the service does not show it (a counter not yet counted)."""
        m = re.search(r"^" + re.escape(series) + r" ([0-9.e+-]+)$", self.get("/metrics")[1], re.M)
        return float(m.group(1)) if m else default

    def wait_ready(self, timeout=30):
        wait_until(lambda: self.get("/readyz")[0] == 200 or self._died(), timeout,
                   f"the {self.program} to be ready")
        assert self.proc.alive(), f"{self.program} exited:\n" + self.proc.output()[-3000:]

    def _died(self):
        return not self.proc.alive()


class Dispatcher(Service):
    program = "dispatcher"


class Retrier(Service):
    program = "retrier"


def produce(brokers, lines, topic="identity.events", args=(), check=True):
    """Runs hookbridge-producer with JSON lines on stdin; returns the CompletedProcess.
    With a TopicSpace's bootstrap, the default topic is the space's."""
    space = getattr(brokers, "space", None)
    if space and topic == "identity.events":
        topic = space.events_topic
    env = dict(os.environ, HOOKBRIDGE_KAFKA_BROKERS=brokers, HOOKBRIDGE_EVENTS_TOPIC=topic)
    data = "".join(json.dumps(l) + "\n" if not isinstance(l, str) else l + "\n" for l in lines)
    src = [] if "--generate" in args else ["-"]
    r = subprocess.run([str(BIN / "hookbridge-producer"), *args, *src], input=data.encode(),
                       env=env, capture_output=True, timeout=60 * SLOW)
    if check:
        assert r.returncode == 0, f"producer failed: {r.stdout.decode()} {r.stderr.decode()}"
    return r


def topic_records(bootstrap, topic, want=0, timeout=20):
    """Every message on `topic`, from the beginning of each partition to its
    end offset as it is now (kafka-python ConsumerRecords, partition by
    partition): what is on the topic, read without waiting for a quiet
    period. want: first wait (up to timeout s) until at least that many are
    there, for messages a service is still producing; the list can be longer."""
    from kafka import KafkaConsumer, TopicPartition
    kc = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout * SLOW
        parts = wait_until(lambda: kc.partitions_for_topic(topic), timeout,
                           f"the partitions of {topic}")
        parts = [TopicPartition(topic, p) for p in sorted(parts)]
        kc.assign(parts)
        kc.seek_to_beginning(*parts)
        got = []
        while True:
            end = kc.end_offsets(parts)
            while any(kc.position(tp) < end[tp] for tp in parts):
                assert time.monotonic() < deadline, f"reading {topic}: timed out"
                for recs in kc.poll(200).values():
                    got += recs
            if len(got) >= want:
                return sorted(got, key=lambda m: (m.partition, m.offset))
            assert time.monotonic() < deadline, \
                f"{len(got)} messages on {topic} after {timeout * SLOW:.0f}s, want {want}"
            time.sleep(0.1)
    finally:
        kc.close()
