/*
 * make bench: the subscription index at scale, without Kafka or HTTP.
 *
 * Builds an index of BENCH_SUBS subscriptions (default 100,000), each
 * subscribed to 1..4 event types drawn from the catalogue with a skewed
 * distribution (a few types are popular, as sessions and lifecycle events
 * are in practice), then:
 *   - match rate: events/s through hb_index_match, visiting every matched
 *     subscription, for events whose types follow the same distribution
 *     (with 21 types and 100,000 subscriptions an event matches thousands:
 *     the cost is the matches, not the subscriptions that do not match);
 *   - incremental change: time to upsert one changed subscription and to
 *     remove one, at full size (no rebuild);
 *   - memory: VmRSS before and after building the index.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_common.h"
#include "hb_event.h"
#include "hb_index.h"
#include "hb_sign.h"

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmRSS:", 6))
            kib = strtol(line + 6, NULL, 10);
    fclose(f);
    return kib;
}

/* xorshift: repeatable without libc's rand state */
static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Type index with a skew: low indexes are picked more often. */
static size_t pick_type(size_t ntypes) {
    double u = (double)(next_rand() % 1000000) / 1000000.0;
    return (size_t)((double)ntypes * u * u);
}

static hb_sub_t *make_sub(size_t i, size_t ntypes) {
    hb_sub_t *s = hb_sub_new();
    int n = 1 + (int)(next_rand() % 4);
    snprintf(s->id, sizeof(s->id), "00000000-0000-4000-8000-%012x", (unsigned)i);
    s->name = hb_strdup("bench");
    s->url = hb_strdup("https://example.com/hook");
    s->event_types = hb_calloc((size_t)n, sizeof(char *));
    for (int k = 0; k < n; k++) {
        const char *t = hb_event_type_at(pick_type(ntypes));
        int dup = 0;
        for (int j = 0; j < s->event_types_cnt; j++)
            dup |= !strcmp(s->event_types[j], t);
        if (!dup)
            s->event_types[s->event_types_cnt++] = hb_strdup(t);
    }
    s->active = s->verified = 1;
    s->batch_max = 1;
    return s;
}

int main(void) {
    const char *env = getenv("BENCH_SUBS");
    size_t nsubs = env ? (size_t)strtoul(env, NULL, 10) : 100000;
    size_t ntypes = hb_event_types_count(), nevents = 20000;
    long rss0 = rss_kib(), rss1;
    hb_index_t *ix = hb_index_new();
    hb_sub_t *const *subs;
    uint64_t matches = 0;
    int64_t t0, t1;
    double match_s, upsert_us, remove_us;
    size_t *types = hb_malloc(nevents * sizeof(size_t));

    t0 = hb_mono_us();
    for (size_t i = 0; i < nsubs; i++)
        hb_index_upsert(ix, make_sub(i, ntypes));
    t1 = hb_mono_us();
    rss1 = rss_kib();
    printf("index: %zu subscriptions over %zu event types built in %.0f ms\n", hb_index_count(ix),
           ntypes, (double)(t1 - t0) / 1000.0);

    for (size_t i = 0; i < nevents; i++)
        types[i] = pick_type(ntypes);
    t0 = hb_mono_us();
    for (size_t i = 0; i < nevents; i++) {
        size_t n = hb_index_match(ix, hb_event_type_at(types[i]), &subs);
        /* visit every match, as the dispatcher does to start its delivery */
        for (size_t k = 0; k < n; k++)
            matches += (uint64_t)hb_sub_deliverable(subs[k]);
    }
    t1 = hb_mono_us();
    match_s = (double)(t1 - t0) / 1e6;

    /* one subscription changes (a new snapshot), then one is deregistered */
    t0 = hb_mono_us();
    for (int k = 0; k < 1000; k++)
        hb_index_upsert(ix, make_sub(next_rand() % nsubs, ntypes));
    t1 = hb_mono_us();
    upsert_us = (double)(t1 - t0) / 1000.0;
    t0 = hb_mono_us();
    for (int k = 0; k < 1000; k++) {
        char id[HB_UUID_LEN + 1];
        snprintf(id, sizeof(id), "00000000-0000-4000-8000-%012x", (unsigned)(next_rand() % nsubs));
        hb_index_remove(ix, id);
    }
    t1 = hb_mono_us();
    remove_us = (double)(t1 - t0) / 1000.0;

    printf("match: %zu events in %.2f s: %.0f events/s, %.1f matching subscriptions per event "
           "(%.0f matched subscriptions visited/s)\n",
           nevents, match_s, (double)nevents / match_s, (double)matches / (double)nevents,
           (double)matches / match_s);
    printf("change: one upsert %.2f us, one removal %.2f us, at %zu subscriptions\n", upsert_us,
           remove_us, nsubs);
    printf("memory: VmRSS %ld MiB before, %ld MiB with the index (%.0f bytes per subscription)\n",
           rss0 / 1024, rss1 / 1024, (double)(rss1 - rss0) * 1024.0 / (double)nsubs);
    hb_index_free(ix);
    free(types);
    return 0;
}
