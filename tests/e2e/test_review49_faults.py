"""Review 49: the webhook lifecycle as an identity-platform user knows it
(register, subscribe, payload options, the verification challenge, batches,
retries, deactivate, deregister), under faults.

Each check says what it did on main's binaries (637fabe) and what holds it."""
import json

import pytest

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified

BATCH_CT = {"cloudevents": "application/cloudevents-batch+json", "event": "application/json"}


@pytest.mark.parametrize("fmt", sorted(BATCH_CT))
def test_a_batching_subscription_gets_an_array_also_when_its_window_closes_on_one_event(
        db_url, broker, procs, workdir, fmt):
    """docs/payloads.md: "A batch (batch_max > 1): Content-Type:
    application/cloudevents-batch+json, a JSON array". A subscriber that asked
    for batches of up to 5 writes its receiver for an array; at night a
    window closes on a single event.

    On main (637fabe): that event came as the bare object (cloudevents:
    application/cloudevents+json), so the body's shape followed the traffic
    and a receiver iterating the array broke on the quiet hours. Now it is an
    array of one, with the batch content type; the webhook-id is still the
    event's own (a redelivery de-duplicates as before)."""
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"],
                      {"batch_max": 5, "batch_window_ms": 300, "format": fmt})
    ev = event("user.session.start")
    produce(broker.bootstrap, [ev])
    p = wait_until(lambda: receiver.posts(), 20 * SLOW, "the window's one event")[0]
    body = json.loads(p["body"])
    assert p["headers"]["content-type"] == BATCH_CT[fmt]
    assert isinstance(body, list) and len(body) == 1, body
    assert (body[0]["id"] if fmt == "cloudevents" else body[0]["uuid"]) == ev["uuid"]
    assert p["verified"] is True
