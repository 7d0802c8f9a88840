"""Review 43: the ingest spool's replay as c32e07f made it (a round of up to
256 files and 20,000 events produced together, then their acks awaited).
Each test fails on c32e07f. Real parts on loopback: the producer
(hookbridge-producer --listen) and the devbroker (SIGUSR1 takes every broker
down, SIGUSR2 brings them back)."""
import os
import signal
import time

import pytest

from hbtest.ingest import Ingest
from hbtest.procs import SLOW, wait_until
from test_ingest_spool import (BYTES, DELIVERIES, REPLAYED, REPLAYING, body_of, brokers_down,
                               brokers_up, lines, said, spool_env, spool_full_of_a_bad_file,
                               spooled, user_event, wait_published)


def rss_mib(pid, field="VmHWM"):
    """The process's resident memory (VmRSS), or its peak (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def small_quarantine():
    """ASAN_OPTIONS for a process whose memory is measured: ASan keeps what
    is freed aside (256 MiB by default), which a measure would count."""
    return os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=4"


def spooled_backlog(spool, n):
    """A spool directory holding n one-event deliveries, spooled a minute
    ago, oldest first by name, as a stopped producer would have left them."""
    spool.mkdir(mode=0o700)
    start = int(time.time() * 1000) - 60000
    for i in range(n):
        (spool / ("%016x-%08x.okta" % (start + i, i))).write_bytes(body_of([user_event()]))
    return spool

def test_a_replay_round_holds_a_few_mib_of_the_spool_not_hundreds(broker, procs, workdir):
    """A replay round took up to 256 files, whatever their size, and
    produced them all before awaiting an ack: with large deliveries (the
    4 MiB HOOKBRIDGE_INGEST_MAX_BODY_BYTES allows; 64 MiB if raised) the
    round held them all in librdkafka's queue at once (its own limit is
    1 GiB). With the brokers away, 24 spooled deliveries of 3.9 MB took
    the process from about 40 to 130 MiB within 4 s (a full 1 GiB spool: a
    gigabyte, past the manifest's 512 MiB limit: OOM-killed, restarted,
    the same round again). The round is now bounded in bytes too, as one
    file at a time was before c32e07f; the files are still all published
    once the brokers are back."""
    env = {"ASAN_OPTIONS": small_quarantine(), "HOOKBRIDGE_INGEST_TIMEOUT": "10s"}
    empty = Ingest(procs, broker.bootstrap, name="ingest-baseline",
                   extra_env=spool_env(workdir / "empty", **env))
    empty.wait_ready()
    time.sleep(0.5)
    base = rss_mib(empty.proc.p.pid)
    empty.proc.stop()

    spool = workdir / "spool"
    spool.mkdir(mode=0o700)
    start = int(time.time() * 1000) - 60000
    for i in range(24):  # 20 events of 195 KB each (256 KiB is the most one event may be)
        events = [dict(user_event(), displayMessage="x" * 195000) for _ in range(20)]
        (spool / ("%016x-%08x.okta" % (start + i, i))).write_bytes(body_of(events))
    total = sum(p.stat().st_size for p in spool.iterdir()) / 2**20
    brokers_down(broker)
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(spool, **env))
    pid = ing.proc.p.pid
    peak = base
    until = time.monotonic() + 5 * SLOW
    while time.monotonic() < until and peak - base < total / 2:
        peak = rss_mib(pid)
        time.sleep(0.1)
    assert peak - base < 40, (f"{peak:.0f} MiB at the peak, {base:.0f} MiB without a spool: "
                              f"the replay holds {peak - base:.0f} MiB of the {total:.0f} MiB "
                              "spooled")

    brokers_up(broker)
    wait_until(lambda: not spooled(spool) or None, 30, "the spool published")
    wait_until(lambda: (ing.metric(DELIVERIES), ing.metric(BYTES)) == (0, 0) or None, 5,
               "the gauges at 0")
    assert ing.metric(REPLAYED) == 24


def test_a_failed_round_is_one_warning_and_leaves_room_for_the_spool_s_others(
        broker, procs, workdir):
    """A round the brokers did not take logged "not published yet" once per
    file: up to 256 lines a round, through the limit every "ingest spool
    ..." line shares (then 50 lines per 10 s). With 120 deliveries spooled
    and the brokers away, the first round spent the window's 50 lines, and the
    warning that the spool is full (this delivery answered as without a
    spool: 503 once the ingest timeout passes) was not written: the
    operator saw 503s, and lines about the files, not why. Now a round says
    once what it could not publish (its first file, and how many more)."""
    spool = spooled_backlog(workdir / "spool", 120)
    brokers_down(broker)
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(
        spool, HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES=str(120 * 4096),  # full with them
        HOOKBRIDGE_INGEST_TIMEOUT="1s", HOOKBRIDGE_LOG_LEVEL="info"))  # at debug, no limit
    wait_until(lambda: said(ing, "warn", "not published yet") or None, 10,
               "the first round to fail")
    status, _, answer = ing.post([user_event()])
    assert status == 503, answer
    assert said(ing, "warn", "ingest spool", "is full"), [
        l["msg"] for l in lines(ing) if l["level"] == "warn"][-5:]
    rounds = said(ing, "warn", "not published yet")
    assert len(rounds) < 5, f"{len(rounds)} lines"
    first = rounds[0]["msg"]
    assert spooled(spool)[0].name in first and "and 119 more" in first, first


def test_a_bad_file_the_operator_deletes_gives_its_room_back(broker, procs, workdir):
    """A spooled file set aside as .bad keeps counting in the spool's bytes
    (it is still on the volume). The operator who deleted it, having read
    the error line, saw nothing change: /readyz stayed 503 "the ingest
    spool is full" (the brokers away) and hookbridge_ingest_spool_bytes kept
    its size until the process restarted. (HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES
    8192: a garbled file of 5000 bytes, two 4 KiB blocks, fills it.) Now the
    spool notices within about a second that the file is gone."""
    ing, spool, bad = spool_full_of_a_bad_file(procs, broker, workdir)
    brokers_down(broker)
    wait_until(lambda: "spool is full" in ing.ops("/readyz")[1] or None, 5,
               "/readyz to say the spool is full of it")
    assert ing.ops("/readyz")[0] == 503
    assert ing.metric(BYTES) == 8192
    bad.unlink()
    ing.wait_ready(5)
    wait_until(lambda: ing.metric(BYTES) == 0 or None, 5, "its bytes counted out")
    # the room is back: a delivery, the brokers still away, goes to the spool
    sent = [user_event()]
    status, _, answer = ing.post(sent)
    assert status == 200 and answer == {"spooled": 1, "acknowledged": 0}, answer
    brokers_up(broker)
    wait_published(spool, broker.bootstrap, sent, "brokers back")


def test_a_file_that_cannot_be_read_for_now_does_not_hold_up_the_spool_behind_it(
        broker, procs, workdir):
    """A spooled file whose read fails in a way that may pass (an I/O error:
    a bad sector; out of descriptors) is tried again later, rightly, but
    being the oldest it was taken first by every round, and the round
    stopped there: not one file behind it was ever published (the spool
    filling up, then not ready), for as long as the error lasted. And a
    round that published 255 files but not that one backed off as after an
    outage, 1, 2, 4, 8, 16, then 30 s between rounds. Now the file waits for
    the next round while its round goes on, and a round that published
    files waits 1 s, not longer. (The stand-in for a bad sector: a symlink
    to a sysfs file, whose read is always shorter than its size.)"""
    target = "/sys/class/net/lo/mtu"
    if not os.path.exists(target) or os.stat(target).st_size <= len(open(target).read()):
        pytest.skip(f"needs {target}, shorter than its size")
    spool = workdir / "spool"
    spool.mkdir(mode=0o700)
    start = int(time.time() * 1000) - 60000
    stuck = spool / ("%016x-%08x.okta" % (start, 0))
    stuck.symlink_to(target)
    for i in range(1, 1201):
        (spool / ("%016x-%08x.okta" % (start + i, i))).write_bytes(body_of([user_event()]))
    t0 = time.monotonic()
    ing = Ingest(procs, broker.bootstrap, wait=False, extra_env=spool_env(spool))
    wait_until(lambda: spooled(spool) == [stuck] or None, 20 * SLOW,
               "every other delivery published")
    took = time.monotonic() - t0
    assert took < 10 * SLOW, f"{took:.0f} s"
    assert said(ing, "warn", stuck.name, "short read", "tried again later"), lines(ing)[-5:]
    wait_until(lambda: ing.metric(DELIVERIES) == 1 or None, 5, "the gauge at 1")
    assert ing.metric(REPLAYED) == 1200


def test_a_round_cut_short_by_the_stop_is_not_said_to_be_tried_again(broker, procs, workdir):
    """SIGTERM while a round waits for the brokers' acks (they are away):
    the round's files were each said "not published yet ... tried again
    later" (now one line for the round) by a process about to exit, which
    tries nothing again. Now the round cut short says so at info, and the
    stop's own warning counts what stays on the spool."""
    spool = spooled_backlog(workdir / "spool", 50)
    brokers_down(broker)
    ing = Ingest(procs, broker.bootstrap,
                 extra_env=spool_env(spool, HOOKBRIDGE_INGEST_TIMEOUT="10s"))
    # the round's events produced, their acks awaited
    wait_until(lambda: ing.metric(REPLAYING) == 50, 10, "the round of 50 in flight")
    ing.proc.signal(signal.SIGTERM)
    assert ing.proc.p.wait(30 * SLOW) == 0
    assert not said(ing, "warn", "not published yet"), said(ing, "warn", "not published yet")
    assert said(ing, "info", "the stop ended a replay round", "50 of its deliveries")
    stay = said(ing, "warn", "stay on the ingest spool")
    assert len(stay) == 1 and stay[0]["msg"].startswith("stopping: 50 deliveries"), stay
    assert len(spooled(spool)) == 50
