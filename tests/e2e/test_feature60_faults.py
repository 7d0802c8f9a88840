"""Feature 60: preview a subscription (Okta's event hook "Preview", GitHub's
"ping", Stripe's "send test webhook"): hookbridge.preview(id, event_type)
sends one sample event, shaped and signed as the subscription's deliveries,
to its endpoint once, and hookbridge.previews says what it answered.

On main (15a7b0a) there is no hookbridge.preview(). With this branch's sql/
and main's binaries, the SQL-only test passes and the three that run a
dispatcher fail: main's dispatcher does not take previews, so they wait in
vain for the preview to reach the endpoint (or for its outcome)."""
import json
import threading
import time

import psycopg2
import pytest

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from hbtest.tcpproxy import TcpProxy
from hbtest.webhooks import signature_valid
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql

OUTCOME = ("SELECT status, http_status, error, response, content_type, body, sent_at IS NOT NULL,"
           " duration_ms IS NOT NULL FROM hookbridge.previews WHERE id = %s")


def outcome(db_url, preview, timeout=15):
    """The preview's row once it is no longer pending."""
    return wait_until(lambda: (row := sql(db_url, OUTCOME, preview)[0])[0] != "pending" and row,
                      timeout * SLOW, "the preview's outcome")


def refused(db_url, query, *args):
    """The SQLSTATE and message of a statement that must fail."""
    with pytest.raises(psycopg2.Error) as e:
        sql(db_url, query, *args)
    return e.value.pgcode, e.value.pgerror.splitlines()[0]


def test_a_preview_of_an_inactive_subscription_arrives_signed_in_its_shape(
        db_url, broker, procs, workdir):
    """docs/sql.md, preview: one sample event of the type, rendered as a
    delivery to the subscription would be (its format, field selection and
    batch shape), signed with its secret, sent whatever its status; the
    outcome, with the body sent, is a row of hookbridge.previews. An
    operator deactivated the subscription and previews it before turning
    it on again."""
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sub = register_verified(db_url, receiver.url, ["user.session.start", "user.lifecycle.create"],
                            {"format": "cloudevents", "batch_max": 3, "fields": ["actor"]})
    sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
    preview = sql(db_url, "SELECT hookbridge.preview(%s, 'user.lifecycle.create')", sub)[0][0]

    status, http_status, error, _, ctype, body, sent, timed = outcome(db_url, preview)
    assert (status, http_status, error, sent, timed) == ("delivered", 204, None, True, True)
    assert ctype == "application/cloudevents-batch+json"
    posts = receiver.posts()
    assert len(posts) == 1
    p = posts[0]
    assert p["headers"]["webhook-id"] == preview
    assert signature_valid(SECRET, p) and p["verified"] is True
    assert p["headers"]["authorization"] == AUTH_VALUE
    assert p["headers"]["content-type"] == ctype and p["body"] == body
    events = json.loads(body)
    assert isinstance(events, list) and len(events) == 1  # batch_max 3: an array, of one
    ce = events[0]
    assert ce["type"] == "user.lifecycle.create" and ce["specversion"] == "1.0"
    assert set(ce["data"]) == {"uuid", "published", "eventType", "actor"}
    assert ce["data"]["actor"]["alternateId"].endswith("@example.com")
    # the subscription stays as it was, and nothing went to the delivery log
    assert sql(db_url, "SELECT status FROM hookbridge.subscriptions WHERE id = %s",
               sub) == [("inactive",)]
    assert sql(db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE subscription_id = %s",
               sub) == [(0,)]
    # NULL: its first type by name
    again = sql(db_url, "SELECT hookbridge.preview(%s)", sub)[0][0]
    assert outcome(db_url, again)[0] == "delivered"
    assert sql(db_url, "SELECT event_type FROM hookbridge.previews WHERE id = %s",
               again) == [("user.lifecycle.create",)]


@pytest.mark.sql_only
def test_a_preview_of_an_unknown_type_another_type_or_a_deregistered_subscription_says_why(
        db_url):
    """docs/sql.md, Errors: HB003 a type not in the catalogue, HB029 one the
    subscription does not take, HB010 a deregistered subscription, HB015 a
    NULL id; nothing is asked for."""
    sub = sql(db_url, "SELECT hookbridge.register('p', 'https://example.com/h', %s)",
              ["user.session.start"])[0][0]
    code, msg = refused(db_url, "SELECT hookbridge.preview(%s, 'user.session.begin')", sub)
    assert (code, msg) == ("HB003", 'ERROR:  unknown event type "user.session.begin"')
    code, msg = refused(db_url, "SELECT hookbridge.preview(%s, 'user.lifecycle.create')", sub)
    assert code == "HB029" and 'does not take event type "user.lifecycle.create"' in msg
    assert refused(db_url, "SELECT hookbridge.preview(NULL)")[0] == "HB015"
    sql(db_url, "SELECT hookbridge.deregister(%s)", sub)
    code, msg = refused(db_url, "SELECT hookbridge.preview(%s)", sub)
    assert code == "HB010" and "deregistered" in msg
    assert sql(db_url, "SELECT count(*) FROM hookbridge.previews WHERE subscription_id = %s",
               sub) == [(0,)]


