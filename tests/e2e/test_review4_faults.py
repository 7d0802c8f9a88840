"""Faults of the subscription lifecycle in SQL and of how the services follow
it, found in review: each test shows what a user saw before its fix.

- An auth value of the length docs/sql.md allows (up to 4096 characters)
  reaches the endpoint, with the challenge and with every delivery.
- A verification challenge that was never sent (it waited too long for a
  connection to a busy host) is not recorded as a failed verification:
  the subscription is not deactivated for it.
- A rate limit too small for the services to read (per_second 1e-400, below
  the range of a double) is refused by register() and update(), not stored
  for a subscription the services then cannot load.
- So is a filter with a number beyond 64 bits (1e19), which the dispatcher
  read back from PostgreSQL as an integer it cannot parse.
- A subscription deregistered while its challenge runs: the outcome is not
  recorded (out of date), and that is no database error.
- During a key rotation, a value that a replica not yet restarted seals under
  the old key moves to the new one without another restart.
- A signing secret lost in a database crash before it was sealed is set again
  with rotate_secret(id), as docs/security.md says, with its default grace.
- A URL whose host is no host name or address ('api..example.com', '-',
  '[1::2::3]') is refused by register() and update() (HB002), not found out
  when its challenge fails.
- signing_secret() in a transaction left open does not hold up every
  delivery: it reads the subscription without locking it, so the services'
  sealer does not wait for that transaction.
- A verification requested for a subscription that cannot be loaded (its
  auth value lost before it was sealed) is no database error either.
- During a key rotation, a subscription locked by an operator's open
  transaction does not stop the services from reloading after a reconnect:
  moving its values to the new key waits for a later pass instead.
"""
import json
import signal
import threading
import time

import psycopg2
import pytest

from hbtest.lifecycle import (ACTIVE, apply, challenges, consumed, event, register_active, sql,
                              wait_verification_outcome)
from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.procs import SECRET_KEY, SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce


def register(db_url, url, options, types=("user.session.start",)):
    return sql(db_url, "SELECT hookbridge.register(%s, %s, %s, %s::jsonb)", "review4", url,
               list(types), json.dumps(options))[0][0]


def subscription(db_url, sub):
    return sql(db_url, "SELECT status, verification, verification_error "
               "FROM hookbridge.subscriptions WHERE id = %s", sub)[0]


def test_an_auth_value_as_long_as_allowed_reaches_the_endpoint(db_url, broker, procs, workdir):
    """register() takes an auth value of up to 4096 characters (docs/sql.md);
    one that long, with the auth header's name, is sent with the challenge
    and with a delivery. (Before: the services built the header line in a 4096-byte buffer, so
    every request of such a subscription failed before it was sent, its
    verification with 'auth header is malformed or too long'.)"""
    value = "Bearer " + "k" * (4096 - len("Bearer "))
    receiver = Receiver(procs, workdir, auth=f"Authorization: {value}")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sub = register(db_url, receiver.url, {"auth_header": "Authorization", "auth_value": value})
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert wait_verification_outcome(db_url, sub) == "verified", subscription(db_url, sub)
    apply(d, db_url, sub, ACTIVE, "SELECT hookbridge.activate(%s)", sub)
    ev = event("user.session.start")
    produce(broker.bootstrap, [ev])
    got = wait_until(lambda: receiver.events(), 20, "the delivery")
    assert [(r["headers"]["authorization"], e["uuid"]) for r, e in got] == [(value, ev["uuid"])]
    assert value not in d.proc.output()


