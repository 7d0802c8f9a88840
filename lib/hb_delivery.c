/* One delivery's state machine and the circuit breaker (see hb_delivery.h). */
#include "hb_delivery.h"

#include <assert.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "hb_codec.h"
#include "hb_deliver.h"
#include "hb_hash.h"
#include "hb_event.h"
#include "hb_log.h"
#include "hb_ratelimit.h"
#include "hb_schemas.h"

/* One endpoint host's health (key "scheme://host:port", as hb_http queues). */
typedef struct circuit_s {
    long long failures; /* consecutive */
    int64_t open_until; /* monotonic; 0 = closed; once past: half open */
    int opened;         /* opened and not yet closed by a success */
    /* Half open: the one delivery let through to probe the host (NULL: the
     * next one to be sent probes), and when it is presumed lost if nothing
     * has settled it (a bound it cannot reach; belt and braces). */
    const hb_delivery_t *probe;
    int64_t probe_until;
    int64_t failed_at; /* monotonic: its last failure */
} circuit_t;

/* Circuits kept before the stale ones are forgotten (circuit_stale). */
#define CIRCUITS_SWEEP 1024

struct hb_deliveries_s {
    const hb_config_t *cfg;
    hb_http_t *http;
    hb_outbox_t *outbox;
    hb_codec_t *retry_codec; /* DeliveryRetry, produced */
    /* DeliveryRetry v1 (before after_delivery_id): what a retry that waits for
     * nothing is written with, so retriers of the previous release read it
     * during a rolling upgrade; only ordered waits need the current schema. */
    hb_codec_t *retry_codec_v1;
    hb_delivery_metrics_t m;
    int circuit_counts_attempts;
    int abandoning; /* shutdown deadline passed: completions record nothing */
    size_t in_flight;
    hb_hash_t circuits;    /* endpoint host -> circuit_t*, only while failing */
    size_t circuits_sweep; /* ... whose stale ones are forgotten at this many */
    hb_hash_t turns;       /* "h <host>" or "s <subscription>" -> turn_t*: paced parkings */
    size_t turns_sweep;    /* ... whose past ones are forgotten at this many */
    hb_ratelimit_t *rl;    /* deliveries held by their subscription's rate limit */
    /* ordered deliveries routed here -> due_t*: when each is due next, so
     * those waiting behind one are asked about again then (order_wait_until) */
    hb_hash_t dues;
    size_t dues_sweep; /* ... whose past ones are forgotten at this many */
    int (*rate_ask)(const char *id, int wanted, void *opaque);
    void *rate_ask_opaque;
    hb_sub_t *(*current)(const char *id, void *opaque); /* a subscription as it is now */
    void *current_opaque;
};

/* Shared rate-limit tokens unused this long are dropped (hb_ratelimit.h): the
 * slack of the limit across replicas (docs/design.md, "Rate limits"). */
#define RATE_LEASE_MS 250

/* ------------------------------------------------------------- the states */

static const char *const state_names[HB_DL_STATES] = {
    "pending", "in flight", "not made",  "delivered", "retry",
    "failed",  "dropped",   "discarded", "abandoned", "lost",
};

const char *hb_dl_state_name(hb_dl_state_t st) {
    return st < HB_DL_STATES ? state_names[st] : "?";
}

#define S(x) (1u << (x))
/* The states each state may move to. */
static const unsigned next_states[HB_DL_STATES] = {
    [HB_DL_PENDING] = S(HB_DL_IN_FLIGHT) | S(HB_DL_NOT_MADE) | S(HB_DL_FAILED) | S(HB_DL_DROPPED) |
                      S(HB_DL_DISCARDED) | S(HB_DL_ABANDONED),
    /* PENDING again: taken back from a host queue to be sent anew (send_again) */
    [HB_DL_IN_FLIGHT] =
        S(HB_DL_DELIVERED) | S(HB_DL_RETRY) | S(HB_DL_FAILED) | S(HB_DL_NOT_MADE) |
        S(HB_DL_ABANDONED) | S(HB_DL_LOST) | S(HB_DL_PENDING) |
        S(HB_DL_DISCARDED) | /* DISCARDED: a batch refused as too large, split */
        S(HB_DL_DROPPED),    /* ... and DROPPED: the same split by its body (retrier) */
    [HB_DL_NOT_MADE] = S(HB_DL_RETRY) | S(HB_DL_FAILED) | S(HB_DL_LOST),
};
#undef S

/* The one place a delivery's state changes: the move is checked, the
 * in-flight count kept, the outcome counted. */
static void set_state(hb_deliveries_t *D, hb_delivery_t *dl, hb_dl_state_t st) {
    assert(next_states[dl->state] & (1u << st));
    if (dl->state == HB_DL_IN_FLIGHT)
        D->in_flight--;
    switch (st) {
    case HB_DL_IN_FLIGHT: D->in_flight++; break;
    case HB_DL_NOT_MADE:
        if (dl->waiting) {
            if (D->m.ordering_waits)
                hb_metric_inc(D->m.ordering_waits);
        } else if (dl->unverified) {
            if (D->m.verification_waits)
                hb_metric_inc(D->m.verification_waits);
        } else if (!dl->rate_limited) { /* counted in hookbridge_rate_limited_total */
            hb_metric_inc(dl->circuit ? D->m.circuit_skips : D->m.endpoint_busy);
        }
        break;
    case HB_DL_DELIVERED: hb_metric_inc(D->m.delivered); break;
    case HB_DL_RETRY: hb_metric_inc(D->m.retry); break;
    case HB_DL_FAILED: hb_metric_inc(D->m.failed); break;
    case HB_DL_DROPPED: hb_metric_inc(D->m.dropped); break;
    default: break;
    }
    dl->state = st;
}

/* Lines written once per delivery: at most HB_LOG_LIMIT_LINES of each kind
 * per window below debug (hb_log.h); the delivery log has every one. */
static hb_log_limit_t log_failed = HB_LOG_LIMIT("\"attempt N failed\"");
static hb_log_limit_t log_not_made = HB_LOG_LIMIT("\"attempt N not made\"");
/* its own: the deliveries behind a failing head outnumber every other line
 * of a subscription, and must not leave its first "why it waits" unwritten */
static hb_log_limit_t log_waiting = HB_LOG_LIMIT("\"attempt N not made (waiting behind ...)\"");
static hb_log_limit_t log_dead_lettered = HB_LOG_LIMIT("\"delivery failed ..., dead-lettered\"");
static hb_log_limit_t log_not_dead_lettered =
    HB_LOG_LIMIT("\"final failure of attempt N not dead-lettered\"");
static hb_log_limit_t log_dropped = HB_LOG_LIMIT("\"delivery dropped\"");
static hb_log_limit_t log_split = HB_LOG_LIMIT("\"batch ... sent as two batches\"");

/* ------------------------------------------------------- circuit breaker */

static int circuit_enabled(const hb_deliveries_t *D) {
    return D->cfg->circuit_failures > 0;
}

/* Whether dl must not be attempted now: 0 no; 1 its host's circuit is open;
 * 2 it is half open and another delivery probes it. take: dl is about to be
 * sent, and the first one sent once the cool-down has passed becomes the
 * probe (the others are treated as with an open circuit until its answer,
 * circuit_result); without take, a half-open circuit nobody probes yet lets
 * dl go on (it may become the probe when it is sent). */
static int circuit_open(hb_deliveries_t *D, hb_delivery_t *dl, int take) {
    circuit_t *c = hb_hash_get(&D->circuits, dl->endpoint);
    int64_t now;
    if (!c || !c->open_until)
        return 0;
    now = hb_mono_ms();
    if (now < c->open_until)
        return 1;
    if (c->probe == dl)
        return 0;
    if (c->probe) {
        if (now < c->probe_until)
            return 2;
        c->probe = NULL; /* never settled: not expected, but never stuck */
        hb_log(HB_LOG_WARN, HB_KV("endpoint", dl->endpoint),
               "circuit half open: the probe was not settled in time, another one probes");
    }
    if (!take)
        return 0;
    c->probe = dl;
    dl->probe = 1;
    c->probe_until =
        now + 2 * (dl->sub->timeout_ms > 0 ? dl->sub->timeout_ms : D->cfg->request_timeout_ms) +
        D->cfg->max_queue_wait_ms + D->cfg->circuit_cooldown_ms;
    if (D->m.circuit_probes)
        hb_metric_inc(D->m.circuit_probes);
    hb_log(HB_LOG_INFO, HB_KV("endpoint", dl->endpoint, "delivery_id", dl->id),
           "circuit half open: one attempt probes the endpoint");
    return 0;
}

/* The reason of a delivery not attempted because of circuit_open's answer. */
static const char *circuit_reason(int open) {
    return open == 2 ? "circuit open: endpoint failing, another attempt probes it"
                     : "circuit open: endpoint failing";
}

/* Opens (or opens again) c for a cool-down; what waits for the host leaves
 * with reason why; logged as what. */
static void circuit_trip(hb_deliveries_t *D, const char *key, circuit_t *c, const char *why,
                         const char *what) {
    size_t diverted;
    c->open_until = hb_mono_ms() + D->cfg->circuit_cooldown_ms;
    c->opened = 1;
    c->probe = NULL;
    hb_metric_inc(D->m.circuit_opens);
    /* What waits for the endpoint leaves now, not one timeout at a time. */
    diverted = hb_http_divert(D->http, key, why);
    hb_log(HB_LOG_WARN, HB_KV("endpoint", key),
           "%s: no attempts for %lld ms, %zu waiting requests handed to the delay tiers", what,
           D->cfg->circuit_cooldown_ms, diverted);
}

/* dl ends without an answer from its host (not sent, dropped, abandoned):
 * the probe slot it held is free again, and the next delivery probes. */
static void circuit_release(hb_deliveries_t *D, hb_delivery_t *dl) {
    circuit_t *c;
    if (!dl->probe)
        return;
    dl->probe = 0;
    c = hb_hash_get(&D->circuits, dl->endpoint);
    if (c && c->probe == dl) {
        c->probe = NULL;
        hb_log(HB_LOG_INFO, HB_KV("endpoint", dl->endpoint, "delivery_id", dl->id),
               "circuit half open: the probe ended without an answer, the next attempt probes");
    }
}

