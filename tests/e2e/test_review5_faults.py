"""Faults found in review (session 13, review 5): each test shows what a
user saw before its fix.

- A batch flushed with events of several partitions, waiting for its
  rate-limit turn (or a connection) when a rebalance moves some of those
  partitions to a new dispatcher, is sent without the events of the moved
  partitions: their new owner delivers them, so no event reaches the
  receiver twice under two webhook-ids.
- A fatal error of the Kafka producer (the broker lost what it had
  acknowledged to the idempotent producer) stops the dispatcher (and the
  retrier, the same loop) and the ingest endpoint with exit status 1 and a
  clear line, instead of leaving them running, ready, unable to write a
  retry, a dead letter or an ingested event ever again.
- A change of batch_max or batch_window_ms applies to the batch already
  open, as docs/payloads.md said: a shorter window or a lower batch_max
  sends it at once (in requests of at most the new batch_max)."""
import collections
import re

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, register_verified, sql
from test_isolation import committed
from test_rebalance_held import (commit_refused, consumed, left_to_new_owner, twice_at_most,
                                 users)

SHED = re.compile(r"batch: (\d+) of its \d+ events are of revoked partitions")
DELIVERED = re.compile(r'"msg":"delivered on attempt \d+[^"]*","delivery_id":"([0-9a-f-]+)"')


def test_a_batch_waiting_for_its_turn_loses_the_events_of_revoked_partitions(
        db_url, procs, workdir):
    """Batches of 6 events from several partitions (the events come in
    rounds of 6 users, so each batch mixes partitions) wait for a rate limit
    of one request a second; a second dispatcher joins and takes half the
    partitions. Every event arrives; the first dispatcher sends none of the
    revoked partitions after the revocation, and none arrives twice (but for
    a batch whose outcome was being logged at the revocation, and what the
    first dispatcher had delivered before it when the devbroker refused the
    commit of the revoked partitions: see below). (Before: the first
    dispatcher sent each waiting batch whole, since not every one of its
    partitions was revoked, and the new owner delivered the events of its
    partitions again in batches of its own: half of the backlog twice.)"""
    # 30 batches at one a second: the backlog outlasts producing the rounds
    # one by one (below: about 6 s, more under load) and a join that takes
    # the group protocol's second 5 s round on the devbroker (with 15 it was
    # sometimes gone before the revocation, and the test timed out waiting
    # for it).
    rounds, per_batch = 30, 6
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
    # One round at a time, each consumed before the next is produced: a batch
    # is one round, so it mixes partitions. (Produced at once, the rounds
    # were sometimes read a partition at a time, the batches held one
    # partition each, and the revocation had nothing to take out of a
    # batch: 1 event shed in CI run 67, where the check below wants 6.)
    for r in range(rounds):
        produce(broker.bootstrap, events[r * per_batch:(r + 1) * per_batch])
        wait_until(lambda: consumed(d1) >= (r + 1) * per_batch, 10 * SLOW,
                   f"the first dispatcher to read round {r + 1}")
    wait_until(lambda: rcv.posts(), 20 * SLOW, "the first dispatcher to send a batch")
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
    out = d1.proc.output()
    # what the first dispatcher delivered after the revocation: a batch sent
    # whole then (the fault) has its revoked events delivered again by d2
    after = set(DELIVERED.findall(out.split('"msg":"revoking', 1)[1]))
    late = {e["uuid"] for r, e in rcv.events() if r["headers"]["webhook-id"] in after} & set(dup)
    print(f"{n} events, {len(rcv.posts())} POSTs, {len(dup)} events twice ({len(late)} sent by "
          f"the first after the revocation); revocations {left_to_new_owner(d1)}; revocation "
          f"commit refused: {commit_refused(d1)}; consumed d1={consumed(d1):.0f} d2={consumed(d2):.0f}")
    # but for a batch whose outcome was being logged at the revocation
    assert len(late) <= per_batch, sorted(late)
    # The first dispatcher's commit of the revoked partitions: the new owner
    # starts from it (unless the devbroker refused it: commit_refused).
    twice_at_most(d1, dup, per_batch)
    # the revocation came while batches waited: events were taken out of them
    shed = sum(int(m) for m in SHED.findall(d1.proc.output()))
    assert shed >= per_batch, d1.proc.output()[-3000:]


