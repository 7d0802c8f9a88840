/*
 * The settings table and its parser.
 *
 * Each row names a setting once: its environment variable, its flag, its type,
 * where it lands in hb_config_t, its default, its bounds, which programs read
 * it, and its help text. Parsing, --help and the Markdown reference all walk
 * this table. Secret settings are parsed like the others but their values are
 * never printed, not even in an error about them, and are wiped when freed.
 * The services' sealing key (HOOKBRIDGE_SECRET_KEY) is checked here with
 * hb_keyring_new, so a service without a usable key never starts.
 */
#include "hb_config.h"
#include "hb_http.h"
#include "hb_listen.h"
#include "hb_log.h"
#include "hb_pg.h"
#include "hb_seal.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

extern char **environ;

typedef enum { CF_STR, CF_INT, CF_BOOL, CF_MS } cf_type_t;

typedef struct {
    const char *name; /* env var is HOOKBRIDGE_<NAME upper>, flag is --<name with -> */
    cf_type_t type;
    size_t off;
    const char *def;
    long long min, max;
    unsigned programs;
    int flags; /* CF_SECRET, CF_EMPTY_IS_VALUE */
    const char *help;
} cf_row_t;

#define CF_SECRET 1 /* never shown: "(hidden)" in errors, cleansed when freed */
/* An empty environment variable sets the empty value (it is not taken for
 * unset, as for other rows): for a list whose default is not empty. */
#define CF_EMPTY_IS_VALUE 2

#define OFF(f) offsetof(hb_config_t, f)
#define LL_MAX 9223372036854775807LL

