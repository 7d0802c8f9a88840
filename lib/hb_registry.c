/*
 * Schema Registry client. See hb_registry.h.
 *
 * The design: a small cache of entries (id, state, schema text or reason,
 * time of the last answer) shared by the loop and one helper thread under a
 * mutex. The loop adds an entry in state QUEUED at first sight of an id and
 * signals; the helper takes QUEUED entries one at a time, fetches each with a
 * libcurl easy handle (a blocking call, but on its own thread, bounded by the
 * timeout), and stores the answer. An entry is never removed while FOUND, so
 * the schema text handed out stays valid; entries for ids the registry did
 * not know are dropped when the cache grows past HB_REGISTRY_MAX_ENTRIES
 * (hostile bytes can name any id).
 *
 * A "schema not found" for an id above every id the registry has given us
 * is not believed at once (NOT_YET, asked again every HB_REGISTRY_RETRY_MS)
 * until new_id_grace_ms after the first such answer: a producer registers
 * its schema with the registry's primary and writes the event a moment
 * later, and the replica we ask may not have read the registration yet
 * (Confluent's replicas read it from a Kafka topic). Ids at or below one
 * it gave us it has read already, and id 0 it never hands out: those are
 * poison at once. The grace counts once per id (absent_since is kept), so
 * an id that never appears costs its partition new_id_grace_ms once. Nor is
 * an id more than HB_REGISTRY_NEW_ID_SPAN above the highest one given us
 * waited for: registries number schemas one after the other, so such an id
 * is bytes that only look framed (raw Avro whose first byte is 0, say), and
 * a stream of them would hold their partitions new_id_grace_ms each.
 *
 * What must hold: the loop never does I/O here; a failure of the registry is
 * never reported as NOT_FOUND (that would dead-letter good events); the
 * credentials appear in no log line and no error string.
 */
#include "hb_registry.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_log.h"

#define HB_REGISTRY_MAX_ENTRIES 4096
#define HB_REGISTRY_MAX_REPLY (4 * 1024 * 1024)

typedef enum { E_QUEUED, E_FETCHING, E_FOUND, E_NOT_YET, E_NOT_FOUND, E_FAILED } entry_state_t;

typedef struct {
    uint32_t id;
    entry_state_t state;
    char *schema;         /* FOUND: the text, owned, never freed before the registry */
    char reason[256];     /* NOT_YET, NOT_FOUND, FAILED */
    int64_t at;           /* monotonic ms of the last answer */
    int64_t absent_since; /* monotonic ms of the first "schema not found"; 0: none */
} entry_t;

struct hb_registry_s {
    char *url; /* without a trailing slash */
    char *user_info;
    char *ca_file;
    long long timeout_ms;
    long long grace_ms; /* new_id_grace_ms */
    pthread_t thread;
    int started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stop;
    entry_t *entries;
    size_t cnt, cap;
    int down;
    int found_any;      /* whether the registry has given us a schema, and ... */
    uint32_t max_found; /* ... the highest id it has */
    int64_t down_at;    /* monotonic ms of the last failure */
    char down_why[256];
};

/* ------------------------------------------------------------ one request */

typedef struct {
    char *p;
    size_t len;
    int too_big;
} reply_t;

static size_t on_body(char *data, size_t size, size_t nmemb, void *opaque) {
    reply_t *b = opaque;
    size_t n = size * nmemb;
    if (b->len + n > HB_REGISTRY_MAX_REPLY) {
        b->too_big = 1;
        return 0;
    }
    b->p = hb_realloc(b->p, b->len + n + 1);
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return n;
}

/* Said of such a URL, which is not repeated: it may hold a password. */
#define HB_REGISTRY_BAD_HOST_PART                                                                  \
    "the host part of the schema registry URL is not host[:port] (percent-encode a '/' in a "      \
    "user name or password as %%2F, or use HOOKBRIDGE_SCHEMA_REGISTRY_USER_INFO)"

/* Does the host part of url (after its user info) fail to be host[:port],
 * [v6][:port]? A '/' in a password that is not percent-encoded ends the
 * host part early: "https://reader:Pa/ss@sr/" has the host part
 * "reader:Pa", whose "port" is the password's start. */
