"""Promises of the documentation that no other test held the code to, end to
end with the real dispatcher and retrier:

- a due retry goes to the subscription's *current* URL, signed with its
  *current* secret (README.md, The retrier; docs/design.md, Signature), after
  the new URL passed its challenge (docs/sql.md, update); one that comes due
  before that, and an event that arrives then, go to neither URL but wait in
  the first tier, and go to the new URL once verified, or are dropped if it
  fails (docs/design.md, Lifecycle);
  a delivery held by its rate limit goes out likewise as its subscription is
  when its turn comes (docs/payloads.md, rate_limit), and so does a replay
  (docs/sql.md, replay);
- a database outage parks the deliveries of a rate-limited subscription in
  the delay tiers, attempts not counted, and they come round once the
  database answers, while a subscription without a limit keeps being served
  (docs/design.md, Rate limits);
- a replay claimed by a retrier that died is taken up again once its lease
  has expired, not before (docs/sql.md, claim_replays);
- a DeliveryRetry that waits for nothing is written with the previous
  release's schema (delivery_retry.v1), and one written with it is read
  (docs/operations.md, Upgrade procedure; docs/schemas.md).

The SQL-only side of these promises is in test_promises_sql.py."""
import json
import signal
import time

import pytest

from hbtest.avro import decode
from hbtest.lifecycle import (ACTIVE, ACTIVE_UNVERIFIED, changes_applied, changes_of, last_change,
                               now_in_state)
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier, produce, topic_records
from hbtest.tcpproxy import TcpProxy
from hbtest.webhooks import signature_valid
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql

NEW_SECRET = "whsec_" + "bmV3LXNpZ25pbmctc2VjcmV0LWZvci1wcm9taXNlcy0wMQ=="


def delivery_rows(db_url, sub):
    """The subscription's deliveries, oldest first. Rows the delivery-log
    writer inserted in one statement share created_at: the one with more
    attempts, the older delivery, comes first."""
    return sql(db_url, "SELECT delivery_id, status, attempts, coalesce(last_error, '') "
               "FROM hookbridge.deliveries WHERE subscription_id = %s "
               "ORDER BY created_at, attempts DESC", sub)


def through(proxy, db_url, pg_port):
    """db_url with the proxy's port instead of PostgreSQL's."""
    return db_url.replace(f":{pg_port}/", f":{proxy.port}/")


def checking(procs, workdir, name="receiver", secret=SECRET, **kw):
    """A receiver that answers 401 unless a request carries the auth header and
    a signature made with `secret`."""
    return Receiver(procs, workdir, name=name, secret=secret,
                    auth=f"Authorization: {AUTH_VALUE}", **kw)


def services(procs, db_url, workdir, schedule, env):
    """A broker with the retry `schedule`'s tiers, and a dispatcher and a
    retrier with `env`, both ready. Returns (broker, dispatcher, retrier)."""
    broker = Broker(procs, workdir, retry_schedule=schedule)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    r.wait_ready()
    return broker, d, r


def failed_first_attempt(procs, db_url, workdir, tier, schedule, env):
    """A dispatcher and a retrier on a `schedule` broker, one subscription
    verified at A (answering 503), the retrier seeing it active, and one
    event's first attempt failed there. Returns (A, the retrier, sub, the
    first POST, the retry's due time, the dispatcher, the broker)."""
    a = Receiver(procs, workdir, name="a", status=503)
    broker, d, r = services(procs, db_url, workdir, schedule, env)
    sub = register_verified(db_url, a.url, ["user.session.start"])
    wait_until(lambda: changes_applied(r, sub, ACTIVE) >= 1, 10, "the retrier to see it active")
    produce(broker.bootstrap, [event("user.session.start")])
    first = wait_until(lambda: a.posts(), 20, "the first attempt at A")[0]
    assert first["status"] == 503
    return a, r, sub, first, first["time_ms"] / 1000 + tier, d, broker


# --------------------------------------------------- retry: current URL, secrets

