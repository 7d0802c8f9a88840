"""The container image and the Kubernetes manifests, checked without a cluster
or a Docker engine (neither runs on the development machines).

What an operator relies on: `kubectl kustomize` renders the base and every
overlay; each Deployment is probed on the port the program really listens on,
has requests and limits and runs unprivileged; one image everywhere; the pod
is given more time to stop than the program's drain takes; no secret value is
in the repository; and the image holds the libraries and files the binaries
need. Ports, defaults and program names are read from the binaries and the
Makefile, never restated here.
"""
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from hbtest.opscheck import config_reference, default_http_port, duration_seconds, rendered
from hbtest.procs import BIN, REPO

K8S = REPO / "deploy" / "k8s"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
# Every kustomization an operator may build: the base (deploy/k8s), the
# production overlay and the optional pieces.
TREES = ["deploy/k8s", "deploy/k8s/overlays/production", "deploy/k8s/overlays/schemas",
         "deploy/k8s/optional/servicemonitor", "deploy/k8s/optional/migrate-job",
         "deploy/k8s/optional/ingest", "deploy/k8s/optional/ingest-statefulset",
         "deploy/k8s/optional/autoscaling",
         "deploy/k8s/optional/alerts"]
SERVICE_TREES = ["deploy/k8s", "deploy/k8s/overlays/production", "deploy/k8s/overlays/schemas"]
# Fixed bounds in the code after the drain (hb_worker_run): producer flush 5 s,
# delivery-log close 5 s and 1 s for a statement under way (DLOG_CLOSE_GRACE_MS),
# the subscription store's statements 2 s (STORE_STOP_MS), the final commit.
FIXED_STOP_SECONDS = 15


def pod_specs(objs):
    """(object, pod spec) of every workload in a rendered tree."""
    for o in objs:
        if o["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield o, o["spec"]["template"]["spec"]


def containers(spec):
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def config_env(objs):
    """The settings the ConfigMap gives the services (name -> value)."""
    cms = [o for o in objs if o["kind"] == "ConfigMap"]
    out = {}
    for cm in cms:
        out.update(cm.get("data") or {})
    return out


# ------------------------------------------------------------- kustomize


@pytest.mark.parametrize("tree", TREES)
def test_manifests_render_and_stay_in_the_namespace(tree):
    objs = rendered(tree)
    assert objs, f"{tree} rendered nothing"
    for o in objs:
        assert o.get("apiVersion") and o.get("kind") and o["metadata"].get("name"), o
        if o["kind"] != "Namespace":
            # A resource outside the namespace would land in "default".
            assert o["metadata"].get("namespace") == "hookbridge", \
                f"{tree}: {o['kind']}/{o['metadata']['name']} is not in namespace hookbridge"


@pytest.mark.parametrize("tree", SERVICE_TREES)
def test_both_services_are_deployed_with_budgets_and_a_metrics_service(tree):
    objs = rendered(tree)
    deps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
    assert set(deps) == {"hookbridge-dispatcher", "hookbridge-retrier"}
    programs = {Path(c["command"][0]).name for d in deps.values()
                for c in d["spec"]["template"]["spec"]["containers"]}
    assert programs == {"hookbridge-dispatcher", "hookbridge-retrier"}
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    for d in deps.values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert any(p["spec"]["selector"]["matchLabels"].items() <= labels.items() for p in pdbs), \
            f"no PodDisruptionBudget selects {d['metadata']['name']}"
        # Migrations run before the service starts (init container).
        init = d["spec"]["template"]["spec"].get("initContainers") or []
        assert [c["command"] for c in init] == [["/usr/local/bin/hookbridge-migrate", "up"]]
    svc = [o for o in objs if o["kind"] == "Service"]
    assert len(svc) == 1
    ann = svc[0]["metadata"].get("annotations") or {}
    assert ann.get("prometheus.io/scrape") == "true"
    assert ann.get("prometheus.io/path") == "/metrics"
    for d in deps.values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert svc[0]["spec"]["selector"].items() <= labels.items(), \
            f"the metrics Service does not select {d['metadata']['name']}"


@pytest.mark.parametrize("tree", SERVICE_TREES)
def test_every_deployment_has_probes_resources_and_runs_unprivileged(tree):
    for o, spec in pod_specs(rendered(tree)):
        name = o["metadata"]["name"]
        psc = spec.get("securityContext") or {}
        assert psc.get("runAsNonRoot") is True, name
        assert psc.get("runAsUser", 0) > 0, f"{name}: runAsUser must be a non-root uid"
        assert spec.get("automountServiceAccountToken") is False, name
        for c in containers(spec):
            where = f"{name}/{c['name']}"
            sc = c.get("securityContext") or {}
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("privileged"), where
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            assert seccomp == "RuntimeDefault", where
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind) or {}), f"{where}: {kind}"
        if o["kind"] != "Deployment":
            continue
        for c in spec["containers"]:
            where = f"{name}/{c['name']}"
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", where
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", where