static int url_host_part_bad(const char *url) {
    const char *scheme = strstr(url, "://");
    const char *host = scheme ? scheme + 3 : url;
    const char *end = host + strcspn(host, "/?#"), *port;
    for (const char *p = host; p < end; p++)
        if (*p == '@')
            host = p + 1;
    if (*host == '[') {
        const char *close = memchr(host, ']', (size_t)(end - host));
        if (!close)
            return 1;
        port = close + 1 < end ? close + 1 : NULL;
        if (port && *port != ':')
            return 1;
    } else {
        port = memchr(host, ':', (size_t)(end - host));
    }
    if (!port)
        return 0;
    port++;
    if (port == end)
        return 1;
    for (; port < end; port++)
        if (*port < '0' || *port > '9')
            return 1;
    return 0;
}

/* Everything between "://" and the last '@' goes, wherever that '@' is: a
 * password holding '/', '?' or '#' (API secrets often hold '/') is not
 * percent-encoded by every operator, and then the user-info seems to end
 * inside it; a registry URL with an '@' in its path loses a part of the
 * path in the log, never a secret. */
void hb_registry_url_for_log(const char *url, char *out, size_t out_size) {
    const char *scheme = strstr(url, "://");
    const char *host = scheme ? scheme + 3 : url;
    const char *at = strrchr(host, '@');
    if (!at) {
        snprintf(out, out_size, "%s", url);
        return;
    }
    snprintf(out, out_size, "%.*s%s", (int)(host - url), url, at + 1);
}

/* Aborts a request in flight once the registry is being freed. */
static int on_progress(void *opaque, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
    const int *stop = opaque;
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    return stop && __atomic_load_n(stop, __ATOMIC_RELAXED) ? 1 : 0;
}

/* One request to <url><path> (POST with body when body is not NULL); the
 * HTTP status and the parsed JSON reply (NULL when it is not JSON). stop (may
 * be NULL) aborts it when it becomes non-zero. -1: no answer; -2: an answer
 * larger than HB_REGISTRY_MAX_REPLY (*status is its status). */
static int call(CURL *h, const char *base, const char *user_info, const char *ca_file,
                long long timeout_ms, const int *stop, const char *path, const char *body,
                long *status, json_t **reply, char *errstr, size_t errstr_size) {
    char url[2048], ebuf[CURL_ERROR_SIZE] = "", logurl[2048];
    struct curl_slist *hdrs = NULL;
    reply_t b = {0};
    CURLcode rc;
    int r = -1;
    *status = 0;
    *reply = NULL;
    snprintf(url, sizeof(url), "%s%s", base, path);
    hb_registry_url_for_log(url, logurl, sizeof(logurl));
    curl_easy_reset(h);
    hdrs = curl_slist_append(hdrs, "Accept: application/vnd.schemaregistry.v1+json, "
                                   "application/vnd.schemaregistry+json, application/json");
    if (body)
        hdrs = curl_slist_append(hdrs, "Content-Type: application/vnd.schemaregistry.v1+json");
    (void)curl_easy_setopt(h, CURLOPT_URL, url);
    (void)curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    (void)curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    (void)curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    (void)curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
    (void)curl_easy_setopt(h, CURLOPT_ERRORBUFFER, ebuf);
    (void)curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    (void)curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    (void)curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    (void)curl_easy_setopt(h, CURLOPT_USERAGENT, "hookbridge/" HB_VERSION);
    (void)curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    (void)curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    (void)curl_easy_setopt(h, CURLOPT_XFERINFODATA, (void *)stop);
    if (user_info && *user_info) {
        (void)curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        (void)curl_easy_setopt(h, CURLOPT_USERPWD, user_info);
    }
    if (ca_file && *ca_file)
        (void)curl_easy_setopt(h, CURLOPT_CAINFO, ca_file);
    if (body)
        (void)curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    rc = curl_easy_perform(h);
    if (rc != CURLE_OK && !b.too_big) {
        hb_seterr(errstr, errstr_size, "%s: %s", logurl, ebuf[0] ? ebuf : curl_easy_strerror(rc));
        goto done;
    }
    (void)curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    if (b.too_big) {
        hb_seterr(errstr, errstr_size, "%s: reply larger than %d bytes", logurl,
                  HB_REGISTRY_MAX_REPLY);
        r = -2;
        goto done;
    }
    *reply = b.p ? json_loads(b.p, 0, NULL) : NULL;
    r = 0;
done:
    /* the credentials must not outlive the request in the handle */
    (void)curl_easy_setopt(h, CURLOPT_USERPWD, NULL);
    curl_slist_free_all(hdrs);
    free(b.p);
    return r;
}