def test_a_due_retry_goes_to_the_new_url_signed_with_the_new_secret(db_url, procs, workdir):
    """The first attempt fails at A; before the retry is due the URL moves to
    B and the signing secret is replaced (update()). B is challenged and
    verified, and the retrier's attempt goes to B, with the same webhook-id,
    signed with the new secret only; A gets nothing more."""
    tier = 4  # s: room for B's challenge and the retrier taking the change
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": f"{tier}s", "HOOKBRIDGE_RETRY_JITTER": "0"}
    # B checks the signature with the new secret and the auth header (401 otherwise).
    b = checking(procs, workdir, "b", NEW_SECRET)
    a, r, sub, first, due, _, _ = failed_first_attempt(procs, db_url, workdir, tier, f"{tier}s",
                                                       env)

    seen = len(changes_of(r, sub))
    sql(db_url, "SELECT hookbridge.update(%s, url => %s, options => options || %s::jsonb) "
        "FROM hookbridge.subscriptions WHERE id = %s", sub, b.url,
        json.dumps({"secret": NEW_SECRET}), sub)
    wait_until(lambda: sql(db_url, "SELECT verification FROM hookbridge.subscriptions "
                           "WHERE id = %s", sub)[0][0] == "verified", 10 * SLOW,
               "B to pass its challenge")
    # The retrier follows the change (paused, then active again) before the
    # retry is due: otherwise the retry waits a round in the tier, and this
    # test would not check that it went out on time.
    wait_until(lambda: now_in_state(r, sub, ACTIVE, seen), 10 * SLOW,
               "the retrier to see the new URL verified")
    assert time.time() < due, "the change took longer than the retry's delay: raise `tier`"

    post = wait_until(lambda: b.posts(), (tier + 15) * SLOW, "the retry at B")[0]
    assert post["status"] == 204, post  # B verified the new secret's signature
    assert post["headers"]["webhook-id"] == first["headers"]["webhook-id"]
    assert post["body"] == first["body"]
    assert signature_valid(NEW_SECRET, post)
    assert not signature_valid(SECRET, post), "the replaced secret must not sign any more"
    assert len(post["headers"]["webhook-signature"].split(" ")) == 1
    assert post["time_ms"] / 1000 >= due - 0.05, "the retry went out early"
    rows = wait_until(lambda: (rs := delivery_rows(db_url, sub)) and rs[0][1] == "delivered"
                      and rs, 10 * SLOW, "the delivery logged delivered")
    assert [(x[1], x[2]) for x in rows] == [("delivered", 2)]
    assert len(a.posts()) == 1, "the old URL must get nothing after the change"



