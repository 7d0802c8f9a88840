/*
 * A webhook subscription as the services see it: an immutable snapshot of
 * one row of hookbridge.subscriptions (with its event types, secrets and
 * options), shared by reference count between the subscription index and the
 * deliveries in flight. When a row changes, the store builds a new snapshot
 * and the index swaps it in; deliveries already in flight keep the old one
 * until they finish. Only the main loop thread touches reference counts.
 *
 * Payload options live here in the shape delivery wants them: the selected
 * event fields as a list of names, custom request headers as ready-made
 * "Name: value" lines, the content filter as the stored JSON. The SQL side
 * (hookbridge._check_options) validates them on the way in; hb_sub_add_header
 * checks them again so that a header smuggled into the table by hand (a
 * reserved name, a line break) never reaches the wire: the snapshot only ever
 * holds headers that are safe to send.
 */
#ifndef HB_SUB_H
#define HB_SUB_H

#include <jansson.h>
#include <stdint.h>

#include "hb_common.h"

#define HB_UUID_LEN 36
#define HB_SECRET_MAX 64 /* decoded signing-key bytes */

/* The bounds of options.batch_max and batch_window_ms (sql/20_options.sql
 * refuses others with HB006; a row written past it is served clamped). */
#define HB_BATCH_MAX_LIMIT 100
#define HB_BATCH_WINDOW_LIMIT_MS 60000

typedef enum {
    HB_FORMAT_OKTA = 0, /* Okta event-hook envelope (default) */
    HB_FORMAT_CLOUDEVENTS,
    HB_FORMAT_EVENT, /* the bare event */
} hb_format_t;

/* options.ordering: which field of an event keys its order (hb_ordering.h). */
typedef enum {
    HB_ORDER_NONE = 0,
    HB_ORDER_ACTOR,  /* actor.id */
    HB_ORDER_TARGET, /* the first target of type User, else the first target */
    HB_ORDER_KEY,    /* the events topic's message key */
} hb_order_by_t;

typedef struct hb_secret_s {
    uint8_t key[HB_SECRET_MAX];
    size_t key_len;
    int64_t expires_ms; /* wall clock; 0 = current secret, never expires */
} hb_secret_t;

typedef struct hb_sub_s {
    int refcnt;
    char id[HB_UUID_LEN + 1];
    char *name;
    char *url;
    char *auth_header; /* NULL when not configured */
    char *auth_value;  /* secret: never logged */
    hb_secret_t secrets[2];
    int secrets_cnt; /* 1, or 2 during a rotation's grace period */
    char **event_types;
    int event_types_cnt;
    int active;   /* status = 'active' */
    int verified; /* verification = 'verified' */
    /* When it last went from active to inactive (subscriptions.deactivated_at,
     * the database's clock, Unix ms); 0 = never. */
    int64_t deactivated_ms;
    hb_format_t format;
    long long timeout_ms;      /* 0 = service default */
    int batch_max;             /* events per request, 1 .. HB_BATCH_MAX_LIMIT */
    long long batch_window_ms; /* 0 .. HB_BATCH_WINDOW_LIMIT_MS */
    /* options.fields: the top-level event fields delivered, besides uuid,
     * published and eventType, which always are; NULL = every field. */
    char **fields;
    int fields_cnt;
    /* options.headers as "Name: value" lines, each checked by
     * hb_sub_add_header; sent on every attempt and on the verification GET.
     * Values are not secrets but are never logged. */
    char **headers;
    int headers_cnt;
    json_t *filter_spec;        /* options.filter as stored; NULL = none; owned */
    struct hb_filter_s *filter; /* filter_spec compiled (hb_filter.h); NULL = all */
    /* options.rate_limit: at most rate_per_second requests a second on
     * average, rate_burst at once (hb_ratelimit.h); 0 = not limited. */
    double rate_per_second;
    int rate_burst;
    hb_order_by_t ordering; /* options.ordering; NONE = no order kept */
} hb_sub_t;

hb_sub_t *hb_sub_new(void);          /* refcnt 1, zeroed */
hb_sub_t *hb_sub_ref(hb_sub_t *sub); /* returns sub */
void hb_sub_unref(hb_sub_t *sub);    /* frees at zero; NULL ok */

/* 1 when a subscription may not set header `name` (any case): one the
 * delivery sets itself (Content-Type, User-Agent, webhook-*, the verification
 * challenge), one describing the connection or framing (Host, Content-Length,
 * Transfer-Encoding, Connection, Expect ...), or a credential header
 * (Authorization, Proxy-Authorization, Cookie: use auth_header/auth_value).
 * The same list as hookbridge._reserved_header plus the credential names. */
int hb_sub_header_reserved(const char *name);

/* Adds a custom request header. Refused (-1, nothing added, errstr names the
 * header but never shows the value): a name that is not an HTTP token of at
 * most 256 characters, a reserved name, the subscription's auth_header (so
 * set auth_header first), a name already added (ignoring case), or a value
 * that is empty, has leading or trailing whitespace, or anything but
 * printable ASCII and tabs. */
int hb_sub_add_header(hb_sub_t *sub, const char *name, const char *value, char *errstr,
                      size_t errstr_size) HB_MUSTCHECK;

/* Sets the field selection from a JSON array of strings (copied; the array is
 * borrowed). -1 when it is not a non-empty array of non-empty strings. */
int hb_sub_set_fields(hb_sub_t *sub, const json_t *fields, char *errstr,
                      size_t errstr_size) HB_MUSTCHECK;

/* Sets the rate limit from options.rate_limit ({"per_second": > 0 and <=
 * 10000, "burst": 1..10000, default ceil(per_second)}; borrowed); NULL
 * clears it. -1 (nothing changed) when it is not such an object. */
int hb_sub_set_rate_limit(hb_sub_t *sub, const json_t *rate_limit, char *errstr,
                          size_t errstr_size) HB_MUSTCHECK;

/* Deliverable now: active and verified. */
int hb_sub_deliverable(const hb_sub_t *sub);

/* Active but not verified: its URL was changed (update()) and the new URL
 * has not yet passed its challenge. Its deliveries are made and paused in
 * the first delay tier, attempts not counted, until the new URL is verified
 * (then they go to it) or fails (then the subscription is inactive and they
 * are dropped). */
int hb_sub_awaiting_verification(const hb_sub_t *sub);

/* Why a delivery that waited (its attempts began at began_ms, Unix ms; 0:
 * not yet) is dropped instead of going to its subscription as it is now
 * (`now`, NULL when it is gone or its row unreadable): "subscription deregistered ...",
 * "subscription inactive", or "subscription was deactivated after this delivery began" (a
 * deactivation drops what waits, even if activated again); NULL: it goes (an active one awaiting
 * verification is parked by the sender). */
const char *hb_sub_drop_reason(const hb_sub_t *now, int64_t began_ms);

/* 1 when the subscription was deactivated after began_ms (Unix ms),
 * the start of a delivery's attempts: the deactivation dropped the
 * delivery's pending retries, even if the subscription is active again.
 * 0 when it never was deactivated, or began_ms is 0 (unknown). */
int hb_sub_deactivated_since(const hb_sub_t *sub, int64_t began_ms);

/* The subscription's content filter accepts the event (no filter: yes). */
int hb_sub_wants(const hb_sub_t *sub, const json_t *event);

/* The subscription has event type type among its event types. */
int hb_sub_has_type(const hb_sub_t *sub, const char *type);

#endif
