"""Payload options end to end: what a subscriber receives for each format, with
a field selection, with custom headers and with its own timeout, through
register() and a running dispatcher; and every way register() refuses those
options, with its SQLSTATE, leaving nothing behind."""
import json
import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg2
import pytest

from hbtest.lifecycle import wait_read
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from hbtest.webhooks import signature_valid

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AUTH = ("Authorization", "Bearer e2e-payload-91c3")
SCHEMA = Path(__file__).resolve().parents[2] / "schema" / "identity_event.avsc"
IP = "198.51.100.7"  # the documentation address every IP-bearing field carries


def sql(db_url, query, *args):
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall() if cur.description else None


def sqlstate(db_url, query, *args):
    with pytest.raises(psycopg2.Error) as e:
        sql(db_url, query, *args)
    return e.value.pgcode, e.value.pgerror or str(e.value)


def register(db_url, url, types, options, name="payload"):
    opts = {"auth_header": AUTH[0], "auth_value": AUTH[1], "secret": SECRET}
    opts.update(options)
    return sql(db_url, "SELECT hookbridge.register(%s, %s, %s, %s::jsonb)", name, url, types,
               json.dumps(opts))[0][0]


def verify_and_activate(db_url, *subs):
    for sub in subs:
        sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    for sub in subs:
        state = wait_until(
            lambda: (s := sql(db_url, "SELECT verification FROM hookbridge.subscriptions "
                              "WHERE id=%s", sub)[0][0]) != "unverified" and s, 15,
            "the verification outcome")
        assert state == "verified"
        sql(db_url, "SELECT hookbridge.activate(%s)", sub)


def full_event(etype="user.session.start"):
    """An identity event with every top-level field, IP addresses in client,
    request and debugContext. Exactly what the subscriber should see back
    (nothing null, version and severity given), so it compares with ==."""
    user = "00u" + uuid.uuid4().hex[:10]
    return {
        "uuid": str(uuid.uuid4()),
        "published": "2025-11-29T02:49:59.123Z",
        "eventType": etype,
        "version": "0",
        "severity": "INFO",
        "legacyEventType": "core.user_auth.login_success",
        "displayMessage": "User login to Okta",
        "actor": {"id": user, "type": "User", "alternateId": f"{user}@example.com",
                  "displayName": "Grace Hopper"},
        "client": {"userAgent": {"rawUserAgent": "Mozilla/5.0", "os": "Mac OS X",
                                 "browser": "FIREFOX"},
                   "zone": "null", "device": "Computer", "ipAddress": IP},
        "outcome": {"result": "SUCCESS"},
        "target": [{"id": "0oa1app", "type": "AppInstance", "displayName": "Wiki"},
                   {"id": user, "type": "User", "alternateId": f"{user}@example.com"}],
        "transaction": {"type": "WEB", "id": "WkX1b2"},
        "debugContext": {"debugData": {"requestUri": "/api/v1/authn", "clientIp": IP}},
        "authenticationContext": {"authenticationProvider": "OKTA_AUTHENTICATION_PROVIDER",
                                  "credentialType": "PASSWORD", "externalSessionId": "x1"},
        "securityContext": {"asNumber": 64496, "asOrg": "example", "isp": "example",
                            "isProxy": False},
        "request": {"ipChain": [{"ip": IP, "version": "V4"}]},
    }


def one_post(receiver, path):
    posts = [r for r in receiver.posts() if r["path"] == path]
    assert len(posts) == 1, f"{path}: {len(posts)} POSTs"
    req = posts[0]
    assert 200 <= req["status"] < 300
    assert signature_valid(SECRET, req), f"{path}: signature does not verify"
    return req, json.loads(req["body"])


def near_now(rfc3339):
    t = datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return abs(datetime.now(timezone.utc) - t) < timedelta(seconds=60 * SLOW)


@pytest.fixture
def stack(db_url, broker, procs, workdir):
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"{AUTH[0]}: {AUTH[1]}")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    return receiver, d


# --- formats -----------------------------------------------------------------


