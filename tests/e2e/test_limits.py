"""Bounds on what is sent: a rendered payload over HOOKBRIDGE_MAX_PAYLOAD_BYTES
is not sent; it is dead-lettered with the reason, and the events around it
carry on."""
import psycopg2
import pytest

from hbtest.avro import decode
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql
from test_retry import dlq_messages


def test_an_oversized_payload_is_dead_lettered_not_sent(db_url, broker, procs, workdir):
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap,
                   extra_env={"HOOKBRIDGE_MAX_PAYLOAD_BYTES": "4096"})
    d.wait_ready()
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    big = event("user.session.start")
    big["displayMessage"] = "x" * 5000
    small = event("user.session.start")
    produce(broker.bootstrap, [big, small])
    wait_until(lambda: len(receiver.events()) == 1, 20 * SLOW, "the small event")
    assert receiver.events()[0][1]["uuid"] == small["uuid"]
    row = wait_until(lambda: (rs := sql(db_url, "SELECT delivery_id, status, last_error, body "
                                        "FROM hookbridge.deliveries WHERE subscription_id=%s "
                                        "AND status <> 'delivered'", sub)) and rs[0], 10 * SLOW,
                     "the oversized delivery in the log")
    did, status, err, body = row
    assert status == "failed" and body is None
    assert "exceeds HOOKBRIDGE_MAX_PAYLOAD_BYTES (4096)" in err
    msgs = dlq_messages(broker, want=1)
    assert len(msgs) == 1
    dr = decode("delivery_retry", msgs[0].value)
    assert dr["delivery_id"] == did and dr["body"] == "" and "exceeds" in dr["last_error"]
    assert len(receiver.posts()) == 1
    with pytest.raises(psycopg2.Error) as e:
        sql(db_url, "SELECT hookbridge.replay(%s)", did)
    assert e.value.pgcode == "HB021" and "no stored payload" in e.value.pgerror
