"""Review 29: six leftovers of hookbridge a user or an operator meets, each
fixed on branch review29 (the producer CLI against unreachable brokers,
/readyz with everything out from the start, strict integer settings, the
payload budget against the cgroup memory limit, split batches counted as
dropped in subscription_overview, the retrier's idle verification lanes).

Each test says what it holds and how it was shown to fail on main (32ee310),
built in a scratch worktree and run with HOOKBRIDGE_BIN pointing there."""
import json
import os
import re
import signal
import socket
import subprocess
import time

from hbtest.endpoints import ChallengeAnswering, serve
from hbtest.procs import BIN, SLOW, free_port, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql
from test_reactivate import changes_seen
from test_retry import stack
from test_review25_faults import _uuids


def _silent_broker():
    """A TCP port that accepts connections and never answers: a broker
    behind a black hole (a wrong address on a firewalled network)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


def _read_until(proc, needle, timeout):
    """Lines of proc's merged output until one holds `needle` (or timeout)."""
    deadline = time.monotonic() + timeout * SLOW
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    while time.monotonic() < deadline:
        chunk = proc.stdout.read()
        if chunk:
            buf += chunk
            if needle.encode() in buf:
                break
        elif proc.poll() is not None:
            break
        time.sleep(0.05)
    return buf.decode(errors="replace")


