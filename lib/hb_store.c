/*
 * Subscription store: snapshots of hookbridge.subscriptions, kept fresh by
 * LISTEN/NOTIFY.
 *
 * The design is simple: one blocking libpq connection, owned by the main loop
 * thread, LISTENs on the two channels the SQL triggers notify. The loop polls
 * hb_store_fd() and calls hb_store_process(), which drains libpq's
 * notification queue, de-duplicates it, reloads each changed subscription by
 * id with one parameterised query and hands the fresh snapshot to on_change.
 * A snapshot is built in one place (store_row_to_sub) from one query shape
 * (STORE_SELECT), so load_all and load_one cannot disagree.
 *
 * When the connection drops, the store forgets it and reconnects from later
 * hb_store_process() calls with backoff (1 s doubling to 30 s). It LISTENs
 * again before calling on_reload, so a change made while the caller reloads is
 * notified, not lost. What must hold: no error string ever carries the
 * conninfo or the password (messages name host and port only), and no SQL is
 * built by string concatenation.
 *
 * Connecting and error messages are lib/hb_pg.h's.
 */
#include "hb_store.h"

#include "hb_filter.h"

#include <ctype.h>
#include <errno.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "hb_log.h"
#include "hb_pg.h"
#include "hb_seal.h"
#include "hb_sealer.h"
#include "hb_sign.h"

#define STORE_BACKOFF_MIN_MS 1000
#define STORE_BACKOFF_MAX_MS 30000
#define STORE_NOTIFY_ROUNDS 16 /* bound on re-draining per hb_store_process call */
#define STORE_SWEEP_MS 60000   /* expired revealable secrets leave the inbox within this */

struct hb_store_s {
    char *conninfo;      /* may hold a password: cleansed on free, never printed */
    PGconn *conn;        /* NULL while disconnected */
    int64_t retry_at_ms; /* monotonic; next reconnect attempt */
    int64_t backoff_ms;
    const hb_keyring_t *keyring; /* borrowed; NULL: nothing sealed can be opened */
    int seal_due;                /* hookbridge_seal was notified */
    int64_t next_seal_ms;        /* monotonic; the inbox is swept at least this often */
};

/* One query shape for every snapshot: $1 NULL loads all live subscriptions.
 * Event types come space-separated (catalogue names have no spaces); signing
 * secrets as "row_id sealed_hex key_id expires_ms" quadruples ("-" for a
 * value not sealed yet), current first, at most two unexpired. The auth value
 * comes sealed too, with auth_pending true while a service has yet to seal it. */
static const char STORE_SELECT[] =
    "SELECT s.id::text, s.name, s.url, s.status, s.verification, s.auth_header,"
    "       encode(s.auth_sealed, 'hex'), s.auth_key_id, s.auth_pending IS NOT NULL,"
    "       s.options->>'format', s.options->>'timeout_ms',"
    "       s.options->>'batch_max', s.options->>'batch_window_ms',"
    "       s.options->'fields', s.options->'headers', s.options->'filter',"
    "       (SELECT string_agg(st.event_type, ' ' ORDER BY st.event_type)"
    "          FROM hookbridge.subscription_event_types st"
    "         WHERE st.subscription_id = s.id),"
    "       (SELECT string_agg(x.secret || ' ' || x.exp_ms, ' ' ORDER BY x.ord)"
    "          FROM (SELECT sec.id || ' ' || coalesce(encode(sec.sealed, 'hex'), '-') || ' '"
    "                           || coalesce(sec.key_id, '-') AS secret,"
    "                       coalesce((extract(epoch FROM sec.expires_at) * 1000)::bigint, 0)::text"
    "                           AS exp_ms,"
    "                       row_number() OVER (ORDER BY sec.expires_at DESC NULLS FIRST,"
    "                                                   sec.id DESC) AS ord"
    "                  FROM hookbridge.subscription_secrets sec"
    "                 WHERE sec.subscription_id = s.id"
    "                   AND (sec.expires_at IS NULL OR sec.expires_at > now())) x"
    "         WHERE x.ord <= 2),"
    "       coalesce((extract(epoch FROM s.deactivated_at) * 1000)::bigint, 0)"
    "  FROM hookbridge.subscriptions s"
    " WHERE s.deregistered_at IS NULL AND ($1::uuid IS NULL OR s.id = $1::uuid)"
    " ORDER BY s.created_at, s.id";

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
    COL_COUNT
};

