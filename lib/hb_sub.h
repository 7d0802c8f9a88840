/*
 * A webhook subscription as the services see it: an immutable snapshot of
 * one row of hookbridge.subscriptions (with its event types, secrets and
 * options), shared by reference count between the subscription index and the
 * deliveries in flight. When a row changes, the store builds a new snapshot
 * and the index swaps it in; deliveries already in flight keep the old one
 * until they finish. Only the main loop thread touches reference counts.
 */
#ifndef HB_SUB_H
#define HB_SUB_H

#include <stdint.h>

#include "hb_common.h"

#define HB_UUID_LEN 36
#define HB_SECRET_MAX 64 /* decoded signing-key bytes */

typedef enum {
    HB_FORMAT_OKTA = 0, /* Okta event-hook envelope (default) */
    HB_FORMAT_CLOUDEVENTS,
    HB_FORMAT_EVENT, /* the bare event */
} hb_format_t;

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
    hb_format_t format;
    long long timeout_ms; /* 0 = service default */
    int batch_max;        /* events per request, >= 1 */
    long long batch_window_ms;
} hb_sub_t;

hb_sub_t *hb_sub_new(void);          /* refcnt 1, zeroed */
hb_sub_t *hb_sub_ref(hb_sub_t *sub); /* returns sub */
void hb_sub_unref(hb_sub_t *sub);    /* frees at zero; NULL ok */

/* Deliverable now: active and verified. */
int hb_sub_deliverable(const hb_sub_t *sub);

#endif