/* What an attempt's result says of its host (not of the delivery): 1 it is
 * up (an answer below 500: 2xx, but also a 3xx or 4xx, 429 included, since
 * such an answer is about one URL or one client on a host that may serve
 * many subscriptions); 0 it looks down (no complete answer: a connection
 * error, a timeout; or a 5xx); -1 nothing (refused by the address policy
 * before any exchange with it). */
static int circuit_verdict(const hb_http_result_t *res) {
    if (res->refused)
        return -1;
    if (res->timed_out || res->transport_error || res->http_status < 100)
        return 0;
    return res->http_status < 500;
}

/* Whether c tells nothing any more: no probe out, and a cool-down has
 * passed since its last failure (closed), or (open) the longest delay of
 * the retry schedule, at least a cool-down, since its cool-down ended with
 * no delivery to probe the host. Its failures then do not add up with the
 * next ones, and it is forgotten: a host whose subscriptions went away
 * (deregistered, moved, deactivated) left its circuit behind for the
 * process's life, and failures weeks apart counted as consecutive. An open
 * circuit is kept that long because its host's deliveries come back in
 * waves, from the delay tiers, minutes or hours apart: forgotten between
 * two (by the sweep, once many circuits are kept), the next wave was sent
 * whole to the dead host, not one probe, until enough failures opened the
 * circuit again. */
static int circuit_stale(const hb_deliveries_t *D, const void *val, int64_t now) {
    const circuit_t *c = val;
    long long idle = D->cfg->circuit_cooldown_ms;
    if (c->probe)
        return 0;
    if (!c->open_until)
        return now - c->failed_at > idle;
    for (int t = 0; t < D->cfg->schedule.tiers; t++)
        if (D->cfg->schedule.tiers_ms[t] > idle)
            idle = D->cfg->schedule.tiers_ms[t];
    return now - c->open_until > idle;
}

/* An entry about to be added to h: once h holds *at entries, the stale
 * ones (freed) go, and *at becomes twice as many as are left, at least
 * floor, so entries all still live are not walked again before h doubled.
 * The circuits follow the hosts failing now, not every host that ever
 * failed; the pacing clocks, the endpoints paced now. */
static void sweep_stale(const hb_deliveries_t *D, hb_hash_t *h, size_t *at, size_t floor,
                        int (*stale)(const hb_deliveries_t *D, const void *val, int64_t now),
                        int64_t now) {
    hb_hash_slot_t *s;
    size_t pos = 0;
    if (hb_hash_count(h) < *at)
        return;
    while ((s = hb_hash_each(h, &pos)) != NULL)
        if (stale(D, s->val, now)) {
            free(s->val);
            hb_hash_del(h, s); /* removing the slot walked is allowed */
        }
    *at = hb_hash_count(h) * 2;
    if (*at < floor)
        *at = floor;
}

/* dl's request got an answer (ok: its host is up, circuit_verdict): one that
 * says so closes the circuit and forgets its failures; one that does not
 * counts (after those before it, unless they are stale), opens it after
 * circuit_failures in a row, and re-opens it when dl was the probe. */
static void circuit_result(hb_deliveries_t *D, hb_delivery_t *dl, int ok) {
    const char *key = dl->endpoint;
    hb_hash_slot_t *s;
    circuit_t *c;
    int probe = dl->probe;
    int64_t now = hb_mono_ms();
    dl->probe = 0;
    if (!circuit_enabled(D) || !*key)
        return;
    s = hb_hash_find(&D->circuits, key);
    c = s ? s->val : NULL;
    if (ok) {
        if (c) { /* healthy again: forget it */
            hb_hash_del(&D->circuits, s);
            if (c->opened)
                hb_log(HB_LOG_INFO, HB_KV("endpoint", key),
                       "circuit closed: the endpoint answered again");
            free(c);
        }
        return;
    }
    if (c && circuit_stale(D, c, now)) /* starts afresh (probe: c has none) */
        memset(c, 0, sizeof(*c));
    if (!c) {
        sweep_stale(D, &D->circuits, &D->circuits_sweep, CIRCUITS_SWEEP, circuit_stale, now);
        c = hb_calloc(1, sizeof(*c));
        (void)hb_hash_put(&D->circuits, key, c);
    }
    c->failed_at = now;
    ++c->failures;
    if (probe && c->probe == dl) {
        circuit_trip(D, key, c, "circuit open: the probe of the endpoint failed",
                     "circuit open again: the probe failed");
    } else if (c->failures >= D->cfg->circuit_failures && !c->open_until) {
        char why[256], what[96];
        snprintf(why, sizeof(why), "circuit open: %lld consecutive failures of the endpoint",
                 c->failures);
        snprintf(what, sizeof(what), "circuit open after %lld consecutive failures", c->failures);
        circuit_trip(D, key, c, why, what);
    }
}

/* ------------------------------------------------------------ deliveries */

hb_delivery_t *hb_delivery_new(hb_sub_t *sub, const char *id, char *body, size_t body_len,
                               const char *content_type, const char *event_ids,
                               const char *event_type, hb_job_t *const *jobs, size_t n) {
    hb_delivery_t *dl = hb_calloc(1, sizeof(*dl));
    dl->sub = hb_sub_ref(sub);
    hb_copy_str(dl->id, sizeof(dl->id), id);
    dl->body = body;
    dl->body_len = body_len;
    hb_held_add(body_len);
    dl->content_type = hb_strdup(content_type ? content_type : "application/json");
    dl->event_ids = hb_strdup(event_ids ? event_ids : "");
    dl->event_type = hb_strdup(event_type ? event_type : "");
    dl->attempt = 1;
    dl->jobs_cnt = n;
    dl->jobs = hb_malloc((n ? n : 1) * sizeof(*dl->jobs));
    for (size_t i = 0; i < n; i++) {
        dl->jobs[i] = jobs[i];
        hb_job_hold(jobs[i]);
    }
    return dl;
}

void hb_delivery_rebind(hb_delivery_t *dl, hb_sub_t *sub) {
    hb_sub_t *old = dl->sub;
    assert(dl->state == HB_DL_PENDING);
    dl->sub = hb_sub_ref(sub);
    hb_sub_unref(old);
}

int64_t hb_delivery_began_ms(const hb_delivery_t *dl) {
    return dl->resume_ms > dl->first_attempt_ms ? dl->resume_ms : dl->first_attempt_ms;
}

void hb_delivery_continue(hb_delivery_t *dl, int attempt, int64_t first_attempt_ms,
                          int schedule_offset) {
    dl->attempt = attempt;
    dl->first_attempt_ms = first_attempt_ms;
    dl->schedule_offset = schedule_offset;
}

/* The bytes of the events a batch's delivery keeps (dl->events): they count
 * in hb_held_bytes beside its body, as they did while the batch filled, so
 * HOOKBRIDGE_MAX_PENDING_BYTES bounds what a batch in flight holds. */
static size_t events_bytes(hb_event_t *const *events, size_t n) {
    size_t bytes = 0;
    for (size_t i = 0; events && i < n; i++)
        bytes += events[i]->len;
    return bytes;
}

void hb_delivery_free(hb_delivery_t *dl) {
    hb_held_sub(events_bytes(dl->events, dl->jobs_cnt));
    if (dl->events)
        for (size_t i = 0; i < dl->jobs_cnt; i++)
            hb_ev_unref(dl->events[i]);
    free(dl->events);
    hb_sub_unref(dl->sub);
    free(dl->order_key);
    free(dl->jobs);
    hb_held_sub(dl->body_len);
    free(dl->body);
    free(dl->content_type);
    free(dl->event_ids);
    free(dl->event_type);
    free(dl);
}

/* Releases the delivery's holds (its work is now held by gates, or done). */
static void delivery_finish(hb_deliveries_t *D, hb_delivery_t *dl) {
    circuit_release(D, dl);
    if (dl->settled)
        dl->settled(dl, dl->settled_arg);
    for (size_t i = 0; i < dl->jobs_cnt; i++)
        hb_outbox_release(D->outbox, dl->jobs[i]);
    hb_delivery_free(dl);
}

/* The HTTP status of res's answer, 0 when there was none: an exchange cut
 * short (a timeout, the connection closed, headers over the bounds) is no
 * answer, even when its status line arrived (hb_deliver_classify retries
 * it). What the delivery log, the retry message and the metrics record. */
static int answer_status(const hb_http_result_t *res) {
    return res && !res->transport_error && !res->timed_out ? res->http_status : 0;
}

