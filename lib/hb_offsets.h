/*
 * At-least-once offset tracking.
 *
 * Every consumed message is tracked until all the work it caused is durable;
 * per partition the committable position is the lowest unfinished offset (or
 * one past the highest offset when nothing is unfinished). Deliveries finish
 * in any order; the position only moves over a contiguous run of finished
 * offsets. A revoked partition is forgotten: late completions of its messages
 * are ignored (the new owner redelivers them with the same webhook-id).
 * Main loop thread only.
 */
#ifndef HB_OFFSETS_H
#define HB_OFFSETS_H

#include <librdkafka/rdkafka.h>

#include "hb_common.h"

typedef struct hb_offsets_s hb_offsets_t;
typedef struct hb_offpart_s hb_offpart_t;

/* Handle of one tracked message, returned by track and passed to done. */
typedef struct hb_offref_s {
    hb_offpart_t *part;
    uint64_t seq;
} hb_offref_t;

hb_offsets_t *hb_offsets_new(void);
void hb_offsets_free(hb_offsets_t *o);

/* A message was consumed. Offsets of one partition must be tracked in
 * increasing order (as a consumer sees them). */
hb_offref_t hb_offsets_track(hb_offsets_t *o, const char *topic, int32_t partition, int64_t offset);

/* All work caused by the message is durable. Exactly once per ref. */
void hb_offsets_done(hb_offsets_t *o, hb_offref_t ref);

/* Appends (topic, partition, next offset to consume) for every partition whose
 * position moved since the last call. Returns how many were appended. */
size_t hb_offsets_collect(hb_offsets_t *o, rd_kafka_topic_partition_list_t *out);

/* Forgets a partition (revoked). */
void hb_offsets_forget(hb_offsets_t *o, const char *topic, int32_t partition);
/* 1 when ref's partition was forgotten (revoked) while ref was unfinished:
 * its done() moves nothing, the new owner consumes the message again. */
int hb_offsets_revoked(hb_offref_t ref);

/* Messages tracked and not done, over all live partitions. */
size_t hb_offsets_pending(const hb_offsets_t *o);

/* The committable position of a partition (next offset), -1 when unknown. */
int64_t hb_offsets_position(const hb_offsets_t *o, const char *topic, int32_t partition);

#endif