static const cf_row_t cf_table[] = {
    {"database_url", CF_STR, OFF(database_url), "", 0, 0,
     HB_PROG_SERVICES | HB_PROG_MIGRATE | HB_PROG_SECRET, 1,
     "PostgreSQL connection string (libpq URI or key=value)."},
    {"secret_key", CF_STR, OFF(secret_key), "", 0, 0, HB_PROG_SERVICES | HB_PROG_SECRET, 1,
     "Required. The key that seals signing secrets and auth header values in the database "
     "(AES-256-GCM; the key itself is never stored there): 32 random bytes as base64, or 64 "
     "hex digits. Generate one with `hookbridge-secret generate-key`; every dispatcher and "
     "retrier needs the same key. To rotate, add the current key to secret_keys_old and set "
     "a new one here: new values are sealed with the new key and the services re-seal older "
     "ones."},
    {"secret_keys_old", CF_STR, OFF(secret_keys_old), "", 0, 0, HB_PROG_SERVICES | HB_PROG_SECRET,
     1,
     "Previous secret keys (same format), separated by commas or spaces, used only to open "
     "values sealed before a rotation. Remove a key once no stored value names its key id "
     "(`hookbridge-secret key-id` prints the ids)."},
    {"kafka_brokers", CF_STR, OFF(kafka_brokers), "localhost:9092", 0, 0,
     HB_PROG_KAFKA | HB_PROG_MIGRATE, 0, "Kafka bootstrap servers, comma-separated host:port."},
    {"events_topic", CF_STR, OFF(events_topic), "identity.events", 0, 0,
     HB_PROG_KAFKA | HB_PROG_MIGRATE, 0, "Topic of IdentityEvent messages."},
    {"dlq_topic", CF_STR, OFF(dlq_topic), "hookbridge.dlq", 0, 0,
     HB_PROG_SERVICES | HB_PROG_PRODUCER | HB_PROG_MIGRATE, 0,
     "Dead-letter topic for poison messages, deliveries out of attempts, and the events the "
     "ingest endpoint refuses (with the values Okta sent). Not the events topic (refused at "
     "start)."},
    {"retry_topic_prefix", CF_STR, OFF(retry_topic_prefix), "hookbridge.retry.", 0, 0,
     HB_PROG_SERVICES | HB_PROG_MIGRATE, 0,
     "Prefix of the delay-tier topics (prefix + delay, e.g. 30s)."},
    {"retry_schedule", CF_STR, OFF(retry_schedule), HB_RETRY_SCHEDULE_DEFAULT, 0, 0,
     HB_PROG_SERVICES | HB_PROG_MIGRATE, 0,
     "Delays before each retry attempt, comma-separated durations; one topic per distinct delay "
     "(retry_topic_prefix + delay). The default spreads 8 attempts over about 28 hours."},
    {"retry_hop_tiers", CF_STR, OFF(retry_hop_tiers), HB_RETRY_HOP_TIERS_DEFAULT, 0, 0,
     HB_PROG_SERVICES | HB_PROG_MIGRATE, CF_EMPTY_IS_VALUE,
     "Extra delay tiers that are no step of the schedule, comma-separated durations (empty: "
     "none, also as an empty environment variable, which for other settings means unset); "
     "each is a topic like a step's. A retry due later than its step allows "
     "(Retry-After, an endpoint's pace) waits in the longest tier not longer than its wait and "
     "is produced again (hops) each time it has waited out that tier's delay: the default "
     "20s,1m makes a wait of up to 5 minutes between the default schedule's 5s and 5m hop at "
     "most 7 times (a Retry-After: 260; mostly 2 to 4) instead of up to 49."},
    {"topic_partitions", CF_INT, OFF(topic_partitions), "12", 1, 10000, HB_PROG_MIGRATE, 0,
     "Partitions of each topic `hookbridge-migrate topics` creates (events, delay tiers, "
     "dead letters). The events topic's partitions bound how many dispatchers share the "
     "work."},
    {"topic_replication_factor", CF_INT, OFF(topic_replication_factor), "3", 1, 32, HB_PROG_MIGRATE,
     0,
     "Replication factor of the topics `hookbridge-migrate topics` creates; with 3 or more "
     "they also get min.insync.replicas=2. Use 1 only on a one-broker development cluster."},
    {"events_retention", CF_MS, OFF(events_retention_ms), "7d", 3600000, 3650LL * 86400000,
     HB_PROG_MIGRATE, 0,
     "retention.ms of the events topic when `hookbridge-migrate topics` creates it. Delay "
     "tiers keep max(7 days, 10 x their delay)."},
    {"dlq_retention", CF_MS, OFF(dlq_retention_ms), "30d", 3600000, 3650LL * 86400000,
     HB_PROG_MIGRATE, 0,
     "retention.ms of the dead-letter topic when `hookbridge-migrate topics` creates it."},
    {"migrate_lock_timeout", CF_MS, OFF(migrate_lock_timeout_ms), "2s", 100, 600000,
     HB_PROG_MIGRATE, 0,
     "How long one attempt of `hookbridge-migrate up` waits for a lock (PostgreSQL's "
     "lock_timeout). Every write of the services to that table queues behind a waiting "
     "`up`, so a long query holding the table (a report) stalls them; at this bound `up` "
     "rolls back, names the sessions holding hookbridge's tables, and tries again (so it does "
     "when caught in a deadlock)."},
    {"migrate_lock_wait", CF_MS, OFF(migrate_lock_wait_ms), "10m", 1000, 7LL * 86400000,
     HB_PROG_MIGRATE, 0,
     "How long `hookbridge-migrate up` keeps trying for its locks before it gives up "
     "(exit 1, nothing of that step applied)."},
    {"consumer_group", CF_STR, OFF(consumer_group), "", 0, 0, HB_PROG_SERVICES, 0,
     "Kafka consumer group (default: hookbridge-dispatcher / hookbridge-retrier)."},
    {"instance_id", CF_STR, OFF(instance_id), "", 0, 0, HB_PROG_SERVICES, 0,
     "Static consumer-group membership (Kafka's group.instance.id): a name unique to this "
     "replica within its group and stable across its restarts, e.g. the pod name "
     "(docs/operations.md, Failover). A replica restarted with the same id takes its "
     "partitions back at once, without a rebalance; one stopped for good (SIGTERM "
     "included) keeps them until the session timeout expires. Empty: dynamic membership."},
    {"http_listen", CF_STR, OFF(http_listen), "0.0.0.0:8080", 0, 0,
     HB_PROG_SERVICES | HB_PROG_PRODUCER, 0,
     "Address of /healthz, /readyz and /metrics (host:port; port 0 picks one). The producer "
     "serves them only as the ingest endpoint (ingest_listen)."},
    {"log_level", CF_STR, OFF(log_level), "info", 0, 0, HB_PROG_ALL, 0,
     "debug, info, warn or error."},
    {"source", CF_STR, OFF(source), "urn:hookbridge", 0, 0, HB_PROG_SERVICES, 0,
     "Value of \"source\" in Okta and CloudEvents envelopes."},
    {"allow_http", CF_BOOL, OFF(allow_http), "0", 0, 1, HB_PROG_SERVICES, 0,
     "Allow plain http:// endpoint URLs (default: https only)."},
    {"allow_private_networks", CF_BOOL, OFF(allow_private_networks), "0", 0, 1, HB_PROG_SERVICES, 0,
     "Allow endpoints on loopback, private and link-local addresses (checked after DNS)."},
    {"allowed_cidrs", CF_STR, OFF(allowed_cidrs), "", 0, 0, HB_PROG_SERVICES, 0,
     "Comma-separated IPv4/IPv6 CIDRs (e.g. 10.20.0.0/16,fd00::/8) whose addresses are allowed "
     "although private, loopback or link-local; checked on the address connected to."},
    {"ca_file", CF_STR, OFF(ca_file), "", 0, 0, HB_PROG_SERVICES, 0,
     "PEM bundle of CA certificates trusted for HTTPS endpoints, replacing the system CAs "
     "(default: the system CAs)."},
    {"tls_client_cert", CF_STR, OFF(tls_client_cert), "", 0, 0, HB_PROG_SERVICES, 0,
     "PEM client certificate (chain) presented to endpoints that ask for one (mTLS)."},
    {"tls_client_key", CF_STR, OFF(tls_client_key), "", 0, 0, HB_PROG_SERVICES, 0,
     "PEM private key of the client certificate, unencrypted (default: read from "
     "tls_client_cert). Only its path is ever printed."},
    {"max_in_flight", CF_INT, OFF(max_in_flight), "512", 1, 100000, HB_PROG_SERVICES, 0,
     "Concurrent HTTP requests across all endpoints. The last quarter of them is kept for "
     "endpoint hosts that answer: a host with a request running takes one only if one of its "
     "requests was answered (any HTTP status: a timeout is no answer) within the last "
     "second, so hung hosts cannot take every slot."},
    {"max_host_connections", CF_INT, OFF(max_host_connections), "16", 1, 10000, HB_PROG_SERVICES, 0,
     "Concurrent connections to one endpoint host, each carrying one request at a time "
     "(HTTP/2 too)."},
    {"max_connections", CF_INT, OFF(max_connections), "1024", 1, 1000000, HB_PROG_SERVICES, 0,
     "Connections to endpoints kept open for reuse, busy and idle together (never fewer than "
     "max_in_flight); beyond it the least recently used idle one is closed. An open HTTPS "
     "connection holds about 90 KiB; endpoint hosts in steady use beyond it cost a new "
     "connection (a resumed TLS handshake) per delivery."},
    {"max_host_queue", CF_INT, OFF(max_host_queue), "1000", 1, 1000000, HB_PROG_SERVICES, 0,
     "Requests that may wait for a connection to one endpoint host; a delivery beyond it is "
     "not held in memory but handed to the first delay tier at once (not counted as an "
     "attempt)."},
    {"max_queue_wait", CF_MS, OFF(max_queue_wait_ms), "5s", 100, 600000, HB_PROG_SERVICES, 0,
     "Longest a request waits for a connection to its endpoint host; then it is handed to the "
     "delay tier (not counted as an attempt), and that host counts as slow for as long again: "
     "while its connections are busy, its new deliveries go to the delay tier at once."},
    {"request_timeout", CF_MS, OFF(request_timeout_ms), "10s", 100, 300000, HB_PROG_SERVICES, 0,
     "Total time one delivery attempt may take (per-subscription timeout_ms overrides)."},
    {"connect_timeout", CF_MS, OFF(connect_timeout_ms), "5s", 100, 60000, HB_PROG_SERVICES, 0,
     "Time to establish a connection to an endpoint."},
    {"connection_max_age", CF_MS, OFF(connection_max_age_ms), "5m", 1000, 86400000,
     HB_PROG_SERVICES, 0,
     "How long after it was opened a connection to an endpoint is still reused (rounded up "
     "to whole seconds; a request under way is never cut), and a name's lookup kept (at most "
     "60 s): an endpoint whose name moves to other addresses (blue/green by DNS, a load "
     "balancer's addresses rotating) gets its deliveries at the new ones within twice this "
     "(at most this plus 60 s), even while a stream of deliveries keeps its connections busy."},
    {"verify_timeout", CF_MS, OFF(verify_timeout_ms), "5s", 100, 60000, HB_PROG_DISPATCHER, 0,
     "Time an endpoint has to answer the verification challenge."},
    {"verify_try_later_for", CF_MS, OFF(verify_try_later_ms), "10m", 0, 86400000,
     HB_PROG_DISPATCHER, 0,
     "How long an active subscription's verification challenge that fails as a delivery "
     "would be retried (a timeout, a connection or TLS error, 408, 429, 5xx) is asked again, "
     "about every 20 s, before it is recorded as the failure that deactivates it (0: at once)."},
    {"max_pending_events", CF_INT, OFF(max_pending_events), "10000", 1, 10000000, HB_PROG_SERVICES,
     0, "Consumed messages whose deliveries are unfinished before consumption pauses."},
    {"max_pending_bytes", CF_INT, OFF(max_pending_bytes), "67108864", 1048576, 1099511627776LL,
     HB_PROG_SERVICES, 0,
     "Bytes of payloads unfinished deliveries hold in memory (each rendered body, also while it "
     "waits for or is in an HTTP request, a retry or dead letter until the broker has it, a "
     "row until the delivery log has it, an event waiting in a batch, whose batch then goes at "
     "once, the events a batch of several keeps beside its body until it is sent, and the "
     "dispatcher's events taken from Kafka that wait for its sync with the database, as their "
     "messages' size) before consumption pauses, as with max_pending_events; an event matching "
     "many subscriptions renders its deliveries as they fit, the rest waiting for the ones held "
     "to finish: what bounds memory when payloads are large or one event matches many "
     "subscriptions. The requests waiting for an endpoint "
     "host that is not keeping up (none finishing for a second, or a queue longer than a second "
     "at its pace) hold at most a quarter of it (the newest beyond go to the delay tier, as with "
     "max_host_queue), so one hung host cannot pause every endpoint."},
    {"max_ordered_keys", CF_INT, OFF(max_ordered_keys), "100000", 100, 100000000,
     HB_PROG_DISPATCHER, 0,
     "Keys of ordered subscriptions (options.ordering) whose end the dispatcher keeps in "
     "memory, about 900 bytes each. A key is kept a minute after its last event, five when "
     "its last delivery waits in a delay tier; at this many the idle ones are forgotten at "
     "once (a key seen again asks the delivery log for its end first, one query). What "
     "bounds memory when events of many users reach an ordered subscription whose endpoint "
     "is down."},
    {"memory_limit_file", CF_STR, OFF(memory_limit_file), "/sys/fs/cgroup/memory.max", 0, 0,
     HB_PROG_SERVICES, 0,
     "The container's memory limit, read once at start: cgroup v2's memory.max (\"max\": none; "
     "when the default file is absent, cgroup v1's memory/memory.limit_in_bytes). A "
     "max_pending_bytes not below the limit is refused (the pod would be OOM-killed before the "
     "budget could pause consumption); one that leaves less than the service needs besides "
     "(docs/operations.md, Scaling) is warned about. Empty: no check."},
    {"shutdown_timeout", CF_MS, OFF(shutdown_timeout_ms), "20s", 0, 600000, HB_PROG_SERVICES, 0,
     "On SIGTERM, how long in-flight deliveries may finish before they are abandoned "
     "(their events are redelivered after restart)."},
    {"log_flush_interval", CF_MS, OFF(log_flush_ms), "200ms", 10, 60000, HB_PROG_SERVICES, 0,
     "How often attempts are written to the delivery log."},
    {"response_snippet_bytes", CF_INT, OFF(response_snippet_bytes), "512", 0, 65536,
     HB_PROG_SERVICES, 0, "Bytes of each response body kept in the delivery log."},
    {"max_payload_bytes", CF_INT, OFF(max_payload_bytes), "524288", 1024, 900000,
     HB_PROG_DISPATCHER, 0,
     "Largest request body: a rendered payload of one event over it is not sent but "
     "dead-lettered with the reason; a batch over it is sent in smaller batches that fit. Kept "
     "under Kafka's default message size, so every "
     "delivery fits on the delay and dead-letter topics."},
    {"retry_jitter", CF_INT, OFF(retry_jitter_percent), "20", 0, 100, HB_PROG_SERVICES, 0,
     "Each retry delay is lengthened by a random 0..N percent (never shortened), so an "
     "endpoint coming back from an outage is not hit by every retry at once."},
    {"retry_after_max", CF_MS, OFF(retry_after_max_ms), "1h", 0, 86400000, HB_PROG_SERVICES, 0,
     "Longest Retry-After (on a retryable answer: 408, 429, 5xx) that is honoured."},
    {"circuit_failures", CF_INT, OFF(circuit_failures), "20", 0, 1000000, HB_PROG_SERVICES, 0,
     "Consecutive failed attempts to one endpoint host (scheme://host:port) after which its "
     "circuit opens for a cool-down: requests waiting for it are taken out of the queue, and "
     "its deliveries are not attempted (the dispatcher's go to the first delay tier; the "
     "retrier counts each as a failed attempt) (0: never). Failed: no complete answer "
     "(connection error, timeout) or a 5xx; any other answer (a 404, a 429) shows the host up "
     "and resets the count, and so does a cool-down (HOOKBRIDGE_CIRCUIT_COOLDOWN) without a "
     "failure: failures further apart do not add up."},
    {"circuit_cooldown", CF_MS, OFF(circuit_cooldown_ms), "1m", 1000, 86400000, HB_PROG_SERVICES, 0,
     "How long an open circuit skips an endpoint before one attempt probes it again."},
    {"auto_deactivate_after", CF_MS, OFF(auto_deactivate_ms), "5d", 0, 365LL * 86400000,
     HB_PROG_RETRIER, 0,
     "An endpoint that has failed every attempt for this long is deactivated, with the "
     "reason recorded (0: never)."},
    {"ingest_listen", CF_STR, OFF(ingest_listen), "", 0, 0, HB_PROG_PRODUCER, 0,
     "host:port of the Okta event-hook ingest endpoint (also `--listen`). When set, the "
     "producer runs as a service that accepts Okta's deliveries on /okta/events instead of "
     "reading input (docs/ingest.md)."},
    {"ingest_auth_header", CF_STR, OFF(ingest_auth_header), "Authorization", 0, 0, HB_PROG_PRODUCER,
     0, "Header that carries the ingest secret (Okta's event hook \"Authentication field\")."},
    {"ingest_auth_value", CF_STR, OFF(ingest_auth_value), "", 0, 0, HB_PROG_PRODUCER, 1,
     "Required with ingest_listen. The exact value of ingest_auth_header every request must "
     "carry (Okta's \"Authentication secret\"); others get 401."},
    {"okta_api_token", CF_STR, OFF(okta_api_token), "", 0, 0, HB_PROG_PRODUCER, 1,
     "Okta API token (or \"Bearer <OAuth access token>\") that `--okta-logs` reads the System "
     "Log with: an admin's with read access to it (docs/ingest.md). Never printed."},
    {"ingest_allow_unauthenticated", CF_BOOL, OFF(ingest_allow_unauthenticated), "0", 0, 1,
     HB_PROG_PRODUCER, 0,
     "Run the ingest endpoint without ingest_auth_value: anyone who reaches it can publish "
     "events. For local use only."},
    {"ingest_max_body_bytes", CF_INT, OFF(ingest_max_body_bytes), "4194304", 1024, 67108864,
     HB_PROG_PRODUCER, 0,
     "Largest ingest request body; a larger one is refused with 413 (announced by "
     "Content-Length: without reading it)."},
    {"ingest_timeout", CF_MS, OFF(ingest_timeout_ms), "10s", 100, 300000, HB_PROG_PRODUCER, 0,
     "How long an ingest request waits for the brokers to acknowledge its events (librdkafka "
     "message.timeout.ms); then it is answered 503 with Retry-After."},
    {"ingest_max_connections", CF_INT, OFF(ingest_max_connections), "64", 1, 10000,
     HB_PROG_PRODUCER, 0,
     "Concurrent connections to the ingest endpoint (one thread each). A new connection "
     "beyond them has the one that waited longest for a request closed to make room; when "
     "none waits, its request is answered 503 with Retry-After at once, unread (past 80 more "
     "connections, those and the ones closing, a connection is closed unanswered)."},
    {"ingest_spool_dir", CF_STR, OFF(ingest_spool_dir), "", 0, 0, HB_PROG_PRODUCER, 0,
     "Directory of the ingest endpoint's spool (created if missing; one process's only: it "
     "holds DIR/.lock). A delivery the brokers have not acknowledged within ingest_spool_wait "
     "is written there (fsync'd), answered 200 from the spool and published when they are "
     "back, also after a restart with the same directory (docs/ingest.md). Empty: no spool, a "
     "delivery waits for the brokers and is "
     "answered 503 after ingest_timeout."},
    {"ingest_spool_max_bytes", CF_INT, OFF(ingest_spool_max_bytes), "1073741824", 1024, 1LL << 50,
     HB_PROG_PRODUCER, 0,
     "Bytes of spooled deliveries at most. A delivery that does not fit is answered as without "
     "a spool; while it is full and the brokers are away, the endpoint is not ready."},
    {"ingest_spool_wait", CF_MS, OFF(ingest_spool_wait_ms), "1s", 0, 60000, HB_PROG_PRODUCER, 0,
     "How long a delivery waits for the brokers' acknowledgements before it is written to "
     "the spool and answered 200 from there (Okta waits 3 s for an answer)."},
    {"writer_schemas_dir", CF_STR, OFF(writer_schemas_dir), "", 0, 0, HB_PROG_DISPATCHER, 0,
     "Directory of extra writer schemas of the events topic (*.avsc, read at start): versions "
     "producers write that this build does not carry in schema/history. Each must resolve into "
     "the reader schema, or the dispatcher does not start (docs/schemas.md)."},
    {"schema_registry_url", CF_STR, OFF(schema_registry_url), "", 0, 0,
     HB_PROG_DISPATCHER | HB_PROG_PRODUCER, 0,
     "Schema Registry base URL (Confluent API; Apicurio: .../apis/ccompat/v7). Events framed "
     "0x00 + schema id are decoded with the writer schema fetched from GET /schemas/ids/<id> "
     "(cached); while it cannot be reached such events wait and the dispatcher is not ready."},
    {"schema_registry_user_info", CF_STR, OFF(schema_registry_user_info), "", 0, 0,
     HB_PROG_DISPATCHER | HB_PROG_PRODUCER, 1,
     "user:password for the Schema Registry's HTTP basic auth."},
    {"schema_registry_ca_file", CF_STR, OFF(schema_registry_ca_file), "", 0, 0,
     HB_PROG_DISPATCHER | HB_PROG_PRODUCER, 0,
     "PEM bundle that replaces the system CAs for the Schema Registry's TLS."},
    {"schema_registry_timeout", CF_MS, OFF(schema_registry_timeout_ms), "5s", 100, 60000,
     HB_PROG_DISPATCHER | HB_PROG_PRODUCER, 0,
     "Bound on one Schema Registry request (made off the consuming loop)."},
    {"schema_registry_not_found_grace", CF_MS, OFF(schema_registry_not_found_grace_ms), "15s", 0,
     600000, HB_PROG_DISPATCHER, 0,
     "How long the registry's \"schema not found\" for an id above every id it has served (by "
     "at most 1,000,000) is not believed: registries replicate asynchronously, so a replica may "
     "lack a schema registered a moment ago. Meanwhile that id's events wait (their partition "
     "pauses); then they are dead-lettered. 0: dead-letter at the first \"not found\" "
     "(docs/schemas.md)."},
};

