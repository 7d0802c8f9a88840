/*
 * HTTP delivery engine on libcurl's multi interface.
 *
 * Many requests in flight from one thread, never a thread per request:
 * transfers are added up to max_in_flight (the rest wait in a FIFO), at most
 * max_host_connections per endpoint host (a slow host's extra requests wait in
 * that host's own queue and never take the global slots from other hosts;
 * the last quarter of max_in_flight goes only to a host that answered before
 * and has nothing running or was answered within the last second, and to new
 * hosts, one request each, up to half of it, so hung hosts cannot hold every
 * slot; a host whose name has not resolved runs one request at a time, and at
 * most max_in_flight / 8 of those run at once),
 * and that queue is bounded twice: at most max_host_queue requests wait for
 * one host, and none waits longer than max_queue_wait_ms. A request over
 * either bound is not sent: it completes with not_sent set, and its caller
 * hands it elsewhere (the delay tier) instead of holding it in memory. A
 * host whose requests have had to give up waiting is "known slow" for
 * max_queue_wait_ms: while none of its connections is free, new requests to
 * it are not queued at all; nor are they while its queue would take longer
 * than max_queue_wait_ms to drain at the pace it has been answering (its
 * completions per second, measured over windows of a second). So one hung
 * or slow endpoint holds at most its own connections and max_queue_wait_ms
 * worth of requests, never everyone's memory or time.
 * Connections are reused, redirects are never followed, only http/https are
 * allowed (http only with allow_http), and every connection's *resolved*
 * address is checked before connecting (CURLOPT_OPENSOCKETFUNCTION): loopback,
 * private, link-local, multicast, unspecified and their IPv6 equivalents
 * (IPv4-mapped and NAT64 addresses judged by the IPv4 address inside) are
 * refused unless allow_private_networks or the address is inside one of the
 * allowed_cidrs.
 *
 * TLS: certificates and host names are always verified, TLS 1.2 at least;
 * ca_file replaces the system CA bundle, tls_client_cert/tls_client_key
 * present a client certificate (mTLS). hb_http_new() loads the files once
 * with OpenSSL so a missing, unreadable or mismatched file fails at startup,
 * not at the first delivery. curl parses the CA file (or, without one, the
 * system bundle) once and shares the store across connections; it reads the
 * client certificate again for each new connection.
 * The key's content is a secret: only its path ever appears in errors.
 *
 * Each request carries its own context (CURLOPT_PRIVATE), error buffer and
 * response buffer (bounded by max_response_bytes; the rest is discarded).
 * Finished transfers are collected in exactly one place and reported through
 * the request's done callback, called from hb_http_run() on the calling
 * thread. All functions: the owning (main loop) thread only, except
 * hb_http_wakeup().
 */
#ifndef HB_HTTP_H
#define HB_HTTP_H

#include "hb_common.h"

typedef struct hb_http_s hb_http_t;

/* What is read of a response: its headers are bounded (a transfer over
 * either bound is aborted with the reason); its body is kept up to
 * max_response_bytes, and read up to HB_HTTP_MAX_RESPONSE_BODY_BYTES (over
 * that the transfer is aborted too: a body that never ends took a CPU core
 * for the whole request timeout, read and thrown away). */
#define HB_HTTP_MAX_RESPONSE_HEADERS 100
#define HB_HTTP_MAX_RESPONSE_HEADER_BYTES (32 * 1024)
#define HB_HTTP_MAX_RESPONSE_BODY_BYTES (16 * 1024 * 1024)

typedef struct hb_http_conf_s {
    long max_in_flight;
    long max_host_connections;
    long max_connections;           /* kept open, idle included; 0: 2 x max_in_flight */
    long max_host_queue;            /* requests waiting for one host; 0: unbounded */
    long long max_host_queue_bytes; /* bytes of their bodies; 0: unbounded */
    long long max_queue_wait_ms;    /* longest wait for a connection; 0: unbounded */
    long long connect_timeout_ms;
    long long connection_max_age_ms; /* reused this long after it opened; 0: as long as curl */
    int allow_http;
    int allow_private_networks;
    const char *user_agent;      /* "hookbridge/<version>" when NULL */
    const char *allowed_cidrs;   /* "10.20.0.0/16,fd00::/8": allowed though private */
    const char *ca_file;         /* PEM CA bundle replacing the system one */
    const char *tls_client_cert; /* PEM client certificate (chain) for mTLS */
    const char *tls_client_key;  /* its PEM private key (default: in the cert file) */
} hb_http_conf_t;                /* strings: NULL or "" = not set; all copied by hb_http_new */

