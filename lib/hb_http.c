/*
 * HTTP delivery engine: many webhook requests in flight from one thread on
 * libcurl's multi interface.
 *
 * The design is simple: a request becomes a transfer (hb_http_xfer_t) that
 * owns everything curl is handed for it (URL, header list, body, error buffer,
 * response buffer), attached to its easy handle with CURLOPT_PRIVATE. A
 * transfer moves through named places and nowhere else:
 *
 *   early list  refused up front (bad URL, scheme) or set-up failure;
 *               completed on the next hb_http_run(), never inside submit
 *   host queue  waiting for a slot; one FIFO per host key (scheme://host:port),
 *               and the same transfers in one global FIFO in arrival order
 *   running     added to the multi handle
 *
 * A host with waiting transfers and a free per-host slot sits in the global
 * ready FIFO; refill pops hosts from it round-robin while fewer than
 * max_in_flight transfers run. A slow host holds at most max_host_connections
 * slots; its backlog waits in its own queue and never takes a global slot.
 *
 * The host queues are bounded (max_host_queue) and so is the time spent in
 * them (max_queue_wait_ms). Since every transfer gets the same wait bound,
 * the global arrival-order FIFO's head is always the next to expire, and
 * that head is also the head of its own host's queue: expiry pops heads and
 * never searches. A transfer over either bound goes to the early list with
 * not_sent set and completes like a refused one; the caller re-routes it.
 * So do the waiting transfers hb_http_divert and hb_http_withdraw take out
 * (withdraw unlinks from the middle of both lists: the order stays).
 *
 * Every finished transfer goes through hb_http_complete(): fill the result,
 * call done, free the transfer, return the easy handle to the free list,
 * refill. A handle gets the options of its transfer (hb_http_setup) before
 * each; before that it is reset and gets the options all transfers share
 * again (hb_http_setup_handle) unless its last transfer succeeded without
 * a new connection: curl 7.88 keeps, per handle and for its whole life,
 * the count of requests it sent again after a kept-alive connection
 * turned out closed, and fails the sixth at once ("Connection died, tried
 * 5 times before giving up", and counts from 0 again). Most such resends
 * open a connection; one that took another kept connection of the host
 * is still counted on a clean handle, so after five of those the next
 * closed connection goes to hb_http_resend (a fresh connection, then a
 * reset) instead of curl's own resend on a kept one: a connection opened
 * sooner, nothing lost (review 84: an endpoint dropping every other
 * request on a kept connection, 15 requests in a row: 8 connections
 * opened either way). Nothing else of a transfer stays on the handle for
 * the next (review 84 compared what endpoints received with and without
 * the reset). The reset and the shared options were 4.5 % of the
 * engine's instructions per request (callgrind, bench_http, 32
 * connections: 90,800 against 86,700; the reference client 69,000); on a
 * steady stream over kept connections no handle is reset. Connections live
 * in the multi handle's pool and are reused across easy handles. A
 * transfer's URL is handed to curl parsed (CURLOPT_CURLU), one parsed URL
 * shared by the running transfers to it: curl's own parse of the text at every start cost
 * about 9 % of the engine's requests per CPU-second (bench_http, 32
 * connections: 57,700-59,400 against 53,000-55,200; in make bench 0.88-0.95
 * of the reference client, once 1.02 beside a slow reference run, instead
 * of 0.81-0.86). End to end that is within the noise: 30,100-34,500
 * deliveries per dispatcher CPU-second against 28,000-31,700. Not setting
 * the header callback, the TLS share or the timeout per request (each tried
 * alone) bought nothing measurable.
 *
 * curl is driven with curl_multi_poll + curl_multi_perform. Driving it by
 * socket events instead (curl_multi_socket_action and epoll) was measured
 * and is slower here: curl 7.88 still makes its two poll(0) calls per
 * request, and epoll_ctl adds about two more (bench_http: 44,000 against
 * 53,000 requests per CPU-second). A second try without that epoll_ctl
 * (each connection registered once for its life, EPOLLIN kept while it
 * idles in curl's pool, EPOLLOUT only while curl asks, a socket that fires
 * while curl does not track it muted) took the system calls per request
 * from 5.1 to 4.1, and per delivery in the dispatcher from 4.8 to 4.2: gone
 * are the poll(0) curl_multi_perform makes for every running transfer on
 * every pass; the two of curl itself stay (the liveness check of a pooled
 * connection, the first read after sending). Yet the CPU per request did
 * not move: curl's socket_action path spends in user time what the polls
 * saved (bench_http, alternating, five runs each: 57,200-60,500 and one
 * at 46,400, against 57,900-59,200 and one at 51,000 requests per
 * CPU-second; end to end 31,300 33,100 32,000 against 30,500 34,500 30,800
 * deliveries per dispatcher CPU-second). It is not kept.
 *
 * The resolved address of every new connection is checked in the
 * CURLOPT_OPENSOCKETFUNCTION callback (loopback, private, link-local,
 * multicast, ... refused unless allow_private_networks or inside an allowed
 * CIDR); the check is on the address actually connected to, so a name that
 * resolves to a public address once and a private one later (DNS rebinding)
 * is still caught. curl only reports "couldn't connect", so the callback
 * records the refusal (address and kind) on the transfer. A kept connection
 * is reused without a lookup, so it is reused for at most
 * connection_max_age_ms (curl closes it when a request would take it, never
 * while one runs on it); curl keeps a name's answer no longer (at most its
 * 60 s). Without that bound a steady stream kept its first connections,
 * and a moved name's old address, for as long as the endpoint kept them. Proxies from the
 * environment are disabled, since the check is meaningless behind a proxy.
 * Header values are never logged (auth values are secrets).
 *
 * TLS options are set on every transfer, never left to curl's defaults:
 * peer and host verification on, TLS 1.2 at least, the CA file (replacing
 * the system bundle and CA path) and the client certificate when configured.
 *
 * Thread: the owning main loop thread only, except hb_http_wakeup().
 */
#include "hb_http.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "hb_hash.h"
#include "hb_log.h"

/* Out of open files, each transfer would say so (HB_HTTP_NO_FILES). */
static hb_log_limit_t log_no_files = HB_LOG_LIMIT_NOTE("\"not sent: ... out of open files\"", "");

#define HB_HTTP_DEFAULT_TIMEOUT_MS 10000
#define HB_HTTP_RETRY_AFTER_MAX_S 86400 /* Retry-After is bounded to one day */

#define HB_HTTP_SHARES 1024

/* A host none of whose requests finished for this long is not keeping up
 * (hung or slow): its queue's bytes are bounded (max_host_queue_bytes), and
 * it takes no more of the last quarter of the max_in_flight slots. */
#define HB_HTTP_LAG_MS 1000

/* A host with nothing running or waiting is remembered this long after its
 * last request (whether it answered, whether its name resolved), if one of
 * its requests was ever answered; else it is forgotten at once. */
#define HB_HTTP_HOST_MEMORY_MS (10 * 60 * 1000)

typedef struct hb_http_host_s hb_http_host_t;
typedef struct hb_http_xfer_s hb_http_xfer_t;

/* A URL parsed once for curl (CURLOPT_CURLU), shared by the running
 * transfers to it; freed with the last of them. */
typedef struct hb_http_curlu_s {
    CURLU *u;
    size_t refs;
    char *url;
} hb_http_curlu_t;

struct hb_http_host_s {
    hb_http_host_t *ready_next;
    char *key;            /* "scheme://host:port" */
    unsigned share;       /* its TLS session share: h->shares[share] */
    size_t in_flight;     /* running transfers to this host */
    size_t waiting;       /* transfers in its queue */
    size_t waiting_bytes; /* and the bytes of their bodies */
    hb_http_xfer_t *wait_head, *wait_tail;
    int on_ready;          /* in h->ready list (1), or in h->lookup_wait (2) */
    int64_t progress_mono; /* last completion, or the start of its first running transfer */
    int64_t done_mono;     /* last answer: a completion with an HTTP status (0: none yet) */
    int64_t failed_mono;   /* last completion without an answer (timeout, connection error) */
    int64_t slow_until;    /* a request gave up waiting: known slow until then */
    double rate;           /* completions per second over the last window; 0: not known yet */
    int64_t win_start;     /* the current window (monotonic ms) and its completions */
    size_t win_done;
    size_t expiring; /* hb_http_expire: its requests leaving the queue in this pass */
    int named;       /* its name resolved (an IP literal: always); hb_http_may_start */
};

struct hb_http_xfer_s {
    hb_http_xfer_t *next;                /* host queue or early list */
    hb_http_xfer_t *run_prev, *run_next; /* running list */
    hb_http_xfer_t *wq_prev, *wq_next;   /* global wait FIFO (while in a host queue) */
    int64_t queued_mono;                 /* when it entered its host queue */
    hb_http_not_sent_t not_sent;         /* early list: why it was never sent */
    double ns_pace;                      /* ... and its host's pace then (hb_http_result_t) */
    size_t ns_waiting;
    hb_http_t *h;
    hb_http_host_t *host;   /* NULL on the early list */
    CURL *easy;             /* set while running */
    hb_http_curlu_t *curlu; /* its parsed URL, from setup on (NULL: curl parses url) */
    hb_http_method_t method;
    char *url;
    char *host_name;            /* for error texts */
    struct curl_slist *headers; /* one allocation: the nodes, then the lines */
    size_t headers_size;
    char *body;
    size_t body_len;
    int body_borrowed; /* the caller's: not freed here */
    long long timeout_ms;
    size_t max_response_bytes;
    hb_http_done_cb *done;
    void *opaque;

    char *resp;
    size_t resp_len, resp_cap;
    size_t hdr_count, hdr_bytes; /* of the current response */
    int hdr_overflow;            /* too many or too large: transfer aborted */
    size_t body_read;            /* bytes of response bodies read */
    int body_overflow;           /* over HB_HTTP_MAX_RESPONSE_BODY_BYTES: aborted */
    int hdr_at_start;            /* the next header line is a response's status line */
    int line_status;             /* the status on the current response's status line */
    int head_status;             /* that of the final (non-1xx) response whose headers came
                                  * whole, up to their blank line; 0 until then */
    int resent;                  /* sent again on a fresh connection (hb_http_resend) */
    long long retry_after_s;
    /* Retry-After as an HTTP date (epoch s; 0: absent), and the response's
     * Date as sent ("": absent): both the endpoint's clock. The Date is
     * parsed only for such a Retry-After (nearly every answer has one:
     * parsing each cost every delivery a date parse) */
    long long retry_after_at;
    char said[40];
    int addr_refused;      /* set by the opensocket callback */
    int addr_allowed;      /* ... and this when it let an address through */
    int socket_errno;      /* ... and socket(2)'s errno when that failed (curl
                            * leaves CURLINFO_OS_ERRNO 0 then) */
    const char *addr_kind; /* "loopback", "private", ... (static text) */
    int addr_family;
    char addr_text[INET6_ADDRSTRLEN];
    int aborted;
    int lookup;        /* counted in h->lookups: started while its host was not named */
    int kept_new;      /* counted in h->kept_new: a kept slot, its host never answered */
    int cert_asked;    /* the server asked for a client certificate (hb_http_tls_msg) */
    int early_refused; /* early list: refused by policy */
    int early_code;    /* early list: CURLcode when not a refusal */
    char early_error[200];
    int64_t started_ms, started_mono;
    char errbuf[CURL_ERROR_SIZE];
};

struct hb_http_s {
    CURLM *multi;
    /* TLS sessions and resolved names shared by every easy handle: a new
     * connection to a host resumes the session of an earlier one (curl keeps
     * them per easy handle otherwise, so a pool of handles resumed almost
     * nothing). A share keeps only 8 sessions in curl 7.88 (least recently
     * used go), so hosts are spread over HB_HTTP_SHARES shares by their key:
     * about 8,000 hosts keep their sessions. The name cache is split the same
     * way because curl prunes it whole after every transfer (a walk over
     * every entry, each kept 60 s): one cache for the multi handle held every
     * host. make bench's https part with 3,000 hosts, where every delivery
     * opened a connection: 802 deliveries per dispatcher CPU-second with 128
     * shares and the multi's name cache (2,759 of 13,290 handshakes resumed),
     * 1,330 with 1,024 shares (all resumed), 1,609 with the names in them too;
     * with 1,000 hosts 13,889 against 16,129 (889 and 1,000 of 1,000
     * resumed). One thread uses them: no lock callbacks. */
    CURLSH *shares[HB_HTTP_SHARES];
    hb_http_conf_t conf; /* its strings point at the copies below */
    char *user_agent;
    char *ca_file, *tls_client_cert, *tls_client_key;
    hb_http_cidr_t *cidrs; /* HOOKBRIDGE_ALLOWED_CIDRS */
    size_t cidrs_cnt;
    /* easy handles between transfers; a clean one (no new connection, no
     * resend in its last transfer) is reused as it is (hb_http_start) */
    struct hb_http_easy {
        CURL *easy;
        int clean;
    } * free_easy;
    size_t free_cnt, free_cap;
    hb_hash_t hosts;  /* key -> hb_http_host_t* */
    hb_hash_t curlus; /* URL -> hb_http_curlu_t*, while a transfer uses it */
    hb_http_host_t *ready_head, *ready_tail;
    /* hosts whose turn waits for one of the lookups (hb_http_may_start),
     * linked by ready_next: out of the ready list, so that refill does not
     * walk them at every completion */
    hb_http_host_t *lookup_wait, *lookup_wait_tail;
    hb_http_xfer_t *early_head, *early_tail;
    hb_http_xfer_t *wq_head, *wq_tail; /* every waiting transfer, oldest first */
    hb_http_xfer_t *running;
    size_t in_flight, queued;
    size_t lookups;     /* running transfers to hosts not named (hb_http_may_start) */
    size_t kept_new;    /* kept slots taken by hosts that never answered (ditto) */
    int64_t sweep_mono; /* hb_http_sweep's last walk */
    int closing;
};

