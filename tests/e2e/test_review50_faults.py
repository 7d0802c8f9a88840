"""Review 50: hookbridge-producer reading a file or stdin, and --okta-logs,
when the brokers do not take the events and the user stops the run: can the
user tell what was published and go on from there? The producer, the
devbroker and (for --okta-logs) a stand-in Okta on loopback; the brokers are
"away" as a frozen devbroker (SIGSTOP) or an address nobody listens on. Each
check says what main (637fabe) did."""
import array
import fcntl
import json
import os
import re
import signal
import subprocess
import termios
import time
import urllib.parse

from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import topic_records
from test_broker_frozen import freezable  # noqa: F401 (a fixture)
from test_delivery import event
from test_okta_logs import TOKEN, WINDOW
from test_review18_faults import read_event
from test_review40_faults import Okta, finish  # finish: (exit status or None if killed, out, err)

PROG = str(BIN / "hookbridge-producer")


def env_for(bootstrap, **extra):
    return dict(os.environ, HOOKBRIDGE_KAFKA_BROKERS=bootstrap,
                HOOKBRIDGE_EVENTS_TOPIC="identity.events", HOOKBRIDGE_OKTA_API_TOKEN=TOKEN,
                **extra)


def stopped(pid):
    """Whether every thread of pid is stopped (a SIGSTOP is sent at once but
    each thread stops on its own, the next time it would run)."""
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            states.append(open(f"/proc/{pid}/task/{task}/stat").read().rsplit(")", 1)[1].split()[0])
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return bool(states) and all(st == "T" for st in states)


def freeze(broker):
    """SIGSTOPs the devbroker and waits until all its threads are stopped."""
    broker.proc.signal(signal.SIGSTOP)
    wait_until(lambda: stopped(broker.proc.pid), 5, "the devbroker to stop")


def unread(pipe):
    """Bytes written to pipe that its reader has not read yet (FIONREAD)."""
    n = array.array("i", [0])
    fcntl.ioctl(pipe.fileno(), termios.FIONREAD, n)
    return n[0]


