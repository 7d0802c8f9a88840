/* Subscription index: what matches an event type, after every kind of change. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "hb_index.h"

static hb_sub_t *mk(const char *id, int active, int verified, const char *t1, const char *t2) {
    hb_sub_t *s = hb_sub_new();
    snprintf(s->id, sizeof(s->id), "%s", id);
    s->active = active;
    s->verified = verified;
    s->event_types = hb_calloc(2, sizeof(char *));
    s->event_types[s->event_types_cnt++] = hb_strdup(t1);
    if (t2)
        s->event_types[s->event_types_cnt++] = hb_strdup(t2);
    return s;
}

static int matches(hb_index_t *ix, const char *type, const char *id) {
    hb_sub_t *const *subs;
    size_t n = hb_index_match(ix, type, &subs);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(subs[i]->id, id))
            return 1;
    return 0;
}

/* Active ones match: the deliverable, and those awaiting their new URL's
 * verification (their deliveries are made and wait in the first tier); only
 * the deliverable are counted as such. */
static void only_active_subscriptions_match(void **state) {
    hb_index_t *ix = hb_index_new();
    hb_index_upsert(ix, mk("a", 1, 1, "user.session.start", "user.lifecycle.create"));
    hb_index_upsert(ix, mk("b", 0, 1, "user.session.start", NULL)); /* inactive */
    hb_index_upsert(ix, mk("c", 1, 0, "user.session.start", NULL)); /* new URL not verified */
    hb_index_upsert(ix, mk("d", 0, 0, "user.session.start", NULL)); /* never verified */
    assert_true(matches(ix, "user.session.start", "a"));
    assert_false(matches(ix, "user.session.start", "b"));
    assert_true(matches(ix, "user.session.start", "c"));
    assert_false(matches(ix, "user.session.start", "d"));
    assert_true(matches(ix, "user.lifecycle.create", "a"));
    assert_false(matches(ix, "user.session.end", "a"));
    assert_int_equal(hb_index_count(ix), 4);
    assert_int_equal(hb_index_deliverable_count(ix), 1);
    hb_index_upsert(ix, mk("c", 1, 1, "user.session.start", NULL)); /* verified now */
    assert_int_equal(hb_index_deliverable_count(ix), 2);
    hb_index_upsert(ix, mk("c", 1, 0, "user.session.start", NULL)); /* moved again */
    assert_int_equal(hb_index_deliverable_count(ix), 1);
    hb_index_remove(ix, "c");
    assert_false(matches(ix, "user.session.start", "c"));
    assert_int_equal(hb_index_deliverable_count(ix), 1);
    hb_index_free(ix);
}

static void upsert_replaces_types_and_status(void **state) {
    hb_index_t *ix = hb_index_new();
    hb_sub_t *kept;
    hb_index_upsert(ix, mk("a", 1, 1, "user.session.start", NULL));
    kept = hb_sub_ref(hb_index_get(ix, "a")); /* an in-flight delivery's reference */
    hb_index_upsert(ix, mk("a", 1, 1, "user.session.end", NULL));
    assert_false(matches(ix, "user.session.start", "a"));
    assert_true(matches(ix, "user.session.end", "a"));
    assert_string_equal(kept->event_types[0], "user.session.start"); /* old snapshot alive */
    hb_sub_unref(kept);
    hb_index_upsert(ix, mk("a", 0, 1, "user.session.end", NULL)); /* deactivated */
    assert_false(matches(ix, "user.session.end", "a"));
    assert_non_null(hb_index_get(ix, "a"));
    hb_index_remove(ix, "a");
    assert_null(hb_index_get(ix, "a"));
    assert_int_equal(hb_index_count(ix), 0);
    hb_index_free(ix);
}

static void many_subscriptions_match_by_type_only(void **state) {
    hb_index_t *ix = hb_index_new();
    char id[40];
    hb_sub_t *const *subs;
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof(id), "sub-%d", i);
        hb_index_upsert(
            ix, mk(id, 1, 1, i % 100 == 0 ? "user.account.lock" : "user.session.start", NULL));
    }
    assert_int_equal(hb_index_match(ix, "user.account.lock", &subs), 200);
    for (int i = 0; i < 20000; i += 2) {
        snprintf(id, sizeof(id), "sub-%d", i);
        hb_index_remove(ix, id);
    }
    assert_int_equal(hb_index_match(ix, "user.account.lock", &subs), 0);
    assert_int_equal(hb_index_match(ix, "user.session.start", &subs), 10000);
    assert_int_equal(hb_index_count(ix), 10000);
    hb_index_free(ix);
}

static hb_sub_t *at(const char *id, const char *url) {
    hb_sub_t *s = mk(id, 1, 1, "user.session.start", NULL);
    s->url = hb_strdup(url);
    return s;
}

/* A host counts the subscriptions (any state) whose URL is there, whatever
 * the path or the case of its name: the last one deregistered or moved away
 * leaves it absent (the services then forget what they kept of it). */
static void hosts_follow_the_subscriptions_urls(void **state) {
    hb_index_t *ix = hb_index_new();
    const char *key;
    size_t pos = 0, n = 0;
    (void)state;
    hb_index_upsert(ix, at("a", "https://API.example.com/a"));
    hb_index_upsert(ix, at("b", "https://api.example.com:443/b"));
    hb_index_upsert(ix, at("c", "https://other.example.com/c"));
    hb_index_upsert(ix, at("d", "not a url"));
    assert_int_equal(hb_index_host_count(ix), 2);
    assert_int_equal(hb_index_host_subs(ix, "https://api.example.com:443"), 2);
    while ((key = hb_index_host_each(ix, &pos)) != NULL)
        n++;
    assert_int_equal(n, 2);
    hb_index_remove(ix, "a");
    assert_int_equal(hb_index_host_subs(ix, "https://api.example.com:443"), 1);
    hb_index_upsert(ix, at("b", "https://new.example.com/b")); /* moved */
    assert_int_equal(hb_index_host_subs(ix, "https://api.example.com:443"), 0);
    assert_int_equal(hb_index_host_subs(ix, "https://new.example.com:443"), 1);
    hb_index_upsert(ix, at("b", "https://new.example.com/b2")); /* same host */
    assert_int_equal(hb_index_host_subs(ix, "https://new.example.com:443"), 1);
    hb_index_remove(ix, "c");
    hb_index_remove(ix, "missing");
    assert_int_equal(hb_index_host_count(ix), 1);
    hb_index_free(ix);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(only_active_subscriptions_match),
        cmocka_unit_test(upsert_replaces_types_and_status),
        cmocka_unit_test(many_subscriptions_match_by_type_only),
        cmocka_unit_test(hosts_follow_the_subscriptions_urls),
    };
    return cmocka_run_group_tests_name("index", tests, NULL, NULL);
}
