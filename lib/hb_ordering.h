/*
 * Ordered delivery per key (options.ordering): the dispatcher's chains.
 *
 * The events of one key (the actor's id, the first target's id, or the
 * events topic's message key: hb_order_key) reach an endpoint one at a time,
 * in the order the dispatcher consumed them. Each (subscription, key) is a
 * chain: at most one of its deliveries is in flight; the ones behind it wait
 * in memory, briefly (one request's time). When the head goes to a delay
 * tier, every delivery queued behind it is parked on the first tier
 * unattempted, each naming its predecessor (DeliveryRetry.after_delivery_id),
 * and becomes the chain's new tail; the retrier attempts such a delivery only
 * once its predecessor is final (delivered, failed or dropped), so a
 * dead-lettered head lets the next go on.
 *
 * What a chain knows of its tail (the newest delivery of the key): nothing
 * (a chain just made, or after a partition was revoked: the delivery log is
 * asked for the (subscription, key)'s tail, HB_CHAIN_ASK_KEY); that it is
 * final or absent (the next is sent at once: no database work for a key that
 * is not blocked); or that it waits in a tier (the log is asked whether it is
 * final yet, HB_CHAIN_ASK_TAIL, once per burst of arrivals). Questions go to
 * the delivery log's thread (hb_dlog), answered after the rows this process
 * queued before, so an answer never misses this process's own outcomes.
 *
 * This module is the decision logic only, with the queued items opaque; the
 * dispatcher carries the steps out (dispatcher.c). Pure: no I/O. Main loop
 * thread only.
 */
#ifndef HB_ORDERING_H
#define HB_ORDERING_H

#include <jansson.h>
#include <stdint.h>

#include "hb_common.h"
#include "hb_sub.h"

/* The ordering key of event for `by` (Kafka message key msg_key, msg_key_len
 * bytes, may be NULL), copied into out (at most outsz - 1 bytes); 0 when the
 * event has no such key (it is then delivered unordered), else 1.
 * target: the id of the first target of type User, else of the first target
 * (the producer keys messages by the first User target, else the actor). */
int hb_order_key(hb_order_by_t by, const json_t *event, const void *msg_key, size_t msg_key_len,
                 char *out, size_t outsz);

/* "actor", "target", "key" ("" for none). */
const char *hb_order_by_name(hb_order_by_t by);

typedef struct hb_chains_s hb_chains_t;
typedef struct hb_chain_s hb_chain_t;

typedef enum {
    HB_CHAIN_WAIT,     /* nothing to do now */
    HB_CHAIN_ASK_KEY,  /* ask the log for the tail of (subscription, key); then hb_chain_answer */
    HB_CHAIN_ASK_TAIL, /* ask the log whether hb_chain_tail() is final; then hb_chain_answer */
    HB_CHAIN_SEND,     /* send the item: the chain's head; hb_chain_settled once routed */
    HB_CHAIN_PARK,     /* park the item behind `after` in the first tier, unattempted */
} hb_chain_step_t;

hb_chains_t *hb_chains_new(void);
/* Frees every chain; each item still queued goes to drop (may be NULL). */
void hb_chains_free(hb_chains_t *cs, void (*drop)(void *item));

/* The chain of (sub_id, key), made when absent. */
hb_chain_t *hb_chains_get(hb_chains_t *cs, const char *sub_id, const char *key, int64_t now_ms);
size_t hb_chains_count(const hb_chains_t *cs);
/* Everything known about tails may be stale (a partition was revoked): each
 * chain asks the log again before it sends its next delivery. When the log
 * names another tail than the chain's own newest delivery, that one is asked
 * about too (ASK_TAIL): a retry's row reaches the log only after the broker
 * has the retry, so the log may not know it yet. */
void hb_chains_forget(hb_chains_t *cs);
/* Takes every queued item for which which(item, arg) says 1 out of its
 * chain (the others keep their order) and hands each to drop, once all are
 * out; a head in flight is not queued. Returns how many. */
size_t hb_chains_withdraw(hb_chains_t *cs, int (*which)(void *item, void *arg),
                          void (*drop)(void *item, void *arg), void *arg);
/* Removes chains idle (nothing in flight, asked or queued) for idle_ms, or
 * 5 * idle_ms when their tail waits in a delay tier (a key retried once and
 * never seen again must not stay for good); idle_ms 0: every idle chain.
 * Returns how many. */
size_t hb_chains_evict_idle(hb_chains_t *cs, int64_t now_ms, int64_t idle_ms);

const char *hb_chain_sub_id(const hb_chain_t *c);
const char *hb_chain_key(const hb_chain_t *c);
/* The newest delivery of the key known here ("" none). */
const char *hb_chain_tail(const hb_chain_t *c);

/* Queues item (delivery id `id`) at the chain's end. */
void hb_chain_push(hb_chain_t *c, void *item, const char *id);
/* The next step. SEND and PARK hand out *item (and for PARK, after: the
 * predecessor, HB_UUID_LEN + 1 bytes); call again until WAIT. */
hb_chain_step_t hb_chain_next(hb_chain_t *c, void **item, char *after);
/* The log's answer to ASK_KEY or ASK_TAIL: found, the tail's delivery id
 * (ASK_KEY), and whether it is final (delivered, failed, dropped). For
 * ASK_TAIL, a tail not found is not final (its row is on its way). */
void hb_chain_answer(hb_chain_t *c, int found, const char *tail_id, int final);
/* The question could not be asked or answered: ask again next time. */
void hb_chain_unasked(hb_chain_t *c);
/* The head sent was routed: parked = it waits in a delay tier (retry, not
 * made), else it is final. */
void hb_chain_settled(hb_chain_t *c, int parked);
/* The head sent was abandoned because its partition was revoked: the new
 * owner delivers it, so what follows waits behind it as behind a tail
 * parked in a delay tier. */
void hb_chain_revoked(hb_chain_t *c);
/* Shutdown: the chain takes no more steps. */
void hb_chain_stop(hb_chain_t *c);

#endif
