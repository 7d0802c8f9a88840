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

typedef struct typelist_s {
    hb_sub_t **subs;
    size_t cnt, cap;
} typelist_t;

struct hb_index_s {
    hb_hash_t by_id;   /* id -> hb_sub_t* (owns one reference) */
    hb_hash_t by_type; /* event type -> typelist_t* */
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

void hb_index_upsert(hb_index_t *ix, hb_sub_t *sub) {
    hb_hash_slot_t *s = hb_hash_find(&ix->by_id, sub->id);
    if (s) {
        hb_sub_t *old = s->val;
        unlist(ix, old);
        hb_sub_unref(old);
        s->val = sub;
    } else {
        (void)hb_hash_put(&ix->by_id, sub->id, sub);
    }
    list(ix, sub);
}

void hb_index_remove(hb_index_t *ix, const char *id) {
    hb_hash_slot_t *s = hb_hash_find(&ix->by_id, id);
    hb_sub_t *old;
    if (!s)
        return;
    old = s->val;
    unlist(ix, old);
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
