"""Apache Kafka for end-to-end tests (deploy/local/kafka.sh does the work).

One broker per pytest-xdist worker and session (started on first use, about
5 s), shared by the tests of that worker; each test keeps to its own topics
and consumer groups through a TopicSpace, so tests never see each other's
messages. Topics are never auto-created (as in production): a TopicSpace
creates them with `hookbridge-migrate topics`.

Fixtures (tests/e2e/conftest.py):

    apache_kafka   the session's ApacheKafka (one KRaft node): .bootstrap,
                   .space(create=True, retry_schedule=None) -> TopicSpace
    apache_kafka_cluster  three nodes (replication factor 3, min.insync.replicas=2),
                   with kill_node(i), stop_node(i), start_node(i), wait_node(i)
    ApacheKafka(sasl_ssl=True)  one node that also takes clients on a SASL_SSL
                   listener (SCRAM-SHA-512 and PLAIN, a throwaway CA): see
                   ApacheKafka.client_env; made by the test that needs it
    broker         this test's broker: the devbroker (hbtest.stack.Broker), or
                   a TopicSpace on Apache Kafka when the test is marked
                   @pytest.mark.apache (it then runs on both) or when
                   HOOKBRIDGE_TEST_KAFKA=apache (every test on Apache Kafka).
                   Both have .bootstrap, .events_topic, .dlq_topic, .retry_prefix.
    new_broker     the same as a factory: new_broker(retry_schedule="1s,2s").

A TopicSpace's bootstrap string carries its names, so Service (dispatcher,
retrier) and produce() given `space.bootstrap` use the space's topics and
consumer groups without further arguments. Use space.env() for any other
program (HOOKBRIDGE_KAFKA_BROKERS and the topic settings).
"""
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import procs as harness_procs
from .procs import BIN, REPO, SLOW, wait_until

KAFKA_SH = REPO / "deploy" / "local" / "kafka.sh"
DEFAULT_PARTITIONS = 6  # as the devbroker creates them


def _admin(bootstrap):
    from kafka import KafkaAdminClient
    return KafkaAdminClient(bootstrap_servers=bootstrap.split(","))


def topic_configs(bootstrap, topic):
    """The topic's configuration as the broker describes it: {name: value}."""
    from kafka.admin import ConfigResource, ConfigResourceType
    admin = _admin(bootstrap)
    try:
        res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return {e[0]: e[1] for e in res[0].resources[0][4]}
    finally:
        admin.close()


def alter_topic_configs(bootstrap, configs, timeout=20):
    """AlterConfigs, configs {topic: {name: value}} (each topic's whole
    configuration: what is not named goes back to the broker's default);
    returns once the broker describes every topic so. The controller takes
    the change at once and the broker applies it a moment later (KRaft's
    metadata log): a check run or a message produced in between still met
    the old configuration (test_review21's `topics --check` said `ok` under
    load)."""
    from kafka.admin import ConfigResource, ConfigResourceType
    want = {t: {k: str(v) for k, v in c.items()} for t, c in configs.items()}
    admin = _admin(bootstrap)
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t, configs=c)
                             for t, c in want.items()])
    finally:
        admin.close()
    wait_until(lambda: all(topic_configs(bootstrap, t).get(k) == v
                           for t, c in want.items() for k, v in c.items()), timeout,
               f"the broker to apply {want}")


def delete_topics(bootstrap, topics, timeout=20):
    """Deletes the topics; returns once the broker no longer lists them. As
    with alter_topic_configs, the broker's metadata follows the controller a
    moment later: a service started in between could find the topic still
    there."""
    admin = _admin(bootstrap)
    try:
        admin.delete_topics(list(topics), timeout_ms=30000)
    finally:
        admin.close()

    def gone():
        admin = _admin(bootstrap)
        try:
            return not set(topics) & set(admin.list_topics())
        finally:
            admin.close()
    wait_until(gone, timeout, f"the broker to forget the deleted topics {list(topics)}")


def wait_leaders(bootstrap, topics, timeout=30):
    """Returns once every partition of the topics has a leader. A topic just
    created on Apache Kafka answers "not leader" for a moment, longer on a
    loaded machine (CI run 98: a kafka-python producer's ten retries, 100 ms
    apart, all refused)."""
    def led():
        admin = _admin(bootstrap)
        try:
            metas = admin.describe_topics(list(topics))
        finally:
            admin.close()
        return all(m["partitions"] and all(p["leader"] >= 0 for p in m["partitions"])
                   for m in metas) or None
    wait_until(led, timeout, f"a leader for every partition of {list(topics)}")