def kill_if_running(proc):
    """A test's clean-up: the program killed if a failed check left it running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def producing_until_the_brokers_freeze(frozen, lines):
    """hookbridge-producer reading stdin, its local queue 10 events: lines[0]
    published and on the topic, then the brokers frozen (SIGSTOP). Returns
    the running process, its stdin open for the rest; on a failure here it
    is killed and the brokers thawed."""
    proc = subprocess.Popen([PROG, "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=env_for(frozen.bootstrap,
                                        HOOKBRIDGE_KAFKA_QUEUE_BUFFERING_MAX_MESSAGES="10"))
    try:
        proc.stdin.write(json.dumps(lines[0]) + "\n")
        proc.stdin.flush()
        topic_records(frozen.bootstrap, "identity.events", want=1)
        freeze(frozen)
    except BaseException:
        kill_if_running(proc)
        frozen.proc.signal(signal.SIGCONT)
        raise
    return proc


def test_ctrl_c_while_the_brokers_hold_up_a_file_says_which_lines_to_publish_again(
        freezable):  # noqa: F811
    """SIGINT while the brokers do not answer and the local queue is full
    (here 10 events) stops within the 5 s drain and says which lines were
    not published: those left in the queue, as ranges, and the line the
    input was left at. On main the stop waited out the 30 s a full queue
    is given (the signal unseen), then said only "10 lines left unsent" and
    "produced 1, failed 11": which lines, and where to go on, the user could
    not tell (and the line it was blocked on counted as a failure, "Queue
    full")."""
    lines = [event("user.session.start") for _ in range(30)]
    proc = producing_until_the_brokers_freeze(freezable, lines)
    try:
        # One line at a time, each read before the next is written: the
        # producer reads line n+1 only once line n is queued, so line 12
        # read means lines 2-11 queued (the queue full) and line 12 waiting
        # for room; the rest stays unread in the pipe.
        for n in range(1, 12):
            proc.stdin.write(json.dumps(lines[n]) + "\n")
            proc.stdin.flush()
            wait_until(lambda: unread(proc.stdin) == 0 or proc.poll() is not None, 10,
                       f"line {n + 1} read")
        assert proc.poll() is None, proc.communicate()
        proc.stdin.write("".join(json.dumps(e) + "\n" for e in lines[12:]))
        proc.stdin.flush()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc, out, err = finish(proc, 15 * SLOW)
        took = time.monotonic() - t0
    finally:
        kill_if_running(proc)
        freezable.proc.signal(signal.SIGCONT)
    assert rc is not None, f"still running {took:.0f} s after SIGINT: {out}{err}"
    assert took < 10 * SLOW, f"{took:.1f} s from SIGINT to exit"
    assert rc == 1, out + err
    assert "produced 1, failed 10" in out, out + err
    assert "hookbridge-producer: the lines left unsent: 2-11" in err, err
    assert "stopped after line 11 of stdin" in err, err
    assert "Queue full" not in err, err


def frozen_on_first_request(broker, pages):
    """A stand-in Okta serving pages[n] (events, or None: no answer) to its
    n-th request, each with a next link; the broker is frozen as the first
    request comes, so the events read find the brokers away."""
    served = []

    def answer(h):
        n = len(served)
        served.append(h.path)
        if n == 0:
            freeze(broker)  # stopped before the first page is answered (CI 117: acked)
        if n >= len(pages):
            return 200, [], {}
        if pages[n] is None:
            return None
        return 200, pages[n], {"Link": f'<{okta.url}/api/v1/logs?after=p{n + 1}>; rel="next"'}

    okta = Okta(answer)
    return okta


def published_at(seconds):
    ev = event("user.session.start")
    ev["published"] = f"2026-12-06T10:00:{seconds:02d}.000Z"
    return ev


def test_okta_events_the_brokers_never_took_are_named_and_the_run_says_where_to_go_on(
        freezable):  # noqa: F811
    """--okta-logs reads the whole window but the brokers take none of it
    (they froze as the run began; each event waits 2 s here): each failed
    event is named by its uuid and the run says to run again --since the
    earliest of them. On main it said "event 1: delivery failed: Local:
    Message timed out" and "the events that timed out: 1-3" (numbers that
    are in neither Okta nor the topic) and nothing about where to go on:
    the window looked done but for "failed 3"."""
    evs = [published_at(1), published_at(2), published_at(3)]
    okta = frozen_on_first_request(freezable, [evs[:2], evs[2:]])
    env = env_for(freezable.bootstrap, HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS="2000")
    try:
        r = subprocess.run([PROG, "--okta-logs", okta.url, *WINDOW], env=env,
                           capture_output=True, text=True, timeout=60 * SLOW)
    finally:
        freezable.proc.signal(signal.SIGCONT)
        okta.stop()
    said = r.stdout + r.stderr
    assert r.returncode == 1, said
    assert "produced 0, failed 3" in r.stdout, said
    assert f"(uuid {evs[0]['uuid']}): delivery failed" in r.stderr, said
    assert "run again with --since 2026-12-06T10:00:01.000Z --until " \
        "2026-12-06T11:00:00Z" in r.stdout, said
    assert "the events that timed out: 1-3" not in said
    assert TOKEN not in said


def test_sigterm_with_okta_events_still_queued_resumes_from_the_first_unsent(
        freezable):  # noqa: F811
    """SIGTERM while the events of the first page wait for frozen brokers
    and Okta has not answered the second: the run stops after the 5 s
    drain, and the place it says to go on from is the first event not
    published, not the last one read. On main it said "run again with
    --since 2026-12-06T10:00:03.000Z" (the last event read) while the
    events of 10:00:01 and 10:00:02 had been purged unsent: run so, they
    were never published. Here the run again as told puts the whole window
    on the topic."""
    evs = [published_at(1), published_at(2), published_at(3)]
    okta = frozen_on_first_request(freezable, [evs, None])
    proc = subprocess.Popen([PROG, "--okta-logs", okta.url, *WINDOW],
                            env=env_for(freezable.bootstrap), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(okta.requests) >= 2, 30, "the second page's request")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        rc, out, err = finish(proc, 20 * SLOW)
    finally:
        kill_if_running(proc)
        freezable.proc.signal(signal.SIGCONT)
        okta.stop()
    said = out + err
    assert rc == 1, said
    assert "produced 0, failed 3" in out, said
    assert "run again with --since 2026-12-06T10:00:01.000Z" in out, said
    assert "--since 2026-12-06T10:00:03.000Z" not in out, said
    assert TOKEN not in said

    # Run again as told, the brokers back: the whole window is on the topic.
    since = re.search(r"run again with --since (\S+)", out).group(1)

    def window(h):
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(h.path).query))
        return 200, [e for e in evs if e["published"] >= q["since"]], {}

    okta = Okta(window)
    try:
        r = subprocess.run([PROG, "--okta-logs", okta.url, "--since", since, "--until",
                            WINDOW[3]], env=env_for(freezable.bootstrap), capture_output=True,
                           text=True, timeout=60 * SLOW)
    finally:
        okta.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    got = {read_event(m.value)["uuid"] for m in
           topic_records(freezable.bootstrap, "identity.events")}
    assert got == {e["uuid"] for e in evs}, "the run again left events out"