static void hb_http_refill(hb_http_t *h);

/* How many transfers to hosts whose name has not resolved run at once
 * (hb_http_may_start). */
static size_t hb_http_max_lookups(const hb_http_t *h) {
    size_t n = (size_t)h->conf.max_in_flight / 8;
    return n < 4 ? 4 : n;
}

/* ------------------------------------------------------------------ */
/* Address policy                                                      */

/* What kind of non-public IPv4 address a is, or NULL when public. */
static const char *hb_http_v4_kind(const uint8_t a[4]) {
    if (a[0] == 0)
        return "unspecified"; /* 0/8 "this network" */
    if (a[0] == 127)
        return "loopback";
    if (a[0] == 10 || (a[0] == 172 && (a[1] & 0xf0) == 16) || (a[0] == 192 && a[1] == 168))
        return "private"; /* 10/8, 172.16/12, 192.168/16 */
    if (a[0] == 100 && (a[1] & 0xc0) == 64)
        return "shared (carrier-grade NAT)"; /* 100.64/10 */
    if (a[0] == 169 && a[1] == 254)
        return "link-local"; /* 169.254/16, cloud metadata among them */
    if (a[0] == 168 && a[1] == 63 && a[2] == 129 && a[3] == 16)
        return "cloud host service"; /* Azure's WireServer, reached from every VM */
    if (a[0] == 192 && a[1] == 0 && a[2] == 0)
        return "reserved"; /* 192.0.0/24, IETF protocol assignments */
    if (a[0] == 198 && (a[1] & 0xfe) == 18)
        return "reserved"; /* 198.18/15, benchmarking: often used inside networks */
    if (a[0] >= 224 && a[0] <= 239)
        return "multicast"; /* 224/4 */
    if (a[0] >= 240)
        return "reserved"; /* 240/4 and broadcast */
    return NULL;
}

/* The IPv4 address inside an IPv4-mapped (::ffff:0:0/96) or NAT64
 * (64:ff9b::/96) IPv6 address, or NULL: a connection to it reaches that
 * IPv4 address, so both the refusal and the allowlist look at it. */
static const uint8_t *hb_http_v6_embedded_v4(const uint8_t a[16]) {
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    if (!memcmp(a, mapped, 12) || !memcmp(a, nat64, 12))
        return a + 12;
    return NULL;
}

static const char *hb_http_v6_kind(const uint8_t a[16]) {
    static const uint8_t zero[16];
    const uint8_t *v4 = hb_http_v6_embedded_v4(a);
    if (!memcmp(a, zero, 15) && a[15] == 0)
        return "unspecified"; /* :: */
    if (!memcmp(a, zero, 15) && a[15] == 1)
        return "loopback"; /* ::1 */
    if (v4)
        return hb_http_v4_kind(v4);
    if (!memcmp(a, zero, 12))
        return "IPv4-compatible (deprecated)"; /* ::/96: ::a.b.c.d */
    if (a[0] == 0 && a[1] == 0x64 && a[2] == 0xff && a[3] == 0x9b && a[4] == 0 && a[5] == 1)
        return "NAT64 local-use"; /* 64:ff9b:1::/48: the IPv4 inside is anywhere */
    if (a[0] == 0x20 && a[1] == 0x02 && hb_http_v4_kind(a + 2))
        return hb_http_v4_kind(a + 2); /* 2002::/16, 6to4 of a non-public IPv4 */
    if ((a[0] & 0xfe) == 0xfc)
        return "unique local"; /* fc00::/7 */
    if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
        return "link-local"; /* fe80::/10 */
    if (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0)
        return "site-local"; /* fec0::/10, deprecated */
    if (a[0] == 0xff)
        return "multicast"; /* ff00::/8 */
    return NULL;
}

int hb_http_address_is_private(const char *ip) {
    uint8_t a[16];
    if (inet_pton(AF_INET, ip, a) == 1)
        return hb_http_v4_kind(a) != NULL;
    if (inet_pton(AF_INET6, ip, a) == 1)
        return hb_http_v6_kind(a) != NULL;
    return -1;
}

/* Does the first `bits` bits of a equal those of b? */
static int hb_http_prefix_eq(const uint8_t *a, const uint8_t *b, unsigned bits) {
    size_t bytes = bits / 8;
    unsigned rest = bits % 8;
    if (bytes && memcmp(a, b, bytes))
        return 0;
    if (rest) {
        uint8_t mask = (uint8_t)(0xffu << (8 - rest));
        if ((a[bytes] & mask) != (b[bytes] & mask))
            return 0;
    }
    return 1;
}

static int hb_http_cidrs_match(const hb_http_cidr_t *cidrs, size_t cnt, int family,
                               const uint8_t *a) {
    for (size_t i = 0; i < cnt; i++)
        if (cidrs[i].family == family && hb_http_prefix_eq(a, cidrs[i].addr, cidrs[i].prefix))
            return 1;
    return 0;
}

/* One element of the allowlist ("10.20.0.0/16", "fd00::/8", "192.0.2.7"),
 * trimmed; its text is quoted in every error. */
static int hb_http_cidr_parse_one(const char *elem, hb_http_cidr_t *c, char *errstr,
                                  size_t errstr_size) {
    char addr[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(elem, '/');
    size_t alen = slash ? (size_t)(slash - elem) : strlen(elem);
    unsigned max, prefix;
    memset(c, 0, sizeof(*c));
    if (alen == 0 || alen >= sizeof(addr)) {
        hb_seterr(errstr, errstr_size, "\"%.64s\" is not an IPv4 or IPv6 address/prefix", elem);
        return -1;
    }
    memcpy(addr, elem, alen);
    addr[alen] = '\0';
    if (inet_pton(AF_INET, addr, c->addr) == 1) {
        c->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, addr, c->addr) == 1) {
        c->family = AF_INET6;
        max = 128;
    } else {
        hb_seterr(errstr, errstr_size, "\"%.64s\": \"%s\" is not an IPv4 or IPv6 address", elem,
                  addr);
        return -1;
    }
    prefix = max; /* a bare address is that one host */
    if (slash) {
        const char *p = slash + 1;
        if (!*p || strlen(p) > 3 || strspn(p, "0123456789") != strlen(p)) {
            hb_seterr(errstr, errstr_size, "\"%.64s\": prefix length must be a number 0..%u", elem,
                      max);
            return -1;
        }
        prefix = 0;
        for (; *p; p++)
            prefix = prefix * 10 + (unsigned)(*p - '0');
        if (prefix > max) {
            hb_seterr(errstr, errstr_size, "\"%.64s\": prefix length must be a number 0..%u", elem,
                      max);
            return -1;
        }
    }
    c->prefix = prefix;
    /* Host bits set usually means a typo (10.20.1.0/16); say what was meant. */
    uint8_t net[16];
    memset(net, 0, sizeof(net));
    memcpy(net, c->addr, prefix / 8);
    if (prefix % 8)
        net[prefix / 8] = (uint8_t)(c->addr[prefix / 8] & (0xffu << (8 - prefix % 8)));
    if (memcmp(net, c->addr, max / 8)) {
        char want[INET6_ADDRSTRLEN];
        if (!inet_ntop(c->family, net, want, sizeof(want)))
            hb_seterr(want, sizeof(want), "?");
        hb_seterr(errstr, errstr_size,
                  "\"%.64s\" has bits set after the prefix (did you mean %s/%u?)", elem, want,
                  prefix);
        return -1;
    }
    return 0;
}

int hb_http_cidrs_parse(const char *text, hb_http_cidr_t **out, size_t *cnt, char *errstr,
                        size_t errstr_size) {
    hb_http_cidr_t *cidrs = NULL;
    size_t n = 0;
    const char *p = text ? text : "";
    *out = NULL;
    *cnt = 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (!*p)
        return 0; /* empty: no allowlist */
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char elem[128];
        while (len && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len == 0) {
            hb_seterr(errstr, errstr_size, "element %zu is empty", n + 1);
            goto fail;
        }
        if (len >= sizeof(elem)) {
            hb_seterr(errstr, errstr_size, "\"%.64s...\" is not an IPv4 or IPv6 address/prefix", p);
            goto fail;
        }
        memcpy(elem, p, len);
        elem[len] = '\0';
        cidrs = hb_realloc(cidrs, (n + 1) * sizeof(*cidrs));
        if (hb_http_cidr_parse_one(elem, &cidrs[n], errstr, errstr_size) < 0)
            goto fail;
        n++;
        if (!end)
            break;
        p = end + 1;
    }
    *out = cidrs;
    *cnt = n;
    return 0;
fail:
    free(cidrs);
    return -1;
}

/* The policy for one address: NULL when it may be connected to, else the
 * kind of address that is refused ("loopback", "private", ...). */
static const char *hb_http_policy(const hb_http_t *h, int family, const uint8_t *a) {
    const char *kind;
    const uint8_t *v4 = NULL;
    if (family == AF_INET) {
        kind = hb_http_v4_kind(a);
    } else if (family == AF_INET6) {
        kind = hb_http_v6_kind(a);
        v4 = hb_http_v6_embedded_v4(a);
    } else {
        return "not an IP address"; /* nothing a webhook needs */
    }
    if (!kind || h->conf.allow_private_networks)
        return NULL;
    if (hb_http_cidrs_match(h->cidrs, h->cidrs_cnt, family, a) ||
        (v4 && hb_http_cidrs_match(h->cidrs, h->cidrs_cnt, AF_INET, v4)))
        return NULL;
    return kind;
}

int hb_http_address_check(const hb_http_t *h, const char *ip, char *why, size_t why_size) {
    uint8_t a[16];
    int family;
    if (inet_pton(AF_INET, ip, a) == 1)
        family = AF_INET;
    else if (inet_pton(AF_INET6, ip, a) == 1)
        family = AF_INET6;
    else
        return -1;
    const char *kind = hb_http_policy(h, family, a);
    if (kind)
        hb_seterr(why, why_size, "%s", kind);
    return kind != NULL;
}

static curl_socket_t hb_http_opensocket(void *clientp, curlsocktype purpose,
                                        struct curl_sockaddr *address) {
    hb_http_xfer_t *x = clientp;
    struct sockaddr_storage ss;
    const uint8_t *a = NULL;
    const char *kind;
    /* an address: the name resolved, and its host's other requests may
     * start (the refill at the end of hb_http_run_fds) */
    if (x->host)
        x->host->named = 1;
    if (x->lookup) {
        x->lookup = 0;
        x->h->lookups--;
    }
    memset(&ss, 0, sizeof(ss));
    memcpy(&ss, &address->addr,
           address->addrlen < sizeof(ss) ? (size_t)address->addrlen : sizeof(ss));
    if (ss.ss_family == AF_INET)
        a = (const uint8_t *)&((const struct sockaddr_in *)&ss)->sin_addr;
    else if (ss.ss_family == AF_INET6)
        a = ((const struct sockaddr_in6 *)&ss)->sin6_addr.s6_addr;
    kind = hb_http_policy(x->h, ss.ss_family, a);
    if (kind) {
        x->addr_refused = 1;
        x->addr_kind = kind;
        if (!a || !inet_ntop(ss.ss_family, a, x->addr_text, sizeof(x->addr_text)))
            hb_seterr(x->addr_text, sizeof(x->addr_text), "(family %d)", (int)ss.ss_family);
        x->addr_family = ss.ss_family;
        return CURL_SOCKET_BAD;
    }
    (void)purpose;
    x->addr_allowed = 1;
    curl_socket_t fd = socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
    if (fd == CURL_SOCKET_BAD)
        x->socket_errno = errno;
    return fd;
}

/* ------------------------------------------------------------------ */
/* Response callbacks                                                  */

long long hb_http_parse_retry_after(const char *value, int64_t now_s) {
    while (*value == ' ' || *value == '\t')
        value++;
    if (!*value)
        return -1;
    if (*value >= '0' && *value <= '9') {
        long long s = 0;
        const char *p = value;
        for (; *p >= '0' && *p <= '9'; p++) {
            s = s * 10 + (*p - '0');
            if (s > HB_HTTP_RETRY_AFTER_MAX_S)
                s = HB_HTTP_RETRY_AFTER_MAX_S; /* saturate, keep scanning */
        }
        while (*p == ' ' || *p == '\t')
            p++;
        return *p ? -1 : s;
    }
    time_t t = curl_getdate(value, NULL);
    if (t == (time_t)-1)
        return -1;
    long long d = (long long)t - (long long)now_s;
    if (d < 0)
        d = 0;
    if (d > HB_HTTP_RETRY_AFTER_MAX_S)
        d = HB_HTTP_RETRY_AFTER_MAX_S;
    return d;
}