static void env_name(const cf_row_t *r, char *out, size_t outsz) {
    size_t n = (size_t)snprintf(out, outsz, "HOOKBRIDGE_");
    for (const char *p = r->name; *p && n + 1 < outsz; p++)
        out[n++] = (char)toupper((unsigned char)*p);
    out[n] = '\0';
}

static void flag_name(const cf_row_t *r, char *out, size_t outsz) {
    size_t n = (size_t)snprintf(out, outsz, "--");
    for (const char *p = r->name; *p && n + 1 < outsz; p++)
        out[n++] = *p == '_' ? '-' : *p;
    out[n] = '\0';
}

static int parse_bool(const char *s, int *out) {
    if (!strcmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on"))
        *out = 1;
    else if (!strcmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no") ||
             !strcasecmp(s, "off"))
        *out = 0;
    else
        return -1;
    return 0;
}

/* Sets one row from text; `origin` names the variable or flag in errors. */
static int cf_set(hb_config_t *cfg, const cf_row_t *r, const char *val, const char *origin,
                  char *errstr, size_t errstr_size) {
    void *dst = (char *)cfg + r->off;
    long long ll = 0;
    char *end;
    const char *shown = r->flags & CF_SECRET ? "(hidden)" : val;

    switch (r->type) {
    case CF_STR: {
        size_t len = strlen(val);
        if ((r->flags & CF_SECRET) && *(char **)dst)
            OPENSSL_cleanse(*(char **)dst, strlen(*(char **)dst));
        free(*(char **)dst);
        /* The database URL usually comes from a Kubernetes Secret, often
         * made from a file (`--from-file`, docs/operations.md) whose editor
         * ended it with a newline: never part of a connection string, it
         * made libpq read a database "name\n" or an sslmode "require\n"
         * and retry for ever. The Schema Registry's user info loses its
         * line ends (not its spaces: a password may end in one): a line
         * end is never part of a Basic credential, and with it every fetch
         * was refused (401) and the events waited for ever. (The keys'
         * parser skips blanks itself; an
         * ingest auth value with a line break is refused by the producer,
         * which cannot know which part Okta sends.) */
        while (r->off == OFF(database_url) && len > 0 && strchr(" \t\r\n", val[len - 1]))
            len--;
        while (r->off == OFF(schema_registry_user_info) && len > 0 && strchr("\r\n", val[len - 1]))
            len--;
        *(char **)dst = hb_strndup(val, len);
        return 0;
    }
    case CF_BOOL:
        if (parse_bool(val, (int *)dst) == 0)
            return 0;
        hb_seterr(errstr, errstr_size, "%s: \"%s\" is not a boolean (use 1/0, true/false)", origin,
                  shown);
        return -1;
    case CF_INT: {
        /* Decimal digits, a minus at most: strtoll alone also takes blanks
         * before, a plus, and says nothing but ERANGE of a number too large */
        size_t digits = strspn(val + (val[0] == '-'), "0123456789");
        if (digits == 0 || val[(val[0] == '-') + digits]) {
            hb_seterr(errstr, errstr_size,
                      "%s: \"%s\" is not an integer (decimal digits only: no sign but -, "
                      "blank, exponent or 0x)",
                      origin, shown);
            return -1;
        }
        errno = 0;
        ll = strtoll(val, &end, 10);
        if (errno == ERANGE) {
            hb_seterr(errstr, errstr_size, "%s: %s is out of range [%lld, %lld]", origin, shown,
                      r->min, r->max);
            return -1;
        }
        break;
    }
    case CF_MS:
        if (hb_duration_parse_ms(val, &ll) < 0) {
            hb_seterr(errstr, errstr_size, "%s: \"%s\" is not a duration (e.g. 250ms, 5s, 2m, 1h)",
                      origin, shown);
            return -1;
        }
        break;
    }
    if (ll < r->min || ll > r->max) {
        hb_seterr(errstr, errstr_size, "%s: %lld is out of range [%lld, %lld]%s", origin, ll,
                  r->min, r->max, r->type == CF_MS ? " milliseconds" : "");
        return -1;
    }
    *(long long *)dst = ll;
    return 0;
}

static const cf_row_t *cf_find_flag(const char *flag, size_t len) {
    char name[64];
    for (size_t i = 0; i < HB_ARRAY_SIZE(cf_table); i++) {
        flag_name(&cf_table[i], name, sizeof(name));
        if (strlen(name) == len && !strncmp(name, flag, len))
            return &cf_table[i];
    }
    return NULL;
}

/* Is r's flag on the command line? Then its variable is not read at all: the
 * flag wins, even over a variable whose value would be refused. */
static int cf_flag_given(const cf_row_t *r, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *eq;
        if (!strcmp(a, "--"))
            break;
        if (!strcmp(a, "-X")) {
            i++;
            continue;
        }
        if (strncmp(a, "--", 2) || !a[2])
            continue;
        eq = strchr(a, '=');
        if (cf_find_flag(a, eq ? (size_t)(eq - a) : strlen(a)) == r)
            return 1;
    }
    return 0;
}

