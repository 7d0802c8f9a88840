"""Faults found in review (session 13, review 5): each test shows what a
user saw before its fix.

- A batch flushed with events of several partitions, waiting for its
  rate-limit turn (or a connection) when a rebalance moves some of those
  partitions to a new dispatcher, is sent without the events of the moved
  partitions: their new owner delivers them, so no event reaches the
  receiver twice under two webhook-ids."""
import collections
import re

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, register_verified
from test_isolation import committed
from test_rebalance_held import consumed, left_to_new_owner, users

SHED = re.compile(r"batch: (\d+) of its \d+ events are of revoked partitions")


def test_a_batch_waiting_for_its_turn_loses_the_events_of_revoked_partitions(
        db_url, procs, workdir):
    """Batches of 6 events from several partitions (the events come in
    rounds of 6 users, so each batch mixes partitions) wait for a rate limit
    of one request a second; a second dispatcher joins and takes half the
    partitions. Every event arrives, and (but for a batch whose outcome was
    being logged at the revocation) none twice. (Before: the first
    dispatcher sent each waiting batch whole, since not every one of its
    partitions was revoked, and the new owner delivered the events of its
    partitions again in batches of its own: half of the backlog twice.)"""
    rounds, per_batch = 15, 6
    n = rounds * per_batch
    broker = Broker(procs, workdir, retry_schedule="1h")
    rcv = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": "1h", "HOOKBRIDGE_MAX_QUEUE_WAIT": "10m"}
    d1 = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env, name="dispatcher1")
    d1.wait_ready()
    register_verified(db_url, rcv.url, ["user.session.start"],
                      {"batch_max": per_batch, "batch_window_ms": 2000,
                       "rate_limit": {"per_second": 1, "burst": 1}})
    events = users(n, "05b")
    for r in range(rounds):
        produce(broker.bootstrap, events[r * per_batch:(r + 1) * per_batch])
    wait_until(lambda: consumed(d1) >= n and rcv.posts(), 20 * SLOW,
               "the first dispatcher to batch every event and send a batch")
    d2 = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env, name="dispatcher2")
    want = {e["uuid"] for e in events}
    wait_until(lambda: want <= {e["uuid"] for _, e in rcv.events()}, 120 * SLOW,
               "every event at the receiver")
    wait_until(lambda: left_to_new_owner(d1) and consumed(d2) > 0, 10 * SLOW,
               "the revocation")
    # settled: every event's offset committed, so each dispatcher has sent
    # what it was going to (duplicates still on their way are counted too)
    wait_until(lambda: committed(broker.bootstrap, "hookbridge-dispatcher") == n, 60 * SLOW,
               "every offset committed")
    got = collections.Counter(e["uuid"] for _, e in rcv.events())
    dup = {u: c for u, c in got.items() if c > 1}
    print(f"{n} events, {len(rcv.posts())} POSTs, {len(dup)} events twice; revocations "
          f"{left_to_new_owner(d1)}; consumed d1={consumed(d1):.0f} d2={consumed(d2):.0f}")
    assert len(dup) <= per_batch, sorted(dup.items())
    # the revocation came while batches waited: events were taken out of them
    shed = sum(int(m) for m in SHED.findall(d1.proc.output()))
    assert shed >= per_batch, d1.proc.output()[-3000:]