@pytest.mark.parametrize("outcome", ["verified", "failed"])
def test_deliveries_wait_while_the_new_url_awaits_its_challenge(db_url, procs, workdir, outcome):
    """docs/sql.md, update: until the new URL answers its challenge, nothing
    goes to either URL, and nothing is lost. B holds its challenge's answer;
    meanwhile a retry comes due and a new event arrives: both wait in the
    first tier, their attempts not counted, and the log says why. Once B is
    verified, both go to B (the retry with its webhook-id); A gets nothing
    more. If B refuses its challenge instead, the subscription is deactivated
    and both are dropped (as a deactivation drops pending retries), sent to
    neither URL. (Before this was built, the event was skipped and the retry
    dropped with "subscription not verified".)"""
    import threading
    from hbtest.endpoints import ChallengeAnswering, serve

    release, posts = threading.Event(), []

    class SlowToVerify(ChallengeAnswering):
        def do_GET(self):
            release.wait(60)
            if outcome == "verified":
                super().do_GET()
            else:
                self.send_response(404)  # a refusal (a 5xx would be asked again)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                          "body": body})
            self.answer()

    tier = 3  # s: room for both services to take the change
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": f"{tier}s,{tier}s", "HOOKBRIDGE_RETRY_JITTER": "0",
           "HOOKBRIDGE_VERIFY_TIMEOUT": "60s"}
    b = serve(SlowToVerify)
    try:
        a, r, sub, first, due, d, broker = failed_first_attempt(procs, db_url, workdir, tier,
                                                                f"{tier}s,{tier}s", env)
        sql(db_url, "SELECT hookbridge.update(%s, url => %s)", sub, b.url)
        for svc in (d, r):
            wait_until(lambda: changes_applied(svc, sub, ACTIVE_UNVERIFIED) >= 1, 10 * SLOW,
                       "both services to see the new URL unverified")
        assert time.time() < due, "the change took longer than the retry's delay: raise `tier`"
        later = event("user.session.start")
        produce(broker.bootstrap, [later])
        waiting = "waiting for the subscription's new URL to pass its verification"

        def both_waited():
            rows = delivery_rows(db_url, sub)
            waited = [x for x in rows if x[1] == "retry" and x[3] == waiting]
            # the retry came round at least once, and the new event was parked
            return len(rows) == 2 and len(waited) == 2 and time.time() > due + 1 and rows
        rows = wait_until(both_waited, (2 * tier + 15) * SLOW, "both deliveries waiting")
        assert [x[2] for x in rows] == [1, 0], "an attempt that waited was counted"
        for svc in (d, r):  # counted as what it is, not as a busy endpoint
            assert svc.metric("hookbridge_verification_waits_total") >= 1
            assert svc.metric("hookbridge_endpoint_busy_total") == 0
        assert posts == [] and len(a.posts()) == 1, "something was sent before the challenge"

        release.set()
        want = "delivered" if outcome == "verified" else "dropped"
        rows = wait_until(lambda: (rs := delivery_rows(db_url, sub)) and
                          all(x[1] == want for x in rs) and rs, (2 * tier + 20) * SLOW,
                          f"both deliveries {want}")
        assert len(a.posts()) == 1, "the old URL got something after the change"
        if outcome == "verified":
            assert [x[2] for x in rows] == [2, 1]
            ids = sorted(p["headers"]["webhook-id"] for p in posts)
            assert len(posts) == 2 and first["headers"]["webhook-id"] in ids
            assert any(later["uuid"].encode() in p["body"] for p in posts)
        else:
            assert [x[3] for x in rows] == ["subscription inactive"] * 2
            assert posts == [], "the URL that failed its challenge got a delivery"
    finally:
        release.set()
        b.shutdown()


