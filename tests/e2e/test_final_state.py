"""A delivery that reached a final state (delivered, failed, dropped) stays
there across crashes (issue 10, part 2), and no retry waits behind one due
later than itself (part 3).

The crash cases kill a service with SIGKILL right after the outcome is in the
delivery log and before its consumer committed the offset: a long
auto.commit.interval.ms makes that window wide, so the message is certainly
read again after the restart. Redelivery is allowed (at least once, same
webhook-id); what must not happen is a delivered delivery turned into a failed
one, or a second dead letter."""
import json
import re
import time

from hbtest.avro import decode
from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier, produce, topic_records
from hbtest.tcpproxy import TcpProxy
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql
from test_retry import LATE_TOLERANCE_S, attempts, delivery, dlq_messages, stack

NO_COMMIT = {"HOOKBRIDGE_KAFKA_AUTO_COMMIT_INTERVAL_MS": "600000"}
STALE_RETRY = "retry dropped, attempt"


def swap_receiver(procs, workdir, old, status):
    """Stops `old` and listens on its port again, now answering `status` to
    every request; the new receiver records to its own file."""
    old.proc.kill()
    new = Receiver.__new__(Receiver)
    new.port, new.url, new.group, new.name = old.port, old.url, procs, old.name + "-after"
    new.record = workdir / f"{new.name}.jsonl"
    new.argv = [BIN / "hookbridge-receiver", "--listen", f"127.0.0.1:{new.port}", "--record",
                new.record, "--secret", SECRET, "--auth", f"Authorization: {AUTH_VALUE}",
                "--status", str(status)]
    new.proc = procs.start(new.name, new.argv)
    wait_until(new._up, 10, "the new receiver to listen")
    return new


def partition_of(key, partitions=6):
    """The partition a keyed message goes to (murmur2, as the Java clients)."""
    from kafka.partitioner.default import murmur2
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def register_on_partition(db_url, url, types, partition):
    """A verified subscription whose id puts its retries on `partition` of a
    tier: the key is the subscription id, and hookbridge's producers take its
    murmur2 hash modulo the 6 partitions, as the Java clients do. Ids that do
    not fit are deregistered unverified."""
    for _ in range(200):
        sub = sql(db_url, "SELECT hookbridge.register('e2e', %s, %s, %s::jsonb)", url, types,
                  json.dumps({"auth_header": "Authorization", "auth_value": AUTH_VALUE,
                              "secret": SECRET}))[0][0]
        if partition_of(sub) == partition:
            break
        sql(db_url, "SELECT hookbridge.deregister(%s)", sub)
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    wait_until(lambda: sql(db_url, "SELECT verification FROM hookbridge.subscriptions WHERE id=%s",
                           sub)[0][0] == "verified", 15, "the verification")
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    return sub


def status_is(db_url, sub, want):
    return lambda: (row := delivery(db_url, sub)) and row[1] == want and row


