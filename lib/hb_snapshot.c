/*
 * Subscription snapshots: rows of hookbridge.subscriptions (with their event
 * types, signing secrets and options) read into hb_sub_t.
 *
 * The design is simple: one query shape (SNAPSHOT_SELECT) for every
 * snapshot, and one function (row_to_sub) that builds a snapshot from one of
 * its rows, so a full load and a load by id cannot disagree. Sealed values
 * are opened here with the keyring (lib/hb_seal.h), each bound to its row by
 * the AAD (hb_sealer_row_aad). What must hold: a row that cannot be read
 * fails closed (no snapshot, never a partial one), and a value not sealed yet
 * is refused, never used in plaintext. Runs on the caller's connection and
 * thread (the store's lanes).
 */
#include "hb_snapshot.h"

#include <ctype.h>
#include <errno.h>
#include <libpq-fe.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hb_filter.h"
#include "hb_hash.h"
#include "hb_log.h"
#include "hb_pg.h"
#include "hb_sealer.h"
#include "hb_sign.h"

/* One query shape for every snapshot: $1 NULL loads all live subscriptions.
 * Event types come space-separated (catalogue names have no spaces); signing
 * secrets as "row_id sealed_hex key_id expires_ms" quadruples ("-" for a
 * value not sealed yet), current first, at most two unexpired. A previous
 * secret (in its grace period) only when sealed: one lost in a database crash
 * before it was sealed can sign nothing, and must not keep the current one
 * from signing (rotate_secret is how a lost secret is set again). The auth
 * value comes sealed too, with auth_pending true while a service has yet to
 * seal it. */
#define SNAPSHOT_COLUMNS                                                                           \
    "SELECT s.id::text, s.name, s.url, s.status, s.verification, s.auth_header,"                   \
    "       encode(s.auth_sealed, 'hex'), s.auth_key_id, s.auth_pending IS NOT NULL,"              \
    "       s.options->>'format', s.options->>'timeout_ms',"                                       \
    "       s.options->>'batch_max', s.options->>'batch_window_ms',"                               \
    "       s.options->'fields', s.options->'headers', s.options->'filter',"                       \
    "       (SELECT string_agg(st.event_type, ' ' ORDER BY st.event_type)"                         \
    "          FROM hookbridge.subscription_event_types st"                                        \
    "         WHERE st.subscription_id = s.id),"                                                   \
    "       (SELECT string_agg(x.secret || ' ' || x.exp_ms, ' ' ORDER BY x.ord)"                   \
    "          FROM (SELECT sec.id || ' ' || coalesce(encode(sec.sealed, 'hex'), '-') || ' '"      \
    "                           || coalesce(sec.key_id, '-') AS secret,"                           \
    "                       coalesce((extract(epoch FROM sec.expires_at) * 1000)::bigint, "        \
    "0)::text"                                                                                     \
    "                           AS exp_ms,"                                                        \
    "                       row_number() OVER (ORDER BY sec.expires_at DESC NULLS FIRST,"          \
    "                                                   sec.id DESC) AS ord"                       \
    "                  FROM hookbridge.subscription_secrets sec"                                   \
    "                 WHERE sec.subscription_id = s.id"                                            \
    "                   AND (sec.expires_at IS NULL"                                               \
    "                        OR (sec.expires_at > now() AND sec.sealed IS NOT NULL))) x"           \
    "         WHERE x.ord <= 2),"                                                                  \
    "       coalesce((extract(epoch FROM s.deactivated_at) * 1000)::bigint, 0),"                   \
    "       s.options->'rate_limit',"                                                              \
    "       s.options->>'ordering'"                                                                \
    "  FROM hookbridge.subscriptions s"                                                            \
    " WHERE s.deregistered_at IS NULL AND "

static const char SNAPSHOT_SELECT[] = SNAPSHOT_COLUMNS "($1::uuid IS NULL OR s.id = $1::uuid)"
                                                       " ORDER BY s.created_at, s.id";