def okta_run(answer, args, env, timeout=60):
    """hookbridge-producer --okta-logs against a stand-in Okta that answers
    each request with answer(handler), args after its URL: the finished run."""
    okta = Okta(answer)
    try:
        return subprocess.run([PROG, "--okta-logs", okta.url, *args], env=env,
                              capture_output=True, text=True, timeout=timeout * SLOW)
    finally:
        okta.stop()


def test_a_run_that_published_everything_says_nothing_about_going_on(broker):
    """The resume line is for runs that left something out: a clean run
    prints only its summary (and exit 0)."""
    evs = [published_at(1), published_at(2)]
    r = okta_run(lambda h: (200, evs, {}), WINDOW, env_for(broker.bootstrap))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "produced 2, failed 0" in r.stdout
    assert "run again" not in r.stdout + r.stderr


def test_events_okta_gives_outside_the_window_are_not_published_and_said(broker):
    """An event whose published time is after --until (or before --since)
    was not asked for: a proxy or cache in front of Okta that ignores the
    window must not get it published. It is said (uuid, time, a count),
    and the rest of the window goes out. On main both were published,
    exit 0, nothing said (review 40's low)."""
    inside, late, early = published_at(30), event("user.session.start"), \
        event("user.session.start")
    late["published"] = "2026-12-06T11:00:00.001Z"
    early["published"] = "2026-12-06T09:59:59.999Z"
    r = okta_run(lambda h: (200, [early, inside, late], {}), WINDOW, env_for(broker.bootstrap))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "produced 1, failed 0" in r.stdout, r.stdout
    assert f"event {early['uuid']} published at 2026-12-06T09:59:59.999Z is outside" in r.stdout
    assert "2 events Okta gave were outside the window" in r.stdout, r.stdout
    got = [m.key for m in topic_records(broker.bootstrap, "identity.events")]
    assert len(got) == 1, got


def test_a_window_that_is_no_window_is_refused_before_okta_is_asked():
    """--since after --until, or a time that is not RFC 3339, exits 2 with
    what is wrong before any request. On main the request went out, Okta's
    400 came back, and the run said "stopped before any event was read:
    run again" (exit 1): running again could not help."""
    okta = Okta(lambda h: (200, [], {}))
    env = dict(os.environ, HOOKBRIDGE_OKTA_API_TOKEN=TOKEN)
    try:
        for since, until, says in (
                ("2026-12-06T12:00:00Z", "2026-12-06T11:00:00Z", "is not before --until"),
                ("2026-12-06 10:00", "2026-12-06T11:00:00Z", '--since "2026-12-06 10:00" is '
                 "not an RFC 3339 time"),
                ("2026-12-06T10:00:00Z", "yesterday", '--until "yesterday" is not an RFC')):
            r = subprocess.run([PROG, "--okta-logs", okta.url, "--since", since,
                                "--until", until, "--print"], env=env, capture_output=True,
                               text=True, timeout=30 * SLOW)
            assert r.returncode == 2, (since, until, r.stdout + r.stderr)
            assert says in r.stderr, r.stderr
    finally:
        okta.stop()
    assert okta.requests == []


