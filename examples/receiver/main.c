/*
 * hookbridge-receiver: the reference webhook consumer, and the recording
 * endpoint the end-to-end tests deliver to.
 *
 * It answers the verification challenge (GET with X-Okta-Verification-
 * Challenge -> 200 {"verification":"<value>"}; given a secret, only a
 * challenge whose Standard Webhooks signature, over an empty body with the
 * challenge value as webhook-id, checks: 401 otherwise), and for each POST checks the
 * configured auth header, checks the Standard Webhooks signature when given a
 * secret (tolerance 300 s), logs one line per event found in the body (Okta
 * envelope, CloudEvents object or array, or a bare event) and acknowledges
 * with 204, or with --status CODE to let tests exercise failures (--fail-first
 * and --fail-rate answer 503 to some POSTs, for retry and fault tests). --record
 * appends one JSON line per request (headers, raw body, verification result,
 * status sent), written with one write(2) per line under a mutex, so a test
 * can read the file while the receiver runs.
 *
 * With --tls-cert and --tls-key it serves HTTPS (libmicrohttpd over GnuTLS,
 * TLS 1.2 and 1.3 only); with --tls-client-ca as well it requires every
 * client to present a certificate issued by that CA (mTLS) and refuses the
 * TLS handshake otherwise. Auth values, signing secrets and the signature
 * are compared in constant time (CRYPTO_memcmp) and a signature whose
 * timestamp is more than 300 s away from now is refused (replay protection).
 *
 * Threads: libmicrohttpd's pool runs the request callbacks; main() only
 * parses flags, starts the daemon and sleeps on a self-pipe until SIGTERM or
 * SIGINT (hb_signal). Per-request state lives in the connection's con_cls and
 * is freed in the completion callback. The secret and the auth value are
 * never logged or recorded; the recorded headers are what the client sent.
 */
#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <jansson.h>
#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hb_common.h"
#include "hb_listen.h"
#include "hb_log.h"
#include "hb_mhd.h"
#include "hb_sign.h"
#include "hb_signal.h"

#define RECEIVER_MAX_BODY (10u * 1024 * 1024)
#define RECEIVER_TOLERANCE_S 300
#define CHALLENGE_HEADER "X-Okta-Verification-Challenge"
#define TLS_PRIORITIES "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

typedef struct {
    const char *listen;
    int have_secret;
    hb_secret_t secret;
    char *auth_name, *auth_value; /* auth_value is a secret */
    int status;                   /* POST answer after the checks pass */
    int retry_after;              /* seconds, 0 = no header */
    const char *record_path;
    int record_fd;
    pthread_mutex_t record_lock;
    int quiet;
    int threads;
    int fail_first; /* answer the first N POSTs of each webhook-id with 503 */
    int fail_rate;  /* answer this percentage of POSTs, at random, with 503 */
    int delay_ms;   /* wait this long before answering a POST */
    const char *tls_cert_path, *tls_key_path, *tls_client_ca_path;
    char *tls_cert, *tls_key, *tls_client_ca; /* PEM contents; the key is a secret */
    size_t tls_key_len;
    pthread_mutex_t seen_lock;
    struct seen_s {
        char id[40];
        int count;
    } * seen; /* POSTs per webhook-id (open addressing, SEEN_SLOTS) */
} receiver_t;

#define SEEN_SLOTS 65536

/* How many POSTs with this webhook-id came before this one. */
static int seen_before(receiver_t *r, const char *id) {
    unsigned h = 2166136261u;
    int before = 0;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    pthread_mutex_lock(&r->seen_lock);
    for (unsigned i = 0; i < SEEN_SLOTS; i++) {
        struct seen_s *e = &r->seen[(h + i) % SEEN_SLOTS];
        if (!e->id[0])
            snprintf(e->id, sizeof(e->id), "%s", id);
        if (!strcmp(e->id, id)) {
            before = e->count++;
            break;
        }
    }
    pthread_mutex_unlock(&r->seen_lock);
    return before;
}

typedef struct {
    char *body;
    size_t len, cap;
    int too_large;
} request_t;