/* An HTTP date header's value (from after "name:") in value, trimmed. */
static void header_value(const char *data, size_t n, size_t skip, char *value, size_t size) {
    size_t len = n - skip;
    if (len >= size)
        len = size - 1;
    memcpy(value, data + skip, len);
    value[len] = '\0';
    while (len > 0 && (value[len - 1] == '\r' || value[len - 1] == '\n' || value[len - 1] == ' ' ||
                       value[len - 1] == '\t'))
        value[--len] = '\0';
}

static size_t hb_http_on_header(char *data, size_t size, size_t nitems, void *userdata) {
    hb_http_xfer_t *x = userdata;
    size_t n = size * nitems;
    static const char name[] = "retry-after:", date[] = "date:";
    char value[128];
    if (x->hdr_at_start && n >= 5 && !memcmp(data, "HTTP/", 5)) {
        x->retry_after_s = -1; /* a new response (after a 1xx) starts over */
        x->retry_after_at = 0;
        x->said[0] = '\0';
        x->hdr_count = x->hdr_bytes = 0;
        x->hdr_at_start = 0;
        const char *sp = memchr(data, ' ', n); /* "HTTP/1.1 200 OK" */
        x->line_status = 0;
        for (size_t i = sp ? (size_t)(sp - data) + 1 : n; i < n && data[i] >= '0' && data[i] <= '9';
             i++)
            x->line_status = x->line_status < 1000 ? x->line_status * 10 + (data[i] - '0') : 1000;
    } else if ((n == 2 && data[0] == '\r' && data[1] == '\n') || (n == 1 && data[0] == '\n')) {
        x->hdr_at_start = 1; /* the blank line ending a response's headers */
        if (x->line_status >= 200)
            x->head_status = x->line_status;
        /* A Retry-After date is the endpoint's clock: counted from its Date
         * (RFC 9110 10.2.2), not from ours, which may be minutes off. */
        time_t said = x->retry_after_at > 0 && x->said[0] ? curl_getdate(x->said, NULL) : 0;
        if (said > 0) {
            long long d = x->retry_after_at - (long long)said;
            x->retry_after_s = d < 0                           ? 0
                               : d > HB_HTTP_RETRY_AFTER_MAX_S ? HB_HTTP_RETRY_AFTER_MAX_S
                                                               : d;
        }
    } else if (++x->hdr_count > HB_HTTP_MAX_RESPONSE_HEADERS ||
               (x->hdr_bytes += n) > HB_HTTP_MAX_RESPONSE_HEADER_BYTES) {
        x->hdr_overflow = 1;
        return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
    } else if (n > sizeof(name) - 1 && !strncasecmp(data, name, sizeof(name) - 1)) {
        header_value(data, n, sizeof(name) - 1, value, sizeof(value));
        x->retry_after_s = hb_http_parse_retry_after(value, hb_wall_ms() / 1000);
        const char *v = value + strspn(value, " \t");
        time_t t = *v && (*v < '0' || *v > '9') ? curl_getdate(v, NULL) : (time_t)-1;
        x->retry_after_at = t > 0 ? (long long)t : 0;
    } else if (n > sizeof(date) - 1 && !strncasecmp(data, date, sizeof(date) - 1)) {
        header_value(data, n, sizeof(date) - 1, value, sizeof(value));
        hb_copy_str(x->said, sizeof(x->said), value + strspn(value, " \t"));
    }
    return n;
}

static size_t hb_http_on_body(char *data, size_t size, size_t nmemb, void *userdata) {
    hb_http_xfer_t *x = userdata;
    size_t n = size * nmemb;
    size_t take = 0;
    if ((x->body_read += n) > HB_HTTP_MAX_RESPONSE_BODY_BYTES) {
        x->body_overflow = 1;
        return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
    }
    if (x->resp_len < x->max_response_bytes)
        take = x->max_response_bytes - x->resp_len;
    if (take > n)
        take = n;
    if (take > 0) {
        if (x->resp_len + take + 1 > x->resp_cap) {
            size_t cap = x->resp_cap ? x->resp_cap * 2 : 1024;
            if (cap < x->resp_len + take + 1)
                cap = x->resp_len + take + 1;
            if (cap > x->max_response_bytes + 1)
                cap = x->max_response_bytes + 1;
            x->resp = hb_realloc(x->resp, cap);
            x->resp_cap = cap;
        }
        memcpy(x->resp + x->resp_len, data, take);
        x->resp_len += take;
        x->resp[x->resp_len] = '\0';
    }
    return n; /* the rest is discarded */
}

/* ------------------------------------------------------------------ */
/* Hosts                                                               */

/* Is name (a URL's host part) an IP address, which needs no lookup? */
static int hb_http_name_is_ip(const char *name) {
    uint8_t a[16];
    char buf[INET6_ADDRSTRLEN + 2];
    size_t n = name ? strlen(name) : 0;
    if (n >= 2 && name[0] == '[' && name[n - 1] == ']' && n - 2 < sizeof(buf)) {
        memcpy(buf, name + 1, n - 2);
        buf[n - 2] = '\0';
        return inet_pton(AF_INET6, buf, a) == 1;
    }
    return n && (inet_pton(AF_INET, name, a) == 1 || inet_pton(AF_INET6, name, a) == 1);
}

static int hb_http_host_idle(const hb_http_host_t *host) {
    return !host->in_flight && !host->wait_head && !host->on_ready;
}

/* The host of key (name: its host name), made when new. A remembered idle
 * host starts a new pace (as a new one would): the gap was no slowness. */
static hb_http_host_t *hb_http_host_get(hb_http_t *h, const char *key, const char *name) {
    hb_http_host_t *host = hb_hash_get(&h->hosts, key);
    if (host) {
        if (hb_http_host_idle(host)) {
            host->rate = 0;
            host->win_start = 0;
            host->win_done = 0;
        }
        return host;
    }
    host = hb_calloc(1, sizeof(*host));
    host->key = hb_strdup(key);
    host->share = (unsigned)(hb_hash_str(key) % HB_HTTP_SHARES);
    host->named = hb_http_name_is_ip(name);
    (void)hb_hash_put(&h->hosts, key, host);
    return host;
}

static void hb_http_host_free(hb_http_t *h, hb_http_host_t *host) {
    hb_hash_del(&h->hosts, hb_hash_find(&h->hosts, host->key));
    free(host->key);
    free(host);
}

/* Once nothing refers to the host: forgotten if it never answered, else
 * remembered (hb_http_may_start) until hb_http_sweep. */
static void hb_http_host_release(hb_http_t *h, hb_http_host_t *host) {
    if (!hb_http_host_idle(host) || (host->done_mono && !h->closing))
        return;
    hb_http_host_free(h, host);
}

int hb_http_forget_host(hb_http_t *h, const char *key) {
    hb_http_host_t *host = hb_hash_get(&h->hosts, key);
    if (!host || !hb_http_host_idle(host))
        return 0;
    hb_http_host_free(h, host);
    return 1;
}

/* Forgets the hosts idle for HB_HTTP_HOST_MEMORY_MS; a walk every 10 s. */
static void hb_http_sweep(hb_http_t *h, int64_t now) {
    hb_hash_slot_t *s;
    size_t pos = 0;
    if (now - h->sweep_mono < 10000)
        return;
    h->sweep_mono = now;
    while ((s = hb_hash_each(&h->hosts, &pos)) != NULL) {
        hb_http_host_t *host = s->val;
        if (hb_http_host_idle(host) && now - host->progress_mono > HB_HTTP_HOST_MEMORY_MS &&
            host->slow_until <= now)
            hb_http_host_free(h, host);
    }
}

/* A transfer to host finished at now: its pace, in windows of at least 1 s
 * (so a host answering in bursts is judged on a second, not one burst). */
static void hb_http_host_done(hb_http_host_t *host, int64_t now, int answered) {
    host->progress_mono = now;
    if (answered) /* a timeout or a reset is no answer (hb_http_may_start) */
        host->done_mono = now;
    else
        host->failed_mono = now;
    if (!host->win_start)
        host->win_start = now;
    host->win_done++;
    if (now - host->win_start >= 1000) {
        host->rate = (double)host->win_done * 1000.0 / (double)(now - host->win_start);
        host->win_start = now;
        host->win_done = 0;
    }
}

/* Expected wait, in ms, of one more request to host at its pace (-1: pace
 * not known yet). */
static long long hb_http_host_wait_ms(const hb_http_host_t *host) {
    if (host->rate <= 0)
        return -1;
    return (long long)((double)(host->waiting + 1) * 1000.0 / host->rate);
}

/* x is not sent because of its host: the host's pace and the requests that
 * stay ahead of x in its queue (at most what its pace sends within
 * max_queue_wait_ms) go with it (hb_http_result_t host_pace). A
 * host that has not answered for a while has no pace; one whose first
 * window is not over yet has that of the part of it that is, if half a
 * second long (a burst held max_queue_wait must not leave unpaced only
 * because the host had not finished its first second yet). */
static void hb_http_note_pace(hb_http_xfer_t *x, const hb_http_host_t *host, size_t ahead,
                              int64_t now) {
    double pace = host->rate;
    if (pace <= 0 && host->win_start && host->win_done >= 2 && now - host->win_start >= 500)
        pace = (double)host->win_done * 1000.0 / (double)(now - host->win_start);
    if (pace > 0 && !(host->in_flight && now - host->progress_mono > HB_HTTP_LAG_MS)) {
        /* each of those is sent or leaves within max_queue_wait_ms */
        double most = pace * (double)x->h->conf.max_queue_wait_ms / 1000.0;
        x->ns_pace = pace;
        x->ns_waiting =
            x->h->conf.max_queue_wait_ms > 0 && (double)ahead > most ? (size_t)most : ahead;
    }
}

static void hb_http_ready_push(hb_http_t *h, hb_http_host_t *host) {
    if (host->on_ready || !host->wait_head ||
        host->in_flight >= (size_t)h->conf.max_host_connections)
        return;
    host->on_ready = 1;
    host->ready_next = NULL;
    if (h->ready_tail)
        h->ready_tail->ready_next = host;
    else
        h->ready_head = host;
    h->ready_tail = host;
}

static hb_http_host_t *hb_http_ready_pop(hb_http_t *h) {
    hb_http_host_t *host = h->ready_head;
    if (!host)
        return NULL;
    h->ready_head = host->ready_next;
    if (!h->ready_head)
        h->ready_tail = NULL;
    host->ready_next = NULL;
    host->on_ready = 0;
    return host;
}

static void hb_http_wait_push(hb_http_t *h, hb_http_host_t *host, hb_http_xfer_t *x) {
    x->next = NULL;
    if (host->wait_tail)
        host->wait_tail->next = x;
    else
        host->wait_head = x;
    host->wait_tail = x;
    host->waiting++;
    host->waiting_bytes += x->body_len;
    x->queued_mono = hb_mono_ms();
    x->wq_next = NULL;
    x->wq_prev = h->wq_tail;
    if (h->wq_tail)
        h->wq_tail->wq_next = x;
    else
        h->wq_head = x;
    h->wq_tail = x;
    h->queued++;
}

/* Takes x out of host's queue, where it follows prev (NULL: x is the head). */
static void hb_http_wait_unlink(hb_http_t *h, hb_http_host_t *host, hb_http_xfer_t *prev,
                                hb_http_xfer_t *x) {
    if (prev)
        prev->next = x->next;
    else
        host->wait_head = x->next;
    if (host->wait_tail == x)
        host->wait_tail = prev;
    host->waiting--;
    host->waiting_bytes -= x->body_len;
    x->next = NULL;
    if (x->wq_prev)
        x->wq_prev->wq_next = x->wq_next;
    else
        h->wq_head = x->wq_next;
    if (x->wq_next)
        x->wq_next->wq_prev = x->wq_prev;
    else
        h->wq_tail = x->wq_prev;
    x->wq_prev = x->wq_next = NULL;
    h->queued--;
}

static hb_http_xfer_t *hb_http_wait_pop(hb_http_t *h, hb_http_host_t *host) {
    hb_http_xfer_t *x = host->wait_head;
    if (x)
        hb_http_wait_unlink(h, host, NULL, x);
    return x;
}

/* ------------------------------------------------------------------ */
/* Transfers                                                           */

/* The parsed URL for x, shared with the other running transfers to the same
 * URL; NULL when it cannot be made (curl then parses x->url itself). */
static hb_http_curlu_t *hb_http_curlu_get(hb_http_t *h, const char *url) {
    hb_http_curlu_t *c = hb_hash_get(&h->curlus, url);
    if (!c) {
        CURLU *u = curl_url();
        if (!u || curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK) {
            curl_url_cleanup(u);
            return NULL;
        }
        c = hb_calloc(1, sizeof(*c));
        c->u = u;
        c->url = hb_strdup(url);
        (void)hb_hash_put(&h->curlus, url, c);
    }
    c->refs++;
    return c;
}

static void hb_http_curlu_put(hb_http_t *h, hb_http_curlu_t *c) {
    if (!c || --c->refs > 0)
        return;
    hb_hash_del(&h->curlus, hb_hash_find(&h->curlus, c->url));
    curl_url_cleanup(c->u);
    free(c->url);
    free(c);
}

static void hb_http_xfer_free(hb_http_xfer_t *x) {
    hb_http_curlu_put(x->h, x->curlu); /* curl copied it when the transfer started */
    if (x->headers)
        explicit_bzero(x->headers, x->headers_size); /* auth values are secrets */
    free(x->headers);
    free(x->url);
    free(x->host_name);
    if (!x->body_borrowed)
        free(x->body);
    free(x->resp);
    free(x);
}

