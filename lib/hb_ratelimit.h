/*
 * Per-subscription rate limits (options.rate_limit): deliveries wait their
 * turn in memory, one queue per subscription, and nobody else waits with them.
 *
 * A delivery of a rate-limited subscription is submitted here before it is
 * handed to the HTTP engine. It goes on (the send callback) only with two
 * tokens: one of this process's own token bucket for the subscription
 * (hb_bucket_t, at the subscription's rate and burst: one replica alone never
 * exceeds the limit), and one granted from the budget every replica shares
 * (the ask callback draws it, asynchronously, from hookbridge.take_rate_tokens
 * in PostgreSQL; its answer comes back through hb_ratelimit_granted). Granted
 * tokens are leased: those not used within lease_ms are dropped, never given
 * back, so all replicas together send at most burst + rate * (T + lease)
 * requests in any T seconds (docs/design.md, "Rate limits").
 *
 * A delivery that cannot wait is refused (the refuse callback, with a reason
 * starting "rate limited: "), and its caller routes it like one whose endpoint
 * is busy: when its subscription already has max_queue deliveries held, when
 * the ones ahead of it would take longer than max_wait_ms at the rate, and
 * when it has been held max_wait_ms (the rate was lowered, the shared budget
 * is spent by other replicas, or the database does not answer). Nothing held
 * counts in the HTTP engine's backlog, so a rate-limited subscription never
 * slows consumption for the others.
 *
 * Time is passed in (monotonic ms), so the unit tests drive it. Callbacks run
 * inside the calls that make them due (submit, granted, tick); they must not
 * call back into the limiter. Main loop thread only.
 */
#ifndef HB_RATELIMIT_H
#define HB_RATELIMIT_H

#include "hb_common.h"

/* A token bucket: at most burst tokens, refilled at rate a second. */
typedef struct hb_bucket_s {
    double rate, burst;
    double tokens;
    int64_t at_ms; /* when tokens was last brought up to date */
} hb_bucket_t;

/* Full, at rate (> 0) and burst (>= 1). */
void hb_bucket_init(hb_bucket_t *b, double rate, double burst, int64_t now_ms);
/* A new rate and burst; the tokens held stay (at most the new burst). */
void hb_bucket_set(hb_bucket_t *b, double rate, double burst, int64_t now_ms);
/* Takes one token: 1 when there was one, else 0 (nothing taken). */
int hb_bucket_take(hb_bucket_t *b, int64_t now_ms);
/* Tokens on hand now (refilled). */
double hb_bucket_tokens(hb_bucket_t *b, int64_t now_ms);
/* Milliseconds until one token is on hand (0: now). */
long long hb_bucket_wait_ms(hb_bucket_t *b, int64_t now_ms);

typedef struct hb_ratelimit_s hb_ratelimit_t;

typedef struct hb_ratelimit_conf_s {
    size_t max_queue;      /* deliveries held per subscription; 0: unbounded */
    long long max_wait_ms; /* longest a delivery is held (> 0) */
    long long lease_ms;    /* granted tokens unused this long are dropped (> 0) */
} hb_ratelimit_conf_t;

/* Draw up to wanted tokens for key from the shared budget: 0 when asked (the
 * answer must come through hb_ratelimit_granted, or never: an ask unanswered
 * for a while is given up), -1 when it cannot be asked now (no database). */
typedef int hb_rl_ask_cb(const char *key, int wanted, void *opaque);
/* The item may be sent now; held_ms: how long it waited; throttled: it
 * waited because a bucket was empty (not just for an answer). */
typedef void hb_rl_send_cb(void *item, long long held_ms, int throttled, void *opaque);
/* The item cannot wait; reason starts with "rate limited: ". */
typedef void hb_rl_refuse_cb(void *item, const char *reason, long long held_ms, void *opaque);
/* The limiter is freed with the item held (shutdown), or the item was
 * withdrawn (hb_ratelimit_withdraw). */
typedef void hb_rl_drop_cb(void *item, void *opaque);

typedef struct hb_ratelimit_cbs_s {
    hb_rl_ask_cb *ask;
    hb_rl_send_cb *send;
    hb_rl_refuse_cb *refuse;
    hb_rl_drop_cb *drop;
    void *opaque;
} hb_ratelimit_cbs_t;

hb_ratelimit_t *hb_ratelimit_new(const hb_ratelimit_conf_t *conf, const hb_ratelimit_cbs_t *cbs);
/* Every item still held goes to drop. */
void hb_ratelimit_free(hb_ratelimit_t *rl);

/* Holds item for key (a subscription id) limited to rate a second with
 * burst; sends, refuses or holds it. The rate and burst of the latest
 * submission are the key's from then on (an update() applies live). */
void hb_ratelimit_submit(hb_ratelimit_t *rl, const char *key, double rate, int burst, void *item,
                         int64_t now_ms);

/* The answer to an ask: granted tokens (>= 0), and when none was left the ms
 * until the next; granted < 0: the ask failed (asked again in a second). */
void hb_ratelimit_granted(hb_ratelimit_t *rl, const char *key, int granted, long long wait_ms,
                          int64_t now_ms);

/* Sends what may go, refuses what waited too long, asks for tokens; returns
 * the ms until it should run again (-1: nothing held). */
long long hb_ratelimit_tick(hb_ratelimit_t *rl, int64_t now_ms);

size_t hb_ratelimit_held(const hb_ratelimit_t *rl);                      /* items held, every key */
size_t hb_ratelimit_held_for(const hb_ratelimit_t *rl, const char *key); /* ... for key */

/* Every item held for which which(item, arg) says 1 goes to drop, once all of
 * them are out of the limiter (drop may not call back into it either);
 * returns how many. */
size_t hb_ratelimit_withdraw(hb_ratelimit_t *rl, int (*which)(void *item, void *arg), void *arg);

#endif
