/*
 * The in-memory subscription index: event type -> deliverable subscriptions,
 * and id -> subscription (deliverable or not).
 *
 * Matching costs one hash lookup and returns the subscribers of that type:
 * the cost grows with the number of matches, not with all subscriptions. A
 * change is applied incrementally (one subscription upserted or removed),
 * never by a rebuild. The index holds one reference to each snapshot; a
 * replaced snapshot lives on while deliveries in flight hold references.
 * Main loop thread only.
 */
#ifndef HB_INDEX_H
#define HB_INDEX_H

#include "hb_common.h"
#include "hb_sub.h"

typedef struct hb_index_s hb_index_t;

hb_index_t *hb_index_new(void);
void hb_index_free(hb_index_t *ix);

/* Inserts or replaces the subscription with sub->id. Takes ownership of the
 * caller's reference. Only a deliverable snapshot (active and verified) is
 * listed under its event types. */
void hb_index_upsert(hb_index_t *ix, hb_sub_t *sub);

/* Removes the subscription (deregistered); no-op when absent. */
void hb_index_remove(hb_index_t *ix, const char *id);

/* Drops everything (before a reload). */
void hb_index_clear(hb_index_t *ix);

/* The current snapshot of id, or NULL; no reference is taken. */
hb_sub_t *hb_index_get(const hb_index_t *ix, const char *id);

/* Active subscriptions for event_type: the deliverable ones and those
 * awaiting their new URL's verification (hb_sub_awaiting_verification,
 * whose deliveries wait in the first tier). *subs stays valid until the next
 * change to the index; take a reference to keep one longer. */
size_t hb_index_match(const hb_index_t *ix, const char *event_type, hb_sub_t *const **subs);

/* The endpoint hosts of the subscriptions (any state), by host key
 * (hb_http_host_key: "scheme://host:port"): a host that loses its last
 * subscription (deregistered, moved to another host) is gone, and the
 * services forget what they kept of it (hb_deliveries_forget_host), so a
 * host subscribed to again later starts afresh. */
#define HB_INDEX_HOST_KEY 512
/* sub's host key into buf: 0, or -1 when its URL does not parse. */
int hb_index_host_key(const hb_sub_t *sub, char *buf, size_t size);
/* How many subscriptions have their URL at the host of key (0: none). */
size_t hb_index_host_subs(const hb_index_t *ix, const char *key);
/* The next host key from *pos (start at 0), NULL at the end; valid until
 * the next change to the index. */
const char *hb_index_host_each(const hb_index_t *ix, size_t *pos);
size_t hb_index_host_count(const hb_index_t *ix);

size_t hb_index_count(const hb_index_t *ix);             /* all known */
size_t hb_index_deliverable_count(const hb_index_t *ix); /* active and verified */

#endif
