/*
 * `hookbridge-producer --okta-logs ORG_URL --since T --until T [--filter F]`:
 * reads a window of Okta's System Log (GET /api/v1/logs, the same LogEvents
 * an event hook delivers) and publishes every event as the ingest endpoint
 * does (hb_ingest_okta_adjust, then the sender). It is how events Okta gave
 * up on are published after all: an event-hook delivery Okta does not send
 * again (its one retry failed while the brokers were away) is still in the
 * System Log (docs/ingest.md). Events already on the topic are published
 * again with the same uuid, so their deliveries carry the same webhook-id.
 *
 * Paging follows the Link header's rel="next" URL until a page is empty or
 * has none (a request with `until` is bounded); a next link naming the page
 * just read stops the run. The API token goes only to the org's own origin
 * (scheme, host and port, parsed by curl: an ORG_URL with userinfo, a query
 * or a fragment is refused, plain http only to loopback): a next link
 * elsewhere stops the run, and redirects are not followed. Okta's rate
 * limit (429) is waited out (X-Rate-Limit-Reset), HB_OKTALOG_MAX_LIMITED
 * times a page at most; a 5xx or a transport error that may pass is tried
 * again, at most HB_OKTALOG_TRIES times a page, backing off. Any other
 * answer stops the run with Okta's errorSummary. Once the sender has
 * finished, hb_oktalog_resume says where a run again starts: the published
 * time of the earliest event the brokers did not take, or else of the last
 * one read when the run stopped early. The window is checked before any
 * request (RFC 3339, since before until), and an event Okta gives outside
 * it is said and not published. A stop (SIGTERM, SIGINT) aborts a transfer
 * at once. The token is never printed (not even when an error page echoes
 * it), and its header is zeroed before it is freed.
 *
 * One thread (main's): libcurl's easy interface, one request at a time, the
 * sender's delivery reports served between pages and while waiting.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hb_buf.h"
#include "hb_ingest.h"
#include "hb_log.h"
#include "hb_signal.h"
#include "producer.h"

/* Events per page: the most Okta gives. */
#define HB_OKTALOG_LIMIT 1000
/* Tries of one page on a 5xx or a transport error (backing off 1, 2, 4 ... s). */
#define HB_OKTALOG_TRIES 6
/* The longest wait for Okta's rate limit to reset, whatever it says; and
 * how many 429s in a row one page may get before the run stops. */
#define HB_OKTALOG_MAX_WAIT_S 120
#define HB_OKTALOG_MAX_LIMITED 60
/* A page larger than this is refused (1000 events of a few KB each). */
#define HB_OKTALOG_MAX_PAGE_BYTES (64L * 1024 * 1024)
/* One page's transfer: Okta gives up on a query after 30 s. */
#define HB_OKTALOG_PAGE_TIMEOUT_MS 120000L

typedef struct {
    hb_buf_t body;
    int too_large;
    char *next;         /* the Link header's rel="next" URL */
    long long reset_at; /* X-Rate-Limit-Reset: epoch seconds, 0 if absent */
    long long said_at;  /* its Date: the same clock's now; 0 if absent */
} page_t;

static size_t on_body(char *data, size_t size, size_t n, void *arg) {
    page_t *pg = arg;
    size_t len = size * n;
    if (pg->body.len + len > (size_t)HB_OKTALOG_MAX_PAGE_BYTES) {
        pg->too_large = 1;
        return 0; /* curl stops the transfer */
    }
    hb_buf_put(&pg->body, data, len);
    return len;
}

/* Does the link-param list p[0, n) (after the "<url>") hold rel="next"?
 * rel's value is one relation or a quoted, blank-separated list of them
 * (RFC 8288), with blanks allowed around the '='. */
static int rel_is_next(const char *p, size_t n) {
    const char *end = p + n;
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p)), *stop = semi ? semi : end, *v;
        while (p < stop && isspace((unsigned char)*p))
            p++;
        if (stop - p > 3 && !strncasecmp(p, "rel", 3)) {
            v = p + 3;
            while (v < stop && isspace((unsigned char)*v))
                v++;
            if (v < stop && *v == '=') {
                for (v++; v < stop;) { /* each relation in the value */
                    const char *w;
                    while (v < stop && (isspace((unsigned char)*v) || *v == '"'))
                        v++;
                    for (w = v; w < stop && !isspace((unsigned char)*w) && *w != '"'; w++) {
                    }
                    if (w - v == 4 && !strncasecmp(v, "next", 4))
                        return 1;
                    v = w;
                }
            }
        }
        if (stop == end)
            break;
        p = stop + 1;
    }
    return 0;
}

