/*
 * Schema Registry client: writer schemas by id, for messages in the
 * Confluent wire format (0x00, a 4-byte big-endian schema id, the Avro body).
 *
 * GET <url>/schemas/ids/<id> answers {"schema": "<Avro schema as JSON text>"}
 * (Confluent's API, also served by Apicurio's and Karapace's compatible
 * endpoints). A registry never changes what an id means, so an answer is kept
 * for the life of the process.
 *
 * The consuming loop must never wait on the registry: hb_registry_lookup only
 * reads the cache and asks a helper thread to fetch what is missing (one
 * request at a time, bounded by timeout_ms). Its answers:
 *   HB_REGISTRY_FOUND        *schema is the text (borrowed: valid until
 *                            hb_registry_free);
 *   HB_REGISTRY_PENDING      a fetch is queued or under way: ask again shortly;
 *   HB_REGISTRY_NOT_YET      the registry answered "schema not found" for an
 *                            id above every id it has given us, by at most
 *                            HB_REGISTRY_NEW_ID_SPAN (or before it gave us
 *                            any), less than new_id_grace_ms
 *                            since it first said so: registries replicate
 *                            asynchronously, so a replica may not have the
 *                            schema a producer registered a moment ago. The
 *                            message waits; asked again HB_REGISTRY_RETRY_MS
 *                            after each answer;
 *   HB_REGISTRY_NOT_FOUND    the registry answered 404 (past that grace, or
 *                            for an id at or below one it has given us, or
 *                            further above, or id 0, which no registry hands
 *                            out), or the
 *                            schema is not Avro, or its answer is larger
 *                            than 4 MiB: a message with this id is poison.
 *                            Asked again after HB_REGISTRY_RECHECK_MS, in
 *                            case it was registered meanwhile;
 *   HB_REGISTRY_UNAVAILABLE  the last fetch failed (no connection, timeout,
 *                            5xx, 401/403, a reply that is not the API's): the
 *                            message waits. Asked again HB_REGISTRY_RETRY_MS
 *                            after the failure.
 * hb_registry_down says whether the last answer was such a failure, and a
 * recent one, and why (for /readyz). The basic-auth credentials are never logged nor put in an
 * error string; URLs in errors lose their user-info part.
 *
 * Threads: lookup, down and free from one thread (the consuming loop); the
 * helper thread owns its curl handle; the cache between them is under a
 * mutex. hb_registry_register is blocking and for command-line tools.
 */
#ifndef HB_REGISTRY_H
#define HB_REGISTRY_H

#include <stdint.h>

#include "hb_common.h"

#define HB_REGISTRY_RETRY_MS 1000
#define HB_REGISTRY_RECHECK_MS 30000
/* Registries number schemas one after the other: an id this far above the
 * highest one given us is not a schema registered a moment ago. */
#define HB_REGISTRY_NEW_ID_SPAN 1000000u

typedef struct hb_registry_s hb_registry_t;

typedef struct {
    const char *url;           /* base URL: http://host:8081, or Apicurio's .../apis/ccompat/v7 */
    const char *user_info;     /* "user:password" for HTTP basic auth; NULL or "": none (secret) */
    const char *ca_file;       /* PEM bundle replacing the system CAs; NULL or "": system */
    long long timeout_ms;      /* one request, connection included */
    long long new_id_grace_ms; /* NOT_YET before NOT_FOUND for a new id; 0: none */
} hb_registry_opts_t;

typedef enum {
    HB_REGISTRY_FOUND,
    HB_REGISTRY_PENDING,
    HB_REGISTRY_NOT_YET,
    HB_REGISTRY_NOT_FOUND,
    HB_REGISTRY_UNAVAILABLE
} hb_registry_status_t;

/* Copies opts and starts the helper thread. */
hb_registry_t *hb_registry_new(const hb_registry_opts_t *opts, char *errstr,
                               size_t errstr_size) HB_MUSTCHECK;
void hb_registry_free(hb_registry_t *r);

/* Never blocks on the network; see above. why gets the reason of NOT_YET,
 * NOT_FOUND and UNAVAILABLE. */
hb_registry_status_t hb_registry_lookup(hb_registry_t *r, uint32_t id, const char **schema,
                                        char *why, size_t why_size);

/* 1 (and why) while the registry's last answer was a failure, else 0. */
int hb_registry_down(hb_registry_t *r, char *why, size_t why_size);

/* The URL without its user-info part ("https://host/x" for
 * "https://user:pw@host/x"), for logs: everything up to the last '@' after
 * the scheme goes, so a password holding an unencoded '/', '?' or '#' is
 * never shown (an '@' in a path costs that part of the path). */
void hb_registry_url_for_log(const char *url, char *out, size_t out_size);

/* Whether curl can use ca_file as the registry's CA bundle (readable, PEM
 * certificates); -1 and why, for a check at start. */
int hb_registry_ca_check(const char *ca_file, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* Blocking: registers schema under subject (POST
 * <url>/subjects/<subject>/versions) and gives its id; registering the same
 * schema again gives the same id. */
int hb_registry_register(const hb_registry_opts_t *opts, const char *subject, const char *schema,
                         uint32_t *id, char *errstr, size_t errstr_size) HB_MUSTCHECK;

#endif
