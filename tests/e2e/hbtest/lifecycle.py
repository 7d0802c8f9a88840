"""Helpers for driving the subscription lifecycle through SQL and seeing the
running dispatcher take each change.

The dispatcher logs one JSON line per subscription change it applies
("subscription changed: ..." or "subscription removed", with the
subscription_id), so a test can wait for a change to be in effect before it
produces the next event, instead of sleeping and hoping.
"""
import json
import time
import uuid

import psycopg2

from .procs import SLOW, wait_until


def sql(db_url, query, *args):
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall() if cur.description else None


def event(etype, user=None):
    user = user or "00u" + uuid.uuid4().hex[:10]
    return {"uuid": str(uuid.uuid4()), "eventType": etype, "displayMessage": "lifecycle e2e",
            "severity": "INFO",
            "actor": {"id": user, "type": "User", "alternateId": f"{user}@example.com"},
            "target": [{"id": user, "type": "User"}], "outcome": {"result": "SUCCESS"}}


ACTIVE = "subscription changed: active, verified"
ACTIVE_UNVERIFIED = "subscription changed: active, not verified"
INACTIVE = "subscription changed: inactive, verified"
REMOVED = "subscription removed"


def changes_applied(dispatcher, sub, msg):
    """How many times the dispatcher has applied a change of `sub` that it
    logged as `msg` (one of the constants above)."""
    return changes_in(dispatcher.proc.output(), sub, msg)


def records_of(output, sub):
    """The JSON log records of a service's log text `output` about `sub`."""
    for line in output.splitlines():
        if sub not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("subscription_id") == sub:
            yield rec


def changes_in(output, sub, msg):
    """changes_applied, counted in a service's log text `output` (for a log
    read from elsewhere than the process's own output)."""
    return sum(1 for rec in records_of(output, sub) if rec.get("msg") == msg)


def changes_of(service, sub):
    """Every change of `sub` the service applied, as it logged them, oldest
    first (the constants above, or other "subscription changed: ..." lines).
    A service loads the row as it is when it gets to a notification, and
    several notifications waiting together make one load: a state that lasted
    only a moment may never be logged, and one state may be logged twice (the
    service's own sealing of a value notifies too), so a test waits for the
    state it needs to be the last (after the change it made), not for a count
    of lines."""
    return [rec["msg"] for rec in records_of(service.proc.output(), sub)
            if rec.get("msg", "").startswith("subscription changed: ") or
            rec.get("msg") == REMOVED]


def last_change(service, sub):
    """The last of changes_of(service, sub); None before the first."""
    changes = changes_of(service, sub)
    return changes[-1] if changes else None


def wait_taken(service, subs, state=ACTIVE, timeout=10):
    """Waits until the last change the service applied of each of `subs` is
    `state`: ACTIVE for one made active and verified by the statement that
    changed it last (review 57's subscribe(), review 31's
    add_subscriptions()), REMOVED for one deregistered. For producing events
    only once they have a subscription to go to: a fixed sleep after the SQL
    ("the dispatcher hears of them", 1 to 1.5 s) could end before a
    dispatcher slowed by the sanitizers on a loaded machine had loaded them,
    and the events produced meanwhile went to no one."""
    subs = list(subs)
    wait_until(lambda: all(last_change(service, s) == state for s in subs), timeout,
               f"the {service.program} to have {len(subs)} subscription(s) {state!r}")


def now_in_state(service, sub, state, since):
    """True when the service applied a change of `sub` after the first
    `since` of changes_of (a count taken before the test changed it) and the
    last one it applied is `state`."""
    changes = changes_of(service, sub)
    return len(changes) > since and changes[-1] == state


def consumed(dispatcher):
    """The dispatcher's hookbridge_messages_consumed_total: events it has read."""
    return int(dispatcher.metric("hookbridge_messages_consumed_total"))


# Once the dispatcher has read an event, what it sends for it goes out within
# milliseconds; this much longer is generous on a loaded 2-core machine.
SETTLE = 0.5 * SLOW


def wait_read(dispatcher, count, what="the events"):
    """Waits until the dispatcher has read `count` events in all (see
    consumed()), then SETTLE: a request it would make for them is made by
    then. For checking that something did NOT arrive, without guessing how
    long the events take to be read."""
    wait_until(lambda: consumed(dispatcher) >= count, 30, f"the dispatcher to read {what}")
    time.sleep(SETTLE)


def apply(dispatcher, db_url, sub, expect, query, *args, timeout=15):
    """Runs one SQL statement that changes `sub` and waits until the dispatcher
    has applied it, logging `expect`. Returns the statement's rows."""
    before = changes_applied(dispatcher, sub, expect)
    rows = sql(db_url, query, *args)
    wait_until(lambda: changes_applied(dispatcher, sub, expect) > before, timeout,
               f"the dispatcher to apply {query!r} ({expect})")
    return rows


def verification(db_url, sub):
    return sql(db_url, "SELECT verification FROM hookbridge.subscriptions WHERE id = %s",
               sub)[0][0]


def wait_verification_outcome(db_url, sub, timeout=20):
    return wait_until(lambda: (v := verification(db_url, sub)) != "unverified" and v, timeout,
                      "the verification outcome")


def register_active(dispatcher, db_url, url, types, options=None, name="lifecycle"):
    """register -> verify (the dispatcher runs the challenge) -> activate, and
    waits until the dispatcher delivers to it."""
    sub = sql(db_url, "SELECT hookbridge.register(%s, %s, %s, %s::jsonb)", name, url,
              list(types), json.dumps(options or {}))[0][0]
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    assert wait_verification_outcome(db_url, sub) == "verified"
    apply(dispatcher, db_url, sub, ACTIVE, "SELECT hookbridge.activate(%s)", sub)
    return sub


def challenges(receiver):
    return [r for r in receiver.requests()
            if r["method"] == "GET" and "x-okta-verification-challenge" in r["headers"]]


def uuids(receiver):
    return [e["uuid"] for _, e in receiver.events()]
