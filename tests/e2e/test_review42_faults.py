"""Review 42: a careful read of the ingest endpoint's durable spool
(producer/spool.c, producer/ingest.c as of f90f36a). Each test fails on
f90f36a. Real parts on loopback: the producer (hookbridge-producer --listen)
and the devbroker (SIGUSR1 takes every broker down, SIGUSR2 brings them back).
"""
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import time
import uuid

import pytest

from hbtest.ingest import AUTH_HEADER, AUTH_VALUE, PATH, Ingest, envelope, topic_messages
from hbtest.procs import SLOW, wait_until
from test_delivery import event
from test_ingest_spool import brokers_down, brokers_up

FAILURES = "hookbridge_ingest_spool_failures_total"


def user_event():
    return event("user.session.start", user="00u" + uuid.uuid4().hex[:10])


def spool_env(spool, **more):
    env = {"HOOKBRIDGE_INGEST_SPOOL_DIR": str(spool), "HOOKBRIDGE_INGEST_SPOOL_WAIT": "300ms",
           "HOOKBRIDGE_INGEST_TIMEOUT": "1s"}
    env.update(more)
    return env


def spooled(spool):
    return sorted(p.name for p in spool.iterdir() if p.name.endswith(".okta"))


def users_on(bootstrap):
    return {m.key.decode() for m in topic_messages(bootstrap)}


def mounted_tmpfs(workdir, size):
    """For a fixture: a tmpfs of `size` (tmpfs's size=, e.g. 64k) at
    workdir/small (root only: the test is skipped otherwise), unmounted
    after the test, also when it fails."""
    d = workdir / "small"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
            capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture
def small_fs(workdir):
    """A 64 KiB tmpfs (root only), unmounted after the test."""
    yield from mounted_tmpfs(workdir, "64k")


def test_a_full_disk_with_the_brokers_away_makes_the_endpoint_not_ready(broker, procs, small_fs):
    """The spool's readiness was bytes < HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES
    only. On a disk that is full (or failing, or remounted read-only) with
    the brokers away, every delivery failed to spool, waited the ingest
    timeout and was answered 503, yet /readyz said 200 all along: the load
    balancer kept sending Okta's deliveries to an endpoint that could only
    lose them (without a spool it would have said not ready).

    Now a spool that cannot write counts as no spool for readiness (the
    brokers decide) until a write succeeds again; brokers back, ready."""
    spool = small_fs / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(spool))
    ing.wait_ready()
    brokers_down(broker)
    pad = "x" * 12000  # about 12 KB a delivery: a few fill the 64 KiB
    answers = []
    for _ in range(8):
        ev = user_event()
        ev["displayMessage"] = pad
        answers.append(ing.post([ev]))
        if answers[-1][0] != 200:
            break
    assert answers[0][0] == 200 and "spooled" in answers[0][2], answers[0]
    assert answers[-1][0] == 503, [a[:1] + (a[2],) for a in answers]
    assert ing.metric(FAILURES) >= 1
    # the endpoint can neither spool nor produce: not ready
    wait_until(lambda: ing.ops("/readyz")[0] == 503 or None, 5 * SLOW,
               "/readyz to say not ready (disk full, brokers away)")
    assert "spool" in ing.ops("/readyz")[1], ing.ops("/readyz")
    brokers_up(broker)
    wait_until(lambda: ing.ops("/readyz")[0] == 200 or None, 30 * SLOW, "ready again")
    wait_until(lambda: not spooled(spool) or None, 40 * SLOW, "the spool published")


