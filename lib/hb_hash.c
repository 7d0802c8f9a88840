/* A string-keyed open-addressing hash table (see hb_hash.h). */
#include "hb_hash.h"

#include <stdlib.h>
#include <string.h>

static char tombstone_key;
#define TOMBSTONE (&tombstone_key)

uint64_t hb_hash_str(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

hb_hash_slot_t *hb_hash_find(const hb_hash_t *h, const char *key) {
    if (!h->cap)
        return NULL;
    for (size_t i = hb_hash_str(key) & (h->cap - 1);; i = (i + 1) & (h->cap - 1)) {
        hb_hash_slot_t *s = &h->slots[i];
        if (!s->key)
            return NULL;
        if (s->key != TOMBSTONE && !strcmp(s->key, key))
            return s;
    }
}

void *hb_hash_get(const hb_hash_t *h, const char *key) {
    hb_hash_slot_t *s = hb_hash_find(h, key);
    return s ? s->val : NULL;
}

/* Places an owned key in the first free slot of its chain. */
static hb_hash_slot_t *place(hb_hash_t *h, char *key, void *val) {
    for (size_t i = hb_hash_str(key) & (h->cap - 1);; i = (i + 1) & (h->cap - 1)) {
        hb_hash_slot_t *s = &h->slots[i];
        if (!s->key || s->key == TOMBSTONE) {
            if (!s->key)
                h->used++;
            s->key = key;
            s->val = val;
            h->live++;
            return s;
        }
    }
}

/* Rehashes into a table sized for the live keys, the tombstones dropped:
 * at most a quarter full after, so the next rehash is a quarter of the
 * slots' worth of additions away (amortised O(1) per addition). Doubling
 * whatever the live count (as this did) made a table whose keys come and
 * go (a retrier's deliveries in flight, each a new id; hosts, ordering
 * keys, subscriptions over weeks) grow with every key it ever held: a
 * million added and removed one by one left a million slots, walked by
 * hb_hash_each. */
static void grow(hb_hash_t *h) {
    hb_hash_t old = *h;
    h->cap = 16;
    while (old.live * 4 >= h->cap)
        h->cap *= 2;
    h->slots = hb_calloc(h->cap, sizeof(*h->slots));
    h->used = h->live = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.slots[i].key && old.slots[i].key != TOMBSTONE)
            (void)place(h, old.slots[i].key, old.slots[i].val);
    free(old.slots);
}

hb_hash_slot_t *hb_hash_put(hb_hash_t *h, const char *key, void *val) {
    if ((h->used + 1) * 2 > h->cap)
        grow(h);
    return place(h, hb_strdup(key), val);
}

void hb_hash_del(hb_hash_t *h, hb_hash_slot_t *s) {
    free(s->key);
    s->key = TOMBSTONE;
    s->val = NULL;
    h->live--;
}

hb_hash_slot_t *hb_hash_each(const hb_hash_t *h, size_t *pos) {
    for (; *pos < h->cap; (*pos)++) {
        hb_hash_slot_t *s = &h->slots[*pos];
        if (s->key && s->key != TOMBSTONE) {
            (*pos)++;
            return s;
        }
    }
    return NULL;
}

size_t hb_hash_count(const hb_hash_t *h) {
    return h->live;
}

void hb_hash_clear(hb_hash_t *h) {
    for (size_t i = 0; i < h->cap; i++)
        if (h->slots[i].key && h->slots[i].key != TOMBSTONE)
            free(h->slots[i].key);
    free(h->slots);
    memset(h, 0, sizeof(*h));
}