def test_a_challenge_never_sent_to_a_busy_host_is_not_a_failed_verification(
        db_url, broker, procs, workdir):
    """One connection per host, and a delivery holding it for 2 s: a challenge
    asked for meanwhile cannot get a connection within max_queue_wait and is
    not sent. That says nothing about the endpoint: the subscription stays
    active and its verification is not 'failed', and the dispatcher says why
    and that the challenge goes again. (Before: the unsent challenge was
    recorded as failed with the reason 'HTTP 0', and the subscription was
    deactivated, though its endpoint never saw the challenge.)"""
    receiver = Receiver(procs, workdir, delay_ms=2000)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_MAX_HOST_CONNECTIONS": "1", "HOOKBRIDGE_MAX_QUEUE_WAIT": "500ms"})
    d.wait_ready()
    sub = register_active(d, db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    # its POST holds the host's one connection for 2 s: handed to the HTTP
    # client before the challenge is asked for (waited for: a fixed 0.3 s
    # after the event was read assumed the dispatcher got that far by then)
    wait_until(lambda: consumed(d) >= 1 and d.metric("hookbridge_requests_in_flight") >= 1, 20,
               "the event's POST in flight")
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    wait_until(lambda: "verification challenge not sent" in d.proc.output()
               or subscription(db_url, sub)[1] != "verified", 10, "the challenge's fate")
    time.sleep(0.5 * SLOW)  # an outcome would be recorded by now
    assert subscription(db_url, sub)[:2] == ("active", "verified")
    assert len(challenges(receiver)) == 1  # register_active's


def sqlstate(db_url, query, *args):
    """The SQLSTATE a statement fails with, or None when it succeeds."""
    try:
        sql(db_url, query, *args)
    except psycopg2.Error as e:
        return e.pgcode
    return None


@pytest.mark.sql_only
def test_a_rate_limit_too_small_to_read_is_refused(db_url):
    """per_second is written as JSON text here: 1e-400 is greater than 0, but
    a double (the services', and take_rate_tokens') reads it as 0. It is
    refused with HB024 by register() and update(), as is anything below
    1e-300; 1e-300 itself is taken (docs/payloads.md: any rate above 0, one
    request in a hundred days is a long wait, not an error). (Before:
    register() stored 1e-400; the dispatcher then could not load the
    subscription ('malformed options.rate_limit'), so its challenge was never
    sent and it never received anything, and take_rate_tokens() failed with
    'out of range for type double precision'.)"""
    url = "https://example.com/hook"
    for rate in ("1e-400", "9e-301"):
        opts = '{"rate_limit": {"per_second": %s}}' % rate
        assert sqlstate(db_url, "SELECT hookbridge.register('rl', %s, ARRAY['user.session.start'], "
                        "%s::jsonb)", url, opts) == "HB024", rate
        sub = register(db_url, url, {})
        assert sqlstate(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", sub,
                        opts) == "HB024", rate
        assert sql(db_url, "SELECT options FROM hookbridge.subscriptions WHERE id=%s",
                   sub) == [({},)]
    sub = sql(db_url, "SELECT hookbridge.register('rl', %s, ARRAY['user.session.start'], "
              "'{\"rate_limit\": {\"per_second\": 1e-300}}'::jsonb)", url)[0][0]
    # the burst's one token, then the longest wait there is
    assert sql(db_url, "SELECT granted, wait_ms FROM hookbridge.take_rate_tokens(%s, 2)",
               sub) == [(1, 2147483647)]


def test_a_filter_number_the_dispatcher_cannot_read_is_refused(db_url, broker, procs, workdir):
    """A filter compares numbers too. Beyond the 64-bit integer range the
    dispatcher cannot read one back (PostgreSQL prints 1e19 as
    10000000000000000000): register() and update() refuse it with HB013,
    naming it; the range's ends are taken, and the dispatcher loads such a
    subscription and challenges it. (Before: register() took 1e19; the
    dispatcher logged 'malformed options.filter' and could not load the
    subscription, so its challenge was never sent and it received nothing.)"""
    receiver = Receiver(procs, workdir)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    bad = {"debugContext.debugData.risk": {"$in": [1, 1e19]}}
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        try:
            cur.execute("SELECT hookbridge.register('f', %s, ARRAY['user.session.start'], "
                        "%s::jsonb)", (receiver.url, json.dumps({"filter": bad})))
            code = None
        except psycopg2.Error as e:
            code, msg = e.pgcode, e.pgerror
    assert code == "HB013" and "64-bit integer range" in msg and "$in[1]" in msg
    edge = {"debugContext.debugData.risk": {"$in": [9223372036854775807, -9223372036854775808]}}
    sub = register(db_url, receiver.url, {"filter": edge})
    assert sqlstate(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", sub,
                    json.dumps({"filter": bad})) == "HB013"
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert wait_verification_outcome(db_url, sub) == "verified", subscription(db_url, sub)
    assert "cannot be loaded" not in d.proc.output()


def test_a_deregister_while_the_challenge_runs_is_no_database_error(
        db_url, broker, procs, workdir):
    """The endpoint answers the challenge after 1.5 s; the subscription is
    deregistered meanwhile. Its outcome is out of date and not recorded, as
    for a changed URL: the dispatcher says so, and counts no database error
    (HookbridgeDatabaseErrors in docs/operations.md would fire on one).
    (Before: record_verification() raised 'subscription not found
    (deregistered ...)', logged as an error, 'cannot record verification',
    and counted in hookbridge_database_errors_total.)"""
    got = threading.Event()

    class Slow(ChallengeAnswering):
        def do_GET(self):
            got.set()
            time.sleep(1.5)
            super().do_GET()

    srv = serve(Slow)
    try:
        d = Dispatcher(procs, db_url, broker.bootstrap)
        d.wait_ready()
        sub = register(db_url, srv.url, {})
        sql(db_url, "SELECT hookbridge.verify(%s)", sub)
        assert got.wait(15), "the challenge never came"
        sql(db_url, "SELECT hookbridge.deregister(%s)", sub)
        wait_until(lambda: "verification outcome not recorded" in d.proc.output()
                   or "cannot record verification" in d.proc.output(), 15, "the outcome")
        assert "cannot record verification" not in d.proc.output()
        assert d.metric("hookbridge_database_errors_total") == 0
    finally:
        srv.shutdown()


def test_a_value_sealed_under_the_old_key_during_the_rollout_moves_to_the_new_key(
        db_url, broker, procs, workdir):
    """Step 2 of rotating HOOKBRIDGE_SECRET_KEY (docs/security.md): replicas
    with the new key as current start while others, not yet restarted, still
    seal with the old one. A value one of those seals meanwhile is moved to the
    new key by a new-key replica within seconds, so hookbridge.secret_keys
    comes to list only the new key, as step 3 waits for. (Before: values were
    moved only when a service started or reconnected to the database, so this
    one stayed under the old key until another restart, and removing the old
    key then cut the subscription off.)"""
    from test_secrets import key_id, new_key, wait_sealed
    old, new = SECRET_KEY, new_key()
    d_new = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-newkey",
                       group_id="hookbridge-dispatcher-newkey",
                       extra_env={"HOOKBRIDGE_SECRET_KEY": new, "HOOKBRIDGE_SECRET_KEYS_OLD": old})
    d_old = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-oldkey",
                       group_id="hookbridge-dispatcher-oldkey",
                       extra_env={"HOOKBRIDGE_SECRET_KEY": old, "HOOKBRIDGE_SECRET_KEYS_OLD": new})
    d_new.wait_ready()
    d_old.wait_ready()

    def keys():
        return sql(db_url, "SELECT key_id, signing_secrets, auth_values "
                   "FROM hookbridge.secret_keys")
    # The old-key replica is the one that seals it: the other one is paused.
    d_new.proc.signal(signal.SIGSTOP)
    try:
        sub = register(db_url, "https://example.com/hook",
                       {"auth_header": "X-Key", "auth_value": "k-" + new[:8]})
        wait_sealed(db_url, sub)
        assert keys() == [(key_id(old), 1, 1)]
    finally:
        d_new.proc.signal(signal.SIGCONT)
    wait_until(lambda: keys() == [(key_id(new), 1, 1)], 10, "the value under the new key")