def resolve_port(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"{container['name']}: no port named {port!r}")


@pytest.mark.parametrize("tree", SERVICE_TREES)
def test_probes_and_service_use_the_port_the_program_listens_on(tree):
    """HOOKBRIDGE_HTTP_LISTEN's default (from --config-reference) or the
    ConfigMap's value, the containerPort, the probes, the Service and the
    Dockerfile's EXPOSE all name the same port."""
    objs = rendered(tree)
    listen = config_env(objs).get("HOOKBRIDGE_HTTP_LISTEN")
    port = int(listen.rsplit(":", 1)[1]) if listen else default_http_port()
    for o, spec in pod_specs(objs):
        if o["kind"] != "Deployment":
            continue
        for c in spec["containers"]:
            assert [p["containerPort"] for p in c["ports"]] == [port], o["metadata"]["name"]
            for probe in ("livenessProbe", "readinessProbe"):
                assert resolve_port(c, c[probe]["httpGet"]["port"]) == port, \
                    f"{o['metadata']['name']} {probe}"
    svc = next(o for o in objs if o["kind"] == "Service")
    assert [p["port"] for p in svc["spec"]["ports"]] == [port]
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert dockerfile()["expose"] == [str(default_http_port())]


def test_one_image_in_every_container_of_every_tree():
    images = {}
    for tree in TREES:
        for o, spec in pod_specs(rendered(tree)):
            for c in containers(spec):
                images.setdefault(c["image"], []).append(f"{tree}: {o['metadata']['name']}")
    assert len(images) == 1, f"containers disagree on the image: {images}"
    image = next(iter(images))
    assert re.fullmatch(r"[a-z0-9.\-/:]+:[A-Za-z0-9._\-]+", image), \
        f"{image}: want a registry path with an explicit tag"


@pytest.mark.parametrize("tree", SERVICE_TREES)
def test_pods_get_longer_to_stop_than_the_shutdown_drain(tree):
    objs = rendered(tree)
    ref = config_reference()
    drain = config_env(objs).get("HOOKBRIDGE_SHUTDOWN_TIMEOUT") or \
        ref["HOOKBRIDGE_SHUTDOWN_TIMEOUT"]["default"]
    need = duration_seconds(drain) + FIXED_STOP_SECONDS
    for o, spec in pod_specs(objs):
        if o["kind"] == "Deployment":
            grace = spec.get("terminationGracePeriodSeconds", 30)
            assert grace > need, (f"{o['metadata']['name']}: terminationGracePeriodSeconds "
                                  f"{grace} <= drain {drain} + {FIXED_STOP_SECONDS}s")


def test_production_talks_sasl_ssl_with_credentials_from_the_secret():
    objs = rendered("deploy/k8s/overlays/production")
    env = config_env(objs)
    assert env["HOOKBRIDGE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["HOOKBRIDGE_KAFKA_SASL_MECHANISM"].startswith("SCRAM-SHA-")
    for o, spec in pod_specs(objs):
        for c in spec["containers"]:
            refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c.get("env") or []
                    if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]}
            assert {"HOOKBRIDGE_KAFKA_SASL_USERNAME", "HOOKBRIDGE_KAFKA_SASL_PASSWORD",
                    "HOOKBRIDGE_DATABASE_URL"} <= set(refs), o["metadata"]["name"]


