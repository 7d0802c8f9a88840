"""Review 30: hookbridge in steady state over weeks, what a platform team
sees after a long run of churn (subscriptions registered, changed and
deregistered; secrets rotated; endpoints coming and going; PostgreSQL
restarted): what grows while the services run, not what leaks at exit.

Each test says what it holds and how it was shown to fail on 32ee310. The
figures measured in the review (RSS, descriptors, threads, connections) are
in the review's report, not here."""
import json
import time

import pytest

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from hbtest.webhooks import signature_valid
from test_delivery import SECRET, event, register_verified, sql


def secret_rows(db_url, sub):
    return sql(db_url, "SELECT count(*) FROM hookbridge.subscription_secrets "
               "WHERE subscription_id = %s", sub)[0][0]


def test_secrets_rotated_again_and_again_leave_two_rows_and_both_still_sign(
        db_url, broker, procs, workdir):
    """docs/sql.md, rotate_secret: the previous secret signs for the grace,
    older ones expire at once, at most two sign. The expired ones were never
    removed: every rotation left a row (its sealed secret, under whatever key
    sealed it, never moved by a key rotation) for as long as the
    subscription lived, and every snapshot of the subscription read them
    all. A secret rotated daily, as security policies ask, left 365 rows a
    year per subscription. Now rotate_secret deletes the ones that no longer
    sign, and update(secret) the ones it replaces: a subscription keeps two
    rows at most, and deliveries still carry both signatures in the grace.

    Checked to fail without the change: on 32ee310 the subscription has 41
    rows after 40 rotations (and 42 after the update). About 5 s."""
    rcv = Receiver(procs, workdir, secret=SECRET)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sub = register_verified(db_url, rcv.url, ["user.session.start"])
    secrets = [sql(db_url, "SELECT hookbridge.rotate_secret(%s, interval '1 hour')", sub)[0][0]
               for _ in range(40)]
    assert secret_rows(db_url, sub) == 2
    # the newest and the one before it both sign (the grace), none older
    produce(broker.bootstrap, [event("user.session.start")])
    req = wait_until(lambda: rcv.posts(), 15, "the delivery")[0]
    assert signature_valid(secrets[-1], req) and signature_valid(secrets[-2], req)
    assert len(req["headers"]["webhook-signature"].split(" ")) == 2
    # a secret set by update replaces every earlier one at once
    sql(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", sub,
        json.dumps({"secret": SECRET}))
    assert secret_rows(db_url, sub) == 1
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(rcv.posts()) >= 2, 15, "the second delivery")
    req = rcv.posts()[1]
    assert signature_valid(SECRET, req)
    assert req["headers"]["webhook-signature"].count(" ") == 0


@pytest.mark.sql_only
def test_a_deregistered_subscription_leaves_no_rate_limit_bucket(db_url):
    """Migration 0004: a rate-limited subscription's token bucket row "goes
    with its subscription". deregister keeps the subscription's row (without
    its credentials), so the foreign key's ON DELETE CASCADE never fired,
    and no service draws from the bucket again (take_rate_tokens, which
    drops the row of a subscription without a limit, is not called for one
    that is gone): every rate-limited subscription ever deregistered left its
    bucket behind. Now deregister deletes it.

    Checked to fail without the change: on 32ee310 the 20 buckets stay. Under
    a second."""
    subs = [r[0] for r in sql(
        db_url, "SELECT hookbridge.register('rl' || g, 'https://h' || g || '.example.com/x', "
        "ARRAY['user.session.start'], '{\"rate_limit\": {\"per_second\": 5}}'::jsonb) "
        "FROM generate_series(1, 20) g")]
    for sub in subs:  # as a service holding deliveries for it does
        assert sql(db_url, "SELECT granted FROM hookbridge.take_rate_tokens(%s, 1)",
                   sub) == [(1,)]
    assert sql(db_url, "SELECT count(*) FROM hookbridge.rate_limit_buckets")[0][0] == 20
    for sub in subs:
        sql(db_url, "SELECT hookbridge.deregister(%s)", sub)
    assert sql(db_url, "SELECT count(*) FROM hookbridge.rate_limit_buckets")[0][0] == 0


def test_failures_a_cool_down_apart_do_not_add_up_to_open_a_circuit(db_url, broker, procs,
                                                                   workdir):
    """docs/operations.md, Endpoint health: a host's circuit opens after
    HOOKBRIDGE_CIRCUIT_FAILURES consecutive failed attempts. Its failures
    were kept for the process's life until an answer below 500 came: a host
    whose subscriptions went away (deregistered, moved to another URL,
    deactivated) kept its circuit, every host that ever failed cost memory
    for good, and failures weeks apart added up: a subscription registered
    later on the same host had its deliveries skipped for a cool-down after
    its first 5xx. Now failures more than a cool-down apart do not add up
    (and such circuits are forgotten once many are kept): two failures, a
    pause longer than the cool-down, one failure, and the circuit stays
    closed; three in a row still open it.

    Checked to fail without the change: on 32ee310 the circuit opens at the
    third failure, 2 s after the first two. About 10 s."""
    rcv = Receiver(procs, workdir, secret=SECRET, status=500)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_CIRCUIT_FAILURES": "3", "HOOKBRIDGE_CIRCUIT_COOLDOWN": "1s"})
    d.wait_ready()
    register_verified(db_url, rcv.url, ["user.session.start"])

    def failed(n):
        wait_until(lambda: d.metric('hookbridge_responses_total{class="5xx"}') >= n, 15,
                   f"{n} failed attempts")
        assert d.metric('hookbridge_responses_total{class="5xx"}') == n

    produce(broker.bootstrap, [event("user.session.start") for _ in range(2)])
    failed(2)
    time.sleep(2 * SLOW)  # longer than the cool-down: those two are stale
    produce(broker.bootstrap, [event("user.session.start")])
    failed(3)
    assert d.metric("hookbridge_circuit_opens_total") == 0
    produce(broker.bootstrap, [event("user.session.start") for _ in range(3)])
    failed(6)
    assert d.metric("hookbridge_circuit_opens_total") == 1
