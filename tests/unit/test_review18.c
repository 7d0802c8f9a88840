/* Review 18: the Schema Registry client's grace for a new id the registry
 * does not have yet (hb_registry.h, HB_REGISTRY_NOT_YET), against a
 * libmicrohttpd server playing a registry whose replica catches up: an id
 * above every id it served waits and is found once registered; one that
 * never appears is poison when the grace ends, and is not waited for again;
 * an id at or below a served one, one far above it (more than
 * HB_REGISTRY_NEW_ID_SPAN), and id 0, are poison at once; with no
 * grace every "not found" is poison at once, as before. */
#include "http_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hb_registry.h"

#define GRACE_MS 600

typedef struct {
    volatile unsigned max_id; /* ids 1..max_id are registered */
} srv_t;

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls) {
    srv_t *s = cls;
    unsigned id = 0;
    char body[128];
    (void)method;
    (void)version;
    (void)upload;
    (void)upload_size;
    (void)con_cls;
    if (sscanf(url, "/schemas/ids/%u", &id) == 1 && id >= 1 && id <= s->max_id) {
        static const char found[] = "{\"schema\":\"\\\"string\\\"\"}";
        return test_server_reply(c, 200, found, strlen(found), NULL, NULL);
    }
    snprintf(body, sizeof(body), "{\"error_code\":40403,\"message\":\"Schema %u not found\"}", id);
    return test_server_reply(c, 404, body, strlen(body), NULL, NULL);
}

static hb_registry_t *registry_at(uint16_t port, long long grace_ms) {
    char url[64], err[256];
    hb_registry_opts_t o = {url, NULL, NULL, 2000, grace_ms};
    hb_registry_t *r;
    snprintf(url, sizeof(url), "http://127.0.0.1:%u", (unsigned)port);
    r = hb_registry_new(&o, err, sizeof(err));
    if (!r)
        fail_msg("hb_registry_new: %s", err);
    return r;
}

/* Looks id up until the answer is neither PENDING nor, when wait_yet,
 * NOT_YET (at most 5 s). */
static hb_registry_status_t settle(hb_registry_t *r, uint32_t id, int wait_yet, char *why,
                                   size_t why_size) {
    const char *schema;
    for (int i = 0; i < 500; i++) {
        hb_registry_status_t st = hb_registry_lookup(r, id, &schema, why, why_size);
        if (st != HB_REGISTRY_PENDING && (!wait_yet || st != HB_REGISTRY_NOT_YET))
            return st;
        usleep(10000);
    }
    fail_msg("id %u still pending after 5 s", (unsigned)id);
    return HB_REGISTRY_PENDING;
}

static void a_new_id_waits_for_the_replica_an_old_one_does_not(void **state) {
    srv_t s = {.max_id = 5};
    uint16_t port;
    struct MHD_OptionItem none[] = {{MHD_OPTION_END, 0, NULL}};
    struct MHD_Daemon *d = test_server_start(handle, &s, none, &port);
    hb_registry_t *r = registry_at(port, GRACE_MS);
    char why[256];
    int64_t t0;
    (void)state;
    assert_int_equal(settle(r, 5, 0, why, sizeof(why)), HB_REGISTRY_FOUND);

    /* 6: newer than 5, not registered yet: not yet, then found */
    assert_int_equal(settle(r, 6, 0, why, sizeof(why)), HB_REGISTRY_NOT_YET);
    assert_string_equal(why, "schema id 6 not found in the schema registry: Schema 6 not found");
    s.max_id = 6;
    assert_int_equal(settle(r, 6, 1, why, sizeof(why)), HB_REGISTRY_FOUND);

    /* 9: never registered: not yet for the grace, then poison */
    t0 = hb_mono_ms();
    assert_int_equal(settle(r, 9, 0, why, sizeof(why)), HB_REGISTRY_NOT_YET);
    assert_int_equal(settle(r, 9, 1, why, sizeof(why)), HB_REGISTRY_NOT_FOUND);
    assert_true(hb_mono_ms() - t0 >= GRACE_MS);
    assert_string_equal(why, "schema id 9 not found in the schema registry: Schema 9 not found");
    assert_int_equal(hb_registry_down(r, why, sizeof(why)), 0);

    /* far above the highest served id (bytes that only look framed): at once */
    assert_int_equal(settle(r, 6 + HB_REGISTRY_NEW_ID_SPAN + 1, 0, why, sizeof(why)),
                     HB_REGISTRY_NOT_FOUND);
    assert_int_equal(settle(r, 6 + HB_REGISTRY_NEW_ID_SPAN, 0, why, sizeof(why)),
                     HB_REGISTRY_NOT_YET);

    /* 3: at or below a served id (the replica read past it), and 0: at once */
    assert_int_equal(settle(r, 3, 0, why, sizeof(why)), HB_REGISTRY_FOUND);
    s.max_id = 2; /* a schema deleted since */
    assert_int_equal(settle(r, 4, 0, why, sizeof(why)), HB_REGISTRY_NOT_FOUND);
    assert_int_equal(settle(r, 0, 0, why, sizeof(why)), HB_REGISTRY_NOT_FOUND);
    hb_registry_free(r);

    /* before the registry gave any id, every id is new; without a grace,
     * every "not found" is poison at once */
    r = registry_at(port, GRACE_MS);
    assert_int_equal(settle(r, 1000, 0, why, sizeof(why)), HB_REGISTRY_NOT_YET);
    hb_registry_free(r);
    r = registry_at(port, 0);
    assert_int_equal(settle(r, 1000, 0, why, sizeof(why)), HB_REGISTRY_NOT_FOUND);
    hb_registry_free(r);
    MHD_stop_daemon(d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_new_id_waits_for_the_replica_an_old_one_does_not),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