typedef enum { HB_HTTP_POST = 0, HB_HTTP_GET } hb_http_method_t;

/* Why a request was never sent (0: it was, or it was refused by policy). */
typedef enum {
    HB_HTTP_SENT = 0,
    HB_HTTP_QUEUE_FULL, /* max_host_queue requests already waited for its host */
    HB_HTTP_QUEUE_WAIT, /* waited max_queue_wait_ms, or its host is known slow */
    HB_HTTP_DIVERTED,   /* taken out of its host's queue by hb_http_divert() */
    HB_HTTP_WITHDRAWN,  /* taken back by its caller before it was sent (hb_http_withdraw()) */
    HB_HTTP_NO_FILES,   /* no socket: this process is out of open files (EMFILE, ENFILE) */
} hb_http_not_sent_t;

typedef struct hb_http_result_s {
    int http_status;             /* 0 when no response was received */
    int transport_error;         /* 0, or the CURLcode */
    int timed_out;               /* the request hit its timeout */
    int refused;                 /* refused before sending: scheme or address policy */
    hb_http_not_sent_t not_sent; /* never sent because of the queue bounds; error says why */
    char error[256];             /* reason when no 2xx: "connection refused",
                                    "timeout after 10000 ms", "address 10.0.0.1 is
                                    private (refused; allow it with
                                    HOOKBRIDGE_ALLOWED_CIDRS=10.0.0.1/32 or
                                    HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS=1)",
                                    "TLS error: SSL certificate problem: ..." */
    const char *body;            /* response body, NUL-terminated, bounded */
    size_t body_len;
    long long retry_after_s; /* Retry-After in seconds (delta or HTTP date), -1 if absent */
    /* not_sent because of its own host (HB_HTTP_QUEUE_FULL, HB_HTTP_QUEUE_WAIT):
     * the host's recent pace in requests a second (0: not known, or the host
     * has not answered for a while) and the requests then waiting for it, so
     * its caller can put the request off until about its turn */
    double host_pace;
    size_t host_waiting;
    int64_t started_ms; /* wall clock */
    int64_t duration_ms;
    int new_connection; /* it opened a connection rather than reuse one */
} hb_http_result_t;

/* res and res->body are valid only during the call. The callback may
 * hb_http_submit() (e.g. the next attempt) but must not hb_http_free(). */
typedef void(hb_http_done_cb)(const hb_http_result_t *res, void *opaque);

typedef struct hb_http_req_s {
    hb_http_method_t method;
    const char *url;            /* copied */
    const char *const *headers; /* "Name: value", NULL-terminated, copied */
    char *body;                 /* POST body; ownership taken by submit, unless borrowed */
    size_t body_len;
    int body_borrowed;    /* the caller keeps body (unchanged) until the done callback returns */
    long long timeout_ms; /* total, per attempt */
    size_t max_response_bytes; /* response body bytes kept */
    hb_http_done_cb *done;
    void *opaque;
} hb_http_req_t;

/* Fails (errstr names the setting) on a bad allowed_cidrs element or a TLS
 * file that cannot be read or used. */
