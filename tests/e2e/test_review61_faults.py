"""Review 61: subscription previews (hookbridge.preview(), feature 60) as
operators and hostile endpoints use them.

On 16b8028 (main when this review began) each test here fails: preview()'s
upkeep removed pending previews beyond a subscription's 20 newest, so a loop
of previews lost all but the last 20 (their ids named no row: not sent
when no dispatcher had taken them yet, their outcome dropped when one had);
and a dispatcher sent every preview it was told of at once, so a loop of
them to one endpoint filled its host's queue: the previews beyond
max_queue_wait were not sent (left for their 75 s lease), and the real
deliveries to that endpoint were put on the delay tier as "endpoint slow";
and an answer that is not UTF-8 could not be recorded (a text column), so
the preview stayed pending and was sent again at each lease's end."""
import json

import psycopg2
import pytest

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql


def service_sql(db_url, query, *args):
    """A statement as the dispatcher runs it (role hookbridge_service)."""
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SET ROLE hookbridge_service")
        cur.execute(query, args)
        return cur.fetchall()


@pytest.mark.sql_only
def test_a_loop_of_previews_keeps_every_pending_one_until_it_is_sent(db_url):
    """docs/sql.md, preview: each call keeps the subscription's 20 newest
    previews and every one still pending. An operator's loop asks for 30
    while no dispatcher runs: all 30 wait for one (each id names its row),
    and once they are sent the next call trims the finished ones to 20."""
    sub = sql(db_url, "SELECT hookbridge.register('loop', 'https://example.com/h', %s)",
              ["user.session.start"])[0][0]
    ids = [sql(db_url, "SELECT hookbridge.preview(%s)", sub)[0][0] for _ in range(30)]
    rows = sql(db_url, "SELECT id::text, status FROM hookbridge.previews"
               " WHERE subscription_id = %s", sub)
    assert sorted(rows) == sorted((i, "pending") for i in ids)
    for i in ids:  # a dispatcher sends them
        claim = service_sql(db_url, "SELECT claim FROM hookbridge.claim_preview(%s)", i)[0][0]
        assert service_sql(db_url, "SELECT hookbridge.record_preview(%s, %s, 204, NULL, NULL,"
                           " 3, 'application/json', '{}')", i, claim) == [(True,)]
    last = sql(db_url, "SELECT hookbridge.preview(%s)", sub)[0][0]
    kept = sql(db_url, "SELECT id::text FROM hookbridge.previews WHERE subscription_id = %s"
               " ORDER BY requested_at", sub)
    assert [k for (k,) in kept] == ids[-19:] + [last]


def test_a_loop_of_previews_to_an_endpoint_leaves_its_deliveries_their_connections(
        db_url, broker, procs, workdir):
    """docs/sql.md, preview: a dispatcher sends at most a quarter of
    HOOKBRIDGE_MAX_HOST_CONNECTIONS previews at once (at least one), the
    others waiting their turn. An operator previews three subscriptions of
    one slow endpoint 24 times, then an event comes: its deliveries go at
    once (none deferred as "endpoint slow"), and every preview arrives once,
    none "not sent"."""
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                        delay_ms=200)
    d = Dispatcher(procs, db_url, broker.bootstrap,
                   extra_env={"HOOKBRIDGE_MAX_HOST_CONNECTIONS": "2",
                              "HOOKBRIDGE_MAX_QUEUE_WAIT": "1s"})
    d.wait_ready()
    subs = [register_verified(db_url, receiver.url, ["user.session.start"]) for _ in range(3)]
    with psycopg2.connect(db_url) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            for i in range(24):
                cur.execute("SELECT hookbridge.preview(%s)", (subs[i % 3],))
    ev = event("user.session.start")
    produce(broker.bootstrap, [ev])
    wait_until(lambda: len([1 for _, e in receiver.events() if e.get("uuid") == ev["uuid"]]) == 3,
               6 * SLOW, "the event's three deliveries")
    wait_until(lambda: sql(db_url, "SELECT status, count(*) FROM hookbridge.deliveries"
                           " GROUP BY 1") == [("delivered", 3)], 3 * SLOW,
               "the delivery log to say the three were delivered at once")
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.previews"
                           " WHERE status = 'delivered'") == [(24,)], 15 * SLOW,
               "every preview to be delivered")
    ids = [p["headers"]["webhook-id"] for p in receiver.posts()]
    previews = [i for (i,) in sql(db_url, "SELECT id::text FROM hookbridge.previews")]
    assert sorted(i for i in ids if i in previews) == sorted(previews)
    assert "preview not sent" not in d.proc.output()


class Garbled(ChallengeAnswering):
    """Answers each POST 200 with bytes that are not UTF-8 around the
    Authorization header it got (an endpoint echoing its request)."""
    ids = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        Garbled.ids.append(self.headers["webhook-id"])
        body = b"\xff\xfe<" + self.headers["Authorization"].encode() + b">\x80"
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_an_answer_that_is_not_utf8_is_recorded_scrubbed_and_redacted(
        db_url, broker, procs, workdir):
    """docs/sql.md, preview: the start of the response is kept as the
    delivery log keeps it: bytes that are not UTF-8 become '?', the
    subscription's auth value "[redacted]". The preview is recorded
    delivered at once and sent once (it stayed pending, the database
    refusing the text, and was sent again at each lease's end)."""
    srv = serve(Garbled)
    try:
        d = Dispatcher(procs, db_url, broker.bootstrap)
        d.wait_ready()
        sub = sql(db_url, "SELECT hookbridge.register('garbled', %s, %s, %s::jsonb)", srv.url,
                  ["user.session.start"], json.dumps({"auth_header": "Authorization",
                                                       "auth_value": AUTH_VALUE,
                                                       "secret": SECRET}))[0][0]
        preview = sql(db_url, "SELECT hookbridge.preview(%s)", sub)[0][0]
        row = wait_until(lambda: (r := sql(db_url, "SELECT status, http_status, response"
                                           " FROM hookbridge.previews WHERE id = %s",
                                           preview)[0])[0] != "pending" and r, 8 * SLOW,
                         "the preview's outcome")
        assert row == ("delivered", 200, "??<[redacted]>?")
        assert Garbled.ids == [preview]
        out = d.proc.output()
        assert "cannot record preview" not in out and AUTH_VALUE not in out
    finally:
        srv.shutdown()