/* ---- flags ------------------------------------------------------------- */

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: hookbridge-receiver --listen HOST:PORT [--secret whsec_...]\n"
            "                           [--auth 'Header: value'] [--status CODE]\n"
            "                           [--retry-after SECONDS] [--record FILE] [--quiet]\n"
            "                           [--threads N] [--log-level LEVEL]\n"
            "                           [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]\n"
            "\n"
            "The reference hookbridge webhook receiver. Answers the verification\n"
            "challenge, checks the auth header and the Standard Webhooks signature,\n"
            "logs each event and acknowledges with 204.\n"
            "\n"
            "  --listen HOST:PORT    address to listen on (port 0 picks a free port)\n"
            "  --secret whsec_...    verify webhook-signature with this secret, of deliveries\n"
            "                        and challenges (401 if bad)\n"
            "  --auth 'Name: value'  require this request header (401 otherwise)\n"
            "  --status CODE         answer POSTs that pass the checks with CODE (default 204)\n"
            "  --retry-after SECS    add Retry-After to non-2xx answers (with --status)\n"
            "  --fail-first N        answer the first N POSTs of each webhook-id with 503\n"
            "                        (then --status); for retry tests\n"
            "  --fail-rate PERCENT   answer PERCENT %% of POSTs, at random, with 503\n"
            "  --delay-ms MS         wait MS before answering each POST (a slow endpoint)\n"
            "  --record FILE         append one JSON line per request to FILE\n"
            "  --quiet               do not log each event and request\n"
            "  --threads N           server threads (default 2)\n"
            "  --log-level LEVEL     debug, info, warn, error (default info)\n"
            "  --tls-cert FILE       serve HTTPS with this PEM certificate (chain)\n"
            "  --tls-key FILE        and this PEM private key (unencrypted)\n"
            "  --tls-client-ca FILE  require a client certificate issued by this PEM CA (mTLS)\n");
}

/* "Name: value" -> name, value (both trimmed, both non-empty). */
static int parse_auth(receiver_t *r, const char *spec, char *errstr, size_t errstr_size) {
    const char *colon = strchr(spec, ':'), *v, *name_end;
    if (!colon || colon == spec) {
        hb_seterr(errstr, errstr_size, "--auth: want 'Header-Name: value'");
        return -1;
    }
    name_end = colon;
    while (name_end > spec && (name_end[-1] == ' ' || name_end[-1] == '\t'))
        name_end--;
    v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (name_end == spec || !*v) {
        hb_seterr(errstr, errstr_size, "--auth: want 'Header-Name: value'");
        return -1;
    }
    r->auth_name = hb_strndup(spec, (size_t)(name_end - spec));
    r->auth_value = hb_strdup(v);
    return 0;
}

/* Returns 0, 1 after --help, -1 on a bad flag (errstr never holds a secret). */
static int parse_args(receiver_t *r, int argc, char **argv, hb_log_level_t *level, char *errstr,
                      size_t errstr_size) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--quiet")) {
            r->quiet = 1;
            continue;
        }
        if (i + 1 >= argc) {
            hb_seterr(errstr, errstr_size, "%s: unknown flag or missing value", a);
            return -1;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--listen")) {
            r->listen = v;
        } else if (!strcmp(a, "--secret")) {
            char why[128];
            if (hb_secret_parse(v, &r->secret, why, sizeof(why)) != 0) {
                hb_seterr(errstr, errstr_size, "--secret: %s", why);
                return -1;
            }
            r->have_secret = 1;
        } else if (!strcmp(a, "--auth")) {
            if (r->auth_name || parse_auth(r, v, errstr, errstr_size) != 0) {
                if (r->auth_name)
                    hb_seterr(errstr, errstr_size, "--auth given twice");
                return -1;
            }
        } else if (!strcmp(a, "--fail-first")) {
            if (hb_parse_int_flag(a, v, 0, 1000, NULL, &r->fail_first, errstr, errstr_size) != 0)
                return -1;
        } else if (!strcmp(a, "--fail-rate")) {
            if (hb_parse_int_flag(a, v, 0, 100, "(a percentage)", &r->fail_rate, errstr,
                                  errstr_size) != 0)
                return -1;
        } else if (!strcmp(a, "--delay-ms")) {
            if (hb_parse_int_flag(a, v, 0, 600000, NULL, &r->delay_ms, errstr, errstr_size) != 0)
                return -1;
        } else if (!strcmp(a, "--status")) {
            if (hb_parse_int_flag(a, v, 100, 599, "(an HTTP status)", &r->status, errstr,
                                  errstr_size) != 0)
                return -1;
        } else if (!strcmp(a, "--retry-after")) {
            if (hb_parse_int_flag(a, v, 0, 86400, "seconds", &r->retry_after, errstr,
                                  errstr_size) != 0)
                return -1;
        } else if (!strcmp(a, "--tls-cert")) {
            r->tls_cert_path = v;
        } else if (!strcmp(a, "--tls-key")) {
            r->tls_key_path = v;
        } else if (!strcmp(a, "--tls-client-ca")) {
            r->tls_client_ca_path = v;
        } else if (!strcmp(a, "--record")) {
            r->record_path = v;
        } else if (!strcmp(a, "--threads")) {
            if (hb_parse_int_flag(a, v, 1, 64, NULL, &r->threads, errstr, errstr_size) != 0)
                return -1;
        } else if (!strcmp(a, "--log-level")) {
            if (hb_log_level_parse(v, level) != 0) {
                hb_seterr(errstr, errstr_size, "--log-level: want debug, info, warn or error");
                return -1;
            }
        } else {
            hb_seterr(errstr, errstr_size, "%s: unknown flag", a);
            return -1;
        }
    }
    if (!r->listen) {
        hb_seterr(errstr, errstr_size, "--listen HOST:PORT is required");
        return -1;
    }
    if (!r->tls_cert_path != !r->tls_key_path) {
        hb_seterr(errstr, errstr_size, "--tls-cert and --tls-key go together");
        return -1;
    }
    if (r->tls_client_ca_path && !r->tls_cert_path) {
        hb_seterr(errstr, errstr_size, "--tls-client-ca needs --tls-cert and --tls-key");
        return -1;
    }
    return 0;
}

