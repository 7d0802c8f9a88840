/*
 * Kafka plumbing shared by the programs: configuration from hb_config (with
 * the HOOKBRIDGE_KAFKA_* passthrough applied last, so an operator can override
 * anything), librdkafka's log lines routed into our JSON log, a produce
 * call that waits out a full queue instead of failing, and a watch on whether
 * the brokers answer at all (hb_kafka_reach_t).
 */
#ifndef HB_KAFKA_H
#define HB_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>

#include "hb_common.h"
#include "hb_config.h"

/* bootstrap.servers, client.id, logging, every passthrough property, then
 * hb_kafka_conf_fixed.
 * A property librdkafka rejects fails with its own words, naming the
 * variable: "HOOKBRIDGE_KAFKA_SASL_MECHANSIM (sasl.mechansim): No such
 * configuration property". Values are never echoed (they may be passwords). */
rd_kafka_conf_t *hb_kafka_conf_new(const hb_config_t *cfg, const char *client_id, char *errstr,
                                   size_t errstr_size) HB_MUSTCHECK;

/* The properties no passthrough may change, applied after it (hb_kafka_conf_new
 * does; a program applying the passthrough again does too, and
 * hb_kafka_producer_new for every producer): allow.auto.create.topics=false. */
int hb_kafka_conf_fixed(rd_kafka_conf_t *conf, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* rd_kafka_err2str(err), said so that an operator knows what to do where
 * librdkafka's words do not (an invalid timestamp: this host's clock). */
const char *hb_kafka_err_str(rd_kafka_resp_err_t err);

/* The log callback hb_kafka_conf_new sets: librdkafka's lines into ours
 * (any thread). A program with its own callback calls it first. */
void hb_kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf);

/* The last failure of a broker connection that retrying does not cure, as
 * librdkafka logged it (its FAIL lines naming SASL authentication or the SSL
 * handshake: a wrong password, an untrusted certificate), without the thread
 * prefix: copied into buf, returns 1; 0 when there was none since the start.
 * Thread-safe. The line never holds a password: librdkafka names the broker,
 * the mechanism and the server's reason only. */
int hb_kafka_auth_failure(char *buf, size_t size);
/* The same, only when librdkafka logged it within the last max_age_ms. */
int hb_kafka_auth_failure_recent(char *buf, size_t size, int64_t max_age_ms);

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
 * block_ms. msg_opaque comes back in the delivery report. 0, or -1 with
 * errstr; HB_KAFKA_QUEUE_FULL (also < 0) when the queue was still full. */
#define HB_KAFKA_QUEUE_FULL (-2)
/* ... and HB_KAFKA_TOO_LARGE (also < 0) when the message is larger than
 * librdkafka sends (message.max.bytes). */
#define HB_KAFKA_TOO_LARGE (-3)
int hb_kafka_produce(rd_kafka_t *rk, const char *topic, const void *key, size_t key_len,
                     const void *val, size_t val_len, void *msg_opaque, int block_ms, char *errstr,
                     size_t errstr_size) HB_MUSTCHECK;
/* The same with headers: hdrs holds name, value pairs (NUL-terminated
 * strings), then NULL; NULL for none; at most HB_KAFKA_MAX_HEADERS pairs. */
#define HB_KAFKA_MAX_HEADERS 8
int hb_kafka_produce_hdrs(rd_kafka_t *rk, const char *topic, const void *key, size_t key_len,
                          const void *val, size_t val_len, const char *const *hdrs,
                          void *msg_opaque, int block_ms, char *errstr,
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

/* Broker reachability: is anybody in the Kafka cluster answering? A probe
 * thread per handle asks the brokers something every second and publishes
 * when the last answered request was sent; the caller's loop reads that and
 * never waits on the network (design and why in hb_kafka.c). After
 * hb_kafka_reach_start, fields marked "caller" belong to the one thread that
 * calls hb_kafka_reach_down and hb_kafka_reach_check (the thread that polls
 * the handle: the error callback runs in its poll). A zeroed struct is a valid
 * "not started" state. */
typedef struct {
    /* caller */
    int down;            /* not answering (or "all brokers down"): why says so */
    char why[1024];      /* for /readyz: "Kafka brokers not answering for 4 s" */
    int64_t down_ms;     /* hb_mono_ms() when down began */
    int64_t all_down_ms; /* "all brokers down" seen, not yet answered since */
    /* set before start: what an outage means instead of "not ready" (NULL:
     * not ready), for the log lines ("deliveries go to the ingest spool") */
    const char *while_down;
    /* the probe thread and hb_kafka_reach_stop */
    rd_kafka_t *rk; /* set by start, also when the thread could not be made */
    char topic[256];
    int running;
    pthread_t thread;
    pthread_mutex_t lock; /* guards stop; cond wakes the probe's sleep */
    pthread_cond_t cond;
    int stop;
    _Atomic int64_t answered_ms; /* when the last answered request was sent */
} hb_kafka_reach_t;

/* Starts the probe thread on rk, asking about topic (one the handle uses).
 * Call once, from the caller's thread; rk must outlive hb_kafka_reach_stop.
 * On failure (no thread) readiness ignores the brokers: check returns 0. */
int hb_kafka_reach_start(hb_kafka_reach_t *r, rd_kafka_t *rk, const char *topic, char *errstr,
                         size_t errstr_size) HB_MUSTCHECK;

/* Before hb_kafka_reach_start of r: when from (another probe of the same
 * brokers, stopped: one that stood in before r's handle existed) last found
 * them down, r goes on from there: the outage stays named, counted from
 * when it began, with no second warning, instead of r's start counting as
 * an answer (silence from then, said only 4 s later). Else nothing. */
void hb_kafka_reach_continue(hb_kafka_reach_t *r, const hb_kafka_reach_t *from);

/* For the error callback: "all brokers down" (err) marks the brokers down
 * until a request sent after it is answered. Returns 1 when err is that event
 * and the brokers were not already down (the caller logs it), else 0. */
int hb_kafka_reach_down(hb_kafka_reach_t *r, int err);

/* Non-blocking; call every turn of the loop. Updates down and why, logs the
 * change (warn when the brokers stop answering, info when they answer again;
 * the caller logs "all brokers down" itself) and returns down. */
int hb_kafka_reach_check(hb_kafka_reach_t *r);

/* Stops and joins the probe thread (waits at most one request's timeout).
 * Call before rd_kafka_destroy of the handle; harmless when never started. */
void hb_kafka_reach_stop(hb_kafka_reach_t *r);

/* Flushes with a deadline; returns the number of messages left unsent. */
int hb_kafka_flush(rd_kafka_t *rk, int timeout_ms);

/* rd_kafka_destroy(rk), waiting for it at most wait_ms. librdkafka 2.0's
 * destroy of a consumer one of whose topics was deleted while it ran never
 * returns (it waits for a reference to a partition of that topic that is
 * never given back; seen on Apache Kafka 4.1, review 58). Returns 0 once
 * destroyed; -1 when it had not returned by then: it goes on in a thread of
 * its own, so rk and whatever its callbacks use must stay allocated, and
 * hb_kafka_abandoned() is true from then on: end the process with _exit(2)
 * rather than exit(3), whose clean-up would pull things from under that
 * thread. Call from the application's thread, after every other use of rk. */
int hb_kafka_destroy_within(rd_kafka_t *rk, int wait_ms) HB_MUSTCHECK;

/* Whether a hb_kafka_destroy_within did not finish. */
int hb_kafka_abandoned(void);

#endif