@pytest.mark.parametrize("change", ["url", "deactivate"])
def test_requests_waiting_for_a_connection_follow_a_change_of_their_subscription(
        db_url, procs, workdir, change):
    """docs/sql.md, update: "the old URL receives nothing after the change";
    deactivate: "stops deliveries". A receives one connection at a time
    (HOOKBRIDGE_MAX_HOST_CONNECTIONS=1) and holds the first POST: two more
    deliveries wait in the dispatcher's host queue for a connection. Then the
    URL moves to B, or the subscription is deactivated. The waiting two leave
    the queue at once (the dispatcher says so): after a URL change they wait
    for B's challenge and reach B; after a deactivation they are dropped. A
    gets the one POST it held and nothing more. (Before, they stayed in the
    queue as the subscription was and went to A once it answered: checked
    with a build without hb_deliveries_rebind_waiting, A got 3 POSTs.)"""
    import threading
    from hbtest.endpoints import ChallengeAnswering, posted_uuids, serve

    release, at_a, at_b = threading.Event(), [], []

    def recorder(posts, hold):
        class Endpoint(ChallengeAnswering):
            def do_POST(self):
                posts.extend(posted_uuids(self))
                if hold:
                    release.wait(60)
                self.answer()
        return serve(Endpoint)

    a, b = recorder(at_a, True), recorder(at_b, False)
    tier = 2
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": f"{tier}s", "HOOKBRIDGE_RETRY_JITTER": "0",
           "HOOKBRIDGE_MAX_HOST_CONNECTIONS": "1", "HOOKBRIDGE_MAX_QUEUE_WAIT": "60s",
           "HOOKBRIDGE_REQUEST_TIMEOUT": "60s"}
    try:
        broker, d, _ = services(procs, db_url, workdir, f"{tier}s", env)
        sub = register_verified(db_url, a.url, ["user.session.start"])
        wait_until(lambda: changes_applied(d, sub, ACTIVE) >= 1, 10, "the dispatcher to see it")
        evs = [event("user.session.start") for _ in range(3)]
        produce(broker.bootstrap, evs)
        wait_until(lambda: at_a, 20 * SLOW, "the first POST at A")
        wait_until(lambda: len(delivery_rows(db_url, sub)) == 0 and
                   d.metric("hookbridge_deliveries_created_total") >= 3, 10 * SLOW,
                   "the other two to wait for a connection")

        if change == "url":
            sql(db_url, "SELECT hookbridge.update(%s, url => %s)", sub, b.url)
        else:
            sql(db_url, "SELECT hookbridge.deactivate(%s)", sub)
        wait_until(lambda: "2 request(s) waiting for a connection follow the change"
                   in d.proc.output(), 10 * SLOW, "the waiting requests to follow the change")
        release.set()  # A answers the POST it held
        want = {"url": ["delivered"] * 3, "deactivate": ["delivered", "dropped", "dropped"]}
        rows = wait_until(lambda: (rs := delivery_rows(db_url, sub)) and
                          sorted(x[1] for x in rs) == want[change] and rs,
                          (3 * tier + 20) * SLOW, "every delivery's outcome")
        time.sleep(0.5 * SLOW)  # anything still meant for A would be on its way
        assert len(at_a) == 1, f"A got {len(at_a)} POSTs after the change"
        if change == "url":
            assert sorted(at_b) == sorted(e["uuid"] for e in evs if e["uuid"] not in at_a)
            assert sorted(x[2] for x in rows) == [1, 1, 1], "an attempt not made was counted"
        else:
            assert at_b == []
            assert sorted(x[3] for x in rows if x[1] == "dropped") == \
                ["subscription inactive"] * 2
    finally:
        release.set()
        a.shutdown()
        b.shutdown()


def test_a_delivery_held_by_the_rate_limit_goes_to_the_new_url_with_the_new_secret(
        db_url, procs, workdir):
    """docs/payloads.md, rate_limit: "A held delivery goes out as its
    subscription is when its turn comes: to the current URL with the current
    secrets". One request every 4 s: the first event goes to A at once, the
    second waits for its turn; meanwhile the URL moves to B (verified at once)
    with a new secret, and the held delivery goes to B, signed with it."""
    turn = 4  # s between requests: per_second 0.25, burst 1
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": "1h", "HOOKBRIDGE_MAX_QUEUE_WAIT": "30s"}
    broker = Broker(procs, workdir, retry_schedule="1h")
    a = checking(procs, workdir, "a")
    b = checking(procs, workdir, "b", NEW_SECRET)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    sub = register_verified(db_url, a.url, ["user.session.start"],
                            {"rate_limit": {"per_second": 1 / turn, "burst": 1}})
    events = [event("user.session.start", user=f"00u{i:010d}") for i in range(2)]
    produce(broker.bootstrap, events)
    first = wait_until(lambda: a.posts(), 20, "the first event at A")[0]
    wait_until(lambda: d.metric("hookbridge_messages_consumed_total") >= 2, 10,
               "the second event read (and held)")
    held_turn = first["time_ms"] / 1000 + turn
    assert first["status"] == 204

    seen = len(changes_of(d, sub))
    sql(db_url, "SELECT hookbridge.update(%s, url => %s, options => options || %s::jsonb) "
        "FROM hookbridge.subscriptions WHERE id = %s", sub, b.url,
        json.dumps({"secret": NEW_SECRET}), sub)
    wait_until(lambda: now_in_state(d, sub, ACTIVE, seen), 10 * SLOW,
               "the dispatcher to have the new URL verified")
    assert time.time() < held_turn - 0.5, "the change took longer than the turn: raise `turn`"

    post = wait_until(lambda: b.posts(), (turn + 15) * SLOW, "the held delivery at B")[0]
    assert post["status"] == 204, post  # B checked the new secret's signature
    assert signature_valid(NEW_SECRET, post) and not signature_valid(SECRET, post)
    assert post["time_ms"] / 1000 >= held_turn - 0.3, "sent before its turn"
    assert {e["uuid"] for _, e in a.events()} | {e["uuid"] for _, e in b.events()} == \
        {e["uuid"] for e in events}
    rows = wait_until(lambda: (rs := delivery_rows(db_url, sub)) and len(rs) == 2
                      and all(x[1] == "delivered" for x in rs) and rs, 10 * SLOW,
                      "both logged delivered")
    assert all(x[2] == 1 for x in rows)
    assert len(a.posts()) == 1, "the old URL must get nothing after the change"