#define HB_REDACTED "[redacted]"
#define HB_REDACT_MIN_CUT 4 /* a start of the value cut by the bound: this many bytes or more */

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* The UTF-8 bytes of code point cp into out (4 bytes of room); their count. */
static size_t utf8_put(unsigned cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* How many bytes of s (n of them) spell the value v as a JSON string's
 * content does (\" \\ \/ and \uXXXX escapes, surrogate pairs too, mixed
 * with plain bytes): an echo service answering with the request's headers
 * in JSON escapes a '"' or '\' of the value, some encoders a '/' (PHP) or
 * anything not ASCII (Python's default), having read the header's bytes as
 * Latin-1 as HTTP servers do (\u00c3\u00a9 for the bytes of an é) or as
 * UTF-8. 0: no such spelling starts here;
 * *cut: s ends inside one after at least HB_REDACT_MIN_CUT bytes of v. */
static size_t json_spelling(const char *s, size_t n, const char *v, size_t vlen, int *cut) {
    size_t i = 0, j = 0;
    *cut = 0;
    while (j < vlen) {
        char enc[4];
        size_t elen;
        unsigned cp, lo;
        if (i == n) {
            *cut = j >= HB_REDACT_MIN_CUT;
            return *cut ? n : 0;
        }
        if (s[i] != '\\') {
            if (s[i] != v[j])
                return 0;
            i++;
            j++;
            continue;
        }
        if (i + 1 == n) {
            *cut = j >= HB_REDACT_MIN_CUT;
            return *cut ? n : 0;
        }
        if (s[i + 1] == '"' || s[i + 1] == '\\' || s[i + 1] == '/') {
            if (v[j] != s[i + 1])
                return 0;
            i += 2;
            j++;
            continue;
        }
        if (s[i + 1] != 'u')
            return 0; /* \b \f \n \r \t: the value has no control characters */
        if (n - i < 6) {
            *cut = j >= HB_REDACT_MIN_CUT;
            return *cut ? n : 0;
        }
        if (hex4(s + i + 2, &cp) < 0)
            return 0;
        elen = 6;
        if (cp >= 0xd800 && cp <= 0xdbff) {
            if (n - i < 12) {
                *cut = j >= HB_REDACT_MIN_CUT;
                return *cut ? n : 0;
            }
            if (s[i + 6] != '\\' || s[i + 7] != 'u' || hex4(s + i + 8, &lo) < 0 || lo < 0xdc00 ||
                lo > 0xdfff)
                return 0;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            elen = 12;
        }
        size_t k = utf8_put(cp, enc);
        if (vlen - j >= k && !memcmp(v + j, enc, k)) {
            i += elen;
            j += k;
        } else if (cp >= 0x80 && cp <= 0xff && (unsigned char)v[j] == cp) {
            i += elen; /* one byte of the value read as Latin-1, as HTTP servers read headers */
            j++;
        } else {
            return 0;
        }
    }
    return i;
}

/* The response snippet as the delivery log keeps it, or NULL when it is the
 * response body as it came: an endpoint that echoes the request (an echo
 * service, a test endpoint) must not put the auth value, which the database
 * holds only sealed, into the log in plaintext. Each occurrence of it, as
 * sent or spelled as in a JSON string, becomes "[redacted]", and so does a
 * start of it (4 bytes or more) that the snippet's bound cut off at its
 * end. Returns a malloc'd copy (lib/hb_delivery.h). */
char *hb_snippet_redacted(const char *snip, const char *secret) {
    size_t len = strlen(snip), vlen = secret ? strlen(secret) : 0;
    hb_buf_t b = {0};
    size_t p = 0, kept = 0;
    int any = 0;
    if (vlen == 0 || len == 0)
        return NULL;
    while (p < len) {
        size_t left = len - p, m = 0;
        int cut = 0;
        if (left >= vlen && !memcmp(snip + p, secret, vlen))
            m = vlen;
        else if (left < vlen && left >= HB_REDACT_MIN_CUT && !memcmp(snip + p, secret, left))
            m = left;
        else if (snip[p] == secret[0] || snip[p] == '\\')
            m = json_spelling(snip + p, left, secret, vlen, &cut);
        if (!m) {
            p++;
            continue;
        }
        hb_buf_put(&b, snip + kept, p - kept);
        hb_buf_puts(&b, HB_REDACTED);
        p += m;
        kept = p;
        any = 1;
    }
    if (!any) {
        free(b.p);
        return NULL;
    }
    hb_buf_put(&b, snip + kept, len - kept);
    hb_buf_put(&b, "", 1);
    return b.p;
}

/* The delivery-log row of one attempt (or of a skipped one: res NULL). */
static hb_dlog_row_t *row_kept(const hb_delivery_t *dl, int attempt, const hb_http_result_t *res,
                               hb_outcome_t outcome, const char *reason, int keep_body) {
    char *redacted =
        res && res->body_len ? hb_snippet_redacted(res->body, dl->sub->auth_value) : NULL;
    hb_dlog_row_t *row;
    hb_attempt_t a = {
        .delivery_id = dl->id,
        .subscription_id = dl->sub->id,
        .event_ids = dl->event_ids,
        .event_type = dl->event_type,
        .attempt = attempt,
        .started_ms = res ? res->started_ms : hb_wall_ms(),
        .first_attempt_ms = dl->first_attempt_ms, /* its day keys the delivery's row */
        .duration_ms = res ? res->duration_ms : 0,
        .http_status = answer_status(res),
        .outcome = outcome,
        .error = reason && *reason ? reason : NULL,
        .response_snippet = redacted               ? redacted
                            : res && res->body_len ? res->body
                                                   : NULL,
        /* kept for replay (of a failed delivery, or of one a deactivation
         * dropped); an empty one (never rendered, or too large to send) is
         * not: replay() then says there is nothing to replay */
        .body = keep_body && (outcome == HB_OUTCOME_FAILED || outcome == HB_OUTCOME_DROPPED) &&
                        dl->body_len
                    ? dl->body
                    : NULL,
        .content_type = dl->content_type,
        .ordering_key = dl->order_key,
        .source_partition = dl->order_partition,
        .source_offset = dl->order_offset,
    };
    row = hb_dlog_row_new(&a); /* copies the snippet */
    free(redacted);
    return row;
}

static hb_dlog_row_t *row_for(const hb_delivery_t *dl, int attempt, const hb_http_result_t *res,
                              hb_outcome_t outcome, const char *reason) {
    return row_kept(dl, attempt, res, outcome, reason, 1);
}

/* Logs an attempt now; the gate is released when its row is committed. */
static void record(hb_deliveries_t *D, hb_delivery_t *dl, int attempt, const hb_http_result_t *res,
                   hb_outcome_t outcome, const char *reason, hb_gate_t *gate) {
    hb_gate_log(D->outbox, gate, row_for(dl, attempt, res, outcome, reason));
}

/* The one DeliveryRetry encoder: deliveries and the retrier's replays. */
static int retry_encode(hb_deliveries_t *D, const hb_retry_msg_t *m, void **buf, size_t *len,
                        char *errstr, size_t errstr_size) {
    json_t *obj = hb_retry_msg_to_json(m);
    int rc;
    if (!obj) {
        hb_seterr(errstr, errstr_size, "out of memory");
        return -1;
    }
    rc = hb_codec_encode(m->after_delivery_id && *m->after_delivery_id ? D->retry_codec
                                                                       : D->retry_codec_v1,
                         obj, buf, len, errstr, errstr_size);
    json_decref(obj);
    return rc;
}

int hb_deliveries_produce_retry(hb_deliveries_t *D, const char *topic, const hb_retry_msg_t *m,
                                char *errstr, size_t errstr_size) {
    void *buf = NULL;
    size_t len = 0;
    if (retry_encode(D, m, &buf, &len, errstr, errstr_size) < 0)
        return -1;
    hb_outbox_produce(D->outbox, topic, m->subscription_id, buf, len, NULL);
    free(buf);
    return 0;
}

/* A DeliveryRetry for dl, to topic, not yet sent; once the broker acks it,
 * row (taken, may be NULL) is logged with gate as its token. NULL when it
 * cannot be encoded (row freed). */
static hb_pmsg_t *retry_msg(hb_deliveries_t *D, hb_delivery_t *dl, const char *topic,
                            int next_attempt, int64_t not_before_ms, int last_status,
                            const char *reason, hb_gate_t *gate, hb_dlog_row_t *row) {
    hb_retry_msg_t m = {
        .delivery_id = dl->id,
        .subscription_id = dl->sub->id,
        .event_ids = dl->event_ids,
        .event_type = dl->event_type,
        .content_type = dl->content_type,
        .body = dl->body,
        .body_len = dl->body_len,
        .attempt = next_attempt,
        .not_before_ms = not_before_ms,
        .first_attempt_ms = dl->first_attempt_ms,
        .schedule_offset = dl->schedule_offset, /* a replay keeps its fresh schedule */
        .last_status = last_status,
        .last_error = (char *)(reason ? reason : ""),
        .after_delivery_id = dl->after_id,
    };
    void *buf = NULL;
    size_t len = 0;
    char errstr[256];
    hb_pmsg_t *pm;
    if (retry_encode(D, &m, &buf, &len, errstr, sizeof(errstr)) < 0) {
        hb_dlog_row_free(row);
        hb_log(HB_LOG_ERROR, HB_KV("delivery_id", dl->id), "cannot encode a DeliveryRetry: %s",
               errstr);
        return NULL;
    }
    pm = hb_pmsg_new(topic, dl->sub->id, buf, len, gate, row);
    hb_pmsg_set_delivery(pm, dl->id);
    free(buf);
    return pm;
}

/* A final failure waiting for the log's answer before it is dead-lettered. */
typedef struct dead_letter_s {
    hb_deliveries_t *D;
    hb_pmsg_t *m; /* for the dead-letter topic, with its 'failed' row */
    char delivery_id[HB_UUID_LEN + 1];
    char subscription_id[HB_UUID_LEN + 1];
    char *event_type;
    char *reason;
    int attempt;
    int64_t began_ms; /* the delivery's first attempt (a replay's: when it was asked for) */
} dead_letter_t;

static void dead_letter_free(void *arg) {
    dead_letter_t *d = arg;
    if (d->m)
        hb_pmsg_free(d->m);
    free(d->event_type);
    free(d->reason);
    free(d);
}

/* The dead-letter topic has it. */
static void dead_lettered(void *arg) {
    dead_letter_t *d = arg;
    hb_metric_inc(d->D->m.dlq);
    hb_log_limited_for(&log_dead_lettered, d->subscription_id, HB_LOG_WARN,
                       HB_KV("delivery_id", d->delivery_id, "subscription_id", d->subscription_id,
                             "event_type", d->event_type),
                       "delivery failed after %d attempt(s), dead-lettered: %s", d->attempt,
                       d->reason);
}

/* The log answered: dead-letter, unless the delivery is already final or this
 * attempt was already logged (a duplicate after a restart: dead-lettering it
 * would be a second, or a false, dead letter). */
static void dead_letter_answered(hb_outbox_t *ob, hb_gate_t *g) {
    dead_letter_t *d = g->arg;
    hb_deliveries_t *D = d->D;
    char buf[200];
    const char *stale = hb_dlog_state_stale(&g->state, d->attempt, d->began_ms, buf, sizeof(buf));
    if (stale) {
        hb_metric_inc(D->m.dlq_skipped);
        hb_log_limited_for(&log_not_dead_lettered, d->subscription_id, HB_LOG_INFO,
                           HB_KV("delivery_id", d->delivery_id, "subscription_id",
                                 d->subscription_id, "event_type", d->event_type),
                           "final failure of attempt %d not dead-lettered: %s (this attempt: %s)",
                           d->attempt, stale, d->reason);
        hb_gate_release(D->outbox, g);
        dead_letter_free(d); /* and the message */
    } else {
        hb_pmsg_t *m = d->m;
        d->m = NULL;
        /* said and counted once the broker has it: a dead letter the broker
         * refuses for a while, or one unsent at a crash, is not one yet */
        hb_pmsg_on_taken(m, dead_lettered, d, dead_letter_free);
        hb_outbox_send(D->outbox, m); /* its ack logs the row, whose commit releases g */
    }
}

/* Final failure: the log is asked first (dead_letter_answered); then the
 * dead-letter topic, and once the broker has it the 'failed' row; the jobs
 * wait for the row's commit. */
static void route_failed(hb_deliveries_t *D, hb_delivery_t *dl, int attempt,
                         const hb_http_result_t *res, const char *reason) {
    hb_gate_t *g = hb_gate_new(D->outbox, dl->jobs, dl->jobs_cnt);
    dead_letter_t *d;
    hb_pmsg_t *m;
    set_state(D, dl, HB_DL_FAILED);
    m = retry_msg(D, dl, D->cfg->dlq_topic, attempt, hb_wall_ms(), answer_status(res), reason, g,
                  row_for(dl, attempt, res, HB_OUTCOME_FAILED, reason));
    if (!m) { /* cannot happen with a valid schema; the log still gates */
        record(D, dl, attempt, res, HB_OUTCOME_FAILED, reason, g);
        return;
    }
    d = hb_calloc(1, sizeof(*d));
    d->D = D;
    d->m = m;
    snprintf(d->delivery_id, sizeof(d->delivery_id), "%s", dl->id);
    snprintf(d->subscription_id, sizeof(d->subscription_id), "%s", dl->sub->id);
    d->event_type = hb_strdup(dl->event_type);
    d->reason = hb_strdup(reason ? reason : "");
    d->attempt = attempt;
    d->began_ms = dl->first_attempt_ms;
    hb_gate_lookup(D->outbox, g, dl->id, dl->first_attempt_ms, dead_letter_answered, d,
                   dead_letter_free);
}

static double random_unit(void) {
    uint32_t r = 0;
    if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
        return 0.5;
    return (double)r / 4294967296.0;
}

/* An attempt not made because its endpoint host is busy or its
 * subscription's rate limit has no token soon: at what pace the host (or the
 * limit) takes requests, and how many are ahead of it there. */
typedef struct pace_s {
    char key[HB_UUID_LEN + 520]; /* "h <host key>" or "s <subscription id>" */
    double per_second;           /* > 0 */
    size_t ahead;
} pace_t;

/* The next free turn of one host or subscription, in this process: a
 * virtual clock the parked deliveries are spaced on. */
typedef struct turn_s {
    double next_ms; /* wall clock */
} turn_t;

#define TURNS_SWEEP 4096 /* clocks kept before the past ones are forgotten */

/* Parked deliveries come back at this share of the pace: at the full pace a
 * host's queue (or a limit's bucket) never drains, and the moments they
 * come back together (a delay tier is read a partition at a time) would
 * fill it until some are parked again; a little slack lets it catch up. */
#define TURN_SHARE 0.8

/* A pacing clock whose turns are all past (sweep_stale). */
static int turn_past(const hb_deliveries_t *D, const void *val, int64_t now) {
    (void)D;
    return ((const turn_t *)val)->next_ms <= (double)now;
}

/* When a delivery parked for p is due (not before not_before, the first
 * tier's delay): its turn at p's pace after those ahead of it and those
 * parked before it, so a burst larger than the endpoint's pace comes back
 * spread at that pace rather than all at once to be parked again. */
static int64_t paced(hb_deliveries_t *D, const pace_t *p, int64_t now, int64_t not_before) {
    hb_hash_slot_t *s = hb_hash_find(&D->turns, p->key);
    double step = 1000.0 / (p->per_second * TURN_SHARE), due;
    turn_t *t;
    if (!s) {
        sweep_stale(D, &D->turns, &D->turns_sweep, TURNS_SWEEP, turn_past, now);
        t = hb_calloc(1, sizeof(*t));
        hb_hash_put(&D->turns, p->key, t);
    } else {
        t = s->val;
    }
    due = (double)now + (double)p->ahead * step;
    if (due < t->next_ms)
        due = t->next_ms;
    if (due < (double)not_before)
        due = (double)not_before;
    t->next_ms = due + step;
    return (int64_t)due;
}

/* When an ordered delivery routed here is due next (wall clock). A delivery
 * waiting behind it is asked about again then rather than after the first
 * tier's delay: behind a head whose endpoint is down for hours, each
 * waiting event was written again (and its predecessor looked up in the
 * delivery log) every 5 s, 720 times an hour. Only what this process routed
 * is known (the retry messages are keyed by subscription, so a key's
 * deliveries are read by one retrier but a head and its waiters may be on
 * tiers whose partitions another has); an unknown predecessor's waiter waits
 * the first tier's delay, as before. */
typedef struct due_s {
    int64_t ms;
    int waiter; /* itself waiting behind another, not attempted when due */
} due_t;

#define DUES_SWEEP 4096 /* dues kept before the past ones are forgotten */
#define DUES_MAX 200000 /* at most (about 16 MB); beyond, waiters wait the first delay */
/* A waiter is asked about again at least this often, so that a head given
 * up with hookbridge.cancel() (which no process here hears of) lets its key
 * go on within minutes, not when its next attempt would have been due. */
#define ORDER_WAIT_MAX_MS 300000

static int due_past(const hb_deliveries_t *D, const void *val, int64_t now) {
    (void)D;
    return ((const due_t *)val)->ms <= now;
}

static void note_due(hb_deliveries_t *D, const hb_delivery_t *dl, int64_t due_ms, int64_t now) {
    hb_hash_slot_t *s;
    due_t *d;
    if (dl->sub->ordering == HB_ORDER_NONE || !*dl->id)
        return;
    if ((s = hb_hash_find(&D->dues, dl->id)) != NULL) {
        ((due_t *)s->val)->ms = due_ms;
        ((due_t *)s->val)->waiter = dl->waiting;
        return;
    }
    sweep_stale(D, &D->dues, &D->dues_sweep, DUES_SWEEP, due_past, now);
    if (hb_hash_count(&D->dues) >= DUES_MAX)
        return;
    d = hb_calloc(1, sizeof(*d));
    d->ms = due_ms;
    d->waiter = dl->waiting;
    hb_hash_put(&D->dues, dl->id, d);
}

/* When a delivery waiting behind after_id is to be asked about again: just
 * after its predecessor comes due (half a second after an attempt, time to
 * have it looked up and under way, so the waiter then waits for it in
 * memory; 10 ms after a waiter, so a chain of them drains at once rather
 * than half a second a link), at most ORDER_WAIT_MAX_MS from now; 0 when
 * that is not known here, or past. */
static int64_t order_wait_until(const hb_deliveries_t *D, const char *after_id, int64_t now) {
    const due_t *d = *after_id ? hb_hash_get(&D->dues, after_id) : NULL;
    int64_t until;
    if (!d || d->ms <= now)
        return 0;
    until = d->ms + (d->waiter ? 10 : 500);
    return until - now > ORDER_WAIT_MAX_MS ? now + ORDER_WAIT_MAX_MS : until;
}

/* The longest tier not longer than wait_ms, if longer than topic's: a
 * delivery due much later waits there, hopping less (the retrier produces a
 * message due beyond its tier's span again onto the same tier). */
static const char *tier_for_wait(const hb_schedule_t *sch, const char *topic, long long wait_ms) {
    const char *t = hb_schedule_wait_topic(sch, wait_ms);
    return t && hb_schedule_tier_ms(sch, t, NULL) > hb_schedule_tier_ms(sch, topic, NULL) ? t
                                                                                          : topic;
}

/* Retryable failure of attempt dl->attempt (or a skipped one when res is
 * NULL): the next tier, or the dead-letter topic when attempts are used up;
 * one not made for pace (busy host, rate limit) is due at its turn. */
static void route_retry(hb_deliveries_t *D, hb_delivery_t *dl, int made,
                        const hb_http_result_t *res, const char *reason, int schedule_offset,
                        const pace_t *pace) {
    const char *topic = NULL;
    int64_t not_before = 0, now = hb_wall_ms();
    char turn[64] = "";
    long long retry_after = res && res->retry_after_s > 0 ? res->retry_after_s * 1000 : 0;
    int step = made - schedule_offset; /* attempts made in this schedule */
    hb_gate_t *g;
    hb_pmsg_t *m;
    char why[320];

    if (step < 1) /* a skipped first attempt waits the first delay */
        step = 1;
    if (hb_schedule_next(&D->cfg->schedule, step, retry_after, D->cfg->retry_after_max_ms,
                         (int)D->cfg->retry_jitter_percent, random_unit(), now, &topic,
                         &not_before) != 0) {
        snprintf(why, sizeof(why), "%s (attempts used up)", reason);
        route_failed(D, dl, made, res, why);
        return;
    }
    if (pace) {
        not_before = paced(D, pace, now, not_before);
        topic = tier_for_wait(&D->cfg->schedule, topic, not_before - now);
        snprintf(turn, sizeof(turn), ", its turn at a pace of %.3g/s", pace->per_second);
    }
    if (dl->waiting) { /* behind after_id: until that one's next attempt */
        int64_t until = order_wait_until(D, dl->after_id, now);
        if (until > not_before) {
            not_before = until;
            topic = tier_for_wait(&D->cfg->schedule, topic, not_before - now);
        }
    }
    note_due(D, dl, not_before, now);
    g = hb_gate_new(D->outbox, dl->jobs, dl->jobs_cnt);
    m = retry_msg(D, dl, topic, made + 1, not_before, answer_status(res), reason, g,
                  dl->waiting && dl->quiet ? NULL
                                           : row_for(dl, made, res, HB_OUTCOME_RETRY, reason));
    if (!m) {
        set_state(D, dl, HB_DL_LOST);
        hb_gate_done(D->outbox, g);
        return;
    }
    set_state(D, dl, HB_DL_RETRY);
    for (int t = 0; t < D->cfg->schedule.tiers; t++)
        if (!strcmp(D->cfg->schedule.tier_topics[t], topic))
            hb_metric_inc(D->m.tier[t]);
    hb_log_limited_for(
        res           ? &log_failed
        : dl->waiting ? &log_waiting
                      : &log_not_made,
        dl->sub->id, HB_LOG_INFO,
        HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id, "event_type", dl->event_type),
        res ? "attempt %d failed (%s): next attempt in %lld ms via %s%s"
            : "attempt %d not made (%s): it waits %lld ms in %s%s",
        res ? made : dl->attempt, reason, (long long)(not_before - now), topic, turn);
    /* The 'retry' row is logged once the broker has the next attempt, so a
     * logged attempt always has its successor durable; its commit releases
     * the jobs. */
    hb_outbox_send(D->outbox, m);
}

static void on_attempt_done(const hb_http_result_t *res, void *opaque);
static int shed_revoked(hb_deliveries_t *D, hb_delivery_t *dl);

/* The attempt was not made (circuit open, endpoint busy or slow, rate
 * limit, a new URL not verified yet): the delivery waits in a delay tier
 * instead of in memory. Any attempt, first or retry, goes to the first tier
 * (one held back by pace, a busy host's or a rate limit's, due at its turn
 * if later: see paced(); then in the longest tier that fits) and keeps its
 * number: nothing was tried, so it is due again soon (a retry
 * sent back to its own tier would wait that tier's delay once more, up to
 * hours, for a moment of overload), and when it is made and fails, the
 * schedule goes on from where it was. In the retrier an open circuit counts
 * the attempt as failed (without a request), so the schedule of a dead
 * endpoint still ends instead of going round forever. */
static void route_not_made(hb_deliveries_t *D, hb_delivery_t *dl, const char *reason, int circuit,
                           const pace_t *pace) {
    dl->circuit = circuit;
    set_state(D, dl, HB_DL_NOT_MADE);
    if (circuit && D->circuit_counts_attempts) {
        char why[320];
        snprintf(why, sizeof(why), "attempt not made: %s", reason);
        route_retry(D, dl, dl->attempt, NULL, why, dl->schedule_offset, NULL);
        return;
    }
    /* made - schedule_offset below 1: the first delay (or its turn, later) */
    route_retry(D, dl, dl->attempt - 1, NULL, reason, dl->attempt - 1, pace);
}

/* An ordered delivery that waits behind another: like an attempt not made
 * (route_not_made), with its own reason and metric, carrying after_id. */
void hb_delivery_wait(hb_deliveries_t *D, hb_delivery_t *dl, const char *after_id, int quiet) {
    char why[80];
    if (shed_revoked(D, dl)) /* its new owner makes it wait */
        return;
    snprintf(why, sizeof(why), "waiting behind %s", after_id);
    if (after_id != dl->after_id) /* the retrier passes the delivery's own */
        snprintf(dl->after_id, sizeof(dl->after_id), "%s", after_id);
    dl->waiting = 1;
    dl->quiet = quiet;
    /* the retrier drops it when the subscription is deactivated after this */
    if (!dl->first_attempt_ms)
        dl->first_attempt_ms = hb_wall_ms();
    set_state(D, dl, HB_DL_NOT_MADE);
    route_retry(D, dl, dl->attempt - 1, NULL, why, dl->schedule_offset, NULL);
    delivery_finish(D, dl);
}

/* hb_delivery_make; split: a batch (n > 1) whose payload is over the bound
 * is not routed but left to the caller (NULL, *too_large set). */
static hb_delivery_t *make(hb_deliveries_t *D, hb_sub_t *sub, hb_event_t *const *events, size_t n,
                           const char *id, const char *event_ids, hb_job_t *const *jobs, int split,
                           size_t *too_large) {
    const char *type = hb_ev_type(events[0]);
    char errstr[256], reason[300];
    hb_payload_t payload;
    hb_delivery_t *dl;

    if (hb_deliver_render(sub, events, n, id, D->cfg->source, hb_wall_ms(), &payload, errstr,
                          sizeof(errstr)) < 0) {
        snprintf(reason, sizeof(reason), "cannot render payload: %s", errstr);
        dl = hb_delivery_new(sub, id, hb_strdup(""), 0, NULL, event_ids, type, jobs, n);
        hb_delivery_skip(D, dl, HB_OUTCOME_FAILED, reason);
    } else if (payload.len > (size_t)D->cfg->max_payload_bytes && split && n > 1) {
        *too_large = payload.len;
        free(payload.body);
    } else if (payload.len > (size_t)D->cfg->max_payload_bytes) {
        /* Not sent, and not copied anywhere: the reason says what to change. */
        snprintf(reason, sizeof(reason),
                 "payload of %zu bytes exceeds HOOKBRIDGE_MAX_PAYLOAD_BYTES (%lld)%s", payload.len,
                 D->cfg->max_payload_bytes, n > 1 ? ": lower the subscription's batch_max" : "");
        free(payload.body);
        dl = hb_delivery_new(sub, id, hb_strdup(""), 0, payload.content_type, event_ids, type, jobs,
                             n);
        hb_delivery_skip(D, dl, HB_OUTCOME_FAILED, reason);
    } else {
        dl = hb_delivery_new(sub, id, payload.body, payload.len, payload.content_type, event_ids,
                             type, jobs, n);
        dl->matched = 1;
        /* a batch may mix partitions: kept for shed_revoked; and for
         * as_it_is_now's filter when it may wait for its rate limit */
        if (n > 1 || sub->rate_per_second > 0) {
            dl->events = hb_malloc(n * sizeof(*dl->events));
            for (size_t i = 0; i < n; i++)
                dl->events[i] = hb_ev_ref(events[i]);
            hb_held_add(events_bytes(dl->events, n));
        }
        return dl;
    }
    return NULL;
}

/* Renders and sends events[0..n) as two batches, each under the delivery id
 * of its own events (hb_delivery_render splits either again if still too
 * large). */
static void render_halves(hb_deliveries_t *D, hb_sub_t *sub, hb_event_t *const *events,
                          hb_job_t *const *jobs, size_t n) {
    size_t half = n / 2;
    for (int k = 0; k < 2; k++) {
        size_t off = k ? half : 0, cnt = k ? n - half : half;
        char part[HB_UUID_LEN + 1];
        char *ids = hb_deliver_id(sub->id, events + off, cnt, part);
        hb_delivery_render(D, sub, events + off, cnt, part, ids, jobs + off);
        free(ids);
    }
}

/* A batch too large for one request is sent in two halves (each split again
 * while still too large), each under the delivery id of its own events: a
 * batch is a grouping, and its events must not be lost to it. Only one event
 * over the bound fails. */
void hb_delivery_render(hb_deliveries_t *D, hb_sub_t *sub, hb_event_t *const *events, size_t n,
                        const char *id, const char *event_ids, hb_job_t *const *jobs) {
    size_t too_large = 0;
    hb_delivery_t *dl = make(D, sub, events, n, id, event_ids, jobs, 1, &too_large);
    if (dl) {
        hb_delivery_send(D, dl);
    } else if (too_large) {
        size_t half = n / 2;
        hb_log_limited_for(&log_split, sub->id, HB_LOG_INFO,
                           HB_KV("delivery_id", id, "subscription_id", sub->id),
                           "batch of %zu events (%zu bytes) exceeds HOOKBRIDGE_MAX_PAYLOAD_BYTES "
                           "(%lld): sent as two batches of %zu and %zu",
                           n, too_large, D->cfg->max_payload_bytes, half, n - half);
        render_halves(D, sub, events, jobs, n);
    }
}

hb_delivery_t *hb_delivery_make(hb_deliveries_t *D, hb_sub_t *sub, hb_event_t *const *events,
                                size_t n, const char *id, const char *event_ids,
                                hb_job_t *const *jobs) {
    return make(D, sub, events, n, id, event_ids, jobs, 0, NULL);
}

/* A batch not sent yet whose events are partly of partitions revoked from
 * this process: those events leave it (their jobs released: forgotten, they
 * commit nothing; their new owner delivers them) and the rest is rendered
 * again, as its subscription is now, under the delivery id of the events
 * left, so no event goes out both here and from its new owner. Returns 1
 * when that ended dl: every job revoked (abandoned), or the rest could not
 * be rendered (failed, not expected: it rendered with more); else 0. */
static int rerender(hb_deliveries_t *D, hb_delivery_t *dl, const char *id, char *ids);

static int shed_revoked(hb_deliveries_t *D, hb_delivery_t *dl) {
    size_t kept, n = dl->jobs_cnt, bytes;
    char id[HB_UUID_LEN + 1];
    char *ids;

    if (hb_delivery_revoked(dl)) {
        hb_delivery_abandon(D, dl);
        return 1;
    }
    if (!dl->events)
        return 0;
    bytes = events_bytes(dl->events, n);
    kept = hb_deliveries_shed(D, dl->events, dl->jobs, n);
    if (kept == n)
        return 0;
    hb_held_sub(bytes - events_bytes(dl->events, kept));
    dl->jobs_cnt = kept;
    ids = hb_deliver_id(dl->sub->id, dl->events, kept, id);
    hb_log(HB_LOG_INFO, HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id),
           "batch: %zu of its %zu events are of revoked partitions, left to their new owner; "
           "the %zu others go as delivery %s",
           n - kept, n, kept, id);
    return rerender(D, dl, id, ids);
}