def test_a_large_backlog_on_the_spool_does_not_hold_the_start(broker, procs, workdir):
    """hb_spool_open queued the files it found by insertion into a sorted
    array (a memmove per file, in the directory's order) and hb_spool_take
    took the oldest by moving all the others: quadratic in the files. With
    80,000 small deliveries left on the spool (a full 1 GiB spool of
    Okta-sized deliveries holds hundreds of thousands) the producer was not
    even listening, its health port neither, for 6 to 7 s (50,000: 3.2 s; a
    liveness probe restarts it, and the next start scans again). Now a
    heap: the scan of 80,000 files takes a fraction of a second, and they
    are all published in order."""
    spool = workdir / "spool"
    spool.mkdir()
    body = json.dumps(envelope([])).encode()  # no event: published without the brokers
    n = 80000
    base = int(time.time() * 1000) - 10 * n
    for i in range(n):
        fd = os.open(str(spool / ("%016x-%08x.okta" % (base + i, i))),
                     os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, body)
        os.close(fd)
    t0 = time.monotonic()
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(spool), wait=False)
    wait_until(lambda: ing.ops("/healthz")[0] == 200 or not ing.proc.alive() or None, 30 * SLOW,
               "the health port")
    took = time.monotonic() - t0
    assert took < 3 * SLOW, f"listening {took:.1f} s after the start with {n} files spooled"
    wait_until(lambda: not spooled(spool) or None, 30 * SLOW, "the backlog published")
    names = [json.loads(l)["msg"].split()[2] for l in ing.proc.output().splitlines()
             if '"ingest spool: published ' in l and '.okta (' in l]  # not the rounds' lines
    assert len(names) == n and names == sorted(names)


def lowest_free_fd(pid):
    """The descriptor the process's next open(2) would get."""
    used = {int(f) for f in os.listdir(f"/proc/{pid}/fd")}
    return next(i for i in range(len(used) + 1) if i not in used)


def test_a_spooled_file_the_replay_cannot_open_for_now_is_not_set_aside_for_good(
        broker, procs, workdir):
    """replay_one took any failure to read a spooled file (EMFILE under a
    burst of connections, ENFILE, ENOMEM, EIO) as "unreadable": the file was
    renamed .bad, counted out and never published, though it was answered
    200 to Okta and its bytes were intact. Now only a file that is gone is
    given up; the others are tried again with the replay's backoff."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(spool))
    ing.wait_ready()
    brokers_down(broker)
    ev = user_event()
    status, _, body = ing.post([ev])
    assert status == 200 and body.get("spooled") == 1, body
    out = ing.proc.output
    wait_until(lambda: "not published yet" in out() or None, 15 * SLOW, "a first replay")
    # no descriptor left for the process (as under a burst of connections)
    pid = ing.proc.p.pid
    old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_fd(pid), old[1]))
    try:
        wait_until(lambda: [l for l in out().splitlines()
                            if "ingest spool: cannot read" in l and "Too many open files" in l]
                   or None, 20 * SLOW, "the replay to meet EMFILE")
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
    brokers_up(broker)
    wait_until(lambda: ev["actor"]["id"] in users_on(broker.bootstrap) or None, 30 * SLOW,
               "the spooled event on the topic")
    wait_until(lambda: not spooled(spool) or None, 10 * SLOW, "the spool emptied")
    assert not [p for p in spool.iterdir() if p.name.endswith(".bad")]
    assert ing.metric(FAILURES) == 0


def test_a_delivery_the_brokers_refuse_for_good_does_not_hold_up_the_spool_behind_it(
        broker, procs, workdir):
    """An event the brokers will never take (larger than message.max.bytes,
    the producer's or the topic's) had its delivery answered 200 from the
    spool ("a produce error"), and the replay tried that file again, oldest
    first, for ever: every delivery spooled after it waited behind it, never
    published (the spool filling up, then 503s). Now the replay sets a file
    whose events are refused as too large aside (.bad, logged at error,
    counted in the failures) and goes on with the next."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap,
                 extra_env=spool_env(spool, HOOKBRIDGE_KAFKA_MESSAGE_MAX_BYTES="3000"))
    ing.wait_ready()
    big = user_event()
    big["displayMessage"] = "x" * 6000  # accepted (under 256 KiB), over 3000 bytes
    status, _, body = ing.post([big])
    assert status == 200 and body.get("spooled") == 1, body
    # the brokers away a moment: this one is answered from the spool too
    brokers_down(broker)
    ev = user_event()
    status, _, body = ing.post([ev])
    assert status == 200 and body.get("spooled") == 1, body
    time.sleep(3)  # its messages time out (HOOKBRIDGE_INGEST_TIMEOUT 1s): the replay's now
    brokers_up(broker)
    wait_until(lambda: ev["actor"]["id"] in users_on(broker.bootstrap) or None, 30 * SLOW,
               "the delivery behind the refused one on the topic")
    wait_until(lambda: not spooled(spool) or None, 10 * SLOW, "the spool emptied")
    bad = [p.name for p in spool.iterdir() if p.name.endswith(".okta.bad")]
    assert len(bad) == 1, list(spool.iterdir())
    assert big["actor"]["id"] not in users_on(broker.bootstrap)
    assert ing.metric(FAILURES) == 1
    errors = [json.loads(l) for l in ing.proc.output().splitlines()
              if l.startswith("{") and '"level":"error"' in l and bad[0][:-4] in l]
    assert errors, "an error line naming the file"


