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


# ------------------------------------------------------------- verification

def vclaim(db_url, sub, lease="1 minute"):
    return sql(db_url, "SELECT hookbridge.claim_verification(%s, %s::interval)", sub, lease)[0][0]


def state(db_url, sub):
    return sql(db_url, "SELECT verification, verification_requested_at IS NOT NULL, "
               "verification_claimed_until IS NOT NULL FROM hookbridge.subscriptions "
               "WHERE id = %s", sub)[0]


def request(db_url, sub):
    return sql(db_url, "SELECT verification_request FROM hookbridge.subscription_overview "
               "WHERE id = %s", sub)[0][0]


def test_the_overview_shows_a_requested_and_a_running_verification(db_url):
    """subscription_overview.verification_request: NULL (nothing asked),
    'pending' (asked, no dispatcher on it, or its lease ran out), 'running'
    (a dispatcher holds it: verification_claimed_until, migration 0006)."""
    sub = registered(db_url)
    assert request(db_url, sub) is None
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert request(db_url, sub) == "pending"
    assert vclaim(db_url, sub) == sub
    assert request(db_url, sub) == "running"
    # The dispatcher died: once its lease is over the request is pending again.
    sql(db_url, "UPDATE hookbridge.subscriptions SET verification_claimed_until = "
        "now() - interval '1 second' WHERE id = %s", sub)
    assert request(db_url, sub) == "pending"
    assert vclaim(db_url, sub) == sub
    sql(db_url, "SELECT hookbridge.record_verification(%s, true, NULL, %s)", sub, URL)
    assert request(db_url, sub) is None
    assert sql(db_url, "SELECT verification, verification_requested_at FROM "
               "hookbridge.subscription_overview WHERE id = %s", sub) == [("verified", None)]


@pytest.mark.parametrize("form", ["url", "old"])
@pytest.mark.parametrize("first_ok", [False, True])
def test_verify_while_a_challenge_runs_is_not_ended_by_that_challenges_result(
        db_url, first_ok, form):
    """docs/sql.md, verify: "Calling verify while a challenge runs asks for
    another one at once." The running challenge was sent before the call (the
    endpoint may have been fixed since): its result is recorded, but the
    request made after its claim stays, for a dispatcher to claim and
    challenge again. This is the claim-less form (a dispatcher of the
    previous release, or a hand call), also without a URL; this release's
    dispatcher records under its claim, and such an out-of-date result is not
    recorded at all (test_a_result_whose_claim_no_longer_holds_is_not_recorded)."""
    sub = registered(db_url)
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert vclaim(db_url, sub) == sub          # challenge 1 is sent
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)  # asked again meanwhile
    record = ("SELECT hookbridge.record_verification(%s, %s, %s, %s)" if form == "url" else
              "SELECT hookbridge.record_verification(%s, %s, %s)")
    args = [sub, first_ok, None if first_ok else "HTTP 503"] + ([URL] if form == "url" else [])
    sql(db_url, record, *args)                 # challenge 1's result
    assert state(db_url, sub) == ("verified" if first_ok else "failed", True, False)
    assert request(db_url, sub) == "pending"
    assert vclaim(db_url, sub) == sub          # challenge 2
    args = [sub, True, None] + ([URL] if form == "url" else [])
    sql(db_url, record, *args)
    assert state(db_url, sub) == ("verified", False, False)
    assert vclaim(db_url, sub, "1 millisecond") is None


def vclaim_until(db_url, sub, lease="1 minute"):
    """A dispatcher's claim: its name (the lease's end), or None."""
    return sql(db_url, "SELECT hookbridge.claim_verification_until(%s, %s::interval)",
               sub, lease)[0][0]


def record_under(db_url, sub, ok, claim, url=URL):
    """A dispatcher's record: True when recorded, False when out of date."""
    return sql(db_url, "SELECT hookbridge.record_verification(%s, %s, %s, %s, %s)",
               sub, ok, None if ok else "HTTP 503", url, claim)[0][0]