hb_http_t *hb_http_new(const hb_http_conf_t *conf, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* Aborts whatever is still queued or in flight: each gets its done callback
 * with error "aborted at shutdown", then frees everything. */
void hb_http_free(hb_http_t *h);

/* Queues a request. Takes ownership of req->body in every case. A request
 * that can be refused up front (bad URL, scheme not allowed) still completes
 * through its done callback on the next hb_http_run(), never re-entrantly. */
void hb_http_submit(hb_http_t *h, hb_http_req_t *req);

/* Waits up to timeout_ms for network activity or extra_fd (readable; -1 =
 * none), drives transfers, starts queued ones, and runs done callbacks of the
 * finished ones. Returns the number of callbacks run. */
int hb_http_run(hb_http_t *h, int timeout_ms, int extra_fd);
/* The same, waking for any of up to 4 readable extra fds (-1 entries
 * skipped); readable[i] (when readable is not NULL) says whether
 * extra_fds[i] was found readable by this wait. */
int hb_http_run_fds(hb_http_t *h, int timeout_ms, const int *extra_fds, size_t nextra,
                    int *readable);

/* Makes a concurrent hb_http_run() return early. Any thread. */
void hb_http_wakeup(hb_http_t *h);

/* Completes req through its done callback on the next hb_http_run() with
 * refused=1 and error = reason, without sending anything: for a request its
 * caller cannot build (e.g. no signing secret). Takes ownership of req->body. */
void hb_http_fail(hb_http_t *h, hb_http_req_t *req, const char *reason);

size_t hb_http_in_flight(const hb_http_t *h); /* started transfers */
size_t hb_http_queued(const hb_http_t *h);    /* waiting for a slot */

/* Requests waiting for hosts that keep up: every host except those with
 * requests running and none finished for stall_ms (hung), and those whose
 * queue would take longer than stall_ms to drain at their recent pace
 * (slow). A caller that stops taking new work while this is high throttles
 * itself to the pace of healthy endpoints: a fast endpoint that is merely
 * busy slows consumption down instead of having its requests diverted, and
 * a hung or slow endpoint's queue never stops it (the queue bounds divert
 * those instead). */
size_t hb_http_backlog(const hb_http_t *h, long long stall_ms);

/* Takes out of the queues of hosts that are not keeping up (requests not
 * finishing for a second, or a queue that takes longer than that to drain)
 * the newest requests beyond max_host_queue_bytes; they complete as not sent
 * (HB_HTTP_QUEUE_FULL). For when the payload budget is spent. Returns how many.
 */
size_t hb_http_shed_lagging(hb_http_t *h);

/* Completes every request waiting for the host of key (see hb_http_host_key)
 * with not_sent = HB_HTTP_DIVERTED and error = reason, on the next
 * hb_http_run(); running ones are left to finish. Returns how many. */
size_t hb_http_divert(hb_http_t *h, const char *key, const char *reason);

/* No subscription has its URL at the host of key any more: what is kept of
 * it while idle (its pace, whether it answered) is forgotten, so a host
 * subscribed to again starts as a new one; a host with requests running or
 * waiting is kept (they finish as they would). 1 when it was forgotten. */
int hb_http_forget_host(hb_http_t *h, const char *key);

/* Takes back every request not handed to curl yet (waiting in a host queue,
 * or about to complete as not sent) for which which(done, opaque, arg) says
 * 1: each completes with not_sent = HB_HTTP_WITHDRAWN on the next
 * hb_http_run(), never from inside this call; running ones are left to
 * finish. Returns how many. */
size_t hb_http_withdraw(hb_http_t *h, int (*which)(hb_http_done_cb *done, void *opaque, void *arg),
                        void *arg);

/* The host key of url, "scheme://host:port" in lower case (the unit of the
 * per-host bounds and of the circuit breaker): 0, or -1 when url cannot be
 * parsed. */
int hb_http_host_key(const char *url, char *buf, size_t size);

/* The address policy, exposed for tests and config checks: 1 when the
 * numeric IPv4/IPv6 address is one refused without allow_private_networks,
 * 0 when public, -1 when not a numeric address. */
int hb_http_address_is_private(const char *ip);

/* One allowlist entry: family AF_INET or AF_INET6, network address, prefix. */
typedef struct hb_http_cidr_s {
    int family;
    uint8_t addr[16];
    unsigned prefix;
} hb_http_cidr_t;

/* Parses "10.20.0.0/16, fd00::/8, 192.0.2.7" (a bare address is one host;
 * spaces around elements are ignored; NULL or blank: none). A bad element is
 * quoted in errstr: "\"10.0.0.0/33\": prefix length must be a number 0..32".
 * Bits set after the prefix (10.20.1.0/16) are refused as a likely typo.
 * On success *out (caller frees; NULL when none) holds *cnt entries. */
int hb_http_cidrs_parse(const char *text, hb_http_cidr_t **out, size_t *cnt, char *errstr,
                        size_t errstr_size) HB_MUSTCHECK;

/* h's policy for a numeric address, as applied to every connection: 0 when
 * it may be connected to, 1 when refused (why: "loopback", "private", ...),
 * -1 when ip is not a numeric address. */
int hb_http_address_check(const hb_http_t *h, const char *ip, char *why,
                          size_t why_size) HB_MUSTCHECK;

/* Retry-After value (delta seconds or HTTP date) as seconds from now_s,
 * bounded to [0, 86400]; -1 when unparsable. */
long long hb_http_parse_retry_after(const char *value, int64_t now_s);

#endif