/* The URL of rel="next" in one Link header value ("<url>; rel=\"next\", ..."). */
static char *link_next(const char *v, size_t n) {
    const char *end = v + n;
    while (v < end) {
        const char *lt = memchr(v, '<', (size_t)(end - v)), *gt, *stop;
        if (!lt || !(gt = memchr(lt, '>', (size_t)(end - lt))))
            return NULL;
        stop = memchr(gt, ',', (size_t)(end - gt));
        if (!stop)
            stop = end;
        if (rel_is_next(gt + 1, (size_t)(stop - gt - 1))) {
            char *url = hb_malloc((size_t)(gt - lt));
            memcpy(url, lt + 1, (size_t)(gt - lt - 1));
            url[gt - lt - 1] = '\0';
            return url;
        }
        if (stop == end)
            break;
        v = stop + 1;
    }
    return NULL;
}

static size_t on_header(char *data, size_t size, size_t n, void *arg) {
    page_t *pg = arg;
    size_t len = size * n, name;
    const char *colon = memchr(data, ':', len);
    if (!colon)
        return len;
    name = (size_t)(colon - data);
    colon++;
    while (colon < data + len && (*colon == ' ' || *colon == '\t'))
        colon++;
    if (name == 4 && !strncasecmp(data, "link", 4) && !pg->next)
        pg->next = link_next(colon, (size_t)(data + len - colon));
    else if (name == 18 && !strncasecmp(data, "x-rate-limit-reset", 18)) {
        char v[32]; /* curl's header data need not end in a NUL */
        size_t vn = (size_t)(data + len - colon);
        snprintf(v, sizeof(v), "%.*s", (int)(vn < sizeof(v) ? vn : sizeof(v) - 1), colon);
        pg->reset_at = strtoll(v, NULL, 10);
    } else if (name == 4 && !strncasecmp(data, "date", 4)) {
        char v[64];
        size_t vn = (size_t)(data + len - colon);
        snprintf(v, sizeof(v), "%.*s", (int)(vn < sizeof(v) ? vn : sizeof(v) - 1), colon);
        time_t t = curl_getdate(v, NULL);
        pg->said_at = t > 0 ? (long long)t : 0;
    }
    return len;
}

static void page_reset(page_t *pg) {
    hb_buf_free(&pg->body);
    free(pg->next);
    memset(pg, 0, sizeof(*pg));
}

/* The parts of an absolute URL, parsed as curl parses it (so as curl will
 * connect): 0, or -1 when it is not one. The strings are curl's (curl_free). */
typedef struct {
    char *scheme, *host, *port, *user, *password, *query, *fragment;
} url_parts_t;

static void url_parts_free(url_parts_t *u) {
    curl_free(u->scheme);
    curl_free(u->host);
    curl_free(u->port);
    curl_free(u->user);
    curl_free(u->password);
    curl_free(u->query);
    curl_free(u->fragment);
    memset(u, 0, sizeof(*u));
}