@pytest.mark.parametrize("newer", ["asked", "claimed", "lease expired and claimed"])
def test_a_result_whose_claim_no_longer_holds_is_not_recorded(db_url, newer):
    """The dispatcher records under its claim (claim_verification_until). Once
    verify() has asked again, or the lease ran out and another dispatcher took
    the request, that result is out of date: record_verification returns
    false and changes nothing, so a late failure cannot deactivate a
    subscription whose newer challenge passed. The newer claim's result is
    recorded and ends the request."""
    sub = registered(db_url)
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    first = vclaim_until(db_url, sub)
    assert first is not None and vclaim_until(db_url, sub) is None  # held
    if newer == "lease expired and claimed":
        sql(db_url, "UPDATE hookbridge.subscriptions SET verification_claimed_until = "
            "now() - interval '1 second' WHERE id = %s", sub)
        first = sql(db_url, "SELECT verification_claimed_until FROM hookbridge.subscriptions "
                    "WHERE id = %s", sub)[0][0]
    else:
        sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    second = vclaim_until(db_url, sub) if newer != "asked" else None
    assert record_under(db_url, sub, False, first) is False
    assert state(db_url, sub) == ("unverified", True, newer != "asked")
    if second is None:
        second = vclaim_until(db_url, sub)
    assert second is not None and second != first
    assert record_under(db_url, sub, True, second) is True
    assert state(db_url, sub) == ("verified", False, False)
    # and a claim that holds ends its request with a failure, as before
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    third = vclaim_until(db_url, sub)
    assert record_under(db_url, sub, False, third) is True
    assert state(db_url, sub) == ("failed", False, False)
    # an outcome for a URL the subscription no longer has: not recorded either
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert record_under(db_url, sub, True, vclaim_until(db_url, sub),
                        url="https://old.example.com/hook") is False
    assert state(db_url, sub)[0] == "failed"


def test_a_result_ends_the_request_it_was_claimed_for(db_url):
    """Without a new request meanwhile, a result ends the request (as
    before); also when the new request was claimed already: that second
    challenge is running and records its own result."""
    sub = registered(db_url)
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert vclaim(db_url, sub) == sub
    sql(db_url, "SELECT hookbridge.record_verification(%s, false, 'HTTP 404', %s)", sub, URL)
    assert state(db_url, sub) == ("failed", False, False)
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert vclaim(db_url, sub) == sub
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert vclaim(db_url, sub) == sub          # claimed by a second dispatcher at once
    sql(db_url, "SELECT hookbridge.record_verification(%s, false, 'HTTP 404', %s)", sub, URL)
    assert state(db_url, sub) == ("failed", False, False)
    sql(db_url, "SELECT hookbridge.record_verification(%s, true, NULL, %s)", sub, URL)
    assert state(db_url, sub) == ("verified", False, False)


# ------------------------------------------------------------------ sealing

def in_a_thread(conn, who, query, args, errors):
    """Runs query on conn and commits, in a thread (started, returned);
    a database error goes to errors as "who: error"."""
    import threading

    def run():
        try:
            with conn.cursor() as c:
                c.execute(query, args)
            conn.commit()
        except psycopg2.Error as e:
            errors.append(f"{who}: {e}")
    t = threading.Thread(target=run)
    t.start()
    return t

def test_deregister_while_a_service_seals_the_secret_waits_instead_of_deadlocking(db_url):
    """A service seals a new subscription's signing secret (secrets_to_seal,
    then seal_store, in one transaction) while the operator deregisters the
    subscription. Both finish, one after the other. Before, the sealer locked
    the inbox row and then the secret, deregister() the secret and then the
    inbox row, and PostgreSQL aborted one of them with "deadlock detected"
    (seen in CI: a test's register-then-deregister raced the dispatcher)."""
    sub = registered(db_url)
    sealer = psycopg2.connect(db_url)
    operator = psycopg2.connect(db_url)
    errors = []
    try:
        with sealer.cursor() as c:
            c.execute("SELECT inbox_id FROM hookbridge.secrets_to_seal(10) "
                      "WHERE subscription_id = %s", (sub,))
            inbox = [r[0] for r in c.fetchall()]
            assert inbox, "the new subscription's secret is not waiting to be sealed"
            t = in_a_thread(operator, "deregister", "SELECT hookbridge.deregister(%s)", (sub,),
                            errors)
            t.join(0.5)  # the operator's call waits for the sealer
            try:
                for i in inbox:
                    c.execute("SELECT hookbridge.seal_store(%s, '00', '0123456789abcdef')", (i,))
                sealer.commit()
            except psycopg2.Error as e:
                errors.append(f"sealer: {e}")
            t.join(10)
        assert not t.is_alive()
        assert errors == []
        assert sql(db_url, "SELECT deregistered_at IS NOT NULL FROM hookbridge.subscriptions "
                   "WHERE id = %s", sub) == [(True,)]
    finally:
        sealer.close()
        operator.close()