# ------------------------------------------------- rate limits, database away

def test_a_database_outage_parks_rate_limited_deliveries_and_they_come_round(
        pg_cluster, db_url, procs, workdir):
    """docs/design.md, Rate limits: "Database outage: no tokens are granted,
    so the deliveries of rate-limited subscriptions wait out
    HOOKBRIDGE_MAX_QUEUE_WAIT and are parked in the delay tiers (attempts not
    counted), coming round until the database answers; nothing is lost, and
    subscriptions without a limit are not affected." The database is cut
    (both services reach it through a proxy) before five events arrive."""
    n = 5
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": "1s", "HOOKBRIDGE_RETRY_JITTER": "0",
           "HOOKBRIDGE_MAX_QUEUE_WAIT": "1s"}
    broker = Broker(procs, workdir, retry_schedule="1s")
    limited = checking(procs, workdir, "limited")
    free = checking(procs, workdir, "free")
    proxy = TcpProxy(pg_cluster.port)
    proxy.start()
    try:
        url = through(proxy, db_url, pg_cluster.port)
        d = Dispatcher(procs, url, broker.bootstrap, extra_env=env)
        r = Retrier(procs, url, broker.bootstrap, extra_env=env)
        d.wait_ready()
        r.wait_ready()
        lsub = register_verified(db_url, limited.url, ["user.session.start"],
                                 {"rate_limit": {"per_second": 50, "burst": 10}})
        fsub = register_verified(db_url, free.url, ["user.session.start"])
        for svc in (d, r):
            for sub in (lsub, fsub):
                wait_until(lambda: changes_applied(svc, sub, ACTIVE) >= 1, 10,
                           f"the {svc.program} to see {sub} active")
        proxy.cut()
        events = [event("user.session.start", user=f"00u{i:010d}") for i in range(n)]
        want = {e["uuid"] for e in events}
        produce(broker.bootstrap, events)
        # Without a limit: delivered while the database is away.
        wait_until(lambda: want <= {e["uuid"] for _, e in free.events()}, 15 * SLOW,
                   "the events at the endpoint without a limit, database away")
        # With a limit: no token, so parked on the first tier, not attempted.
        parked = topic_records(broker.bootstrap, broker.retry_prefix + "1s", want=n,
                               timeout=15)
        retries = [decode("delivery_retry", m.value) for m in parked]
        assert sorted(x["event_ids"][0] for x in retries) == sorted(want)
        assert all(x["subscription_id"] == lsub for x in retries)
        assert all(x["attempt"] == 1 and x["last_error"].startswith("rate limited")
                   for x in retries), retries
        assert limited.posts() == []
        assert d.metric("hookbridge_rate_limited_total") >= n
        # Due after 1 s, they wait on the tier for the database (the retrier asks
        # the delivery log first), then go at the limit.
        proxy.start()
        wait_until(lambda: want <= {e["uuid"] for _, e in limited.events()}, 30 * SLOW,
                   "the limited endpoint's events once the database is back")
        rows = wait_until(lambda: (rs := delivery_rows(db_url, lsub)) and len(rs) == n
                          and all(x[1] == "delivered" for x in rs) and rs, 20 * SLOW,
                          "the limited deliveries logged delivered")
        assert all(x[2] == 1 for x in rows), f"a parked delivery counted an attempt: {rows}"
        assert len(limited.posts()) == n, "one request per event"
        frows = wait_until(lambda: (rs := delivery_rows(db_url, fsub)) and len(rs) == n
                           and all(x[1] == "delivered" for x in rs) and rs, 20 * SLOW,
                           "the unlimited deliveries logged delivered")
        assert all(x[2] == 1 for x in frows)
        assert len(free.posts()) == n
    finally:
        proxy.close()


