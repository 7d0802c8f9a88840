"""A process's wall clock moved, for tests of clock skew and NTP steps: an
LD_PRELOAD shim built here (it stands in for a host whose clock is off, not
for any part of hookbridge) adds an offset to CLOCK_REALTIME (and its coarse
variant), gettimeofday and time; CLOCK_MONOTONIC is left alone, as NTP leaves
it. The offset is HB_TEST_CLOCK_AHEAD_S (seconds, fixed) plus, when
HB_TEST_CLOCK_FILE names a file, the seconds written in it, read again at
most every 100 ms: writing the file steps the running process's clock.

Why not libfaketime (review 70): Debian's 0.9.10, even with
FAKETIME_DONT_FAKE_MONOTONIC=1, shifts the deadline of every
pthread_cond_timedwait, so one on a CLOCK_MONOTONIC condition variable (what
hookbridge's timed waits and librdkafka's use) returns at once: a retrier
under FAKETIME=-90s does not start ("1 background thread(s) did not
initialize within 60 seconds"). This shim leaves those waits alone; a
deadline on CLOCK_REALTIME is off by the offset under it (nothing here
waits on one: lib/ uses hb_cond_init_mono).

The sanitizer pass: the shim comes before ASan's runtime in the library
list, which ASan accepts with verify_asan_link_order=0 (env() sets it)."""
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

CLOCK_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long fixed_ms, file_ms, checked_ns;
static int fixed_read;
static __thread int inside;

/* the real monotonic clock, bypassing libc (no recursion, no interposition) */
static long long mono_ns(void) {
    struct timespec ts;
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long offset_ms(void) {
    if (!fixed_read) {
        const char *s = getenv("HB_TEST_CLOCK_AHEAD_S");
        fixed_ms = s ? atoll(s) * 1000 : 0;
        fixed_read = 1;
    }
    const char *path = getenv("HB_TEST_CLOCK_FILE");
    long long now = mono_ns();
    if (path && !inside && now - checked_ns > 100000000LL) {
        char buf[64] = {0};
        inside = 1;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof(buf) - 1);
            close(fd);
            if (n > 0)
                file_ms = (long long)(strtod(buf, NULL) * 1000);
        }
        checked_ns = now;
        inside = 0;
    }
    return fixed_ms + file_ms;
}

static void shift(struct timespec *ts) {
    long long off = offset_ms(), ns = (long long)ts->tv_nsec + (off % 1000) * 1000000LL;
    ts->tv_sec += off / 1000 + (ns >= 1000000000LL) - (ns < 0);
    ts->tv_nsec = (long)((ns % 1000000000LL + 1000000000LL) % 1000000000LL);
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(id, ts);
    if (!rc && ts && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) shift(ts);
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    (void)tz;
    if (!rc && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
"""


def build_shim(source, name):
    """An LD_PRELOAD shim's path, built from C `source` once per source text
    (shared by the tests)."""
    tag = hashlib.sha256(source.encode()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"hbtest-{name}-{os.getuid()}-{tag}.so"
    if not out.exists():
        src = out.with_suffix(".c")
        src.write_text(source)
        tmp = out.with_suffix(f".{os.getpid()}.so")
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(tmp), str(src), "-ldl"],
                       check=True, timeout=60)
        os.replace(tmp, out)  # another test building it too: either copy is the same
    return out


def build():
    """The clock shim's path."""
    return build_shim(CLOCK_SHIM, "clockshim")


def env(ahead_s=None, step_file=None):
    """Environment for a process whose clock is ahead_s seconds off (< 0:
    behind) and follows step_file's offset (a SteppedClock's path)."""
    out = {"LD_PRELOAD": str(build()),
           "ASAN_OPTIONS": ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"),
                                                  "verify_asan_link_order=0"]))}
    if ahead_s is not None:
        out["HB_TEST_CLOCK_AHEAD_S"] = str(int(ahead_s))
    if step_file is not None:
        out["HB_TEST_CLOCK_FILE"] = str(step_file)
    return out


class SteppedClock:
    """A clock offset a running process follows (within 100 ms): step(s)
    moves it to s seconds off the real time, as NTP steps a clock."""

    def __init__(self, path, seconds=0):
        self.path = Path(path)
        self.step(seconds)

    def step(self, seconds):
        tmp = self.path.with_suffix(".new")
        tmp.write_text(f"{seconds}\n")
        os.replace(tmp, self.path)

    def env(self, ahead_s=None):
        return env(ahead_s, self.path)
