/*
 * Per-subscription rate limits (see hb_ratelimit.h).
 *
 * The design is simple: one entry per subscription key holds a FIFO of the
 * items waiting, the local token bucket, the tokens granted from the shared
 * budget (each grant's until when they may be used: a later grant does not
 * lengthen the lease of the tokens left from an earlier one), and whether an ask is open. Each
 * entry is "released" whenever something may have changed for it (a submit,
 * an answer, a tick): expired items are refused from the head (the FIFO's
 * head is always the oldest), then items go while both a granted token and a
 * local one are on hand, then, if items still wait for more than is granted,
 * the shared budget is asked (one ask open per key at a time). An entry with
 * nothing held, nothing granted, no ask open and a full bucket is forgotten:
 * a fresh one would be the same.
 *
 * "Throttled" (for the metrics): an item that waited while a bucket was
 * empty, the local one or the shared one (an answer granting fewer than
 * asked), rather than only for the database's answer.
 */
#include "hb_ratelimit.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_hash.h"

#define ASK_GIVE_UP_MS 5000 /* an ask unanswered this long is lost (a store replaced) */
#define ASK_RETRY_MS 1000   /* after a failed ask, or when none can be made */

/* ----------------------------------------------------------- the bucket */

/* ms (>= 0) as a long long: a tiny rate's wait is capped (about 30,000
 * years), never a double out of range cast (undefined, negative on x86). */
static long long ms_of(double ms) {
    return ms < 1e15 ? (long long)ceil(ms) : 1000000000000000LL;
}

static void bucket_refill(hb_bucket_t *b, int64_t now_ms) {
    if (now_ms > b->at_ms) {
        b->tokens += b->rate * (double)(now_ms - b->at_ms) / 1000.0;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
    }
    b->at_ms = now_ms > b->at_ms ? now_ms : b->at_ms;
}

void hb_bucket_init(hb_bucket_t *b, double rate, double burst, int64_t now_ms) {
    b->rate = rate;
    b->burst = burst;
    b->tokens = burst;
    b->at_ms = now_ms;
}

void hb_bucket_set(hb_bucket_t *b, double rate, double burst, int64_t now_ms) {
    bucket_refill(b, now_ms);
    b->rate = rate;
    b->burst = burst;
    if (b->tokens > burst)
        b->tokens = burst;
}

double hb_bucket_tokens(hb_bucket_t *b, int64_t now_ms) {
    bucket_refill(b, now_ms);
    return b->tokens;
}

int hb_bucket_take(hb_bucket_t *b, int64_t now_ms) {
    bucket_refill(b, now_ms);
    if (b->tokens < 1.0)
        return 0;
    b->tokens -= 1.0;
    return 1;
}

long long hb_bucket_wait_ms(hb_bucket_t *b, int64_t now_ms) {
    bucket_refill(b, now_ms);
    if (b->tokens >= 1.0)
        return 0;
    return ms_of((1.0 - b->tokens) * 1000.0 / b->rate);
}

/* ---------------------------------------------------------- the entries */

typedef struct rl_item_s {
    struct rl_item_s *next;
    void *item;
    int64_t since; /* when it was submitted */
} rl_item_t;

/* Shared tokens of one grant, usable until then. */
typedef struct rl_grant_s {
    int n;
    int64_t until;
} rl_grant_t;

typedef struct rl_key_s {
    hb_bucket_t local;
    int burst;
    int granted;        /* shared tokens on hand: the sum of grants[gh..gn) */
    rl_grant_t *grants; /* oldest first, each with its own lease */
    size_t gh, gn, gcap;
    int asking;           /* an ask is open */
    int64_t asked_at;     /* ... since then */
    int64_t next_ask;     /* not before then */
    int64_t throttled_at; /* a bucket was last found empty then */
    rl_item_t *head, *tail;
    size_t n;
} rl_key_t;

struct hb_ratelimit_s {
    hb_ratelimit_conf_t conf;
    hb_ratelimit_cbs_t cbs;
    hb_hash_t keys; /* subscription key -> rl_key_t* */
    size_t held;
};

hb_ratelimit_t *hb_ratelimit_new(const hb_ratelimit_conf_t *conf, const hb_ratelimit_cbs_t *cbs) {
    hb_ratelimit_t *rl = hb_calloc(1, sizeof(*rl));
    rl->conf = *conf;
    rl->cbs = *cbs;
    return rl;
}