/* Reads a whole PEM file into a NUL-terminated buffer (caller frees). */
static char *read_pem(const char *flag, const char *path, size_t *len_out, char *errstr,
                      size_t errstr_size) {
    FILE *fp = fopen(path, "r");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    if (!fp) {
        hb_seterr(errstr, errstr_size, "%s %s: %s", flag, path, strerror(errno));
        return NULL;
    }
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = (len + 4096 + 1) * 2;
            buf = hb_realloc(buf, cap);
        }
        size_t n = fread(buf + len, 1, cap - len - 1, fp);
        len += n;
        if (n == 0)
            break;
    }
    int err = ferror(fp) ? errno : 0;
    fclose(fp);
    buf[len] = '\0';
    if (err || !strstr(buf, "-----BEGIN ")) {
        hb_seterr(errstr, errstr_size, "%s %s: %s", flag, path,
                  err ? strerror(err) : "not a PEM file");
        OPENSSL_cleanse(buf, len);
        free(buf);
        return NULL;
    }
    if (len_out)
        *len_out = len;
    return buf;
}

/* hb_listen_resolve() with the command line's wording of its refusals; "*"
 * is not the wildcard here (":PORT" is). */
static int resolve_listen(const char *listen, struct sockaddr_storage *ss, uint16_t *port_out,
                          char *errstr, size_t errstr_size) {
    char why[128];
    socklen_t sslen;
    switch (hb_listen_resolve(listen, 0, ss, &sslen, why, sizeof(why))) {
    case HB_LISTEN_OK: *port_out = hb_listen_port(ss); return 0;
    case HB_LISTEN_EHOST: hb_seterr(errstr, errstr_size, "--listen: host too long"); return -1;
    case HB_LISTEN_ERESOLVE:
        hb_seterr(errstr, errstr_size, "--listen %s: %s", listen, why);
        return -1;
    default: /* HB_LISTEN_ESYNTAX, HB_LISTEN_EPORT */
        hb_seterr(errstr, errstr_size, "--listen %s: want HOST:PORT", listen);
        return -1;
    }
}

/* ---- events ------------------------------------------------------------ */

static const char *jstr(const json_t *obj, const char *key) {
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

static void log_event(const json_t *ev, const char *webhook_id) {
    const char *type, *uuid, *when;
    if (!json_is_object(ev))
        return;
    if (json_object_get(ev, "specversion")) { /* CloudEvents */
        type = jstr(ev, "type");
        uuid = jstr(ev, "id");
        when = jstr(ev, "time");
    } else { /* Okta System Log event */
        type = jstr(ev, "eventType");
        uuid = jstr(ev, "uuid");
        when = jstr(ev, "published");
    }
    hb_log(HB_LOG_INFO,
           HB_KV("event_time", when, "webhook_id", webhook_id, "event_type", type, "uuid", uuid),
           "event %s %s", type, uuid);
}

/* Envelope {"data":{"events":[...]}}, an array (CloudEvents batch) or one event. */
static void log_events(const char *body, size_t len, const char *webhook_id) {
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr), *events;
    size_t i;
    json_t *ev;
    if (!root) {
        hb_log(HB_LOG_WARN, HB_KV("webhook_id", webhook_id), "body is not JSON: %s", jerr.text);
        return;
    }
    events = json_object_get(json_object_get(root, "data"), "events");
    if (json_is_object(root) && json_is_array(events) && !json_object_get(root, "specversion")) {
        json_array_foreach(events, i, ev) log_event(ev, webhook_id);
    } else if (json_is_array(root)) {
        json_array_foreach(root, i, ev) log_event(ev, webhook_id);
    } else {
        log_event(root, webhook_id);
    }
    json_decref(root);
}

