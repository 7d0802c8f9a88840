/* Schema Registry client against a libmicrohttpd server playing the
 * registry: a schema found once and then served from the cache, with basic
 * auth; a 404 (poison) versus a 503, a 401 and a closed port (all "wait");
 * a schema that is not Avro; registration; and URLs logged without their
 * credentials. */
#include "http_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hb_registry.h"

#define USER_INFO "reader:pa55-w0rd"
#define AUTH "Basic cmVhZGVyOnBhNTUtdzByZA==" /* base64 of USER_INFO */

typedef struct {
    int gets_3;   /* requests for id 3 (a schema too large) */
    int gets_1;   /* requests for id 1 */
    int status_1; /* what id 1 answers */
    char posted[512];
} srv_t;

/* A JSON answer with its length counted. */
static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *body) {
    return test_server_reply(c, status, body, strlen(body), NULL, NULL);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls) {
    srv_t *s = cls;
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    static int marker;
    (void)version;
    if (!strcmp(method, "POST")) {
        if (*con_cls == NULL) {
            *con_cls = &marker;
            return MHD_YES;
        }
        if (*upload_size) {
            snprintf(s->posted, sizeof(s->posted), "%.*s", (int)*upload_size, upload);
            *upload_size = 0;
            return MHD_YES;
        }
        return reply(c, 200, "{\"id\":5}");
    }
    if (!auth || strcmp(auth, AUTH) != 0)
        return reply(c, 401, "{\"error_code\":401}");
    if (strncmp(url, "/schemas/", 9) != 0) /* a route it does not have */
        return reply(c, 404, "{\"error_code\":404,\"message\":\"HTTP 404 Not Found\"}");
    if (!strcmp(url, "/schemas/ids/1")) {
        s->gets_1++;
        if (s->status_1 != 200)
            return reply(c, (unsigned)s->status_1, "{\"message\":\"down\"}");
        return reply(c, 200, "{\"schema\":\"\\\"string\\\"\"}");
    }
    if (!strcmp(url, "/schemas/ids/3")) { /* 5 MiB of a schema (its doc) */
        static const char head[] = "{\"schema\":\"{\\\"type\\\":\\\"string\\\",\\\"doc\\\":\\\"";
        static const char tail[] = "\\\"}\"}";
        size_t n = 5u << 20;
        char *big = malloc(n + sizeof(tail));
        enum MHD_Result ret;
        s->gets_3++;
        memset(big, 'x', n);
        memcpy(big, head, strlen(head));
        memcpy(big + n, tail, sizeof(tail));
        ret = test_server_reply(c, 200, big, n + strlen(tail), NULL, NULL);
        free(big);
        return ret;
    }
    if (!strcmp(url, "/schemas/ids/2"))
        return reply(c, 200, "{\"schema\":\"syntax\",\"schemaType\":\"PROTOBUF\"}");
    return reply(c, 404, "{\"error_code\":40403,\"message\":\"Schema not found\"}");
}

/* Looks id up until the answer is not PENDING (at most 20 s: a loaded
 * machine under the sanitizers is slow, and only a hang takes that long). */
static hb_registry_status_t settle(hb_registry_t *r, uint32_t id, const char **schema, char *why,
                                   size_t why_size) {
    for (int i = 0; i < 2000; i++) {
        hb_registry_status_t st = hb_registry_lookup(r, id, schema, why, why_size);
        if (st != HB_REGISTRY_PENDING)
            return st;
        usleep(10000);
    }
    fail_msg("id %u still pending after 20 s", (unsigned)id);
    return HB_REGISTRY_PENDING;
}

static hb_registry_t *registry_within(uint16_t port, const char *user_info, long long timeout_ms) {
    char url[64], err[256];
    hb_registry_opts_t o = {url, user_info, NULL, timeout_ms, 0};
    hb_registry_t *r;
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/", (unsigned)port);
    r = hb_registry_new(&o, err, sizeof(err));
    if (!r)
        fail_msg("hb_registry_new: %s", err);
    return r;
}