/* dl's events were cut to dl->jobs_cnt: it goes on under the delivery id of
 * those left (id; their uuids ids, taken), rendered again. Returns 1 when
 * they cannot be (failed, not expected: they rendered with more), else 0. */
static int rerender(hb_deliveries_t *D, hb_delivery_t *dl, const char *id, char *ids) {
    size_t kept = dl->jobs_cnt;
    char errstr[256], reason[300];
    hb_payload_t payload;

    snprintf(dl->id, sizeof(dl->id), "%s", id);
    free(dl->event_ids);
    dl->event_ids = ids;
    hb_held_sub(dl->body_len);
    free(dl->body);
    dl->body = NULL;
    dl->body_len = 0;
    if (hb_deliver_render(dl->sub, dl->events, kept, dl->id, D->cfg->source, hb_wall_ms(), &payload,
                          errstr, sizeof(errstr)) < 0) {
        snprintf(reason, sizeof(reason), "cannot render payload: %s", errstr);
        dl->body = hb_strdup("");
        hb_delivery_skip(D, dl, HB_OUTCOME_FAILED, reason);
        return 1;
    }
    dl->body = payload.body;
    dl->body_len = payload.len;
    hb_held_add(dl->body_len);
    free(dl->content_type);
    dl->content_type = hb_strdup(payload.content_type);
    return 0;
}

