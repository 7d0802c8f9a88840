/*
 * The retry schedule and the DeliveryRetry message.
 *
 * A schedule is the list of delays before each retry ("5s,5m,30m,2h,5h,10h,
 * 10h": attempt 2 comes 5 s after attempt 1 failed, ...). Each distinct delay
 * is a tier with its own topic, <prefix><delay> (hookbridge.retry.5m), so a
 * message due in seconds never waits behind one due in hours: within a tier
 * messages arrive roughly in due order, and the retrier only ever waits for
 * the head of a partition.
 *
 * The delay of the next attempt is the schedule's, lengthened by a random
 * 0..jitter percent (never shortened, so no attempt comes early), or the
 * endpoint's Retry-After when that is longer (bounded by retry_after_max).
 * The message goes to the tier of its step, or, when Retry-After (or the
 * endpoint's pace) asks for longer, to the longest tier not longer than the
 * wait, where it "hops" (is produced again) until due. Hop tiers are extra
 * tiers that are no step of the schedule ("20s,1m" by default): a wait
 * between two far-apart steps (5 s and 5 min) hops through them instead of
 * up to 49 times on the shorter one.
 *
 * Delays are written canonically in topic names: 5000 ms is "5s", 300000 ms
 * is "5m", 1500 ms is "1500ms".
 */
#ifndef HB_RETRY_H
#define HB_RETRY_H

#include <jansson.h>

#include "hb_common.h"

#define HB_RETRY_MAX_STEPS 32
#define HB_RETRY_MAX_TIERS (2 * HB_RETRY_MAX_STEPS) /* the steps' and the hop tiers */

/* Svix-like: 8 attempts over about 28 hours. */
#define HB_RETRY_SCHEDULE_DEFAULT "5s,5m,30m,2h,5h,10h,10h"
/* Tiers for waiting only, between the default's 5 s and 5 min: a wait of up
 * to 5 minutes hops at most 7 times (Retry-After: 260: 1m, 1m, 20s, then
 * 19.9 s left, 3 times on the 5s tier; mostly 2 to 4), not up to 49 times
 * on the 5s tier. */
#define HB_RETRY_HOP_TIERS_DEFAULT "20s,1m"

typedef struct hb_schedule_s {
    long long delays_ms[HB_RETRY_MAX_STEPS]; /* before attempt i + 2 */
    int steps;
    long long tiers_ms[HB_RETRY_MAX_TIERS]; /* distinct delays and hop tiers, ascending */
    char *tier_topics[HB_RETRY_MAX_TIERS];
    char hop_only[HB_RETRY_MAX_TIERS]; /* a hop tier, no step's delay */
    int tiers;
    char *prefix; /* of the tier topics */
} hb_schedule_t;

/* Parses "5s,30s,2m" (1..32 delays, each 100 ms .. 30 days) and the hop
 * tiers (0..32 such delays; NULL or "" for none). Errors name the bad
 * element. */
int hb_schedule_parse(hb_schedule_t *s, const char *spec, const char *hop_spec,
                      const char *topic_prefix, char *errstr, size_t errstr_size) HB_MUSTCHECK;
void hb_schedule_free(hb_schedule_t *s);

/* The setting an error of hb_schedule_parse is about. */
const char *hb_schedule_setting(const char *errstr);

/* Canonical text of a delay ("5s", "2m", "1500ms"). */
void hb_delay_format(long long ms, char *out, size_t outsz);

/* Attempts in all: the first plus one per step. */
int hb_schedule_max_attempts(const hb_schedule_t *s);

/* Where the next attempt goes after attempt `failed_attempt` (1 = first)
 * failed: 0 with *topic and *not_before_ms set, or 1 when the attempts are
 * used up. retry_after_ms (0 = none) is honoured up to retry_after_max_ms;
 * rnd is a uniform random number in [0, 1) for the jitter. */
int hb_schedule_next(const hb_schedule_t *s, int failed_attempt, long long retry_after_ms,
                     long long retry_after_max_ms, int jitter_percent, double rnd, int64_t now_ms,
                     const char **topic, int64_t *not_before_ms);

/* The delay of a tier topic. A topic named like a tier (the prefix and a
 * delay written canonically) but not in this schedule is a *retired* tier,
 * one of an earlier schedule, which the retrier still drains: its delay is
 * read from its name and *retired (may be NULL) is set. -1 for any other
 * topic. */
long long hb_schedule_tier_ms(const hb_schedule_t *s, const char *topic, int *retired);

/* A librdkafka subscription pattern ("^...") matching every topic named like
 * a tier of this prefix, retired tiers included. */
void hb_schedule_tier_pattern(const hb_schedule_t *s, char *out, size_t outsz);

/* The tier topic for a delay (used by the circuit breaker's cool-down). */
const char *hb_schedule_topic_for(const hb_schedule_t *s, long long delay_ms);

/* Where a message due in wait_ms waits: the longest tier (hop tiers
 * included) not longer than the wait, so nothing ahead of it there is due
 * later than itself; NULL when every tier is longer. */
const char *hb_schedule_wait_topic(const hb_schedule_t *s, long long wait_ms);

/* A DeliveryRetry (schema/delivery_retry.avsc) as C values. Strings owned. */
typedef struct hb_retry_msg_s {
    char *delivery_id;
    char *subscription_id;
    char *event_ids; /* comma-separated, as in the delivery log */
    char *event_type;
    char *content_type;
    char *body;
    size_t body_len;
    int attempt;
    int64_t not_before_ms;
    int64_t first_attempt_ms;
    int last_status;
    char *last_error;
    int schedule_offset; /* attempts made before this schedule began (replay) */
    /* ordered delivery: the delivery of the same key this one waits behind
     * (NULL or "": none) */
    char *after_delivery_id;
} hb_retry_msg_t;

/* Fields from a decoded message; -1 with a reason when one is missing or
 * malformed (the message is then poison). */
int hb_retry_msg_from_json(hb_retry_msg_t *m, const json_t *obj, char *errstr,
                           size_t errstr_size) HB_MUSTCHECK;
/* New JSON object for the codec (caller decrefs). */
json_t *hb_retry_msg_to_json(const hb_retry_msg_t *m);
void hb_retry_msg_clear(hb_retry_msg_t *m);

#endif