static hb_registry_t *registry_at(uint16_t port, const char *user_info) {
    return registry_within(port, user_info, 2000);
}

static void found_once_then_cached(void **state) {
    srv_t s = {.status_1 = 200};
    uint16_t port;
    struct MHD_OptionItem none[] = {{MHD_OPTION_END, 0, NULL}};
    struct MHD_Daemon *d = test_server_start(handle, &s, none, &port);
    hb_registry_t *r = registry_at(port, USER_INFO);
    const char *schema = NULL;
    char why[256] = "";
    (void)state;
    /* first sight: never an answer without the network, so PENDING */
    assert_int_equal(hb_registry_lookup(r, 1, &schema, why, sizeof(why)), HB_REGISTRY_PENDING);
    assert_int_equal(settle(r, 1, &schema, why, sizeof(why)), HB_REGISTRY_FOUND);
    assert_string_equal(schema, "\"string\"");
    for (int i = 0; i < 3; i++)
        assert_int_equal(hb_registry_lookup(r, 1, &schema, why, sizeof(why)), HB_REGISTRY_FOUND);
    assert_int_equal(s.gets_1, 1);
    assert_int_equal(hb_registry_down(r, why, sizeof(why)), 0);

    /* 404: poison, and the registry is not down */
    assert_int_equal(settle(r, 77, &schema, why, sizeof(why)), HB_REGISTRY_NOT_FOUND);
    assert_string_equal(why, "schema id 77 not found in the schema registry: Schema not found");
    assert_int_equal(hb_registry_down(r, why, sizeof(why)), 0);
    /* not Avro: poison too */
    assert_int_equal(settle(r, 2, &schema, why, sizeof(why)), HB_REGISTRY_NOT_FOUND);
    assert_string_equal(why, "schema id 2 is a PROTOBUF schema, not Avro");
    hb_registry_free(r);
    MHD_stop_daemon(d);
}

static void failures_wait_and_recover(void **state) {
    srv_t s = {.status_1 = 503};
    uint16_t port;
    struct MHD_OptionItem none[] = {{MHD_OPTION_END, 0, NULL}};
    struct MHD_Daemon *d = test_server_start(handle, &s, none, &port);
    hb_registry_t *r = registry_at(port, USER_INFO), *wrong = registry_at(port, "reader:nope");
    const char *schema = NULL;
    char why[256] = "";
    (void)state;
    assert_int_equal(settle(r, 1, &schema, why, sizeof(why)), HB_REGISTRY_UNAVAILABLE);
    assert_string_equal(why, "the schema registry answered HTTP 503: down");
    assert_int_equal(hb_registry_down(r, why, sizeof(why)), 1);
    /* asked again only after HB_REGISTRY_RETRY_MS */
    assert_int_equal(hb_registry_lookup(r, 1, &schema, why, sizeof(why)), HB_REGISTRY_UNAVAILABLE);
    assert_int_equal(s.gets_1, 1);
    s.status_1 = 200;
    usleep(HB_REGISTRY_RETRY_MS * 1000);
    assert_int_equal(settle(r, 1, &schema, why, sizeof(why)), HB_REGISTRY_FOUND);
    assert_int_equal(hb_registry_down(r, why, sizeof(why)), 0);

    /* wrong credentials: wait (not poison), and say so without the password */
    assert_int_equal(settle(wrong, 1, &schema, why, sizeof(why)), HB_REGISTRY_UNAVAILABLE);
    assert_non_null(strstr(why, "refused our credentials (HTTP 401)"));
    assert_null(strstr(why, "nope"));
    hb_registry_free(wrong);
    hb_registry_free(r);
    MHD_stop_daemon(d);
}

/* A base URL with a wrong path: the server's 404 for an unknown route is
 * not "schema not found", so the events wait instead of being poison. */