/* ---- recording ---------------------------------------------------------- */

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value) {
    json_t *headers = cls;
    char name[256];
    size_t n = strlen(key);
    if (n >= sizeof(name))
        n = sizeof(name) - 1;
    for (size_t i = 0; i < n; i++)
        name[i] = (key[i] >= 'A' && key[i] <= 'Z') ? (char)(key[i] - 'A' + 'a') : key[i];
    name[n] = '\0';
    json_t *v = json_string(value ? value : "");
    if (v)
        json_object_set_new(headers, name, v);
    return MHD_YES;
}

static void record(receiver_t *r, struct MHD_Connection *conn, const char *method, const char *url,
                   const request_t *req, int verified, unsigned status) {
    json_t *line, *headers, *body;
    char *text;
    if (r->record_fd < 0)
        return;
    headers = json_object();
    MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_header, headers);
    line = json_pack("{s:I, s:s, s:s, s:o, s:o, s:i}", "time_ms", (json_int_t)hb_wall_ms(),
                     "method", method, "path", url, "headers", headers, "verified",
                     verified < 0 ? json_null() : json_boolean(verified), "status", (int)status);
    if (!line) {
        hb_warn("record: cannot build the JSON line");
        return;
    }
    body = json_stringn(req->body ? req->body : "", req->len);
    if (body) {
        json_object_set_new(line, "body", body);
    } else { /* not UTF-8: keep the bytes, base64 */
        size_t cap = 4 * ((req->len + 2) / 3) + 1;
        char *b64 = hb_malloc(cap);
        hb_base64_encode(req->body, req->len, b64, cap);
        json_object_set_new(line, "body", json_null());
        json_object_set_new(line, "body_base64", json_string(b64));
        free(b64);
    }
    text = json_dumps(line, JSON_COMPACT);
    json_decref(line);
    if (!text) {
        hb_warn("record: cannot serialise the JSON line");
        return;
    }
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the NUL: written with its length below */
    pthread_mutex_lock(&r->record_lock);
    size_t off = 0;
    while (off < len + 1) {
        ssize_t w = write(r->record_fd, text + off, len + 1 - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            hb_warn("record %s: %s", r->record_path, strerror(errno));
            break;
        }
        off += (size_t)w;
    }
    pthread_mutex_unlock(&r->record_lock);
    free(text);
}

/* ---- HTTP ----------------------------------------------------------------- */

static enum MHD_Result reply(receiver_t *r, struct MHD_Connection *conn, unsigned status,
                             const char *content_type, const char *body) {
    size_t len = body ? strlen(body) : 0;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ret;
    if (!resp)
        return MHD_NO;
    if (len)
        (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (r->retry_after > 0 && (status == 429 || status == 503)) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", r->retry_after);
        (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Constant-time check of the configured auth header. */
static int auth_ok(const receiver_t *r, struct MHD_Connection *conn) {
    if (!r->auth_name)
        return 1;
    return hb_secret_equal(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, r->auth_name),
                           r->auth_value);
}

/* Verifies the signature: 1 valid, 0 invalid (reason filled), -1 not configured. */
static int check_signature(const receiver_t *r, struct MHD_Connection *conn, const request_t *req,
                           char *why, size_t whysz) {
    if (!r->have_secret)
        return -1;
    const char *id = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "webhook-id");
    const char *ts = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "webhook-timestamp");
    const char *sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "webhook-signature");
    if (hb_sign_verify(&r->secret, id, ts, req->body ? req->body : "", req->len, sig,
                       hb_wall_ms() / 1000, RECEIVER_TOLERANCE_S, why, whysz) != 0)
        return 0;
    return 1;
}

