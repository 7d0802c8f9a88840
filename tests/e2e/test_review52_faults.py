"""Review 52: attacks on reviews 48 (rotate_secret's grace from the commit),
49 (replay_dropped and pending retries) and 50 (the producer's stops).

Each check says what it did on main's binaries and sql/ (70c24cc)."""
import json
import os
import re
import shlex
import signal
import subprocess
import time

import psycopg2

from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import produce
from test_delivery import event, register_verified, sql
from test_reactivate import changes_seen, deactivate_then_activate, delivery_of
from test_retry import stack

PROG = str(BIN / "hookbridge-producer")


def test_a_rotation_under_set_constraints_all_immediate_does_not_fail(db_url):
    """A client that checks its constraints as it goes (SET CONSTRAINTS ALL
    IMMEDIATE, as Django's check_constraints and some migration tools run)
    rotates a secret: the rotation succeeds, the previous secret keeps its
    grace, and the transaction commits.

    On main (70c24cc): the deferred trigger fired at once, inside
    rotate_secret, and its own update fired it again, and again: "stack
    depth limit exceeded", the rotation refused."""
    sub = sql(db_url, "SELECT hookbridge.register('i', 'https://example.com/i', "
              "ARRAY['user.session.start'])")[0][0]
    conn = psycopg2.connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cur.execute("SELECT hookbridge.rotate_secret(%s, interval '1 hour')", (sub,))
        conn.commit()
    finally:
        conn.close()
    (left,), = sql(db_url, "SELECT extract(epoch FROM expires_at - now()) FROM "
                   "hookbridge.subscription_secrets WHERE subscription_id = %s "
                   "AND expires_at IS NOT NULL", sub)
    assert abs(float(left) - 3600) < 5, f"the previous secret's grace: {float(left):.1f} s left"


def test_ctrl_c_while_a_writer_is_part_way_through_a_line_counts_no_bad_line():
    """`exporter | hookbridge-producer --print -`, stopped while the
    exporter had written only the start of a line: the lines before it are
    printed, nothing is counted failed, and the stop says that line was
    read only in part.

    On main (70c24cc): the interrupted read handed back the line's start,
    which was reported "line 2: invalid JSON ..." and counted: "printed 1,
    failed 1", as if the input had been bad."""
    line = json.dumps(event("user.session.start"))
    proc = subprocess.Popen([PROG, "--print", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(line + "\n" + line[:20])
        proc.stdin.flush()
        wait_until(lambda: proc.stdout.readline(), 5 * SLOW, "the first line printed")
        time.sleep(0.3)  # the producer waits in its read of line 2
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10 * SLOW)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "invalid JSON" not in err, err
    assert "printed 1, failed 0" in err, err
    assert "stopped after line 1 of stdin (line 2 was read only in part" in err, err


def test_replay_dropped_since_the_deactivation_takes_back_the_retries_still_waiting(
        db_url, procs, workdir):
    """docs/sql.md: "replay_dropped(id, since) sends what the deactivation
    took"; an operator who deactivated to stop a flood, fixed the endpoint
    and activated again asks for what was dropped since the deactivation,
    the subscription's deactivated_at. Event A failed before it and waits
    for its retry.

    On main (70c24cc): replay_dropped returned 0: A's last attempt came
    before that `since`, so it was not taken back, and when its retry came
    due it was dropped, with last_attempt_at the drop's time: after
    `since`, so only a second replay_dropped with the same `since` brought
    it back (what review 49 meant to end)."""
    broker, receiver, d, r = stack(procs, workdir, db_url, "5s", receiver_args={"fail_first": 1})
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    wait_until(lambda: changes_seen(d) and changes_seen(r), 10, "the services to see it active")
    a = event("user.session.start")
    produce(broker.bootstrap, [a])
    wait_until(lambda: (row := delivery_of(db_url, a)) and row[1] == "retry" and row[0],
               20 * SLOW, "A's first attempt to fail and wait for its retry")
    deactivate_then_activate(db_url, sub, d, r)

    assert sql(db_url, "SELECT hookbridge.replay_dropped(%s, (SELECT deactivated_at FROM "
               "hookbridge.subscriptions WHERE id = %s))", sub, sub) == [(1,)], \
        "A, pending at the deactivation"
    _, status, n, _ = wait_until(
        lambda: (row := delivery_of(db_url, a)) and row[1] not in ("retry", "replay") and row,
        20 * SLOW, "A's retry to come due")
    assert (status, n) == ("delivered", 2)
    assert [p["status"] for p in receiver.posts()] == [503, 204]


def test_print_stopped_by_a_closed_pipe_says_a_command_that_prints_the_rest(tmp_path):
    """`hookbridge-producer --print --allow-unknown-types FILE | head -1`
    (a dry run, to look at the events): the stop says how to go on. Run as
    it says, the rest is printed with the same options, and the two runs
    together printed every line, each once or more (none lost).

    On main (70c24cc) it said `tail -n +N FILE | hookbridge-producer -
    publishes them`: without --print, the dry run's rest published to the
    brokers; without --allow-unknown-types, its unknown types refused. The
    file's name has a blank and a quote in it: until 2398888 the advice
    wrote it as it is, and the shell split it (`tail: cannot open 'it'`)."""
    evs = [event("user.session.start") for _ in range(3000)]
    evs[2000]["eventType"] = "com.example.not.in.the.catalogue"
    f = tmp_path / "it's my events.jsonl"
    f.write_text("".join(json.dumps(e) + "\n" for e in evs))
    env = dict(os.environ, HOOKBRIDGE_KAFKA_BROKERS="127.0.0.1:1")
    first = subprocess.run(f"{PROG} --print --allow-unknown-types {shlex.quote(str(f))} | head -1", shell=True,
                           capture_output=True, text=True, timeout=30 * SLOW, env=env)
    advice = re.search(r"\((tail -n \+\d+ .+? \| (\S+) (.*) -) prints them\)", first.stderr)
    assert advice, first.stderr
    assert advice.group(3) == "--print --allow-unknown-types", first.stderr
    printed = int(re.search(r"printed (\d+), failed 0", first.stderr).group(1))
    rest = subprocess.run(advice.group(1).replace(advice.group(2), PROG, 1), shell=True,
                          capture_output=True, text=True, timeout=30 * SLOW, env=env)
    assert rest.returncode == 0, rest.stderr
    seen = [json.loads(line)["uuid"] for line in rest.stdout.splitlines()]
    assert len(seen) >= len(evs) - printed
    assert set(seen) | {e["uuid"] for e in evs[:printed]} == {e["uuid"] for e in evs}