/* ----------------------------------------------------------- rate limits */

static void transmit(hb_deliveries_t *D, hb_delivery_t *dl);

static int rate_ask(const char *id, int wanted, void *opaque) {
    hb_deliveries_t *D = opaque;
    return D->rate_ask ? D->rate_ask(id, wanted, D->rate_ask_opaque) : -1;
}

static void rate_held(hb_deliveries_t *D, long long held_ms) {
    hb_metric_inc(D->m.rate_limited);
    hb_metric_observe(D->m.rate_limit_wait, (double)held_ms / 1000.0);
}

/* Its subscription's URL was changed and the new one is not verified yet:
 * nothing is sent (not to the old URL, not to the unverified new one); the
 * delivery waits in a delay tier, its attempt not counted, and comes round
 * until the new URL has passed its challenge or failed it. */
static void park_unverified(hb_deliveries_t *D, hb_delivery_t *dl) {
    dl->unverified = 1;
    route_not_made(D, dl, "waiting for the subscription's new URL to pass its verification", 0,
                   NULL);
    delivery_finish(D, dl);
}

static hb_log_limit_t log_refiltered =
    HB_LOG_LIMIT("\"N of its M events no longer taken by the subscription\"");

/* A delivery the dispatcher made from its events (nothing logged of it yet)
 * that waited while its subscription changed goes with the events the
 * subscription takes now, its event types and content filter, as a filling
 * batch does (dispatcher.c, batch_flush): the others leave it as never
 * matched (their jobs done, counted in hookbridge_events_filtered_total),
 * and the rest goes under the delivery id of its own events, rendered
 * again. A single event's filter is checked only when its event was kept
 * (a rate-limited subscription's, which may wait long); its type always.
 * Returns 1 when that ended dl (nothing left; or not rendered). */