/* Confluent's error_code for "Schema not found" (GET /schemas/ids/<id>). */
#define HB_REGISTRY_NO_SCHEMA 40403

/* The registry's own words for an error reply, when it gave some. */
static const char *reply_message(const json_t *reply) {
    const char *m = json_string_value(json_object_get(reply, "message"));
    return m ? m : "";
}

/* GET /schemas/ids/<id>: the entry's new state and schema or reason;
 * *absent says the registry answered its "schema not found". */
static entry_state_t fetch(hb_registry_t *r, CURL *h, uint32_t id, char **schema, int *absent,
                           char *reason, size_t reason_size) {
    char path[64];
    long status = 0;
    json_t *reply = NULL;
    entry_state_t st = E_FAILED;
    const char *text, *type;
    int rc;
    *absent = 0;
    snprintf(path, sizeof(path), "/schemas/ids/%" PRIu32, id);
    rc = call(h, r->url, r->user_info, r->ca_file, r->timeout_ms, &r->stop, path, NULL, &status,
              &reply, reason, reason_size);
    if (rc < 0) {
        /* The registry's answer for the id, too large to take: it will not
         * get smaller (ids never change meaning), so, as a schema that is
         * not Avro, it makes the id's events poison; waiting would hold
         * them for ever and fetch it again every second. */
        if (rc == -2 && status == 200) {
            hb_seterr(reason, reason_size,
                      "schema id %" PRIu32 ": the schema registry's answer is larger than %d "
                      "bytes, more than hookbridge takes for a schema",
                      id, HB_REGISTRY_MAX_REPLY);
            return E_NOT_FOUND;
        }
        return E_FAILED;
    }
    text = json_string_value(json_object_get(reply, "schema"));
    type = json_string_value(json_object_get(reply, "schemaType"));
    if (status == 200 && text && (!type || !strcmp(type, "AVRO"))) {
        *schema = hb_strdup(text);
        st = E_FOUND;
    } else if (status == 200 && text) {
        hb_seterr(reason, reason_size, "schema id %" PRIu32 " is a %s schema, not Avro", id, type);
        st = E_NOT_FOUND;
    } else if (status == 404 &&
               json_integer_value(json_object_get(reply, "error_code")) == HB_REGISTRY_NO_SCHEMA) {
        /* the registry's own "Schema not found" (Confluent, Apicurio's
         * compatibility API, Karapace): it does not have the id */
        hb_seterr(reason, reason_size, "schema id %" PRIu32 " not found in the schema registry%s%s",
                  id, *reply_message(reply) ? ": " : "", reply_message(reply));
        st = E_NOT_FOUND;
        *absent = 1;
    } else if (status == 404) {
        /* a route the server does not know (a wrong base URL): not an
         * answer about the id, so the events wait */
        hb_seterr(reason, reason_size,
                  "the schema registry answered HTTP 404%s%s to /schemas/ids/%" PRIu32
                  ", not its \"schema not found\": check HOOKBRIDGE_SCHEMA_REGISTRY_URL",
                  *reply_message(reply) ? ": " : "", reply_message(reply), id);
    } else if (status == 401 || status == 403) {
        hb_seterr(reason, reason_size,
                  "the schema registry refused our credentials (HTTP %ld): check "
                  "HOOKBRIDGE_SCHEMA_REGISTRY_USER_INFO",
                  status);
    } else if (status == 200) {
        hb_seterr(reason, reason_size,
                  "the schema registry's answer for id %" PRIu32 " has no \"schema\" string", id);
    } else {
        hb_seterr(reason, reason_size, "the schema registry answered HTTP %ld%s%s", status,
                  *reply_message(reply) ? ": " : "", reply_message(reply));
    }
    json_decref(reply);
    return st;
}

