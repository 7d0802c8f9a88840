"""Least privilege: the services run as a member of hookbridge_service (read
subscriptions, write the delivery log, nothing else); people managing
subscriptions as a member of hookbridge_operator (the API functions, the views,
the log read-only; no secrets, no direct writes)."""
import json
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, event, sql


def login_role(db_url, group):
    """A new login role in `group`; returns a URL of db_url connecting as it."""
    name = f"{group}_{uuid.uuid4().hex[:8]}"
    sql(db_url, f'CREATE ROLE "{name}" LOGIN IN ROLE {group}')
    parts = urlsplit(db_url)
    return urlunsplit(parts._replace(netloc=f"{name}@{parts.hostname}:{parts.port}"))


def refused(url, query, *args):
    with pytest.raises(psycopg2.Error) as e:
        sql(url, query, *args)
    assert e.value.pgcode == "42501", e.value.pgerror  # insufficient_privilege
    return e.value.pgerror


def test_the_dispatcher_runs_as_hookbridge_service(db_url, broker, procs, workdir):
    svc = login_role(db_url, "hookbridge_service")
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, svc, broker.bootstrap)
    d.wait_ready()
    opts = {"auth_header": "Authorization", "auth_value": AUTH_VALUE, "secret": SECRET}
    sub = sql(db_url, "SELECT hookbridge.register('svc', %s, ARRAY['user.session.start'], "
              "%s::jsonb)", receiver.url, json.dumps(opts))[0][0]
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    wait_until(lambda: sql(db_url, "SELECT verification FROM hookbridge.subscriptions "
                           "WHERE id=%s", sub)[0][0] == "verified", 15 * SLOW,
               "verification recorded by the service role")
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    wait_until(lambda: "subscription changed: active, verified" in d.proc.output(), 10 * SLOW,
               "the change to reach the dispatcher")
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(receiver.events()) == 1, 20 * SLOW, "the delivery")
    wait_until(lambda: sql(db_url, "SELECT count(*) FROM hookbridge.delivery_attempts")[0][0] == 1,
               10 * SLOW, "the delivery log written by the service role")
    assert "permission denied" not in d.proc.output()
    # It sealed the secrets through the functions made for it, and reads no
    # plaintext directly.
    assert sql(db_url, "SELECT signing_secret, auth_value FROM hookbridge.secret_status "
               "WHERE id = %s", sub) == [("sealed", "sealed")]
    refused(svc, "SELECT * FROM hookbridge.secret_inbox")
    # ... and it can do nothing else
    refused(svc, "SELECT hookbridge.register('x', 'https://example.com/h', "
            "ARRAY['user.session.start'])")
    refused(svc, "SELECT hookbridge.activate(%s)", sub)
    refused(svc, "UPDATE hookbridge.subscriptions SET url = 'https://evil.example/'")
    refused(svc, "DELETE FROM hookbridge.deliveries")
    refused(svc, "INSERT INTO hookbridge.event_types (name) VALUES ('x.y')")


@pytest.mark.sql_only
def test_an_operator_manages_subscriptions_only_through_the_api(db_url):
    ops = login_role(db_url, "hookbridge_operator")
    sub = sql(ops, "SELECT hookbridge.register('ops', 'https://example.com/h', "
              "ARRAY['user.session.start'], %s::jsonb)",
              json.dumps({"auth_header": "X-Key", "auth_value": "k-secret"}))[0][0]
    sql(ops, "SELECT hookbridge.subscribe(%s, ARRAY['user.session.end'])", sub)
    assert sql(ops, "SELECT hookbridge.signing_secret(%s)", sub)[0][0].startswith("whsec_")
    assert sql(ops, "SELECT count(*) FROM hookbridge.subscription_overview WHERE id=%s",
               sub)[0][0] == 1
    assert sql(ops, "SELECT name, auth_header FROM hookbridge.subscriptions WHERE id=%s",
               sub)[0] == ("ops", "X-Key")
    sql(ops, "SELECT count(*) FROM hookbridge.deliveries")
    # secrets and direct writes are out of reach
    refused(ops, "SELECT auth_value FROM hookbridge.subscriptions")
    refused(ops, "SELECT * FROM hookbridge.subscription_secrets")
    refused(ops, "SELECT auth_sealed FROM hookbridge.subscriptions")
    refused(ops, "SELECT * FROM hookbridge.secret_inbox")
    refused(ops, "SELECT * FROM hookbridge.sealed_signing_secret(%s)", sub)
    refused(ops, "SELECT * FROM hookbridge.secrets_to_seal()")
    assert sql(ops, "SELECT signing_secret, auth_value FROM hookbridge.secret_status "
               "WHERE id = %s", sub) == [("pending", "pending")]  # no service runs here
    refused(ops, "UPDATE hookbridge.subscriptions SET status = 'active'")
    refused(ops, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
            "event_type) VALUES (gen_random_uuid(), gen_random_uuid(), '', '')")
    # the services' functions: an operator cannot fake a verification
    refused(ops, "SELECT hookbridge.record_verification(%s, true)", sub)
    refused(ops, "SELECT hookbridge.record_verification(%s, true, NULL, NULL, now())", sub)
    refused(ops, "SELECT hookbridge.claim_verification_until(%s)", sub)
    with pytest.raises(psycopg2.Error) as e:
        sql(ops, "SELECT hookbridge.activate(%s)", sub)
    assert e.value.pgcode == "HB011"


@pytest.mark.sql_only
def test_api_functions_are_security_definer_with_a_fixed_search_path(db_url):
    rows = sql(db_url, """
        SELECT p.proname, p.prosecdef, coalesce(array_to_string(p.proconfig, ','), '')
          FROM pg_proc p
         WHERE p.pronamespace = 'hookbridge'::regnamespace
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')""")
    assert len(rows) > 20
    for name, secdef, config in rows:
        assert "search_path=pg_catalog, hookbridge, public" in config, name
        if not name.startswith("_"):
            assert secdef, f"{name} is not SECURITY DEFINER"
    public = sql(db_url, """
        SELECT count(*) FROM pg_proc p
         WHERE p.pronamespace = 'hookbridge'::regnamespace
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
           AND has_function_privilege('public', p.oid, 'EXECUTE')""")[0][0]
    assert public == 0, "EXECUTE revoked from PUBLIC"