/* ------------------------------------------------------------------------ */
/* Snapshots                                                                */

static int is_uuid(const char *s) {
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
        return -1;
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

/* options.fields, options.headers and options.filter. A field selection
 * that cannot be read fails the snapshot: delivering every field instead
 * would send what the subscriber chose not to receive (IP addresses ...).
 * One unusable custom header is skipped with a warning naming it (never its
 * value), so the others and the deliveries go on. */
static int store_payload_options(hb_sub_t *sub, const PGresult *res, int row, char *errstr,
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
    rc = 0;
done:
    json_decref(fields);
    json_decref(headers);
    return rc;
}

/* Builds the snapshot of one STORE_SELECT row. */
static int store_row_to_sub(const hb_keyring_t *kr, const PGresult *res, int row, hb_sub_t **out,
                            char *errstr, size_t errstr_size) {
    hb_sub_t *sub = hb_sub_new();
    const char *id = col(res, row, COL_ID), *v;
    long long ll;

    *out = NULL;
    if (!is_uuid(id)) {
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
    if (parse_auth(kr, sub, res, row, errstr, errstr_size) < 0)
        goto fail;

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
    if (parse_ll(col(res, row, COL_BATCH_MAX), &ll) < 0 || ll < 1 || ll > 100000)
        goto bad_option;
    sub->batch_max = (int)ll;
    sub->batch_window_ms = 0;
    if (parse_ll(col(res, row, COL_BATCH_WINDOW), &sub->batch_window_ms) < 0)
        goto bad_option;

    ll = 0;
    if (parse_ll(col(res, row, COL_DEACTIVATED), &ll) < 0) {
        hb_seterr(errstr, errstr_size, "subscription %s: malformed deactivated_at", sub->id);
        goto fail;
    }
    sub->deactivated_ms = ll;

    if (store_payload_options(sub, res, row, errstr, errstr_size) < 0)
        goto fail;

    if (parse_event_types(sub, col(res, row, COL_EVENT_TYPES)) < 0)
        goto fail;
    if (parse_secrets(kr, sub, col(res, row, COL_SECRETS), errstr, errstr_size) < 0)
        goto fail;
    *out = sub;
    return 0;

bad_option:
    hb_seterr(errstr, errstr_size, "subscription %s: malformed options", sub->id);
fail:
    hb_sub_unref(sub);
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Connection state                                                         */

/* Forgets a broken connection; the next attempt is due after the backoff. */
static void store_drop(hb_store_t *st) {
    if (st->conn)
        PQfinish(st->conn);
    st->conn = NULL;
    st->backoff_ms = STORE_BACKOFF_MIN_MS;
    st->retry_at_ms = hb_mono_ms() + st->backoff_ms;
}

/* After a failed command: drop the connection if it is gone, and say why. */
static int store_fail(hb_store_t *st, PGresult *res, const char *what, char *errstr,
                      size_t errstr_size) {
    char why[512];
    hb_pg_error(st->conn, res, why, sizeof(why));
    PQclear(res);
    if (PQstatus(st->conn) == CONNECTION_BAD) {
        store_drop(st);
        hb_seterr(errstr, errstr_size, "database: %s: connection lost (%s); reconnecting", what,
                  why);
    } else {
        hb_seterr(errstr, errstr_size, "database: %s: %s", what, why);
    }
    return -1;
}

static int store_ready(hb_store_t *st, char *errstr, size_t errstr_size) {
    if (st->conn)
        return 0;
    hb_seterr(errstr, errstr_size, "database: not connected (reconnecting)");
    return -1;
}

static int store_listen(hb_store_t *st, char *errstr, size_t errstr_size) {
    static const char *const channels[] = {"LISTEN hookbridge_subscriptions",
                                           "LISTEN hookbridge_verify", "LISTEN hookbridge_seal"};
    for (size_t i = 0; i < HB_ARRAY_SIZE(channels); i++) {
        PGresult *res = PQexecParams(st->conn, channels[i], 0, NULL, NULL, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            return store_fail(st, res, "LISTEN", errstr, errstr_size);
        PQclear(res);
    }
    return 0;
}

hb_store_t *hb_store_new(const char *conninfo, const hb_keyring_t *keyring, char *errstr,
                         size_t errstr_size) {
    hb_store_t *st = hb_calloc(1, sizeof(*st));
    st->conninfo = hb_strdup(conninfo ? conninfo : "");
    st->keyring = keyring;
    st->backoff_ms = STORE_BACKOFF_MIN_MS;
    st->conn = hb_pg_connect(st->conninfo, "hookbridge", errstr, errstr_size);
    if (!st->conn)
        goto fail;
    if (store_listen(st, errstr, errstr_size) < 0)
        goto fail;
    return st;
fail:
    hb_store_free(st);
    return NULL;
}

void hb_store_free(hb_store_t *st) {
    if (!st)
        return;
    if (st->conn)
        PQfinish(st->conn);
    OPENSSL_cleanse(st->conninfo, strlen(st->conninfo));
    free(st->conninfo);
    free(st);
}

int hb_store_fd(hb_store_t *st) {
    return st->conn ? PQsocket(st->conn) : -1;
}

int hb_store_connected(hb_store_t *st) {
    return st->conn != NULL && PQstatus(st->conn) == CONNECTION_OK;
}

/* ------------------------------------------------------------------------ */
/* Sealing (lib/hb_sealer.h)                                                */

/* Seals every plaintext value the SQL functions left in the inbox, so that
 * what the store loads next is sealed. */
static int store_seal(hb_store_t *st, char *errstr, size_t errstr_size) {
    int rc;
    st->seal_due = 0;
    st->next_seal_ms = hb_mono_ms() + STORE_SWEEP_MS;
    rc = hb_sealer_seal_inbox(st->conn, st->keyring, errstr, errstr_size);
    if (rc < 0 && PQstatus(st->conn) == CONNECTION_BAD)
        store_drop(st);
    return rc;
}

/* Moves values sealed under an older key to the current one. */
static int store_reseal(hb_store_t *st, char *errstr, size_t errstr_size) {
    int rc = hb_sealer_reseal(st->conn, st->keyring, errstr, errstr_size);
    if (rc < 0 && PQstatus(st->conn) == CONNECTION_BAD)
        store_drop(st);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                  */

static PGresult *store_select(hb_store_t *st, const char *id) {
    const char *params[1] = {id};
    return PQexecParams(st->conn, STORE_SELECT, 1, NULL, params, NULL, NULL, 0);
}

int hb_store_load_all(hb_store_t *st, void (*cb)(hb_sub_t *sub, void *opaque), void *opaque,
                      char *errstr, size_t errstr_size) {
    PGresult *res;
    char why[256];
    if (store_ready(st, errstr, errstr_size) < 0)
        return -1;
    /* Seal what waits first, so that what is loaded is complete; a failure
     * here costs only the subscriptions it concerns (they fail closed). */
    if (store_seal(st, why, sizeof(why)) < 0 || store_reseal(st, why, sizeof(why)) < 0) {
        if (!st->conn) {
            hb_seterr(errstr, errstr_size, "%s", why);
            return -1;
        }
        hb_error("sealing secrets: %s", why);
    }
    res = store_select(st, NULL);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(st, res, "loading subscriptions", errstr, errstr_size);
    for (int row = 0; row < PQntuples(res); row++) {
        hb_sub_t *sub;
        if (store_row_to_sub(st->keyring, res, row, &sub, why, sizeof(why)) < 0) {
            /* One bad row must not keep the others from being served. */
            hb_log(HB_LOG_WARN, HB_KV("subscription_id", PQgetvalue(res, row, COL_ID)),
                   "subscription skipped: %s", why);
            continue;
        }
        cb(sub, opaque);
    }
    PQclear(res);
    return 0;
}

int hb_store_load_one(hb_store_t *st, const char *id, hb_sub_t **out, char *errstr,
                      size_t errstr_size) {
    PGresult *res;
    int rc = 0;
    *out = NULL;
    if (!is_uuid(id)) {
        hb_seterr(errstr, errstr_size, "not a subscription id: \"%.40s\"", id ? id : "");
        return -1;
    }
    if (store_ready(st, errstr, errstr_size) < 0)
        return -1;
    res = store_select(st, id);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(st, res, "loading a subscription", errstr, errstr_size);
    if (PQntuples(res) > 0)
        rc = store_row_to_sub(st->keyring, res, 0, out, errstr, errstr_size);
    PQclear(res);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Notifications and reconnection                                           */

typedef struct {
    char id[HB_UUID_LEN + 1];
    int verify; /* hookbridge_verify, else hookbridge_subscriptions */
} store_note_t;

/* Moves libpq's queued notifications into notes[], without duplicates. */
static size_t store_drain(hb_store_t *st, store_note_t **notes, size_t *cap) {
    size_t n = 0;
    PGnotify *nf;
    while ((nf = PQnotifies(st->conn)) != NULL) {
        int verify = !strcmp(nf->relname, "hookbridge_verify");
        int dup = 0;
        if (!strcmp(nf->relname, "hookbridge_seal")) {
            st->seal_due = 1;
            PQfreemem(nf);
            continue;
        }
        if (!verify && strcmp(nf->relname, "hookbridge_subscriptions")) {
            PQfreemem(nf);
            continue;
        }
        if (!is_uuid(nf->extra)) {
            hb_log(HB_LOG_WARN, HB_KV("channel", nf->relname),
                   "ignoring a notification whose payload is not a subscription id");
            PQfreemem(nf);
            continue;
        }
        for (size_t i = 0; i < n && !dup; i++)
            dup = (*notes)[i].verify == verify && !strcmp((*notes)[i].id, nf->extra);
        if (!dup) {
            if (n == *cap) {
                *cap = *cap ? *cap * 2 : 16;
                *notes = hb_realloc(*notes, *cap * sizeof(**notes));
            }
            memcpy((*notes)[n].id, nf->extra, HB_UUID_LEN + 1);
            (*notes)[n].verify = verify;
            n++;
        }
        PQfreemem(nf);
    }
    return n;
}

/* Changes first, then verification requests (which may want the new row). */
static int store_dispatch(hb_store_t *st, const store_note_t *notes, size_t n,
                          const hb_store_handlers_t *h, void *opaque, char *errstr,
                          size_t errstr_size) {
    char why[256];
    for (size_t i = 0; i < n; i++) {
        hb_sub_t *sub = NULL;
        if (notes[i].verify)
            continue;
        if (hb_store_load_one(st, notes[i].id, &sub, why, sizeof(why)) < 0) {
            if (!st->conn) {
                /* Lost mid-way: the reconnect's on_reload covers the rest. */
                hb_seterr(errstr, errstr_size, "%s", why);
                return -1;
            }
            /* Fail closed: a row we cannot read (only plain SQL past the
             * validating functions can make one) receives nothing, rather
             * than keep an outdated snapshot that may miss a deactivation. */
            hb_log(HB_LOG_ERROR, HB_KV("subscription_id", notes[i].id),
                   "subscription cannot be loaded, deliveries to it stop until it is fixed: %s",
                   why);
            if (h && h->on_change)
                h->on_change(notes[i].id, NULL, opaque);
            continue;
        }
        if (h && h->on_change)
            h->on_change(notes[i].id, sub, opaque);
        else
            hb_sub_unref(sub);
    }
    for (size_t i = 0; i < n; i++)
        if (notes[i].verify && h && h->on_verify)
            h->on_verify(notes[i].id, opaque);
    return 0;
}

static int store_reconnect(hb_store_t *st, const hb_store_handlers_t *h, void *opaque, char *errstr,
                           size_t errstr_size) {
    char why[512];
    st->conn = hb_pg_connect(st->conninfo, "hookbridge", why, sizeof(why));
    if (st->conn && store_listen(st, why, sizeof(why)) == 0) {
        st->backoff_ms = STORE_BACKOFF_MIN_MS;
        hb_info("database: reconnected; reloading subscriptions");
        if (h && h->on_reload)
            h->on_reload(opaque);
        return 0;
    }
    if (st->conn)
        PQfinish(st->conn);
    st->conn = NULL;
    st->retry_at_ms = hb_mono_ms() + st->backoff_ms;
    hb_seterr(errstr, errstr_size, "%s; next attempt in %lld s", why,
              (long long)(st->backoff_ms / 1000));
    st->backoff_ms =
        st->backoff_ms * 2 > STORE_BACKOFF_MAX_MS ? STORE_BACKOFF_MAX_MS : st->backoff_ms * 2;
    return -1;
}

int hb_store_process(hb_store_t *st, const hb_store_handlers_t *h, void *opaque, char *errstr,
                     size_t errstr_size) {
    store_note_t *notes = NULL;
    size_t cap = 0, n;
    int rc = 0;

    if (!st->conn) {
        if (hb_mono_ms() < st->retry_at_ms)
            return 0;
        return store_reconnect(st, h, opaque, errstr, errstr_size);
    }
    if (!PQconsumeInput(st->conn) || PQstatus(st->conn) == CONNECTION_BAD) {
        char why[512];
        /* libpq appends to the last command's message: the newest line that
         * is not an indented hint is this failure's. */
        hb_pg_last_line(PQerrorMessage(st->conn), why, sizeof(why));
        store_drop(st);
        hb_seterr(errstr, errstr_size, "database: connection lost (%s); reconnecting", why);
        return -1;
    }
    if (hb_mono_ms() >= st->next_seal_ms)
        st->seal_due = 1; /* a sweep: revealable secrets past their window leave the inbox */
    /* Handlers run queries, and libpq queues notifications that arrive
     * meanwhile without the socket turning readable again: drain until empty. */
    for (int round = 0; round < STORE_NOTIFY_ROUNDS && st->conn; round++) {
        n = store_drain(st, &notes, &cap);
        if (st->seal_due) {
            if (store_seal(st, errstr, errstr_size) < 0) {
                if (!st->conn) {
                    rc = -1;
                    break;
                }
                hb_error("sealing secrets: %s", errstr);
            }
            if (n == 0)
                continue; /* what sealing notified is drained next round */
        }
        if (n == 0)
            break;
        if ((rc = store_dispatch(st, notes, n, h, opaque, errstr, errstr_size)) < 0)
            break;
    }
    free(notes);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Verification                                                             */

int hb_store_claim_verification(hb_store_t *st, const char *id, hb_sub_t **out, char *errstr,
                                size_t errstr_size) {
    const char *params[1] = {id};
    PGresult *res;
    int claimed;
    *out = NULL;
    if (!is_uuid(id)) {
        hb_seterr(errstr, errstr_size, "not a subscription id");
        return -1;
    }
    if (store_ready(st, errstr, errstr_size) < 0)
        return -1;
    res = PQexecParams(st->conn, "SELECT hookbridge.claim_verification($1::uuid)", 1, NULL, params,
                       NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(st, res, "claiming a verification", errstr, errstr_size);
    claimed = PQntuples(res) == 1 && !PQgetisnull(res, 0, 0);
    PQclear(res);
    if (!claimed)
        return 0;
    if (hb_store_load_one(st, id, out, errstr, errstr_size) < 0)
        return -1;
    return *out ? 1 : 0;
}

int hb_store_record_verification(hb_store_t *st, const char *id, const char *url, int ok,
                                 const char *reason, char *errstr, size_t errstr_size) {
    const char *params[4] = {id, ok ? "true" : "false", ok ? NULL : reason, url};
    PGresult *res;
    if (!is_uuid(id)) {
        hb_seterr(errstr, errstr_size, "not a subscription id");
        return -1;
    }
    if (store_ready(st, errstr, errstr_size) < 0)
        return -1;
    res = PQexecParams(
        st->conn,
        "SELECT hookbridge.record_verification($1::uuid, $2::boolean, $3::text, $4::text)", 4, NULL,
        params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(st, res, "recording a verification", errstr, errstr_size);
    PQclear(res);
    return 0;
}

int hb_store_pending_verifications(hb_store_t *st, char ***ids, int *cnt, char *errstr,
                                   size_t errstr_size) {
    PGresult *res;
    int n;
    *ids = NULL;
    *cnt = 0;
    if (store_ready(st, errstr, errstr_size) < 0)
        return -1;
    res = PQexecParams(st->conn,
                       "SELECT s.id::text FROM hookbridge.subscriptions s"
                       " WHERE s.verification_requested_at IS NOT NULL"
                       "   AND s.deregistered_at IS NULL"
                       " ORDER BY s.verification_requested_at",
                       0, NULL, NULL, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(st, res, "listing pending verifications", errstr, errstr_size);
    n = PQntuples(res);
    *ids = hb_calloc((size_t)n + 1, sizeof(char *));
    for (int i = 0; i < n; i++)
        (*ids)[i] = hb_strdup(PQgetvalue(res, i, 0));
    *cnt = n;
    PQclear(res);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Replays and the failing-endpoint sweep (the retrier)                     */

static char *col_dup(const PGresult *res, int row, int c) {
    return hb_strdup(PQgetisnull(res, row, c) ? "" : PQgetvalue(res, row, c));
}

int hb_store_claim_replays(hb_store_t *st, int max, hb_replay_t **out, int *cnt, char *errstr,
                           size_t errstr_size) {
    char limit[16];
    const char *params[1] = {limit};
    PGresult *res;
    int n;
    *out = NULL;
    *cnt = 0;
    if (store_ready(st, errstr, errstr_size) < 0)
        return -1;
    snprintf(limit, sizeof(limit), "%d", max);
    res = PQexecParams(st->conn,
                       "SELECT delivery_id, subscription_id, event_ids, event_type, content_type,"
                       "       body, attempts, (extract(epoch FROM now()) * 1000)::bigint"
                       "  FROM hookbridge.claim_replays($1::int)",
                       1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(st, res, "claiming replays", errstr, errstr_size);
    n = PQntuples(res);
    *out = hb_calloc((size_t)n + 1, sizeof(**out));
    for (int i = 0; i < n; i++) {
        hb_replay_t *r = &(*out)[i];
        long long ll = 0;
        r->delivery_id = col_dup(res, i, 0);
        r->subscription_id = col_dup(res, i, 1);
        r->event_ids = col_dup(res, i, 2);
        r->event_type = col_dup(res, i, 3);
        r->content_type = col_dup(res, i, 4);
        r->body_len = (size_t)PQgetlength(res, i, 5);
        r->body = hb_strndup(PQgetvalue(res, i, 5), r->body_len);
        if (parse_ll(col(res, i, 6), &ll) == 0 && ll <= 1000000)
            r->attempts = (int)ll;
        ll = 0;
        if (parse_ll(col(res, i, 7), &ll) == 0)
            r->claimed_ms = ll;
    }
    *cnt = n;
    PQclear(res);
    return 0;
}

void hb_store_replays_free(hb_replay_t *replays, int cnt) {
    for (int i = 0; replays && i < cnt; i++) {
        free(replays[i].delivery_id);
        free(replays[i].subscription_id);
        free(replays[i].event_ids);
        free(replays[i].event_type);
        free(replays[i].content_type);
        free(replays[i].body);
    }
    free(replays);
}

int hb_store_deactivate_failing(hb_store_t *st, long long after_ms, int *count, char *errstr,
                                size_t errstr_size) {
    char after[32];
    const char *params[1] = {after};
    PGresult *res;
    *count = 0;
    if (store_ready(st, errstr, errstr_size) < 0)
        return -1;
    snprintf(after, sizeof(after), "%lld milliseconds", after_ms);
    res = PQexecParams(
        st->conn, "SELECT subscription_id, reason FROM hookbridge.deactivate_failing($1::interval)",
        1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(st, res, "deactivating failing endpoints", errstr, errstr_size);
    for (int i = 0; i < PQntuples(res); i++)
        hb_log(HB_LOG_WARN, HB_KV("subscription_id", PQgetvalue(res, i, 0)), "%s",
               PQgetvalue(res, i, 1));
    *count = PQntuples(res);
    PQclear(res);
    return 0;
}