/* ------------------------------------------------------- helper thread */

static entry_t *find(hb_registry_t *r, uint32_t id) {
    for (size_t i = 0; i < r->cnt; i++)
        if (r->entries[i].id == id)
            return &r->entries[i];
    return NULL;
}

/* A "schema not found" for e (lock held): NOT_YET while the id is newer than
 * any the registry gave us and the grace since its first such answer lasts. */
static void not_found_yet(hb_registry_t *r, entry_t *e) {
    int newer = e->id != 0 && (!r->found_any || (e->id > r->max_found &&
                                                 e->id - r->max_found <= HB_REGISTRY_NEW_ID_SPAN));
    int first = !e->absent_since;
    if (first)
        e->absent_since = e->at;
    if (!newer || r->grace_ms <= 0)
        return;
    if (e->at - e->absent_since < r->grace_ms) {
        e->state = E_NOT_YET;
        if (first) {
            char seen[48] = "no schema yet";
            if (r->found_any)
                snprintf(seen, sizeof(seen), "ids up to %" PRIu32, r->max_found);
            hb_warn("schema id %" PRIu32 " not found in the schema registry, which has given us "
                    "%s: its events wait up to %lld ms for a replica that has not caught up yet, "
                    "then are dead-lettered",
                    e->id, seen, r->grace_ms);
        }
    } else {
        hb_warn("schema id %" PRIu32 " still not found in the schema registry %lld ms after "
                "it first said so: its events are dead-lettered",
                e->id, (long long)(e->at - e->absent_since));
    }
}

static void *helper(void *opaque) {
    hb_registry_t *r = opaque;
    CURL *h = curl_easy_init();
    pthread_mutex_lock(&r->lock);
    for (;;) {
        entry_t *e = NULL;
        uint32_t id;
        char *schema = NULL, reason[256] = "";
        entry_state_t st;
        int absent = 0;
        while (!r->stop) {
            for (size_t i = 0; i < r->cnt && !e; i++)
                if (r->entries[i].state == E_QUEUED)
                    e = &r->entries[i];
            if (e)
                break;
            pthread_cond_wait(&r->cond, &r->lock);
        }
        if (r->stop)
            break;
        e->state = E_FETCHING;
        id = e->id;
        pthread_mutex_unlock(&r->lock);
        if (h)
            st = fetch(r, h, id, &schema, &absent, reason, sizeof(reason));
        else {
            st = E_FAILED;
            hb_seterr(reason, sizeof(reason), "curl_easy_init failed");
        }
        pthread_mutex_lock(&r->lock);
        e = find(r, id); /* the array may have moved meanwhile */
        if (!e) {
            free(schema);
            continue;
        }
        e->state = st;
        e->schema = schema;
        e->at = hb_mono_ms();
        snprintf(e->reason, sizeof(e->reason), "%s", reason);
        if (st == E_FOUND) {
            if (!r->found_any || id > r->max_found)
                r->max_found = id;
            r->found_any = 1;
        } else if (absent) {
            not_found_yet(r, e);
        }
        r->down = st == E_FAILED;
        if (r->down) {
            r->down_at = e->at;
            snprintf(r->down_why, sizeof(r->down_why), "%s", reason);
        }
    }
    pthread_mutex_unlock(&r->lock);
    if (h)
        curl_easy_cleanup(h);
    return NULL;
}

int hb_registry_ca_check(const char *ca_file, char *errstr, size_t errstr_size) {
    X509_STORE *store;
    FILE *fp = fopen(ca_file, "r");
    unsigned long e;
    int ok;
    if (!fp) {
        hb_seterr(errstr, errstr_size, "cannot read: %s", strerror(errno));
        return -1;
    }
    fclose(fp);
    store = X509_STORE_new();
    if (!store) {
        hb_seterr(errstr, errstr_size, "out of memory");
        return -1;
    }
    ERR_clear_error();
    /* as curl loads it (CURLOPT_CAINFO, OpenSSL): certificates in PEM */
    ok = X509_STORE_load_file(store, ca_file) == 1;
    e = ERR_peek_last_error();
    X509_STORE_free(store);
    if (!ok) {
        char why[200] = "no certificate in it";
        if (e)
            ERR_error_string_n(e, why, sizeof(why));
        ERR_clear_error();
        hb_seterr(errstr, errstr_size, "no usable PEM certificates: %s", why);
        return -1;
    }
    return 0;
}