def test_each_format_field_by_field(db_url, broker, stack):
    receiver, _ = stack
    base = receiver.url.rsplit("/", 1)[0]
    subs = {fmt: register(db_url, f"{base}/{fmt}", ["user.session.start"], opts, name=fmt)
            for fmt, opts in (("okta", {}), ("cloudevents", {"format": "cloudevents"}),
                              ("event", {"format": "event"}))}
    verify_and_activate(db_url, *subs.values())
    ev = full_event()
    produce(broker.bootstrap, [ev])
    wait_until(lambda: len(receiver.posts()) >= 3, 30, "one POST per format")
    time.sleep(0.5)

    # okta (the default): the Okta event-hook envelope, the event in data.events.
    req, body = one_post(receiver, "/okta")
    assert req["headers"]["content-type"] == "application/json"
    assert list(body) == ["eventType", "eventTypeVersion", "cloudEventsVersion", "source",
                          "eventId", "eventTime", "contentType", "data"]
    assert body["eventType"] == "com.okta.event_hook"
    assert body["eventTypeVersion"] == "1.0"
    assert body["cloudEventsVersion"] == "0.1"
    assert body["source"] == "urn:hookbridge"
    assert body["eventId"] == req["headers"]["webhook-id"]
    assert near_now(body["eventTime"]), body["eventTime"]
    assert body["contentType"] == "application/json"
    assert body["data"] == {"events": [ev]}

    # cloudevents: CloudEvents 1.0 structured mode, the event in data.
    req, body = one_post(receiver, "/cloudevents")
    assert req["headers"]["content-type"] == "application/cloudevents+json"
    assert body == {
        "specversion": "1.0",
        "id": ev["uuid"],
        "source": "urn:hookbridge",
        "type": "user.session.start",
        "subject": ev["target"][1]["id"],  # the User target, not the app
        "time": ev["published"],
        "datacontenttype": "application/json",
        "data": ev,
    }

    # event: the bare event.
    req, body = one_post(receiver, "/event")
    assert req["headers"]["content-type"] == "application/json"
    assert body == ev

    # Three subscriptions, three deliveries, three webhook-ids.
    assert len({r["headers"]["webhook-id"] for r in receiver.posts()}) == 3


# --- field selection ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["okta", "cloudevents", "event"])
def test_fields_keep_ip_addresses_from_the_subscriber(db_url, broker, stack, fmt):
    """A subscriber that must not receive IP addresses selects the fields it
    needs: client, debugContext, request (and the rest) never reach it."""
    receiver, _ = stack
    fields = ["actor", "target", "outcome", "displayMessage"]
    sub = register(db_url, receiver.url, ["user.session.start", "user.account.lock"],
                   {"format": fmt, "fields": fields})
    stored = sql(db_url, "SELECT options FROM hookbridge.subscriptions WHERE id=%s", sub)[0][0]
    assert stored == {"format": fmt, "fields": fields}
    verify_and_activate(db_url, sub)
    evs = [full_event("user.session.start"), full_event("user.account.lock")]
    produce(broker.bootstrap, evs)
    wait_until(lambda: len(receiver.posts()) >= 2, 30, "both deliveries")
    time.sleep(0.5)
    posts = receiver.posts()
    assert len(posts) == 2
    got = {}
    for req in posts:
        assert IP not in req["body"], "an IP address reached the subscriber"
        assert signature_valid(SECRET, req)
        body = json.loads(req["body"])
        data = {"okta": lambda b: b["data"]["events"][0], "cloudevents": lambda b: b["data"],
                "event": lambda b: b}[fmt](body)
        got[data["uuid"]] = data
    for ev in evs:
        data = got[ev["uuid"]]
        # uuid, published and eventType always; then exactly the chosen fields.
        assert sorted(data) == sorted(["uuid", "published", "eventType"] + fields)
        for k in data:
            assert data[k] == ev[k], k


# --- custom headers -------------------------------------------------------------