def test_a_lost_signing_secret_set_again_with_rotate_secret_is_used_at_once(
        db_url, broker, procs, workdir):
    """A PostgreSQL crash empties the unlogged inbox: a signing secret no
    service had sealed is lost (secret_status 'lost'). docs/security.md: set
    it again with rotate_secret(id). With the default grace the lost secret
    becomes the previous one, which nobody can sign with: the new one signs,
    and the subscription is challenged and verified. (Before: the lost
    previous secret made the services refuse the whole subscription, 'not
    sealed yet', for the 24 hours of the grace.)"""
    receiver = Receiver(procs, workdir)
    sub = register(db_url, receiver.url, {})  # no service runs: not sealed
    sql(db_url, "TRUNCATE hookbridge.secret_inbox")  # the crash
    assert sql(db_url, "SELECT signing_secret FROM hookbridge.secret_status WHERE id = %s",
               sub) == [("lost",)]
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sql(db_url, "SELECT hookbridge.rotate_secret(%s)", sub)
    wait_until(lambda: sql(db_url, "SELECT signing_secret FROM hookbridge.secret_status "
                           "WHERE id = %s", sub) == [("sealed",)], 15, "the new secret sealed")
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert wait_verification_outcome(db_url, sub) == "verified", subscription(db_url, sub)


