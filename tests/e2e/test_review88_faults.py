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
import time

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


def doc_block(text, start, end="```"):
    """The text of a doc from the line starting with `start` to `end`."""
    i = text.index(start)
    return text[i:text.index(end, i)]


def header_names(block):
    """The literal header names of a request block (`Name: value` lines;
    the `<auth header>` and `<your headers>` placeholders left out)."""
    return {m.group(1).lower() for m in re.finditer(r"^([A-Za-z][A-Za-z0-9-]*): ", block, re.M)}


def json_keys(block):
    return set(re.findall(r'"([A-Za-z]+)":', block))


def test_the_request_the_docs_show_is_the_one_a_receiver_gets(db_url, broker, procs, workdir):
    """The README's "What a subscriber receives" and docs/payloads.md's "The
    request" and "Formats" are what receivers are written from: the headers
    they list are the ones a delivery carries (besides Host, Accept,
    Content-Length and the subscription's auth and custom headers), each
    format's Content-Type is the one its section gives, the envelope members
    they show are the body's, and the challenge carries the headers its block
    lists. Nothing compared the docs with a delivery (test_payload compares
    deliveries with its own expectations). Checked to fail with
    payloads.md's `webhook-timestamp` written `webhook-time`, the cloudevents
    section's Content-Type written `application/cloudevents`, and the
    README's envelope without `contentType`. About 6 s."""
    import json

    from hbtest.lifecycle import challenges, register_active
    from hbtest.stack import Dispatcher, Receiver, produce
    from hbtest.webhooks import signature_valid
    from test_payload import AUTH, SECRET, full_event
    readme = (REPO / "README.md").read_text()
    payloads = (REPO / "docs" / "payloads.md").read_text()
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    rcv = Receiver(procs, workdir, secret=SECRET, auth=f"{AUTH[0]}: {AUTH[1]}")
    base = rcv.url.rsplit("/", 1)[0]
    for fmt in ("okta", "cloudevents", "event"):
        register_active(d, db_url, f"{base}/{fmt}", ["user.session.start"],
                        {"format": fmt, "auth_header": AUTH[0], "auth_value": AUTH[1],
                         "secret": SECRET, "headers": {"X-Team": "iam"}}, name=fmt)
    ev = full_event()
    produce(broker.bootstrap, [ev])
    posts = wait_until(lambda: len(p := rcv.posts()) >= 3 and p, 20 * SLOW, "one POST per format")
    got = {p["path"].lstrip("/"): p for p in posts}
    assert set(got) == {"okta", "cloudevents", "event"}
    for p in posts:
        assert 200 <= p["status"] < 300 and signature_valid(SECRET, p), p["path"]
    theirs = {"host", "accept", "content-length", AUTH[0].lower(), "x-team"}
    for where, block in (("README.md", doc_block(readme, "POST <url>")),
                         ("docs/payloads.md", doc_block(payloads.split("## The request", 1)[1],
                                                        "POST <url>"))):
        listed = header_names(block)
        for fmt, p in got.items():
            sent = set(p["headers"])
            assert listed <= sent, f"{where} lists {sorted(listed - sent)}; {fmt} has not"
            assert sent - theirs <= listed, f"{fmt} sends {sorted(sent - theirs - listed)}, " \
                f"which {where} does not list"
    # each format's Content-Type, as its section of payloads.md gives it
    for fmt in ("okta", "cloudevents", "event"):
        section = payloads.split(f"### `{fmt}`", 1)[1].split("\n### ", 1)[0]
        ctype = re.search(r"`Content-Type: ([^`]+)`", section).group(1)
        assert got[fmt]["headers"]["content-type"] == ctype, fmt
    # the envelopes' members, as the README and payloads.md show them
    okta = json.loads(got["okta"]["body"])
    ce = json.loads(got["cloudevents"]["body"])
    readme_env = doc_block(readme, '{"eventType":"com.okta.event_hook"')
    payloads_okta = doc_block(payloads, '{"eventType": "com.okta.event_hook"')
    payloads_ce = doc_block(payloads, '{"specversion": "1.0"')
    inner = {"events", "uuid", "eventType"}
    for where, block, body in (("README.md", readme_env, okta),
                               ("docs/payloads.md", payloads_okta, okta),
                               ("docs/payloads.md", payloads_ce, ce)):
        shown = json_keys(block)
        assert set(body) <= shown, f"{where} leaves out {sorted(set(body) - shown)}"
        assert shown - inner <= set(body) | set(ev), \
            f"{where} shows {sorted(shown - inner - set(body))}, which the body has not"
    # the challenge: the headers its block in payloads.md lists, and the
    # challenge header the text names
    challenge = payloads.split("## The request", 1)[1].split("webhook-id: <value>", 1)
    listed = header_names("webhook-id: <value>" + challenge[1].split("```", 1)[0])
    listed.add("x-okta-verification-challenge")
    assert len(challenges(rcv)) == 3
    for c in challenges(rcv):
        assert listed <= set(c["headers"]), sorted(listed - set(c["headers"]))
        assert c["headers"]["webhook-id"] == c["headers"]["x-okta-verification-challenge"]


