/*
 * A small hash table with string keys, the one every module uses (the
 * subscription index, HTTP hosts, circuits, the dispatcher's open batches).
 *
 * Open addressing with linear probing over a power-of-two array of slots,
 * FNV-1a of the key; at 50% load (live keys and tombstones) it is rehashed
 * to a size for the live keys alone (at most a quarter full), so a table's
 * size follows what it holds now, not every key it ever held; removal
 * leaves a tombstone, so a slot never moves while the table is walked
 * (hb_hash_each) and removing the slot just returned is allowed during a
 * walk (adding is not). The table owns
 * a copy of each key, never the values. A zeroed hb_hash_t is an empty table.
 * Not thread-safe: each table belongs to one thread.
 */
#ifndef HB_HASH_H
#define HB_HASH_H

#include "hb_common.h"

typedef struct hb_hash_slot_s {
    char *key; /* NULL: empty; else live or a tombstone (not returned) */
    void *val;
} hb_hash_slot_t;

typedef struct hb_hash_s {
    hb_hash_slot_t *slots;
    size_t cap;  /* power of two */
    size_t used; /* live + tombstones */
    size_t live;
} hb_hash_t;

uint64_t hb_hash_str(const char *s); /* FNV-1a, 64 bit */

/* The slot of key, NULL when absent. */
hb_hash_slot_t *hb_hash_find(const hb_hash_t *h, const char *key);
/* key's value, NULL when absent. */
void *hb_hash_get(const hb_hash_t *h, const char *key);
/* Adds key (copied), which must not be present; returns its slot, valid
 * until the next hb_hash_put. */
hb_hash_slot_t *hb_hash_put(hb_hash_t *h, const char *key, void *val);
/* Removes the slot's key (its value is the caller's). */
void hb_hash_del(hb_hash_t *h, hb_hash_slot_t *s);
/* The next live slot from *pos (start at 0), NULL at the end. */
hb_hash_slot_t *hb_hash_each(const hb_hash_t *h, size_t *pos);
size_t hb_hash_count(const hb_hash_t *h);
/* Frees the keys and the slots (not the values); the table is empty again. */
void hb_hash_clear(hb_hash_t *h);

#endif