def test_autoscaling_follows_the_dispatchers_lag_within_the_partitions():
    """deploy/k8s/optional/autoscaling: KEDA scales the Deployment the base
    names on the lag of the group and topic the dispatcher consumes (defaults
    read from the binary), never beyond the partitions `hookbridge-migrate
    topics` creates, never below two, with the production overlay's brokers,
    SASL mechanism and the Secret keys its pods read."""
    objs = {o["kind"]: o for o in rendered("deploy/k8s/optional/autoscaling")}
    so, auth = objs["ScaledObject"], objs["TriggerAuthentication"]
    deps = {o["metadata"]["name"] for o in rendered("deploy/k8s") if o["kind"] == "Deployment"}
    assert so["spec"]["scaleTargetRef"]["name"] in deps
    assert "dispatcher" in so["spec"]["scaleTargetRef"]["name"]
    ref = config_reference()
    partitions = int(config_reference("hookbridge-migrate")["HOOKBRIDGE_TOPIC_PARTITIONS"]["default"])
    assert 2 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= partitions
    [trigger] = so["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["topic"] == ref["HOOKBRIDGE_EVENTS_TOPIC"]["default"]
    assert meta["consumerGroup"] == "hookbridge-dispatcher"
    assert "default: hookbridge-dispatcher" in ref["HOOKBRIDGE_CONSUMER_GROUP"]["description"]
    # A new partition has no committed offset and is read from the start.
    assert meta["offsetResetPolicy"] == "earliest"
    prod = config_env(rendered("deploy/k8s/overlays/production"))
    assert meta["bootstrapServers"] == prod["HOOKBRIDGE_KAFKA_BROKERS"]
    assert meta["tls"] == "enable" and prod["HOOKBRIDGE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    # KEDA's names: scram_sha256, scram_sha512 (librdkafka's SCRAM-SHA-256, -512)
    assert meta["sasl"] == prod["HOOKBRIDGE_KAFKA_SASL_MECHANISM"].lower().replace(
        "scram-sha-", "scram_sha")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    keys = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    pods = [c for o, spec in pod_specs(rendered("deploy/k8s/overlays/production"))
            if o["metadata"]["name"] == so["spec"]["scaleTargetRef"]["name"]
            for c in spec["containers"]]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in pods[0]["env"]
           if "secretKeyRef" in e.get("valueFrom", {})}
    for param, var in (("username", "HOOKBRIDGE_KAFKA_SASL_USERNAME"),
                       ("password", "HOOKBRIDGE_KAFKA_SASL_PASSWORD")):
        assert keys[param] == (env[var]["name"], env[var]["key"]), param
    # Rebalances pause the group: scale down slowly, one pod at a time.
    down = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"])


def test_alerts_are_the_documented_ones_on_metrics_the_services_serve(stack_metrics):
    """deploy/k8s/optional/alerts: the PrometheusRule holds exactly the alerts
    operations.md lists, with their severities; each names a runbook section
    that exists; every hookbridge metric an expression reads is one a running
    dispatcher, retrier or ingest endpoint serves (a renamed metric would leave an alert that
    never fires); the job is the base's metrics Service; and each expression
    has balanced brackets and quotes (no promtool here). The ingest
    endpoint's alerts read its metrics (its pods carry the labels the
    metrics Service selects)."""
    [rule] = rendered("deploy/k8s/optional/alerts")
    assert rule["kind"] == "PrometheusRule"
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    ops = (REPO / "docs" / "operations.md").read_text()
    section = ops.split("## Alerts worth having\n", 1)[1].split("\n## ", 1)[0]
    documented = {m.group(1): (m.group(2), m.group(3).strip())
                  for m in re.finditer(r"^\| `(Hookbridge\w+)` \| (\w+) \|[^|]*\|([^|]*)\|$",
                                       section, re.M)}
    assert {r["alert"]: r["labels"]["severity"] for r in rules} == \
        {a: sev for a, (sev, _) in documented.items()}
    headings = set(re.findall(r"^#{2,3} (.+)$", ops, re.M))
    services = {o["metadata"]["name"] for o in rendered("deploy/k8s") if o["kind"] == "Service"}
    for r in rules:
        a = r["alert"]
        assert r["annotations"]["summary"], a
        for name in documented[a][1].split(";") if documented[a][1] else []:
            assert any(h.startswith(name.strip()) for h in headings), (a, name)
        for name in re.split(r"[:;] ", r["annotations"]["runbook"].split(", ", 1)[1]):
            assert any(h.startswith(name.strip()) for h in headings) or name == "Runbooks", \
                (a, name)
        expr = r["expr"]
        for metric in set(re.findall(r"\bhookbridge_\w+", expr)):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert base in stack_metrics, f"{a}: {metric} is served by no service"
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in services, f"{a}: job {job} is no Service of the base"
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}") \
            and expr.count('"') % 2 == 0, a