static int url_parts(const char *url, url_parts_t *u) {
    CURLU *h = curl_url();
    int rc = -1;
    memset(u, 0, sizeof(*u));
    if (h && curl_url_set(h, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(h, CURLUPART_SCHEME, &u->scheme, 0) == CURLUE_OK &&
        curl_url_get(h, CURLUPART_HOST, &u->host, 0) == CURLUE_OK &&
        curl_url_get(h, CURLUPART_PORT, &u->port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
        (void)curl_url_get(h, CURLUPART_USER, &u->user, 0);
        (void)curl_url_get(h, CURLUPART_PASSWORD, &u->password, 0);
        (void)curl_url_get(h, CURLUPART_QUERY, &u->query, 0);
        (void)curl_url_get(h, CURLUPART_FRAGMENT, &u->fragment, 0);
        rc = 0;
    }
    curl_url_cleanup(h);
    if (rc < 0)
        url_parts_free(u);
    return rc;
}

/* next resolved against base (a relative reference is allowed by RFC 8288),
 * malloc'd; NULL when it is not a URL. */
static char *resolve(const char *base, const char *next) {
    CURLU *h = curl_url();
    char *got = NULL, *out = NULL;
    if (h && curl_url_set(h, CURLUPART_URL, base, 0) == CURLUE_OK &&
        curl_url_set(h, CURLUPART_URL, next, 0) == CURLUE_OK &&
        curl_url_get(h, CURLUPART_URL, &got, 0) == CURLUE_OK)
        out = hb_strdup(got);
    curl_free(got);
    curl_url_cleanup(h);
    return out;
}

/* Same scheme, host and port (and no userinfo in b): where the token may go. */
static int same_origin(const char *a, const char *b) {
    url_parts_t x, y;
    int same = url_parts(a, &x) == 0 && url_parts(b, &y) == 0;
    if (same) {
        same = !strcasecmp(x.scheme, y.scheme) && !strcasecmp(x.host, y.host) &&
               !strcmp(x.port, y.port) && !y.user && !y.password;
        url_parts_free(&y);
    }
    url_parts_free(&x);
    return same;
}

/* The org URL: https (plain http only to loopback: tests, a port-forward),
 * no userinfo, query or fragment. NULL, or what is wrong. */
static const char *org_url_fault(const char *url) {
    url_parts_t u;
    const char *fault = NULL;
    if (url_parts(url, &u) < 0)
        return "is not a URL";
    if (u.user || u.password)
        fault = "has a user name or password in it (the token is what authenticates)";
    else if (u.query || u.fragment)
        fault = "has a query or a fragment (give the org's address only)";
    else if (strcasecmp(u.scheme, "https") &&
             (strcasecmp(u.scheme, "http") ||
              (strcmp(u.host, "127.0.0.1") && strcasecmp(u.host, "localhost") &&
               strcmp(u.host, "[::1]"))))
        fault = "is not https:// (plain http only to loopback)";
    url_parts_free(&u);
    return fault;
}

/* An RFC 3339 time as milliseconds since the epoch (hb_parse_time); -1
 * when it is not one. */
static long long rfc3339_ms(const char *s) {
    int64_t ms;
    return hb_parse_time(s, &ms) < 0 ? -1 : (long long)ms;
}

/* curl's progress callback: a stop aborts the transfer (SIGTERM while Okta
 * does not answer took the whole transfer timeout, review 40). */
static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
    (void)arg, (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    return hb_stop_requested != 0;
}

/* Transport errors that trying again does not cure. */
static int curl_error_permanent(CURLcode cc) {
    return cc == CURLE_UNSUPPORTED_PROTOCOL || cc == CURLE_URL_MALFORMAT ||
           cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CERTPROBLEM ||
           cc == CURLE_SSL_CACERT_BADFILE || cc == CURLE_SSL_ISSUER_ERROR ||
           cc == CURLE_ABORTED_BY_CALLBACK;
}

/* Waits ms, serving the sender's delivery reports; 0 when a stop came. */
static int pause_ms(hb_producer_t *p, long long ms) {
    int64_t until = hb_mono_ms() + ms;
    while (!hb_stop_requested && hb_mono_ms() < until)
        hb_producer_poll(p, 100);
    return !hb_stop_requested;
}

/* Okta's errorSummary from an error body, or a short part of the body. */
static void error_summary(const page_t *pg, char *out, size_t outsz) {
    json_t *j = pg->body.p ? json_loadb(pg->body.p, pg->body.len, 0, NULL) : NULL;
    const char *s = json_string_value(json_object_get(j, "errorSummary"));
    if (s)
        snprintf(out, outsz, "%s", s);
    else if (pg->body.len)
        snprintf(out, outsz, "%.*s", (int)(pg->body.len > 200 ? 200 : pg->body.len), pg->body.p);
    else
        snprintf(out, outsz, "no body");
    json_decref(j);
    hb_utf8_scrub(out);
    for (char *c = out; *c; c++) /* one line */
        if (*c == '\n' || *c == '\r')
            *c = ' ';
}

/* Every copy of the token in s (text Okta or a proxy sent: an echoed
 * request) made "(the API token)", so that it is never printed. */
static void redact(char *s, size_t size, const char *token) {
    static const char mask[] = "(the API token)";
    size_t tn, mn = sizeof(mask) - 1;
    char *hit;
    if (!strncasecmp(token, "Bearer ", 7)) /* the secret is what follows */
        token += 7;
    tn = strlen(token);
    if (tn < 4) /* no secret is that short; nothing to find */
        return;
    for (char *from = s; (hit = strstr(from, token));) {
        size_t tail = strlen(hit + tn);
        if ((size_t)(hit - s) + mn + tail + 1 > size) { /* no room: cut here */
            snprintf(hit, size - (size_t)(hit - s), "%s", mask);
            return;
        }
        memmove(hit + mn, hit + tn, tail + 1);
        memcpy(hit, mask, mn);
        from = hit + mn;
    }
}

/* GETs url into pg, with Okta's rate limit waited out and a 5xx or a
 * transport error tried again. 0 on 200; -1 after saying why. */
static int fetch_page(hb_producer_t *p, CURL *h, const char *url, const char *auth,
                      const char *token, page_t *pg) {
    struct curl_slist *hdrs = NULL;
    int rc = -1;
    hdrs = curl_slist_append(hdrs, auth);
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    for (int attempt = 1, limited = 0; !hb_stop_requested;) {
        long status = 0;
        CURLcode cc;
        char why[300];
        page_reset(pg);
        (void)curl_easy_setopt(h, CURLOPT_URL, url);
        (void)curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        (void)curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        (void)curl_easy_setopt(h, CURLOPT_WRITEDATA, pg);
        (void)curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        (void)curl_easy_setopt(h, CURLOPT_HEADERDATA, pg);
        cc = curl_easy_perform(h);
        if (hb_stop_requested) /* the transfer was aborted for it (on_progress) */
            break;
        if (cc == CURLE_OK)
            (void)curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        if (cc == CURLE_OK && status == 200) {
            rc = 0;
            break;
        }
        if (pg->too_large) {
            hb_error("okta system log: a page larger than %ld bytes: stopping",
                     HB_OKTALOG_MAX_PAGE_BYTES);
            break;
        }
        if (status == 429) { /* Okta's rate limit: wait for its reset */
            /* the reset is Okta's clock: counted from the Date it answered
             * with (this host's clock may be minutes off: waiting 2 minutes
             * for each 429, or 1 s and asking again and again) */
            long long now = pg->said_at > 0 ? pg->said_at : (long long)time(NULL);
            long long wait = pg->reset_at > 0 ? pg->reset_at - now + 1 : 10;
            if (wait < 1)
                wait = 1;
            if (wait > HB_OKTALOG_MAX_WAIT_S)
                wait = HB_OKTALOG_MAX_WAIT_S;
            if (++limited > HB_OKTALOG_MAX_LIMITED) {
                hb_error("okta system log: still rate limited (HTTP 429) after %d answers: "
                         "stopping",
                         HB_OKTALOG_MAX_LIMITED);
                break;
            }
            if (limited % 10 == 1)
                hb_warn("okta system log: rate limited (HTTP 429): waiting %lld s", wait);
            if (!pause_ms(p, wait * 1000))
                break;
            continue;
        }
        if (cc != CURLE_OK) {
            snprintf(why, sizeof(why), "%s", curl_easy_strerror(cc));
        } else if (status >= 300 && status < 400) {
            char *to = NULL;
            (void)curl_easy_getinfo(h, CURLINFO_REDIRECT_URL, &to);
            snprintf(why, sizeof(why),
                     "a redirect to %.200s, not followed (give the org's own "
                     "URL)",
                     to ? to : "(no Location)");
            hb_utf8_scrub(why);
        } else {
            error_summary(pg, why, sizeof(why));
        }
        redact(why, sizeof(why), token);
        if ((cc == CURLE_OK && status < 500) || curl_error_permanent(cc) ||
            attempt >= HB_OKTALOG_TRIES) {
            if (status == 401 || status == 403)
                hb_error("okta system log: Okta refused the API token (HTTP %ld: %s): check "
                         "HOOKBRIDGE_OKTA_API_TOKEN and its admin role (Read-only "
                         "Administrator reads the System Log)",
                         status, why);
            else if (cc == CURLE_OK)
                hb_error("okta system log: HTTP %ld: %s", status, why);
            else
                hb_error("okta system log: %s (after %d tries)", why, attempt);
            break;
        }
        if (cc == CURLE_OK)
            hb_warn("okta system log: HTTP %ld (%s): trying again in %d s", status, why,
                    1 << (attempt - 1));
        else
            hb_warn("okta system log: %s: trying again in %d s", why, 1 << (attempt - 1));
        if (!pause_ms(p, 1000LL << (attempt - 1)))
            break;
        attempt++;
    }
    for (struct curl_slist *l = hdrs; l; l = l->next) /* the token's copy */
        explicit_bzero(l->data, strlen(l->data));
    curl_slist_free_all(hdrs);
    return rc;
}

/* The first page's URL: ORG/api/v1/logs?since&until&filter&limit&sortOrder. */
static char *first_url(CURL *h, const hb_oktalog_opts_t *o) {
    hb_buf_t u = {0};
    const char *org = o->org_url;
    size_t n = strlen(org);
    while (n && org[n - 1] == '/')
        n--;
    hb_buf_printf(&u, "%.*s/api/v1/logs?limit=%d&sortOrder=ASCENDING", (int)n, org,
                  HB_OKTALOG_LIMIT);
    const char *names[] = {"since", "until", "filter"};
    const char *values[] = {o->since, o->until, o->filter};
    for (size_t i = 0; i < HB_ARRAY_SIZE(names); i++) {
        char *esc;
        if (!values[i] || !*values[i])
            continue;
        esc = curl_easy_escape(h, values[i], 0);
        hb_buf_printf(&u, "&%s=%s", names[i], esc ? esc : "");
        curl_free(esc);
    }
    return u.p;
}

int hb_oktalog_run(hb_producer_t *p, const hb_config_t *cfg, const hb_oktalog_opts_t *o,
                   char *last_published, size_t last_size) {
    CURL *h = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? curl_easy_init() : NULL;
    page_t pg;
    char *url = NULL, *auth = NULL, *next;
    long long seq = 0, pages = 0, outside = 0;
    long long since_ms = rfc3339_ms(o->since), until_ms = rfc3339_ms(o->until);
    size_t auth_len;
    int rc = -1;

    memset(&pg, 0, sizeof(pg));
    *last_published = '\0';
    hb_producer_name_uuids(p);
    if (!h) {
        hb_error("okta system log: cannot make an HTTP client");
        return -1;
    }
    /* an OAuth access token is sent as given ("Bearer ..."), an API token
     * with Okta's SSWS scheme */
    auth_len = strlen(cfg->okta_api_token) + 32;
    auth = hb_malloc(auth_len);
    snprintf(auth, auth_len, "Authorization: %s%s",
             strncasecmp(cfg->okta_api_token, "Bearer ", 7) ? "SSWS " : "", cfg->okta_api_token);
    (void)curl_easy_setopt(h, CURLOPT_USERAGENT, "hookbridge-producer/" HB_VERSION);
    (void)curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    (void)curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, HB_OKTALOG_PAGE_TIMEOUT_MS);
    (void)curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L); /* nothing for 30 s: stalled */
    (void)curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 30L);
    (void)curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    (void)curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L); /* the token stays home */
    (void)curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    (void)curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    (void)curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    (void)curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
    url = first_url(h, o);
    hb_info("okta system log: reading %s .. %s%s%s from %s", o->since, o->until,
            o->filter && *o->filter ? ", filter " : "", o->filter && *o->filter ? o->filter : "",
            o->org_url);
    while (!hb_stop_requested) {
        json_error_t jerr;
        json_t *events;
        size_t i, cnt;
        json_t *ev;
        if (fetch_page(p, h, url, auth, cfg->okta_api_token, &pg) < 0)
            goto out;
        events = hb_ingest_loadb(pg.body.p ? pg.body.p : "", pg.body.len, 0, &jerr);
        if (!json_is_array(events)) {
            redact(jerr.text, sizeof(jerr.text), cfg->okta_api_token);
            hb_error("okta system log: page %lld is not a JSON array of events (%s)", pages + 1,
                     events ? "another JSON value" : jerr.text);
            json_decref(events);
            goto out;
        }
        cnt = json_array_size(events);
        pages++;
        json_array_foreach(events, i, ev) {
            const char *published = json_string_value(json_object_get(ev, "published"));
            long long at = rfc3339_ms(published);
            if (at >= 0 && (at < since_ms || at > until_ms)) {
                /* not asked for (Okta keeps to the window; a proxy or a
                 * cache in front of it may not): said, not published */
                if (!outside++)
                    hb_warn("okta system log: event %.100s published at %.64s is outside "
                            "the window %s .. %s: not published",
                            json_string_value(json_object_get(ev, "uuid"))
                                ? json_string_value(json_object_get(ev, "uuid"))
                                : "(no uuid)",
                            published, o->since, o->until);
                continue;
            }
            hb_ingest_okta_adjust(ev);
            if (hb_producer_send(p, ev, seq + 1) == HB_PRODUCER_STOPPED)
                break; /* not taken: a run again starts at the last one taken */
            seq++;
            if (published && strlen(published) < last_size)
                snprintf(last_published, last_size, "%s", published);
        }
        json_decref(events);
        if (i < cnt) /* a stop while the local queue was full */
            goto out;
        hb_info("okta system log: page %lld: %zu events (%lld so far)", pages, cnt, seq);
        if (!cnt || !pg.next) /* a bounded window ends so */
            break;
        next = resolve(url, pg.next);
        free(pg.next);
        pg.next = next;
        if (!pg.next) {
            hb_error("okta system log: the next page's link is not a URL: stopping");
            goto out;
        }
        if (!strcmp(pg.next, url)) { /* a proxy's or a cache's doing: read once */
            hb_error("okta system log: the next page is the page just read (%.200s): stopping",
                     url);
            goto out;
        }
        if (!same_origin(pg.next, url)) {
            hb_error("okta system log: the next page is on another origin than %s: stopping "
                     "(the API token goes to the org only)",
                     o->org_url);
            goto out;
        }
        free(url);
        url = pg.next;
        pg.next = NULL;
    }
    rc = hb_stop_requested ? -1 : 0;
    if (rc == 0 && until_ms > hb_wall_ms())
        /* Okta gives what it has now: what is published after is not read */
        hb_warn("okta system log: --until %s is in the future: the events published from now "
                "on are not in this run; run again with --since %s --until %s once it is past",
                o->until, *last_published ? last_published : o->since, o->until);