def test_a_delivery_during_the_stop_s_drain_is_still_produced(broker, procs, workdir):
    """At SIGTERM the stop cut every spooled request short: produce_event
    refused to queue any event of it ("the producer is stopping"). A
    delivery Okta sent on a kept-alive connection during the drain (while
    another request still held it) was answered 200 from the spool with
    nothing produced, the brokers up and well: it stayed on this pod's disk
    until the next start with the same directory (never, for a pod that
    is replaced on another node). Now its events are still produced (the
    answer does not wait for them); the stop's flush has their acks and the
    file goes."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(spool))
    ing.wait_ready()
    keep = http.client.HTTPConnection("127.0.0.1", ing.port, timeout=20 * SLOW)
    hdrs = {AUTH_HEADER: AUTH_VALUE, "Content-Type": "application/json"}
    keep.request("POST", PATH, body=json.dumps(envelope([user_event()])), headers=hdrs)
    first = keep.getresponse()
    assert first.status == 200 and json.loads(first.read()) == {"produced": 1}
    # a request whose body is still coming holds the drain
    slow = socket.create_connection(("127.0.0.1", ing.port))
    slow.sendall((f"POST {PATH} HTTP/1.1\r\nHost: x\r\n{AUTH_HEADER}: {AUTH_VALUE}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{").encode())
    time.sleep(0.3 * SLOW)
    ing.proc.signal(signal.SIGTERM)
    wait_until(lambda: "stopping" in ing.ops("/readyz")[1] or None, 5 * SLOW, "the stop")
    ev = user_event()
    keep.request("POST", PATH, body=json.dumps(envelope([ev])), headers=hdrs)
    answer = keep.getresponse()
    assert answer.status == 200, answer.read()
    answer.read()
    keep.close()
    time.sleep(0.5 * SLOW)
    slow.close()
    assert ing.proc.p.wait(30 * SLOW) == 0
    assert ev["actor"]["id"] in users_on(broker.bootstrap)
    assert not spooled(spool)


def test_spooled_files_replaced_or_deleted_by_hand_do_not_hold_up_the_others(
        broker, procs, workdir):
    """The other side of the test above (a guard, passes on f90f36a too): a
    spooled file an operator deleted is given up, one replaced by something
    that is no file (a directory) is set aside as .bad, both counted in the
    failures, and the delivery spooled after them is published."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap,
                 extra_env=spool_env(spool, HOOKBRIDGE_INGEST_TIMEOUT="3s"))
    ing.wait_ready()
    brokers_down(broker)
    sent = [user_event() for _ in range(3)]
    for ev in sent:
        status, _, body = ing.post([ev])
        assert status == 200 and body.get("spooled") == 1, body
    names = spooled(spool)
    assert len(names) == 3
    # replaced while their first messages still wait for the brokers, so the
    # replay reads them only afterwards (CI run 81, sanitizers: replaced after
    # 3 s, one had been read already and was published, and its name, now a
    # directory, could not be deleted)
    (spool / names[0]).unlink()
    (spool / names[1]).unlink()
    (spool / names[1]).mkdir()
    time.sleep(5)  # their messages time out (HOOKBRIDGE_INGEST_TIMEOUT 3s): the replay's now
    brokers_up(broker)
    wait_until(lambda: sent[2]["actor"]["id"] in users_on(broker.bootstrap) or None, 30 * SLOW,
               "the third delivery on the topic")
    wait_until(lambda: not spooled(spool) or None, 10 * SLOW, "the spool emptied")
    assert (spool / (names[1] + ".bad")).is_dir()
    wait_until(lambda: ing.metric(FAILURES) == 2 or None, 5 * SLOW, "two failures counted")
    wait_until(lambda: ing.metric("hookbridge_ingest_spool_deliveries") == 0 or None, 5 * SLOW,
               "the gauge at 0")