hb_registry_t *hb_registry_new(const hb_registry_opts_t *opts, char *errstr, size_t errstr_size) {
    hb_registry_t *r;
    size_t n;
    if (!opts->url ||
        (strncmp(opts->url, "http://", 7) != 0 && strncmp(opts->url, "https://", 8) != 0)) {
        hb_seterr(errstr, errstr_size, "schema registry URL must start with http:// or https://");
        return NULL;
    }
    if (url_host_part_bad(opts->url)) {
        /* not repeated: it may hold a password */
        hb_seterr(errstr, errstr_size, HB_REGISTRY_BAD_HOST_PART);
        return NULL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        hb_seterr(errstr, errstr_size, "curl_global_init failed");
        return NULL;
    }
    {
        /* A URL curl cannot parse would fail every fetch, from the first
         * event in the registry's framing on: said now (without the URL,
         * which may hold a password). */
        CURLU *u = curl_url();
        CURLUcode uc = u ? curl_url_set(u, CURLUPART_URL, opts->url, 0) : CURLUE_OUT_OF_MEMORY;
        curl_url_cleanup(u);
        if (uc != CURLUE_OK) {
            hb_seterr(errstr, errstr_size,
                      "not a URL: %s (percent-encode '/', '?', '#' and '@' in a user name or "
                      "password, or use HOOKBRIDGE_SCHEMA_REGISTRY_USER_INFO)",
                      curl_url_strerror(uc));
            curl_global_cleanup();
            return NULL;
        }
    }
    r = hb_calloc(1, sizeof(*r));
    r->url = hb_strdup(opts->url);
    n = strlen(r->url);
    while (n > 0 && r->url[n - 1] == '/')
        r->url[--n] = '\0';
    r->user_info = hb_strdup(opts->user_info ? opts->user_info : "");
    r->ca_file = hb_strdup(opts->ca_file ? opts->ca_file : "");
    r->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 5000;
    r->grace_ms = opts->new_id_grace_ms > 0 ? opts->new_id_grace_ms : 0;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    if (pthread_create(&r->thread, NULL, helper, r) != 0) {
        hb_seterr(errstr, errstr_size, "schema registry: cannot start its thread");
        hb_registry_free(r);
        return NULL;
    }
    r->started = 1;
    return r;
}

void hb_registry_free(hb_registry_t *r) {
    if (!r)
        return;
    if (r->started) {
        pthread_mutex_lock(&r->lock);
        __atomic_store_n(&r->stop, 1, __ATOMIC_RELAXED);
        pthread_cond_signal(&r->cond);
        pthread_mutex_unlock(&r->lock);
        /* a request in flight is aborted by on_progress */
        pthread_join(r->thread, NULL);
    }
    for (size_t i = 0; i < r->cnt; i++)
        free(r->entries[i].schema);
    free(r->entries);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
    if (r->user_info)
        OPENSSL_cleanse(r->user_info, strlen(r->user_info));
    free(r->user_info);
    free(r->ca_file);
    free(r->url);
    free(r);
    curl_global_cleanup();
}

/* Drops the entries of ids the registry did not know (lock held). */
static void compact(hb_registry_t *r) {
    size_t j = 0;
    for (size_t i = 0; i < r->cnt; i++)
        if (r->entries[i].state != E_NOT_FOUND)
            r->entries[j++] = r->entries[i];
    r->cnt = j;
}