@pytest.mark.sql_only
def test_a_url_whose_host_is_no_name_or_address_is_refused(db_url):
    """docs/sql.md: the URL needs a host; _check_url says 'not a valid host
    name or address'. (Before: any run of letters, digits, dots, '-' and '_'
    passed, and any hex digits, ':' and '.' in brackets, so a typo like
    'api..example.com' was stored, and found out only when the challenge
    failed: 'could not resolve host'.)"""
    sub = register(db_url, "https://example.com/hook", {})
    for url in ("https://api..example.com/hook", "https://./hook", "https://-/hook",
                "https://.example.com/hook", "https://example-.com/hook",
                "https://[:]/hook", "https://[1::2::3]:8443/hook", "https://[1.2.3.4]/hook"):
        assert sqlstate(db_url, "SELECT hookbridge.register('u', %s, "
                        "ARRAY['user.session.start'])", url) == "HB002", url
        assert sqlstate(db_url, "SELECT hookbridge.update(%s, url => %s)", sub, url) == "HB002", url
    for url in ("https://[::1]:8443/hook", "https://[::ffff:10.1.2.3]/h", "https://example.com./h",
                "http://127.0.0.1:8080/hook", "https://my_host.internal/h", "https://a-b.c0/h",
                "HTTPS://EXAMPLE.COM/h?x=1#f"):
        assert sqlstate(db_url, "SELECT hookbridge.update(%s, url => %s)", sub, url) is None, url


def test_signing_secret_in_an_open_transaction_does_not_stop_deliveries(
        db_url, broker, procs, workdir):
    """A program registers a subscription and reads its secret with
    signing_secret() in a transaction it leaves open (psycopg2's default
    outside autocommit), before a service has sealed the secret. The
    services seal it under the subscription's row lock; a read must not hold
    that lock. Deliveries to another subscription go on. (Before:
    signing_secret() locked the row FOR UPDATE; the dispatcher's sealer
    waited for that transaction, and the dispatcher, which takes no event
    while a subscription change is being applied, delivered nothing at all
    until the program committed.)"""
    receiver = Receiver(procs, workdir)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    register_active(d, db_url, receiver.url, ["user.session.start"])
    d.proc.signal(signal.SIGSTOP)  # the program's read comes before the sealer
    try:
        sub = register(db_url, "https://example.com/other", {})
        program = psycopg2.connect(db_url)  # not autocommit: its transaction stays open
        with program.cursor() as cur:
            cur.execute("SELECT hookbridge.signing_secret(%s)", (sub,))
            assert cur.fetchone()[0].startswith("whsec_")
    finally:
        d.proc.signal(signal.SIGCONT)
    try:
        ev = event("user.session.start")
        produce(broker.bootstrap, [ev])
        wait_until(lambda: ev["uuid"] in [e["uuid"] for _, e in receiver.events()], 15,
                   "the delivery while the program's transaction is open")
        wait_until(lambda: sql(db_url, "SELECT signing_secret FROM hookbridge.secret_status "
                               "WHERE id = %s", sub) == [("sealed",)], 10, "the secret sealed")
    finally:
        program.close()