/* A uniform draw in [0, 100) from OpenSSL's generator (thread-safe). */
static int random_percent(void) {
    unsigned int v = 0;
    if (RAND_bytes((unsigned char *)&v, (int)sizeof(v)) != 1)
        return 100; /* no randomness: do not fail the request */
    return (int)(v % 100u);
}

static enum MHD_Result handle_get(receiver_t *r, struct MHD_Connection *conn, const char *url,
                                  const request_t *req) {
    const char *challenge = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, CHALLENGE_HEADER);
    if (!challenge) {
        record(r, conn, "GET", url, req, -1, 200);
        return reply(r, conn, 200, "text/plain", "hookbridge-receiver\n");
    }
    /* With a secret, only a challenge signed with it is answered: hookbridge
     * signs it like a delivery, over an empty body, its webhook-id being the
     * challenge value (the value echoed is the value signed). Anyone can send
     * a GET; only the holder of the secret can send this one. */
    if (r->have_secret) {
        char why[160] = "", text401[256];
        const char *id = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "webhook-id");
        int verified = check_signature(r, conn, req, why, sizeof(why));
        if (verified == 1 && (!id || strcmp(id, challenge) != 0)) {
            snprintf(why, sizeof(why), "webhook-id is not the challenge value");
            verified = 0;
        }
        if (verified != 1) {
            hb_warn("rejected verification challenge: invalid signature: %s", why);
            snprintf(text401, sizeof(text401), "invalid signature: %s\n", why);
            record(r, conn, "GET", url, req, 0, 401);
            return reply(r, conn, 401, "text/plain", text401);
        }
    }
    json_t *j = json_pack("{s:s}", "verification", challenge);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) {
        record(r, conn, "GET", url, req, -1, 400);
        return reply(r, conn, 400, "text/plain", "challenge is not UTF-8\n");
    }
    if (!r->quiet)
        hb_info("verification challenge answered");
    record(r, conn, "GET", url, req, -1, 200);
    enum MHD_Result ret = reply(r, conn, 200, "application/json", text);
    free(text);
    return ret;
}