def test_the_delivery_statuses_the_docs_give_are_those_the_log_holds(db_url, broker, procs,
                                                                      workdir):
    """docs/sql.md (recent_deliveries) and design.md gave a delivery the
    status `pending`, and sql.md had `cancel` refuse a delivery whose first
    attempt is under way with HB028 naming that status; the services never
    write it: a delivery gets its row when its first outcome is logged, so
    during a first attempt (here against an endpoint that answers after 4 s) the log has no
    row for it (so `cancel` of it can only say HB027, not in the log). Failed
    on main's docs: sql.md gave `pending`, and so did design.md. The docs now give
    the statuses the log holds: the outcomes the services write and
    `replay`, which replay() sets. About 7 s."""
    from hbtest.lifecycle import event, register_active, sql
    from hbtest.stack import Dispatcher, Receiver, produce
    src = (REPO / "lib" / "hb_dlog.c").read_text()
    body = src[src.index("const char *hb_outcome_name("):]
    written = set(re.findall(r'return "([a-z]+)";', body[:body.index("\n}\n")])) | {"replay"}
    assert written == {"delivered", "retry", "failed", "dropped", "replay"}, written
    sqlmd = (REPO / "docs" / "sql.md").read_text()
    view = sqlmd.split("### hookbridge.recent_deliveries", 1)[1].split("\n## ", 1)[0]
    cell = re.search(r"^\| `status` \| (.*)$", view, re.M).group(1)
    documented = {w for w in re.findall(r"`([a-z]+)`", cell.split(". ", 1)[0])}
    assert documented == written, f"sql.md: {sorted(documented)}, the log: {sorted(written)}"
    design = (REPO / "docs" / "design.md").read_text()
    m = re.search(r"`deliveries` \(one row per delivery,[^)]*\)", design)
    assert set(re.findall(r"`([a-z]+)`", m.group(0))) - {"deliveries"} == written, m.group(0)

    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    rcv = Receiver(procs, workdir, delay_ms=int(4000 * SLOW))
    sub = register_active(d, db_url, rcv.url, ["user.lifecycle.create"],
                          {"timeout_ms": 30000})  # the receiver's wait, under ASan too
    produce(broker.bootstrap, [event("user.lifecycle.create")])
    query = "SELECT status FROM hookbridge.deliveries WHERE subscription_id = %s"
    wait_until(lambda: d.metric("hookbridge_requests_in_flight") == 1, 10 * SLOW,
               "the request at the receiver")
    time.sleep(1)  # ten delivery-log flushes (HOOKBRIDGE_LOG_FLUSH_INTERVAL 100ms)
    assert d.metric("hookbridge_requests_in_flight") == 1 and not rcv.posts()
    assert sql(db_url, query, sub) == []
    assert wait_until(lambda: sql(db_url, query, sub), 15 * SLOW, "the delivery logged") == \
        [("delivered",)]
