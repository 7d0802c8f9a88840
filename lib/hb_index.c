/*
 * Subscription index.
 *
 * Two hash tables (hb_hash) with string keys: `by_id` maps a
 * subscription id to its current snapshot; `by_type` maps an event type to a
 * growable array of the active snapshots subscribed to it (deliverable, or
 * awaiting their new URL's verification). A snapshot in
 * a by_type array is always the one in by_id (upsert first unlists the old
 * snapshot from every type it was listed under, then lists the new one), so
 * the arrays never hold a stale or freed pointer. Main loop thread only.
 */
#include "hb_index.h"

#include <stdlib.h>
#include <string.h>

#include "hb_hash.h"
#include "hb_http.h"

typedef struct typelist_s {
    hb_sub_t **subs;
    size_t cnt, cap;
} typelist_t;

struct hb_index_s {
    hb_hash_t by_id;   /* id -> hb_sub_t* (owns one reference) */
    hb_hash_t by_type; /* event type -> typelist_t* */
    /* endpoint host key (hb_http_host_key) -> how many subscriptions in
     * by_id have their URL there (uintptr_t); a host none has is absent */
    hb_hash_t by_host;
    size_t deliverable;
};

hb_index_t *hb_index_new(void) {
    return hb_calloc(1, sizeof(hb_index_t));
}

static void unlist(hb_index_t *ix, hb_sub_t *sub) {
    if (!sub->active)
        return;
    for (int t = 0; t < sub->event_types_cnt; t++) {
        hb_hash_slot_t *s = hb_hash_find(&ix->by_type, sub->event_types[t]);
        typelist_t *tl;
        if (!s)
            continue;
        tl = s->val;
        for (size_t i = 0; i < tl->cnt; i++) {
            if (tl->subs[i] == sub) {
                tl->subs[i] = tl->subs[--tl->cnt];
                break;
            }
        }
        if (tl->cnt == 0) {
            free(tl->subs);
            free(tl);
            hb_hash_del(&ix->by_type, s);
        }
    }
    if (hb_sub_deliverable(sub))
        ix->deliverable--;
}

static void list(hb_index_t *ix, hb_sub_t *sub) {
    if (!sub->active)
        return;
    for (int t = 0; t < sub->event_types_cnt; t++) {
        hb_hash_slot_t *s = hb_hash_find(&ix->by_type, sub->event_types[t]);
        typelist_t *tl;
        if (!s) {
            tl = hb_calloc(1, sizeof(*tl));
            (void)hb_hash_put(&ix->by_type, sub->event_types[t], tl);
        } else {
            tl = s->val;
        }
        /* A type listed twice in one snapshot is listed once. */
        if (tl->cnt && tl->subs[tl->cnt - 1] == sub)
            continue;
        if (tl->cnt == tl->cap) {
            tl->cap = tl->cap ? tl->cap * 2 : 4;
            tl->subs = hb_realloc(tl->subs, tl->cap * sizeof(hb_sub_t *));
        }
        tl->subs[tl->cnt++] = sub;
    }
    if (hb_sub_deliverable(sub))
        ix->deliverable++;
}

/* sub's URL counts at its host (delta +1), or no longer (-1). */
static void host_count(hb_index_t *ix, const hb_sub_t *sub, int delta) {
    char key[HB_INDEX_HOST_KEY];
    hb_hash_slot_t *s;
    if (!sub->url || hb_http_host_key(sub->url, key, sizeof(key)) < 0)
        return;
    s = hb_hash_find(&ix->by_host, key);
    if (delta > 0) {
        if (s)
            s->val = (void *)((uintptr_t)s->val + 1);
        else
            (void)hb_hash_put(&ix->by_host, key, (void *)(uintptr_t)1);
    } else if (s) {
        if ((uintptr_t)s->val <= 1)
            hb_hash_del(&ix->by_host, s);
        else
            s->val = (void *)((uintptr_t)s->val - 1);
    }
}

void hb_index_upsert(hb_index_t *ix, hb_sub_t *sub) {
    hb_hash_slot_t *s = hb_hash_find(&ix->by_id, sub->id);
    if (s) {
        hb_sub_t *old = s->val;
        unlist(ix, old);
        host_count(ix, old, -1);
        hb_sub_unref(old);
        s->val = sub;
    } else {
        (void)hb_hash_put(&ix->by_id, sub->id, sub);
    }
    list(ix, sub);
    host_count(ix, sub, +1);
}

void hb_index_remove(hb_index_t *ix, const char *id) {
    hb_hash_slot_t *s = hb_hash_find(&ix->by_id, id);
    hb_sub_t *old;
    if (!s)
        return;
    old = s->val;
    unlist(ix, old);
    host_count(ix, old, -1);
    hb_hash_del(&ix->by_id, s);
    hb_sub_unref(old);
}

void hb_index_clear(hb_index_t *ix) {
    hb_hash_slot_t *s;
    size_t pos = 0;
    while ((s = hb_hash_each(&ix->by_type, &pos)) != NULL) {
        typelist_t *tl = s->val;
        free(tl->subs);
        free(tl);
    }
    pos = 0;
    while ((s = hb_hash_each(&ix->by_id, &pos)) != NULL)
        hb_sub_unref(s->val);
    hb_hash_clear(&ix->by_type);
    hb_hash_clear(&ix->by_id);
    hb_hash_clear(&ix->by_host);
    memset(ix, 0, sizeof(*ix));
}

void hb_index_free(hb_index_t *ix) {
    if (!ix)
        return;
    hb_index_clear(ix);
    free(ix);
}

hb_sub_t *hb_index_get(const hb_index_t *ix, const char *id) {
    hb_hash_slot_t *s = hb_hash_find(&ix->by_id, id);
    return s ? s->val : NULL;
}

size_t hb_index_match(const hb_index_t *ix, const char *event_type, hb_sub_t *const **subs) {
    hb_hash_slot_t *s = event_type ? hb_hash_find(&ix->by_type, event_type) : NULL;
    typelist_t *tl;
    if (!s) {
        *subs = NULL;
        return 0;
    }
    tl = s->val;
    *subs = tl->subs;
    return tl->cnt;
}

size_t hb_index_count(const hb_index_t *ix) {
    return hb_hash_count(&ix->by_id);
}

size_t hb_index_deliverable_count(const hb_index_t *ix) {
    return ix->deliverable;
}

int hb_index_host_key(const hb_sub_t *sub, char *buf, size_t size) {
    return sub && sub->url ? hb_http_host_key(sub->url, buf, size) : -1;
}

size_t hb_index_host_subs(const hb_index_t *ix, const char *key) {
    return (uintptr_t)hb_hash_get(&ix->by_host, key);
}

const char *hb_index_host_each(const hb_index_t *ix, size_t *pos) {
    const hb_hash_slot_t *s = hb_hash_each(&ix->by_host, pos);
    return s ? s->key : NULL;
}

size_t hb_index_host_count(const hb_index_t *ix) {
    return hb_hash_count(&ix->by_host);
}