void hb_ratelimit_free(hb_ratelimit_t *rl) {
    hb_hash_slot_t *s;
    size_t pos = 0;
    if (!rl)
        return;
    while ((s = hb_hash_each(&rl->keys, &pos)) != NULL) {
        rl_key_t *k = s->val;
        while (k->head) {
            rl_item_t *it = k->head;
            k->head = it->next;
            if (rl->cbs.drop)
                rl->cbs.drop(it->item, rl->cbs.opaque);
            free(it);
        }
        free(k->grants);
        free(k);
    }
    hb_hash_clear(&rl->keys);
    free(rl);
}

size_t hb_ratelimit_held(const hb_ratelimit_t *rl) {
    return rl->held;
}

size_t hb_ratelimit_held_for(const hb_ratelimit_t *rl, const char *key) {
    const rl_key_t *k = hb_hash_get(&rl->keys, key);
    return k ? k->n : 0;
}

size_t hb_ratelimit_withdraw(hb_ratelimit_t *rl, int (*which)(void *item, void *arg), void *arg) {
    hb_hash_slot_t *s;
    size_t pos = 0, n = 0;
    rl_item_t *out = NULL;
    while ((s = hb_hash_each(&rl->keys, &pos)) != NULL) {
        rl_key_t *k = s->val;
        rl_item_t **pp = &k->head, *last = NULL;
        while (*pp) {
            rl_item_t *it = *pp;
            if (!which(it->item, arg)) {
                last = it;
                pp = &it->next;
                continue;
            }
            *pp = it->next;
            k->n--;
            rl->held--;
            it->next = out;
            out = it;
            n++;
        }
        k->tail = last; /* an entry left empty is forgotten by the next tick */
    }
    while (out) {
        rl_item_t *it = out;
        out = it->next;
        if (rl->cbs.drop)
            rl->cbs.drop(it->item, rl->cbs.opaque);
        free(it);
    }
    return n;
}

static rl_item_t *pop(hb_ratelimit_t *rl, rl_key_t *k) {
    rl_item_t *it = k->head;
    k->head = it->next;
    if (!k->head)
        k->tail = NULL;
    k->n--;
    rl->held--;
    return it;
}