def test_an_until_in_the_future_says_the_rest_is_still_to_come():
    """--until in the future: Okta gives what it has so far and the run
    ends there; it says so and where to go on once --until is past. On
    main: exit 0 and nothing said, as if the window were published
    whole."""
    evs = [published_at(5)]
    r = okta_run(lambda h: (200, evs, {}),
                 ["--since", "2026-12-06T10:00:00Z", "--until", "2099-01-01T00:00:00Z",
                  "--print"], dict(os.environ, HOOKBRIDGE_OKTA_API_TOKEN=TOKEN), timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "printed 1, failed 0" in r.stderr
    assert "--until 2099-01-01T00:00:00Z is in the future" in r.stderr, r.stderr
    assert "run again with --since 2026-12-06T10:00:05.000Z --until 2099-01-01T00:00:00Z" \
        in r.stderr, r.stderr


def test_a_directory_given_as_the_file_is_refused_not_published_as_nothing(tmp_path):
    """`hookbridge-producer DIR` (a wrong path, a glob gone wrong) exits 2
    with the reason, as a missing file does. On main it logged "reading
    input: Is a directory" among the JSON log, printed "produced 0, failed
    0" and exited 0: a script saw success."""
    r = subprocess.run([PROG, "--print", str(tmp_path)], capture_output=True, text=True,
                       timeout=30 * SLOW)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"hookbridge-producer: {tmp_path}: Is a directory" in r.stderr, r.stderr

    # stdin that cannot be read (here a directory's descriptor): exit 1,
    # and where reading stopped. On main: exit 0, "produced 0, failed 0".
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        r = subprocess.run([PROG, "--print", "-"], stdin=fd, capture_output=True, text=True,
                           timeout=30 * SLOW)
    finally:
        os.close(fd)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "stopped after line 0 of stdin (reading failed: Is a directory)" in r.stderr, \
        r.stderr


def test_an_error_page_that_echoes_the_request_does_not_print_the_token():
    """A proxy (or a debugging gateway) in front of Okta that answers 400
    with the request echoed in its body, or in a non-JSON page: the error
    printed says what came back, without the token. On main the first 200
    characters of the body were logged as they were, token and all."""
    def answer(h):
        echo = f"bad request; you sent {h.headers.get('Authorization')}"
        if "after=" in h.path:
            return 400, {"errorSummary": echo}, {}
        return 200, [published_at(1)], {
            "Link": f'<{okta.url}/api/v1/logs?after=x>; rel="next"'}

    okta = Okta(answer)
    env = dict(os.environ, HOOKBRIDGE_OKTA_API_TOKEN=TOKEN)
    try:
        r = subprocess.run([PROG, "--okta-logs", okta.url, *WINDOW, "--print"], env=env,
                           capture_output=True, text=True, timeout=30 * SLOW)
    finally:
        okta.stop()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "HTTP 400: bad request; you sent SSWS (the API token)" in r.stderr, r.stderr
    assert TOKEN not in r.stdout + r.stderr


def test_ctrl_c_during_print_to_a_slow_reader_loses_no_printed_event():
    """--print into a pipe whose reader is slow (here: not reading for a
    second, so the producer waits to write), then SIGINT: every event
    counted in "printed N" is on stdout, whole, and the run says how many
    of the N it made. On main, stdio gave up on the write the signal
    interrupted: in most runs (7 of 10 measured) stdout lacked events the
    count included and ended in a line cut short, which fails as invalid
    JSON when the saved output is published; and nothing said the run was
    cut short."""
    for _ in range(3):
        proc = subprocess.Popen([PROG, "--generate", "1000000", "--rate", "500", "--print"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            rc, out, err = finish(proc, 15 * SLOW)
        finally:
            kill_if_running(proc)
        assert rc == 1, err
        made = len(out.split("\n")) - 1
        assert out.endswith("\n"), out[-200:]
        assert all(json.loads(line)["uuid"] for line in out.split("\n")[:-1])
        assert f"printed {made}, failed 0" in err, err
        assert f"stopped after event {made} of 1000000" in err, err


def test_print_into_a_closed_pipe_stops_and_says_so():
    """`--print | head -1`: once stdout is gone the run stops and says why
    (the events not written are not counted as printed). On
    main it went on to the end, counting every event "printed" (exit 0
    with 20000 events printed into nothing)."""
    r = subprocess.run(f"{PROG} --generate 20000 --print | head -1", shell=True,
                       capture_output=True, text=True, timeout=60 * SLOW)
    assert len(r.stdout.splitlines()) == 1
    assert "writing the events to stdout: Broken pipe: stopping" in r.stderr, r.stderr
    assert "printed 20000" not in r.stderr, r.stderr
    assert "stopped after event" in r.stderr, r.stderr