def test_a_retry_read_again_after_a_retrier_crash_does_not_undo_a_delivery(
        db_url, procs, workdir):
    """Attempt 2 (the retrier's) is acknowledged and logged 'delivered'; the
    retrier is killed before committing its offset and the endpoint starts
    failing. The restarted retrier reads the retry again: it drops it (logged),
    sends nothing, dead-letters nothing, and the delivery stays delivered."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s,1s,1s",
                                   receiver_args={"fail_first": 1}, env=NO_COMMIT)
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    did, *_ = wait_until(status_is(db_url, sub, "delivered"), 20 * SLOW, "attempt 2 delivered")
    r.proc.kill()
    failing = swap_receiver(procs, workdir, receiver, 503)
    r.restart()
    wait_until(lambda: STALE_RETRY in r.proc.output() or failing.posts(), 40 * SLOW,
               "the retry read again to be dropped or attempted")
    assert failing.posts() == [], "a delivered delivery was attempted again by the retrier"
    assert "the delivery is already delivered" in r.proc.output()
    assert delivery(db_url, sub)[1:3] == ("delivered", 2)
    assert [(a[0], a[1]) for a in attempts(db_url, did)] == [(1, "retry"), (2, "delivered")]
    assert dlq_messages(broker) == []


def test_a_delivery_dead_lettered_once_is_not_dead_lettered_again_after_a_retrier_crash(
        db_url, procs, workdir):
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s",
                                   receiver_args={"status": 503}, env=NO_COMMIT)
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    did, *_ = wait_until(status_is(db_url, sub, "failed"), 20 * SLOW, "the dead letter")
    r.proc.kill()
    r.restart()
    wait_until(lambda: STALE_RETRY in r.proc.output() or len(receiver.posts()) > 2, 40 * SLOW,
               "the retry read again to be dropped or attempted")
    assert "the delivery is already failed" in r.proc.output()
    assert len(receiver.posts()) == 2, "a dead-lettered delivery was attempted again"
    msgs = dlq_messages(broker, want=1)
    assert [decode("delivery_retry", m.value)["delivery_id"] for m in msgs] == [did]
    assert [(a[0], a[1]) for a in attempts(db_url, did)] == [(1, "retry"), (2, "failed")]


def test_a_dispatcher_resending_a_final_failure_after_a_crash_does_not_dead_letter_it_twice(
        db_url, procs, workdir):
    """410 is final: dead-lettered on attempt 1. The dispatcher, killed before
    its offset commit, sends attempt 1 again (allowed: same webhook-id), gets
    410 again, and does not dead-letter it a second time."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s",
                                   receiver_args={"status": 410}, retrier=False, env=NO_COMMIT)
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    did, *_ = wait_until(status_is(db_url, sub, "failed"), 20 * SLOW, "the dead letter")
    d.proc.kill()
    d.restart()
    wait_until(lambda: len(receiver.posts()) == 2, 40 * SLOW, "attempt 1 sent again")
    # the restarted dispatcher logs either "dead-lettered" or "not dead-lettered"
    wait_until(lambda: "dead-lettered" in d.proc.output(), 20 * SLOW,
               "the second final failure to be handled")
    assert {p["headers"]["webhook-id"] for p in receiver.posts()} == {did}
    assert len(dlq_messages(broker, want=1)) == 1, "dead-lettered twice"
    assert "final failure of attempt 1 not dead-lettered: the delivery is already failed" in \
        d.proc.output()
    assert delivery(db_url, sub)[1:3] == ("failed", 1)