static void a_404_that_is_not_the_registrys_answer_waits(void **state) {
    srv_t s = {.status_1 = 200};
    uint16_t port;
    struct MHD_OptionItem none[] = {{MHD_OPTION_END, 0, NULL}};
    struct MHD_Daemon *d = test_server_start(handle, &s, none, &port);
    char url[64], why[256] = "", err[256];
    hb_registry_opts_t o = {url, USER_INFO, NULL, 2000, 0};
    hb_registry_t *r;
    const char *schema = NULL;
    (void)state;
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/apis/ccompat/v6", (unsigned)port);
    r = hb_registry_new(&o, err, sizeof(err));
    assert_non_null(r);
    assert_int_equal(settle(r, 1, &schema, why, sizeof(why)), HB_REGISTRY_UNAVAILABLE);
    assert_string_equal(why, "the schema registry answered HTTP 404: HTTP 404 Not Found to "
                             "/schemas/ids/1, not its \"schema not found\": check "
                             "HOOKBRIDGE_SCHEMA_REGISTRY_URL");
    assert_int_equal(hb_registry_down(r, why, sizeof(why)), 1);
    hb_registry_free(r);
    MHD_stop_daemon(d);
}

static void closed_port_is_unavailable(void **state) {
    uint16_t port;
    srv_t s = {.status_1 = 200};
    struct MHD_OptionItem none[] = {{MHD_OPTION_END, 0, NULL}};
    struct MHD_Daemon *d = test_server_start(handle, &s, none, &port);
    hb_registry_t *r;
    const char *schema = NULL;
    char why[256] = "";
    (void)state;
    MHD_stop_daemon(d); /* the port is free again: connections are refused */
    r = registry_at(port, USER_INFO);
    assert_int_equal(settle(r, 1, &schema, why, sizeof(why)), HB_REGISTRY_UNAVAILABLE);
    assert_int_equal(hb_registry_down(r, why, sizeof(why)), 1);
    assert_non_null(strstr(why, "/schemas/ids/1"));
    hb_registry_free(r);
}

static void register_gives_the_id(void **state) {
    srv_t s = {.status_1 = 200};
    uint16_t port;
    struct MHD_OptionItem none[] = {{MHD_OPTION_END, 0, NULL}};
    struct MHD_Daemon *d = test_server_start(handle, &s, none, &port);
    char url[64], err[256];
    hb_registry_opts_t o = {url, USER_INFO, NULL, 2000, 0};
    uint32_t id = 0;
    (void)state;
    snprintf(url, sizeof(url), "http://127.0.0.1:%u", (unsigned)port);
    assert_int_equal(
        hb_registry_register(&o, "identity.events-value", "\"string\"", &id, err, sizeof(err)), 0);
    assert_int_equal(id, 5);
    assert_string_equal(s.posted, "{\"schema\":\"\\\"string\\\"\"}");
    MHD_stop_daemon(d);
}

/* A registry's answer too large to take is its answer all the same: the
 * id's events are poison (asked again only after the recheck period), not
 * held for ever while 4 MiB are fetched again every second. */
static void a_schema_too_large_is_poison_not_a_wait(void **state) {
    srv_t s = {0};
    uint16_t port;
    struct MHD_OptionItem none[] = {{MHD_OPTION_END, 0, NULL}};
    struct MHD_Daemon *d = test_server_start(handle, &s, none, &port);
    /* 4 MiB read before the answer is refused: under the sanitizers on a
     * loaded machine that took longer than 2 s (UNAVAILABLE, a timeout) */
    hb_registry_t *r = registry_within(port, USER_INFO, 20000);
    const char *schema;
    char why[256];
    (void)state;
    assert_int_equal(settle(r, 3, &schema, why, sizeof(why)), HB_REGISTRY_NOT_FOUND);
    assert_string_equal(why, "schema id 3: the schema registry's answer is larger than 4194304 "
                             "bytes, more than hookbridge takes for a schema");
    assert_int_equal(hb_registry_down(r, why, sizeof(why)), 0);
    usleep((HB_REGISTRY_RETRY_MS + 200) * 1000);
    assert_int_equal(hb_registry_lookup(r, 3, &schema, why, sizeof(why)), HB_REGISTRY_NOT_FOUND);
    assert_int_equal(s.gets_3, 1);
    hb_registry_free(r);
    MHD_stop_daemon(d);
}