# ------------------------------------------------------------ the replay lease

def verified_active(db_url, url):
    """A subscription made verified and active by SQL alone (no dispatcher to
    run the challenge: the tests below start only a retrier)."""
    opts = {"auth_header": "Authorization", "auth_value": AUTH_VALUE, "secret": SECRET}
    sub = sql(db_url, "SELECT hookbridge.register('replay', %s, %s, %s::jsonb)", url,
              ["user.session.start"], json.dumps(opts))[0][0]
    sql(db_url, "SELECT hookbridge.record_verification(%s, true)", sub)
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    return sub


def failed_delivery(db_url, sub):
    """A delivery the log has as failed after one attempt, with its body."""
    did = sql(db_url, "SELECT gen_random_uuid()")[0][0]
    sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
        "event_type, status, attempts, first_attempt_at, last_attempt_at, last_http_status, "
        "last_error, body, content_type) VALUES (%s, %s, 'e1', 'user.session.start', 'failed', "
        "1, now() - interval '1 hour', now() - interval '1 hour', 400, 'HTTP 400', %s, "
        "'application/json')", did, sub, json.dumps({"replayed": did}))
    return did


def test_a_replay_claimed_by_a_retrier_killed_before_queueing_it_is_taken_after_the_lease(
        db_url, procs, workdir):
    """docs/sql.md, claim_replays: "takes up to limit replay requests, each
    leased so a retrier that dies does not lose one". A retrier claims a
    replay while its broker is frozen (SIGSTOP: the replay's message stays in
    its producer's queue, or in the frozen broker's socket) and is killed
    (SIGKILL), and so is that broker: the message is lost with them, the
    request stays claimed. Another retrier (on a broker of its own) does not
    take it while the lease (5 minutes) holds; once the lease is over (the
    claim moved back by SQL, instead of waiting 5 minutes) it sends the
    replay: one request, the same webhook-id."""
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": "1s", "HOOKBRIDGE_RETRY_JITTER": "0"}
    broker = Broker(procs, workdir, retry_schedule="1s")
    # The first retrier's broker: a request the producer already wrote to its
    # socket is read once the broker runs again, so it dies too (CI run 50).
    doomed = Broker(procs, workdir, retry_schedule="1s", name="doomed-broker")
    rcv = checking(procs, workdir)
    r1 = Retrier(procs, db_url, doomed.bootstrap, extra_env=env, name="retrier1")
    r1.wait_ready()
    sub = verified_active(db_url, rcv.url)
    did = failed_delivery(db_url, sub)
    wait_until(lambda: changes_applied(r1, sub, ACTIVE) >= 1, 10, "the retrier to see it active")

    doomed.proc.signal(signal.SIGSTOP)
    try:
        sql(db_url, "SELECT hookbridge.replay(%s)", did)
        wait_until(lambda: did in r1.proc.output() and "replay requested" in r1.proc.output(),
                   10, "the first retrier to claim the replay")
        r1.proc.kill()
    finally:
        doomed.proc.kill()
    assert sql(db_url, "SELECT status, replay_claimed_at IS NOT NULL FROM hookbridge.deliveries "
               "WHERE delivery_id = %s", did) == [("replay", True)]

    # Another retrier (a group of its own: the dead one's partitions would
    # only come free after its session timeout, which is not the point here).
    r2 = Retrier(procs, db_url, broker.bootstrap, extra_env=env, name="retrier2",
                 group_id="hookbridge-retrier-2")
    r2.wait_ready()
    assert "subscription index loaded: 1 subscriptions, 1 deliverable" in r2.proc.output()
    time.sleep(1.5 * SLOW)  # more than one replay poll (1 s): the lease holds
    assert "replay requested" not in r2.proc.output()
    assert rcv.posts() == []
    # The lease runs out.
    sql(db_url, "UPDATE hookbridge.deliveries SET replay_claimed_at = replay_claimed_at "
        "- interval '5 minutes' WHERE delivery_id = %s", did)
    post = wait_until(lambda: rcv.posts(), 15 * SLOW, "the replay after the lease")[0]
    assert post["status"] == 204 and post["headers"]["webhook-id"] == did
    assert json.loads(post["body"]) == {"replayed": did}
    wait_until(lambda: sql(db_url, "SELECT status, attempts FROM hookbridge.deliveries "
                           "WHERE delivery_id = %s", did) == [("delivered", 2)], 10 * SLOW,
               "the replay logged delivered")
    assert len(rcv.posts()) == 1



