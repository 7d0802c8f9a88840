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
 *   psql "$URL" -c "SELECT pg_stat_statements_reset()"; bench_dlog;
 *   psql "$URL" -c "SELECT calls, rows, total_exec_time, left(query, 60)
 *                     FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 5"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hb_common.h"
#include "hb_dlog.h"

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

int main(void) {
    const char *url = getenv("HOOKBRIDGE_DATABASE_URL");
    const char *nenv = getenv("BENCH_DLOG_DELIVERIES");
    long n = nenv ? strtol(nenv, NULL, 10) : 20000;
    char subs[50][37], errstr[256];
    static const char snippet[] = "{\"ok\":true}";
    hb_dlog_t *dl;
    int64_t t0, t1;
    long attempts = 0, retried = 0;
    char(*ids)[37];

    if (!url || n <= 0) {
        fprintf(stderr, "set HOOKBRIDGE_DATABASE_URL to a migrated database\n");
        return 2;
    }
    for (int i = 0; i < 50; i++)
        uuid_str(subs[i], next_rand(), next_rand());
    ids = calloc((size_t)n, sizeof(*ids));
    dl = hb_dlog_new(url, 50, 100000, errstr, sizeof(errstr));
    if (!dl || !ids) {
        fprintf(stderr, "bench_dlog: %s\n", errstr);
        return 1;
    }
    t0 = hb_mono_ms();
    for (long i = 0; i < n; i++) {
        int fail = next_rand() % 10 == 0;
        hb_attempt_t a = {
            .delivery_id = ids[i],
            .subscription_id = subs[i % 50],
            .event_ids = "7f1c1f0e-2b9a-4c1e-9d2a-5b0d6f3e8a11",
            .event_type = "user.session.start",
            .attempt = 1,
            .started_ms = hb_wall_ms(),
            .duration_ms = 12,
            .http_status = fail ? 503 : 204,
            .outcome = fail ? HB_OUTCOME_RETRY : HB_OUTCOME_DELIVERED,
            .error = fail ? "HTTP 503" : NULL,
            .response_snippet = snippet,
        };
        uuid_str(ids[i], next_rand(), next_rand());
        hb_dlog_add(dl, &a, (void *)1);
        attempts++;
        if (fail) {
            ids[i][36] = '\0';
            retried++;
        } else {
            ids[i][0] = '\0'; /* not retried */
        }
    }
    drain(dl, (size_t)attempts);
    for (long i = 0; i < n; i++) {
        if (!ids[i][0])
            continue;
        hb_attempt_t a = {
            .delivery_id = ids[i],
            .subscription_id = subs[i % 50],
            .event_ids = "7f1c1f0e-2b9a-4c1e-9d2a-5b0d6f3e8a11",
            .event_type = "user.session.start",
            .attempt = 2,
            .started_ms = hb_wall_ms(),
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
    (void)hb_dlog_close(dl, 10000);
    hb_dlog_free(dl);
    free(ids);
    printf("bench_dlog: %ld deliveries, %ld attempts logged in %lld ms (%.0f attempts/s)\n", n,
           attempts, (long long)(t1 - t0), attempts * 1000.0 / (double)(t1 - t0 ? t1 - t0 : 1));
    return 0;
}