static void hb_http_early_push(hb_http_t *h, hb_http_xfer_t *x) {
    x->next = NULL;
    if (h->early_tail)
        h->early_tail->next = x;
    else
        h->early_head = x;
    h->early_tail = x;
}

static void hb_http_refuse(hb_http_t *h, hb_http_xfer_t *x, const char *fmt, ...) HB_PRINTF(3, 4);
static void hb_http_refuse(hb_http_t *h, hb_http_xfer_t *x, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->early_error, sizeof(x->early_error), fmt, ap);
    va_end(ap);
    x->early_refused = 1;
    hb_http_early_push(h, x);
}

/* Sends x (detached from any host) to the early list as never sent. */
static void hb_http_not_sent(hb_http_t *h, hb_http_xfer_t *x, hb_http_not_sent_t why,
                             const char *fmt, ...) HB_PRINTF(4, 5);
static void hb_http_not_sent(hb_http_t *h, hb_http_xfer_t *x, hb_http_not_sent_t why,
                             const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->early_error, sizeof(x->early_error), fmt, ap);
    va_end(ap);
    x->not_sent = why;
    hb_http_early_push(h, x);
}

/* Did x's transfer end before curl had an address to connect to, its name
 * lookup still running (curl's resolver thread goes on alone)? */
static int hb_http_lookup_unfinished(const hb_http_xfer_t *x) {
    curl_off_t us = 0; /* set once the name resolved, an IP literal at once */
    return x->easy && curl_easy_getinfo(x->easy, CURLINFO_NAMELOOKUP_TIME_T, &us) == CURLE_OK &&
           us <= 0;
}

/* A socket this process could not open (EMFILE, ENFILE): an attempt not
 * made, no verdict on the endpoint (its circuit opened on failures that were
 * ours), said at warn (rate-limited) with the limit to change. */
static void hb_http_no_files(hb_http_result_t *res, int err) {
    struct rlimit rl;
    unsigned long long limit =
        getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (unsigned long long)rl.rlim_cur : 0;
    res->not_sent = HB_HTTP_NO_FILES;
    hb_seterr(res->error, sizeof(res->error),
              "not sent: this process is out of open files (%s; ulimit -n %llu): lower "
              "HOOKBRIDGE_MAX_CONNECTIONS or raise the limit",
              strerror(err), limit);
    hb_log_limited(&log_no_files, HB_LOG_WARN, NULL, "%s", res->error);
}

/* Fills the error text of a transfer that ended with a curl error. */
static void hb_http_describe(const hb_http_xfer_t *x, CURLcode rc, int64_t duration_ms,
                             hb_http_result_t *res) {
    long os_errno = 0;
    const char *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
    int interim = !x->head_status && x->line_status >= 100 && x->line_status <= 199;
    if (x->hdr_overflow) {
        hb_seterr(res->error, sizeof(res->error),
                  "response headers over the limit (%d headers, %d bytes): not read",
                  HB_HTTP_MAX_RESPONSE_HEADERS, HB_HTTP_MAX_RESPONSE_HEADER_BYTES);
        return;
    }
    if (x->body_overflow) {
        hb_seterr(res->error, sizeof(res->error),
                  "response body over the limit (%d bytes): not read to its end",
                  HB_HTTP_MAX_RESPONSE_BODY_BYTES);
        return;
    }
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT: {
        /* The connect timeout ran out only if no request went out: the
         * connection (TCP, then TLS) was never set up. Told apart by the
         * time the transfer took, in our milliseconds, it was also said of
         * requests curl ended up to a millisecond before the timeout by
         * our clock: 1 to 7 in 80 that an endpoint took and never answered
         * (review 84). A resend's fresh connection may have had less time
         * left than the connect timeout: for it the time taken still
         * tells which ran out. */
        long long cto = x->h->conf.connect_timeout_ms;
        curl_off_t sent_us = 0; /* when the request started to go out; 0: never */
        (void)curl_easy_getinfo(x->easy, CURLINFO_PRETRANSFER_TIME_T, &sent_us);
        int connect = cto > 0 && cto < x->timeout_ms && sent_us <= 0 &&
                      (!x->resent || duration_ms < x->timeout_ms);
        res->timed_out = 1;
        if (hb_http_lookup_unfinished(x))
            hb_seterr(res->error, sizeof(res->error),
                      "%stimeout after %lld ms resolving host %s (DNS)", connect ? "connect " : "",
                      connect ? cto : x->timeout_ms, x->host_name ? x->host_name : "?");
        else if (connect)
            hb_seterr(res->error, sizeof(res->error), "connect timeout after %lld ms", cto);
        else
            hb_seterr(res->error, sizeof(res->error), "timeout after %lld ms", x->timeout_ms);
        break;
    }
    case CURLE_COULDNT_RESOLVE_HOST: {
        /* Out of open files, a lookup fails too (curl's resolver thread
         * needs a socket pair, getaddrinfo a socket or /etc/hosts): every
         * endpoint named by a host name, once its name left curl's cache,
         * failed "could not resolve host", its circuit opened on a fault
         * that was ours. curl keeps the errno to itself: a socket tried now
         * tells (one that opens says nothing: the lookup's own failure). */
        int probe = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        int probe_errno = errno;
        if (probe >= 0)
            close(probe);
        else if (probe_errno == EMFILE || probe_errno == ENFILE) {
            hb_http_no_files(res, probe_errno);
            break;
        }
        hb_seterr(res->error, sizeof(res->error), "could not resolve host %s",
                  x->host_name ? x->host_name : "?");
        break;
    }
    case CURLE_COULDNT_CONNECT:
        /* Refused by the policy only when no address of the name was
         * allowed: when one was tried, its failure is the outcome. */
        if (x->addr_refused && !x->addr_allowed) {
            res->refused = 1;
            if (x->addr_family == AF_INET || x->addr_family == AF_INET6)
                hb_seterr(res->error, sizeof(res->error),
                          "address %s is %s (refused; allow it with "
                          "HOOKBRIDGE_ALLOWED_CIDRS=%s/%d or HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS=1)",
                          x->addr_text, x->addr_kind, x->addr_text,
                          x->addr_family == AF_INET ? 32 : 128);
            else
                hb_seterr(res->error, sizeof(res->error), "address %s is %s (refused)",
                          x->addr_text, x->addr_kind);
            break;
        }
        (void)curl_easy_getinfo(x->easy, CURLINFO_OS_ERRNO, &os_errno);
        if (x->socket_errno == EMFILE || x->socket_errno == ENFILE)
            /* socket(2) failed here, before the endpoint was reached */
            hb_http_no_files(res, x->socket_errno);
        else if (os_errno == ECONNREFUSED)
            hb_seterr(res->error, sizeof(res->error), "connection refused");
        else if (os_errno == ECONNRESET) /* accepted, then reset at once (curl
                                          * 7.88: most such resets) */
            hb_seterr(res->error, sizeof(res->error),
                      "connection error: the endpoint reset the connection as it was set up");
        else if (os_errno == ENETUNREACH)
            hb_seterr(res->error, sizeof(res->error), "network unreachable");
        else if (os_errno == EHOSTUNREACH)
            hb_seterr(res->error, sizeof(res->error), "host unreachable");
        else
            hb_seterr(res->error, sizeof(res->error), "could not connect: %s", detail);
        break;
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR: {
        /* Under TLS 1.3 the client's handshake is over before the server
         * has checked our certificate; a server refusing it (or wanting one)
         * closes the connection, often before curl reads its alert. Only a
         * server that asked for a certificate gets that hint: any other
         * closed the connection, no more. */
        curl_off_t tls_us = 0;
        (void)curl_easy_getinfo(x->easy, CURLINFO_APPCONNECT_TIME_T, &tls_us);
        if (rc == CURLE_GOT_NOTHING && interim)
            hb_seterr(res->error, sizeof(res->error),
                      "the endpoint closed the connection after an interim HTTP %d answer, "
                      "with no final one",
                      x->line_status);
        else if (rc == CURLE_GOT_NOTHING && tls_us <= 0)
            hb_seterr(res->error, sizeof(res->error),
                      "the endpoint closed the connection without a response (empty reply)");
        else if (rc != CURLE_GOT_NOTHING && (strstr(detail, "SSL") || strstr(detail, "TLS")))
            hb_seterr(res->error, sizeof(res->error), "TLS error: %s", detail);
        else if (tls_us > 0 && res->http_status == 0 && !x->cert_asked)
            hb_seterr(res->error, sizeof(res->error),
                      "the endpoint closed the connection without a response (after the TLS "
                      "handshake): %s",
                      detail);
        else if (tls_us > 0 && res->http_status == 0)
            hb_seterr(res->error, sizeof(res->error),
                      "TLS error: the endpoint closed the connection after the handshake without "
                      "a response (%s): %s",
                      x->h->tls_client_cert
                          ? "it asked for a client certificate: does it accept ours?"
                          : "it asked for a client certificate, and HOOKBRIDGE_TLS_CLIENT_CERT "
                            "gives none",
                      detail);
        else
            hb_seterr(res->error, sizeof(res->error), "connection error: %s", detail);
        break;
    }
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
        hb_seterr(res->error, sizeof(res->error), "TLS error: %s", detail);
        break;
    case CURLE_UNSUPPORTED_PROTOCOL:
        /* Schemes are refused before curl sees the URL: curl says this of an
         * answer that is not HTTP (an SSH or SMTP port, a bad status line). */
        hb_seterr(res->error, sizeof(res->error), "not an HTTP response: %s", detail);
        break;
    case CURLE_OUT_OF_MEMORY:
        /* curl 7.88 says this of a header line longer than it buffers (100
         * KiB, CURL_MAX_HTTP_HEADER): "Out of memory" sent operators looking
         * at the dispatcher's memory for an endpoint's endless header */
        if (!x->head_status) {
            hb_seterr(res->error, sizeof(res->error),
                      "response headers over the limit (%d headers, %d bytes): not read",
                      HB_HTTP_MAX_RESPONSE_HEADERS, HB_HTTP_MAX_RESPONSE_HEADER_BYTES);
            break;
        }
        hb_seterr(res->error, sizeof(res->error), "%s: %s", curl_easy_strerror(rc), detail);
        break;
    default:
        hb_seterr(res->error, sizeof(res->error), "%s: %s", curl_easy_strerror(rc), detail);
        break;
    }
    /* The answer's status line and headers came whole, its body did not (a
     * Content-Length longer than the body sent, a reset or a stall after
     * it): said, or the operator reads "timeout after 10000 ms" of an
     * endpoint that answered 200 at once, and its owner says so. */
    size_t len = strlen(res->error);
    if (x->head_status > 0 && !res->refused && len < sizeof(res->error))
        snprintf(res->error + len, sizeof(res->error) - len,
                 ", reading the body of an HTTP %d answer", x->head_status);
    /* only an interim answer came (a 101 Switching Protocols from a
     * WebSocket server at the URL, a 100 then nothing): "empty reply" alone
     * said the endpoint had sent nothing */
    else if (interim && rc != CURLE_GOT_NOTHING && len < sizeof(res->error))
        snprintf(res->error + len, sizeof(res->error) - len,
                 ", after an interim HTTP %d answer and no final one", x->line_status);
}

/*
 * The one completion function: every transfer ends here exactly once, be it
 * finished by curl (rc), refused up front (early list) or aborted at shutdown.
 */
static void hb_http_complete(hb_http_t *h, hb_http_xfer_t *x, CURLcode rc) {
    hb_http_result_t res;
    memset(&res, 0, sizeof(res));
    res.retry_after_s = x->retry_after_s;
    res.started_ms = x->started_ms;
    if (x->easy)
        res.duration_ms = hb_mono_ms() - x->started_mono;

    if (x->aborted) {
        res.transport_error = CURLE_ABORTED_BY_CALLBACK;
        hb_seterr(res.error, sizeof(res.error), "aborted at shutdown");
    } else if (!x->easy) {
        res.refused = x->early_refused;
        res.not_sent = x->not_sent;
        res.host_pace = x->ns_pace;
        res.host_waiting = x->ns_waiting;
        res.transport_error = x->early_refused || x->not_sent ? 0 : x->early_code;
        hb_seterr(res.error, sizeof(res.error), "%s", x->early_error);
    } else {
        long status = 0, connects = 0;
        (void)curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        (void)curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &connects);
        res.http_status = (int)status;
        res.new_connection = connects > 0;
        if (rc != CURLE_OK) {
            res.transport_error = (int)rc;
            hb_http_describe(x, rc, res.duration_ms, &res);
            if (res.not_sent) /* never reached the endpoint (hb_http_describe) */
                res.transport_error = 0;
        } else if (status < 200 || status > 299) {
            hb_seterr(res.error, sizeof(res.error), "HTTP %ld", status);
        }
    }
    res.body = x->resp ? x->resp : "";
    res.body_len = x->resp_len;
    /* a lookup that timed out or found nothing leaves its host not named
     * (one request at a time: hb_http_may_start); an address names it */
    int named = -1;
    if (x->easy && !x->aborted) {
        if (rc == CURLE_COULDNT_RESOLVE_HOST ||
            (rc == CURLE_OPERATION_TIMEDOUT && hb_http_lookup_unfinished(x)))
            named = 0;
        else if (!hb_http_lookup_unfinished(x))
            named = 1;
    }
    if (x->lookup) {
        x->lookup = 0;
        h->lookups--;
    }
    if (x->kept_new)
        h->kept_new--;

    /* Out of the multi handle first: its connection goes back to the pool
     * and a request the callback submits to the same host can reuse it. */
    CURL *easy = x->easy;
    if (easy) {
        (void)curl_multi_remove_handle(h->multi, easy);
        if (x->run_prev)
            x->run_prev->run_next = x->run_next;
        else
            h->running = x->run_next;
        if (x->run_next)
            x->run_next->run_prev = x->run_prev;
    }

    if (x->done)
        x->done(&res, x->opaque);

    hb_http_host_t *host = x->host;
    if (easy) {
        long connects = -1;
        (void)curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &connects);
        if (h->free_cnt == h->free_cap) {
            h->free_cap = h->free_cap ? h->free_cap * 2 : 16;
            h->free_easy = hb_realloc(h->free_easy, h->free_cap * sizeof(*h->free_easy));
        }
        h->free_easy[h->free_cnt].easy = easy;
        h->free_easy[h->free_cnt++].clean = rc == CURLE_OK && connects == 0 && !x->resent;
    }
    hb_http_xfer_free(x); /* easy keeps pointers into x until its next setup */
    if (easy) {
        h->in_flight--;
        host->in_flight--;
        hb_http_host_done(host, hb_mono_ms(), res.http_status > 0);
        if (named >= 0)
            host->named = named;
    }
    if (host) {
        hb_http_ready_push(h, host);
        hb_http_host_release(h, host);
    }
    hb_http_refill(h);
}