static int cf_is_setting_env(const char *var, size_t len) {
    char name[64];
    for (size_t i = 0; i < HB_ARRAY_SIZE(cf_table); i++) {
        env_name(&cf_table[i], name, sizeof(name));
        if (strlen(name) == len && !strncmp(name, var, len))
            return 1;
    }
    return 0;
}

static void kafka_prop_add(hb_config_t *cfg, const char *name, size_t name_len, const char *val) {
    cfg->kafka_props =
        hb_realloc(cfg->kafka_props, (cfg->kafka_props_cnt + 1) * 2 * sizeof(char *));
    cfg->kafka_props[cfg->kafka_props_cnt * 2] = hb_strndup(name, name_len);
    cfg->kafka_props[cfg->kafka_props_cnt * 2 + 1] = hb_strdup(val);
    cfg->kafka_props_cnt++;
}

/* HOOKBRIDGE_KAFKA_SASL_MECHANISM=PLAIN -> sasl.mechanism=PLAIN */
static void load_kafka_env(hb_config_t *cfg) {
    static const char pfx[] = "HOOKBRIDGE_KAFKA_";
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        char prop[256];
        size_t n = 0;
        if (!eq || strncmp(*e, pfx, sizeof(pfx) - 1) || !eq[1])
            continue;
        if (cf_is_setting_env(*e, (size_t)(eq - *e)))
            continue;
        for (const char *p = *e + sizeof(pfx) - 1; p < eq && n + 1 < sizeof(prop); p++)
            prop[n++] = *p == '_' ? '.' : (char)tolower((unsigned char)*p);
        if (n == 0)
            continue;
        kafka_prop_add(cfg, prop, n, eq + 1);
    }
}

