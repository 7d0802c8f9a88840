/*
 * The Kafka consumer of a service: group membership and what follows from it.
 *
 * Membership is cooperative-sticky (a member joining or leaving moves only
 * the partitions that change owner) with optional static membership. The
 * rebalance callback keeps our own copy of the assignment (librdkafka's
 * rd_kafka_assignment() waits on its main thread, which stalled the loop), and
 * before a partition is revoked commits what is finished, so its new owner
 * starts there. Then the partition is forgotten and the revoke hook
 * (hb_consumer_on_revoke) abandons the work held for it that has not
 * started: the new owner does it (logged once, with how much).
 *
 * Offsets: auto-commit of stored offsets only; the loop stores, per
 * partition, the position hb_offsets says is committable (every message
 * before it is finished), so a committed position never passes unfinished
 * work and a crash redelivers instead of losing.
 *
 * Flow control: the loop asks for messages only while healthy endpoints keep
 * up (hb_worker); pausing every partition (max_pending_events unfinished
 * messages) is the last resort: logged at warn with the reason, in the metric
 * hookbridge_consumption_paused and in /readyz's text.
 *
 * Deferral (the retrier, and messages whose writer schema is on its way):
 * hb_consumer_defer pauses a partition and rewinds it to a message that is not
 * yet due, and resumes it when it is. Nothing is held in memory meanwhile;
 * the committed position stays at that message. A rewind librdkafka refuses
 * (logged at warn) is tried again when due, and the partition stays paused
 * and deferred until it succeeds: resuming without it would skip the message.
 *
 * Messages lost to retention: a committed position the broker no longer has
 * (the partition's retention deleted it while nobody consumed it) makes
 * librdkafka start again from the partition's first message; the messages in
 * between were never read. That is counted in
 * hookbridge_messages_expired_total and logged at error with the offsets, at
 * the first message read after it (librdkafka reports it only in a log line,
 * which its own thread hands over).
 *
 * Also: hookbridge_consumer_lag per partition (end offset minus the group's
 * committed offset: 0 when everything is finished and committed), a
 * subscribed topic that does not exist, brokers that do not answer (both make
 * the service not ready).
 *
 * Main loop thread only (the rebalance and error callbacks are served from
 * the consumer poll on that thread; the broker probe and the lag measurement,
 * both broker round trips, are threads of their own).
 */
#ifndef HB_CONSUMER_H
#define HB_CONSUMER_H

#include <librdkafka/rdkafka.h>

#include "hb_common.h"
#include "hb_config.h"
#include "hb_kafka.h"
#include "hb_metrics.h"
#include "hb_offsets.h"
#include "hb_outbox.h"

typedef struct hb_consumer_s hb_consumer_t;

typedef struct hb_consumer_metrics_s {
    hb_metric_t *kafka_errors, *paused, *pauses, *deferred;
    hb_metric_t *expired; /* messages deleted by the broker before they were consumed */
} hb_consumer_metrics_t;

/* Nothing is started yet; topics (borrowed, topics_cnt of them) are
 * subscribed by hb_consumer_start, the queue wakes wake_fd. */
hb_consumer_t *hb_consumer_new(const hb_config_t *cfg, const char *client_id, const char *group,
                               char *const *topics, int topics_cnt, int wake_fd,
                               hb_offsets_t *offsets, hb_outbox_t *outbox,
                               const hb_consumer_metrics_t *m);
/* Called inside the revocation (from the consumer poll, or the close), once
 * the revoked partitions are forgotten (hb_offsets_revoked holds for their
 * unfinished messages): abandons the held work of those partitions and
 * returns how many deliveries it abandoned. */
void hb_consumer_on_revoke(hb_consumer_t *c, size_t (*revoked)(void *opaque), void *opaque);
int hb_consumer_start(hb_consumer_t *c, char *errstr, size_t errstr_size) HB_MUSTCHECK;
int hb_consumer_started(const hb_consumer_t *c);
/* Right after hb_consumer_start: the consumer's broker probe goes on from
 * early's view of the brokers (a probe on another handle, stopped, that
 * stood in until the consumer ran) when it found them down, so /readyz
 * keeps naming the outage, counted from its start (hb_kafka_reach_continue). */
void hb_consumer_brokers_continue(hb_consumer_t *c, const hb_kafka_reach_t *early);
/* Leaves the group after a last store and commit of finished offsets. */
void hb_consumer_close(hb_consumer_t *c);
void hb_consumer_free(hb_consumer_t *c);