def test_custom_headers_arrive_on_every_post_and_the_challenge(db_url, broker, stack):
    receiver, d = stack
    headers = {"X-Team": "iam-7c1e", "X-Route": "blue green"}
    sub = register(db_url, receiver.url, ["user.session.start"], {"headers": headers})
    verify_and_activate(db_url, sub)
    # The verification GET carries them: a gateway routing on X-Team lets it through.
    gets = [r for r in receiver.requests()
            if r["method"] == "GET" and "x-okta-verification-challenge" in r["headers"]]
    assert len(gets) == 1
    assert gets[0]["headers"]["x-team"] == "iam-7c1e"
    assert gets[0]["headers"]["x-route"] == "blue green"

    produce(broker.bootstrap, [full_event(), full_event()])
    wait_until(lambda: len(receiver.posts()) >= 2, 30, "two deliveries")
    for req in receiver.posts():
        h = req["headers"]
        assert h["x-team"] == "iam-7c1e" and h["x-route"] == "blue green"
        # ours are untouched next to them
        assert h["content-type"] == "application/json"
        assert h["user-agent"].startswith("hookbridge/")
        assert h["authorization"] == AUTH[1]
        assert signature_valid(SECRET, req) and req["verified"] is True
    # Header values are never logged.
    assert "iam-7c1e" not in d.proc.output()


def test_reserved_header_written_into_the_table_by_hand_is_not_sent(db_url, broker, stack):
    """register() refuses reserved headers; if one gets into the table anyway
    (plain SQL past the functions), the dispatcher skips it with a warning
    naming the header, and sends the rest."""
    receiver, d = stack
    sub = register(db_url, receiver.url, ["user.session.start"], {"headers": {"X-Ok": "1"}})
    verify_and_activate(db_url, sub)
    sql(db_url, "UPDATE hookbridge.subscriptions SET options = options || %s::jsonb WHERE id=%s",
        json.dumps({"headers": {"X-Ok": "1", "Content-Type": "text/evil",
                                "webhook-id": "forged", "X-Crlf": "a\r\nX-Evil: 1"}}), sub)
    wait_until(lambda: "custom header skipped" in d.proc.output(), 10,
               "the dispatcher to reload the subscription")
    produce(broker.bootstrap, [full_event()])
    wait_until(lambda: receiver.posts(), 30, "the delivery")
    h = receiver.posts()[0]["headers"]
    assert h["x-ok"] == "1"
    assert h["content-type"] == "application/json"
    assert h["webhook-id"] != "forged"
    assert "x-evil" not in h and "x-crlf" not in h
    log = d.proc.output()
    for name in ("Content-Type", "webhook-id", "X-Crlf"):
        assert re.search(rf'custom header skipped: [^\n]*\\?"{name}\\?"', log), name
    assert "text/evil" not in log and "forged" not in log


def test_unreadable_field_list_written_by_hand_stops_deliveries_until_fixed(db_url, broker,
                                                                            stack):
    """A field list the dispatcher cannot read (plain SQL past register()) is
    not taken to mean "every field", nor is an outdated snapshot kept: the
    subscription receives nothing, with an error naming the problem, until
    the row is fixed; then it gets only what it chose."""
    receiver, d = stack
    sub = register(db_url, receiver.url, ["user.session.start"], {"fields": ["actor"]})
    verify_and_activate(db_url, sub)
    wait_until(lambda: "subscription changed: active, verified" in d.proc.output(), 10,
               "the dispatcher to apply the activation")
    sql(db_url, "UPDATE hookbridge.subscriptions SET options = options || %s::jsonb WHERE id=%s",
        json.dumps({"fields": "actor"}), sub)
    wait_until(lambda: "malformed options.fields" in d.proc.output(), 10,
               "the dispatcher to refuse the row")
    assert "deliveries to it stop until it is fixed" in d.proc.output()
    produce(broker.bootstrap, [full_event()])
    wait_read(d, 1)
    assert receiver.posts() == [], "nothing is sent to a row that cannot be read"
    sql(db_url, "UPDATE hookbridge.subscriptions SET options = options || %s::jsonb WHERE id=%s",
        json.dumps({"fields": ["actor"]}), sub)
    wait_until(lambda: d.proc.output().count("subscription changed: active, verified") >= 2, 10,
               "the fixed row to be loaded")
    produce(broker.bootstrap, [full_event()])
    wait_until(lambda: receiver.posts(), 30, "the delivery")
    req = receiver.posts()[0]
    assert IP not in req["body"]
    assert sorted(json.loads(req["body"])["data"]["events"][0]) == \
        ["actor", "eventType", "published", "uuid"]


# --- timeout_ms -------------------------------------------------------------------