/* Kafka's rule for a topic name: 1..249 of [a-zA-Z0-9._-], not "." or "..".
 * A prefix (of the delay tiers) leaves room for the longest delay ("1500ms"). */
static int topic_name_ok(const char *name, int prefix, char *why, size_t whysz) {
    size_t len = strlen(name), max = prefix ? 249 - 8 : 249;
    size_t bad = strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-");
    if (bad < len) {
        unsigned char c = (unsigned char)name[bad];
        if (c == ' ')
            snprintf(why, whysz, "a space at character %zu", bad + 1);
        else if (c >= 0x21 && c < 0x7f)
            snprintf(why, whysz, "'%c' at character %zu", c, bad + 1);
        else
            snprintf(why, whysz, "byte 0x%02x at character %zu", c, bad + 1);
        return 0;
    }
    if (len > max) {
        snprintf(why, whysz, "%zu characters, at most %zu", len, max);
        return 0;
    }
    if (!prefix && (!*name || !strcmp(name, ".") || !strcmp(name, ".."))) {
        snprintf(why, whysz, *name ? "not a name" : "empty");
        return 0;
    }
    return 1;
}

/* HOOKBRIDGE_KAFKA_BROKERS as librdkafka reads it: [proto://]host[:port],
 * comma-separated. librdkafka takes a port it cannot read as 0 and one over
 * 65535 modulo 65536 (kafka:99999 connected to port 34463), and a list
 * with no host in it as no broker at all, then tries for ever: each a
 * configuration mistake, not an outage. */
