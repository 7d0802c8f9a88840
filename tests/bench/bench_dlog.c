/*
 * PostgreSQL's cost per logged attempt: hb_dlog writing a fixed load into
 * the database named by HOOKBRIDGE_DATABASE_URL (a migrated one), without
 * Kafka or HTTP.
 *
 * BENCH_DLOG_DELIVERIES (default 20,000) deliveries over 50 subscriptions:
 * 90% delivered at the first attempt; 10% fail once (retry), then are
 * delivered at the second attempt, logged in a later batch as the retrier
 * would. Every row is tokened (as the services log) and the program waits
 * for all of them to be committed. Prints attempts/s as seen by the writer;
 * the server's side is read with pg_stat_statements (total_exec_time of the
 * upsert and the insert, triggers included) by the caller:
 *
 * BENCH_DLOG_CLOCK_MS=T makes the rows the same on every run (attempt k
 * starts at T + k ms instead of now), so that two writers' tables can be
 * compared row for row (md5 of every row); BENCH_DLOG_AGAIN=1 logs every
 * first attempt a second time after it is committed (as after a crash),
 * which must change nothing; BENCH_DLOG_ODD=1 adds, in the first batches,
 * rows of every other kind the services log (a final failure with its body,
 * a dropped delivery, an id in capitals, invalid UTF-8, an id that is no
 * uuid, which the database rejects).
 *
 *   psql "$URL" -c "SELECT pg_stat_statements_reset()"; bench_dlog;
 *   psql "$URL" -c "SELECT calls, rows, total_exec_time, left(query, 60)
 *                     FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 5"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "hb_common.h"
#include "hb_dlog.h"

/* CPU seconds (user + system) of the process (RUSAGE_SELF) or of the calling
 * thread (RUSAGE_THREAD). */