static void urls_are_logged_without_credentials(void **state) {
    char out[128], err[256];
    hb_registry_opts_t o = {"ftp://x", NULL, NULL, 1000, 0};
    (void)state;
    hb_registry_url_for_log("https://u:p@w@sr.example.com:8081/apis/ccompat/v7", out, sizeof(out));
    assert_string_equal(out, "https://sr.example.com:8081/apis/ccompat/v7");
    /* A password with an unencoded '/', '?' or '#' (API secrets hold '/'):
     * the user-info seems to end inside it, and all of it goes all the same. */
    hb_registry_url_for_log("http://key:pa/ss@127.0.0.1:1", out, sizeof(out));
    assert_string_equal(out, "http://127.0.0.1:1");
    hb_registry_url_for_log("https://key:12/s?e#c@sr:8081/v7", out, sizeof(out));
    assert_string_equal(out, "https://sr:8081/v7");
    /* so an '@' in a path loses what is before it (no registry has one) */
    hb_registry_url_for_log("http://sr:8081/x@y", out, sizeof(out));
    assert_string_equal(out, "http://y");
    hb_registry_url_for_log("http://sr:8081/x", out, sizeof(out));
    assert_string_equal(out, "http://sr:8081/x");
    assert_null(hb_registry_new(&o, err, sizeof(err)));
    assert_string_equal(err, "schema registry URL must start with http:// or https://");
    /* A '/' in the password, not percent-encoded, ends the host part early
     * ("reader:Pa" is no host:port): neither its start nor its rest is shown,
     * and such a URL is refused without being repeated. */
    hb_registry_url_for_log("https://reader:Pa/ss-c4e1@sr.example.com/v7", out, sizeof(out));
    assert_string_equal(out, "https://sr.example.com/v7");
    o.url = "https://reader:Pa/ss-c4e1@sr.example.com/v7";
    assert_null(hb_registry_new(&o, err, sizeof(err)));
    assert_null(strstr(err, "Pa"));
    assert_null(strstr(err, "c4e1"));
    assert_non_null(strstr(err, "not host[:port]"));
    uint32_t id = 0;
    err[0] = '\0';
    assert_int_equal(
        hb_registry_register(&o, "identity.events-value", "\"string\"", &id, err, sizeof(err)), -1);
    assert_null(strstr(err, "c4e1"));
    assert_non_null(strstr(err, "not host[:port]"));
    {
        /* A URL curl cannot parse (an unencoded '/' in the password makes
         * "pa" the port) is refused at once, without showing it; one it
         * parses otherwise than meant (host "key", port 12) fails its fetches,
         * and the reason (in the log and on /readyz) does not show it. */
        hb_registry_opts_t unparsed = {"http://key:pa/ss@127.0.0.1:1", NULL, NULL, 1000, 0};
        hb_registry_opts_t misparsed = {"http://key:12/ss@127.0.0.1:1", NULL, NULL, 1000, 0};
        hb_registry_t *r;
        const char *schema;
        char why[256];
        assert_null(hb_registry_new(&unparsed, err, sizeof(err)));
        assert_non_null(strstr(err, "percent-encode"));
        assert_null(strstr(err, "pa/ss"));
        r = hb_registry_new(&misparsed, err, sizeof(err));
        assert_non_null(r);
        assert_int_equal(settle(r, 1, &schema, why, sizeof(why)), HB_REGISTRY_UNAVAILABLE);
        assert_non_null(strstr(why, "http://127.0.0.1:1/schemas/ids/1: "));
        assert_null(strstr(why, "12/ss"));
        hb_registry_free(r);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(found_once_then_cached),
        cmocka_unit_test(failures_wait_and_recover),
        cmocka_unit_test(a_404_that_is_not_the_registrys_answer_waits),
        cmocka_unit_test(closed_port_is_unavailable),
        cmocka_unit_test(register_gives_the_id),
        cmocka_unit_test(a_schema_too_large_is_poison_not_a_wait),
        cmocka_unit_test(urls_are_logged_without_credentials),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