static int refilter(hb_deliveries_t *D, hb_delivery_t *dl, const hb_sub_t *sub) {
    size_t n = dl->jobs_cnt, kept = 0, bytes;
    char id[HB_UUID_LEN + 1];
    char *ids;

    if (!dl->events) {
        if (hb_sub_has_type(sub, dl->event_type))
            return 0;
        kept = 0;
    } else {
        for (size_t i = 0; i < n; i++) {
            hb_event_t *ev = dl->events[i];
            if (hb_sub_has_type(sub, hb_ev_type(ev)) &&
                (!sub->filter || hb_sub_wants(sub, hb_ev_json(ev))))
                kept++;
        }
        if (kept == n)
            return 0;
    }
    if (D->m.filtered)
        hb_metric_add(D->m.filtered, (double)(n - kept));
    hb_log_limited_for(&log_refiltered, dl->sub->id, HB_LOG_INFO,
                       HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id),
                       "%zu of its %zu events no longer taken by the subscription (its event types "
                       "or filter changed while it waited): not sent%s",
                       n - kept, n, kept ? "; the others go on" : "");
    if (!kept) {
        set_state(D, dl, HB_DL_DISCARDED); /* as never matched: done, nothing logged */
        delivery_finish(D, dl);
        return 1;
    }
    bytes = events_bytes(dl->events, n);
    kept = 0;
    for (size_t i = 0; i < n; i++) {
        hb_event_t *ev = dl->events[i];
        if (hb_sub_has_type(sub, hb_ev_type(ev)) &&
            (!sub->filter || hb_sub_wants(sub, hb_ev_json(ev)))) {
            dl->events[kept] = ev;
            dl->jobs[kept++] = dl->jobs[i];
            continue;
        }
        hb_ev_unref(ev);
        hb_outbox_release(D->outbox, dl->jobs[i]); /* done with, as unmatched */
    }
    dl->jobs_cnt = kept;
    hb_held_sub(bytes - events_bytes(dl->events, kept));
    ids = hb_deliver_id(sub->id, dl->events, kept, id);
    return rerender(D, dl, id, ids);
}

/* A pending delivery that waited (for its rate-limit turn, or for a
 * connection while its subscription changed) goes on as the subscription is
 * now: 1 when that ended it (dropped: deregistered, inactive or deactivated
 * since it began; parked: its new URL awaits verification), else 0 with dl
 * bound to the current subscription (URL, secrets, options). */
static int as_it_is_now(hb_deliveries_t *D, hb_delivery_t *dl) {
    hb_sub_t *sub;
    const char *why;
    if (!D->current)
        return 0;
    sub = D->current(dl->sub->id, D->current_opaque);
    if (sub && sub != dl->sub)
        hb_delivery_rebind(dl, sub);
    /* first what it no longer takes: not logged dropped, even when it was
     * deactivated too (replay_dropped would send it) */
    if (sub && dl->matched && refilter(D, dl, sub))
        return 1;
    why = hb_sub_drop_reason(sub, hb_delivery_began_ms(dl));
    if (why) {
        hb_delivery_skip(D, dl, HB_OUTCOME_DROPPED, why);
        return 1;
    }
    if (hb_sub_awaiting_verification(sub)) {
        park_unverified(D, dl);
        return 1;
    }
    return 0;
}

/* Its turn came. */
static void rate_send(void *item, long long held_ms, int throttled, void *opaque) {
    hb_deliveries_t *D = opaque;
    hb_delivery_t *dl = item;
    int open;
    if (throttled)
        rate_held(D, held_ms);
    if (D->abandoning) {
        hb_delivery_abandon(D, dl);
        return;
    }
    if (shed_revoked(D, dl)) /* its new owner sends it */
        return;
    if (as_it_is_now(D, dl))
        return;
    /* the circuit of its host as it is now (its URL may have changed) */
    if (circuit_enabled(D) &&
        hb_http_host_key(dl->sub->url, dl->endpoint, sizeof(dl->endpoint)) == 0 &&
        (open = circuit_open(D, dl, 1)) != 0) {
        /* the circuit opened while it waited, or another attempt probes it */
        route_not_made(D, dl, circuit_reason(open), 1, NULL);
        delivery_finish(D, dl);
        return;
    }
    transmit(D, dl);
}

/* It cannot wait for its turn: like an endpoint that is busy, the attempt is
 * not made nor counted. */
static void rate_refuse(void *item, const char *reason, long long held_ms, void *opaque) {
    hb_deliveries_t *D = opaque;
    hb_delivery_t *dl = item;
    rate_held(D, held_ms);
    if (D->abandoning) {
        hb_delivery_abandon(D, dl);
        return;
    }
    if (shed_revoked(D, dl)) /* its new owner makes it wait */
        return;
    hb_log(HB_LOG_DEBUG, HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id), "%s",
           reason);
    dl->rate_limited = 1;
    {
        pace_t p;
        snprintf(p.key, sizeof(p.key), "s %s", dl->sub->id);
        p.per_second = dl->sub->rate_per_second;
        p.ahead = hb_ratelimit_held_for(D->rl, dl->sub->id);
        route_not_made(D, dl, reason, 0, p.per_second > 0 ? &p : NULL);
    }
    delivery_finish(D, dl);
}

static void rate_drop(void *item, void *opaque) {
    hb_delivery_abandon(opaque, item); /* shutdown or revoked: consumed again */
}

void hb_deliveries_set_rate_ask(hb_deliveries_t *D, int (*ask)(const char *, int, void *),
                                void *opaque) {
    D->rate_ask = ask;
    D->rate_ask_opaque = opaque;
}

void hb_deliveries_set_filtered(hb_deliveries_t *D, hb_metric_t *m) {
    D->m.filtered = m;
}

void hb_deliveries_set_current(hb_deliveries_t *D, hb_sub_t *(*current)(const char *, void *),
                               void *opaque) {
    D->current = current;
    D->current_opaque = opaque;
}

void hb_deliveries_rate_granted(hb_deliveries_t *D, const char *id, int granted,
                                long long wait_ms) {
    hb_ratelimit_granted(D->rl, id, granted, wait_ms, hb_mono_ms());
}

long long hb_deliveries_tick(hb_deliveries_t *D) {
    return hb_ratelimit_tick(D->rl, hb_mono_ms());
}

void hb_delivery_send(hb_deliveries_t *D, hb_delivery_t *dl) {
    int open;
    if (shed_revoked(D, dl)) /* its new owner sends it */
        return;
    if (!dl->first_attempt_ms)
        dl->first_attempt_ms = hb_wall_ms();
    if (hb_sub_awaiting_verification(dl->sub)) {
        park_unverified(D, dl);
        return;
    }
    /* a rate-limited one becomes the probe, if it does, when its turn comes */
    if (circuit_enabled(D) &&
        hb_http_host_key(dl->sub->url, dl->endpoint, sizeof(dl->endpoint)) == 0 &&
        (open = circuit_open(D, dl, dl->sub->rate_per_second <= 0)) != 0) {
        route_not_made(D, dl, circuit_reason(open), 1, NULL);
        delivery_finish(D, dl);
        return;
    }
    if (dl->sub->rate_per_second > 0) { /* its turn first (rate_send, rate_refuse) */
        hb_ratelimit_submit(D->rl, dl->sub->id, dl->sub->rate_per_second, dl->sub->rate_burst, dl,
                            hb_mono_ms());
        return;
    }
    transmit(D, dl);
}

