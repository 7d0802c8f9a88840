/*
 * Configuration: one table of settings, read from defaults, then environment
 * variables (12-factor; an empty variable counts as unset, as in kcat), then
 * command-line flags. The same table produces --help and the configuration
 * reference (`<program> --config-reference`), so the docs cannot drift from the
 * code.
 *
 * Every HOOKBRIDGE_KAFKA_<PROPERTY> variable that is not itself a setting is
 * passed to librdkafka as <property> lowercased with '_' read as '.'; the flag
 * `-X property=value` does the same. librdkafka validates them (hb_kafka).
 *
 * Call from main() before any thread starts; the result is read-only after.
 */
#ifndef HB_CONFIG_H
#define HB_CONFIG_H

#include <stdio.h>

#include "hb_common.h"
#include "hb_retry.h"
#include "hb_seal.h"

/* Which programs read a setting. */
#define HB_PROG_PRODUCER 0x01u
#define HB_PROG_DISPATCHER 0x02u
#define HB_PROG_RETRIER 0x04u
#define HB_PROG_MIGRATE 0x08u
#define HB_PROG_SECRET 0x10u /* hookbridge-secret */
#define HB_PROG_SERVICES (HB_PROG_DISPATCHER | HB_PROG_RETRIER)
#define HB_PROG_KAFKA (HB_PROG_PRODUCER | HB_PROG_SERVICES)
#define HB_PROG_ALL 0xffu

typedef struct hb_config_s {
    char *database_url;    /* secret: never printed */
    char *secret_key;      /* secret: sealing key (hb_seal), validated at load by services */
    char *secret_keys_old; /* secret: old keys, for opening only */
    hb_keyring_t *keyring; /* the services': both of the above, made at load; owned */
    char *kafka_brokers;
    char *events_topic;
    char *dlq_topic;
    char *retry_topic_prefix;
    char *retry_schedule;
    char *retry_hop_tiers;
    hb_schedule_t schedule; /* the services': retry_schedule parsed at load; owned */
    char *consumer_group;
    char *instance_id; /* group.instance.id (static membership); "" = dynamic */
    char *http_listen; /* health, readiness, metrics */
    char *log_level;
    char *source; /* "source" of the Okta envelope */
    int allow_http;
    int allow_private_networks;
    char *allowed_cidrs;     /* private addresses allowed anyway, hb_http_cidrs_parse() */
    char *ca_file;           /* PEM CA bundle replacing the system one; "" = system */
    char *tls_client_cert;   /* mTLS client certificate; "" = none */
    char *tls_client_key;    /* its key (the path; the content is secret); "" = in the cert */
    long long max_in_flight; /* concurrent HTTP requests */
    long long max_host_connections; /* per endpoint host */
    long long max_connections;      /* kept open for reuse, idle ones included */
    long long max_host_queue;       /* requests waiting for one host, then the delay tier */
    long long max_queue_wait_ms;    /* longest wait for a connection, then the delay tier */
    long long request_timeout_ms;   /* default per attempt */
    long long connect_timeout_ms;
    long long connection_max_age_ms; /* a connection is reused only this long after it opened */
    long long verify_timeout_ms;
    long long verify_try_later_ms;    /* a challenge failing retryably: asked again this long */
    long long max_pending_events;     /* consumed but unfinished, then pause */
    long long max_pending_bytes;      /* payload bytes unfinished work holds, then pause */
    long long max_ordered_keys;       /* dispatcher: then its idle keys are forgotten */
    char *memory_limit_file;          /* the cgroup's memory limit, checked at start */
    long long shutdown_timeout_ms;    /* SIGTERM drain bound */
    long long log_flush_ms;           /* delivery log batching */
    long long response_snippet_bytes; /* kept from each response */
    long long max_payload_bytes;      /* larger rendered bodies are dead-lettered */
    long long retry_jitter_percent;   /* each retry delay lengthened by 0..N % */
    long long retry_after_max_ms;     /* bound on an endpoint's Retry-After */
    long long circuit_failures;       /* consecutive failures that open the breaker; 0 off */
    long long circuit_cooldown_ms;    /* how long new deliveries skip an open endpoint */
    long long auto_deactivate_ms;     /* failing this long: deactivated; 0 never */

    /* Topic provisioning (hookbridge-migrate topics, hb_topics). */
    long long topic_partitions;
    long long topic_replication_factor;
    long long events_retention_ms;
    long long dlq_retention_ms;
    long long migrate_lock_timeout_ms; /* hookbridge-migrate up: one attempt's lock wait */
    long long migrate_lock_wait_ms;    /* and how long it keeps trying */

    /* The producer's Okta event-hook ingest endpoint (hookbridge-producer --listen). */
    char *ingest_listen;              /* "" = no endpoint: the CLI */
    char *ingest_auth_header;         /* the header Okta sends the secret in */
    char *ingest_auth_value;          /* secret: never printed */
    char *okta_api_token;             /* secret: never printed (--okta-logs) */
    int ingest_allow_unauthenticated; /* no auth value needed (local use) */
    long long ingest_max_body_bytes;  /* larger requests: 413 */
    long long ingest_timeout_ms;      /* broker ack wait, librdkafka message.timeout.ms */
    long long ingest_max_connections; /* concurrent connections (one thread each) */
    char *ingest_spool_dir;           /* "" = no spool (producer/spool.c) */
    long long ingest_spool_max_bytes; /* spooled bodies at most */
    long long ingest_spool_wait_ms;   /* acks awaited before answering from the spool */

    /* Writer schemas of the events topic beyond the built-in history (hb_decoder). */
    char *writer_schemas_dir;                     /* "" = none */
    char *schema_registry_url;                    /* "" = no Schema Registry framing */
    char *schema_registry_user_info;              /* secret: user:password, never printed */
    char *schema_registry_ca_file;                /* "" = system CAs */
    long long schema_registry_timeout_ms;         /* one request */
    long long schema_registry_not_found_grace_ms; /* a new id's "not found" waits this long */

    /* librdkafka passthrough: props[2*i] = name, props[2*i+1] = value. */
    char **kafka_props;
    size_t kafka_props_cnt;

    /* Positional arguments left after the flags (not owned). */
    char **args;
    int args_cnt;

    unsigned program;
} hb_config_t;

/* Loads defaults, environment and argv for `program` (one HB_PROG_*).
 * Returns 0; 1 when --help or --config-reference was printed (exit 0);
 * -1 on a bad value or unknown flag, with the reason in errstr (which names
 * the variable or flag and never echoes a secret's value). */
int hb_config_load(hb_config_t *cfg, unsigned program, const char *program_name, int argc,
                   char **argv, char *errstr, size_t errstr_size) HB_MUSTCHECK;

void hb_config_free(hb_config_t *cfg);

/* hb_config_load for a command-line tool: after --help's settings it prints
 * usage(stdout); an error goes to stderr as "<name>: error: <reason>".
 * Returns -1 when the tool goes on with cfg loaded, else the status to exit
 * with (0 after --help or --config-reference, bad_status after an error),
 * cfg then freed. */
int hb_config_load_tool(hb_config_t *cfg, unsigned program, const char *program_name, int argc,
                        char **argv, void (*usage)(FILE *fp), int bad_status) HB_MUSTCHECK;

/* Prints the settings of `program` (HB_PROG_ALL: all) as --help text. */
void hb_config_usage(FILE *fp, unsigned program, const char *program_name);

/* Prints the Markdown configuration reference (docs/CONFIGURATION.md). */
void hb_config_reference(FILE *fp);

#endif