static enum MHD_Result handle_post(receiver_t *r, struct MHD_Connection *conn, const char *url,
                                   const request_t *req) {
    char why[160] = "", text[256];
    const char *id = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "webhook-id");
    int verified;
    unsigned status;

    if (req->too_large) {
        record(r, conn, "POST", url, req, -1, 413);
        return reply(r, conn, 413, "text/plain", "body too large\n");
    }
    verified = check_signature(r, conn, req, why, sizeof(why));
    if (verified == 0) {
        hb_log(HB_LOG_WARN, HB_KV("webhook_id", id ? id : ""), "rejected: invalid signature: %s",
               why);
        snprintf(text, sizeof(text), "invalid signature: %s\n", why);
        record(r, conn, "POST", url, req, 0, 401);
        return reply(r, conn, 401, "text/plain", text);
    }
    if (!r->quiet)
        log_events(req->body ? req->body : "", req->len, id ? id : "");
    status = (unsigned)r->status;
    if (r->fail_first > 0 && seen_before(r, id ? id : "") < r->fail_first)
        status = 503;
    if (r->fail_rate > 0 && random_percent() < r->fail_rate)
        status = 503;
    if (r->delay_ms > 0) {
        struct timespec ts = {r->delay_ms / 1000, (long)(r->delay_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    record(r, conn, "POST", url, req, verified, status);
    if (status == 204 || status == 304 || status < 200)
        return reply(r, conn, status, NULL, NULL);
    snprintf(text, sizeof(text), "status %u\n", status);
    return reply(r, conn, status, "text/plain", text);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    receiver_t *r = cls;
    request_t *req = *con_cls;

    if (!req) { /* headers complete; the body (if any) follows */
        const char *cl =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        req = hb_calloc(1, sizeof(*req));
        *con_cls = req;
        if (cl && strtoull(cl, NULL, 10) > RECEIVER_MAX_BODY) {
            /* Answer before reading the body: with Expect: 100-continue the
             * client never sends it, otherwise libmicrohttpd closes after. */
            req->too_large = 1;
            record(r, conn, method, url, req, -1, 413);
            return reply(r, conn, 413, "text/plain", "body too large\n");
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        if (!req->too_large && req->len + n > RECEIVER_MAX_BODY) {
            req->too_large = 1;
            free(req->body);
            req->body = NULL;
            req->len = req->cap = 0;
        }
        if (!req->too_large) {
            if (req->len + n + 1 > req->cap) {
                req->cap = (req->len + n + 1) * 2;
                req->body = hb_realloc(req->body, req->cap);
            }
            memcpy(req->body + req->len, upload_data, n);
            req->len += n;
            req->body[req->len] = '\0';
        }
        *upload_data_size = 0; /* consumed (or discarded when too large) */
        return MHD_YES;
    }

    if (!auth_ok(r, conn)) {
        hb_warn("rejected %s %s: missing or wrong %s header", method, url, r->auth_name);
        record(r, conn, method, url, req, -1, 401);
        return reply(r, conn, 401, "text/plain", "unauthorized\n");
    }
    if (!strcmp(method, MHD_HTTP_METHOD_GET))
        return handle_get(r, conn, url, req);
    if (!strcmp(method, MHD_HTTP_METHOD_POST))
        return handle_post(r, conn, url, req);
    record(r, conn, method, url, req, -1, 405);
    return reply(r, conn, 405, "text/plain", "method not allowed\n");
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    request_t *req = *con_cls;
    if (!req)
        return;
    free(req->body);
    free(req);
    *con_cls = NULL;
}

/*
 * libmicrohttpd with MHD_OPTION_HTTPS_MEM_TRUST only *asks* for a client
 * certificate and lets a client without one (or with one from another CA)
 * in. With --tls-client-ca each new TLS session gets, before its handshake,
 * a verify callback that fails the handshake unless the client presented a
 * certificate that verifies against the trusted CA. libmicrohttpd closes a
 * failed handshake without a TLS alert, which leaves the client guessing, so
 * the callback sends the alert that says why (certificate_required or
 * bad_certificate) and logs it.
 */
static int verify_client(gnutls_session_t session) {
    unsigned int listed = 0, status = 0;
    if (!gnutls_certificate_get_peers(session, &listed) || listed == 0) {
        hb_warn("TLS handshake refused: the client sent no certificate");
        (void)gnutls_alert_send(session, GNUTLS_AL_FATAL, GNUTLS_A_CERTIFICATE_REQUIRED);
        return GNUTLS_E_CERTIFICATE_REQUIRED;
    }
    if (gnutls_certificate_verify_peers2(session, &status) < 0 || status != 0) {
        gnutls_datum_t text = {NULL, 0};
        if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &text, 0) < 0)
            text.data = NULL;
        while (text.data && text.size > 0 && text.data[text.size - 1] == ' ')
            text.data[--text.size] = '\0';
        hb_warn("TLS handshake refused: client certificate: %s",
                text.data ? (const char *)text.data : "does not verify");
        gnutls_free(text.data);
        (void)gnutls_alert_send(session, GNUTLS_AL_FATAL, GNUTLS_A_BAD_CERTIFICATE);
        return GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR;
    }
    return 0;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    const receiver_t *r = cls;
    const union MHD_ConnectionInfo *info;
    if (toe != MHD_CONNECTION_NOTIFY_STARTED || !r->tls_client_ca)
        return;
    info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (!info || !info->tls_session) {
        hb_warn("client certificate check: no TLS session");
        return;
    }
    gnutls_session_t session = (gnutls_session_t)info->tls_session;
    gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUEST);
    gnutls_session_set_verify_function(session, verify_client);
}

static hb_log_limit_t log_mhd = HB_LOG_LIMIT_NOTE("\"httpd: ...\"", "");

static void mhd_log(void *cls, const char *fmt, va_list ap) HB_PRINTF(2, 0);
static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    hb_mhd_log(&log_mhd, "httpd", fmt, ap);
}