static double cpu_s(int who) {
    struct rusage ru;
    if (getrusage(who, &ru) != 0)
        return 0;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void uuid_str(char *out, uint64_t a, uint64_t b) {
    snprintf(out, 37, "%08x-%04x-4%03x-8%03x-%012llx", (unsigned)(a >> 32),
             (unsigned)(a >> 16) & 0xffff, (unsigned)a & 0xfff, (unsigned)(b >> 48) & 0xfff,
             (unsigned long long)(b & 0xffffffffffffull));
}

static void drain(hb_dlog_t *dl, size_t want) {
    void *tok[1024];
    size_t got = 0;
    while (got < want) {
        size_t n = hb_dlog_take_flushed(dl, tok, 1024);
        got += n;
        if (n == 0) {
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        }
    }
}

static const char snippet[] = "{\"ok\":true}";

/* A delivery's first attempt: delivered, or (fail) HTTP 503 and retried;
 * logged through dl, or (dl NULL) only copied into a row and freed, to time
 * that copy (what the calling thread pays). */
static void first_attempt(hb_dlog_t *dl, const char *id, const char *sub, int fail,
                          int64_t started_ms) {
    hb_attempt_t a = {
        .delivery_id = id,
        .subscription_id = sub,
        .event_ids = "7f1c1f0e-2b9a-4c1e-9d2a-5b0d6f3e8a11",
        .event_type = "user.session.start",
        .attempt = 1,
        .started_ms = started_ms,
        .duration_ms = 12,
        .http_status = fail ? 503 : 204,
        .outcome = fail ? HB_OUTCOME_RETRY : HB_OUTCOME_DELIVERED,
        .error = fail ? "HTTP 503" : NULL,
        .response_snippet = snippet,
    };
    if (dl)
        hb_dlog_add(dl, &a, (void *)1);
    else
        hb_dlog_row_free(hb_dlog_row_new(&a));
}

/* Rows of the other kinds (BENCH_DLOG_ODD); returns how many. */
static long odd_rows(hb_dlog_t *dl, const char *sub, int64_t at_ms) {
    static const char *const ids[] = {"0b5e2f4a-1c3d-4e5f-8a9b-0c1d2e3f4a5b",
                                      "0B5E2F4A-1C3D-4E5F-8A9B-0C1D2E3F4A5C",
                                      "0b5e2f4a-1c3d-4e5f-8a9b-0c1d2e3f4a5d", "not-a-uuid",
                                      "0b5e2f4a-1c3d-4e5f-8a9b-0c1d2e3f4a5e"};
    static const hb_outcome_t oc[] = {HB_OUTCOME_FAILED, HB_OUTCOME_RETRY, HB_OUTCOME_DROPPED,
                                      HB_OUTCOME_DELIVERED, HB_OUTCOME_RETRY};
    for (int i = 0; i < 5; i++) {
        hb_attempt_t a = {
            .delivery_id = ids[i],
            .subscription_id = sub,
            .event_ids =
                "7f1c1f0e-2b9a-4c1e-9d2a-5b0d6f3e8a11,8f1c1f0e-2b9a-4c1e-9d2a-5b0d6f3e8a12",
            .event_type = "user.\xff.start",
            .attempt = oc[i] == HB_OUTCOME_DROPPED ? 0 : 3,
            .started_ms = at_ms + i,
            .first_attempt_ms = at_ms - 1000,
            .duration_ms = 30000,
            .http_status = oc[i] == HB_OUTCOME_DELIVERED ? 200 : 0,
            .outcome = oc[i],
            .error = oc[i] == HB_OUTCOME_DELIVERED ? NULL : "timeout \"after\" 30 s\\ \xc3(",
            .response_snippet = i == 1 ? "" : NULL,
            .body = "{\"data\":{\"x\":\"\\u00e9\"}}",
            .content_type = "application/cloudevents+json",
        };
        hb_dlog_add(dl, &a, (void *)1);
    }
    return 5;
}

int main(void) {
    const char *url = getenv("HOOKBRIDGE_DATABASE_URL");
    const char *nenv = getenv("BENCH_DLOG_DELIVERIES");
    const char *clock = getenv("BENCH_DLOG_CLOCK_MS");
    const char *again = getenv("BENCH_DLOG_AGAIN");
    const char *odd = getenv("BENCH_DLOG_ODD");
    int64_t fixed_ms = clock ? strtoll(clock, NULL, 10) : 0, tick = 0;
    long n = nenv ? strtol(nenv, NULL, 10) : 20000;
    char subs[50][37], errstr[256];
    hb_dlog_t *dl;
    int64_t t0, t1;
    double copy_s, writer_s, c0;
    long attempts = 0, retried = 0;
    char(*ids)[37];
    unsigned char *fail;
    int64_t *started;

    if (!url || n <= 0) {
        fprintf(stderr, "set HOOKBRIDGE_DATABASE_URL to a migrated database\n");
        return 2;
    }
    for (int i = 0; i < 50; i++)
        uuid_str(subs[i], next_rand(), next_rand());
    ids = calloc((size_t)n, sizeof(*ids));
    fail = calloc((size_t)n, sizeof(*fail));
    started = calloc((size_t)n, sizeof(*started));
    dl = hb_dlog_new(url, 50, 100000, errstr, sizeof(errstr));
    if (!dl || !ids || !fail || !started) {
        fprintf(stderr, "bench_dlog: %s\n", errstr);
        return 1;
    }
    t0 = hb_mono_ms();
    for (long i = 0; i < n; i++) {
        fail[i] = next_rand() % 10 == 0;
        uuid_str(ids[i], next_rand(), next_rand());
        started[i] = fixed_ms ? fixed_ms + tick++ : hb_wall_ms();
        first_attempt(dl, ids[i], subs[i % 50], fail[i], started[i]);
        attempts++;
        retried += fail[i];
    }
    if (odd && !strcmp(odd, "1"))
        attempts += odd_rows(dl, subs[0], fixed_ms ? fixed_ms : hb_wall_ms());
    drain(dl, (size_t)attempts);
    if (again && !strcmp(again, "1")) {
        for (long i = 0; i < n; i++)
            first_attempt(dl, ids[i], subs[i % 50], fail[i], started[i]);
        drain(dl, (size_t)n);
    }
    for (long i = 0; i < n; i++) {
        if (!fail[i])
            continue;
        hb_attempt_t a = {
            .delivery_id = ids[i],
            .subscription_id = subs[i % 50],
            .event_ids = "7f1c1f0e-2b9a-4c1e-9d2a-5b0d6f3e8a11",
            .event_type = "user.session.start",
            .attempt = 2,
            .started_ms = fixed_ms ? fixed_ms + tick++ : hb_wall_ms(),
            .first_attempt_ms = started[i],
            .duration_ms = 9,
            .http_status = 204,
            .outcome = HB_OUTCOME_DELIVERED,
            .response_snippet = snippet,
        };
        hb_dlog_add(dl, &a, (void *)1);
    }
    drain(dl, (size_t)retried);
    attempts += retried;
    t1 = hb_mono_ms();
    writer_s = cpu_s(RUSAGE_SELF) - cpu_s(RUSAGE_THREAD); /* the writer thread's */
    c0 = cpu_s(RUSAGE_THREAD);
    for (long i = 0; i < n; i++)
        first_attempt(NULL, ids[i], subs[i % 50], fail[i], started[i]);
    copy_s = (cpu_s(RUSAGE_THREAD) - c0) * (double)attempts / (double)n;
    (void)hb_dlog_close(dl, 10000);
    hb_dlog_free(dl);
    free(ids);
    free(fail);
    free(started);
    printf("bench_dlog: %ld deliveries, %ld attempts logged in %lld ms (%.0f attempts/s); "
           "client CPU per attempt: %.2f us in the writer thread, %.2f us copying rows in "
           "(hb_dlog_add)\n",
           n, attempts, (long long)(t1 - t0), attempts * 1000.0 / (double)(t1 - t0 ? t1 - t0 : 1),
           1e6 * writer_s / (double)attempts, 1e6 * copy_s / (double)attempts);
    return 0;
}
