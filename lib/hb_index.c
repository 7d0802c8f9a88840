/*
 * Subscription index.
 *
 * Two open-addressing hash tables with string keys: `by_id` maps a
 * subscription id to its current snapshot; `by_type` maps an event type to a
 * growable array of the deliverable snapshots subscribed to it. A snapshot in
 * a by_type array is always the one in by_id (upsert first unlists the old
 * snapshot from every type it was listed under, then lists the new one), so
 * the arrays never hold a stale or freed pointer. Tables grow at 50% load;
 * removal uses tombstones. Main loop thread only.
 */
#include "hb_index.h"

#include <stdlib.h>
#include <string.h>

typedef struct slot_s {
    char *key; /* NULL empty; TOMBSTONE removed */
    void *val;
} slot_t;

typedef struct strmap_s {
    slot_t *slots;
    size_t cap;  /* power of two */
    size_t used; /* live + tombstones */
    size_t live;
} strmap_t;

typedef struct typelist_s {
    hb_sub_t **subs;
    size_t cnt, cap;
} typelist_t;

struct hb_index_s {
    strmap_t by_id;   /* id -> hb_sub_t* (owns one reference) */
    strmap_t by_type; /* event type -> typelist_t* */
    size_t deliverable;
};

static char tombstone_key;
#define TOMBSTONE (&tombstone_key)

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static slot_t *map_find(const strmap_t *m, const char *key) {
    if (!m->cap)
        return NULL;
    for (size_t i = hash_str(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        slot_t *s = &m->slots[i];
        if (!s->key)
            return NULL;
        if (s->key != TOMBSTONE && !strcmp(s->key, key))
            return s;
    }
}

static void map_put_new(strmap_t *m, char *key, void *val);

static void map_grow(strmap_t *m) {
    strmap_t old = *m;
    m->cap = old.cap ? old.cap * 2 : 16;
    while (old.live * 2 >= m->cap)
        m->cap *= 2;
    m->slots = hb_calloc(m->cap, sizeof(slot_t));
    m->used = m->live = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.slots[i].key && old.slots[i].key != TOMBSTONE)
            map_put_new(m, old.slots[i].key, old.slots[i].val);
    free(old.slots);
}

/* key is owned by the map from here on; key must not be present. */
static void map_put_new(strmap_t *m, char *key, void *val) {
    if ((m->used + 1) * 2 > m->cap)
        map_grow(m);
    for (size_t i = hash_str(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        slot_t *s = &m->slots[i];
        if (!s->key || s->key == TOMBSTONE) {
            if (!s->key)
                m->used++;
            s->key = key;
            s->val = val;
            m->live++;
            return;
        }
    }
}

static void map_del(strmap_t *m, slot_t *s) {
    free(s->key);
    s->key = TOMBSTONE;
    s->val = NULL;
    m->live--;
}

hb_index_t *hb_index_new(void) {
    return hb_calloc(1, sizeof(hb_index_t));
}

static void unlist(hb_index_t *ix, hb_sub_t *sub) {
    if (!hb_sub_deliverable(sub))
        return;
    for (int t = 0; t < sub->event_types_cnt; t++) {
        slot_t *s = map_find(&ix->by_type, sub->event_types[t]);
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
            map_del(&ix->by_type, s);
        }
    }
    ix->deliverable--;
}

static void list(hb_index_t *ix, hb_sub_t *sub) {
    if (!hb_sub_deliverable(sub))
        return;
    for (int t = 0; t < sub->event_types_cnt; t++) {
        slot_t *s = map_find(&ix->by_type, sub->event_types[t]);
        typelist_t *tl;
        if (!s) {
            tl = hb_calloc(1, sizeof(*tl));
            map_put_new(&ix->by_type, hb_strdup(sub->event_types[t]), tl);
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
    ix->deliverable++;
}

void hb_index_upsert(hb_index_t *ix, hb_sub_t *sub) {
    slot_t *s = map_find(&ix->by_id, sub->id);
    if (s) {
        hb_sub_t *old = s->val;
        unlist(ix, old);
        hb_sub_unref(old);
        s->val = sub;
    } else {
        map_put_new(&ix->by_id, hb_strdup(sub->id), sub);
    }
    list(ix, sub);
}

void hb_index_remove(hb_index_t *ix, const char *id) {
    slot_t *s = map_find(&ix->by_id, id);
    hb_sub_t *old;
    if (!s)
        return;
    old = s->val;
    unlist(ix, old);
    map_del(&ix->by_id, s);
    hb_sub_unref(old);
}

void hb_index_clear(hb_index_t *ix) {
    for (size_t i = 0; i < ix->by_type.cap; i++) {
        slot_t *s = &ix->by_type.slots[i];
        if (s->key && s->key != TOMBSTONE) {
            typelist_t *tl = s->val;
            free(tl->subs);
            free(tl);
            free(s->key);
        }
    }
    for (size_t i = 0; i < ix->by_id.cap; i++) {
        slot_t *s = &ix->by_id.slots[i];
        if (s->key && s->key != TOMBSTONE) {
            hb_sub_unref(s->val);
            free(s->key);
        }
    }
    free(ix->by_type.slots);
    free(ix->by_id.slots);
    memset(ix, 0, sizeof(*ix));
}

void hb_index_free(hb_index_t *ix) {
    if (!ix)
        return;
    hb_index_clear(ix);
    free(ix);
}

hb_sub_t *hb_index_get(const hb_index_t *ix, const char *id) {
    slot_t *s = map_find(&ix->by_id, id);
    return s ? s->val : NULL;
}

size_t hb_index_match(const hb_index_t *ix, const char *event_type, hb_sub_t *const **subs) {
    slot_t *s = event_type ? map_find(&ix->by_type, event_type) : NULL;
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
    return ix->by_id.live;
}

size_t hb_index_deliverable_count(const hb_index_t *ix) {
    return ix->deliverable;
}