static int brokers_ok(const char *list, const char *protocol, char *why, size_t whysz) {
    size_t hosts = 0;
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ","), hlen;
        const char *e = p + len, *h = p, *colon = NULL, *port = NULL;
        while (h < e && (*h == ' ' || *h == '\t'))
            h++;
        while (e > h && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (h < e) {
            const char *sep = memchr(h, ':', (size_t)(e - h));
            if (sep && e - sep > 2 && sep[1] == '/' && sep[2] == '/') {
                /* PLAINTEXT://, SSL://, ...: librdkafka drops an entry
                 * whose protocol is not security.protocol's */
                if ((size_t)(sep - h) != strlen(protocol) ||
                    strncasecmp(h, protocol, (size_t)(sep - h))) {
                    snprintf(why, whysz,
                             "\"%.*s\" names protocol %.*s, but security.protocol is %s "
                             "(HOOKBRIDGE_KAFKA_SECURITY_PROTOCOL)",
                             (int)(e - h), h, (int)(sep - h), h, protocol);
                    return 0;
                }
                h = sep + 3;
            }
            hlen = (size_t)(e - h);
            if (*h == '[') {
                const char *close = memchr(h, ']', hlen);
                if (!close || close == h + 1 || (close + 1 < e && close[1] != ':')) {
                    snprintf(why, whysz, "\"%.*s\" is not [IPv6 address]:port", (int)hlen, h);
                    return 0;
                }
                port = close + 1 < e ? close + 2 : NULL;
                colon = close + 1 < e ? close + 1 : NULL;
            } else {
                colon = memchr(h, ':', hlen);
                if (colon && memchr(colon + 1, ':', (size_t)(e - colon - 1)))
                    colon = NULL; /* a bare IPv6 address: librdkafka's to read */
                port = colon ? colon + 1 : NULL;
                if (colon == h) {
                    snprintf(why, whysz, "\"%.*s\" has no host", (int)hlen, h);
                    return 0;
                }
            }
            if (port) {
                long v = 0;
                const char *q = port;
                for (; q < e && *q >= '0' && *q <= '9' && v <= 65535; q++)
                    v = v * 10 + (*q - '0');
                if (q == port || q < e || v < 1 || v > 65535) {
                    snprintf(why, whysz, "\"%.*s\" has no valid port (1 to 65535)", (int)hlen, h);
                    return 0;
                }
            }
            hosts++;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    if (!hosts) {
        snprintf(why, whysz, "no broker in it (write host:port, comma-separated)");
        return 0;
    }
    return 1;
}

static int config_load(hb_config_t *cfg, unsigned program, const char *program_name, int argc,
                       char **argv, char *errstr, size_t errstr_size);

/* An error about a value quotes it, and a value from a file (a ConfigMap
 * made --from-file, a YAML block scalar) often ends in a line end: the
 * "one line naming the variable" came out as two, the second a stray
 * quote. Control characters are written escaped (\n, \r, \t, \xHH). */
static void error_one_line(char *errstr, size_t errstr_size) {
    char out[1024];
    size_t n = 0;
    for (const unsigned char *c = (const unsigned char *)errstr; *c && n + 5 < sizeof(out); c++) {
        if (*c >= 0x20 && *c != 0x7f) {
            out[n++] = (char)*c;
            continue;
        }
        out[n++] = '\\';
        if (*c == '\n' || *c == '\r' || *c == '\t') {
            out[n++] = *c == '\n' ? 'n' : *c == '\r' ? 'r' : 't';
        } else {
            snprintf(out + n, sizeof(out) - n, "x%02x", *c);
            n += 3;
        }
    }
    out[n] = '\0';
    snprintf(errstr, errstr_size, "%s", out);
}

int hb_config_load(hb_config_t *cfg, unsigned program, const char *program_name, int argc,
                   char **argv, char *errstr, size_t errstr_size) {
    int rc = config_load(cfg, program, program_name, argc, argv, errstr, errstr_size);
    if (rc < 0 && errstr && errstr_size)
        error_one_line(errstr, errstr_size);
    return rc;
}

static int config_load(hb_config_t *cfg, unsigned program, const char *program_name, int argc,
                       char **argv, char *errstr, size_t errstr_size) {
    char name[64];
    memset(cfg, 0, sizeof(*cfg));
    cfg->program = program;
    cfg->args = hb_calloc((size_t)argc + 1, sizeof(char *));

    for (size_t i = 0; i < HB_ARRAY_SIZE(cf_table); i++) {
        const cf_row_t *r = &cf_table[i];
        const char *v;
        if (cf_set(cfg, r, r->def, "default", errstr, errstr_size) < 0)
            return -1;
        if (!(r->programs & program))
            continue;
        env_name(r, name, sizeof(name));
        v = getenv(name);
        if (v && (*v || (r->flags & CF_EMPTY_IS_VALUE)) && !cf_flag_given(r, argc, argv) &&
            cf_set(cfg, r, v, name, errstr, errstr_size) < 0)
            return -1;
    }
    load_kafka_env(cfg);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val, *eq;
        const cf_row_t *r;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            hb_config_usage(stdout, program, program_name);
            return 1;
        }
        if (!strcmp(a, "--config-reference")) {
            hb_config_reference(stdout);
            return 1;
        }
        if (!strcmp(a, "-X")) {
            if (i + 1 >= argc || !(eq = strchr(argv[i + 1], '=')) || eq == argv[i + 1]) {
                hb_seterr(errstr, errstr_size, "-X wants property=value");
                return -1;
            }
            kafka_prop_add(cfg, argv[i + 1], (size_t)(eq - argv[i + 1]), eq + 1);
            i++;
            continue;
        }
        if (!strcmp(a, "--")) {
            while (++i < argc)
                cfg->args[cfg->args_cnt++] = argv[i];
            break;
        }
        if (strncmp(a, "--", 2) || !a[2]) {
            cfg->args[cfg->args_cnt++] = argv[i];
            continue;
        }
        eq = strchr(a, '=');
        r = cf_find_flag(a, eq ? (size_t)(eq - a) : strlen(a));
        if (!r || !(r->programs & program)) {
            /* Unknown to the table: a program-specific flag, left for main(). */
            cfg->args[cfg->args_cnt++] = argv[i];
            continue;
        }
        if (eq) {
            val = eq + 1;
        } else if (r->type == CF_BOOL && (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0 ||
                                          parse_bool(argv[i + 1], &(int){0}) < 0)) {
            val = "1";
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            hb_seterr(errstr, errstr_size, "%s needs a value", a);
            return -1;
        }
        flag_name(r, name, sizeof(name));
        if (cf_set(cfg, r, val, name, errstr, errstr_size) < 0)
            return -1;
    }

    hb_log_level_t lvl;
    if (hb_log_level_parse(cfg->log_level, &lvl) < 0) {
        hb_seterr(errstr, errstr_size,
                  "HOOKBRIDGE_LOG_LEVEL: \"%s\" is not one of debug, info, warn, error",
                  cfg->log_level);
        return -1;
    }
    {
        /* A name Kafka refuses could never exist: the service would wait
         * for it for ever ("topic ... does not exist"). */
        static const struct {
            const char *var;
            size_t off;
            int prefix;
        } topics[] = {{"HOOKBRIDGE_EVENTS_TOPIC", OFF(events_topic), 0},
                      {"HOOKBRIDGE_DLQ_TOPIC", OFF(dlq_topic), 0},
                      {"HOOKBRIDGE_RETRY_TOPIC_PREFIX", OFF(retry_topic_prefix), 1}};
        for (size_t i = 0; i < HB_ARRAY_SIZE(topics); i++) {
            const char *v = *(char **)((char *)cfg + topics[i].off);
            char why[64];
            if (topic_name_ok(v, topics[i].prefix, why, sizeof(why)))
                continue;
            int printable = 1; /* the error stays one line */
            for (const char *c = v; *c; c++)
                printable &= *c >= 0x20 && *c < 0x7f;
            hb_seterr(errstr, errstr_size,
                      "%s: %s%s%s is not a Kafka topic name%s (%s; use letters, digits, '.', "
                      "'_' and '-')",
                      topics[i].var, printable ? "\"" : "", printable ? v : "the value",
                      printable ? "\"" : "", topics[i].prefix ? " prefix" : "", why);
            return -1;
        }
    }
    if (!strcmp(cfg->events_topic, cfg->dlq_topic)) {
        /* dead letters would be read again as events: poison copies in a
         * loop, refused ingest events as new poison */
        hb_seterr(errstr, errstr_size,
                  "HOOKBRIDGE_DLQ_TOPIC names the events topic (\"%s\"): dead letters would be "
                  "read again as events; give the dead-letter topic its own name",
                  cfg->dlq_topic);
        return -1;
    }
    for (size_t i = 0; (program & HB_PROG_SERVICES) && i < cfg->kafka_props_cnt; i++) {
        /* The passthrough wins over hookbridge's consumer settings, but for
         * the one the guarantee rests on: with it on (librdkafka's default,
         * so a shared "standard client" ConfigMap sets it), librdkafka
         * stored each offset as the message was handed over, so the events
         * in flight at a crash were committed and never delivered. */
        if (!strcmp(cfg->kafka_props[2 * i], "enable.auto.offset.store") &&
            strcasecmp(cfg->kafka_props[2 * i + 1], "false")) {
            hb_seterr(errstr, errstr_size,
                      "HOOKBRIDGE_KAFKA_ENABLE_AUTO_OFFSET_STORE (enable.auto.offset.store) must "
                      "stay false: hookbridge stores each offset itself once its deliveries are "
                      "durable, or a crash loses the events in flight; remove it");
            return -1;
        }
    }
    if (program & (HB_PROG_KAFKA | HB_PROG_MIGRATE)) {
        char why[400];
        const char *protocol = "plaintext"; /* librdkafka's default; the last one set wins */
        for (size_t i = 0; i < cfg->kafka_props_cnt; i++)
            if (!strcmp(cfg->kafka_props[2 * i], "security.protocol"))
                protocol = cfg->kafka_props[2 * i + 1];
        if (!brokers_ok(cfg->kafka_brokers, protocol, why, sizeof(why))) {
            hb_seterr(errstr, errstr_size, "HOOKBRIDGE_KAFKA_BROKERS: %s", why);
            return -1;
        }
    }
    if (program & HB_PROG_SERVICES) {
        /* parsed once, here; the services use cfg->schedule */
        char why[256];
        hb_schedule_free(&cfg->schedule);
        if (hb_schedule_parse(&cfg->schedule, cfg->retry_schedule, cfg->retry_hop_tiers,
                              cfg->retry_topic_prefix, why, sizeof(why)) < 0) {
            hb_seterr(errstr, errstr_size, "%s: %s", hb_schedule_setting(why), why);
            return -1;
        }
    }
    if (program & HB_PROG_SERVICES) {
        char why[128];
        if (hb_listen_check(cfg->http_listen, why, sizeof(why)) != HB_LISTEN_OK) {
            hb_seterr(errstr, errstr_size,
                      "HOOKBRIDGE_HTTP_LISTEN: \"%s\" is not a listen address (%s; write "
                      "host:port, [v6]:port or :port)",
                      cfg->http_listen, why);
            return -1;
        }
    }
    if (program & HB_PROG_SERVICES) {
        /* Values of the HTTP client's settings that no start could use:
         * refused here (status 2) rather than when the client is made. */
        hb_http_cidr_t *cidrs = NULL;
        size_t ncidrs = 0;
        char why[256];
        if (hb_http_cidrs_parse(cfg->allowed_cidrs, &cidrs, &ncidrs, why, sizeof(why)) < 0) {
            hb_seterr(errstr, errstr_size, "HOOKBRIDGE_ALLOWED_CIDRS: %s", why);
            return -1;
        }
        free(cidrs);
        if (*cfg->tls_client_key && !*cfg->tls_client_cert) {
            hb_seterr(errstr, errstr_size,
                      "HOOKBRIDGE_TLS_CLIENT_KEY is set without HOOKBRIDGE_TLS_CLIENT_CERT, the "
                      "client certificate it is the key of");
            return -1;
        }
    }
    if ((program & (HB_PROG_DISPATCHER | HB_PROG_PRODUCER)) && *cfg->schema_registry_url) {
        const char *u = cfg->schema_registry_url;
        size_t scheme = !strncmp(u, "http://", 7) ? 7 : !strncmp(u, "https://", 8) ? 8 : 0;
        if (!scheme || !u[scheme] || u[scheme] == '/') {
            hb_seterr(errstr, errstr_size,
                      "HOOKBRIDGE_SCHEMA_REGISTRY_URL: not an http:// or https:// URL with a host");
            return -1;
        }
    }
    if (program & HB_PROG_SERVICES) {
        /* No retry could ever connect: a configuration mistake, not an
         * outage. The value is not repeated (it holds the password). */
        char why[256];
        if (hb_pg_conninfo_problem(cfg->database_url, why, sizeof(why)) < 0) {
            hb_seterr(errstr, errstr_size, "HOOKBRIDGE_DATABASE_URL: %s", why);
            return -1;
        }
    }
    if (program & HB_PROG_SERVICES) {
        /* A service without its key could not deliver to any endpoint: refuse
         * now, naming the variable, rather than fail on every subscription. */
        static const char hint[] = "generate one with: hookbridge-secret generate-key";
        char why[256];
        hb_keyring_t *kr;
        if (!*cfg->secret_key) {
            hb_seterr(errstr, errstr_size,
                      "HOOKBRIDGE_SECRET_KEY is not set: it is the key that seals signing "
                      "secrets and auth values in the database; %s",
                      hint);
            return -1;
        }
        kr = hb_keyring_new(cfg->secret_key, NULL, why, sizeof(why));
        if (!kr) {
            hb_seterr(errstr, errstr_size, "%s; %s", why, hint);
            return -1;
        }
        hb_keyring_free(kr);
        cfg->keyring = hb_keyring_new(cfg->secret_key, cfg->secret_keys_old, errstr, errstr_size);
        if (!cfg->keyring)
            return -1;
    }
    return 0;
}

