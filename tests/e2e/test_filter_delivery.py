"""Content filters through register() and a running dispatcher: only events
the filter accepts arrive; a bad filter is refused by register() with HB013,
never at delivery time."""
import json
import uuid

import psycopg2
import pytest

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, register_verified, sql


def ev(result, target_type="User", ip="203.0.113.7"):
    u = "00u" + uuid.uuid4().hex[:10]
    return {"uuid": str(uuid.uuid4()), "eventType": "user.session.start", "severity": "INFO",
            "actor": {"id": u, "type": "User"}, "client": {"ipAddress": ip},
            "target": [{"id": "0oa1", "type": "AppInstance"}, {"id": u, "type": target_type}],
            "outcome": {"result": result}}


def test_only_events_the_filter_accepts_arrive(db_url, broker, procs, workdir):
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    everything = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                          name="everything")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    flt = {"outcome.result": {"$in": ["FAILURE", "DENY"]},
           "target[].type": "User",
           "$not": {"client.ipAddress": {"$prefix": "10."}}}
    register_verified(db_url, receiver.url, ["user.session.start"], {"filter": flt})
    register_verified(db_url, everything.url, ["user.session.start"])
    wanted = [ev("FAILURE"), ev("DENY")]
    unwanted = [ev("SUCCESS"), ev("FAILURE", target_type="Group"), ev("DENY", ip="10.1.2.3")]
    produce(broker.bootstrap, unwanted + wanted)
    wait_until(lambda: len(everything.events()) == 5, 20 * SLOW, "all five at the unfiltered one")
    wait_until(lambda: len(receiver.events()) == 2, 10 * SLOW, "the two accepted events")
    assert sorted(e["uuid"] for _, e in receiver.events()) == sorted(e["uuid"] for e in wanted)
    assert len(receiver.posts()) == 2, "filtered-out events are not sent at all"


@pytest.mark.sql_only
@pytest.mark.parametrize("flt,msg", [
    ({"outcome.result": {"$gt": 1}}, 'unknown operator "$gt"'),
    ({"target.type": ["User"]}, "$in"),
    ("eventType == x", "must be a JSON object"),
])
def test_register_refuses_a_bad_filter_with_hb013(db_url, flt, msg):
    before = sql(db_url, "SELECT count(*) FROM hookbridge.subscriptions")[0][0]
    with pytest.raises(psycopg2.Error) as e:
        sql(db_url, "SELECT hookbridge.register('f', 'https://example.com/h', "
            "ARRAY['user.session.start'], %s::jsonb)", json.dumps({"filter": flt}))
    assert e.value.pgcode == "HB013", e.value.pgerror
    assert msg in e.value.pgerror
    assert sql(db_url, "SELECT count(*) FROM hookbridge.subscriptions")[0][0] == before
