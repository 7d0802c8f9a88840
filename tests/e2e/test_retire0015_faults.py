"""retire0015: a deregistered subscription is forgotten past the delivery
log's retention.

hookbridge.deregister() kept the subscription's row (without credentials)
and the delivery log "for the retention", but nothing ever removed what it
left: its subscriptions row, its subscription_event_types rows, its
endpoint_health row, its previews. A platform that creates and deletes
endpoints programmatically grew those tables without bound (a review: 13,000
register/deregister cycles left 26,000 event-type rows and 11,700 health
rows for good). Now hookbridge.maintain_delivery_log(), which the retrier
runs hourly and at start, forgets a subscription deregistered before the
first day the log keeps (docs/sql.md, deregister; docs/operations.md,
Delivery-log retention).

Each test fails on main (a28dbf5): maintain_delivery_log leaves every row
of a deregistered subscription, however old."""
import json
import select
import uuid

import psycopg2
import pytest

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql
from test_retry import stack

TYPES = ["user.session.start", "user.lifecycle.create"]

# every table keyed by a subscription id, outside the delivery log
SATELLITES = {
    "subscriptions": "id",
    "subscription_event_types": "subscription_id",
    "subscription_secrets": "subscription_id",
    "secret_inbox": "subscription_id",
    "endpoint_health": "subscription_id",
    "previews": "subscription_id",
    "ordering_tails": "subscription_id",
    "rate_limit_buckets": "subscription_id",
}


FIRST_KEPT = "SELECT ((now() + interval %s) AT TIME ZONE 'UTC')::date"


def maintain(db_url, now):
    return sql(db_url, f"SELECT action, object FROM hookbridge.maintain_delivery_log({now})")


def rows_of(db_url, ids):
    """Per table, the rows of ids (as text, sorted): what they own."""
    return {t: sorted(map(str, sql(db_url, f"SELECT x::text FROM hookbridge.{t} x "
                                   f"WHERE {c} = ANY (%s::uuid[])", ids)))
            for t, c in SATELLITES.items()}


def counts(db_url, ids):
    return {t: len(r) for t, r in rows_of(db_url, ids).items()}


def a_subscription(db_url, i):
    """A subscription with what a used one has: two event types, a rate
    limit's bucket, ordered delivery's tail, an endpoint health row (from a
    failed attempt) and a preview."""
    sub = sql(db_url, "SELECT hookbridge.register(%s, %s, %s, %s::jsonb)", f"tenant-{i}",
              f"https://t{i}.example.com/hook", TYPES,
              json.dumps({"auth_header": "Authorization", "auth_value": f"Bearer t{i}",
                          "rate_limit": {"per_second": 10}, "ordering": "actor"}))[0][0]
    sql(db_url, "SELECT hookbridge.take_rate_tokens(%s, 1)", sub)
    sql(db_url, "INSERT INTO hookbridge.ordering_tails (subscription_id, ordering_key, "
        "delivery_id, updated_at) VALUES (%s, 'actor:00u1', gen_random_uuid(), now())", sub)
    sql(db_url, "INSERT INTO hookbridge.delivery_attempts (delivery_id, subscription_id, attempt, "
        "started_at, http_status, outcome, error) VALUES (gen_random_uuid(), %s, 1, now(), 503, "
        "'retry', 'HTTP 503')", sub)
    sql(db_url, "SELECT hookbridge.preview(%s)", sub)
    return sub