static void refuse(hb_ratelimit_t *rl, void *item, long long held_ms, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void refuse(hb_ratelimit_t *rl, void *item, long long held_ms, const char *fmt, ...) {
    char reason[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    rl->cbs.refuse(item, reason, held_ms, rl->cbs.opaque);
}

/* The grants whose lease ran out are dropped, never given back. */
static void grants_lapse(rl_key_t *k, int64_t now) {
    while (k->gh < k->gn && now >= k->grants[k->gh].until)
        k->granted -= k->grants[k->gh++].n;
    if (k->gh == k->gn)
        k->gh = k->gn = 0;
}

/* Uses one shared token, of the oldest grant. */
static void grant_take(rl_key_t *k) {
    k->granted--;
    if (--k->grants[k->gh].n == 0 && ++k->gh == k->gn)
        k->gh = k->gn = 0;
}

static void grant_add(rl_key_t *k, int n, int64_t until) {
    if (k->gn == k->gcap) {
        if (k->gh > 0) { /* reuse the room in front */
            memmove(k->grants, k->grants + k->gh, (k->gn - k->gh) * sizeof(*k->grants));
            k->gn -= k->gh;
            k->gh = 0;
        } else {
            k->gcap = k->gcap ? k->gcap * 2 : 4;
            k->grants = hb_realloc(k->grants, k->gcap * sizeof(*k->grants));
        }
    }
    k->grants[k->gn].n = n;
    k->grants[k->gn++].until = until;
    k->granted += n;
}

/* Refuses what waited too long, sends what may go, asks for more; returns
 * the ms until the entry needs looking at again (-1: never). */
static long long release(hb_ratelimit_t *rl, const char *key, rl_key_t *k, int64_t now) {
    long long next = -1;
    grants_lapse(k, now);
    while (k->head && now - k->head->since >= rl->conf.max_wait_ms) {
        rl_item_t *it = pop(rl, k);
        refuse(rl, it->item, (long long)(now - it->since),
               "rate limited: held %lld ms for the subscription's rate limit (%g/s, burst %d) "
               "without a turn (max_queue_wait)",
               (long long)(now - it->since), k->local.rate, k->burst);
        free(it);
    }
    while (k->head && k->granted > 0) {
        rl_item_t *it;
        if (!hb_bucket_take(&k->local, now)) {
            k->throttled_at = now;
            next = hb_bucket_wait_ms(&k->local, now);
            break;
        }
        grant_take(k);
        it = pop(rl, k);
        rl->cbs.send(it->item, (long long)(now - it->since), k->throttled_at >= it->since,
                     rl->cbs.opaque);
        free(it);
    }
    if (k->asking && now - k->asked_at >= ASK_GIVE_UP_MS)
        k->asking = 0;
    if (k->head && (size_t)k->granted < k->n && !k->asking) {
        if (now >= k->next_ask) {
            size_t want = k->n - (size_t)k->granted;
            if (want > (size_t)k->burst)
                want = (size_t)k->burst;
            if (rl->cbs.ask(key, (int)want, rl->cbs.opaque) == 0) {
                k->asking = 1;
                k->asked_at = now;
            } else {
                k->next_ask = now + ASK_RETRY_MS;
            }
        }
        if (!k->asking && (next < 0 || k->next_ask - now < next))
            next = k->next_ask - now;
    }
    if (k->asking && (next < 0 || k->asked_at + ASK_GIVE_UP_MS - now < next))
        next = k->asked_at + ASK_GIVE_UP_MS - now;
    if (k->head) {
        long long expiry = k->head->since + rl->conf.max_wait_ms - now;
        if (next < 0 || expiry < next)
            next = expiry;
    } else if (k->granted) {
        long long lease = k->grants[k->gh].until - now; /* the oldest lapses first */
        if (next < 0 || lease < next)
            next = lease;
    }
    return next < 0 ? -1 : next;
}

/* The entry is the same as a fresh one: forget it. */
static int idle(rl_key_t *k, int64_t now) {
    return !k->head && !k->granted && !k->asking && hb_bucket_tokens(&k->local, now) >= k->burst;
}

void hb_ratelimit_submit(hb_ratelimit_t *rl, const char *key, double rate, int burst, void *item,
                         int64_t now) {
    rl_key_t *k = hb_hash_get(&rl->keys, key);
    rl_item_t *it;
    if (!k) {
        k = hb_calloc(1, sizeof(*k));
        hb_bucket_init(&k->local, rate, burst, now);
        k->burst = burst;
        k->throttled_at = INT64_MIN; /* never */
        (void)hb_hash_put(&rl->keys, key, k);
    } else if (k->local.rate != rate || k->burst != burst) {
        hb_bucket_set(&k->local, rate, burst, now);
        k->burst = burst;
    }
    if (rl->conf.max_queue > 0 && k->n >= rl->conf.max_queue) {
        k->throttled_at = now;
        refuse(rl, item, 0,
               "rate limited: %zu deliveries already held for the subscription's rate limit "
               "(%g/s, burst %d; max_host_queue)",
               k->n, rate, burst);
        return;
    }
    {
        /* its turn comes once the ones ahead have gone: the tokens on hand,
         * then one every 1/rate s */
        double ahead = (double)k->n + 1.0 - floor(hb_bucket_tokens(&k->local, now));
        long long wait = ahead > 0 ? ms_of(ahead * 1000.0 / rate) : 0;
        if (wait > rl->conf.max_wait_ms) {
            k->throttled_at = now;
            refuse(rl, item, 0,
                   "rate limited: %zu deliveries held ahead would take about %lld ms at the "
                   "subscription's rate limit (%g/s, burst %d; max_queue_wait)",
                   k->n, wait, rate, burst);
            return;
        }
    }
    it = hb_calloc(1, sizeof(*it));
    it->item = item;
    it->since = now;
    if (k->tail)
        k->tail->next = it;
    else
        k->head = it;
    k->tail = it;
    k->n++;
    rl->held++;
    (void)release(rl, key, k, now);
}

void hb_ratelimit_granted(hb_ratelimit_t *rl, const char *key, int granted, long long wait_ms,
                          int64_t now) {
    rl_key_t *k = hb_hash_get(&rl->keys, key);
    if (!k || !k->asking)
        return; /* given up on, or forgotten: the tokens are dropped */
    k->asking = 0;
    if (granted < 0) {
        k->next_ask = now + ASK_RETRY_MS;
    } else {
        if (granted > 0)
            grant_add(k, granted, now + rl->conf.lease_ms);
        /* the shared bucket ran dry: ask again when it has a token */
        k->next_ask = now + (wait_ms > 0 ? wait_ms : 0);
    }
    (void)release(rl, key, k, now);
    if (granted >= 0 && wait_ms > 0 && k->head)
        k->throttled_at = now; /* those still held wait for the shared bucket */
}

long long hb_ratelimit_tick(hb_ratelimit_t *rl, int64_t now) {
    hb_hash_slot_t *s;
    size_t pos = 0;
    long long next = -1;
    if (!hb_hash_count(&rl->keys))
        return -1;
    while ((s = hb_hash_each(&rl->keys, &pos)) != NULL) {
        rl_key_t *k = s->val;
        long long n = release(rl, s->key, k, now);
        if (idle(k, now)) {
            hb_hash_del(&rl->keys, s);
            free(k->grants);
            free(k);
            continue;
        }
        if (n >= 0 && (next < 0 || n < next))
            next = n;
    }
    return next;
}