def test_the_producer_cli_gives_up_on_unreachable_brokers_in_bounded_time_naming_them(tmp_path):
    """`hookbridge-producer FILE` (or `-`) with brokers that never answer
    waited librdkafka's default message timeout, 300 s, before saying
    anything but librdkafka's own connection lines. Now an event waits 30 s
    by default when reading a file or stdin: the start-up warning says so,
    with the broker list, and when the events time out one line says how
    many were not delivered, to which brokers (HOOKBRIDGE_KAFKA_BROKERS, no
    credentials) and that HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS sets the wait,
    which it does (1.5 s here, so the whole run is bounded, exit 1).
    --generate, the load generator, keeps librdkafka's 300 s (the fault
    suites' streams through an outage set it explicitly too).

    Checked to fail without the change: on main the start-up warning names
    no wait and no brokers, and the timed-out run prints only "line N:
    delivery failed: Local: Message timed out". About 7 s."""
    sock = _silent_broker()
    brokers = f"127.0.0.1:{sock.getsockname()[1]}"
    events = tmp_path / "events.jsonl"
    ev = ('{"eventType":"user.lifecycle.create","actor":{"id":"00u1","type":"User"},'
          '"target":[{"id":"00u1","type":"User"}]}\n')
    events.write_text(ev * 3)
    base = {k: v for k, v in os.environ.items() if k != "HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS"}
    base.update(HOOKBRIDGE_KAFKA_BROKERS=brokers, HOOKBRIDGE_KAFKA_SASL_USERNAME="bob",
                HOOKBRIDGE_KAFKA_SASL_PASSWORD="hunter2-not-for-logs")
    procs = []
    try:
        def start(args, **env):
            p = subprocess.Popen([str(BIN / "hookbridge-producer"), *args],
                                 env=dict(base, **env), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
            procs.append(p)
            return p
        default = start([str(events)])
        generate = start(["--generate", "2"])
        t0 = time.monotonic()
        short = start([str(events)], HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS="1500")
        out, _ = short.communicate(timeout=60 * SLOW)
        took = time.monotonic() - t0
        out = out.decode(errors="replace")
        assert short.returncode == 1, out
        assert "produced 0, failed 3" in out, out
        assert took < 20 * SLOW, (took, out)
        summary = [l for l in out.splitlines() if "not delivered" in l]
        assert len(summary) == 1, out
        assert (f"3 lines not delivered: the Kafka brokers {brokers} (HOOKBRIDGE_KAFKA_BROKERS) "
                "did not acknowledge them within 1500 ms") in summary[0], out
        assert "HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS sets the wait" in summary[0], out
        assert "hunter2" not in out
        # the defaults, said at start-up: 30 s for a file, 300 s for --generate
        first = _read_until(default, "producing anyway", 20)
        assert (f"(brokers {brokers}); producing anyway: an event the brokers have not "
                "acknowledged within 30 s fails") in first, first
        gen = _read_until(generate, "producing anyway", 20)
        assert "acknowledged within 300 s fails" in gen, gen
        assert "hunter2" not in first + gen
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout:
                p.stdout.close()
        sock.close()


def test_readyz_names_the_brokers_and_the_database_when_both_are_out_from_the_start(procs):
    """A dispatcher or retrier started while PostgreSQL and the brokers are
    both out said only "database not connected" on /readyz: its consumer
    (and the consumer's broker probe) waits for the database, so whoever
    brought the database back met a second outage the probe had not named.
    Review 27 made it name both when both go out later; now it does from
    the start too ("Kafka brokers not answering for N s; database not
    connected"), with a probe on the producer it has from the start, until
    the consumer's own takes over.

    Checked to fail without the change: on main /readyz stays "database not
    connected" for both services. About 6 s."""
    sock = _silent_broker()
    brokers = f"127.0.0.1:{sock.getsockname()[1]}"
    db = f"postgresql://hookbridge@127.0.0.1:{free_port()}/nothing?connect_timeout=2"
    try:
        svcs = [Dispatcher(procs, db, brokers), Retrier(procs, db, brokers)]
        want = re.compile(r"^Kafka brokers not answering for \d+ s; database not connected\n$")
        for svc in svcs:
            status, body = wait_until(lambda: (r := svc.get("/readyz"))[1] and want.match(r[1])
                                      and r, 15, f"{svc.program}'s /readyz to name both")
            assert status == 503, body
            assert svc.proc.alive()
    finally:
        sock.close()


def test_integer_settings_are_strict_and_refused_in_one_line_naming_the_variable():
    """An integer setting took what strtoll takes: a leading "+" or blank
    (HOOKBRIDGE_MAX_IN_FLIGHT="+5", " 5" started with 5), and a number too
    large for 64 bits was "not an integer". Now only decimal digits (a
    leading "-" at most) are an integer: the program exits 2 with one line
    naming the variable and the value (integers are no secrets); one too
    large is out of range, with the bounds. The producer's --generate count
    is as strict.

    Checked to fail without the change: on main the dispatcher started with
    "+5" and " 5" (it waited for its database instead of refusing), and the
    producer produced with --generate "+1". About 1 s."""
    env = dict(os.environ, HOOKBRIDGE_DATABASE_URL=f"postgresql://x@127.0.0.1:{free_port()}/x",
               HOOKBRIDGE_KAFKA_BROKERS=f"127.0.0.1:{free_port()}")
    cases = [("+5", "not an integer"), (" 5", "not an integer"), ("5 ", "not an integer"),
             ("0x10", "not an integer"), ("1e3", "not an integer"), ("5\n", "not an integer"),
             ("99999999999999999999", "out of range [1, 100000]")]
    runs = []
    try:
        for value, _ in cases:
            runs.append(subprocess.Popen([str(BIN / "hookbridge-dispatcher")],
                                         env=dict(env, HOOKBRIDGE_MAX_IN_FLIGHT=value,
                                                  HOOKBRIDGE_HTTP_LISTEN=f"127.0.0.1:{free_port()}"),
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True))
        for (value, why), p in zip(cases, runs):
            try:
                out, _ = p.communicate(timeout=10 * SLOW)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
                raise AssertionError(f"{value!r} was taken: the dispatcher ran on:\n{out[-800:]}")
            assert p.returncode == 2, (value, p.returncode, out)
            lines = out.strip("\n").splitlines()
            assert len(lines) == 1 and "HOOKBRIDGE_MAX_IN_FLIGHT: " in lines[0] \
                and why in lines[0], (value, out)
            assert value.strip() in lines[0], (value, out)
        # still an integer: a plain number, and a minus reaching the range check
        r = subprocess.run([str(BIN / "hookbridge-dispatcher")], capture_output=True, text=True,
                           env=dict(env, HOOKBRIDGE_MAX_IN_FLIGHT="-3",
                                    HOOKBRIDGE_HTTP_LISTEN=f"127.0.0.1:{free_port()}"),
                           timeout=10 * SLOW)
        assert r.returncode == 2 and "HOOKBRIDGE_MAX_IN_FLIGHT: -3 is out of range" in r.stderr
        r = subprocess.run([str(BIN / "hookbridge-producer"), "--print", "--generate", "+1"],
                           capture_output=True, text=True, timeout=10 * SLOW)
        assert r.returncode == 2 and '--generate wants a positive number, not "+1"' in r.stderr, \
            (r.returncode, r.stdout, r.stderr)
    finally:
        for p in runs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_payload_budget_the_containers_memory_limit_cannot_hold_is_refused_or_warned(
        tmp_path):
    """HOOKBRIDGE_MAX_PENDING_BYTES was never compared with the container's
    memory limit: a pod whose limit is below the budget was OOM-killed
    before the budget paused consumption (and again after each restart, on
    the same backlog). Now, at start, a budget not below the limit (cgroup
    v2's memory.max; HOOKBRIDGE_MEMORY_LIMIT_FILE names the file, as here)
    is refused: exit 2, one line with the figures. A budget that fits, but
    not with what the service holds besides (about 136 MiB with the
    defaults), starts with a warning naming both and the limit; "max" (no
    limit) says nothing. The retrier is checked as the dispatcher is.

    Checked to fail without the change: on main both services started with
    a 48 MiB limit and said nothing about memory. About 2 s."""
    env = dict(os.environ, HOOKBRIDGE_DATABASE_URL=f"postgresql://x@127.0.0.1:{free_port()}/x",
               HOOKBRIDGE_KAFKA_BROKERS=f"127.0.0.1:{free_port()}")
    procs = []

    def start(program, limit):
        f = tmp_path / f"memory.max.{len(procs)}"
        f.write_text(limit + "\n")
        p = subprocess.Popen([str(BIN / f"hookbridge-{program}")], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT,
                             env=dict(env, HOOKBRIDGE_MEMORY_LIMIT_FILE=str(f),
                                      HOOKBRIDGE_HTTP_LISTEN=f"127.0.0.1:{free_port()}"))
        procs.append(p)
        return p, f

    try:
        for program in ("dispatcher", "retrier"):
            refused, f = start(program, str(48 << 20))
            try:
                out, _ = refused.communicate(timeout=10 * SLOW)
            except subprocess.TimeoutExpired:
                refused.kill()
                raise AssertionError(f"the {program} started with a 64 MiB budget in 48 MiB")
            out = out.decode(errors="replace")
            assert refused.returncode == 2, (program, out)
            assert len(out.strip().splitlines()) == 1, out
            assert (f"hookbridge-{program}: HOOKBRIDGE_MAX_PENDING_BYTES (64 MiB) is not below "
                    f"the container's memory limit, 48 MiB ({f})") in out, out
            assert "OOM-killed" in out, out
            warned, f = start(program, str(128 << 20))
            out = _read_until(warned, "the service holds besides", 10)
            assert warned.poll() is None, out
            assert ("memory: HOOKBRIDGE_MAX_PENDING_BYTES (64 MiB) and about 136 MiB the service "
                    "holds besides") in out, out
            assert f"more than the container's memory limit, 128 MiB ({f})" in out, out
            quiet, _ = start(program, "max")
            out = _read_until(quiet, "database unavailable", 10)
            assert quiet.poll() is None and "database unavailable" in out, out
            assert "memory" not in out.lower(), out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()


def test_a_batch_split_after_a_413_is_not_counted_dropped_in_the_overview(db_url, procs,
                                                                         workdir):
    """The retrier splits a batch the endpoint refuses as too large (413)
    into halves, and logs the batch 'dropped' with reason "split: ...":
    nothing was lost, its events went on in the halves. But
    subscription_overview's dropped_24h counted it, so an operator watching
    it saw a drop that never happened. Now such a row is left out:
    dropped_24h is 0 while delivered_24h counts the halves (and a real drop,
    a delivery that waited when the subscription was deactivated, still
    counts).

    Checked to fail without the change: on main (its sql/, this file copied
    into its tree) dropped_24h is 1 after the split. About 8 s."""
    posts = []

    class Gateway(ChallengeAnswering):
        def do_POST(self):
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(raw)
            if len(posts) == 1:
                return self.answer(503)  # the batch's first attempt: to the retrier
            return self.answer(413 if len(_uuids(raw)) > 4 else 204)

    srv = serve(Gateway)
    try:
        broker, _, d, r = stack(procs, workdir, db_url, "1s")
        sub = register_verified(db_url, srv.url, ["user.session.start"],
                                {"batch_max": 10, "batch_window_ms": 1000})
        wait_until(lambda: changes_seen(d) and changes_seen(r), 10, "the services to see it")
        evs = [event("user.session.start") for _ in range(7)]
        produce(broker.bootstrap, evs)
        wait_until(lambda: sorted(u for p in posts[1:] if len(_uuids(p)) <= 4
                                  for u in _uuids(p)) == sorted(e["uuid"] for e in evs),
                   30, "the halves to arrive")

        def overview():
            return sql(db_url, "SELECT delivered_24h, failed_24h, dropped_24h "
                               "FROM hookbridge.subscription_overview WHERE id = %s", sub)[0]
        wait_until(lambda: sql(db_url, "SELECT 1 FROM hookbridge.deliveries WHERE "
                               "subscription_id = %s AND last_error LIKE 'split:%%'", sub)
                   and overview()[0] == 2, 10, "the split and the halves logged")
        assert overview() == (2, 0, 0)
        # a real drop still counts: a delivery logged dropped as a deactivation logs it
        sql(db_url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
                    "event_type, status, attempts, first_attempt_at, last_attempt_at, "
                    "last_error, body) VALUES (gen_random_uuid(), %s, 'x', "
                    "'user.session.start', 'dropped', 1, now(), now(), "
                    "'subscription was deactivated after this delivery began', '[]')", sub)
        assert overview() == (2, 0, 1)
    finally:
        srv.shutdown()


def _threads(pid):
    """The names of a process's threads (what top -H and ps -L show)."""
    names = []
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass  # a thread that just ended
    return names


def test_the_retrier_starts_no_verification_lanes_it_never_uses(db_url, procs, workdir):
    """The store gives verification claims and outcomes four database lanes
    (threads) of their own, so that a dispatcher verifies thousands of
    changed URLs at once; the retrier sends no challenge, yet started the
    four too, idle for its whole life. Now only the dispatcher starts them.
    The store's threads are named (hb-db-follow, hb-db-requests,
    hb-db-verify1..4), so top -H, ps -L and gdb tell them apart; the
    retrier has its two and the verification lanes are the dispatcher's.
    A verification still goes through (the dispatcher's lanes).

    Checked to fail without the change: on main the store's threads have no
    names of their own (the retrier ran 4 more threads: counted in
    /proc/<pid>/task, see the branch's report). About 5 s."""
    broker = Broker(procs, workdir)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    r = Retrier(procs, db_url, broker.bootstrap)
    d.wait_ready()
    r.wait_ready()
    lanes = ["hb-db-follow", "hb-db-requests"]
    verify = [f"hb-db-verify{i}" for i in range(1, 5)]
    assert sorted(n for n in _threads(r.proc.pid) if n.startswith("hb-db")) == lanes
    assert sorted(n for n in _threads(d.proc.pid) if n.startswith("hb-db")) == lanes + verify
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}")
    register_verified(db_url, receiver.url, ["user.session.start"])