@pytest.mark.sql_only
def test_a_subscription_deregistered_before_the_first_day_kept_is_forgotten(db_url):
    """docs/sql.md, deregister: past the retention the maintenance deletes
    the subscription's row, its event types, endpoint health, previews and
    ordering tails, in one pass, without notifying the services (each
    service loaded every notified id again); a live subscription, and one
    deregistered within the retention, keep every row they have.

    Before: maintain_delivery_log 5 days on with a 3-day retention left the
    40 deregistered subscriptions' 40 rows, 80 event types, 40 health rows
    and 40 previews (and ordering tails), and would have for good."""
    sql(db_url, "SELECT hookbridge.set_retention('3 days')")
    old = [a_subscription(db_url, i) for i in range(40)]
    live = [a_subscription(db_url, 100 + i) for i in range(3)]
    recent = [a_subscription(db_url, 200 + i) for i in range(3)]
    for sub in old + recent:
        sql(db_url, "SELECT hookbridge.deregister(%s)", sub)
    # deregistered within the retention as of the maintenance's time below
    sql(db_url, "UPDATE hookbridge.subscriptions SET deregistered_at = now() + interval '4 days'"
        " WHERE id = ANY (%s::uuid[])", recent)
    before = counts(db_url, old)
    assert before["subscription_event_types"] == 80 and before["endpoint_health"] == 40 \
        and before["previews"] == 40 and before["ordering_tails"] == 40, before
    kept = rows_of(db_url, live + recent)
    assert all(kept[t] for t in ("subscriptions", "subscription_event_types",
                                 "endpoint_health", "previews"))
    # (every quiet key's tail goes anyway: its delivery is not in the log)
    del kept["ordering_tails"]

    listener = psycopg2.connect(db_url)
    listener.autocommit = True
    listener.cursor().execute("LISTEN hookbridge_subscriptions")
    try:
        done = maintain(db_url, "now() + interval '5 days'")
        assert ("deleted", "subscriptions: 40 deregistered before "
                f"{sql(db_url, FIRST_KEPT, '2 days')[0][0]}, with their "
                "event types, endpoint health and previews") in done, done
        assert counts(db_url, old) == {t: 0 for t in SATELLITES}
        assert {t: r for t, r in rows_of(db_url, live + recent).items()
                if t != "ordering_tails"} == kept
        select.select([listener], [], [], 0.5)
        listener.poll()
        assert listener.notifies == [], "the services were told of the forgotten subscriptions"
    finally:
        listener.close()
    # nothing left to do: said once
    assert not [r for r in maintain(db_url, "now() + interval '5 days'")
                if "subscriptions" in r[1]]
    # a live one goes on as before; the recent ones still say "deregistered"
    sql(db_url, "SELECT hookbridge.subscribe(%s, %s)", live[0], ["user.session.end"])
    with pytest.raises(psycopg2.Error) as e:
        sql(db_url, "SELECT hookbridge.activate(%s)", recent[0])
    assert e.value.pgcode == "HB010" and "deregistered at" in e.value.pgerror


@pytest.mark.sql_only
def test_forgetting_goes_in_batches_and_waits_for_the_deliveries_the_log_still_has(db_url):
    """docs/operations.md, Delivery-log retention: 1,200 deregistered
    subscriptions (three batches) are forgotten by one run; one whose
    delivery the log still keeps (a day kept, or the DEFAULT partition)
    loses its event types and health at once and its row when that delivery
    leaves the log, so the log never names a subscription unknown while
    the row could say whose it was. Forgotten ids are the same as
    deregistered ones to every function: HB010, and replay() HB021.

    Before: all 1,200 stayed, with their 2,400 event types."""
    sql(db_url, "SELECT hookbridge.set_retention('1 day')")
    sql(db_url, "INSERT INTO hookbridge.subscriptions (name, url) SELECT 'bulk-' || g, "
        "'https://bulk.example.com/' || g FROM generate_series(1, 1200) g")
    sql(db_url, "INSERT INTO hookbridge.subscription_event_types SELECT id, t FROM "
        "hookbridge.subscriptions, unnest(%s::text[]) t", TYPES)
    sql(db_url, "UPDATE hookbridge.subscriptions SET deregistered_at = now() - interval '3 days'")
    subs = [r[0] for r in sql(db_url, "SELECT id::text FROM hookbridge.subscriptions")]
    held, other = subs[0], subs[1]
    # a failed delivery of `held`, made (a clock ahead) on a day the log keeps
    did = str(uuid.uuid4())
    sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
        "event_type, status, attempts, first_attempt_at, last_attempt_at, body, log_day) "
        "VALUES (%s, %s, 'e', 'user.session.start', 'failed', 1, now(), now(), '{}', "
        "(now() AT TIME ZONE 'UTC')::date + 1)", did, held)
    done = maintain(db_url, "now()")
    assert any(r[0] == "deleted" and r[1].startswith("subscriptions: 1199 deregistered before")
               for r in done), done
    assert counts(db_url, subs[1:]) == {t: 0 for t in SATELLITES}
    assert counts(db_url, [held])["subscriptions"] == 1
    assert counts(db_url, [held])["subscription_event_types"] == 0

    def refused(query, *args):
        with pytest.raises(psycopg2.Error) as e:
            sql(db_url, query, *args)
        return e.value.pgcode, e.value.pgerror.splitlines()[0].replace(held, "ID") \
            .replace(other, "ID")

    # the one still named by the log, and one forgotten: the same answers
    for sub in (held, other):
        for q in ("SELECT hookbridge.activate(%s)", "SELECT hookbridge.preview(%s)",
                  "SELECT hookbridge.replay_failed(%s, now() - interval '1 day')"):
            assert refused(q, sub)[0] == "HB010"
    code, msg = refused("SELECT hookbridge.replay(%s)", did)
    assert code == "HB021" and msg.endswith("its subscription ID is deregistered"), msg
    sql(db_url, "DELETE FROM hookbridge.subscriptions WHERE id = %s", held)  # forgotten by hand
    assert refused("SELECT hookbridge.replay(%s)", did) == (code, msg)
    # two days on, its delivery's day dropped: the row goes (put back first)
    sql(db_url, "INSERT INTO hookbridge.subscriptions (id, name, url, deregistered_at) "
        "VALUES (%s, 'held', 'https://held.example.com/', now() - interval '3 days')", held)
    maintain(db_url, "now() + interval '3 days'")
    assert counts(db_url, [held])["subscriptions"] == 0


