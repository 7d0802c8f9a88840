"""Review 32: an adversarial review of what was merged on 6 December
(reviews 29 and 30: the producer CLI's 30 s message timeout, /readyz with
everything out from the start, strict integer settings, the payload budget
against the cgroup memory limit, split batches in subscription_overview, the
retrier's verification lanes, hb_hash's shrinking rehash, rotate_secret and
update(secret) deleting the secrets that sign no more, deregister deleting
the rate-limit bucket, the circuit breaker's stale circuits), attacked as a
production user or a fault would: a crash, a restart, a slow endpoint, a
dead broker or database, old and new binaries side by side, odd input.

Each test here holds something that misbehaved, and says how it was shown
to fail on main (7fdc4dc), built in a scratch worktree and run with
HOOKBRIDGE_BIN pointing there. What held up is in the review's report."""
import os
import socket
import subprocess

from hbtest.procs import BIN, SLOW

EVENT = ('{"eventType":"user.lifecycle.create","actor":{"id":"00u1","type":"User"},'
         '"target":[{"id":"00u1","type":"User"}]}\n')


def test_the_producer_names_every_line_that_timed_out_so_they_can_be_sent_again(tmp_path):
    """`hookbridge-producer FILE` against brokers that do not answer: since
    review 29 the first 10 timed-out lines are named one by one and the rest
    only counted ("24 lines not delivered: ..."). A user whose file of
    thousands of events was cut off by a broker outage could not tell which
    lines to publish again, and publishing the whole file again sends the
    delivered ones twice (new uuids for events given without one: duplicate
    webhooks). Now one more line names them all, as ranges: here a bad line
    13 (refused before producing) between 24 that time out.

    Checked to fail without the change: on 7fdc4dc no line names lines 11
    to 25. About 7 s (the producer's 5 s wait for the topic's metadata)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # accepts, never answers: a broker behind a black hole
    events = tmp_path / "events.jsonl"
    events.write_text(EVENT * 12 + "not json\n" + EVENT * 12)
    env = dict(os.environ, HOOKBRIDGE_KAFKA_BROKERS=f"127.0.0.1:{sock.getsockname()[1]}",
               HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS="1000")
    try:
        r = subprocess.run([str(BIN / "hookbridge-producer"), str(events)], env=env,
                           capture_output=True, text=True, timeout=60 * SLOW)
    finally:
        sock.close()
    assert r.returncode == 1, r.stderr
    assert "produced 0, failed 25" in r.stdout, r.stdout
    assert "line 13: invalid JSON" in r.stderr, r.stderr
    assert "24 lines not delivered: the Kafka brokers" in r.stderr, r.stderr
    named = [line for line in r.stderr.splitlines() if "the lines that timed out:" in line]
    assert named == ["hookbridge-producer: the lines that timed out: 1-12, 14-25"], r.stderr