/* Without ca_file, the system CAs are curl's built-in bundle file alone, not
 * also its built-in CA directory (Debian's curl has both: /etc/ssl/certs, whose
 * certificates are the bundle's, both made by update-ca-certificates). curl
 * keeps one parsed CA store per multi handle for all new connections
 * (CURLOPT_CA_CACHE_TIMEOUT, 24 h), but only when the store comes from a file
 * alone: with the directory set too, every new connection parsed the whole
 * bundle again and kept its own copy while open (~0.9 MB per open connection
 * and ~15 ms of CPU per handshake with Debian's 145 CAs). A curl built with a
 * CA directory and no bundle file keeps its directory. */
static CURLcode hb_http_system_cas(CURL *easy) {
    char *bundle = NULL;
    if (curl_easy_getinfo(easy, CURLINFO_CAINFO, &bundle) != CURLE_OK || !bundle || !*bundle)
        return CURLE_OK;
    return curl_easy_setopt(easy, CURLOPT_CAPATH, (char *)NULL);
}

/* OpenSSL's message callback on a connection being set up: notes in its
 * transfer (arg) whether the server asked for a client certificate, which
 * tells an endpoint that refuses ours (or wants one) from one that merely
 * closes the connection (hb_http_describe). A connection outlives its first
 * transfer, so the callback forgets its transfer once the handshake is
 * over, before it could hear a later message with a stale arg. */
static void hb_http_tls_msg(int write_p, int version, int content_type, const void *buf, size_t len,
                            SSL *ssl, void *arg) {
    hb_http_xfer_t *x = arg;
    (void)version;
    if (!x)
        return;
    if (SSL_is_init_finished(ssl)) {
        /* not the callback itself: OpenSSL may call it twice on one check */
        SSL_set_msg_callback_arg(ssl, NULL);
        return;
    }
    if (!write_p && content_type == SSL3_RT_HANDSHAKE && len > 0 &&
        ((const unsigned char *)buf)[0] == SSL3_MT_CERTIFICATE_REQUEST)
        x->cert_asked = 1;
}

/* curl 7.88 makes an SSL_CTX for each new connection and hands it here
 * with CURLOPT_SSL_CTX_DATA, the transfer the connection is made for. */
static CURLcode hb_http_ssl_ctx(CURL *easy, void *sslctx, void *arg) {
    (void)easy;
    SSL_CTX_set_msg_callback(sslctx, hb_http_tls_msg);
    SSL_CTX_set_msg_callback_arg(sslctx, arg);
    return CURLE_OK;
}

/* The options every transfer has alike, set on a new or reset handle. */
static CURLcode hb_http_setup_handle(hb_http_t *h, CURL *easy) {
    CURLcode rc = CURLE_OK;
    const char *protocols = h->conf.allow_http ? "http,https" : "https";
#define HB_SET(opt, val)                                                                           \
    do {                                                                                           \
        if (rc == CURLE_OK)                                                                        \
            rc = curl_easy_setopt(easy, opt, val);                                                 \
    } while (0)
    HB_SET(CURLOPT_NOSIGNAL, 1L);
    /* curl 7.88 resolves names in a thread of its own; a transfer that
     * ends while its lookup still runs (the request timeout, a withdraw)
     * joined that thread, in the loop, until getaddrinfo gave up: one name
     * whose DNS answered slowly stalled every delivery for the rest of its
     * lookup (5-30 s). With this, curl leaves the thread to finish alone. */
    HB_SET(CURLOPT_QUICK_EXIT, 1L);
    HB_SET(CURLOPT_FOLLOWLOCATION, 0L);
    HB_SET(CURLOPT_PROTOCOLS_STR, protocols);
    HB_SET(CURLOPT_REDIR_PROTOCOLS_STR, protocols);
    HB_SET(CURLOPT_PROXY, ""); /* no proxy from the environment: see the address check */
    /* and no no_proxy either: without a list of its own curl reads no_proxy
     * and NO_PROXY from the environment for every transfer, each getenv a
     * walk of the whole environment (a Kubernetes pod's holds a few
     * variables per service of its namespace: with 300, 5 % of a request) */
    HB_SET(CURLOPT_NOPROXY, "");
    if (h->conf.connect_timeout_ms > 0)
        HB_SET(CURLOPT_CONNECTTIMEOUT_MS, (long)h->conf.connect_timeout_ms);
    HB_SET(CURLOPT_OPENSOCKETFUNCTION, hb_http_opensocket);
    HB_SET(CURLOPT_HEADERFUNCTION, hb_http_on_header);
    HB_SET(CURLOPT_WRITEFUNCTION, hb_http_on_body);
    HB_SET(CURLOPT_USERAGENT, h->user_agent);
    HB_SET(CURLOPT_TCP_KEEPALIVE, 1L);
    if (h->conf.connection_max_age_ms > 0) {
        /* a connection's address was the name's when it opened: one too old
         * is closed when a request would reuse it (never while one runs on
         * it), and the new one looks the name up again, which curl's cache
         * answers for at most as long (its default: 60 s) */
        long max_age_s = (long)((h->conf.connection_max_age_ms + 999) / 1000);
        HB_SET(CURLOPT_MAXLIFETIME_CONN, max_age_s);
        HB_SET(CURLOPT_DNS_CACHE_TIMEOUT, max_age_s < 60 ? max_age_s : 60L);
    }
    HB_SET(CURLOPT_SSL_VERIFYPEER, 1L);
    HB_SET(CURLOPT_SSL_VERIFYHOST, 2L);
    HB_SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    /* a curl built without OpenSSL has no SSL_CTX to give: only the hint
     * of hb_http_describe is lost then */
    if (rc == CURLE_OK)
        (void)curl_easy_setopt(easy, CURLOPT_SSL_CTX_FUNCTION, hb_http_ssl_ctx);
    if (h->ca_file) {
        HB_SET(CURLOPT_CAINFO, h->ca_file);
        HB_SET(CURLOPT_CAPATH, (char *)NULL); /* the file replaces the system CAs */
    }
    if (!h->ca_file && rc == CURLE_OK)
        rc = hb_http_system_cas(easy); /* one parsed bundle for all connections */
    if (h->tls_client_cert) {
        HB_SET(CURLOPT_SSLCERT, h->tls_client_cert);
        HB_SET(CURLOPT_SSLCERTTYPE, "PEM");
        HB_SET(CURLOPT_SSLKEY, h->tls_client_key ? h->tls_client_key : h->tls_client_cert);
        HB_SET(CURLOPT_SSLKEYTYPE, "PEM");
    }
    return rc;
}

/* The options of this transfer. Every option that points into a transfer
 * is set here, for every transfer, so a pooled handle never reaches memory
 * of the one before (which is freed as soon as it completes): the handle
 * keeps stale pointers only while it sits unused in the free list. */
static CURLcode hb_http_setup(hb_http_t *h, hb_http_xfer_t *x, CURL *easy) {
    CURLcode rc = CURLE_OK;
    /* curl copies a parsed URL (CURLOPT_CURLU, which takes precedence over
     * CURLOPT_URL) when the transfer starts instead of parsing the text once
     * more. The text is set too, so the URL curl keeps for the transfer (a
     * retry on a fresh connection starts from it) is this transfer's, and
     * curl need not assemble it from the parsed handle. */
    if (!x->curlu)
        x->curlu = hb_http_curlu_get(h, x->url);
    HB_SET(CURLOPT_URL, x->url);
    HB_SET(CURLOPT_CURLU, x->curlu ? x->curlu->u : NULL);
    HB_SET(CURLOPT_SHARE, h->shares[x->host->share]);
    HB_SET(CURLOPT_PRIVATE, (void *)x);
    HB_SET(CURLOPT_ERRORBUFFER, x->errbuf);
    HB_SET(CURLOPT_TIMEOUT_MS, (long)x->timeout_ms);
    HB_SET(CURLOPT_OPENSOCKETDATA, (void *)x);
    if (rc == CURLE_OK)
        (void)curl_easy_setopt(easy, CURLOPT_SSL_CTX_DATA, (void *)x); /* as above */
    HB_SET(CURLOPT_HEADERDATA, (void *)x);
    HB_SET(CURLOPT_WRITEDATA, (void *)x);
    HB_SET(CURLOPT_HTTPHEADER, x->headers); /* NULL clears the previous list */
    if (x->method == HB_HTTP_POST) {
        HB_SET(CURLOPT_POSTFIELDS, x->body ? x->body : "");
        HB_SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(x->body ? x->body_len : 0));
    } else {
        HB_SET(CURLOPT_HTTPGET, 1L); /* also clears POSTFIELDS */
    }
#undef HB_SET
    return rc;
}

/* Moves one waiting transfer into the multi handle; only hb_http_refill
 * calls it, and releases x's host after. */
static void hb_http_start(hb_http_t *h, hb_http_xfer_t *x) {
    CURL *easy;
    int clean = 0;
    if (h->free_cnt > 0) {
        easy = h->free_easy[--h->free_cnt].easy;
        clean = h->free_easy[h->free_cnt].clean;
        /* only a reset clears curl's count of resends ("Connection died,
         * tried 5 times before giving up"): see the top of this file */
        if (!clean)
            curl_easy_reset(easy);
    } else {
        easy = curl_easy_init();
    }
    if (easy && !clean && hb_http_setup_handle(h, easy) != CURLE_OK) {
        curl_easy_cleanup(easy);
        easy = NULL;
    }
    CURLcode rc = easy ? hb_http_setup(h, x, easy) : CURLE_FAILED_INIT;
    CURLMcode mrc = CURLM_OK;
    if (rc == CURLE_OK)
        mrc = curl_multi_add_handle(h->multi, easy);
    if (rc != CURLE_OK || mrc != CURLM_OK) {
        if (easy)
            curl_easy_cleanup(easy);
        hb_seterr(x->early_error, sizeof(x->early_error), "could not start transfer: %s",
                  rc != CURLE_OK ? curl_easy_strerror(rc) : curl_multi_strerror(mrc));
        x->early_code = rc != CURLE_OK ? (int)rc : (int)CURLE_FAILED_INIT;
        /* Its host is not released here: the refill that started x still
         * holds it (it queues it again, then releases it itself); freed here,
         * the refill would use it after the free. */
        x->host = NULL;
        hb_http_early_push(h, x);
        return;
    }
    x->easy = easy;
    x->started_ms = hb_wall_ms();
    x->started_mono = hb_mono_ms();
    x->run_prev = NULL;
    x->run_next = h->running;
    if (h->running)
        h->running->run_prev = x;
    h->running = x;
    h->in_flight++;
    if (x->host->in_flight++ == 0)
        x->host->progress_mono = x->started_mono;
    if (!x->host->named) {
        x->lookup = 1;
        h->lookups++;
    }
}