out:
    if (outside)
        hb_warn("okta system log: %lld event%s Okta gave %s outside the window %s .. %s: "
                "not published",
                outside, outside == 1 ? "" : "s", outside == 1 ? "was" : "were", o->since,
                o->until);
    page_reset(&pg);
    free(url);
    explicit_bzero(auth, strlen(auth));
    free(auth);
    curl_easy_cleanup(h);
    curl_global_cleanup();
    return rc;
}

void hb_oktalog_resume(const hb_producer_t *p, const hb_oktalog_opts_t *o, int read_all,
                       const char *last_read) {
    int unnamed;
    const char *lost = hb_producer_first_lost(p, &unnamed), *from = NULL;
    if (!read_all)
        from = *last_read ? last_read : o->since;
    if (lost && (!from || hb_time_before(lost, from)))
        from = lost;
    if (unnamed) /* an event the brokers did not take that has no time: all again */
        from = o->since;
    if (!from)
        return;
    if (!read_all && !*last_read && !lost && !unnamed)
        hb_warn("okta system log: stopped before any event was read: run again");
    else
        hb_warn("okta system log: %s: %s; run again with --since %s --until %s to go on "
                "(what is read twice is published again with the same uuid)",
                read_all ? "the window was read to its end" : "stopped before the window's end",
                lost || unnamed ? "not every event read reached the brokers"
                                : "every event read reached the brokers",
                from, o->until);
}

