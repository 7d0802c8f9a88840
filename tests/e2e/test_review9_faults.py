"""The operator's view, checked against the code and the manifests (static,
fast): the alert rules docs/operations.md gives, the librdkafka properties
docs/configuration.md says hookbridge sets, the settings the manifests must
give every program alike, the paths and programs the docs name, the ingest
pod's grace period; and one end-to-end stop: SIGTERM while PostgreSQL keeps
its connections but answers nothing (docs/operations.md, Health, shutdown
and logs).

Each check says which commit it holds; each was shown to fail on 75a8224."""
import re
import signal
import time

from hbtest.opscheck import config_reference, rendered
from hbtest.procs import REPO, wait_until
from hbtest.stack import Dispatcher, produce

OPS = REPO / "docs" / "operations.md"
SOURCES = ("lib", "dispatcher", "retrier", "producer", "migrations", "secret")


def c_sources():
    for d in SOURCES:
        yield from sorted((REPO / d).glob("*.c"))


def alert_rules():
    """The rules of deploy/k8s/optional/alerts (the PrometheusRule that
    docs/operations.md, Alerts worth having, lists)."""
    [rule] = rendered("deploy/k8s/optional/alerts")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert rules and all("alert" in r and "expr" in r for r in rules), rule
    return rules


def metric_table():
    """metric name -> its label names, from docs/operations.md's table
    (test_ops checks the table against what the services export)."""
    out = {}
    for m in re.finditer(r"^\| `(hookbridge_[a-z_]+)(?:\{([^}]*)\})?` \|", OPS.read_text(), re.M):
        out[m.group(1)] = set(filter(None, (m.group(2) or "").split(",")))
    return out


def exported_label_values():
    """label -> the values the code gives it in its metric registrations."""
    out = {}
    for f in c_sources():
        for m in re.finditer(r'\b([a-z_]+)=\\"([^"\\]+)\\"', f.read_text()):
            out.setdefault(m.group(1), set()).add(m.group(2))
    return out