/* Whether host may start one more transfer now. The last quarter of the
 * max_in_flight slots is kept for hosts that show they answer: once the
 * others are taken, a host with a transfer running starts another only if
 * one of its requests was answered (any HTTP status) within HB_HTTP_LAG_MS;
 * a request that timed out or whose connection failed is no answer (else
 * hung hosts, their requests timing out together, took the kept slots for
 * a second after each wave, and held them for another request timeout). Without that, hosts
 * that hang (each holding its slots until the request timeout) took every
 * slot, and the requests to healthy hosts waited out max_queue_wait and went
 * to the delay tier, their hosts called slow. A host with nothing running
 * may start one if its last request was answered: else many hung hosts, one
 * request each, took the kept slots at every request timeout (12 hung hosts
 * beside a healthy one, max_in_flight 8: 107 of the healthy host's 111
 * requests waited out max_queue_wait, `endpoint busy`, and went to the delay
 * tier). Hosts none of whose requests was ever answered (new ones) take at
 * most half the kept slots together, one request each, and a host that
 * answered is remembered while idle (HB_HTTP_HOST_MEMORY_MS): so a new host
 * that answers still gets a kept slot beside hung ones holding the rest
 * (test_review24), and a crowd of new hosts that hang (many new
 * subscriptions to a region gone dark) leaves half the kept slots to the
 * hosts that answered. Before, a new host could always start one request,
 * and a healthy host, forgotten whenever it had nothing to do, was new at
 * every request: 12 new hung hosts beside a healthy one, max_in_flight 8,
 * request timeout 6 s: 1 of its 65 events parked `endpoint busy`, the rest
 * 5.7 s late (median), up to 7.0 s; now none parked, 0.3 s, up to 1.2 s
 * (that second is the consumer's pause while the new hosts' queues still
 * count as waiting for hosts that keep up: hb_http_backlog).
 *
 * A host whose name has not resolved (new, or its last lookup timed out or
 * found nothing) runs one request at a time until a lookup gives an
 * address, and at most max_in_flight / 8 (at least 4) of those run at once:
 * curl gives every new connection a resolver thread of its own (no two
 * share a lookup of one name), and a thread that timed out runs on alone
 * until getaddrinfo gives up (5-30 s), so a name whose DNS hangs started
 * max_host_connections threads at every request timeout (40 such names,
 * request timeout 1 s, lookups of 6 s: 1,200 threads within 4 s), and a
 * burst of verification challenges to 500 names that do not resolve made
 * 495 threads at once. Its other requests wait in its queue (and go to the
 * delay tier unsent after max_queue_wait): 25 new names resolving in 3 s,
 * request timeout 1 s, max_in_flight 32: 12 threads more than at rest, 73
 * before; 500 challenges to names that resolve in 8 s, the defaults: 128
 * threads within 12 s, 500 at once before. A host whose name has not
 * resolved counts as lagging (its queue is not waited for:
 * hb_http_backlog), so does a new one whose oldest request waited
 * HB_HTTP_LAG_MS for a slot. */
/* Whether the next transfer started takes one of the kept slots (the last
 * quarter of max_in_flight). */
static int hb_http_in_kept_slots(const hb_http_t *h) {
    size_t max = (size_t)h->conf.max_in_flight;
    return h->in_flight + max / 4 >= max;
}

static int hb_http_may_start(const hb_http_t *h, const hb_http_host_t *host, int64_t now) {
    size_t max = (size_t)h->conf.max_in_flight;
    if (!host->named) {
        if (host->in_flight)
            return 0; /* one lookup of a name at a time */
        if (h->lookups >= hb_http_max_lookups(h))
            return 0;
    }
    if (!hb_http_in_kept_slots(h))
        return 1;
    if (!host->done_mono) /* none of its requests answered yet: half the kept ones */
        return host->in_flight == 0 && h->kept_new < (max / 4 + 1) / 2;
    if (host->in_flight == 0 && host->failed_mono <= host->done_mono)
        return 1; /* its last request was answered */
    return now - host->done_mono <= HB_HTTP_LAG_MS;
}

static void hb_http_refill(hb_http_t *h) {
    hb_http_host_t *skipped = NULL, *skipped_tail = NULL;
    int64_t now;
    if (h->closing)
        return;
    now = hb_mono_ms();
    if (h->lookup_wait && h->lookups < hb_http_max_lookups(h)) {
        hb_http_host_t *host = h->lookup_wait; /* a lookup ended: their turn again */
        h->lookup_wait = h->lookup_wait_tail = NULL;
        while (host) {
            hb_http_host_t *next = host->ready_next;
            host->on_ready = 0;
            hb_http_ready_push(h, host);
            hb_http_host_release(h, host); /* its queue may have gone meanwhile */
            host = next;
        }
    }
    while (h->in_flight < (size_t)h->conf.max_in_flight) {
        hb_http_host_t *host = hb_http_ready_pop(h);
        if (!host)
            break;
        if (!host->named && !host->in_flight && h->lookups >= hb_http_max_lookups(h)) {
            host->on_ready = 2; /* until a lookup ends, in its order */
            host->ready_next = NULL;
            if (h->lookup_wait_tail)
                h->lookup_wait_tail->ready_next = host;
            else
                h->lookup_wait = host;
            h->lookup_wait_tail = host;
            continue;
        }
        if (!hb_http_may_start(h, host, now)) { /* its turn waits: kept aside */
            if (skipped_tail)
                skipped_tail->ready_next = host;
            else
                skipped = host;
            skipped_tail = host;
            continue;
        }
        hb_http_xfer_t *x = hb_http_wait_pop(h, host);
        int kept_new = !host->done_mono && hb_http_in_kept_slots(h);
        if (x)
            hb_http_start(h, x);
        if (x && x->easy && kept_new) {
            x->kept_new = 1;
            h->kept_new++;
        }
        hb_http_ready_push(h, host); /* round-robin: back to the tail if more wait */
        hb_http_host_release(h, host);
    }
    while (skipped) { /* still waiting, in their order */
        hb_http_host_t *host = skipped;
        skipped = host->ready_next;
        hb_http_ready_push(h, host);
    }
}

/* ------------------------------------------------------------------ */
/* Public API                                                          */

static void hb_http_conf_free(hb_http_t *h) {
    free(h->user_agent);
    free(h->ca_file);
    free(h->tls_client_cert);
    free(h->tls_client_key);
    free(h->cidrs);
}

/* OpenSSL's oldest queued error, for errstr; the queue is cleared. */
static void hb_http_ssl_error(char *buf, size_t bufsz) {
    unsigned long e = ERR_peek_error();
    if (e)
        ERR_error_string_n(e, buf, bufsz);
    else
        hb_seterr(buf, bufsz, "unknown error");
    ERR_clear_error();
}

/* Private keys with a passphrase are refused: nobody is there to type it. */
static int hb_http_no_passphrase(char *buf, int size, int rwflag, void *u) {
    (void)buf;
    (void)size;
    (void)rwflag;
    *(int *)u = 1;
    return -1;
}

/* Is path a readable regular file? Fills errstr naming the setting if not. */
static int hb_http_file_ok(const char *setting, const char *path, char *errstr,
                           size_t errstr_size) {
    FILE *fp = fopen(path, "r");
    if (!fp) {
        hb_seterr(errstr, errstr_size, "%s=%s: cannot read: %s", setting, path, strerror(errno));
        return -1;
    }
    char c;
    size_t n = fread(&c, 1, 1, fp);
    int err = ferror(fp) ? errno : 0;
    fclose(fp);
    if (n != 1) {
        hb_seterr(errstr, errstr_size, "%s=%s: cannot read: %s", setting, path,
                  err ? strerror(err) : "file is empty");
        return -1;
    }
    return 0;
}

/* Loads the configured TLS files the way curl will, so a bad one fails now. */
static int hb_http_tls_check(const hb_http_t *h, char *errstr, size_t errstr_size) {
    char why[256];
    int asked = 0, rc = -1;
    SSL_CTX *ctx = NULL;
    if (h->tls_client_key && !h->tls_client_cert) {
        hb_seterr(errstr, errstr_size,
                  "HOOKBRIDGE_TLS_CLIENT_KEY is set without HOOKBRIDGE_TLS_CLIENT_CERT");
        return -1;
    }
    if (h->ca_file && hb_http_file_ok("HOOKBRIDGE_CA_FILE", h->ca_file, errstr, errstr_size) < 0)
        return -1;
    if (h->tls_client_cert &&
        hb_http_file_ok("HOOKBRIDGE_TLS_CLIENT_CERT", h->tls_client_cert, errstr, errstr_size) < 0)
        return -1;
    if (h->tls_client_key &&
        hb_http_file_ok("HOOKBRIDGE_TLS_CLIENT_KEY", h->tls_client_key, errstr, errstr_size) < 0)
        return -1;
    if (!h->ca_file && !h->tls_client_cert)
        return 0;
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        hb_http_ssl_error(why, sizeof(why));
        hb_seterr(errstr, errstr_size, "TLS set-up failed: %s", why);
        return -1;
    }
    SSL_CTX_set_default_passwd_cb(ctx, hb_http_no_passphrase);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, &asked);
    if (h->ca_file && SSL_CTX_load_verify_locations(ctx, h->ca_file, NULL) != 1) {
        hb_http_ssl_error(why, sizeof(why));
        hb_seterr(errstr, errstr_size, "HOOKBRIDGE_CA_FILE=%s: no usable PEM certificates: %s",
                  h->ca_file, why);
        goto done;
    }
    if (h->tls_client_cert) {
        const char *key = h->tls_client_key ? h->tls_client_key : h->tls_client_cert;
        const char *key_setting =
            h->tls_client_key ? "HOOKBRIDGE_TLS_CLIENT_KEY" : "HOOKBRIDGE_TLS_CLIENT_CERT";
        if (SSL_CTX_use_certificate_chain_file(ctx, h->tls_client_cert) != 1) {
            hb_http_ssl_error(why, sizeof(why));
            hb_seterr(errstr, errstr_size,
                      "HOOKBRIDGE_TLS_CLIENT_CERT=%s: not a PEM certificate: %s",
                      h->tls_client_cert, why);
            goto done;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
            unsigned long e = ERR_peek_last_error();
            int mismatch =
                ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
            hb_http_ssl_error(why, sizeof(why));
            if (mismatch)
                hb_seterr(errstr, errstr_size,
                          "%s=%s: the private key does not match the certificate in "
                          "HOOKBRIDGE_TLS_CLIENT_CERT=%s",
                          key_setting, key, h->tls_client_cert);
            else if (asked)
                hb_seterr(errstr, errstr_size,
                          "%s=%s: the private key is encrypted (a passphrase-protected key is "
                          "not supported)",
                          key_setting, key);
            else
                hb_seterr(errstr, errstr_size, "%s=%s: no usable PEM private key: %s", key_setting,
                          key, why);
            goto done;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            ERR_clear_error();
            hb_seterr(errstr, errstr_size,
                      "%s=%s: the private key does not match the certificate in "
                      "HOOKBRIDGE_TLS_CLIENT_CERT=%s",
                      key_setting, key, h->tls_client_cert);
            goto done;
        }
    }
    rc = 0;
done:
    SSL_CTX_free(ctx); /* also cleanses the key it held */
    return rc;
}

static char *hb_http_opt_strdup(const char *s) {
    return s && *s ? hb_strdup(s) : NULL;
}

hb_http_t *hb_http_new(const hb_http_conf_t *conf, char *errstr, size_t errstr_size) {
    char why[200];
    if (conf->max_in_flight < 1 || conf->max_host_connections < 1) {
        hb_seterr(errstr, errstr_size, "max_in_flight and max_host_connections must be >= 1");
        return NULL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        hb_seterr(errstr, errstr_size, "curl_global_init failed");
        return NULL;
    }
    hb_http_t *h = hb_calloc(1, sizeof(*h));
    h->conf = *conf;
    h->user_agent = hb_strdup(conf->user_agent ? conf->user_agent : "hookbridge/" HB_VERSION);
    h->conf.user_agent = h->user_agent;
    h->ca_file = hb_http_opt_strdup(conf->ca_file);
    h->tls_client_cert = hb_http_opt_strdup(conf->tls_client_cert);
    h->tls_client_key = hb_http_opt_strdup(conf->tls_client_key);
    h->conf.ca_file = h->ca_file;
    h->conf.tls_client_cert = h->tls_client_cert;
    h->conf.tls_client_key = h->tls_client_key;
    h->conf.allowed_cidrs = NULL; /* parsed into h->cidrs */
    if (hb_http_cidrs_parse(conf->allowed_cidrs, &h->cidrs, &h->cidrs_cnt, why, sizeof(why)) < 0) {
        hb_seterr(errstr, errstr_size, "HOOKBRIDGE_ALLOWED_CIDRS: %s", why);
        goto fail;
    }
    if (hb_http_tls_check(h, errstr, errstr_size) < 0)
        goto fail;
    h->multi = curl_multi_init();
    if (!h->multi) {
        hb_seterr(errstr, errstr_size, "curl_multi_init failed");
        goto fail;
    }
    for (size_t i = 0; i < HB_HTTP_SHARES; i++) {
        h->shares[i] = curl_share_init();
        if (!h->shares[i] ||
            curl_share_setopt(h->shares[i], CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) !=
                CURLSHE_OK ||
            curl_share_setopt(h->shares[i], CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) != CURLSHE_OK) {
            hb_seterr(errstr, errstr_size, "curl_share_init failed");
            goto fail;
        }
    }
    /* curl's connection cache: when it is full, every connection handed
     * back walks all of it for the oldest idle one to close */
    long maxconnects = conf->max_connections > 0 ? conf->max_connections : conf->max_in_flight * 2;
    if (maxconnects < conf->max_in_flight)
        maxconnects = conf->max_in_flight;
    if (maxconnects < 16)
        maxconnects = 16;
    /* One request at a time on a connection, HTTP/2 too (curl multiplexes
     * by default): curl 7.88 checks a connection's age (connection_max_age)
     * only when the connection is idle, and one whose streams overlap
     * without a pause (a busy endpoint answering in a second) never is:
     * with a max age of 1 s every request went on over the old
     * connections for as long as the stream lasted (7.6 s in the test). A
     * host's requests in flight are its connections, as for HTTP/1.1. */
    if (curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, conf->max_host_connections) !=
            CURLM_OK ||
        curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING) != CURLM_OK ||
        curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, maxconnects) != CURLM_OK) {
        hb_seterr(errstr, errstr_size, "curl_multi_setopt failed");
        goto fail;
    }
    return h;