int hb_oktalog_check(const hb_config_t *cfg, const hb_oktalog_opts_t *o, char *errstr,
                     size_t errstr_size) {
    const char *fault = org_url_fault(o->org_url), *t = cfg->okta_api_token;
    if (fault) {
        /* the URL is not printed: a user name or password may be in it */
        hb_seterr(errstr, errstr_size,
                  "--okta-logs wants the org's https:// URL (https://example.okta.com): the "
                  "one given %s",
                  fault);
        return -1;
    }
    if (!o->since || !*o->since || !o->until || !*o->until) {
        hb_seterr(errstr, errstr_size,
                  "--okta-logs needs --since and --until (RFC 3339 times: the window to read)");
        return -1;
    }
    if (rfc3339_ms(o->since) < 0 || rfc3339_ms(o->until) < 0) {
        hb_seterr(errstr, errstr_size,
                  "--%s \"%.64s\" is not an RFC 3339 time (2026-12-06T10:00:00Z, or with "
                  "an offset: 2026-12-06T11:00:00+01:00)",
                  rfc3339_ms(o->since) < 0 ? "since" : "until",
                  rfc3339_ms(o->since) < 0 ? o->since : o->until);
        hb_utf8_scrub(errstr);
        return -1;
    }
    if (rfc3339_ms(o->since) >= rfc3339_ms(o->until)) {
        hb_seterr(errstr, errstr_size, "--since %s is not before --until %s: the window is empty",
                  o->since, o->until);
        return -1;
    }
    if (!*t) {
        hb_seterr(errstr, errstr_size,
                  "--okta-logs needs HOOKBRIDGE_OKTA_API_TOKEN (an Okta API token that may "
                  "read the System Log)");
        return -1;
    }
    if (!hb_header_value_sendable(t)) { /* the token is a secret: say what, not which */
        hb_seterr(errstr, errstr_size,
                  "HOOKBRIDGE_OKTA_API_TOKEN has a line break, another control character or a "
                  "blank at either end (a file's last newline?)");
        return -1;
    }
    return 0;
}