int main(int argc, char **argv) {
    receiver_t r;
    hb_log_level_t level = HB_LOG_INFO;
    char errstr[512];
    struct sockaddr_storage ss;
    uint16_t port = 0;
    struct MHD_Daemon *mhd = NULL;
    const union MHD_DaemonInfo *info;
    int pipefd[2] = {-1, -1}, rc = 1, prc;

    memset(&r, 0, sizeof(r));
    r.status = 204;
    r.threads = 2;
    r.record_fd = -1;
    pthread_mutex_init(&r.record_lock, NULL);
    pthread_mutex_init(&r.seen_lock, NULL);
    r.seen = hb_calloc(SEEN_SLOTS, sizeof(*r.seen));
    hb_log_init("receiver", HB_LOG_INFO);

    prc = parse_args(&r, argc, argv, &level, errstr, sizeof(errstr));
    if (prc != 0) {
        if (prc < 0) {
            hb_error("%s", errstr);
            fprintf(stderr, "hookbridge-receiver: %s (see --help)\n", errstr);
        }
        rc = prc > 0 ? 0 : 2;
        goto done;
    }
    hb_log_init("receiver", level);
    if (resolve_listen(r.listen, &ss, &port, errstr, sizeof(errstr)) != 0) {
        hb_error("%s", errstr);
        rc = 2;
        goto done;
    }
    if (r.record_path) {
        r.record_fd = open(r.record_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (r.record_fd < 0) {
            hb_error("--record %s: %s", r.record_path, strerror(errno));
            goto done;
        }
    }
    if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) != 0) {
        hb_error("pipe: %s", strerror(errno));
        goto done;
    }
    hb_signal_install(pipefd[1]);

    if (r.tls_cert_path) {
        r.tls_cert = read_pem("--tls-cert", r.tls_cert_path, NULL, errstr, sizeof(errstr));
        r.tls_key = r.tls_cert ? read_pem("--tls-key", r.tls_key_path, &r.tls_key_len, errstr,
                                          sizeof(errstr))
                               : NULL;
        r.tls_client_ca =
            r.tls_key && r.tls_client_ca_path
                ? read_pem("--tls-client-ca", r.tls_client_ca_path, NULL, errstr, sizeof(errstr))
                : NULL;
        if (!r.tls_cert || !r.tls_key || (r.tls_client_ca_path && !r.tls_client_ca)) {
            hb_error("%s", errstr);
            rc = 2;
            goto done;
        }
    }
    /* TLS options only when serving HTTPS; the array ends at the first END. */
    struct MHD_OptionItem tls_opts[] = {
        {r.tls_cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, r.tls_cert},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, r.tls_key},
        {MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)TLS_PRIORITIES},
        {r.tls_client_ca ? MHD_OPTION_HTTPS_MEM_TRUST : MHD_OPTION_END, 0, r.tls_client_ca},
        {MHD_OPTION_END, 0, NULL},
    };
    mhd = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
            (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0) | (r.tls_cert ? MHD_USE_TLS : 0),
        port, NULL, NULL, on_request, &r, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned int)r.threads, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, &r, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)30, MHD_OPTION_CONNECTION_LIMIT, (unsigned int)1000, MHD_OPTION_ARRAY,
        tls_opts, MHD_OPTION_END);
    if (!mhd) {
        hb_error("cannot listen on %s", r.listen);
        goto done;
    }
    info = MHD_get_daemon_info(mhd, MHD_DAEMON_INFO_BIND_PORT);
    char port_text[8];
    snprintf(port_text, sizeof(port_text), "%u", info ? (unsigned)info->port : 0u);
    hb_log(HB_LOG_INFO, HB_KV("listen", r.listen, "port", port_text),
           "receiver listening (%s, signature check %s, auth header %s, status %d)",
           !r.tls_cert       ? "plain HTTP"
           : r.tls_client_ca ? "HTTPS, client certificate required"
                             : "HTTPS",
           r.have_secret ? "on" : "off", r.auth_name ? r.auth_name : "none", r.status);

    while (!hb_stop_requested) {
        struct pollfd pfd = {pipefd[0], POLLIN, 0};
        if (poll(&pfd, 1, -1) < 0 && errno != EINTR) {
            hb_error("poll: %s", strerror(errno));
            goto done;
        }
    }
    hb_info("stopping");
    rc = 0;

done:
    if (mhd)
        MHD_stop_daemon(mhd);
    if (pipefd[0] >= 0) {
        close(pipefd[0]);
        close(pipefd[1]);
    }
    if (r.record_fd >= 0)
        close(r.record_fd);
    OPENSSL_cleanse(&r.secret, sizeof(r.secret));
    if (r.auth_value)
        OPENSSL_cleanse(r.auth_value, strlen(r.auth_value));
    free(r.auth_name);
    free(r.auth_value);
    if (r.tls_key)
        OPENSSL_cleanse(r.tls_key, r.tls_key_len);
    free(r.tls_key);
    free(r.tls_cert);
    free(r.tls_client_ca);
    pthread_mutex_destroy(&r.record_lock);
    pthread_mutex_destroy(&r.seen_lock);
    free(r.seen);
    return rc;
}