def test_a_replay_goes_to_the_current_url_with_the_current_secret(db_url, procs, workdir):
    """docs/sql.md, replay: "sends a failed delivery again: the same
    webhook-id, the stored payload, the subscription's current URL and
    secrets". The delivery failed at A; the URL moved to B (verified) and the
    secret was replaced before the replay. The retrier is paused meanwhile,
    as a busy one is late: it takes registration, verification, activation
    and the move together, and never has the subscription active at A."""
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": "1s", "HOOKBRIDGE_RETRY_JITTER": "0"}
    broker = Broker(procs, workdir, retry_schedule="1s")
    a = checking(procs, workdir, "a")
    b = checking(procs, workdir, "b", NEW_SECRET)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=env)
    r.wait_ready()
    r.proc.signal(signal.SIGSTOP)
    try:
        sub = verified_active(db_url, a.url)
        did = failed_delivery(db_url, sub)
        sql(db_url, "SELECT hookbridge.update(%s, url => %s, options => options || %s::jsonb) "
            "FROM hookbridge.subscriptions WHERE id = %s", sub, b.url,
            json.dumps({"secret": NEW_SECRET}), sub)
    finally:
        r.proc.signal(signal.SIGCONT)
    # The retrier has the move (B not verified yet), then B's challenge as a
    # dispatcher records it (none runs here). Waiting for the last change it
    # applied, not for a count of "active, verified" lines: the state between
    # (active at A) was never loaded, so never logged (it timed out so).
    wait_until(lambda: last_change(r, sub) == ACTIVE_UNVERIFIED, 10 * SLOW,
               "the retrier to have the new URL, not verified yet")
    sql(db_url, "SELECT hookbridge.record_verification(%s, true, NULL, %s)", sub, b.url)
    wait_until(lambda: last_change(r, sub) == ACTIVE, 10 * SLOW,
               "the retrier to have the new URL verified")
    sql(db_url, "SELECT hookbridge.replay(%s)", did)
    post = wait_until(lambda: b.posts(), 15 * SLOW, "the replay at B")[0]
    assert post["status"] == 204, post  # B checked the new secret's signature
    assert post["headers"]["webhook-id"] == did
    assert signature_valid(NEW_SECRET, post) and not signature_valid(SECRET, post)
    assert json.loads(post["body"]) == {"replayed": did}
    wait_until(lambda: sql(db_url, "SELECT status FROM hookbridge.deliveries "
                           "WHERE delivery_id = %s", did) == [("delivered",)], 10 * SLOW,
               "the replay logged delivered")
    assert a.posts() == []


# ------------------------------------------------ DeliveryRetry v1, upgrades

def v1_schema():
    from hbtest.avro import SCHEMA_DIR
    return json.loads((SCHEMA_DIR / "history" / "delivery_retry.v1.avsc").read_text())