/* Some of them by id, in one statement (hb_snapshot_load_many). */
static const char SNAPSHOT_SELECT_MANY[] = SNAPSHOT_COLUMNS "s.id = ANY($1::uuid[])";

enum {
    COL_ID,
    COL_NAME,
    COL_URL,
    COL_STATUS,
    COL_VERIFICATION,
    COL_AUTH_HEADER,
    COL_AUTH_SEALED,
    COL_AUTH_KEY_ID,
    COL_AUTH_PENDING,
    COL_FORMAT,
    COL_TIMEOUT,
    COL_BATCH_MAX,
    COL_BATCH_WINDOW,
    COL_FIELDS,
    COL_HEADERS,
    COL_FILTER,
    COL_EVENT_TYPES,
    COL_SECRETS,
    COL_DEACTIVATED,
    COL_RATE_LIMIT,
    COL_ORDERING,
    COL_COUNT
};

int hb_snapshot_is_id(const char *s) {
    size_t i;
    if (!s)
        return 0;
    for (i = 0; s[i]; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!isxdigit((unsigned char)s[i])) {
            return 0;
        }
    }
    return i == HB_UUID_LEN;
}

static const char *col(const PGresult *res, int row, int c) {
    return PQgetisnull(res, row, c) ? NULL : PQgetvalue(res, row, c);
}

/* Parses an optional non-negative integer option; NULL keeps *out. */
static int parse_ll(const char *s, long long *out) {
    char *end;
    long long v;
    if (!s)
        return 0;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 0)
        return -1;
    *out = v;
    return 0;
}

static int parse_event_types(hb_sub_t *sub, const char *list) {
    char *copy, *save = NULL, *tok;
    int cap = 0;
    if (!list || !*list)
        return 0;
    for (const char *p = list; *p; p++)
        cap += *p == ' ';
    cap++;
    sub->event_types = hb_calloc((size_t)cap, sizeof(char *));
    copy = hb_strdup(list);
    for (tok = strtok_r(copy, " ", &save); tok && sub->event_types_cnt < cap;
         tok = strtok_r(NULL, " ", &save))
        sub->event_types[sub->event_types_cnt++] = hb_strdup(tok);
    free(copy);
    return 0;
}

/* Opens one sealed value of subscription `sub_id`; aad names its row. */
static int open_sealed(const hb_keyring_t *kr, const char *sub_id, const char *what,
                       const char *aad, const char *hex, const char *key_id, char **out,
                       char *errstr, size_t errstr_size) {
    char why[256];
    size_t len;
    if (!kr) {
        hb_seterr(errstr, errstr_size, "subscription %s: no key to open its %s", sub_id, what);
        return -1;
    }
    if (hb_unseal_hex(kr, key_id, aad, hex, out, &len, why, sizeof(why)) < 0) {
        hb_seterr(errstr, errstr_size, "subscription %s: cannot open its %s: %s", sub_id, what,
                  why);
        return -1;
    }
    return 0;
}