fail:
    if (h->multi)
        curl_multi_cleanup(h->multi);
    for (size_t i = 0; i < HB_HTTP_SHARES; i++)
        if (h->shares[i])
            curl_share_cleanup(h->shares[i]);
    hb_http_conf_free(h);
    free(h);
    curl_global_cleanup();
    return NULL;
}

/* Any transfer not yet finished, detached from its place; NULL when none. */
static hb_http_xfer_t *hb_http_take_unfinished(hb_http_t *h) {
    if (h->running)
        return h->running; /* hb_http_complete unlinks it */
    {
        hb_hash_slot_t *s;
        size_t pos = 0;
        while ((s = hb_hash_each(&h->hosts, &pos)) != NULL) {
            hb_http_xfer_t *x = hb_http_wait_pop(h, s->val);
            if (x)
                return x;
        }
    }
    hb_http_xfer_t *x = h->early_head;
    if (x) {
        h->early_head = x->next;
        if (!h->early_head)
            h->early_tail = NULL;
    }
    return x;
}

void hb_http_free(hb_http_t *h) {
    if (!h)
        return;
    h->closing = 1;
    hb_http_xfer_t *x;
    while ((x = hb_http_take_unfinished(h)) != NULL) {
        if (x->easy || x->host)
            x->aborted = 1; /* refused ones keep their own reason */
        hb_http_complete(h, x, CURLE_OK);
    }
    while (h->ready_head) {
        hb_http_host_t *host = hb_http_ready_pop(h);
        hb_http_host_release(h, host);
    }
    while (h->lookup_wait) {
        hb_http_host_t *host = h->lookup_wait;
        h->lookup_wait = host->ready_next;
        host->on_ready = 0;
        hb_http_host_release(h, host);
    }
    for (size_t i = 0; i < h->free_cnt; i++)
        curl_easy_cleanup(h->free_easy[i].easy);
    free(h->free_easy);
    curl_multi_cleanup(h->multi);
    for (size_t i = 0; i < HB_HTTP_SHARES; i++)
        curl_share_cleanup(h->shares[i]); /* after every easy handle using it */
    {
        hb_hash_slot_t *s;
        size_t pos = 0;
        while ((s = hb_hash_each(&h->hosts, &pos)) != NULL) /* the remembered ones */
            hb_http_host_free(h, s->val);
    }
    hb_hash_clear(&h->hosts);
    hb_hash_clear(&h->curlus); /* empty: every transfer is freed */
    hb_http_conf_free(h);
    free(h);
    curl_global_cleanup();
}

/* Refusal reason for a header line that could smuggle another header. */
static int hb_http_header_ok(const char *line) {
    return !strpbrk(line, "\r\n");
}

/* A transfer for req, taking ownership of its body. */
static hb_http_xfer_t *hb_http_xfer_new(hb_http_t *h, hb_http_req_t *req) {
    hb_http_xfer_t *x = hb_calloc(1, sizeof(*x));
    x->h = h;
    x->method = req->method;
    x->body = req->body;
    x->body_len = req->body_len;
    x->body_borrowed = req->body_borrowed;
    req->body = NULL; /* now owned by the transfer (or still the caller's, borrowed) */
    x->timeout_ms = req->timeout_ms > 0 ? req->timeout_ms : HB_HTTP_DEFAULT_TIMEOUT_MS;
    x->max_response_bytes = req->max_response_bytes;
    x->done = req->done;
    x->opaque = req->opaque;
    x->retry_after_s = -1;
    x->retry_after_at = 0;
    x->said[0] = '\0';
    x->hdr_at_start = 1;
    x->started_ms = hb_wall_ms();
    return x;
}

void hb_http_fail(hb_http_t *h, hb_http_req_t *req, const char *reason) {
    hb_http_xfer_t *x = hb_http_xfer_new(h, req);
    if (h->closing)
        x->aborted = 1;
    hb_http_refuse(h, x, "%s", reason);
}

/* A host whose requests stopped finishing, or whose queue would take more
 * than HB_HTTP_LAG_MS to drain at its pace: its waiting bodies are bounded
 * by max_host_queue_bytes. */
static const char hb_http_lagging_reason[] =
    "endpoint not keeping up: its waiting requests hold a quarter of max_pending_bytes";

static int hb_http_host_lagging(const hb_http_host_t *hh, int64_t now, long long lag_ms) {
    /* nothing running while its last request went unanswered: the kept
     * slots are not for it (hb_http_may_start), and what waits for it is
     * not waiting for a slow answer but for any slot at all */
    if (!hh->in_flight && hh->failed_mono > hh->done_mono)
        return 1;
    /* its name not resolved yet (hb_http_may_start), or it never answered
     * and its oldest request waited that long without a slot (new hosts
     * take at most half the kept ones): not waiting for a host that answers */
    if (hh->wait_head && (!hh->named || (!hh->done_mono && !hh->in_flight &&
                                         now - hh->wait_head->queued_mono > lag_ms)))
        return 1;
    return (hh->in_flight && now - hh->progress_mono > lag_ms) || hb_http_host_wait_ms(hh) > lag_ms;
}

size_t hb_http_shed_lagging(hb_http_t *h) {
    size_t pos = 0, n = 0, cap = (size_t)h->conf.max_host_queue_bytes;
    int64_t now = hb_mono_ms();
    hb_hash_slot_t *s;
    if (!cap || !h->queued)
        return 0;
    while ((s = hb_hash_each(&h->hosts, &pos)) != NULL) {
        hb_http_host_t *host = s->val;
        hb_http_xfer_t *prev = NULL, *x = host->wait_head;
        size_t kept = 0, kept_n = 0;
        if (host->waiting_bytes <= cap || !hb_http_host_lagging(host, now, HB_HTTP_LAG_MS))
            continue;
        /* the oldest keep their turn; the newest beyond the bound go (the
         * head stays, so the host is not freed under the walk) */
        while (x) {
            hb_http_xfer_t *next = x->next;
            if (kept > 0 && kept + x->body_len > cap) {
                hb_http_wait_unlink(h, host, prev, x);
                x->host = NULL;
                hb_http_note_pace(x, host, kept_n, now);
                hb_http_not_sent(h, x, HB_HTTP_QUEUE_FULL, "%s", hb_http_lagging_reason);
                n++;
            } else {
                kept += x->body_len;
                kept_n++;
                prev = x;
            }
            x = next;
        }
    }
    return n;
}

/* Queues x for the host of key, unless a bound says it must not wait. */
static void hb_http_enqueue(hb_http_t *h, hb_http_xfer_t *x, const char *key) {
    hb_http_host_t *hh = hb_http_host_get(h, key, x->host_name);
    int no_slot = hh->in_flight >= (size_t)h->conf.max_host_connections;
    if (h->conf.max_host_queue > 0 && hh->waiting >= (size_t)h->conf.max_host_queue) {
        hb_http_not_sent(h, x, HB_HTTP_QUEUE_FULL,
                         "endpoint busy: %zu requests already waiting for %s (max_host_queue)",
                         hh->waiting, x->host_name);
    } else if (h->conf.max_host_queue_bytes > 0 && hh->waiting > 0 &&
               hh->waiting_bytes + x->body_len > (size_t)h->conf.max_host_queue_bytes &&
               hb_http_host_lagging(hh, hb_mono_ms(), HB_HTTP_LAG_MS)) {
        /* a host that stopped keeping up must not hold the whole payload
         * budget (the pause of every endpoint's consumption); a lone request
         * always may wait, and so may any for a host keeping up */
        hb_http_not_sent(h, x, HB_HTTP_QUEUE_FULL, "%s: %zu requests of %zu bytes already waiting",
                         hb_http_lagging_reason, hh->waiting, hh->waiting_bytes);
    } else if (no_slot && hh->slow_until > hb_mono_ms()) {
        hb_http_not_sent(h, x, HB_HTTP_QUEUE_WAIT,
                         "endpoint slow: requests to %s recently waited %lld ms for a connection "
                         "(max_queue_wait)",
                         x->host_name, h->conf.max_queue_wait_ms);
    } else if (no_slot && h->conf.max_queue_wait_ms > 0 &&
               hb_http_host_wait_ms(hh) > h->conf.max_queue_wait_ms) {
        hb_http_not_sent(h, x, HB_HTTP_QUEUE_WAIT,
                         "endpoint slow: %zu requests already waiting for %s, about %lld ms at "
                         "its pace of %.0f/s (max_queue_wait)",
                         hh->waiting, x->host_name, hb_http_host_wait_ms(hh), hh->rate);
    } else {
        x->host = hh;
        hb_http_wait_push(h, hh, x);
        hb_http_ready_push(h, hh);
        hb_http_refill(h);
        return;
    }
    hb_http_note_pace(x, hh, hh->waiting, hb_mono_ms());
    hb_http_host_release(h, hh);
}

/* Requests that waited max_queue_wait_ms leave their queue as not sent, and
 * their host is known slow for as long again. Returns ms until the next
 * expiry (-1: none waiting, or no bound). */
static long long hb_http_expire(hb_http_t *h) {
    long long wait = h->conf.max_queue_wait_ms;
    int64_t now;
    if (wait <= 0 || !h->wq_head)
        return -1;
    now = hb_mono_ms();
    /* how many of each host's leave now: those that stay are ahead of them */
    for (hb_http_xfer_t *y = h->wq_head; y && now - y->queued_mono >= wait; y = y->wq_next)
        y->host->expiring++;
    while (h->wq_head && now - h->wq_head->queued_mono >= wait) {
        hb_http_host_t *host = h->wq_head->host;
        hb_http_xfer_t *x = hb_http_wait_pop(h, host); /* the oldest is its host's head */
        x->host = NULL;
        host->expiring--;
        long long waited = (long long)(now - x->queued_mono);
        /* the prefixes `endpoint slow: ` and `endpoint busy: ` keep these
         * out of endpoint_health's failures (sql/): no request was made */
        if (host->in_flight && !host->named) {
            hb_http_not_sent(h, x, HB_HTTP_QUEUE_WAIT,
                             "endpoint slow: waited %lld ms for the lookup of %s (one request at "
                             "a time until it resolves; max_queue_wait)",
                             waited, x->host_name);
        } else if (host->in_flight) {
            host->slow_until = now + wait;
            hb_http_note_pace(x, host, host->waiting - host->expiring, now);
            hb_http_not_sent(h, x, HB_HTTP_QUEUE_WAIT,
                             "endpoint slow: waited %lld ms for a connection to %s "
                             "(max_queue_wait)",
                             waited, x->host_name);
        } else if (!host->named && h->lookups >= hb_http_max_lookups(h)) {
            hb_http_not_sent(h, x, HB_HTTP_QUEUE_WAIT,
                             "endpoint busy: waited %lld ms for one of the %zu lookups of new "
                             "host names at once (max_in_flight / 8), every one under way "
                             "(max_queue_wait)",
                             waited, h->lookups);
        } else if (host->failed_mono > host->done_mono) {
            /* its own last request went unanswered: not `busy` */
            hb_http_not_sent(h, x, HB_HTTP_QUEUE_WAIT,
                             "endpoint slow: no answer to its last request, and it waited %lld "
                             "ms for a request slot: the last quarter of max_in_flight is kept "
                             "for endpoints that answer (max_queue_wait)",
                             waited);
        } else { /* its host had a connection free: not its fault */
            hb_http_not_sent(h, x, HB_HTTP_QUEUE_WAIT,
                             "endpoint busy: waited %lld ms for one of the max_in_flight request "
                             "slots, every one taken by requests to other endpoints%s "
                             "(max_queue_wait)",
                             waited,
                             host->done_mono ? ""
                                             : ", but the last quarter, kept for "
                                               "endpoints that have answered");
        }
        hb_http_host_release(h, host);
    }
    return h->wq_head ? h->wq_head->queued_mono + wait - now : -1;
}

static hb_http_host_t *hb_http_host_find(const hb_http_t *h, const char *key) {
    return hb_hash_get(&h->hosts, key);
}

size_t hb_http_divert(hb_http_t *h, const char *key, const char *reason) {
    hb_http_host_t *host = hb_http_host_find(h, key);
    hb_http_xfer_t *x;
    size_t n = 0;
    if (!host)
        return 0;
    while ((x = hb_http_wait_pop(h, host)) != NULL) {
        x->host = NULL;
        hb_http_not_sent(h, x, HB_HTTP_DIVERTED, "%s", reason);
        n++;
    }
    hb_http_host_release(h, host);
    return n;
}

size_t hb_http_withdraw(hb_http_t *h, int (*which)(hb_http_done_cb *done, void *opaque, void *arg),
                        void *arg) {
    hb_hash_slot_t *s;
    size_t pos = 0, n = 0;
    /* Already not sent (a queue bound): it completes as withdrawn instead. */
    for (hb_http_xfer_t *x = h->early_head; x; x = x->next)
        if (x->not_sent && x->not_sent != HB_HTTP_WITHDRAWN && which(x->done, x->opaque, arg)) {
            x->not_sent = HB_HTTP_WITHDRAWN;
            n++;
        }
    while ((s = hb_hash_each(&h->hosts, &pos)) != NULL) {
        hb_http_host_t *host = s->val;
        hb_http_xfer_t *prev = NULL, *x = host->wait_head;
        while (x) {
            hb_http_xfer_t *next = x->next;
            if (!which(x->done, x->opaque, arg)) {
                prev = x;
                x = next;
                continue;
            }
            hb_http_wait_unlink(h, host, prev, x);
            x->host = NULL;
            hb_http_not_sent(h, x, HB_HTTP_WITHDRAWN, "withdrawn before it was sent");
            n++;
            x = next;
        }
        hb_http_host_release(h, host); /* removing the slot walked is allowed */
    }
    return n;
}