def test_a_producer_that_can_no_longer_produce_stops_the_dispatcher(db_url, procs, workdir):
    """The broker answers the dispatcher's retry with OUT_OF_ORDER_SEQUENCE_NUMBER
    (it lost what it had acknowledged): librdkafka's idempotent producer is
    unusable from then on. The dispatcher says so at error and exits non-zero
    (a restart makes a new producer), its event's offset not committed; the
    dispatcher started again hands the event to the delay tier. (Before: it
    went on consuming, ready, delivering later events, and tried to produce
    the retry again every second, forever.)"""
    import signal
    broker = Broker(procs, workdir, retry_schedule="1h")
    rcv = Receiver(procs, workdir, status=503, delay_ms=2000)
    d = Dispatcher(procs, db_url, broker.bootstrap,
                   extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1h"})
    d.wait_ready()
    register_verified(db_url, rcv.url, ["user.session.start"])
    produce(broker.bootstrap, users(1, "05f"))
    # the request waits 2 s for its 503; the retry it causes is the next
    # message produced, and the broker refuses it
    broker.proc.signal(signal.SIGHUP)
    wait_until(lambda: not d.proc.alive(), 20 * SLOW, "the dispatcher to exit",
               interval=0.2)
    out = d.proc.output()
    assert d.proc.p.returncode not in (0, None), out[-2000:]
    assert "Kafka producer unusable" in out, out[-3000:]
    assert committed(broker.bootstrap, "hookbridge-dispatcher") == 0
    d.restart()
    d.wait_ready()
    wait_until(lambda: committed(broker.bootstrap, "hookbridge-dispatcher") == 1, 30 * SLOW,
               "the event handed to the delay tier and its offset committed")


def test_an_ingest_endpoint_whose_producer_is_unusable_stops(procs, workdir):
    """The same fatal producer error at the Okta ingest endpoint: the delivery
    whose events the broker refused is answered 503 (Okta sends it again),
    and the endpoint says why at error and exits non-zero, so the
    orchestrator starts a new one instead of routing deliveries to an
    endpoint that can only answer 503. (Before: it stayed ready, answering
    every delivery 503, for good.)"""
    import signal
    from hbtest.ingest import Ingest
    broker = Broker(procs, workdir)  # the devbroker: its fault injection
    ing = Ingest(procs, broker.bootstrap)
    ing.wait_ready()
    assert ing.post(users(1, "05i"))[0] == 200
    broker.proc.signal(signal.SIGHUP)
    wait_until(lambda: "next Produce request fails" in broker.proc.output(), 5 * SLOW,
               "the devbroker to arm the error")
    assert ing.post(users(1, "05j"), timeout=10)[0] == 503
    wait_until(lambda: not ing.proc.alive(), 10 * SLOW, "the ingest endpoint to exit",
               interval=0.2)
    out = ing.proc.output()
    assert ing.proc.p.returncode == 1, out[-2000:]
    assert "ingest: Kafka producer unusable" in out, out[-3000:]


def test_a_batch_size_or_window_change_applies_to_the_batch_already_open(
        db_url, procs, workdir):
    """Six events wait in a batch (batch_max 100, a window of a minute);
    lowering batch_max to 4 sends them at once, in requests of at most 4.
    Three more open a new batch; shortening the window to 300 ms sends it
    within a second or so. (Before: both batches waited out the minute of
    the window they opened with, and the first went as one request of 6,
    over the batch_max in force.)"""
    import json
    broker = Broker(procs, workdir, retry_schedule="1h")
    rcv = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={"HOOKBRIDGE_RETRY_SCHEDULE": "1h"})
    d.wait_ready()
    options = {"batch_max": 100, "batch_window_ms": 60000, "auth_header": "Authorization",
               "auth_value": AUTH_VALUE}
    sub = register_verified(db_url, rcv.url, ["user.session.start"], options)

    def change(**kw):
        options.update(kw)
        sql(db_url, "SELECT hookbridge.update(%s, options => %s)", sub, json.dumps(options))

    def sizes():
        return [len(json.loads(r["body"])["data"]["events"]) for r in rcv.posts()]
    produce(broker.bootstrap, users(6, "05m"))
    wait_until(lambda: consumed(d) >= 6, 20 * SLOW, "the six events in a batch")
    assert not rcv.posts()
    change(batch_max=4)
    wait_until(lambda: sum(sizes()) == 6, 10 * SLOW, "the batch sent after batch_max went to 4")
    assert sorted(sizes()) == [2, 4], sizes()
    produce(broker.bootstrap, users(3, "05n"))
    wait_until(lambda: consumed(d) >= 9, 20 * SLOW, "three more events in a new batch")
    assert sum(sizes()) == 6, "the new batch waits for its window"
    change(batch_window_ms=300)
    wait_until(lambda: sum(sizes()) == 9, 10 * SLOW, "the batch sent after its window shrank")
    assert sorted(sizes()) == [2, 3, 4], sizes()