static int parse_secrets(const hb_keyring_t *kr, hb_sub_t *sub, const char *list, char *errstr,
                         size_t errstr_size) {
    char *copy, *save = NULL, *row_id, *hex, *key_id, *exp, *secret = NULL;
    char why[128], aad[128];
    int rc = -1;
    long long exp_ms, secret_id;
    if (!list || !*list) {
        hb_seterr(errstr, errstr_size, "subscription %s has no signing secret", sub->id);
        return -1;
    }
    copy = hb_strdup(list);
    while (sub->secrets_cnt < (int)HB_ARRAY_SIZE(sub->secrets)) {
        row_id = strtok_r(sub->secrets_cnt == 0 ? copy : NULL, " ", &save);
        if (!row_id)
            break;
        hex = strtok_r(NULL, " ", &save);
        key_id = strtok_r(NULL, " ", &save);
        exp = strtok_r(NULL, " ", &save);
        exp_ms = 0;
        if (!exp || parse_ll(exp, &exp_ms) < 0 || parse_ll(row_id, &secret_id) < 0) {
            hb_seterr(errstr, errstr_size, "subscription %s: malformed signing secret row",
                      sub->id);
            goto fail;
        }
        if (!strcmp(hex, "-")) {
            hb_seterr(errstr, errstr_size,
                      "subscription %s: its signing secret is not sealed yet (pending, or lost "
                      "in a database crash: see hookbridge.secret_status)",
                      sub->id);
            rc = HB_SNAPSHOT_UNSEALED;
            goto fail;
        }
        if (hb_sealer_row_aad(aad, sizeof(aad), sub->id, secret_id, errstr, errstr_size) < 0)
            goto fail;
        if (open_sealed(kr, sub->id, "signing secret", aad, hex, key_id, &secret, errstr,
                        errstr_size) < 0)
            goto fail;
        if (hb_secret_parse(secret, &sub->secrets[sub->secrets_cnt], why, sizeof(why)) < 0) {
            hb_seterr(errstr, errstr_size, "subscription %s: unusable signing secret: %s", sub->id,
                      why);
            goto fail;
        }
        hb_secret_free(secret);
        secret = NULL;
        sub->secrets[sub->secrets_cnt].expires_ms = (int64_t)exp_ms;
        sub->secrets_cnt++;
    }
    rc = sub->secrets_cnt > 0 ? 0 : -1;
    if (rc < 0)
        hb_seterr(errstr, errstr_size, "subscription %s has no signing secret", sub->id);
fail:
    hb_secret_free(secret);
    free(copy);
    return rc;
}

static int parse_auth(const hb_keyring_t *kr, hb_sub_t *sub, const PGresult *res, int row,
                      char *errstr, size_t errstr_size) {
    const char *hex = col(res, row, COL_AUTH_SEALED), *pending = col(res, row, COL_AUTH_PENDING);
    char aad[128];
    if (!sub->auth_header)
        return 0;
    if ((pending && !strcmp(pending, "t")) || !hex) {
        hb_seterr(errstr, errstr_size,
                  "subscription %s: its auth value is not sealed yet (pending, or lost in a "
                  "database crash: see hookbridge.secret_status)",
                  sub->id);
        return HB_SNAPSHOT_UNSEALED;
    }
    if (hb_sealer_row_aad(aad, sizeof(aad), sub->id, 0, errstr, errstr_size) < 0)
        return -1;
    return open_sealed(kr, sub->id, "auth value", aad, hex, col(res, row, COL_AUTH_KEY_ID),
                       &sub->auth_value, errstr, errstr_size);
}

/* A JSON option column; NULL when SQL NULL (the key is absent). */
static json_t *col_json(const PGresult *res, int row, int c) {
    const char *v = col(res, row, c);
    return v ? json_loads(v, JSON_DECODE_ANY, NULL) : NULL;
}

/* options.fields, options.headers, options.filter and options.rate_limit. A field selection
 * that cannot be read fails the snapshot: delivering every field instead
 * would send what the subscriber chose not to receive (IP addresses ...).
 * One unusable custom header is skipped with a warning naming it (never its
 * value), so the others and the deliveries go on. */