int hb_config_load_tool(hb_config_t *cfg, unsigned program, const char *program_name, int argc,
                        char **argv, void (*usage)(FILE *fp), int bad_status) {
    char errstr[1024];
    int rc = hb_config_load(cfg, program, program_name, argc, argv, errstr, sizeof(errstr));
    if (rc == 0)
        return -1;
    if (rc == 1) { /* --help (settings printed by hb_config) or --config-reference */
        for (int i = 1; i < argc; i++)
            if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
                usage(stdout);
    } else {
        fprintf(stderr, "%s: error: %s\n", program_name, errstr);
    }
    hb_config_free(cfg);
    return rc == 1 ? 0 : bad_status;
}

void hb_config_free(hb_config_t *cfg) {
    for (size_t i = 0; i < HB_ARRAY_SIZE(cf_table); i++)
        if (cf_table[i].type == CF_STR) {
            char *v = *(char **)((char *)cfg + cf_table[i].off);
            if (v && (cf_table[i].flags & CF_SECRET))
                OPENSSL_cleanse(v, strlen(v));
            free(v);
        }
    for (size_t i = 0; i < cfg->kafka_props_cnt * 2; i++)
        free(cfg->kafka_props[i]);
    free(cfg->kafka_props);
    free(cfg->args);
    hb_keyring_free(cfg->keyring);
    hb_schedule_free(&cfg->schedule);
    memset(cfg, 0, sizeof(*cfg));
}