def test_timeout_ms_bounds_each_request(db_url, broker, procs, workdir):
    """An endpoint slower than the subscription's timeout_ms (500 ms here; the
    service default is 10 s): the attempt is cut off at 500 ms and the
    delivery log says "timeout after 500 ms"."""
    from hbtest.endpoints import ChallengeAnswering, serve

    seen = []

    class Slow(ChallengeAnswering):
        def do_POST(self):
            seen.append(time.monotonic())
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            time.sleep(2.5)
            try:
                self.answer()
            except OSError:
                pass  # the client gave up long ago

    srv = serve(Slow)
    srv.daemon_threads = True
    try:
        d = Dispatcher(procs, db_url, broker.bootstrap)
        d.wait_ready()
        sub = register(db_url, srv.url, ["user.session.start"], {"timeout_ms": 500})
        verify_and_activate(db_url, sub)
        produce(broker.bootstrap, [full_event()])
        row = wait_until(
            lambda: sql(db_url, "SELECT a.outcome, a.error, a.duration_ms, a.http_status "
                        "FROM hookbridge.delivery_attempts a "
                        "JOIN hookbridge.deliveries d USING (delivery_id) "
                        "WHERE d.subscription_id=%s ORDER BY a.id LIMIT 1", sub) or None,
            30, "the attempt in the delivery log")[0]
        outcome, error, duration_ms, status = row
        assert seen, "the endpoint never got the request"
        assert error == "timeout after 500 ms"
        assert status is None
        assert outcome in ("retry", "failed")  # retried once the retrier takes over
        assert 400 <= duration_ms < 2000 * SLOW, duration_ms
        last = sql(db_url, "SELECT last_error FROM hookbridge.deliveries "
                   "WHERE subscription_id=%s", sub)[0][0]
        assert last == "timeout after 500 ms"
    finally:
        srv.shutdown()
        srv.server_close()


# --- validation ---------------------------------------------------------------------

MANY = {f"X-H{i:02d}": "v" for i in range(21)}
BIG = {"X-Big": "v" * 8200}

INVALID = [
    # fields: HB017
    ({"fields": []}, "HB017", "non-empty array"),
    ({"fields": "actor"}, "HB017", "non-empty array"),
    ({"fields": {"actor": True}}, "HB017", "non-empty array"),
    ({"fields": [1]}, "HB017", "only strings"),
    ({"fields": ["actor", None]}, "HB017", "only strings"),
    ({"fields": ["ipAddress"]}, "HB017", 'unknown event field "ipAddress"'),
    ({"fields": ["eventtype"]}, "HB017", 'unknown event field "eventtype"'),
    ({"fields": ["client.ipAddress"]}, "HB017", "unknown event field"),
    ({"fields": ["actor", "target", "actor"]}, "HB017", '"actor" is listed twice'),
    # headers: HB016
    ({"headers": ["X-Team", "iam"]}, "HB016", "JSON object"),
    ({"headers": "X-Team: iam"}, "HB016", "JSON object"),
    ({"headers": {"Bad Name": "x"}}, "HB016", "not an HTTP header name"),
    ({"headers": {"X-Colon:": "x"}}, "HB016", "not an HTTP header name"),
    ({"headers": {"": "x"}}, "HB016", "not an HTTP header name"),
    ({"headers": {"X-" + "a" * 300: "x"}}, "HB016", "not an HTTP header name"),
    ({"headers": {"Content-Type": "text/plain"}}, "HB016", "sets itself"),
    ({"headers": {"content-length": "1"}}, "HB016", "sets itself"),
    ({"headers": {"HOST": "evil.example"}}, "HB016", "sets itself"),
    ({"headers": {"User-Agent": "me"}}, "HB016", "sets itself"),
    ({"headers": {"Transfer-Encoding": "chunked"}}, "HB016", "sets itself"),
    ({"headers": {"Connection": "close"}}, "HB016", "sets itself"),
    ({"headers": {"webhook-id": "x"}}, "HB016", "sets itself"),
    ({"headers": {"Webhook-Timestamp": "1"}}, "HB016", "sets itself"),
    ({"headers": {"webhook-signature": "v1,x"}}, "HB016", "sets itself"),
    ({"headers": {"Webhook-Anything": "x"}}, "HB016", "sets itself"),
    ({"headers": {"X-Okta-Verification-Challenge": "x"}}, "HB016", "sets itself"),
    ({"headers": {"Expect": "100-continue"}}, "HB016", "sets itself"),
    ({"headers": {"authorization": "Bearer x"}}, "HB016", "auth_header and auth_value"),
    ({"headers": {"Proxy-Authorization": "Basic x"}}, "HB016", "auth_header and auth_value"),
    ({"headers": {"Cookie": "a=b"}}, "HB016", "auth_header and auth_value"),
    ({"headers": {"X-Team": "a", "x-team": "b"}}, "HB016", "given twice"),
    ({"headers": {"X-Team": 1}}, "HB016", "must be a string"),
    ({"headers": {"X-Team": None}}, "HB016", "must be a string"),
    ({"headers": {"X-Team": ["iam"]}}, "HB016", "must be a string"),
    ({"headers": {"X-Team": "a\r\nX-Evil: 1"}}, "HB016", "printable ASCII"),
    ({"headers": {"X-Team": "a\nb"}}, "HB016", "printable ASCII"),
    ({"headers": {"X-Team": "a\x07b"}}, "HB016", "printable ASCII"),
    ({"headers": {"X-Team": "Z\u00fcrich"}}, "HB016", "printable ASCII"),
    ({"headers": {"X-Team": ""}}, "HB016", "not empty"),
    ({"headers": {"X-Team": " iam"}}, "HB016", "whitespace"),
    ({"headers": {"X-Team": "iam\t"}}, "HB016", "whitespace"),
    ({"headers": MANY}, "HB016", "at most 20"),
    ({"headers": BIG}, "HB016", "at most 8192"),
    # timeout_ms: HB006 (bounds kept from 0001: 100..60000)
    ({"timeout_ms": 99}, "HB006", "timeout_ms"),
    ({"timeout_ms": 60001}, "HB006", "timeout_ms"),
    ({"timeout_ms": 1500.5}, "HB006", "timeout_ms"),
    ({"timeout_ms": "1000"}, "HB006", "timeout_ms"),
    # unknown keys: HB005, the hint lists the known ones
    ({"header": {"X-Team": "iam"}}, "HB005", 'unknown option "header"'),
    ({"field": ["actor"]}, "HB005", 'unknown option "field"'),
]