static int payload_options(hb_sub_t *sub, const PGresult *res, int row, char *errstr,
                           size_t errstr_size) {
    char why[256];
    const char *name;
    json_t *val;
    json_t *fields = col_json(res, row, COL_FIELDS);
    json_t *headers = col_json(res, row, COL_HEADERS);
    int rc = -1;

    if (col(res, row, COL_FIELDS) && hb_sub_set_fields(sub, fields, why, sizeof(why)) < 0) {
        hb_seterr(errstr, errstr_size, "subscription %s: malformed options.fields: %s", sub->id,
                  why);
        goto done;
    }
    if (col(res, row, COL_HEADERS)) {
        if (!json_is_object(headers)) {
            hb_seterr(errstr, errstr_size, "subscription %s: options.headers is not an object",
                      sub->id);
            goto done;
        }
        json_object_foreach(headers, name, val) {
            const char *value = json_string_value(val);
            if (hb_sub_add_header(sub, name, value ? value : "", why, sizeof(why)) < 0)
                hb_log(HB_LOG_WARN, HB_KV("subscription_id", sub->id), "custom header skipped: %s",
                       why);
        }
    }
    sub->filter_spec = col_json(res, row, COL_FILTER);
    if (col(res, row, COL_FILTER) && !sub->filter_spec) {
        hb_seterr(errstr, errstr_size, "subscription %s: malformed options.filter", sub->id);
        goto done;
    }
    if (json_is_null(sub->filter_spec)) {
        json_decref(sub->filter_spec);
        sub->filter_spec = NULL;
    }
    if (sub->filter_spec) {
        /* register() validated it; one the SQL side let through is refused
         * here rather than matched wrongly */
        sub->filter = hb_filter_compile(sub->filter_spec, why, sizeof(why));
        if (!sub->filter) {
            hb_seterr(errstr, errstr_size, "subscription %s: %s", sub->id, why);
            goto done;
        }
    }
    if (col(res, row, COL_RATE_LIMIT)) {
        /* fails closed: delivering unlimited would flood the endpoint */
        json_t *rl = col_json(res, row, COL_RATE_LIMIT);
        int bad = !rl || hb_sub_set_rate_limit(sub, rl, why, sizeof(why)) < 0;
        if (!rl)
            hb_seterr(why, sizeof(why), "not JSON");
        json_decref(rl);
        if (bad) {
            hb_seterr(errstr, errstr_size, "subscription %s: malformed options.rate_limit: %s",
                      sub->id, why);
            goto done;
        }
    }
    rc = 0;
done:
    json_decref(fields);
    json_decref(headers);
    return rc;
}