/* Sign and send: IN_FLIGHT until on_attempt_done. */
static void transmit(hb_deliveries_t *D, hb_delivery_t *dl) {
    hb_payload_t payload;

    dl->owner = D;
    /* the request borrows the body (no copy: a delivery waiting for its host
     * holds its payload once); dl keeps it, unchanged, until on_attempt_done */
    payload.body = dl->body;
    payload.len = dl->body_len;
    payload.content_type = dl->content_type;
    set_state(D, dl, HB_DL_IN_FLIGHT);
    hb_deliver_send_borrowed(D->http, dl->sub, dl->id, &payload, D->cfg->request_timeout_ms,
                             (size_t)D->cfg->response_snippet_bytes, on_attempt_done, dl);
}

/* Taken back from its host's queue because its subscription changed
 * (hb_deliveries_rebind_waiting): sent anew as the subscription is now, to
 * its current URL with its current secrets, or dropped or parked. The probe
 * slot it may hold is given up; the circuit (and rate limit) of its
 * subscription's host decide again. */
static void send_again(hb_deliveries_t *D, hb_delivery_t *dl) {
    circuit_release(D, dl);
    set_state(D, dl, HB_DL_PENDING);
    if (!as_it_is_now(D, dl))
        hb_delivery_send(D, dl);
}

/* A batch the endpoint refused as too large (HTTP 413) on an attempt made
 * here with its events at hand (the dispatcher's first): sent again at once
 * in two halves, each under the delivery id of its own events, as a batch
 * over max_payload_bytes is, rather than dead-lettered whole with a body
 * that replay() could only send to the same refusal. The refused request is
 * not recorded (its webhook-id is not used again); the halves are. */
static void split_refused(hb_deliveries_t *D, hb_delivery_t *dl) {
    size_t n = dl->jobs_cnt, half = n / 2;
    hb_log_limited_for(&log_split, dl->sub->id, HB_LOG_WARN,
                       HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id),
                       "batch of %zu events (%zu bytes) refused by the endpoint as too large "
                       "(HTTP 413): sent again as two batches of %zu and %zu; lower the "
                       "subscription's batch_max",
                       n, dl->body_len, half, n - half);
    render_halves(D, dl->sub, dl->events, dl->jobs, n);
    set_state(D, dl, HB_DL_DISCARDED);
    delivery_finish(D, dl);
}

/* A batch split by its body (split_refused_body): its row waits for the
 * broker to have both halves. */
typedef struct split_s {
    /* the outbox, not the deliveries: a half the broker takes late (while
     * the outbox is freed, after the deliveries are) logs the row still */
    hb_outbox_t *ob;
    hb_gate_t *g;       /* holds the batch's jobs until its row is committed */
    hb_dlog_row_t *row; /* the batch's 'dropped' row, logged once both are taken */
    int untaken, refs;
} split_t;

static void split_taken(void *arg) {
    split_t *sp = arg;
    if (--sp->untaken > 0)
        return;
    hb_gate_log(sp->ob, sp->g, sp->row);
    sp->row = NULL;
}

static void split_unref(void *arg) {
    split_t *sp = arg;
    if (--sp->refs > 0)
        return;
    hb_dlog_row_free(sp->row); /* never logged: unsent at a stop, the batch is read again */
    free(sp);
}

/* A batch the endpoint refused as too large (HTTP 413) on an attempt made
 * without its events at hand (the retrier's: a DeliveryRetry carries the
 * body only): split in its body (hb_deliver_split_body) into two halves,
 * each a delivery of its own under the id of its own events (the id the
 * dispatcher's split gives them), put on the first tier due now: each is
 * then retried on its own, split again while refused, and keeps the batch's
 * attempt number (the refused request is not counted, as the dispatcher's
 * split does not count it), first attempt and schedule. The batch itself is
 * logged 'dropped', its reason beginning "split:" and without its body
 * (replay_dropped does not send it: its events went on in the halves), once
 * the broker has both halves; its message's offset waits for that row. A
 * stop or a crash before: the message is read again and split again, into
 * halves with the same ids (duplicates at most, never a loss). 0 when the
 * body is not a batch that can be split: it is routed as any 413 is. */
static int split_refused_body(hb_deliveries_t *D, hb_delivery_t *dl, const hb_http_result_t *res) {
    size_t n = 1, half;
    char *copy, *tok, *save = NULL, *ids[2] = {NULL, NULL}, *types[2] = {NULL, NULL};
    const char **uuids, *part_ids[2];
    char idk[2][HB_UUID_LEN + 1], errstr[256], reason[400];
    hb_payload_t out[2];
    const char *topic = D->cfg->schedule.tier_topics[0];
    int64_t now = hb_wall_ms();
    split_t *sp;

    for (const char *p = dl->event_ids; *p; p++)
        n += *p == ',';
    if (n < 2 || !dl->body_len)
        return 0;
    half = n / 2;
    uuids = hb_malloc(n * sizeof(*uuids));
    copy = hb_strdup(dl->event_ids);
    n = 0;
    for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        uuids[n++] = tok;
    if (n < 2 || half >= n) { /* an empty uuid: not expected (poison) */
        free(uuids);
        free(copy);
        return 0;
    }
    ids[0] = hb_deliver_id_of(dl->sub->id, uuids, half, idk[0]);
    ids[1] = hb_deliver_id_of(dl->sub->id, uuids + half, n - half, idk[1]);
    free(uuids);
    free(copy);
    part_ids[0] = idk[0];
    part_ids[1] = idk[1];
    if (hb_deliver_split_body(dl->body, dl->body_len, dl->content_type, n, half, part_ids, now, out,
                              types, errstr, sizeof(errstr)) < 0) {
        hb_log(HB_LOG_WARN, HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id),
               "batch refused as too large (HTTP 413) cannot be split: %s", errstr);
        free(ids[0]);
        free(ids[1]);
        return 0;
    }
    hb_log_limited_for(&log_split, dl->sub->id, HB_LOG_WARN,
                       HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id),
                       "batch of %zu events (%zu bytes) refused by the endpoint as too large "
                       "(HTTP 413) on attempt %d: goes on as two batches of %zu and %zu, "
                       "deliveries %s and %s due now via %s; lower the subscription's batch_max",
                       n, dl->body_len, dl->attempt, half, n - half, idk[0], idk[1], topic);
    snprintf(reason, sizeof(reason),
             "split: refused as too large (HTTP 413), its %zu events go on as deliveries %s (%zu) "
             "and %s (%zu)",
             n, idk[0], half, idk[1], n - half);
    sp = hb_calloc(1, sizeof(*sp));
    sp->ob = D->outbox;
    sp->g = hb_gate_new(D->outbox, dl->jobs, dl->jobs_cnt);
    sp->row = row_kept(dl, dl->attempt, res, HB_OUTCOME_DROPPED, reason, 0);
    sp->untaken = sp->refs = 2;
    for (int k = 0; k < 2; k++) {
        hb_retry_msg_t m = {
            .delivery_id = idk[k],
            .subscription_id = dl->sub->id,
            .event_ids = ids[k],
            .event_type = types[k],
            .content_type = (char *)out[k].content_type,
            .body = out[k].body,
            .body_len = out[k].len,
            .attempt = dl->attempt,
            .not_before_ms = now,
            .first_attempt_ms = dl->first_attempt_ms,
            .schedule_offset = dl->schedule_offset,
            .last_status = 413,
            .last_error = (char *)"HTTP 413: split from a batch refused as too large",
        };
        void *buf = NULL;
        size_t len = 0;
        hb_pmsg_t *pm;
        if (retry_encode(D, &m, &buf, &len, errstr, sizeof(errstr)) < 0) {
            /* cannot happen with a valid schema: the batch stays unfinished
             * (its gate never released), read again after a restart */
            hb_log(HB_LOG_ERROR, HB_KV("delivery_id", idk[k]), "cannot encode a DeliveryRetry: %s",
                   errstr);
            split_unref(sp);
        } else {
            pm = hb_pmsg_new(topic, dl->sub->id, buf, len, NULL, NULL);
            hb_pmsg_set_delivery(pm, idk[k]);
            hb_pmsg_on_taken(pm, split_taken, sp, split_unref);
            hb_outbox_send(D->outbox, pm);
            hb_metric_inc(D->m.tier[0]);
        }
        free(buf);
        free(out[k].body);
        free(ids[k]);
        free(types[k]);
    }
    set_state(D, dl, HB_DL_DROPPED);
    delivery_finish(D, dl);
    return 1;
}