def test_a_delivered_delivery_stays_delivered_when_the_dispatcher_resends_it_and_it_fails(
        db_url, procs, workdir):
    """The dispatcher's attempt 1 is acknowledged and logged; killed before
    its commit, it sends attempt 1 again and now the endpoint fails. The log
    keeps 'delivered' (both attempts are in delivery_attempts), and the retry
    that failure produced is dropped by the retrier."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "1s,1s", env=NO_COMMIT)
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    produce(broker.bootstrap, [event("user.session.start")])
    did, *_ = wait_until(status_is(db_url, sub, "delivered"), 20 * SLOW, "attempt 1 delivered")
    d.proc.kill()
    failing = swap_receiver(procs, workdir, receiver, 503)
    d.restart()
    wait_until(lambda: len(failing.posts()) >= 1, 40 * SLOW, "attempt 1 sent again")
    wait_until(lambda: STALE_RETRY in r.proc.output() or len(failing.posts()) > 1, 20 * SLOW,
               "its retry to be dropped or attempted")
    assert len(failing.posts()) == 1, "a delivered delivery was retried"
    assert delivery(db_url, sub)[1] == "delivered"
    # The failed resend's row is the restarted dispatcher's, written once the
    # broker has its retry; the retrier's word on that retry does not wait
    # for it: waited for.
    rows = wait_until(lambda: (a := attempts(db_url, did)) and len(a) >= 2 and a, 10,
                      "the resent attempt 1 in the delivery log")
    assert sorted((a[0], a[1]) for a in rows) == [(1, "delivered"), (1, "retry")]
    assert dlq_messages(broker) == []


def test_a_retry_after_longer_than_every_tier_holds_up_no_retry_behind_it(
        db_url, procs, workdir):
    """Schedule 1s,1s: a Retry-After of 10 s puts A's retry on the 1s tier,
    due in 10 s. B's retry, on the same partition behind it, is due in 1 s
    and must come then, not after A's; A's still waits its 10 s."""
    broker, a_rcv, d, r = stack(procs, workdir, db_url, "1s,1s",
                                receiver_args={"status": 503, "retry_after": 10, "name": "a"})
    b_rcv = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                     name="b", fail_first=1)
    a = register_verified(db_url, a_rcv.url, ["user.session.start"])
    b = register_on_partition(db_url, b_rcv.url, ["user.session.end"], partition_of(a))
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: a_rcv.posts(), 20 * SLOW, "A's first attempt")
    produce(broker.bootstrap, [event("user.session.end")])
    wait_until(lambda: len(b_rcv.events()) == 1, 30 * SLOW, "B's retried event")
    b_posts = b_rcv.posts()
    gap = (b_posts[1]["time_ms"] - b_posts[0]["time_ms"]) / 1000
    assert gap <= 1.0 + LATE_TOLERANCE_S, f"B's retry waited {gap:.1f}s behind A's"
    assert re.search(r"^hookbridge_retry_hops_total [1-9]", r.get("/metrics")[1], re.M)
    wait_until(lambda: len(a_rcv.posts()) >= 2, 30 * SLOW, "A's second attempt")
    a_posts = a_rcv.posts()
    a_gap = (a_posts[1]["time_ms"] - a_posts[0]["time_ms"]) / 1000
    assert a_gap >= 10 - 0.05, f"Retry-After not honoured: {a_gap:.1f}s"
    # Both retries were on one partition of the tier (the test's premise):
    # the tier as it is now, read to its end offsets (no 3 s quiet period).
    parts = {decode("delivery_retry", m.value)["subscription_id"]: m.partition
             for m in topic_records(broker.bootstrap, "hookbridge.retry.1s", want=2)}
    assert parts[a] == parts[b], parts


def test_a_due_retry_waits_while_the_database_is_away(pg_cluster, db_url, procs, workdir):
    """The retrier asks the delivery log before attempting: with its database
    gone, a due retry is neither attempted blindly nor dropped; it goes out
    once the database is back."""
    schedule = {"HOOKBRIDGE_RETRY_SCHEDULE": "1s", "HOOKBRIDGE_RETRY_JITTER": "0"}
    broker = Broker(procs, workdir, retry_schedule="1s")
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                        fail_first=1)
    proxy = TcpProxy(pg_cluster.port)
    proxy.start()
    try:
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=schedule)
        r = Retrier(procs, db_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/"),
                    broker.bootstrap, extra_env=schedule)
        d.wait_ready()
        r.wait_ready()
        sub = register_verified(db_url, receiver.url, ["user.session.start"])
        # The retrier knows the subscription is active before its database
        # goes: cut while it loads the change, it waits for the database
        # before reading anything more, and never reads the retry.
        wait_until(lambda: "subscription changed: active, verified" in r.proc.output(),
                   10, "the retrier to see the subscription active")
        proxy.cut()
        produce(broker.bootstrap, [event("user.session.start")])
        wait_until(lambda: receiver.posts(), 20 * SLOW, "the first attempt")
        # The retrier has read the retry (due 1 s after the first attempt);
        # past its due time, plus a margin, nothing may have happened.
        line = wait_until(lambda: re.search(r"attempt 2 is due in (-?\d+) ms",
                                            r.proc.output()), 20, "the retrier to read the retry")
        time.sleep(max(0, int(line.group(1))) / 1000 + 1.5 * SLOW)
        assert len(receiver.posts()) == 1, "a retry was attempted without asking the log"
        assert STALE_RETRY not in r.proc.output()
        proxy.start()
        wait_until(lambda: len(receiver.events()) == 1, 60 * SLOW, "the retry once the log answers")
        wait_until(status_is(db_url, sub, "delivered"), 20 * SLOW, "the log to say delivered")
        assert len(receiver.posts()) == 2
    finally:
        proxy.close()