def test_a_challenge_for_a_subscription_that_cannot_be_loaded_is_no_database_error(
        db_url, broker, procs, workdir):
    """A subscription whose auth value was lost in a database crash before a
    service sealed it cannot be loaded, so its challenge cannot be sent: the
    dispatcher says so, naming the reason, and leaves the request for when
    the value is set again. That is the subscription's problem, not the
    database's: hookbridge_database_errors_total (and the
    HookbridgeDatabaseErrors alert on it) stays quiet. (Before: every claim
    of the request, every 20 s, was logged as 'cannot claim verification' and
    counted as a database error.)"""
    sub = register(db_url, "https://example.com/hook",
                   {"auth_header": "Authorization", "auth_value": "Bearer lost"})
    sql(db_url, "TRUNCATE hookbridge.secret_inbox")  # the crash, before any service ran
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    wait_until(lambda: "verification challenge not sent" in d.proc.output()
               or "cannot claim verification" in d.proc.output(), 15, "the claim")
    assert "cannot claim verification" not in d.proc.output()
    assert "auth value is not sealed yet" in d.proc.output()
    assert d.metric("hookbridge_database_errors_total") == 0
    assert subscription(db_url, sub)[1] == "unverified"


def test_an_operator_transaction_does_not_stall_the_reload_during_a_key_rotation(
        db_url, broker, procs, workdir):
    """Key rotation, step 2: the dispatcher holds the new key and the old one,
    and moves values still under the old one to the new one whenever it
    reloads (and seals). An operator has a transaction open on a subscription
    with such a value (an update() not yet committed). The dispatcher's
    connection drops and comes back: its reload does not wait for the
    operator, and deliveries to another subscription go on; the value moves
    on a later pass. (Before: the reload waited for the operator's row lock,
    and the dispatcher, which takes no event until its reload is in, delivered
    nothing until the operator committed.)"""
    from test_secrets import key_id, new_key
    old, new = SECRET_KEY, new_key()
    receiver = Receiver(procs, workdir)
    d = Dispatcher(procs, db_url, broker.bootstrap,
                   extra_env={"HOOKBRIDGE_SECRET_KEY": new, "HOOKBRIDGE_SECRET_KEYS_OLD": old})
    d.wait_ready()
    register_active(d, db_url, receiver.url, ["user.session.start"])
    # a subscription with a value under the old key (as an old replica left it)
    other = register(db_url, "https://example.com/other", {})
    wait_until(lambda: sql(db_url, "SELECT signing_secret FROM hookbridge.secret_status "
                           "WHERE id = %s", other) == [("sealed",)], 10, "sealed")
    sql(db_url, "UPDATE hookbridge.subscription_secrets SET key_id = %s WHERE subscription_id = %s",
        key_id(old), other)
    operator = psycopg2.connect(db_url)  # its transaction stays open
    try:
        with operator.cursor() as cur:
            cur.execute("SELECT hookbridge.update(%s, name => 'renamed')", (other,))
        reconnects = d.proc.output().count("reconnected; reloading subscriptions")
        sql(db_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'hookbridge'")
        wait_until(lambda: d.proc.output().count("reconnected; reloading subscriptions")
                   > reconnects, 15, "the dispatcher to reconnect")
        ev = event("user.session.start")
        produce(broker.bootstrap, [ev])
        wait_until(lambda: ev["uuid"] in [e["uuid"] for _, e in receiver.events()], 15,
                   "the delivery while the operator's transaction is open")
    finally:
        operator.close()