hb_registry_status_t hb_registry_lookup(hb_registry_t *r, uint32_t id, const char **schema,
                                        char *why, size_t why_size) {
    hb_registry_status_t st = HB_REGISTRY_PENDING;
    entry_t *e;
    int64_t now = hb_mono_ms();
    *schema = NULL;
    pthread_mutex_lock(&r->lock);
    e = find(r, id);
    if (!e) {
        if (r->cnt >= HB_REGISTRY_MAX_ENTRIES)
            compact(r);
        if (r->cnt == r->cap) {
            r->cap = r->cap ? r->cap * 2 : 16;
            r->entries = hb_realloc(r->entries, r->cap * sizeof(*r->entries));
        }
        e = &r->entries[r->cnt++];
        memset(e, 0, sizeof(*e));
        e->id = id;
        e->state = E_QUEUED;
        pthread_cond_signal(&r->cond);
    } else if (e->state == E_FOUND) {
        *schema = e->schema;
        st = HB_REGISTRY_FOUND;
    } else if (e->state == E_NOT_FOUND || e->state == E_FAILED || e->state == E_NOT_YET) {
        int64_t again = e->state == E_NOT_FOUND ? HB_REGISTRY_RECHECK_MS : HB_REGISTRY_RETRY_MS;
        if (now - e->at >= again) {
            e->state = E_QUEUED;
            pthread_cond_signal(&r->cond);
        } else {
            snprintf(why, why_size, "%s", e->reason);
            st = e->state == E_FAILED    ? HB_REGISTRY_UNAVAILABLE
                 : e->state == E_NOT_YET ? HB_REGISTRY_NOT_YET
                                         : HB_REGISTRY_NOT_FOUND;
        }
    }
    pthread_mutex_unlock(&r->lock);
    return st;
}

int hb_registry_down(hb_registry_t *r, char *why, size_t why_size) {
    int down;
    pthread_mutex_lock(&r->lock);
    /* Down only while a failure is recent: a message waiting for the
     * registry asks again every HB_REGISTRY_RETRY_MS, which keeps it so;
     * with nothing waiting (its partition moved to another member) there
     * is nothing to be not ready for. */
    down = r->down && hb_mono_ms() - r->down_at <= 2 * HB_REGISTRY_RETRY_MS + r->timeout_ms;
    if (down)
        snprintf(why, why_size, "%s", r->down_why);
    pthread_mutex_unlock(&r->lock);
    return down;
}

/* ------------------------------------------------------------- register */

int hb_registry_register(const hb_registry_opts_t *opts, const char *subject, const char *schema,
                         uint32_t *id, char *errstr, size_t errstr_size) {
    CURL *h;
    char path[600], base[2048];
    char *body = NULL, *esc = NULL;
    json_t *req, *reply = NULL;
    json_int_t got;
    long status = 0;
    size_t n;
    int r = -1;
    if (!opts->url || !*opts->url) {
        hb_seterr(errstr, errstr_size, "no schema registry URL (HOOKBRIDGE_SCHEMA_REGISTRY_URL)");
        return -1;
    }
    if (url_host_part_bad(opts->url)) {
        hb_seterr(errstr, errstr_size, HB_REGISTRY_BAD_HOST_PART);
        return -1;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        hb_seterr(errstr, errstr_size, "curl_global_init failed");
        return -1;
    }
    h = curl_easy_init();
    if (!h) {
        hb_seterr(errstr, errstr_size, "curl_easy_init failed");
        goto done;
    }
    snprintf(base, sizeof(base), "%s", opts->url);
    n = strlen(base);
    while (n > 0 && base[n - 1] == '/')
        base[--n] = '\0';
    esc = curl_easy_escape(h, subject, 0);
    snprintf(path, sizeof(path), "/subjects/%s/versions", esc ? esc : "");
    req = json_pack("{s:s}", "schema", schema);
    body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (!body) {
        hb_seterr(errstr, errstr_size, "out of memory");
        goto done;
    }
    if (call(h, base, opts->user_info, opts->ca_file,
             opts->timeout_ms > 0 ? opts->timeout_ms : 5000, NULL, path, body, &status, &reply,
             errstr, errstr_size) < 0)
        goto done;
    got = json_integer_value(json_object_get(reply, "id"));
    if (status != 200 || !json_is_integer(json_object_get(reply, "id")) || got < 0 ||
        got > UINT32_MAX) {
        hb_seterr(errstr, errstr_size, "registering under subject %s: HTTP %ld%s%s", subject,
                  status, *reply_message(reply) ? ": " : "", reply_message(reply));
        goto done;
    }
    *id = (uint32_t)got;
    r = 0;
done:
    json_decref(reply);
    free(body);
    if (esc)
        curl_free(esc);
    if (h)
        curl_easy_cleanup(h);
    curl_global_cleanup();
    return r;
}
