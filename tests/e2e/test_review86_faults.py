"""Review 86: the consumer's pauses across rebalances.

A service that takes no message for 3 s (its subscription store waiting for
the database, the HTTP queue full) pauses librdkafka's fetching and serves
the group's queue without taking messages (hb_consumer_keepalive); a
rebalance is served there, and partitions assigned meanwhile are paused
before they are assigned, so that none of their messages comes out of the
queue served there; the next keep-alive (3 s later) or the next message
taken resumes them, the others are resumed at the end of the keep-alive.

librdkafka 2.0 (Debian 12's) starts an assigned partition on its main
thread: it takes the partition's next op version, then queues the start; a
pause or resume the application sends from its thread in between, queued
first, makes the start outdated and the partition is never fetched
(review 80; librdkafka #5591). The shim below stands in for a loaded
machine's scheduler, not for any part of hookbridge: once the service has
paused its fetching for the keep-alive and partitions are assigned, it holds
the application's next resume until librdkafka's main thread is in the
start of a partition, and holds that thread there until the application's
op of that partition is logged (1.5 s at most)."""
import os
import re
import uuid

import psycopg2

from hbtest.clockshim import build_shim
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified

START = "rd_kafka_toppar_op_fetch_start:"
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* -2: not armed; -1: fetching paused for the keep-alive; 0: partitions
 * assigned since, waiting for a start; 1: the main thread held in one; 2:
 * the application's op of that partition seen; 3: done */
static int state = -2;
static char part[256]; /* "TOPIC [N]" of the start held */

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void wait_while(int s, int max_ms) {
    for (int i = 0; i < max_ms && __atomic_load_n(&state, __ATOMIC_ACQUIRE) == s; i++)
        sleep_ms(1);
}

ssize_t write(int fd, const void *buf, size_t n) {
    const char *s = buf, *b, *m;
    char mark[300];
    int st = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
    if (st == -2 && memmem(s, n, "fetching paused, the consumer group still served", 48)) {
        __atomic_store_n(&state, -1, __ATOMIC_RELEASE);
    } else if (st == -1 && memmem(s, n, "\"msg\":\"assigned ", 16) &&
               !memmem(s, n, "assigned 0 ", 11)) {
        __atomic_store_n(&state, 0, __ATOMIC_RELEASE);
    } else if (st == 0 && (b = memmem(s, n, "[thrd:main]: ", 13)) &&
               (m = memmem(s, n, "]: rd_kafka_toppar_op_fetch_start:", 34)) && m > b &&
               (size_t)(m + 1 - (b + 13)) < sizeof(part)) {
        /* the start has its version: held until the application's op of
         * the partition is queued (its debug line comes just before) */
        memcpy(part, b + 13, (size_t)(m + 1 - (b + 13)));
        part[m + 1 - (b + 13)] = '\0';
        __atomic_store_n(&state, 1, __ATOMIC_RELEASE);
        wait_while(1, 1500);
        sleep_ms(100);
        __atomic_store_n(&state, 3, __ATOMIC_RELEASE);
    } else if (st == 1 && !memmem(s, n, "[thrd:main]", 11)) {
        snprintf(mark, sizeof(mark), "Resume %s (v", part);
        if (memmem(s, n, mark, strlen(mark)))
            __atomic_store_n(&state, 2, __ATOMIC_RELEASE);
        snprintf(mark, sizeof(mark), "Pause %s (v", part);
        if (memmem(s, n, mark, strlen(mark)))
            __atomic_store_n(&state, 2, __ATOMIC_RELEASE);
    }
    return syscall(SYS_write, fd, buf, n);
}

/* a resume after the assignment waits for the main thread to be in a start */
typedef int (*op_fn)(void *, void *);

int rd_kafka_resume_partitions(void *rk, void *parts) {
    op_fn real = (op_fn)dlsym(RTLD_NEXT, "rd_kafka_resume_partitions");
    if (__atomic_load_n(&state, __ATOMIC_ACQUIRE) == 0)
        wait_while(0, 3000);
    return real(rk, parts);
}
"""


def test_partitions_assigned_while_a_service_waits_for_the_database_are_fetched_after(
        db_url, procs, workdir, apache_kafka):
    """Two dispatchers; the subscriptions are locked (a change notified whose
    load waits: the database not answering), so neither takes a message and
    both pause their fetching after 3 s; the second stops, and the first is
    assigned its partitions while it waits.

    Before, the pause of the keep-alive lasted no longer than the loop pass:
    the last resort's check (hb_consumer_limit), finding nothing to hold
    back, resumed every partition in the same pass, every 3 s, including
    the ones just assigned, whose start was under way (the shim: librdkafka's
    debug line `received outdated op FETCH_START`): that partition was not
    fetched again, its events not delivered (none of them in 20 s, the
    dispatcher ready, no error). Now the partitions assigned there are
    resumed only at the next keep-alive (3 s later) or once a message is
    taken: they start, and are fetched once the database answers; every
    event is delivered."""
    space = apache_kafka.space()
    rcv = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                   args=["--quiet"])
    env = {"HOOKBRIDGE_KAFKA_DEBUG": "topic", "LD_PRELOAD": str(build_shim(SHIM, "review86")),
           "ASAN_OPTIONS": ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"),
                                                  "verify_asan_link_order=0"]))}
    first = Dispatcher(procs, db_url, space.bootstrap, extra_env=env, name="dispatcher1")
    second = Dispatcher(procs, db_url, space.bootstrap, name="dispatcher2",
                        extra_env={"HOOKBRIDGE_SHUTDOWN_TIMEOUT": "1s"})
    first.wait_ready()
    second.wait_ready()
    sub = register_verified(db_url, rcv.url, ["user.session.start"])
    wait_until(lambda: re.search(r"assigned [1-9]", first.proc.output()) and
               re.search(r"assigned [1-9]", second.proc.output()), 30 * SLOW,
               "both dispatchers to have partitions")
    lock = psycopg2.connect(db_url)
    notify = psycopg2.connect(db_url)
    try:
        lock.cursor().execute("LOCK TABLE hookbridge.subscriptions IN ACCESS EXCLUSIVE MODE")
        notify.autocommit = True
        notify.cursor().execute("SELECT pg_notify('hookbridge_subscriptions', %s)", (str(sub),))
        wait_until(lambda: "fetching paused, the consumer group" in first.proc.output(),
                   8 * SLOW, "the first dispatcher to pause its fetching")
        starts = first.proc.output().count(START)
        second.proc.stop()
        wait_until(lambda: len(re.findall(r"assigned [1-9]", first.proc.output())) >= 2,
                   20 * SLOW, "the first dispatcher to take over the second's partitions")
        # the database answers again once the shim has let the start go (its
        # debug line is written then): what resumes the partitions afterwards
        # cannot meet it
        wait_until(lambda: first.proc.output().count(START) > starts, 8 * SLOW,
                   "the first start of a partition taken over")
    finally:
        lock.rollback()
        lock.close()
        notify.close()
    # distinct users: distinct keys, every partition gets some
    evs = [event("user.session.start", user=f"00u{uuid.uuid4().hex[:10]}") for _ in range(60)]
    produce(space.bootstrap, evs)
    out = first.proc.output()
    print("outdated starts:", out.count("received outdated op FETCH_START"))
    wait_until(lambda: len({e["uuid"] for _, e in rcv.events()} & {e["uuid"] for e in evs})
               == len(evs), 20 * SLOW, "every event delivered")
    assert "received outdated op FETCH_START" not in first.proc.output()