def test_after_the_forgetting_live_endpoints_get_their_events_and_retries_of_forgotten_ones_drop(
        db_url, procs, workdir):
    """A real dispatcher and retrier on the embedded broker. Two
    subscriptions fail their first attempts (HTTP 503) and are deregistered
    with their retries waiting on the delay tier; the maintenance (as of
    3 days on, retention 1 day) forgets one, the other was deregistered
    within the retention. When due, both retries are dropped the same way
    (status dropped, 'subscription deregistered'), nothing crashes and
    nothing is retried again; a live subscription gets every event produced
    after the purge, and its rows are untouched.

    Before: the forgotten subscription's row and event types were still there
    after the maintenance (the first assertion)."""
    broker, failing, d, r = stack(procs, workdir, db_url, "5s", receiver_args={"status": 503})
    ok = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}", name="ok")
    gone = register_verified(db_url, failing.url, ["user.session.start"])
    dereg = register_verified(db_url, failing.url, ["user.session.start"])
    live = register_verified(db_url, ok.url, ["user.lifecycle.create"])
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(failing.posts()) == 2, 15 * SLOW, "the two first attempts")
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE status = "
                           "'retry'")[0][0] == 2, 10 * SLOW, "the retries logged")
    sql(db_url, "SELECT hookbridge.set_retention('1 day')")
    for sub in (gone, dereg):
        sql(db_url, "SELECT hookbridge.deregister(%s)", sub)
    sql(db_url, "UPDATE hookbridge.subscriptions SET deregistered_at = now() + interval '2 days'"
        " WHERE id = %s", dereg)
    live_rows = rows_of(db_url, [live])
    assert sql(db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE status = 'retry'") == \
        [(2,)], "a retry came due before the maintenance: the machine is too slow for this test"
    done = maintain(db_url, "now() + interval '3 days'")
    assert any(a == "deleted" and o.startswith("subscriptions: 1 deregistered") for a, o in done), \
        done
    assert counts(db_url, [gone]) == {t: 0 for t in SATELLITES}
    assert counts(db_url, [dereg])["subscriptions"] == 1

    produce(broker.bootstrap, [event("user.lifecycle.create") for _ in range(5)])
    wait_until(lambda: len(ok.events()) == 5, 15 * SLOW, "the live endpoint's events")
    outcome = "SELECT status, attempts, last_error FROM hookbridge.deliveries " \
        "WHERE subscription_id = %s"
    rows = wait_until(lambda: (a := sql(db_url, outcome, gone)) and (b := sql(db_url, outcome,
                                                                               dereg))
                      and a[0][0] == b[0][0] == "dropped" and (a, b), 20 * SLOW,
                      "both retries dropped")
    assert rows[0] == rows[1], rows
    assert "deregistered" in rows[0][0][2]
    assert len(failing.posts()) == 2, "no attempt after the deregistration"
    assert rows_of(db_url, [live])["subscription_event_types"] == \
        live_rows["subscription_event_types"]
    assert sql(db_url, "SELECT status, deregistered_at IS NULL FROM hookbridge.subscriptions "
               "WHERE id = %s", live) == [("active", True)]
    assert d.proc.alive() and r.proc.alive()
