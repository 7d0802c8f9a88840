"""Review 52: attacks on reviews 48 (rotate_secret's grace from the commit),
49 (replay_dropped and pending retries) and 50 (the producer's stops).

Each check says what it did on main's binaries and sql/ (70c24cc)."""
import json
import signal
import subprocess
import time

import psycopg2

from hbtest.procs import BIN, SLOW, wait_until
from test_delivery import event, sql

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
