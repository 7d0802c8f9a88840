/* The retry schedule and the DeliveryRetry message (see hb_retry.h). */
#include "hb_retry.h"

#include <stdlib.h>
#include <string.h>

#define MIN_DELAY_MS 100LL
#define MAX_DELAY_MS (30LL * 86400 * 1000)

void hb_delay_format(long long ms, char *out, size_t outsz) {
    static const struct {
        long long ms;
        const char *unit;
    } units[] = {{86400000LL, "d"}, {3600000LL, "h"}, {60000LL, "m"}, {1000LL, "s"}};
    for (size_t i = 0; i < HB_ARRAY_SIZE(units); i++)
        if (ms >= units[i].ms && ms % units[i].ms == 0) {
            snprintf(out, outsz, "%lld%s", ms / units[i].ms, units[i].unit);
            return;
        }
    snprintf(out, outsz, "%lldms", ms);
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* Parses a comma-separated list of delays into out (at most
 * HB_RETRY_MAX_STEPS); what names the setting in errors. */
static int parse_delays(const char *spec, const char *what, long long *out, int *n, char *errstr,
                        size_t errstr_size) {
    const char *p = spec ? spec : "";
    *n = 0;
    while (*p) {
        char item[64];
        size_t len = strcspn(p, ",");
        long long ms;
        while (len > 0 && (*p == ' ')) {
            p++;
            len--;
        }
        if (len == 0 || len >= sizeof(item)) {
            hb_seterr(errstr, errstr_size, "%s \"%s\": empty or over-long element", what, spec);
            return -1;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        while (len > 0 && item[len - 1] == ' ')
            item[--len] = '\0';
        if (hb_duration_parse_ms(item, &ms) < 0 || ms < MIN_DELAY_MS || ms > MAX_DELAY_MS) {
            hb_seterr(errstr, errstr_size,
                      "%s: \"%s\" is not a delay between 100ms and 30d (write e.g. 5s, 2m, 1h)",
                      what, item);
            return -1;
        }
        if (*n == HB_RETRY_MAX_STEPS) {
            hb_seterr(errstr, errstr_size, "%s: more than %d delays", what, HB_RETRY_MAX_STEPS);
            return -1;
        }
        out[(*n)++] = ms;
        p += strcspn(p, ",");
        if (*p == ',') {
            p++;
            if (!*p) {
                hb_seterr(errstr, errstr_size, "%s \"%s\" ends with a comma", what, spec);
                return -1;
            }
        }
    }
    return 0;
}

static void add_tier(hb_schedule_t *s, long long ms) {
    for (int j = 0; j < s->tiers; j++)
        if (s->tiers_ms[j] == ms)
            return;
    s->tiers_ms[s->tiers++] = ms;
}

int hb_schedule_parse(hb_schedule_t *s, const char *spec, const char *hop_spec,
                      const char *topic_prefix, char *errstr, size_t errstr_size) {
    long long hops[HB_RETRY_MAX_STEPS];
    int nhops = 0;
    memset(s, 0, sizeof(*s));
    if (parse_delays(spec, "retry schedule", s->delays_ms, &s->steps, errstr, errstr_size) < 0)
        return -1;
    if (s->steps == 0) {
        hb_seterr(errstr, errstr_size, "retry schedule is empty (give e.g. 5s,5m,30m,2h)");
        return -1;
    }
    if (parse_delays(hop_spec, "retry hop tiers", hops, &nhops, errstr, errstr_size) < 0)
        return -1;
    for (int i = 0; i < s->steps; i++)
        add_tier(s, s->delays_ms[i]);
    for (int i = 0; i < nhops; i++)
        add_tier(s, hops[i]); /* room: 2 x HB_RETRY_MAX_STEPS */
    qsort(s->tiers_ms, (size_t)s->tiers, sizeof(s->tiers_ms[0]), cmp_ll);
    for (int j = 0; j < s->tiers; j++) {
        char d[32], *t;
        size_t len;
        hb_delay_format(s->tiers_ms[j], d, sizeof(d));
        len = strlen(topic_prefix) + strlen(d) + 1;
        t = hb_malloc(len);
        snprintf(t, len, "%s%s", topic_prefix, d);
        s->tier_topics[j] = t;
        s->hop_only[j] = 1;
        for (int i = 0; i < s->steps; i++)
            if (s->delays_ms[i] == s->tiers_ms[j])
                s->hop_only[j] = 0;
    }
    s->prefix = hb_strdup(topic_prefix);
    return 0;
}

const char *hb_schedule_setting(const char *errstr) {
    return strncmp(errstr, "retry hop tiers", 15) ? "HOOKBRIDGE_RETRY_SCHEDULE"
                                                  : "HOOKBRIDGE_RETRY_HOP_TIERS";
}

void hb_schedule_free(hb_schedule_t *s) {
    for (int j = 0; j < s->tiers; j++)
        free(s->tier_topics[j]);
    free(s->prefix);
    memset(s, 0, sizeof(*s));
}

long long hb_schedule_tier_ms(const hb_schedule_t *s, const char *topic, int *retired) {
    size_t plen = s->prefix ? strlen(s->prefix) : 0;
    long long ms;
    char canon[32];
    if (retired)
        *retired = 0;
    for (int j = 0; j < s->tiers; j++)
        if (!strcmp(s->tier_topics[j], topic))
            return s->tiers_ms[j];
    if (!s->prefix || strncmp(topic, s->prefix, plen) != 0 ||
        hb_duration_parse_ms(topic + plen, &ms) < 0 || ms < MIN_DELAY_MS || ms > MAX_DELAY_MS)
        return -1;
    hb_delay_format(ms, canon, sizeof(canon));
    if (strcmp(canon, topic + plen) != 0) /* "60s" is not a name we give a tier */
        return -1;
    if (retired)
        *retired = 1;
    return ms;
}

void hb_schedule_tier_pattern(const hb_schedule_t *s, char *out, size_t outsz) {
    size_t n = 0;
    const char *p = s->prefix ? s->prefix : "";
    if (outsz == 0)
        return;
    out[n++] = '^';
    for (; *p && n + 3 < outsz; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            out[n++] = '\\';
        out[n++] = *p;
    }
    out[n] = '\0';
    snprintf(out + n, outsz - n, "[0-9]+(ms|s|m|h|d)$");
}

int hb_schedule_max_attempts(const hb_schedule_t *s) {
    return s->steps + 1;
}

const char *hb_schedule_topic_for(const hb_schedule_t *s, long long delay_ms) {
    for (int j = 0; j < s->tiers; j++)
        if (s->tiers_ms[j] >= delay_ms)
            return s->tier_topics[j];
    return s->tier_topics[s->tiers - 1];
}

const char *hb_schedule_wait_topic(const hb_schedule_t *s, long long wait_ms) {
    for (int j = s->tiers - 1; j >= 0; j--)
        if (s->tiers_ms[j] <= wait_ms)
            return s->tier_topics[j];
    return NULL;
}

int hb_schedule_next(const hb_schedule_t *s, int failed_attempt, long long retry_after_ms,
                     long long retry_after_max_ms, int jitter_percent, double rnd, int64_t now_ms,
                     const char **topic, int64_t *not_before_ms) {
    long long delay, tier_delay, basis;
    if (failed_attempt < 1 || failed_attempt > s->steps)
        return 1;
    tier_delay = s->delays_ms[failed_attempt - 1];
    delay = tier_delay + (long long)((double)tier_delay * (double)jitter_percent / 100.0 * rnd);
    basis = tier_delay;
    if (retry_after_ms > 0) {
        if (retry_after_ms > retry_after_max_ms)
            retry_after_ms = retry_after_max_ms;
        if (retry_after_ms > delay)
            delay = retry_after_ms;
        if (retry_after_ms > basis)
            basis = retry_after_ms;
    }
    /* The scheduled tier (jitter never moves a message up a tier), unless
     * Retry-After asks for longer than it: then the longest tier not longer
     * than the wait, hop tiers included, where it hops until due (the
     * retrier produces a message due beyond its tier's span again, onto the
     * longest tier not longer than what is left). Not the shortest tier at
     * least as long: there every message ahead of it is due up to that
     * tier's delay later than itself, and it waited behind them (a
     * Retry-After of 60 s on the 5m tier came up to 5 minutes late). */
    *topic = hb_schedule_wait_topic(s, basis);
    if (!*topic)
        *topic = hb_schedule_topic_for(s, tier_delay);
    *not_before_ms = now_ms + delay;
    return 0;
}

/* ------------------------------------------------------------- messages */

static char *get_str(const json_t *obj, const char *key, const char *what, char *errstr,
                     size_t errstr_size) {
    const json_t *v = json_object_get(obj, key);
    if (!json_is_string(v)) {
        hb_seterr(errstr, errstr_size, "DeliveryRetry without %s", what);
        return NULL;
    }
    return hb_strndup(json_string_value(v), json_string_length(v));
}

int hb_retry_msg_from_json(hb_retry_msg_t *m, const json_t *obj, char *errstr, size_t errstr_size) {
    const json_t *ids = json_object_get(obj, "event_ids");
    size_t i, total = 0;
    json_t *v;
    memset(m, 0, sizeof(*m));
    if (!(m->delivery_id = get_str(obj, "delivery_id", "delivery_id", errstr, errstr_size)) ||
        !(m->subscription_id =
              get_str(obj, "subscription_id", "subscription_id", errstr, errstr_size)) ||
        !(m->event_type = get_str(obj, "event_type", "event_type", errstr, errstr_size)) ||
        !(m->content_type = get_str(obj, "content_type", "content_type", errstr, errstr_size)) ||
        !(m->body = get_str(obj, "body", "body", errstr, errstr_size)) ||
        !(m->last_error = get_str(obj, "last_error", "last_error", errstr, errstr_size)))
        goto fail;
    m->body_len = json_string_length(json_object_get(obj, "body")); /* may hold \u0000 */
    if (strlen(m->delivery_id) != 36 || strlen(m->subscription_id) != 36) {
        hb_seterr(errstr, errstr_size,
                  "DeliveryRetry with a malformed delivery or subscription id");
        goto fail;
    }
    if (!json_is_array(ids)) {
        hb_seterr(errstr, errstr_size, "DeliveryRetry without event_ids");
        goto fail;
    }
    json_array_foreach(ids, i, v) total += json_string_length(v) + 1;
    m->event_ids = hb_calloc(1, total + 1);
    json_array_foreach(ids, i, v) {
        if (i)
            strcat(m->event_ids, ",");
        strcat(m->event_ids, json_string_value(v) ? json_string_value(v) : "");
    }
    m->attempt = (int)json_integer_value(json_object_get(obj, "attempt"));
    m->not_before_ms = json_integer_value(json_object_get(obj, "not_before_ms"));
    m->first_attempt_ms = json_integer_value(json_object_get(obj, "first_attempt_ms"));
    m->last_status = (int)json_integer_value(json_object_get(obj, "last_status"));
    m->schedule_offset = (int)json_integer_value(json_object_get(obj, "schedule_offset"));
    v = json_object_get(obj, "after_delivery_id");
    if (json_is_string(v)) {
        if (json_string_length(v) != 36) {
            hb_seterr(errstr, errstr_size, "DeliveryRetry with a malformed after_delivery_id");
            goto fail;
        }
        m->after_delivery_id = hb_strdup(json_string_value(v));
    }
    if (m->attempt < 1 || m->attempt > 1000 || m->schedule_offset < 0 ||
        m->schedule_offset >= m->attempt) {
        hb_seterr(errstr, errstr_size, "DeliveryRetry with attempt %d", m->attempt);
        goto fail;
    }
    return 0;
fail:
    hb_retry_msg_clear(m);
    return -1;
}

json_t *hb_retry_msg_to_json(const hb_retry_msg_t *m) {
    json_t *ids = json_array();
    const char *p = m->event_ids ? m->event_ids : "";
    /* every comma separates two ids, so "a," is ["a", ""] and a message
     * keeps its event_ids from one tier to the next */
    while (*p) {
        size_t n = strcspn(p, ",");
        json_array_append_new(ids, json_stringn(p, n));
        p += n;
        if (*p == ',' && !*++p)
            json_array_append_new(ids, json_string(""));
    }
    return json_pack(
        "{s:s, s:s, s:o, s:s, s:s, s:s%, s:i, s:I, s:I, s:i, s:s, s:i, s:o}", "delivery_id",
        m->delivery_id, "subscription_id", m->subscription_id, "event_ids", ids, "event_type",
        m->event_type ? m->event_type : "", "content_type",
        m->content_type ? m->content_type : "application/json", "body", m->body, m->body_len,
        "attempt", m->attempt, "not_before_ms", (json_int_t)m->not_before_ms, "first_attempt_ms",
        (json_int_t)m->first_attempt_ms, "last_status", m->last_status, "last_error",
        m->last_error ? m->last_error : "", "schedule_offset", m->schedule_offset,
        "after_delivery_id",
        m->after_delivery_id && *m->after_delivery_id ? json_string(m->after_delivery_id)
                                                      : json_null());
}

void hb_retry_msg_clear(hb_retry_msg_t *m) {
    free(m->delivery_id);
    free(m->subscription_id);
    free(m->event_ids);
    free(m->event_type);
    free(m->content_type);
    free(m->body);
    free(m->last_error);
    free(m->after_delivery_id);
    memset(m, 0, sizeof(*m));
}