static const char *type_name(cf_type_t t) {
    switch (t) {
    case CF_STR: return "string";
    case CF_INT: return "integer";
    case CF_BOOL: return "boolean";
    case CF_MS: return "duration";
    }
    return "?";
}

void hb_config_usage(FILE *fp, unsigned program, const char *program_name) {
    char env[64], flag[64];
    fprintf(fp, "\nSettings of %s (flag, environment variable, default):\n\n", program_name);
    for (size_t i = 0; i < HB_ARRAY_SIZE(cf_table); i++) {
        const cf_row_t *r = &cf_table[i];
        if (!(r->programs & program))
            continue;
        env_name(r, env, sizeof(env));
        flag_name(r, flag, sizeof(flag));
        fprintf(fp, "  %s, %s (%s, default \"%s\")\n      %s\n", flag, env, type_name(r->type),
                r->def, r->help);
    }
    if (program & (HB_PROG_KAFKA | HB_PROG_MIGRATE))
        fprintf(fp, "\n  -X property=value, HOOKBRIDGE_KAFKA_<PROPERTY>=value\n"
                    "      Any librdkafka property (HOOKBRIDGE_KAFKA_SASL_MECHANISM=PLAIN sets "
                    "sasl.mechanism).\n");
    fprintf(fp, "  --config-reference   print the configuration reference in Markdown\n");
}

void hb_config_reference(FILE *fp) {
    static const struct {
        unsigned bit;
        const char *name;
    } progs[] = {{HB_PROG_PRODUCER, "producer"},
                 {HB_PROG_DISPATCHER, "dispatcher"},
                 {HB_PROG_RETRIER, "retrier"},
                 {HB_PROG_MIGRATE, "migrate"},
                 {HB_PROG_SECRET, "secret"}};
    char env[64], flag[64];
    fprintf(fp, "| variable | flag | type | default | programs | description |\n"
                "| --- | --- | --- | --- | --- | --- |\n");
    for (size_t i = 0; i < HB_ARRAY_SIZE(cf_table); i++) {
        const cf_row_t *r = &cf_table[i];
        int first = 1;
        env_name(r, env, sizeof(env));
        flag_name(r, flag, sizeof(flag));
        fprintf(fp, "| `%s` | `%s` | %s | `%s` | ", env, flag, type_name(r->type),
                *r->def ? r->def : "(empty)");
        for (size_t p = 0; p < HB_ARRAY_SIZE(progs); p++)
            if (r->programs & progs[p].bit) {
                fprintf(fp, "%s%s", first ? "" : ", ", progs[p].name);
                first = 0;
            }
        fprintf(fp, " | %s |\n", r->help);
    }
    fprintf(fp,
            "| `HOOKBRIDGE_KAFKA_<PROPERTY>` | `-X property=value` | string | | producer, "
            "dispatcher, retrier, migrate | Passed to librdkafka as `<property>` lowercased, `_` "
            "read as `.`. |\n");
}