size_t hb_http_backlog(const hb_http_t *h, long long stall_ms) {
    const hb_hash_slot_t *s;
    size_t n = 0;
    int64_t now;
    if (!h->queued)
        return 0;
    now = hb_mono_ms();
    for (size_t pos = 0; (s = hb_hash_each(&h->hosts, &pos)) != NULL;) {
        const hb_http_host_t *host = s->val;
        /* nothing waits, or stalled, or slow (its queue drains in seconds):
         * the bounds handle those */
        if (!host->waiting || hb_http_host_lagging(host, now, stall_ms))
            continue;
        n += host->waiting;
    }
    return n;
}

/* A URL as curl's URL API splits it: uc is the first failure (setting the
 * URL, then getting the scheme, then the host), port_ok whether a port came
 * out (the scheme's default when none is written). */
typedef struct hb_http_url_s {
    char url[512];
    CURLUcode uc;
    int port_ok;
    char scheme[32], host[256], port[8];
    char key[304]; /* "scheme://host:port" when uc is CURLUE_OK and port_ok */
} hb_http_url_t;

/* curl's URL parser costs a few microseconds (an allocation per part), and
 * every delivery asks it twice (its endpoint key, then submit) for one of
 * few URLs: the last answers are kept per thread, by a hash of the URL, in a
 * small direct-mapped table. A URL or part too long for an entry is parsed
 * every time. */
#define HB_HTTP_URL_CACHE 16
static _Thread_local hb_http_url_t hb_http_url_cache[HB_HTTP_URL_CACHE];

static int hb_http_url_copy(char *dst, size_t size, const char *src) {
    size_t n = src ? strlen(src) : 0;
    if (n >= size)
        return -1;
    memcpy(dst, src ? src : "", n);
    dst[n] = '\0';
    return 0;
}

/* The host key "scheme://host:port", in lower case: host names are case
 * insensitive, and curl limits connections per host regardless of case, so
 * two spellings of one host must share its slots (or the second one's
 * requests wait inside curl, their timeout running) and its circuit. */
static void hb_http_key_make(char *buf, size_t size, const char *scheme, const char *host,
                             const char *port) {
    hb_seterr(buf, size, "%s://%s:%s", scheme, host, port);
    for (char *p = buf; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
}

/* Splits url; 0 with *out filled, -1 when the answer does not fit an entry
 * (the caller then asks curl itself). */
static int hb_http_url_split(const char *url, const hb_http_url_t **out) {
    size_t len = strlen(url);
    if (len >= sizeof(hb_http_url_cache[0].url))
        return -1;
    hb_http_url_t *e = &hb_http_url_cache[hb_hash_str(url) % HB_HTTP_URL_CACHE];
    if (!strcmp(e->url, url) && e->url[0]) {
        *out = e;
        return 0;
    }
    hb_http_url_t n;
    memset(&n, 0, sizeof(n));
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL;
    n.uc = u ? curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) : CURLUE_OUT_OF_MEMORY;
    if (n.uc == CURLUE_OK)
        n.uc = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    if (n.uc == CURLUE_OK)
        n.uc = curl_url_get(u, CURLUPART_HOST, &host, 0);
    if (n.uc == CURLUE_OK)
        n.port_ok = curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK;
    int fits = n.uc != CURLUE_OUT_OF_MEMORY &&
               hb_http_url_copy(n.scheme, sizeof(n.scheme), scheme) == 0 &&
               hb_http_url_copy(n.host, sizeof(n.host), host) == 0 &&
               hb_http_url_copy(n.port, sizeof(n.port), port) == 0;
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    if (!fits)
        return -1;
    if (n.uc == CURLUE_OK && n.port_ok)
        hb_http_key_make(n.key, sizeof(n.key), n.scheme, n.host, n.port);
    memcpy(n.url, url, len + 1);
    *e = n;
    *out = e;
    return 0;
}

int hb_http_host_key(const char *url, char *buf, size_t size) {
    const hb_http_url_t *p;
    if (hb_http_url_split(url, &p) == 0) {
        if (p->uc != CURLUE_OK || !p->port_ok)
            return -1;
        return hb_http_url_copy(buf, size, p->key);
    }
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL;
    int rc = -1;
    if (u && curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
        hb_http_key_make(buf, size, scheme, host, port);
        rc = 0;
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return rc;
}

/* Routes x by its URL's parts: refused (bad URL, scheme not allowed) or
 * queued for its host. */
static void hb_http_route(hb_http_t *h, hb_http_xfer_t *x, CURLUcode uc, const char *scheme,
                          const char *host, const char *port, const char *key) {
    if (uc != CURLUE_OK) {
        hb_http_refuse(h, x, "invalid URL: %s", curl_url_strerror(uc));
    } else if (strcasecmp(scheme, "https") && strcasecmp(scheme, "http")) {
        hb_http_refuse(h, x, "URL scheme %.32s is not allowed (https only)", scheme);
    } else if (!strcasecmp(scheme, "http") && !h->conf.allow_http) {
        hb_http_refuse(h, x,
                       "http:// URLs are refused (https only; set HOOKBRIDGE_ALLOW_HTTP=1 "
                       "to allow)");
    } else if (!port) {
        hb_http_refuse(h, x, "invalid URL: no port");
    } else {
        char buf[512];
        if (!key) {
            hb_http_key_make(buf, sizeof(buf), scheme, host, port);
            key = buf;
        }
        x->host_name = hb_strdup(host);
        hb_http_enqueue(h, x, key);
    }
}

void hb_http_submit(hb_http_t *h, hb_http_req_t *req) {
    hb_http_xfer_t *x = hb_http_xfer_new(h, req);
    if (h->closing) {
        x->aborted = 1;
        hb_http_early_push(h, x);
        return;
    }
    if (!req->url || !*req->url) {
        hb_http_refuse(h, x, "no URL");
        return;
    }
    x->url = hb_strdup(req->url);
    /* The header list curl reads, built in one allocation (nodes, then the
     * lines) rather than two per line with curl_slist_append. */
    size_t nh = 0, total = 0;
    for (const char *const *hp = req->headers; hp && *hp; hp++) {
        if (!hb_http_header_ok(*hp)) {
            hb_http_refuse(h, x, "header line contains a line break");
            return;
        }
        nh++;
        total += strlen(*hp) + 1;
    }
    if (nh > 0) {
        struct curl_slist *nodes = hb_malloc(nh * sizeof(*nodes) + total);
        char *line = (char *)(nodes + nh);
        for (size_t i = 0; i < nh; i++) {
            size_t len = strlen(req->headers[i]);
            memcpy(line, req->headers[i], len + 1);
            nodes[i].data = line;
            nodes[i].next = i + 1 < nh ? &nodes[i + 1] : NULL;
            line += len + 1;
        }
        x->headers = nodes;
        x->headers_size = nh * sizeof(*nodes) + total;
    }

    const hb_http_url_t *p;
    if (hb_http_url_split(x->url, &p) == 0) {
        hb_http_route(h, x, p->uc, p->scheme, p->host, p->port_ok ? p->port : NULL,
                      p->port_ok ? p->key : NULL);
        return;
    }
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL;
    CURLUcode uc =
        u ? curl_url_set(u, CURLUPART_URL, x->url, CURLU_NON_SUPPORT_SCHEME) : CURLUE_OUT_OF_MEMORY;
    if (uc == CURLUE_OK)
        uc = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    if (uc == CURLUE_OK)
        uc = curl_url_get(u, CURLUPART_HOST, &host, 0);
    if (uc == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) {
        curl_free(port);
        port = NULL;
    }
    hb_http_route(h, x, uc, scheme, host, port, NULL);
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
}

/* A transfer whose kept-alive connection the endpoint had closed (it reset
 * it, or closed it without a word, as our request arrived: an idle timeout
 * of its own meeting our reuse) is sent once more on a fresh connection,
 * within what is left of its timeout, rather than completed as a failed
 * attempt. curl does that itself most of the time, not always: beside an
 * endpoint closing every connection at its second request, 7 of 400
 * deliveries were logged `connection error: Recv failure: Connection reset
 * by peer` and waited for the first delay tier (review 73). Nothing of an
 * answer came, and the endpoint saw the request at most on a connection it
 * was dropping; a request it took and then reset is sent again, as its
 * retry would be (it de-duplicates by webhook-id). Once, never more: curl
 * has by then sent it on up to 6 kept connections of the host (its own
 * retry takes another kept one), so such an endpoint may see 7 copies
 * (docs/design.md; review 75). Returns 1 when x runs again. */
static int hb_http_resend(hb_http_t *h, hb_http_xfer_t *x, CURLcode rc) {
    long connects = -1, header_bytes = -1;
    if (x->resent || x->aborted || x->hdr_overflow || x->body_overflow || x->line_status ||
        (rc != CURLE_RECV_ERROR && rc != CURLE_SEND_ERROR && rc != CURLE_GOT_NOTHING))
        return 0;
    (void)curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &connects);
    (void)curl_easy_getinfo(x->easy, CURLINFO_HEADER_SIZE, &header_bytes);
    long long left = x->timeout_ms - (hb_mono_ms() - x->started_mono);
    if (connects != 0 || header_bytes != 0 || left <= 0)
        return 0;
    (void)curl_multi_remove_handle(h->multi, x->easy);
    x->errbuf[0] = '\0';
    x->resent = 1;
    if (curl_easy_setopt(x->easy, CURLOPT_FRESH_CONNECT, 1L) != CURLE_OK ||
        curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, (long)left) != CURLE_OK ||
        curl_multi_add_handle(h->multi, x->easy) != CURLM_OK) {
        (void)curl_multi_add_handle(h->multi, x->easy); /* completed as it was, below */
        return 0;
    }
    hb_debug("request to %s sent again on a fresh connection: the endpoint closed the kept one "
             "(%s)",
             x->host_name ? x->host_name : "?", curl_easy_strerror(rc));
    return 1;
}

/* Completes the transfers curl reports finished; returns how many. */
static int hb_http_collect(hb_http_t *h) {
    int n = 0;
    int left;
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURLcode rc = msg->data.result;
        char *priv = NULL;
        (void)curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        if (hb_http_resend(h, (hb_http_xfer_t *)(void *)priv, rc))
            continue;
        hb_http_complete(h, (hb_http_xfer_t *)(void *)priv, rc);
        n++;
    }
    return n;
}

/* Completes the early list as it stands now (not what callbacks add to it). */
static int hb_http_run_early(hb_http_t *h) {
    int n = 0;
    hb_http_xfer_t *x = h->early_head;
    h->early_head = h->early_tail = NULL;
    while (x) {
        hb_http_xfer_t *next = x->next;
        hb_http_complete(h, x, CURLE_OK);
        x = next;
        n++;
    }
    return n;
}

int hb_http_run(hb_http_t *h, int timeout_ms, int extra_fd) {
    return hb_http_run_fds(h, timeout_ms, &extra_fd, 1, NULL);
}

int hb_http_run_fds(hb_http_t *h, int timeout_ms, const int *extra_fds, size_t nextra,
                    int *readable) {
    struct curl_waitfd wfd[4];
    size_t of[4]; /* wfd[k] is extra_fds[of[k]] */
    unsigned int nfds = 0;
    int running = 0;
    int n = 0;
    long long expiry = hb_http_expire(h);
    if (expiry >= 0 && expiry < timeout_ms)
        timeout_ms = (int)expiry;
    if (h->early_head)
        timeout_ms = 0;
    if (timeout_ms < 0)
        timeout_ms = 0;
    for (size_t i = 0; i < nextra; i++) {
        if (readable)
            readable[i] = 0;
        if (extra_fds[i] < 0 || nfds == HB_ARRAY_SIZE(wfd))
            continue;
        of[nfds] = i;
        wfd[nfds].fd = extra_fds[i];
        wfd[nfds].events = CURL_WAIT_POLLIN;
        wfd[nfds].revents = 0;
        nfds++;
    }
    CURLMcode mrc = curl_multi_poll(h->multi, nfds ? wfd : NULL, nfds, timeout_ms, NULL);
    if (mrc != CURLM_OK)
        hb_warn("curl_multi_poll: %s", curl_multi_strerror(mrc));
    for (unsigned int k = 0; readable && k < nfds; k++)
        readable[of[k]] = mrc != CURLM_OK || wfd[k].revents != 0;
    mrc = curl_multi_perform(h->multi, &running);
    if (mrc != CURLM_OK)
        hb_warn("curl_multi_perform: %s", curl_multi_strerror(mrc));
    n += hb_http_collect(h);
    n += hb_http_run_early(h);
    hb_http_refill(h); /* also hosts whose name just resolved (hb_http_opensocket) */
    hb_http_sweep(h, hb_mono_ms());
    return n;
}

void hb_http_wakeup(hb_http_t *h) {
    (void)curl_multi_wakeup(h->multi);
}

size_t hb_http_in_flight(const hb_http_t *h) {
    return h->in_flight;
}

size_t hb_http_queued(const hb_http_t *h) {
    return h->queued;
}