/* Takes up to max messages, each only while more(opaque) says so (none while
 * paused), and hands each that is not an error event, nor from a deferred
 * partition, to handle (rkm borrowed). */
void hb_consumer_poll(hb_consumer_t *c, int max, int (*more)(void *opaque),
                      void (*handle)(rd_kafka_message_t *rkm, void *opaque), void *opaque);
/* As hb_consumer_poll, but the messages are held, not handed on: taken now,
 * each with `ticket`, and handed to handle by hb_consumer_handle_held once
 * the caller's `done` has reached it (the dispatcher: once a sync with
 * PostgreSQL asked after they were taken is answered, hb_store_sync), in
 * the order taken. Held messages of partitions revoked meanwhile are
 * dropped, not handed on (their next owner reads them), as are all at
 * hb_consumer_close, and those behind one handled that deferred its
 * partition (hb_consumer_defer: read again from it). Returns how many it
 * took. */
int hb_consumer_take(hb_consumer_t *c, int max, int (*more)(void *opaque), void *opaque,
                     unsigned long long ticket);
int hb_consumer_held(const hb_consumer_t *c);
/* The held messages' payload bytes (they count against max_pending_bytes). */
size_t hb_consumer_held_bytes(const hb_consumer_t *c);
/* When the oldest held message was taken (monotonic ms), 0 when none is. */
int64_t hb_consumer_held_since(const hb_consumer_t *c);
/* Hands the held messages of tickets up to `done` to handle, in order;
 * returns how many it handed on (those of a partition deferred meanwhile
 * are dropped, to be read again, and not counted). */
int hb_consumer_handle_held(hb_consumer_t *c, unsigned long long done,
                            void (*handle)(rd_kafka_message_t *rkm, void *opaque), void *opaque);

/* Pause rkm's partition, rewind it to rkm, resume it at due_ms (wall clock). */
void hb_consumer_defer(hb_consumer_t *c, const rd_kafka_message_t *rkm, int64_t due_ms);
/* Resumes deferred partitions that are due; ms until the next one (at most max_ms). */
long long hb_consumer_resume_due(hb_consumer_t *c, long long max_ms);

/* Stores the committable offsets (auto-commit sends them). */
void hb_consumer_store_offsets(hb_consumer_t *c);
/* Pauses or resumes every assigned partition; why: the last resort's reason
 * (NULL: a shutdown's pause, not reported); in_flight and queued are told in
 * the log line. Deferred partitions stay paused until due. */
void hb_consumer_pause_all(hb_consumer_t *c, int pause, const char *why, size_t in_flight,
                           size_t queued);
/* The last resort: stops taking messages at max_pending unfinished ones, or
 * once unfinished work holds max_bytes of payloads (hb_held_bytes), takes them
 * again when both are at 3/4; a pause that lasts 3 s pauses librdkafka's
 * fetching too (and frees what it fetched ahead). */
void hb_consumer_limit(hb_consumer_t *c, long long max_pending, long long max_bytes,
                       size_t in_flight, size_t queued);
int hb_consumer_paused(const hb_consumer_t *c);
/* Called every loop pass: when no message has been taken for 3 s (the last
 * resort, the database awaited, a full HTTP queue), librdkafka's fetching is
 * paused and its queue served without taking messages, so rebalances and
 * errors are handled and the consumer is not thrown out of its group for
 * exceeding max.poll.interval.ms; then fetching resumes, unless partitions
 * were assigned there (their start under way): the next keep-alive or
 * hb_consumer_poll resumes them. */
void hb_consumer_keepalive(hb_consumer_t *c);

/* Lag metrics every 5 s (measured by the lag thread, started here); a missing topic looked up again
 * every 5 s; the brokers' answer read. */
void hb_consumer_tick(hb_consumer_t *c);
/* Why not ready, in order: a fatal error (the consumer unusable), a missing
 * topic, brokers down; NULL when none. */
const char *hb_consumer_unready(const hb_consumer_t *c);
int hb_consumer_assigned(const hb_consumer_t *c);
/* Times partitions were revoked from this consumer. */
unsigned hb_consumer_revocations(const hb_consumer_t *c);
/* The last resort's reason while consumption is paused, else "". */
const char *hb_consumer_pause_why(const hb_consumer_t *c);

#endif