@pytest.fixture
def stack_metrics(db_url, procs, workdir):
    """The metric names a running dispatcher, retrier and ingest endpoint
    serve on /metrics, once they have partitions (the lag gauges come with
    them)."""
    from hbtest.ingest import Ingest
    from hbtest.procs import SLOW, wait_until
    from hbtest.stack import Broker, Dispatcher, Retrier
    broker = Broker(procs, workdir)
    names = set()
    for svc in (Dispatcher(procs, db_url, broker.bootstrap),
                Retrier(procs, db_url, broker.bootstrap)):
        svc.wait_ready()
        wait_until(lambda: "hookbridge_consumer_lag{" in svc.get("/metrics")[1], 30 * SLOW,
                   f"the {svc.program}'s partitions")
        names |= set(re.findall(r"^# TYPE (\w+) ", svc.get("/metrics")[1], re.M))
    # with its spool, as deploy/k8s/optional/ingest runs it
    ing = Ingest(procs, broker.bootstrap,
                 extra_env={"HOOKBRIDGE_INGEST_SPOOL_DIR": str(workdir / "ingest-spool")})
    names |= set(re.findall(r"^# TYPE (\w+) ", ing.ops("/metrics")[1], re.M))
    return names


def test_the_ingest_statefulset_runs_the_deployment_s_pods_with_a_claim_per_pod():
    """deploy/k8s/optional/ingest-statefulset: the ingest endpoint whose spool
    survives the pod's deletion (docs/ingest.md, The spool). It renders no
    Deployment (applied instead of optional/ingest, not beside it), its pods
    are the Deployment's but for the spool (so a change to one that misses
    the other fails here), and the spool is a claim per pod, mounted where
    HOOKBRIDGE_INGEST_SPOOL_DIR says, larger than
    HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES, writable by the pod's group and kept
    when the StatefulSet scales down or is deleted."""
    objs = rendered("deploy/k8s/optional/ingest-statefulset")
    assert not [o for o in objs if o["kind"] == "Deployment"]
    (sts,) = [o for o in objs if o["kind"] == "StatefulSet"]
    (dep,) = [o for o in rendered("deploy/k8s/optional/ingest") if o["kind"] == "Deployment"]
    cm = config_env(objs)
    (svc,) = [o for o in objs if o["kind"] == "Service"]
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()

    want = dep["spec"]["template"]
    want["spec"]["volumes"] = [v for v in want["spec"]["volumes"] if v["name"] != "spool"]
    got = sts["spec"]["template"]
    psc = got["spec"]["securityContext"]
    assert psc.pop("fsGroup") == psc["runAsGroup"]
    assert psc.pop("fsGroupChangePolicy") == "OnRootMismatch"
    assert got == want

    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (c,) = got["spec"]["containers"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert mount["mountPath"] == cm["HOOKBRIDGE_INGEST_SPOOL_DIR"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    size = claim["spec"]["resources"]["requests"]["storage"]
    units = {"Mi": 2**20, "Gi": 2**30}
    assert size[-2:] in units, size
    # room for the file system's own blocks and root's reserved share
    assert int(size[:-2]) * units[size[-2:]] >= 1.1 * int(cm["HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES"])
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain", "whenScaled": "Retain"}


def test_schemas_overlay_mounts_the_writer_schemas_where_the_dispatcher_reads_them():
    """deploy/k8s/overlays/schemas: HOOKBRIDGE_WRITER_SCHEMAS_DIR is the mount
    of the generated ConfigMap holding every .avsc of writer-schemas/, the
    registry credentials come from the Secret, and only the dispatcher (the
    one program that reads events) gets these settings."""
    tree = "deploy/k8s/overlays/schemas"
    objs = rendered(tree)
    cms = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    schemas_cm = [n for n in cms if n.startswith("hookbridge-writer-schemas")]
    assert len(schemas_cm) == 1, cms.keys()
    data = cms[schemas_cm[0]].get("data") or {}
    files = sorted(p.name for p in (REPO / tree / "writer-schemas").glob("*.avsc"))
    assert sorted(k for k in data if k.endswith(".avsc")) == files, \
        "every writer-schemas/*.avsc must be listed in the hookbridge-writer-schemas generator"
    for name in files:
        schema = json.loads(data[name])
        assert schema.get("name") in ("IdentityEvent", "hookbridge.IdentityEvent"), name
    deps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
    spec = deps["hookbridge-dispatcher"]["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    where = env["HOOKBRIDGE_WRITER_SCHEMAS_DIR"]["value"]
    assert where in mounts and mounts[where].get("readOnly") is True
    vol = next(v for v in spec["volumes"] if v["name"] == mounts[where]["name"])
    assert vol["configMap"]["name"] == schemas_cm[0]
    assert env["HOOKBRIDGE_SCHEMA_REGISTRY_URL"]["value"].startswith("https://")
    ref = env["HOOKBRIDGE_SCHEMA_REGISTRY_USER_INFO"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "hookbridge" and ref.get("optional") is True
    retrier = deps["hookbridge-retrier"]["spec"]["template"]["spec"]["containers"][0]
    assert not [e for e in retrier.get("env") or [] if "SCHEMA" in e["name"]]


SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|USERNAME|DATABASE_URL|SASL_OAUTHBEARER_CONFIG|"
                       r"SSL_KEY|KEY_PASSWORD|KEYSTORE", re.I)


@pytest.mark.parametrize("tree", TREES)
def test_no_secret_value_is_in_any_manifest(tree):
    objs = rendered(tree)
    assert not [o for o in objs if o["kind"] == "Secret"], \
        "a Secret object carries values; the operator creates it (docs/operations.md)"
    for name in config_env(objs):
        assert not SECRETISH.search(name), f"ConfigMap holds {name}: it belongs in the Secret"
    for o, spec in pod_specs(objs):
        for c in containers(spec):
            for e in c.get("env") or []:
                if SECRETISH.search(e["name"]):
                    assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), \
                        f"{o['metadata']['name']}/{c['name']}: {e['name']} must come from a Secret"
    # Nothing that looks like a credential, in any file (comments included,
    # except placeholders in <angle brackets>).
    for f in (REPO / tree).rglob("*.yaml"):
        text = f.read_text()
        for m in re.finditer(r"://[^/\s:@]+:([^@\s]+)@", text):
            assert m.group(1).startswith("<"), f"{f}: a URL with a password"
        assert not re.search(r"(?i)password\s*[=:]\s*[^<\s{]", text.replace(
            "kafka-sasl-password", "")), f"{f}: a password value"


def test_manifests_are_clean_yaml():
    r = subprocess.run(["yamllint", "-f", "parsable", "-d",
                        "{extends: default, rules: {line-length: {max: 140}, "
                        "document-start: disable}}", str(K8S)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("tree", TREES)
def test_every_hookbridge_variable_in_the_manifests_exists(tree):
    """A misspelt setting would be ignored silently by the program: each
    HOOKBRIDGE_* name is in --config-reference, or is a librdkafka property
    through the passthrough that librdkafka documents."""
    ref = config_reference()
    props = librdkafka_properties()
    objs = rendered(tree)
    names = set(config_env(objs))
    for _, spec in pod_specs(objs):
        for c in containers(spec):
            names |= {e["name"] for e in c.get("env") or []}
    for n in sorted(x for x in names if x.startswith("HOOKBRIDGE_")):
        if n in ref:
            continue
        assert n.startswith("HOOKBRIDGE_KAFKA_"), f"{n} is not a hookbridge setting"
        prop = n[len("HOOKBRIDGE_KAFKA_"):].lower().replace("_", ".")
        assert prop in props, f"{n}: librdkafka has no property {prop}"


def librdkafka_properties():
    import gzip
    for p in ("/usr/share/doc/librdkafka-dev/CONFIGURATION.md.gz",
              "/usr/share/doc/librdkafka1/CONFIGURATION.md.gz"):
        if os.path.exists(p):
            text = gzip.open(p, "rt").read()
            return {m.group(1) for m in re.finditer(r"^([a-z][a-z0-9.]+)\s+\|", text, re.M)}
    pytest.fail("librdkafka's CONFIGURATION.md is not installed (librdkafka-dev)")


# ------------------------------------------------------------ Dockerfile


def dockerfile():
    """The Dockerfile's instructions per stage (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages, args = [], {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip()
            continue
        if word == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            image = re.sub(r"\$\{(\w+)\}", lambda x: args.get(x.group(1), ""), m.group(1))
            stages.append({"image": image, "name": m.group(2), "ins": []})
            continue
        stages[-1]["ins"].append((word, rest.strip()))
    last = stages[-1]["ins"]
    return {
        "stages": stages,
        "expose": [p.split("/")[0] for w, r in last if w == "EXPOSE" for p in r.split()],
        "user": [r for w, r in last if w == "USER"],
        "entrypoint": [r for w, r in last if w == "ENTRYPOINT"],
        "copies": [r for w, r in last if w == "COPY"],
    }


def apt_installed(stage):
    """Packages an `apt-get install` in a stage's RUN lines names."""
    pkgs = []
    for w, r in stage["ins"]:
        if w != "RUN":
            continue
        for cmd in re.split(r"&&|;", r):
            argv = shlex.split(cmd)
            if argv[:2] == ["apt-get", "install"]:
                pkgs += [a for a in argv[2:] if not a.startswith("-")]
    return pkgs


def copied_binaries():
    out = []
    for c in dockerfile()["copies"]:
        argv = shlex.split(c)
        srcs = [a for a in argv[:-1] if not a.startswith("--")]
        out += [Path(s).name for s in srcs if "/bin/hookbridge-" in s]
    return out


def test_dockerfile_two_debian_12_stages_non_root_exec_entrypoint():
    df = dockerfile()
    assert len(df["stages"]) >= 2
    for s in df["stages"]:
        assert re.fullmatch(r"debian:(12|bookworm)(-slim)?(@sha256:[0-9a-f]{64})?", s["image"]), \
            s["image"]
    assert any(w == "RUN" and "make" in r and " all" in r for w, r in df["stages"][0]["ins"]), \
        "the build stage runs make all"
    assert df["stages"][0]["name"] and any(
        "--from=" + df["stages"][0]["name"] in c for c in df["copies"])
    # Numeric uid (and gid), not root: Kubernetes' runAsNonRoot can verify it.
    assert len(df["user"]) == 1
    uid = df["user"][0].split(":")[0]
    assert uid.isdigit() and int(uid) > 0
    for _, spec in pod_specs(rendered("deploy/k8s")):
        assert spec["securityContext"]["runAsUser"] == int(uid)
    # Exec form: no shell is needed (or used) to start the program.
    assert len(df["entrypoint"]) == 1
    entry = json.loads(df["entrypoint"][0])
    assert isinstance(entry, list) and entry[0].startswith("/usr/local/bin/hookbridge-")


def test_image_holds_what_make_all_builds_and_the_manifests_run():
    r = subprocess.run(["make", "-pn", "-C", str(REPO), "B=/nonexistent", "BIN=/nonexistent",
                        "all"], capture_output=True, text=True)
    m = re.search(r"^PROGRAMS :?= (.*)$", r.stdout, re.M)
    assert m, "PROGRAMS not found in make's database"
    built = set(m.group(1).split())
    copied = copied_binaries()
    assert copied and set(copied) <= built, f"{set(copied) - built} is not built by make all"
    assert len(copied) == len(set(copied))
    for tree in TREES:
        for o, spec in pod_specs(rendered(tree)):
            for c in containers(spec):
                assert c["command"][0] in [f"/usr/local/bin/{b}" for b in copied], \
                    f"{tree} {o['metadata']['name']}: {c['command'][0]} is not in the image"
    # Dev-only programs stay out of the image.
    assert "hookbridge-devbroker" not in copied


def test_image_migrations_are_where_hookbridge_migrate_looks(tmp_path):
    """The image has no --dir and no HOOKBRIDGE_MIGRATIONS_DIR: the binary
    installed as /usr/local/bin/hookbridge-migrate must look in the directory
    the Dockerfile copies migrations/*.sql to."""
    dest = [shlex.split(c)[-1] for c in dockerfile()["copies"] if "migrations/*.sql" in c]
    assert len(dest) == 1
    fake = tmp_path / "usr" / "local" / "bin"
    fake.mkdir(parents=True)
    shutil.copy(BIN / "hookbridge-migrate", fake)
    env = {k: v for k, v in os.environ.items() if k != "HOOKBRIDGE_MIGRATIONS_DIR"}
    env["HOOKBRIDGE_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    r = subprocess.run([str(fake / "hookbridge-migrate"), "status"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert f"migrations directory {dest[0].rstrip('/')}:" in r.stdout + r.stderr, \
        r.stdout + r.stderr


def test_image_sql_files_are_beside_the_migrations():
    """hookbridge-migrate reads the functions from <migrations dir>/../sql: the
    image must have every sql/*.sql there."""
    copies = dockerfile()["copies"]
    mig = [shlex.split(c)[-1] for c in copies if "migrations/*.sql" in c]
    sqls = [shlex.split(c)[-1] for c in copies if "/sql/*.sql" in c]
    assert len(mig) == 1 and len(sqls) == 1, copies
    assert os.path.normpath(sqls[0]) == os.path.join(os.path.dirname(os.path.normpath(mig[0])),
                                                     "sql")
    assert sorted((REPO / "sql").glob("*.sql")), "no sql/*.sql to copy"


@functools.lru_cache(maxsize=None)
def dpkg_owner(path):
    """Debian package owning a library path; usrmerge means dpkg may know it
    under /lib or /usr/lib, by the link name or by the real file."""
    cands = []
    for p in (path, os.path.realpath(path)):
        cands.append(p)
        if p.startswith("/usr/lib/"):
            cands.append(p[len("/usr"):])
        elif p.startswith("/lib/"):
            cands.append("/usr" + p)
    for c in cands:
        r = subprocess.run(["dpkg", "-S", c], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0].strip()
    raise AssertionError(f"no Debian package owns {path}")


def dependency_closure(pkgs):
    """Installed packages reachable through Depends/Pre-Depends."""
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Pre-Depends}, ${Depends}\n"],
                       capture_output=True, text=True, check=True)
    deps = {}
    for line in r.stdout.splitlines():
        name, _, d = line.partition("\t")
        alts = []
        for clause in d.split(","):
            for alt in clause.split("|"):
                alt = re.sub(r"\(.*?\)", "", alt).split(":")[0].strip()
                if alt:
                    alts.append(alt)
        deps[name] = alts
    seen, todo = set(), list(pkgs)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo += deps.get(p, [])
    return seen


def test_runtime_packages_provide_every_library_the_binaries_link():
    df = dockerfile()
    runtime = apt_installed(df["stages"][-1])
    for p in runtime:  # real Debian 12 package names (installed here by the -dev ones)
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", p], capture_output=True,
                           text=True)
        assert "install ok installed" in r.stdout, f"{p}: not a Debian package installed here"
    closure = dependency_closure(runtime)
    missing = {}
    for b in copied_binaries():
        r = subprocess.run(["ldd", str(BIN / b)], capture_output=True, text=True, check=True)
        for m in re.finditer(r"^\s*(\S+) => (/\S+)", r.stdout, re.M):
            if "libasan" in m.group(1) or "libubsan" in m.group(1):
                continue  # sanitizer builds (make test-asan) link these; the image does not
            pkg = dpkg_owner(m.group(2))
            if pkg not in closure:
                missing.setdefault(pkg, []).append(f"{b}: {m.group(1)}")
    assert not missing, f"libraries no runtime package provides: {missing}"
    assert "ca-certificates" in runtime, "TLS to Kafka and to endpoints needs the CA bundle"


def test_build_stage_has_the_dev_package_of_every_library_make_uses():
    mk = (REPO / "Makefile").read_text()
    mods = re.search(r"^PKGS\s*:?=\s*(.*)$", mk, re.M).group(1).split()
    build = set(apt_installed(dockerfile()["stages"][0]))
    for mod in mods + ["cmocka"]:  # make all also builds the unit tests
        r = subprocess.run(["pkg-config", "--variable=pcfiledir", mod], capture_output=True,
                           text=True, check=True)
        pkg = dpkg_owner(os.path.join(r.stdout.strip(), mod + ".pc"))
        assert pkg in build, f"pkg-config module {mod} comes from {pkg}, not installed to build"


def test_dockerignore_keeps_what_the_build_needs():
    patterns = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True,
                             text=True, check=True).stdout.split()
    needed = [f for f in tracked
              if f == "Makefile" or f.endswith((".c", ".h", ".sql", ".avsc", ".sh"))
              or f.startswith("schema/")]
    for f in needed:
        for p in patterns:
            assert not (fnmatch.fnmatch(f, p) or f.startswith(p.rstrip("/") + "/")), \
                f".dockerignore pattern {p} drops {f}, which make all needs"
    for junk in ("bin", "build", ".git"):
        assert junk in patterns