/* Classify and route a finished request. */
static void on_attempt_done(const hb_http_result_t *res, void *opaque) {
    hb_delivery_t *dl = opaque;
    hb_deliveries_t *D = dl->owner;
    char reason[256];
    hb_outcome_t outcome;
    int status;

    if (D->abandoning) { /* shutdown: the message will be consumed again */
        hb_delivery_abandon(D, dl);
        return;
    }
    if (res->not_sent && shed_revoked(D, dl)) /* its new owner sends it */
        return;
    if (res->not_sent == HB_HTTP_WITHDRAWN) { /* its subscription changed while it waited */
        send_again(D, dl);
        return;
    }
    if (res->not_sent) { /* never sent: no attempt, no verdict on the endpoint */
        pace_t p;
        int host_busy =
            (res->not_sent == HB_HTTP_QUEUE_FULL || res->not_sent == HB_HTTP_QUEUE_WAIT) &&
            res->host_pace > 0;
        if (host_busy) {
            p.key[0] = 'h';
            p.key[1] = ' ';
            host_busy = hb_http_host_key(dl->sub->url, p.key + 2, sizeof(p.key) - 2) == 0;
            p.per_second = res->host_pace;
            p.ahead = res->host_waiting;
        }
        route_not_made(D, dl, res->error, res->not_sent == HB_HTTP_DIVERTED, host_busy ? &p : NULL);
        delivery_finish(D, dl);
        return;
    }
    outcome = hb_deliver_classify(res, reason, sizeof(reason));
    hb_metric_observe(D->m.latency, (double)res->duration_ms / 1000.0);
    if (res->new_connection)
        hb_metric_inc(D->m.connections_opened);
    status = answer_status(res);
    hb_metric_inc(D->m.status_class[status >= 100 && status < 600 ? status / 100 : 0]);
    if (circuit_verdict(res) < 0)
        circuit_release(D, dl); /* the host was not asked: no verdict on it */
    else
        circuit_result(D, dl, circuit_verdict(res));
    if (status == 413 && dl->events && dl->jobs_cnt > 1) {
        split_refused(D, dl);
        return;
    }
    if (status == 413 && !dl->events && split_refused_body(D, dl, res))
        return;
    switch (outcome) {
    case HB_OUTCOME_DELIVERED:
        set_state(D, dl, HB_DL_DELIVERED);
        hb_log(HB_LOG_DEBUG, HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id),
               "delivered on attempt %d (HTTP %d, %lld ms)", dl->attempt, res->http_status,
               (long long)res->duration_ms);
        /* the jobs wait for the row: a committed offset implies a logged outcome */
        record(D, dl, dl->attempt, res, HB_OUTCOME_DELIVERED, "",
               hb_gate_new(D->outbox, dl->jobs, dl->jobs_cnt));
        break;
    case HB_OUTCOME_RETRY:
        route_retry(D, dl, dl->attempt, res, reason, dl->schedule_offset, NULL);
        break;
    default: route_failed(D, dl, dl->attempt, res, reason); break;
    }
    delivery_finish(D, dl);
}

void hb_delivery_skip(hb_deliveries_t *D, hb_delivery_t *dl, hb_outcome_t outcome,
                      const char *reason) {
    int made = dl->attempt - 1;
    if (outcome == HB_OUTCOME_FAILED) {
        route_failed(D, dl, made, NULL, reason);
    } else {
        hb_gate_t *g = hb_gate_new(D->outbox, dl->jobs, dl->jobs_cnt);
        set_state(D, dl, HB_DL_DROPPED);
        hb_log_limited_for(&log_dropped, dl->sub->id, HB_LOG_INFO,
                           HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id),
                           "delivery dropped: %s", reason);
        record(D, dl, made, NULL, HB_OUTCOME_DROPPED, reason, g);
    }
    delivery_finish(D, dl);
}

void hb_delivery_discard(hb_deliveries_t *D, hb_delivery_t *dl) {
    set_state(D, dl, HB_DL_DISCARDED);
    delivery_finish(D, dl);
}

size_t hb_deliveries_shed(hb_deliveries_t *D, hb_event_t **events, hb_job_t **jobs, size_t n) {
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (!hb_job_revoked(jobs[i])) {
            events[kept] = events[i];
            jobs[kept++] = jobs[i];
            continue;
        }
        hb_ev_unref(events[i]);
        hb_outbox_release(D->outbox, jobs[i]); /* forgotten: commits nothing */
    }
    return kept;
}

int hb_delivery_revoked(const hb_delivery_t *dl) {
    if (!dl->jobs_cnt)
        return 0;
    for (size_t i = 0; i < dl->jobs_cnt; i++)
        if (!hb_job_revoked(dl->jobs[i]))
            return 0;
    return 1;
}

void hb_delivery_abandon(hb_deliveries_t *D, hb_delivery_t *dl) {
    circuit_release(D, dl);
    set_state(D, dl, HB_DL_ABANDONED);
    dl->revoked = hb_delivery_revoked(dl);
    if (dl->settled)
        dl->settled(dl, dl->settled_arg);
    /* A revoked partition's jobs are released: forgotten, they commit
     * nothing (and are freed now, not at exit). The others stay unfinished,
     * freed with the outbox: the message is consumed again after a restart. */
    for (size_t i = 0; i < dl->jobs_cnt; i++)
        if (hb_job_revoked(dl->jobs[i]))
            hb_outbox_release(D->outbox, dl->jobs[i]);
    hb_delivery_free(dl);
}

/* The engine's deliveries of revoked partitions, for hb_http_withdraw and
 * hb_ratelimit_withdraw. A request waiting in a host queue is taken back also
 * when only some of its events are of revoked partitions (a batch): it is
 * sent again without them (on_attempt_done); those are counted in *arg. */
static int revoked_request(hb_http_done_cb *done, void *opaque, void *arg) {
    const hb_delivery_t *dl = opaque;
    size_t *partly = arg;
    if (done != on_attempt_done)
        return 0;
    if (hb_delivery_revoked(dl))
        return 1;
    for (size_t i = 0; dl->events && i < dl->jobs_cnt; i++)
        if (hb_job_revoked(dl->jobs[i])) {
            (*partly)++;
            return 1;
        }
    return 0;
}

static int revoked_item(void *item, void *arg) {
    (void)arg;
    return hb_delivery_revoked(item);
}

/* A request of the engine still waiting for a connection, made for a
 * subscription the index has changed since (of subscription id, or any). */
typedef struct {
    hb_deliveries_t *D;
    const char *id;
} stale_t;

static int stale_request(hb_http_done_cb *done, void *opaque, void *arg) {
    const stale_t *st = arg;
    hb_delivery_t *dl = opaque;
    return done == on_attempt_done && (!st->id || strcmp(dl->sub->id, st->id) == 0) &&
           st->D->current(dl->sub->id, st->D->current_opaque) != dl->sub;
}

int hb_deliveries_forget_host(hb_deliveries_t *D, const char *key) {
    hb_hash_slot_t *s = hb_hash_find(&D->circuits, key);
    char turn[sizeof(((pace_t *)0)->key)];
    int was_open = 0;
    if (s) {
        const circuit_t *c = s->val;
        was_open = c->opened;
        free(s->val); /* a probe under way finds no circuit: circuit_result */
        hb_hash_del(&D->circuits, s);
    }
    snprintf(turn, sizeof(turn), "h %s", key);
    if ((s = hb_hash_find(&D->turns, turn)) != NULL) {
        free(s->val);
        hb_hash_del(&D->turns, s);
    }
    (void)hb_http_forget_host(D->http, key);
    if (was_open)
        hb_log(HB_LOG_INFO, HB_KV("endpoint", key),
               "circuit forgotten: no subscription has its URL at the endpoint any more");
    return was_open;
}

size_t hb_deliveries_rebind_waiting(hb_deliveries_t *D, const char *sub_id) {
    stale_t st = {D, sub_id};
    return D->current ? hb_http_withdraw(D->http, stale_request, &st) : 0;
}

size_t hb_deliveries_withdraw(hb_deliveries_t *D) {
    /* the host queues' complete on the next hb_http_run (on_attempt_done);
     * the rate limit's are abandoned here (rate_drop) */
    size_t partly = 0, n = hb_http_withdraw(D->http, revoked_request, &partly);
    /* a batch held by its rate limit sheds the revoked events when its turn
     * comes (rate_send), before it is sent */
    return n - partly + hb_ratelimit_withdraw(D->rl, revoked_item, NULL);
}

/* ---------------------------------------------------------------- engine */

hb_deliveries_t *hb_deliveries_new(const hb_config_t *cfg, hb_http_t *http, hb_outbox_t *outbox,
                                   const hb_delivery_metrics_t *m, int circuit_counts_attempts,
                                   char *errstr, size_t errstr_size) {
    hb_deliveries_t *D = hb_calloc(1, sizeof(*D));
    D->cfg = cfg;
    D->http = http;
    D->outbox = outbox;
    D->m = *m;
    D->circuit_counts_attempts = circuit_counts_attempts;
    D->turns_sweep = TURNS_SWEEP;
    D->circuits_sweep = CIRCUITS_SWEEP;
    D->dues_sweep = DUES_SWEEP;
    {
        hb_ratelimit_conf_t rc = {
            .max_queue = cfg->max_host_queue > 0 ? (size_t)cfg->max_host_queue : 0,
            /* 0 (unbounded) for the host queues; a rate limit still bounds it */
            .max_wait_ms = cfg->max_queue_wait_ms > 0 ? cfg->max_queue_wait_ms : 3600000,
            .lease_ms = RATE_LEASE_MS,
        };
        hb_ratelimit_cbs_t cbs = {
            .ask = rate_ask,
            .send = rate_send,
            .refuse = rate_refuse,
            .drop = rate_drop,
            .opaque = D,
        };
        D->rl = hb_ratelimit_new(&rc, &cbs);
    }
    D->retry_codec = hb_codec_new(hb_schema_delivery_retry, errstr, errstr_size);
    if (D->retry_codec)
        D->retry_codec_v1 = hb_codec_new(hb_schema_delivery_retry_v1, errstr, errstr_size);
    if (!D->retry_codec || !D->retry_codec_v1) {
        hb_deliveries_free(D);
        return NULL;
    }
    return D;
}

void hb_deliveries_free(hb_deliveries_t *D) {
    if (!D)
        return;
    hb_ratelimit_free(D->rl); /* what it holds is abandoned: consumed again */
    hb_codec_free(D->retry_codec);
    hb_codec_free(D->retry_codec_v1);
    {
        hb_hash_slot_t *s;
        size_t pos = 0;
        while ((s = hb_hash_each(&D->circuits, &pos)) != NULL)
            free(s->val);
        hb_hash_clear(&D->circuits);
        pos = 0;
        while ((s = hb_hash_each(&D->turns, &pos)) != NULL)
            free(s->val);
        hb_hash_clear(&D->turns);
        pos = 0;
        while ((s = hb_hash_each(&D->dues, &pos)) != NULL)
            free(s->val);
        hb_hash_clear(&D->dues);
    }
    free(D);
}

void hb_deliveries_abandon(hb_deliveries_t *D) {
    D->abandoning = 1;
}

int hb_deliveries_abandoning(const hb_deliveries_t *D) {
    return D->abandoning;
}

size_t hb_deliveries_in_flight(const hb_deliveries_t *D) {
    return D->in_flight;
}