class Bootstrap(str):
    """A bootstrap list ("host:port,...") that also names a TopicSpace."""

    def __new__(cls, value, space):
        s = super().__new__(cls, value)
        s.space = space
        return s


class TopicSpace:
    """One test's topics and consumer groups on a shared Apache Kafka: every
    name is the usual one with a unique prefix ("t1234-5.identity.events")."""

    def __init__(self, kafka, prefix, create=True, retry_schedule=None):
        self.kafka = kafka
        self.prefix = prefix
        self.events_topic = prefix + "identity.events"
        self.dlq_topic = prefix + "hookbridge.dlq"
        self.retry_prefix = prefix + "hookbridge.retry."
        self.bootstrap = Bootstrap(kafka.bootstrap, self)
        # Services started on this space create its topics first, unless the
        # space was made with create=False (a test of missing topics).
        self.auto_create = create
        self._schedules = set()
        if create:
            self.create_topics(retry_schedule)

    @property
    def proc(self):
        """The devbroker's process has no equivalent here: a test that drives
        the devbroker itself (signals, faults) is skipped on Apache Kafka."""
        import pytest
        pytest.skip("drives hookbridge-devbroker itself (not run on Apache Kafka)")

    def group(self, name):
        """A consumer group name of this space."""
        return self.prefix + name

    def env(self, retry_schedule=None):
        """The settings that point a program at this space."""
        env = {
            "HOOKBRIDGE_KAFKA_BROKERS": self.kafka.bootstrap,
            "HOOKBRIDGE_EVENTS_TOPIC": self.events_topic,
            "HOOKBRIDGE_DLQ_TOPIC": self.dlq_topic,
            "HOOKBRIDGE_RETRY_TOPIC_PREFIX": self.retry_prefix,
            "HOOKBRIDGE_TOPIC_PARTITIONS": str(DEFAULT_PARTITIONS),
            "HOOKBRIDGE_TOPIC_REPLICATION_FACTOR": str(self.kafka.nodes),
        }
        if retry_schedule:
            env["HOOKBRIDGE_RETRY_SCHEDULE"] = retry_schedule
        return env

    def create_topics(self, retry_schedule=None, check=True):
        """hookbridge-migrate topics for this space (events, the schedule's
        tiers, DLQ); once per schedule. Returns the CompletedProcess."""
        key = retry_schedule or ""
        if key in self._schedules:
            return None
        r = subprocess.run([str(BIN / "hookbridge-migrate"), "topics"],
                           env=dict(os.environ, **self.env(retry_schedule)),
                           capture_output=True, text=True, timeout=60 * SLOW)
        if check:
            assert r.returncode == 0, f"hookbridge-migrate topics: {r.stdout}{r.stderr}"
        if r.returncode == 0:
            self._schedules.add(key)
            wait_leaders(self.kafka.bootstrap, [self.events_topic, self.dlq_topic], 30 * SLOW)
        return r