def test_a_retry_that_waits_for_nothing_is_written_and_read_as_delivery_retry_v1(
        db_url, procs, workdir):
    """docs/operations.md, Upgrade procedure: "a DeliveryRetry that waits for
    nothing is still written with the schema of the previous release
    (delivery_retry.v1), so old retriers read what new dispatchers write";
    docs/schemas.md: "a retrier of this version reads the retries an older
    dispatcher or retrier left on the tiers". The dispatcher's retry carries
    v1's fingerprint and is a v1 body (Apache's Python Avro reads it with the
    v1 schema); a retry written by Python Avro with the v1 schema, as an older
    release left it on a tier, is sent by the retrier."""
    import avro.io
    import avro.schema
    import io
    from kafka import KafkaProducer
    from hbtest.pyavro import fingerprint, single_object

    # The receiver fails each delivery's first request (--fail-first counts
    # per webhook-id), so each is retried once: the second tier is for the
    # retry written by hand below, whose first request is its attempt 2.
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": "1s,1s", "HOOKBRIDGE_RETRY_JITTER": "0"}
    broker = Broker(procs, workdir, retry_schedule="1s,1s")
    rcv = checking(procs, workdir, fail_first=1)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    r.wait_ready()
    sub = register_verified(db_url, rcv.url, ["user.session.start"])
    wait_until(lambda: changes_applied(r, sub, ACTIVE) >= 1, 10, "the retrier to see it active")
    ev = event("user.session.start")
    produce(broker.bootstrap, [ev])

    tier = broker.retry_prefix + "1s"
    msg = topic_records(broker.bootstrap, tier, want=1)[0]
    v1 = v1_schema()
    assert msg.value[:2] == b"\xc3\x01"
    assert int.from_bytes(msg.value[2:10], "little") == fingerprint(v1), \
        "not written with delivery_retry.v1: an older retrier cannot read it"
    reader = avro.io.DatumReader(avro.schema.parse(json.dumps(v1)))
    buf = io.BytesIO(msg.value[10:])
    rec = reader.read(avro.io.BinaryDecoder(buf))
    assert buf.tell() == len(msg.value) - 10, "bytes beyond the v1 record"
    assert rec["subscription_id"] == sub and rec["event_ids"] == [ev["uuid"]]
    assert rec["attempt"] == 2
    # ... and this retrier reads it: the retry arrives.
    wait_until(lambda: ev["uuid"] in {e["uuid"] for _, e in rcv.events()}, 15 * SLOW,
               "the dispatcher's retry, sent by the retrier")

    # A retry as an older release wrote it, by another Avro implementation.
    now_ms = int(time.time() * 1000)
    did = str(__import__("uuid").uuid4())
    old = {"delivery_id": did, "subscription_id": sub, "event_ids": ["e-v1"],
           "event_type": "user.session.start", "content_type": "application/json",
           "body": json.dumps({"written_by": "v1"}), "attempt": 2, "not_before_ms": now_ms,
           "first_attempt_ms": now_ms - 1000, "last_status": 503, "last_error": "HTTP 503",
           "schedule_offset": 0}
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap.split(","))
    try:
        kp.send(tier, key=sub.encode(), value=single_object(v1, old)).get(10)
    finally:
        kp.close()
    posts = wait_until(lambda: len(ps := [p for p in rcv.posts()
                                          if p["headers"]["webhook-id"] == did]) >= 2 and ps,
                       20 * SLOW, "the v1 retry, sent by the retrier (503, then again)")
    assert [p["status"] for p in posts] == [503, 204]
    assert all(json.loads(p["body"]) == {"written_by": "v1"} and signature_valid(SECRET, p)
               for p in posts)
    wait_until(lambda: sql(db_url, "SELECT status FROM hookbridge.deliveries "
                           "WHERE delivery_id = %s", did) == [("delivered",)], 10 * SLOW,
               "the v1 retry logged delivered")
    assert [a[0] for a in sql(db_url, "SELECT attempt FROM hookbridge.delivery_attempts "
                              "WHERE delivery_id = %s ORDER BY attempt", did)] == [2, 3]
    assert "poison" not in r.proc.output().lower()