@pytest.mark.sql_only
@pytest.mark.parametrize("options,state,message", INVALID,
                         ids=[f"{i}-{list(o)[0]}" for i, (o, _, _) in enumerate(INVALID)])
def test_register_refuses_bad_payload_options(db_url, options, state, message):
    before = sql(db_url, "SELECT count(*) FROM hookbridge.subscriptions")[0][0]
    opts = dict(options)
    opts.update({"auth_header": AUTH[0], "auth_value": AUTH[1]})
    code, text = sqlstate(db_url, "SELECT hookbridge.register('p', 'https://h.example.com/x', "
                          "ARRAY['user.session.start'], %s::jsonb)", json.dumps(opts))
    assert code == state, text
    assert message in text, text
    # Header values are not echoed back (they would land in the server log).
    headers = options.get("headers")
    for v in headers.values() if isinstance(headers, dict) else ():
        if isinstance(v, str) and len(v) > 3:
            assert v not in text
    if state == "HB005":
        assert "fields, headers, filter" in text  # the HINT
    # Nothing half-applied.
    assert sql(db_url, "SELECT count(*) FROM hookbridge.subscriptions")[0][0] == before
    assert sql(db_url, "SELECT count(*) FROM hookbridge.subscription_secrets")[0][0] == before


@pytest.mark.sql_only
def test_header_that_is_the_auth_header_is_refused(db_url):
    code, text = sqlstate(db_url, "SELECT hookbridge.register('p', 'https://h.example.com/x', "
                          "ARRAY['user.session.start'], %s::jsonb)",
                          json.dumps({"auth_header": "X-Api-Key", "auth_value": "k",
                                      "headers": {"x-api-key": "other"}}))
    assert code == "HB016" and "auth_header" in text
    # auth_header itself may not name a reserved header either (HB006, as before).
    for name in ("webhook-id", "X-Okta-Verification-Challenge", "Content-Type"):
        code, text = sqlstate(db_url, "SELECT hookbridge.register('p', "
                              "'https://h.example.com/x', ARRAY['user.session.start'], "
                              "%s::jsonb)", json.dumps({"auth_header": name, "auth_value": "k"}))
        assert code == "HB006", (name, text)