class ApacheKafka:
    """Apache Kafka on loopback: `nodes` combined broker+controller nodes
    (1, or 3 with replication factor 3 and min.insync.replicas=2), in a
    temporary directory removed by stop()."""

    _ids = itertools.count(1)

    def __init__(self, nodes=1, sasl_ssl=False, node_env=None, properties=None):
        self.nodes = nodes
        # node_env: more environment for the nodes (a clock shim's);
        # properties: more server.properties lines, {name: value}
        self.node_env = dict(node_env or {})
        self.dir = Path(tempfile.mkdtemp(prefix="hb-kafka-"))
        self.procs = {}
        self._seen = {}
        self._stopping = set()
        env = dict(os.environ)
        if sasl_ssl:
            # A CA of its own, the server's certificate for 127.0.0.1 as a
            # PEM keystore (key and certificate in one file), one user.
            from .tls import Pki
            self.pki = Pki(self.dir)
            cert, key = self.pki.server("kafka")
            keystore = self.dir / "pki" / "kafka-keystore.pem"
            keystore.write_text(key.read_text() + cert.read_text())
            self.ca = self.pki.ca
            self.sasl_user = "hookbridge"
            self.sasl_password = "kpw-" + os.urandom(12).hex()
            env["KAFKA_SASL_SSL_KEYSTORE"] = str(keystore)
            env["KAFKA_SASL_SSL_USERS"] = f"{self.sasl_user}={self.sasl_password}"
        r = subprocess.run([str(KAFKA_SH), "prepare", str(self.dir), str(nodes)],
                           capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, f"kafka.sh prepare: {r.stdout}{r.stderr}"
        self.bootstrap = (self.dir / "bootstrap").read_text().strip()
        # sasl_ssl: the SASL_SSL listeners (self.bootstrap stays PLAINTEXT,
        # for the harness's own admin client)
        self.sasl_ssl_bootstrap = None
        if sasl_ssl:
            self.sasl_ssl_bootstrap = (self.dir / "bootstrap-sasl-ssl").read_text().strip()
        # Its listeners' ports (chosen by kafka.sh, bound when a node starts,
        # free again while a test has a node down) are never handed out by
        # free_port(): a receiver or service there would keep the node from
        # starting again ("Address already in use").
        for props in self.dir.glob("node-*/server.properties"):
            if properties:
                with open(props, "a") as f:
                    f.writelines(f"{k}={v}\n" for k, v in properties.items())
            line = next(l for l in props.read_text().splitlines() if l.startswith("listeners="))
            harness_procs.reserve_ports(int(p) for p in re.findall(r":(\d+)", line))
        for i in range(1, nodes + 1):
            self.start_node(i)
        for i in range(1, nodes + 1):
            self.wait_node(i)

    def client_env(self, mechanism="SCRAM-SHA-512", password=None, ca=True):
        """The documented settings (docs/configuration.md) that take a
        program to the SASL_SSL listener: HOOKBRIDGE_KAFKA_BROKERS and the
        librdkafka passthrough; password None: the right one; ca False: no
        CA setting (the broker's certificate is then not trusted)."""
        env = {
            "HOOKBRIDGE_KAFKA_BROKERS": self.sasl_ssl_bootstrap,
            "HOOKBRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "HOOKBRIDGE_KAFKA_SASL_MECHANISM": mechanism,
            "HOOKBRIDGE_KAFKA_SASL_USERNAME": self.sasl_user,
            "HOOKBRIDGE_KAFKA_SASL_PASSWORD": password or self.sasl_password,
        }
        if ca:
            env["HOOKBRIDGE_KAFKA_SSL_CA_LOCATION"] = str(self.ca)
        return env

    def log_path(self, node):
        return self.dir / f"node-{node}" / "server.log"

    def _starts(self, node):
        try:
            return self.log_path(node).read_text(errors="replace").count("Kafka Server started")
        except FileNotFoundError:
            return 0

    def start_node(self, node):
        """Starts node `node` (1-based), also after stop_node or kill_node;
        wait_node(node) waits until it has started."""
        self._seen[node] = self._starts(node)
        self._stopping.discard(node)
        log = open(self.log_path(node), "ab")
        self.procs[node] = subprocess.Popen([str(KAFKA_SH), "node", str(self.dir), str(node)],
                                            stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            env=dict(os.environ, **self.node_env))
        log.close()

    def wait_node(self, node, timeout=90):
        p = self.procs[node]

        def started():
            assert p.poll() is None, f"kafka node {node} exited:\n{self.output(node)}"
            return self._starts(node) > self._seen[node]
        wait_until(started, timeout, f"Apache Kafka node {node} to start")

    def output(self, node):
        try:
            return self.log_path(node).read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def terminate_node(self, node):
        """SIGTERM to node `node`, not waiting: it is stopping (restore()
        starts it again) until start_node."""
        p = self.procs.get(node)
        if p and p.poll() is None:
            p.terminate()
        self._stopping.add(node)

    def restore(self):
        """Every node exited, or sent SIGTERM and maybe still stopping (one
        whose controlled shutdown began after the others were gone waits for
        a controller quorum that is no more), started again: the cluster
        whole for the next test, whatever the last one left."""
        down = [i for i in range(1, self.nodes + 1)
                if self.procs[i].poll() is not None or i in self._stopping]
        for i in down:
            self.stop_node(i, timeout=10)
            self.start_node(i)
        for i in down:
            self.wait_node(i)

    def kill_node(self, node):
        p = self.procs.get(node)
        if p and p.poll() is None:
            p.kill()
            p.wait()

    def stop_node(self, node, timeout=30):
        p = self.procs.get(node)
        if p and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def space(self, create=True, retry_schedule=None):
        """A fresh TopicSpace; its topics created unless create=False."""
        prefix = f"t{os.getpid()}-{next(self._ids)}."
        return TopicSpace(self, prefix, create=create, retry_schedule=retry_schedule)

    def stop(self):
        """Kills every node (the data is thrown away: no need for a controlled
        shutdown, which takes seconds per node) and removes the directory."""
        for node in list(self.procs):
            self.kill_node(node)
        shutil.rmtree(self.dir, ignore_errors=True)