def test_alert_rules_name_metrics_labels_and_values_that_exist():
    """Every hookbridge_* series an alert selects is exported with the labels
    and values the selector uses; the failure ratio counts attempts, not
    deliveries handed on unattempted; finished pods are not 'not ready';
    the in-flight threshold names every limit the manifests set.
    (commit: operations.md: alerts that fire on nothing but their own
    assumptions)"""
    rules = alert_rules()
    table = metric_table()
    values = exported_label_values()
    for rule in rules:
        expr = rule["expr"]
        for m in re.finditer(r"\b(hookbridge_[a-z_]+?)(_bucket|_sum|_count)?\b(\{[^}]*\})?", expr):
            name, sel = m.group(1), m.group(3) or ""
            if name not in table and m.group(2):
                name = name + m.group(2)
            assert name in table, f"{rule['alert']}: {name} is not an exported metric"
            for lm in re.finditer(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"', sel):
                label, op, val = lm.groups()
                if m.group(2) == "_bucket" and label == "le":
                    continue
                assert label in table[name], f"{rule['alert']}: {name} has no label {label}"
                if label in ("topic", "partition"):
                    continue
                for v in (val.split("|") if "~" in op else [val]):
                    assert v in values.get(label, ()), \
                        f"{rule['alert']}: {name}{{{label}}} is never {v!r}"
    by_name = {r["alert"]: r["expr"] for r in rules}
    # hookbridge_deliveries_total{outcome="retry"} also counts deliveries put
    # on a delay tier unattempted (busy host, open circuit, rate limit,
    # ordering or verification wait): no measure of endpoints failing.
    for name, expr in by_name.items():
        assert not re.search(r'hookbridge_deliveries_total\{[^}]*retry', expr), \
            f"{name}: the retry outcome counts deferrals, not failed attempts"
    # The migrate Job's pod stays a day after it finished (ttlSecondsAfterFinished),
    # its Ready condition false: a not-ready alert must leave finished pods out.
    jobs = [o for o in rendered("deploy/k8s/optional/migrate-job") if o["kind"] == "Job"]
    assert jobs and jobs[0]["spec"].get("ttlSecondsAfterFinished", 0) > 0
    for name, expr in by_name.items():
        if "kube_pod_status_ready" in expr:
            assert "Succeeded" in expr, f"{name}: a completed migrate Job pod fires it"
    # The saturation threshold was a copy of HOOKBRIDGE_MAX_IN_FLIGHT that a
    # manifest's own value made wrong: each pod is compared with its own bound.
    sat = [n for n, e in by_name.items() if "hookbridge_requests_in_flight" in e]
    assert sat
    for n in sat:
        assert re.search(r"hookbridge_requests_in_flight\s*/\s*hookbridge_requests_in_flight_limit",
                         by_name[n]), f"{n}: not against each pod's HOOKBRIDGE_MAX_IN_FLIGHT"


def test_configuration_doc_lists_every_kafka_property_the_code_sets():
    """docs/configuration.md's table of the properties hookbridge sets itself
    (what an operator overrides through HOOKBRIDGE_KAFKA_*, or must not) has
    every property the code sets. (commit: configuration.md: the Kafka
    properties hookbridge sets, all of them)"""
    text = (REPO / "docs" / "configuration.md").read_text()
    section = text[text.index("Properties hookbridge sets itself"):]
    table = section[:section.index("\n\n", section.index("| property |"))]
    documented = set()
    for row in re.findall(r"^\| ([^|]+) \|", table, re.M):
        documented |= set(re.findall(r"`([a-z.]+)`", row))
    set_in_code = set()
    for f in c_sources():
        set_in_code |= set(re.findall(r'hb_kafka_conf_set\(\s*conf,\s*"([a-z.]+)"', f.read_text()))
    assert set_in_code, "no hb_kafka_conf_set calls found: the pattern is stale"
    assert not set_in_code - documented, \
        f"set by the code, not in docs/configuration.md: {sorted(set_in_code - documented)}"


def config_maps(tree):
    return {o["metadata"]["name"].rsplit("-", 1)[0] if re.search(r"-[a-z0-9]{10}$",
            o["metadata"]["name"]) else o["metadata"]["name"]: o.get("data") or {}
            for o in rendered(tree) if o["kind"] == "ConfigMap"}


def test_every_program_gets_the_same_topic_settings():
    """docs/configuration.md: the retry schedule and the tier prefix must be
    the same for the dispatcher and the retrier, so they belong in the
    ConfigMap both read (not left to two defaults that an operator changing
    one place would split); hookbridge-migrate topics must plan the topics the
    services use, and the ingest endpoint must write where the dispatcher
    reads. (commit: deploy/k8s: the retry schedule in the ConfigMaps)"""
    ref = config_reference()
    for tree in ("deploy/k8s", "deploy/k8s/overlays/production", "deploy/k8s/overlays/schemas"):
        objs = rendered(tree)
        base = config_maps(tree)["hookbridge-config"]
        for var in ("HOOKBRIDGE_RETRY_SCHEDULE", "HOOKBRIDGE_RETRY_TOPIC_PREFIX"):
            assert var in base, f"{tree}: {var} is not in the shared ConfigMap"
        for o in objs:
            if o["kind"] != "Deployment":
                continue
            for c in o["spec"]["template"]["spec"]["containers"]:
                names = {e["name"] for e in c.get("env") or []}
                froms = [r["configMapRef"]["name"] for r in c.get("envFrom") or []]
                assert any(f.startswith("hookbridge-config") for f in froms), c["name"]
                assert not names & {"HOOKBRIDGE_RETRY_SCHEDULE", "HOOKBRIDGE_RETRY_TOPIC_PREFIX",
                                    "HOOKBRIDGE_EVENTS_TOPIC", "HOOKBRIDGE_DLQ_TOPIC"}, \
                    f"{tree}: {c['name']} overrides a setting both services must share"
    base = config_maps("deploy/k8s")["hookbridge-config"]
    topics = config_maps("deploy/k8s/optional/migrate-job")["hookbridge-topics-config"]
    ingest = config_maps("deploy/k8s/optional/ingest")["hookbridge-ingest-config"]
    for var, want in ref.items():
        progs = set(want["programs"])
        if var == "HOOKBRIDGE_LOG_LEVEL" or "dispatcher" not in progs:
            continue
        for name, cm, prog in (("migrate-job", topics, "migrate"), ("ingest", ingest, "producer")):
            if prog in progs and (var in base or var in cm):
                assert cm.get(var) == base.get(var), \
                    f"{name}: {var}={cm.get(var)!r}, the services have {base.get(var)!r}"


def test_every_kustomization_path_the_docs_and_manifests_name_exists():
    """The manifests' comments and the operator's docs send operators to
    kustomize directories (overlays/..., optional/...) that exist; and the
    image's program list in docs/operations.md is the Dockerfile's.
    (commit: docs: make run's steps, the image's programs, 1xx, a stale path)"""
    k8s = REPO / "deploy" / "k8s"
    files = list(k8s.rglob("*.yaml")) + [REPO / "README.md"] + \
        sorted((REPO / "docs").glob("*.md"))
    for f in files:
        for m in re.finditer(r"(?<![\w/.])(?:deploy/k8s/)?((?:overlays|optional)/[a-z-]+)",
                             f.read_text()):
            assert (k8s / m.group(1)).is_dir(), f"{f.relative_to(REPO)} names {m.group(0)}"
    docker = (REPO / "deploy" / "Dockerfile").read_text()
    copied = set(re.findall(r"/src/bin/(hookbridge-[a-z]+)", docker))
    text = OPS.read_text()
    image = text[text.index("## The image"):text.index("## Deploying")]
    named = set(re.findall(r"`(hookbridge-[a-z]+)`", image))
    assert copied and named == copied, f"the image holds {sorted(copied)}, the doc names " \
        f"{sorted(named)}"


def test_sigterm_while_the_database_does_not_answer_exits_0_in_time_and_loses_nothing(
        pg_cluster, db_url, procs, workdir):
    """docs/operations.md, Health, shutdown and logs: on SIGTERM the service
    flushes the delivery log for a bounded time, commits, leaves the group
    and exits 0 within terminationGracePeriodSeconds. With a database that
    keeps its connections but answers nothing (the runbook's "PostgreSQL not
    answering": stopped, overloaded, a lock) the delivery log's writer and
    the subscription store each waited for their statement's answer, and the
    stop joined them for ever: the pod was killed at the end of its grace
    period, without its final commit or leaving the group. Now it gives up on
    them and exits 0 in time; the deliveries it could not log are made again
    by the next dispatcher (same webhook-id) and logged: at least once.
    (commit: shutdown: a database that does not answer no longer holds the
    stop)"""
    from test_delivery import event
    from test_deploy import FIXED_STOP_SECONDS
    from test_promises3 import deliveries, delivering_through

    drain = 2
    proxy, broker, rcv, d, sub = delivering_through(
        pg_cluster, db_url, procs, workdir,
        extra_env={"HOOKBRIDGE_SHUTDOWN_TIMEOUT": f"{drain}s"})
    try:
        proxy.pause()
        during = [event("user.session.start") for _ in range(2)]
        produce(broker.bootstrap, during)
        wait_until(lambda: {e["uuid"] for e in during} <= {e["uuid"] for _, e in rcv.events()},
                   20, "the events delivered while the database does not answer")
        t0 = time.monotonic()
        d.proc.signal(signal.SIGTERM)
        try:
            rc = d.proc.p.wait(drain + FIXED_STOP_SECONDS + 10)
        except Exception:
            rc = None
        took = time.monotonic() - t0
        assert rc == 0, f"exit status {rc} after {took:.1f} s"
        assert took <= drain + FIXED_STOP_SECONDS, f"stopping took {took:.1f} s"
        assert "stopping without it" in d.proc.output()
    finally:
        proxy.close()
    d2 = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-again")
    d2.wait_ready()
    wait_until(lambda: deliveries(db_url, sub) == [("delivered", 1, "")] * 3, 30,
               "the deliveries the stopped dispatcher could not log, made again and logged")
    ids = {}
    for _, e in rcv.events():
        ids.setdefault(e["uuid"], 0)
        ids[e["uuid"]] += 1
    assert all(ids[e["uuid"]] >= 2 for e in during), ids
    assert d2.proc.stop() == 0


def test_the_ingest_pod_gets_longer_to_stop_than_its_preStop_and_drain():
    """deploy/k8s/optional/ingest: terminationGracePeriodSeconds covers the
    preStop pause, the ingest endpoint's drain of its requests, their 503s,
    the flush and the purge (docs/ingest.md, Stopping), read from the
    manifest and producer/ingest.c (test_deploy checks only the dispatcher
    and the retrier). A guard: it holds today."""
    src = (REPO / "producer" / "ingest.c").read_text()
    const = {k: int(v) / 1000 for k, v in re.findall(r"#define (INGEST_\w+_MS) (\d+)", src)}
    stop = const["INGEST_DRAIN_MS"] + const["INGEST_ANSWER_MS"]
    purge = re.search(r"until = hb_mono_ms\(\) \+ (\d+);", src).group(1)
    stop += const["INGEST_FLUSH_MS"] + int(purge) / 1000
    for o in rendered("deploy/k8s/optional/ingest"):
        if o["kind"] != "Deployment":
            continue
        spec = o["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        pre = c["lifecycle"]["preStop"]["exec"]["command"]
        assert pre[0] == "sleep"
        need = float(pre[1]) + stop
        assert spec["terminationGracePeriodSeconds"] > need, \
            f"grace {spec['terminationGracePeriodSeconds']} s <= preStop + stop = {need} s"
