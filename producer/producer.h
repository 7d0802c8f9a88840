/*
 * hookbridge-producer's parts: the sender (normalize -> encode -> produce,
 * with delivery reports counted) and the Okta event-hook ingest endpoint;
 * the synthetic event generator is lib/hb_generate.h.
 */
#ifndef HB_PRODUCER_H
#define HB_PRODUCER_H

#include <jansson.h>
#include <stdint.h>

#include "hb_config.h"
#include "hb_generate.h"

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

/* Whether the run stopped because the local queue stayed full for 30 s
 * (the brokers took nothing): hb_producer_send said so and returned
 * HB_PRODUCER_STOPPED, as for a stop. */
int hb_producer_stalled(const hb_producer_t *p);

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

/* The open files the ingest endpoint may need with these settings: its
 * connections (HOOKBRIDGE_INGEST_MAX_CONNECTIONS and the ones answered 503
 * or closing past it) and the rest. main refuses to start below it. */
long long hb_ingest_open_files(const hb_config_t *cfg);

#endif
