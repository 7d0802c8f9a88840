/*
 * hookbridge-producer's parts: the sender (normalize -> encode -> produce,
 * with delivery reports counted), the synthetic event generator and the
 * Okta event-hook ingest endpoint.
 */
#ifndef HB_PRODUCER_H
#define HB_PRODUCER_H

#include <jansson.h>
#include <stdint.h>

#include "hb_config.h"

typedef struct hb_producer_s hb_producer_t;

/* print_only: write each normalized event as a JSON line to stdout instead
 * of producing (no Kafka connection is made). unit names an input in
 * messages: "line" or "event". unreachable_timeout_ms > 0: when no broker
 * gives the events topic at start, how long an event may wait for the
 * brokers' acknowledgement before it fails (librdkafka's message.timeout.ms,
 * unless HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS sets it); brokers that answer at
 * start, or 0, leave librdkafka's default (300 s). */
hb_producer_t *hb_producer_new(const hb_config_t *cfg, int allow_unknown_types, int print_only,
                               const char *unit, long long unreachable_timeout_ms, char *errstr,
                               size_t errstr_size) HB_MUSTCHECK;

/* Switches to the Schema Registry framing with schema id `schema_id`, or,
 * when it is negative, with the id the registry gives the IdentityEvent
 * schema when registered under "<events topic>-value" (blocking). */
int hb_producer_use_registry(hb_producer_t *p, long long schema_id, char *errstr,
                             size_t errstr_size) HB_MUSTCHECK;

/* Normalizes, encodes and queues one event (not consumed). On failure the
 * input counts as failed and "<unit> <seq>: <reason>" goes to stderr.
 * HB_PRODUCER_STOPPED: a stop came while the local queue was full; the
 * event was not queued and is not counted (the caller's input ends before
 * it). */
#define HB_PRODUCER_STOPPED (-2)
int hb_producer_send(hb_producer_t *p, json_t *ev, long long seq);

/* From now on a refusal says "<unit> <seq>: uuid <uuid>: <reason>" for an
 * event that has a uuid (an Okta event found again by it). */
void hb_producer_name_uuids(hb_producer_t *p);

/* Counts an input that never became an event (bad JSON), with its reason. */
void hb_producer_reject(hb_producer_t *p, long long seq, const char *reason);

/* Serves delivery reports, waiting at most timeout_ms. */
void hb_producer_poll(hb_producer_t *p, int timeout_ms);

/* Waits for every delivery report; once stop is requested, for at most
 * drain_ms more, then gives up on what is still queued. */
void hb_producer_finish(hb_producer_t *p, int drain_ms);

/* Of the named events (hb_producer_name_uuids) the brokers did not take,
 * once finished: the earliest published time (NULL: none had one), and in
 * *unnamed whether one had no published time or no report came for one. */
const char *hb_producer_first_lost(const hb_producer_t *p, int *unnamed);

/* Delivered (or printed) and failed inputs, once finished. */
long long hb_producer_delivered(const hb_producer_t *p);
long long hb_producer_failed(const hb_producer_t *p);

void hb_producer_free(hb_producer_t *p);

/* Can an HTTP request carry this header value? Not one with a control
 * character (tab aside) or a blank at either end (RFC 9110 5.5): a secret
 * read from a file with its last newline never arrives as it is. */
int hb_header_value_sendable(const char *v);

/* The Okta System Log window to publish (oktalog.c): --okta-logs ORG_URL
 * --since T --until T [--filter F]. */
typedef struct {
    const char *org_url, *since, *until, *filter;
} hb_oktalog_opts_t;

/* Is the window well asked for (an https org URL, since and until, a
 * token)? -1 with the reason. */
int hb_oktalog_check(const hb_config_t *cfg, const hb_oktalog_opts_t *o, char *errstr,
                     size_t errstr_size) HB_MUSTCHECK;

/* Reads the window page by page and hands every event to p (the sender
 * counts and reports them). 0 when the window was read to its end; -1 when
 * Okta's answers, the network or a stop cut it short (said at error).
 * last_published: the published time of the last event handed to p ("" if
 * none). */
int hb_oktalog_run(hb_producer_t *p, const hb_config_t *cfg, const hb_oktalog_opts_t *o,
                   char *last_published, size_t last_size);

/* Once p is finished: says where a run again starts when some of the
 * window was not published (read_all 0: the run stopped after the event
 * published at last_read; or the brokers did not take some): --since the
 * earliest of them. Says nothing when all of it was. */
void hb_oktalog_resume(const hb_producer_t *p, const hb_oktalog_opts_t *o, int read_all,
                       const char *last_read);

/* The Okta event-hook ingest endpoint (ingest.c): serves on listen until
 * SIGTERM/SIGINT, then drains. Returns the exit status: 0 after a clean
 * stop, 1 when it could not start. */
int hb_ingest_serve(const hb_config_t *cfg, const char *listen);

/* Synthetic identity events: a mix of the catalogue's types with realistic
 * actors, targets, clients and outcomes (a few hundred bytes each). The
 * generator is deterministic for a seed; uuid is left to normalization.
 * The parts that recur (users, apps, groups, places, user agents,
 * outcomes) are made once and shared by the events that have them: treat
 * an event's nested objects as read-only (normalization only touches its
 * top level). */
#define HB_GEN_USERS 500
#define HB_GEN_PLACES 6
#define HB_GEN_AGENTS 4

typedef struct {
    uint64_t state;
    /* made on first use, one reference each; freed by hb_gen_free */
    json_t *users[HB_GEN_USERS][2]; /* [with detailEntry] */
    json_t *admins[3], *apps[6], *groups[6];
    json_t *geo[HB_GEN_PLACES], *security[HB_GEN_PLACES], *agents[HB_GEN_AGENTS];
    json_t *outcomes[4]; /* SUCCESS, then FAILURE with each reason */
    json_t *consts[16];  /* strings and values events share (generate.c's K_*) */
    int64_t published_sec;
    char published[32]; /* hb_format_time of published_sec's second, ms patched */
} hb_gen_t;

void hb_gen_init(hb_gen_t *g, uint64_t seed);
/* A new event (caller json_decref's; it may outlive the generator). */
json_t *hb_gen_event(hb_gen_t *g);
void hb_gen_free(hb_gen_t *g);

#endif