def test_deregister_while_a_service_reseals_under_a_new_key_waits_instead_of_deadlocking(db_url):
    """During a key rotation a service takes the values sealed under the old
    key (sealed_under_other_keys: a signing secret and an auth value) while
    an operator's deregister() has just locked the subscription. The service
    skips that subscription (its values move on a later pass, test_review4_faults);
    both finish. Before, the service locked the secret and then the subscription,
    deregister() the subscription and then the secret: "deadlock detected".
    The operator's side is played step by step (_live's lock, then
    deregister() in the same transaction) to hit that order every time."""
    old = "aaaaaaaaaaaaaaaa"
    sub = registered(db_url)
    sql(db_url, "UPDATE hookbridge.subscription_secrets SET sealed = '\\x00', key_id = %s "
        "WHERE subscription_id = %s", old, sub)
    sql(db_url, "UPDATE hookbridge.subscriptions SET auth_header = 'Authorization', "
        "auth_sealed = '\\x00', auth_key_id = %s WHERE id = %s", old, sub)
    operator = psycopg2.connect(db_url)
    service = psycopg2.connect(db_url)
    errors = []
    try:
        with operator.cursor() as c:
            c.execute("SELECT 1 FROM hookbridge.subscriptions WHERE id = %s FOR UPDATE", (sub,))
            t = in_a_thread(service, "service",
                            "SELECT kind FROM hookbridge.sealed_under_other_keys(%s)", ([old],),
                            errors)
            t.join(0.5)  # the service meets the operator's lock (and skips it)
            try:
                c.execute("SELECT hookbridge.deregister(%s)", (sub,))
                operator.commit()
            except psycopg2.Error as e:
                errors.append(f"deregister: {e}")
            t.join(10)
        assert not t.is_alive()
        assert errors == []
    finally:
        operator.close()
        service.close()


def test_two_operators_changing_different_options_at_once_both_keep_their_change(db_url):
    """sql.md: update_options(id, changes) merges into the stored options
    under the row lock. Alice sets batch_max in a transaction still open while
    Bob sets batch_window_ms; Bob's call waits, and both changes stay (the
    merge in one's own statement, the recipe before, read the options before
    update() locked the row: Bob's call would have written Alice's change
    away)."""
    sub = registered(db_url)
    alice = psycopg2.connect(db_url)
    bob = psycopg2.connect(db_url)
    errors = []
    try:
        with alice.cursor() as c:
            c.execute("SELECT hookbridge.update_options(%s, '{\"batch_max\": 20}')", (sub,))
            t = in_a_thread(bob, "bob", "SELECT hookbridge.update_options(%s, %s::jsonb)",
                            (sub, json.dumps({"batch_window_ms": 500})), errors)
            t.join(0.5)
            assert t.is_alive(), "bob's change did not wait for alice's"
            alice.commit()
            t.join(10)
        assert not t.is_alive() and errors == []
        assert sql(db_url, "SELECT options FROM hookbridge.subscriptions WHERE id = %s",
                   sub) == [({"batch_max": 20, "batch_window_ms": 500},)]
        with pytest.raises(psycopg2.Error, match="changes must be a JSON object"):
            sql(db_url, "SELECT hookbridge.update_options(%s, '[1]')", sub)
    finally:
        alice.close()
        bob.close()