class SlowRefusal(ChallengeAnswering):
    """Answers every POST with 500 and a body, after 1.5 s."""
    count = 0
    lock = threading.Lock()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        with SlowRefusal.lock:
            SlowRefusal.count += 1
        time.sleep(1.5)
        body = b'{"error": "down for maintenance"}'
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_refused_preview_is_recorded_once_and_other_deliveries_go_on(
        db_url, broker, procs, workdir):
    """A preview asked for while no dispatcher runs is sent when one starts;
    an endpoint that answers slowly with 500 gets it once (not retried),
    the outcome says so with the answer's start, and meanwhile another
    subscription's events are delivered. A preview of a subscription
    deregistered before a dispatcher took it is cancelled, not sent."""
    srv = serve(SlowRefusal)
    try:
        failing = sql(db_url, "SELECT hookbridge.register('down', %s, %s)", srv.url,
                      ["user.session.start"])[0][0]  # unverified, inactive: previewed all the same
        gone = sql(db_url, "SELECT hookbridge.register('gone', %s, %s)", srv.url,
                   ["user.session.start"])[0][0]
        preview = sql(db_url, "SELECT hookbridge.preview(%s)", failing)[0][0]
        cancelled = sql(db_url, "SELECT hookbridge.preview(%s)", gone)[0][0]
        sql(db_url, "SELECT hookbridge.deregister(%s)", gone)

        receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
        d = Dispatcher(procs, db_url, broker.bootstrap)
        d.wait_ready()
        wait_until(lambda: SlowRefusal.count, 10 * SLOW, "the preview to reach the endpoint")
        register_verified(db_url, receiver.url, ["user.session.start"])
        ev = event("user.session.start")
        produce(broker.bootstrap, [ev])
        wait_until(lambda: receiver.posts(), 15 * SLOW, "the other subscription's event")

        status, http_status, error, response, *_ = outcome(db_url, preview)
        assert (status, http_status, error) == ("failed", 500, "HTTP 500")
        assert response == '{"error": "down for maintenance"}'
        assert sql(db_url, "SELECT status, error FROM hookbridge.previews WHERE id = %s",
                   cancelled) == [("cancelled", "not sent: the subscription was deregistered")]
        time.sleep(1.5)
        assert SlowRefusal.count == 1
        assert sql(db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE subscription_id = %s",
                   failing) == [(0,)]
        assert [e["uuid"] for _, e in receiver.events()] == [ev["uuid"]]
    finally:
        srv.shutdown()


class HeldFirst(ChallengeAnswering):
    """Holds the first POST until `release` is set, then answers every POST
    204; records each POST's webhook-id."""
    release = threading.Event()
    ids = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        HeldFirst.ids.append(self.headers["webhook-id"])
        if len(HeldFirst.ids) == 1:
            HeldFirst.release.wait(30)
        self.answer(204)


def test_a_preview_whose_outcome_the_database_missed_is_sent_again_after_its_lease(
        db_url, pg_cluster, broker, procs, workdir):
    """docs/sql.md, preview: a dispatcher that cannot record the outcome (the
    database unreachable at that moment) leaves the preview pending, and it
    is sent again once its lease has expired: the endpoint may get it twice,
    with the same webhook-id. The dispatcher neither crashes nor stops
    delivering. (The lease, 75 s by default, is ended by hand here.)"""
    srv = serve(HeldFirst)
    proxy = TcpProxy(pg_cluster.port)
    proxy.start()
    try:
        sub = sql(db_url, "SELECT hookbridge.register('held', %s, %s)", srv.url,
                  ["user.session.start"])[0][0]
        d = Dispatcher(procs, db_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/"),
                       broker.bootstrap)
        d.wait_ready()
        preview = sql(db_url, "SELECT hookbridge.preview(%s)", sub)[0][0]
        wait_until(lambda: HeldFirst.ids, 10 * SLOW, "the preview to reach the endpoint")
        proxy.cut()
        HeldFirst.release.set()  # answered 204 while the database is away
        wait_until(lambda: "cannot record preview" in d.proc.output(), 10 * SLOW,
                   "the dispatcher to say it could not record the outcome")
        assert sql(db_url, "SELECT status FROM hookbridge.previews WHERE id = %s",
                   preview) == [("pending",)]
        proxy.start()
        d.wait_ready()
        sql(db_url, "UPDATE hookbridge.previews SET claimed_until = now() WHERE id = %s", preview)
        status, http_status, *_ = outcome(db_url, preview, 20)
        assert (status, http_status) == ("delivered", 204)
        assert HeldFirst.ids == [preview, preview]
        assert d.proc.alive()
    finally:
        HeldFirst.release.set()
        proxy.close()
        srv.shutdown()
