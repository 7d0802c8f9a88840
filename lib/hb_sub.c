/*
 * Subscription snapshots: allocation and reference counting.
 * Main loop thread only.
 */
#include "hb_sub.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

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
    free(sub);
}

int hb_sub_deliverable(const hb_sub_t *sub) {
    return sub->active && sub->verified;
}
