"""Review 88: do the README and docs/*.md say what the code does? The
existing contract tests (test_review23_docs, test_ops, test_deploy) check
the configuration table, the metric families, the SQL names, the log lines,
the make targets and the manifests; these two close what they left open:

- a HOOKBRIDGE_* variable named anywhere in README.md or docs/*.md (not
  only in configuration.md) is one something reads: a setting, a librdkafka
  property through the passthrough, or a variable of the test harness;
- docs/operations.md's metric table says which service serves each metric
  ("dispatcher: ...", "retrier: ...", "ingest endpoint: ..."; no prefix:
  the dispatcher and the retrier), and that is the service a running one
  serves it from: an operator building a dashboard per Deployment goes by
  it."""
import re

from hbtest.opscheck import config_reference
from hbtest.procs import REPO, SLOW, wait_until

DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
# Where the programs' helpers and the test harness read their variables.
HARNESS = [REPO / "Makefile"] + sorted((REPO / "deploy" / "local").glob("*")) + \
    sorted((REPO / "tests").rglob("*.py")) + sorted((REPO / "scripts").glob("*"))


def harness_reads(name):
    """Does a script, the Makefile or the test harness read $name?"""
    pat = re.compile(r"os\.environ(?:\.get)?\(\s*[\"']" + name + r"[\"']|"
                     r"os\.environ\[[\"']" + name + r"[\"']\]|"
                     r"\$\{?" + name + r"\b")
    return any(p.is_file() and pat.search(p.read_text(errors="replace")) for p in HARNESS)


def test_every_variable_any_doc_names_is_read_by_something():
    """test_ops checks the variables of configuration.md; the README and the
    other pages name about 90 more (runbooks, tables, prose), and nothing
    checked them: a setting renamed or removed left its old name in, say,
    the README's table or a runbook of operations.md, and an operator
    setting it changed nothing (the programs ignore unknown HOOKBRIDGE_*
    variables, and a HOOKBRIDGE_KAFKA_* one reaches librdkafka only if it is
    a property). Checked to fail with the README's
    `HOOKBRIDGE_VERIFY_TRY_LATER_FOR` written `HOOKBRIDGE_VERIFY_RETRY_FOR`,
    and with operations.md's `HOOKBRIDGE_KAFKA_QUEUED_MAX_MESSAGES_KBYTES`
    written `HOOKBRIDGE_KAFKA_QUEUED_MAX_KBYTES`."""
    from test_deploy import librdkafka_properties
    from test_ops import EXTRA_VARIABLES, REFUSED_EXAMPLE
    settings = config_reference()
    props = librdkafka_properties()
    problems = []
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"\bHOOKBRIDGE_[A-Z0-9_]*[A-Z0-9]\b", text):
            name = m.group(0)
            if name in settings or name in EXTRA_VARIABLES or name == REFUSED_EXAMPLE:
                continue
            if name.startswith("HOOKBRIDGE_KAFKA_"):
                prop = name[len("HOOKBRIDGE_KAFKA_"):].lower().replace("_", ".")
                if prop in props:
                    continue
            if harness_reads(name):
                continue
            line = text.count("\n", 0, m.start()) + 1
            problems.append(f"{doc.relative_to(REPO)}:{line}: {name} is read by nothing")
    assert not problems, "\n".join(problems)


def metric_table():
    """{family: description} of docs/operations.md's metric table."""
    text = (REPO / "docs" / "operations.md").read_text()
    return {m.group(1): m.group(2) for m in
            re.finditer(r"^\| `(hookbridge_[a-z_]+)(?:\{[^}]*\})?` \| \w+ \| (.*) \|$", text,
                        re.M)}


def documented_services(desc):
    """The services a row of the table says serve the metric: its leading
    "dispatcher:", "retrier:", "dispatcher, retrier:" (and a later "; retrier:"
    part), "ingest endpoint"; none: the dispatcher and the retrier."""
    svc = r"((?:dispatcher|retrier)(?:, (?:dispatcher|retrier))*):"
    m = re.match(svc, desc)
    if m:
        named = set(m.group(1).split(", "))
        for m in re.finditer("; " + svc, desc):
            named |= set(m.group(1).split(", "))
        return named
    if desc.startswith("ingest endpoint"):
        return {"ingest"}
    return {"dispatcher", "retrier"}


def families(text):
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def test_the_metric_table_names_the_service_that_serves_each_metric(db_url, broker, procs,
                                                                       workdir):
    """test_ops checks that the table names every family some service
    exports and nothing else; it did not check *which* service: a metric
    moved from the dispatcher to the retrier (or made shared) kept its
    "dispatcher:" in the table, and a dashboard or alert scoped to the
    dispatcher's pods showed nothing. Checked to fail with the row of
    hookbridge_replays_total saying "dispatcher:" instead of "retrier:", and
    with the "dispatcher:" taken off hookbridge_verifications_total (a metric
    the retrier does not serve). About 8 s."""
    from hbtest.ingest import Ingest
    from hbtest.stack import Dispatcher, Retrier
    served = {}
    for cls in (Dispatcher, Retrier):
        svc = cls(procs, db_url, broker.bootstrap)
        svc.wait_ready()
        text = wait_until(lambda: (r := svc.get("/metrics"))[0] == 200 and
                          "hookbridge_consumer_lag{" in r[1] and r[1], 20 * SLOW,
                          f"{cls.program} /metrics with the consumer lag")
        served[cls.program] = families(text)
    ing = Ingest(procs, broker.bootstrap,
                 extra_env={"HOOKBRIDGE_INGEST_SPOOL_DIR": str(workdir / "ingest-spool")})
    served["ingest"] = families(ing.ops("/metrics")[1])
    problems = []
    for family, desc in sorted(metric_table().items()):
        want = documented_services(desc)
        got = {s for s, names in served.items() if family in names}
        if want == {"ingest"}:
            ok = got == {"ingest"}
        else:
            # the operations port's metrics are every service's; compare the
            # two consuming services
            ok = got - {"ingest"} == want
        if not ok:
            problems.append(f"{family}: the table says {sorted(want)}, served by {sorted(got)}")
    assert not problems, "\n".join(problems)
