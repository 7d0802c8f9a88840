"""Promises of the documentation that no other test held the code to, end to
end with the real dispatcher and retrier:

- a due retry goes to the subscription's *current* URL, signed with its
  *current* secret (README.md, The retrier; docs/design.md, Signature), after
  the new URL passed its challenge (docs/sql.md, update);
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
import time

from hbtest.avro import decode
from hbtest.lifecycle import ACTIVE, changes_applied
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier, produce, topic_records
from hbtest.tcpproxy import TcpProxy
from hbtest.webhooks import signature_valid
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql

NEW_SECRET = "whsec_" + "bmV3LXNpZ25pbmctc2VjcmV0LWZvci1wcm9taXNlcy0wMQ=="


def delivery_rows(db_url, sub):
    return sql(db_url, "SELECT delivery_id, status, attempts, coalesce(last_error, '') "
               "FROM hookbridge.deliveries WHERE subscription_id = %s ORDER BY created_at", sub)


def through(proxy, db_url, pg_port):
    """db_url with the proxy's port instead of PostgreSQL's."""
    return db_url.replace(f":{pg_port}/", f":{proxy.port}/")


# --------------------------------------------------- retry: current URL, secrets

def test_a_due_retry_goes_to_the_new_url_signed_with_the_new_secret(db_url, procs, workdir):
    """The first attempt fails at A; before the retry is due the URL moves to
    B and the signing secret is replaced (update()). B is challenged and
    verified, and the retrier's attempt goes to B, with the same webhook-id,
    signed with the new secret only; A gets nothing more."""
    tier = 4  # s: room for B's challenge and the retrier taking the change
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": f"{tier}s", "HOOKBRIDGE_RETRY_JITTER": "0"}
    broker = Broker(procs, workdir, retry_schedule=f"{tier}s")
    a = Receiver(procs, workdir, name="a", status=503)
    # B checks the signature with the new secret and the auth header (401 otherwise).
    b = Receiver(procs, workdir, name="b", secret=NEW_SECRET,
                 auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    r.wait_ready()
    sub = register_verified(db_url, a.url, ["user.session.start"])
    wait_until(lambda: changes_applied(r, sub, ACTIVE) >= 1, 10, "the retrier to see it active")
    produce(broker.bootstrap, [event("user.session.start")])
    first = wait_until(lambda: a.posts(), 20, "the first attempt at A")[0]
    due = first["time_ms"] / 1000 + tier
    assert first["status"] == 503

    sql(db_url, "SELECT hookbridge.update(%s, url => %s, options => options || %s::jsonb) "
        "FROM hookbridge.subscriptions WHERE id = %s", sub, b.url,
        json.dumps({"secret": NEW_SECRET}), sub)
    wait_until(lambda: sql(db_url, "SELECT verification FROM hookbridge.subscriptions "
                           "WHERE id = %s", sub)[0][0] == "verified", 10 * SLOW,
               "B to pass its challenge")
    # The retrier follows the change (paused, then active again) before the
    # retry is due: otherwise the retry is dropped, as documented, and this
    # test would check nothing.
    wait_until(lambda: changes_applied(r, sub, ACTIVE) >= 2, 10 * SLOW,
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
