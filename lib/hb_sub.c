/*
 * Subscription snapshots: allocation and reference counting.
 * Main loop thread only.
 */
#include "hb_sub.h"

#include "hb_filter.h"

#include <math.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HB_SUB_HEADER_NAME_MAX 256

hb_sub_t *hb_sub_new(void) {
    hb_sub_t *sub = hb_calloc(1, sizeof(*sub));
    sub->refcnt = 1;
    sub->batch_max = 1;
    return sub;
}

hb_sub_t *hb_sub_ref(hb_sub_t *sub) {
    sub->refcnt++;
    return sub;
}

void hb_sub_unref(hb_sub_t *sub) {
    if (!sub || --sub->refcnt > 0)
        return;
    free(sub->name);
    free(sub->url);
    free(sub->auth_header);
    if (sub->auth_value) {
        OPENSSL_cleanse(sub->auth_value, strlen(sub->auth_value));
        free(sub->auth_value);
    }
    OPENSSL_cleanse(sub->secrets, sizeof(sub->secrets));
    for (int i = 0; i < sub->event_types_cnt; i++)
        free(sub->event_types[i]);
    free(sub->event_types);
    for (int i = 0; i < sub->fields_cnt; i++)
        free(sub->fields[i]);
    free(sub->fields);
    for (int i = 0; i < sub->headers_cnt; i++)
        free(sub->headers[i]);
    free(sub->headers);
    json_decref(sub->filter_spec);
    hb_filter_free(sub->filter);
    free(sub);
}

int hb_sub_deliverable(const hb_sub_t *sub) {
    return sub->active && sub->verified;
}

int hb_sub_awaiting_verification(const hb_sub_t *sub) {
    return sub->active && !sub->verified;
}

int hb_sub_deactivated_since(const hb_sub_t *sub, int64_t began_ms) {
    return sub->deactivated_ms > 0 && began_ms > 0 && began_ms < sub->deactivated_ms;
}

const char *hb_sub_drop_reason(const hb_sub_t *now, int64_t began_ms) {
    if (!now)
        return "subscription deregistered (or its row cannot be read)";
    if (!now->active)
        return "subscription inactive";
    if (hb_sub_deactivated_since(now, began_ms))
        return "subscription was deactivated after this delivery began";
    return NULL;
}

int hb_sub_wants(const hb_sub_t *sub, const json_t *event) {
    return hb_filter_match(sub->filter, event);
}

int hb_sub_has_type(const hb_sub_t *sub, const char *type) {
    for (int t = 0; t < sub->event_types_cnt; t++)
        if (type && !strcmp(sub->event_types[t], type))
            return 1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Payload options                                                     */

int hb_sub_header_reserved(const char *name) {
    static const char *const reserved[] = {
        "host",
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "user-agent",
        "expect",
        "te",
        "trailer",
        "upgrade",
        "x-okta-verification-challenge",
        "authorization",
        "proxy-authorization",
        "cookie",
    };
    if (!strncasecmp(name, "webhook-", 8))
        return 1;
    for (size_t i = 0; i < HB_ARRAY_SIZE(reserved); i++)
        if (!strcasecmp(name, reserved[i]))
            return 1;
    return 0;
}

/* RFC 9110 token characters. */
static int hb_sub_tchar(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Printable ASCII and tabs, not empty, no whitespace at either end. */
static int hb_sub_header_value_ok(const char *value) {
    size_t len = strlen(value);
    if (len == 0 || value[0] == ' ' || value[0] == '\t' || value[len - 1] == ' ' ||
        value[len - 1] == '\t')
        return 0;
    for (const unsigned char *p = (const unsigned char *)value; *p; p++)
        if (*p != '\t' && (*p < 0x20 || *p > 0x7e))
            return 0;
    return 1;
}

int hb_sub_add_header(hb_sub_t *sub, const char *name, const char *value, char *errstr,
                      size_t errstr_size) {
    size_t nlen = name ? strlen(name) : 0;
    if (nlen == 0 || nlen > HB_SUB_HEADER_NAME_MAX) {
        hb_seterr(errstr, errstr_size, "header name is empty or longer than %d characters",
                  HB_SUB_HEADER_NAME_MAX);
        return -1;
    }
    for (size_t i = 0; i < nlen; i++)
        if (!hb_sub_tchar((unsigned char)name[i])) {
            hb_seterr(errstr, errstr_size, "header name is not an HTTP token");
            return -1;
        }
    if (hb_sub_header_reserved(name)) {
        hb_seterr(errstr, errstr_size, "header \"%s\" is reserved", name);
        return -1;
    }
    if (sub->auth_header && !strcasecmp(sub->auth_header, name)) {
        hb_seterr(errstr, errstr_size, "header \"%s\" is the auth header", name);
        return -1;
    }
    for (int i = 0; i < sub->headers_cnt; i++)
        if (!strncasecmp(sub->headers[i], name, nlen) && sub->headers[i][nlen] == ':') {
            hb_seterr(errstr, errstr_size, "header \"%s\" is given twice", name);
            return -1;
        }
    if (!value || !hb_sub_header_value_ok(value)) {
        hb_seterr(errstr, errstr_size,
                  "the value of header \"%s\" is empty, has whitespace at an end, or is not "
                  "printable ASCII",
                  name);
        return -1;
    }
    size_t vlen = strlen(value);
    char *line = hb_malloc(nlen + 2 + vlen + 1);
    memcpy(line, name, nlen);
    memcpy(line + nlen, ": ", 2);
    memcpy(line + nlen + 2, value, vlen + 1);
    sub->headers = hb_realloc(sub->headers, (size_t)(sub->headers_cnt + 1) * sizeof(char *));
    sub->headers[sub->headers_cnt++] = line;
    return 0;
}

int hb_sub_set_fields(hb_sub_t *sub, const json_t *fields, char *errstr, size_t errstr_size) {
    size_t n = json_array_size(fields);
    if (!json_is_array(fields) || n == 0) {
        hb_seterr(errstr, errstr_size, "fields is not a non-empty array");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const char *f = json_string_value(json_array_get(fields, i));
        if (!f || !*f) {
            hb_seterr(errstr, errstr_size, "fields[%zu] is not a field name", i);
            return -1;
        }
    }
    for (int i = 0; i < sub->fields_cnt; i++)
        free(sub->fields[i]);
    free(sub->fields);
    sub->fields = hb_calloc(n, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        sub->fields[i] = hb_strdup(json_string_value(json_array_get(fields, i)));
    sub->fields_cnt = (int)n;
    return 0;
}

int hb_sub_set_rate_limit(hb_sub_t *sub, const json_t *rate_limit, char *errstr,
                          size_t errstr_size) {
    const json_t *rate = json_object_get(rate_limit, "per_second");
    const json_t *burst = json_object_get(rate_limit, "burst");
    double r, b;
    if (!rate_limit || json_is_null(rate_limit)) {
        sub->rate_per_second = 0;
        sub->rate_burst = 0;
        return 0;
    }
    r = json_is_number(rate) ? json_number_value(rate) : -1;
    if (!json_is_object(rate_limit) || !(r > 0 && r <= 10000)) {
        hb_seterr(errstr, errstr_size, "rate_limit.per_second is not a number in (0, 10000]");
        return -1;
    }
    b = burst ? (json_is_number(burst) ? json_number_value(burst) : -1) : ceil(r);
    if (!(b >= 1 && b <= 10000) || b != floor(b)) {
        hb_seterr(errstr, errstr_size, "rate_limit.burst is not an integer in 1..10000");
        return -1;
    }
    sub->rate_per_second = r;
    sub->rate_burst = (int)b;
    return 0;
}
