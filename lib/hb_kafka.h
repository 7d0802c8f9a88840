/*
 * Kafka plumbing shared by the programs: configuration from hb_config (with
 * the HOOKBRIDGE_KAFKA_* passthrough applied last, so an operator can override
 * anything), librdkafka's log lines routed into our JSON log, and a produce
 * call that waits out a full queue instead of failing.
 */
#ifndef HB_KAFKA_H
#define HB_KAFKA_H

#include <librdkafka/rdkafka.h>

#include "hb_common.h"
#include "hb_config.h"

/* bootstrap.servers, client.id, logging, then every passthrough property.
 * A property librdkafka rejects fails with its own words, naming the
 * variable: "HOOKBRIDGE_KAFKA_SASL_MECHANSIM (sasl.mechansim): No such
 * configuration property". Values are never echoed (they may be passwords). */
rd_kafka_conf_t *hb_kafka_conf_new(const hb_config_t *cfg, const char *client_id, char *errstr,
                                   size_t errstr_size) HB_MUSTCHECK;

/* Sets one property (before the passthrough is applied). */
int hb_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *errstr,
                      size_t errstr_size) HB_MUSTCHECK;

/* Applies the passthrough; hb_kafka_conf_new calls it last. Programs that set
 * their own properties after hb_kafka_conf_new call it again at the end. */
int hb_kafka_conf_passthrough(rd_kafka_conf_t *conf, const hb_config_t *cfg, char *errstr,
                              size_t errstr_size) HB_MUSTCHECK;

/* Idempotent producer (enable.idempotence=true, acks=all). Takes ownership of
 * conf in every case. dr_cb may be NULL. */
rd_kafka_t *hb_kafka_producer_new(rd_kafka_conf_t *conf,
                                  void (*dr_cb)(rd_kafka_t *, const rd_kafka_message_t *, void *),
                                  char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* rd_kafka_producev with copied key and value; while the local queue is full
 * it serves delivery reports (rd_kafka_poll) and tries again, for at most
 * block_ms. msg_opaque comes back in the delivery report. */
int hb_kafka_produce(rd_kafka_t *rk, const char *topic, const void *key, size_t key_len,
                     const void *val, size_t val_len, void *msg_opaque, int block_ms, char *errstr,
                     size_t errstr_size) HB_MUSTCHECK;

/* Learns topic's partition leaders before the first message is produced:
 * asks the brokers for its metadata and waits up to timeout_ms. Without it,
 * librdkafka 2.0 may learn them only from its once-a-second topic scan (when
 * the bootstrap connection comes up before the first produce call), which
 * held a fresh producer's first second of messages. Returns the topic handle
 * (keep it while producing, then rd_kafka_topic_destroy), or NULL with the
 * reason in errstr; producing works either way, only later. */
rd_kafka_topic_t *hb_kafka_topic_prepare(rd_kafka_t *rk, const char *topic, int timeout_ms,
                                         char *errstr, size_t errstr_size);

/* Broker reachability without librdkafka's statistics (enabling them delayed
 * fetches by hundreds of milliseconds with librdkafka 2.0.2): "all brokers
 * down", from the error callback, marks the brokers down; while they are, a
 * metadata request every 2 s tells when they answer again. Used only from
 * the thread that polls the handle (the callback runs in its poll). */
typedef struct {
    int down;
    int64_t next_probe_ms;
} hb_kafka_reach_t;

/* For the error callback: 1 when err is "all brokers down" and the brokers
 * were not already down, else 0. */
int hb_kafka_reach_down(hb_kafka_reach_t *r, int err);

/* While down and due, asks for rkt's metadata (NULL: the brokers') for up to
 * timeout_ms; returns the number of brokers when they answered (no longer
 * down), else 0. */
int hb_kafka_reach_probe(hb_kafka_reach_t *r, rd_kafka_t *rk, rd_kafka_topic_t *rkt,
                         int timeout_ms);

/* Flushes with a deadline; returns the number of messages left unsent. */
int hb_kafka_flush(rd_kafka_t *rk, int timeout_ms);

#endif