@pytest.mark.sql_only
def test_valid_payload_options_are_stored(db_url):
    headers = {f"X-H{i:02d}": "v" for i in range(20)}  # exactly at the bound
    sub = register(db_url, "https://h.example.com/x", ["user.session.start"],
                   {"format": "event", "timeout_ms": 100, "fields": ["debugContext", "uuid"],
                    "headers": headers})
    opts = sql(db_url, "SELECT options FROM hookbridge.subscriptions WHERE id=%s", sub)[0][0]
    assert opts == {"format": "event", "timeout_ms": 100, "fields": ["debugContext", "uuid"],
                    "headers": headers}
    # 8192 bytes of names and values together is still fine.
    name = "X-Big"
    sub = register(db_url, "https://h.example.com/y", ["user.session.start"],
                   {"headers": {name: "v" * (8192 - len(name))}, "timeout_ms": 60000})
    assert sql(db_url, "SELECT options->'timeout_ms' FROM hookbridge.subscriptions "
               "WHERE id=%s", sub)[0][0] == 60000


@pytest.mark.sql_only
def test_header_bounds_follow_the_limits_table(db_url):
    """max_headers and max_header_bytes in hookbridge.limits apply at once."""
    sql(db_url, "UPDATE hookbridge.limits SET value = 2 WHERE name = 'max_headers'")
    sql(db_url, "UPDATE hookbridge.limits SET value = 20 WHERE name = 'max_header_bytes'")
    code, text = sqlstate(db_url, "SELECT hookbridge._check_options(%s::jsonb)",
                          json.dumps({"headers": {"X-A": "1", "X-B": "2", "X-C": "3"}}))
    assert code == "HB016" and "at most 2" in text
    code, text = sqlstate(db_url, "SELECT hookbridge._check_options(%s::jsonb)",
                          json.dumps({"headers": {"X-Abcdefgh": "0123456789a"}}))
    assert code == "HB016" and "at most 20" in text
    assert sql(db_url, "SELECT hookbridge._check_options(%s::jsonb)",
               json.dumps({"headers": {"X-A": "1", "X-B": "2"}}))[0][0]


@pytest.mark.sql_only
def test_filter_is_checked_by_check_filter_and_stored(db_url):
    """options.filter goes through hookbridge.check_filter (migration 0002)
    when installed. Without it, a stand-in that refuses non-objects with
    HB013 shows the call; the filter is stored as given."""
    real = sql(db_url, "SELECT to_regprocedure('hookbridge.check_filter(jsonb)') "
               "IS NOT NULL")[0][0]
    if not real:
        sql(db_url, "CREATE FUNCTION hookbridge.check_filter(f jsonb) RETURNS void "
            "LANGUAGE plpgsql AS $$ BEGIN IF jsonb_typeof(f) <> 'object' THEN "
            "RAISE EXCEPTION 'filter must be an object' USING ERRCODE = 'HB013'; END IF; END $$")
    before = sql(db_url, "SELECT count(*) FROM hookbridge.subscriptions")[0][0]
    code, text = sqlstate(db_url, "SELECT hookbridge.register('p', 'https://h.example.com/x', "
                          "ARRAY['user.session.start'], %s::jsonb)", json.dumps({"filter": 42}))
    assert code == "HB013", text
    assert sql(db_url, "SELECT count(*) FROM hookbridge.subscriptions")[0][0] == before
    if not real:
        f = {"outcome.result": "SUCCESS"}
        sub = register(db_url, "https://h.example.com/x", ["user.session.start"], {"filter": f})
        assert sql(db_url, "SELECT options->'filter' FROM hookbridge.subscriptions "
                   "WHERE id=%s", sub)[0][0] == f


@pytest.mark.sql_only
def test_event_fields_match_the_schema(db_url):
    """hookbridge.event_fields() (what options.fields may name) is exactly the
    top-level fields of schema/identity_event.avsc, in order."""
    schema = json.loads(SCHEMA.read_text())
    want = [f["name"] for f in schema["fields"]]
    assert sql(db_url, "SELECT hookbridge.event_fields()")[0][0] == want