/* Builds the snapshot of one SNAPSHOT_SELECT row. */
static int row_to_sub(const hb_keyring_t *kr, const PGresult *res, int row, hb_sub_t **out,
                      char *errstr, size_t errstr_size) {
    hb_sub_t *sub = hb_sub_new();
    const char *id = col(res, row, COL_ID), *v;
    long long ll;
    int rc = -1;

    *out = NULL;
    if (!hb_snapshot_is_id(id)) {
        hb_seterr(errstr, errstr_size, "subscription row without a valid id");
        goto fail;
    }
    memcpy(sub->id, id, HB_UUID_LEN + 1);
    sub->name = hb_strdup(col(res, row, COL_NAME) ? col(res, row, COL_NAME) : "");
    sub->url = hb_strdup(col(res, row, COL_URL) ? col(res, row, COL_URL) : "");
    v = col(res, row, COL_STATUS);
    sub->active = v && !strcmp(v, "active");
    v = col(res, row, COL_VERIFICATION);
    sub->verified = v && !strcmp(v, "verified");
    if ((v = col(res, row, COL_AUTH_HEADER)) != NULL)
        sub->auth_header = hb_strdup(v);
    if ((rc = parse_auth(kr, sub, res, row, errstr, errstr_size)) < 0)
        goto fail;
    rc = -1;

    v = col(res, row, COL_FORMAT);
    if (!v || !strcmp(v, "okta"))
        sub->format = HB_FORMAT_OKTA;
    else if (!strcmp(v, "cloudevents"))
        sub->format = HB_FORMAT_CLOUDEVENTS;
    else if (!strcmp(v, "event"))
        sub->format = HB_FORMAT_EVENT;
    else {
        hb_seterr(errstr, errstr_size, "subscription %s: unknown format \"%s\"", sub->id, v);
        goto fail;
    }
    sub->timeout_ms = 0;
    if (parse_ll(col(res, row, COL_TIMEOUT), &sub->timeout_ms) < 0)
        goto bad_option;
    ll = 1;
    if (parse_ll(col(res, row, COL_BATCH_MAX), &ll) < 0)
        goto bad_option;
    sub->batch_window_ms = 0;
    if (parse_ll(col(res, row, COL_BATCH_WINDOW), &sub->batch_window_ms) < 0)
        goto bad_option;
    if (ll < 1 || ll > HB_BATCH_MAX_LIMIT || sub->batch_window_ms < 0 ||
        sub->batch_window_ms > HB_BATCH_WINDOW_LIMIT_MS) {
        /* register() and update_options() refuse them (HB006); written past
         * them, the nearest bound serves rather than the subscription being
         * skipped (batch_max 0) or its events held for hours (a window in
         * seconds taken for ms) */
        long long max = ll < 1 ? 1 : ll > HB_BATCH_MAX_LIMIT ? HB_BATCH_MAX_LIMIT : ll;
        long long win = sub->batch_window_ms < 0                          ? 0
                        : sub->batch_window_ms > HB_BATCH_WINDOW_LIMIT_MS ? HB_BATCH_WINDOW_LIMIT_MS
                                                                          : sub->batch_window_ms;
        hb_log(
            HB_LOG_WARN, HB_KV("subscription_id", sub->id),
            "options batch_max %lld and batch_window_ms %lld out of bounds (1..%d, 0..%d; HB006: "
            "the row was written past hookbridge.update_options): batch_max %lld and "
            "batch_window_ms %lld serve",
            ll, sub->batch_window_ms, HB_BATCH_MAX_LIMIT, HB_BATCH_WINDOW_LIMIT_MS, max, win);
        ll = max;
        sub->batch_window_ms = win;
    }
    sub->batch_max = (int)ll;

    ll = 0;
    if (parse_ll(col(res, row, COL_DEACTIVATED), &ll) < 0) {
        hb_seterr(errstr, errstr_size, "subscription %s: malformed deactivated_at", sub->id);
        goto fail;
    }
    sub->deactivated_ms = ll;

    if (payload_options(sub, res, row, errstr, errstr_size) < 0)
        goto fail;
    v = col(res, row, COL_ORDERING);
    if (!v)
        sub->ordering = HB_ORDER_NONE;
    else if (!strcmp(v, "actor"))
        sub->ordering = HB_ORDER_ACTOR;
    else if (!strcmp(v, "target"))
        sub->ordering = HB_ORDER_TARGET;
    else if (!strcmp(v, "key"))
        sub->ordering = HB_ORDER_KEY;
    else {
        hb_seterr(errstr, errstr_size, "subscription %s: unknown ordering \"%s\"", sub->id, v);
        goto fail;
    }
    if (sub->ordering != HB_ORDER_NONE && sub->batch_max > 1) {
        /* register() and update_options() refuse the pair (HB025); written
         * past them, the order asked for is kept rather than silently lost */
        hb_log(HB_LOG_WARN, HB_KV("subscription_id", sub->id),
               "options.ordering cannot be combined with batch_max above 1 (HB025; the row was "
               "written past hookbridge.update_options): its events go ordered, one per request, "
               "batch_max %d ignored",
               sub->batch_max);
        sub->batch_max = 1;
    }

    if (parse_event_types(sub, col(res, row, COL_EVENT_TYPES)) < 0)
        goto fail;
    if ((rc = parse_secrets(kr, sub, col(res, row, COL_SECRETS), errstr, errstr_size)) < 0)
        goto fail;
    *out = sub;
    return 0;

bad_option:
    hb_seterr(errstr, errstr_size, "subscription %s: malformed options", sub->id);
fail:
    hb_sub_unref(sub);
    return rc;
}