def test_a_stream_to_brokers_that_answered_at_start_rides_out_an_outage_longer_than_30_s(
        broker, tmp_path):
    """`... | hookbridge-producer -` is a stream: its brokers answered at
    start, so an event waits librdkafka's 300 s for them, as before the 30 s
    default for brokers that never answer (the test above). Here every broker
    goes down for 33 s with an event waiting: once they are back it is
    delivered, and the run ends "produced 2, failed 0".

    Checked to fail with the 30 s applied whatever the brokers did at start
    (f77ec5d): the waiting event timed out, "produced 1, failed 1". About
    40 s, most of it the outage."""
    from hbtest.ingest import topic_messages
    from test_ingest import brokers_refuse
    env = {k: v for k, v in os.environ.items() if k != "HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS"}
    env["HOOKBRIDGE_KAFKA_BROKERS"] = broker.bootstrap
    events = [event("user.session.start") for _ in range(2)]
    p = subprocess.Popen([str(BIN / "hookbridge-producer"), "-"], env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        p.stdin.write((json.dumps(events[0]) + "\n").encode())
        p.stdin.flush()
        wait_until(lambda: len(topic_messages(broker.bootstrap)) == 1, 20, "the first event")
        broker.proc.signal(signal.SIGUSR1)  # the devbroker takes every broker down
        wait_until(lambda: brokers_refuse(broker.bootstrap), 10 * SLOW, "every broker down")
        p.stdin.write((json.dumps(events[1]) + "\n").encode())
        p.stdin.flush()
        time.sleep(33)  # past the 30 s a producer whose brokers never answered gets
        assert p.poll() is None
        broker.proc.signal(signal.SIGUSR2)
        p.stdin.close()
        out = p.stdout.read().decode(errors="replace")
        assert p.wait(60 * SLOW) == 0, out
        assert "produced 2, failed 0" in out, out
        keys = {m.key.decode() for m in topic_messages(broker.bootstrap)}
        assert {e["actor"]["id"] for e in events} <= keys
    finally:
        broker.proc.signal(signal.SIGUSR2)
        if p.poll() is None:
            p.kill()
        p.wait()
