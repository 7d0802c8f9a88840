"""Review 80: every partition assigned to a service is fetched.

librdkafka 2.0 (Debian 12's) starts a partition assigned to the group on its
main thread once the committed offset is in: it takes the partition's next
op version, then queues the start. An op is dropped when its version is
older than the partition's last one; a pause or resume the application
sends from its own thread takes a version too. One that took its version
in between and was queued first made the start "outdated": the partition
was never fetched, and nothing said so. The dispatcher and the retrier
resumed every partition they were assigned, right after the assignment,
which on a loaded machine can land there (seen once in a full run: the
Apache Kafka test of services started before their topics, an event
produced after the dispatcher was ready never delivered).

The interleaving is made certain here by an LD_PRELOAD shim that stands in
for the scheduler of a loaded machine, not for any part of hookbridge: it
holds librdkafka's main thread inside the first partition start (seen by
its debug line, HOOKBRIDGE_KAFKA_DEBUG=topic) until the application's next
pause or resume of that partition has been queued, and holds that pause or
resume until the main thread is there."""
import os
import uuid

from hbtest.clockshim import build_shim
from hbtest.procs import wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* 0: waiting for a start; 1: the main thread held in one; 2: the
 * application's op of that partition seen; 3: done */
static int state;
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
    if (st == 0 && (b = memmem(s, n, "[thrd:main]: ", 13)) &&
        (m = memmem(s, n, "]: rd_kafka_toppar_op_fetch_start:", 34)) && m > b &&
        (size_t)(m + 1 - (b + 13)) < sizeof(part)) {
        /* librdkafka's main thread has taken the start's version: held
         * until the application's op is queued (its debug line comes
         * just before), then a little longer */
        memcpy(part, b + 13, (size_t)(m + 1 - (b + 13)));
        part[m + 1 - (b + 13)] = '\0';
        __atomic_store_n(&state, 1, __ATOMIC_RELEASE);
        wait_while(1, 3000);
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

/* the application's pause or resume waits for the main thread to be in a start */
typedef int (*op_fn)(void *, void *);

static int held(const char *name, void *rk, void *parts) {
    op_fn real = (op_fn)dlsym(RTLD_NEXT, name);
    if (__atomic_load_n(&state, __ATOMIC_ACQUIRE) == 0)
        wait_while(0, 3000);
    return real(rk, parts);
}

int rd_kafka_resume_partitions(void *rk, void *parts) {
    return held("rd_kafka_resume_partitions", rk, parts);
}

int rd_kafka_pause_partitions(void *rk, void *parts) {
    return held("rd_kafka_pause_partitions", rk, parts);
}
"""


def shim():
    """The shim's path, built once per source text."""
    return build_shim(SHIM, "review80-shim")


def test_a_partition_whose_start_meets_a_resume_is_still_fetched(db_url, procs, workdir):
    """A dispatcher's first assignment, its partitions' starts on
    librdkafka's main thread meeting the dispatcher's own pause or resume
    (the shim above): before, the dispatcher resumed every partition just
    assigned, that resume made the start of partition 5 of 6 outdated
    (librdkafka's debug line `received outdated op FETCH_START`), and the
    events on that partition were never delivered (ready, no error, nothing
    in the log; their lag stayed). Now nothing is paused or resumed at an
    assignment (partitions revoked while paused are resumed at their
    revocation): every partition starts and every event is delivered."""
    broker = Broker(procs, workdir)
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                        args=["--quiet"])
    env = {"HOOKBRIDGE_KAFKA_DEBUG": "topic", "LD_PRELOAD": str(shim()),
           "ASAN_OPTIONS": ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"),
                                                  "verify_asan_link_order=0"]))}
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready(30)
    register_verified(db_url, receiver.url, ["user.session.start"])
    # distinct users: distinct keys, every partition gets some
    evs = [event("user.session.start", user=f"00u{uuid.uuid4().hex[:10]}") for _ in range(60)]
    produce(broker.bootstrap, evs)
    try:
        wait_until(lambda: len(receiver.events()) == len(evs), 20, "every event delivered")
    finally:
        out = d.proc.output()
        print("starts:", out.count("received op FETCH_START"),
              "outdated:", out.count("received outdated op FETCH_START"))
    assert "received outdated op FETCH_START" not in d.proc.output()