int hb_snapshot_load_all(struct pg_conn *conn, const hb_keyring_t *kr, hb_sub_t ***subs,
                         size_t *cnt, void (*unsealed)(const char *id, void *arg), void *arg,
                         char *errstr, size_t errstr_size) {
    const char *params[1] = {NULL};
    char why[256];
    PGresult *res;
    *subs = NULL;
    *cnt = 0;
    res = PQexecParams(conn, SNAPSHOT_SELECT, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return hb_pg_fail(conn, res, "loading subscriptions", errstr, errstr_size);
    *subs = hb_calloc((size_t)PQntuples(res) + 1, sizeof(**subs));
    for (int row = 0; row < PQntuples(res); row++) {
        hb_sub_t *sub;
        int rc = row_to_sub(kr, res, row, &sub, why, sizeof(why));
        if (rc < 0) {
            /* One bad row must not keep the others from being served. */
            hb_log(HB_LOG_WARN, HB_KV("subscription_id", PQgetvalue(res, row, COL_ID)),
                   "subscription skipped%s: %s",
                   rc == HB_SNAPSHOT_UNSEALED && unsealed ? " until its values are sealed" : "",
                   why);
            if (rc == HB_SNAPSHOT_UNSEALED && unsealed)
                unsealed(PQgetvalue(res, row, COL_ID), arg);
            continue;
        }
        (*subs)[(*cnt)++] = sub;
    }
    PQclear(res);
    return 0;
}

int hb_snapshot_load_one(struct pg_conn *conn, const hb_keyring_t *kr, const char *id,
                         hb_sub_t **out, char *errstr, size_t errstr_size) {
    const char *params[1] = {id};
    PGresult *res;
    int rc = 0;
    *out = NULL;
    if (!hb_snapshot_is_id(id)) {
        hb_seterr(errstr, errstr_size, "not a subscription id: \"%.40s\"", id ? id : "");
        return -1;
    }
    res = PQexecParams(conn, SNAPSHOT_SELECT, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        (void)hb_pg_fail(conn, res, "loading a subscription", errstr, errstr_size);
        return -2;
    }
    if (PQntuples(res) > 0)
        rc = row_to_sub(kr, res, 0, out, errstr, errstr_size);
    PQclear(res);
    return rc;
}

int hb_snapshot_load_many(struct pg_conn *conn, const hb_keyring_t *kr, const char *const *ids,
                          size_t n, hb_sub_t **out, int *rc, char **why, char *errstr,
                          size_t errstr_size) {
    hb_hash_t at = {0}; /* lower-case id -> its index + 1 */
    const char *params[1];
    char key[HB_UUID_LEN + 1], reason[256];
    char *list, *p;
    PGresult *res;

    for (size_t i = 0; i < n; i++) {
        out[i] = NULL;
        rc[i] = 0;
        why[i] = NULL;
    }
    if (!n)
        return 0;
    /* a uuid[] literal: ids are checked, so nothing needs quoting */
    p = list = hb_malloc(n * (HB_UUID_LEN + 1) + 2);
    *p++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (!hb_snapshot_is_id(ids[i])) {
            free(list);
            hb_hash_clear(&at);
            hb_seterr(errstr, errstr_size, "not a subscription id: \"%.40s\"",
                      ids[i] ? ids[i] : "");
            return -1;
        }
        for (size_t c = 0; c <= HB_UUID_LEN; c++)
            key[c] = (char)tolower((unsigned char)ids[i][c]);
        if (!hb_hash_find(&at, key))
            (void)hb_hash_put(&at, key, (void *)(uintptr_t)(i + 1));
        if (i)
            *p++ = ',';
        memcpy(p, key, HB_UUID_LEN);
        p += HB_UUID_LEN;
    }
    *p++ = '}';
    *p = '\0';
    params[0] = list;
    res = PQexecParams(conn, SNAPSHOT_SELECT_MANY, 1, NULL, params, NULL, NULL, 0);
    free(list);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        hb_hash_clear(&at);
        (void)hb_pg_fail(conn, res, "loading subscriptions", errstr, errstr_size);
        return -2;
    }
    for (int row = 0; row < PQntuples(res); row++) {
        const char *id = PQgetvalue(res, row, COL_ID);
        uintptr_t i1;
        size_t i;
        int r;
        if (strlen(id) != HB_UUID_LEN)
            continue;
        for (size_t c = 0; c <= HB_UUID_LEN; c++)
            key[c] = (char)tolower((unsigned char)id[c]);
        i1 = (uintptr_t)hb_hash_get(&at, key);
        if (!i1 || out[i1 - 1] || rc[i1 - 1])
            continue;
        i = i1 - 1;
        r = row_to_sub(kr, res, row, &out[i], reason, sizeof(reason));
        if (r < 0) {
            rc[i] = r;
            why[i] = hb_strdup(reason);
        }
    }
    PQclear(res);
    hb_hash_clear(&at);
    return 0;
}
