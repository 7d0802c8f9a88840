/* Rate limits: the token bucket, and the per-subscription queue in front of
 * the shared budget (asks, grants, leases, the wait and queue bounds), on a
 * clock the test drives. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hb_ratelimit.h"

static void bucket_starts_full_and_refills_at_its_rate(void **state) {
    hb_bucket_t b;
    (void)state;
    hb_bucket_init(&b, 10, 5, 1000);
    for (int i = 0; i < 5; i++)
        assert_int_equal(hb_bucket_take(&b, 1000), 1);
    assert_int_equal(hb_bucket_take(&b, 1000), 0); /* the burst is spent */
    assert_int_equal(hb_bucket_wait_ms(&b, 1000), 100);
    assert_int_equal(hb_bucket_take(&b, 1099), 0);
    assert_int_equal(hb_bucket_take(&b, 1100), 1); /* one every 100 ms */
    assert_int_equal(hb_bucket_take(&b, 1100), 0);
    /* never more than the burst, however long it rests */
    assert_true(hb_bucket_tokens(&b, 100000) == 5.0);
    /* a clock that goes back refills nothing */
    assert_true(hb_bucket_tokens(&b, 50) == 5.0);
}

static void bucket_takes_fractional_rates_and_live_changes(void **state) {
    hb_bucket_t b;
    (void)state;
    hb_bucket_init(&b, 0.5, 1, 0);
    assert_int_equal(hb_bucket_take(&b, 0), 1);
    assert_int_equal(hb_bucket_wait_ms(&b, 0), 2000); /* one every 2 s */
    assert_int_equal(hb_bucket_take(&b, 1999), 0);
    assert_int_equal(hb_bucket_take(&b, 2000), 1);
    /* a lower burst caps what is held, a higher rate refills faster */
    hb_bucket_init(&b, 10, 10, 0);
    hb_bucket_set(&b, 100, 2, 0);
    assert_true(hb_bucket_tokens(&b, 0) == 2.0);
    assert_int_equal(hb_bucket_take(&b, 0), 1);
    assert_int_equal(hb_bucket_take(&b, 0), 1);
    assert_int_equal(hb_bucket_wait_ms(&b, 0), 10);
}

/* ------------------------------------------------------------ the limiter */

typedef struct {
    int asks, last_wanted;
    char last_key[64];
    int ask_result;
    int sent[64], sent_cnt, throttled_cnt;
    int refused[64], refused_cnt;
    char reason[300];
    int dropped;
} fake_t;

static int f_ask(const char *key, int wanted, void *opaque) {
    fake_t *f = opaque;
    f->asks++;
    f->last_wanted = wanted;
    strncpy(f->last_key, key, sizeof(f->last_key) - 1);
    return f->ask_result;
}
static void f_send(void *item, long long held_ms, int throttled, void *opaque) {
    fake_t *f = opaque;
    (void)held_ms;
    f->sent[f->sent_cnt++] = (int)(intptr_t)item;
    f->throttled_cnt += throttled;
}
static void f_refuse(void *item, const char *reason, long long held_ms, void *opaque) {
    fake_t *f = opaque;
    (void)held_ms;
    f->refused[f->refused_cnt++] = (int)(intptr_t)item;
    strncpy(f->reason, reason, sizeof(f->reason) - 1);
}
static void f_drop(void *item, void *opaque) {
    fake_t *f = opaque;
    (void)item;
    f->dropped++;
}

static hb_ratelimit_t *limiter(fake_t *f, size_t max_queue) {
    hb_ratelimit_conf_t conf = {.max_queue = max_queue, .max_wait_ms = 5000, .lease_ms = 250};
    hb_ratelimit_cbs_t cbs = {f_ask, f_send, f_refuse, f_drop, f};
    memset(f, 0, sizeof(*f));
    return hb_ratelimit_new(&conf, &cbs);
}

#define ITEM(i) ((void *)(intptr_t)(i))

static void sends_only_with_a_shared_and_a_local_token(void **state) {
    fake_t f;
    hb_ratelimit_t *rl = limiter(&f, 0);
    (void)state;
    for (int i = 1; i <= 3; i++)
        hb_ratelimit_submit(rl, "sub-a", 10, 2, ITEM(i), 0);
    /* nothing goes before the shared budget answers; one ask open at a time */
    assert_int_equal(f.sent_cnt, 0);
    assert_int_equal(f.asks, 1);
    assert_int_equal(f.last_wanted, 1);
    assert_string_equal(f.last_key, "sub-a");
    assert_int_equal((int)hb_ratelimit_held(rl), 3);
    hb_ratelimit_granted(rl, "sub-a", 1, 0, 1);
    assert_int_equal(f.sent_cnt, 1);
    assert_int_equal(f.sent[0], 1);
    /* asked again at once for the rest, at most a burst */
    assert_int_equal(f.asks, 2);
    assert_int_equal(f.last_wanted, 2);
    hb_ratelimit_granted(rl, "sub-a", 1, 100, 2); /* the shared bucket ran dry */
    assert_int_equal(f.sent_cnt, 2);
    assert_int_equal(f.sent[1], 2); /* in order */
    /* the budget said wait 100 ms: no ask before */
    assert_true(hb_ratelimit_tick(rl, 50) <= 52);
    assert_int_equal(f.asks, 2);
    (void)hb_ratelimit_tick(rl, 102);
    assert_int_equal(f.asks, 3);
    assert_int_equal(f.last_wanted, 1);
    hb_ratelimit_granted(rl, "sub-a", 1, 0, 102);
    assert_int_equal(f.sent_cnt, 3);
    assert_int_equal(f.sent[2], 3);
    assert_int_equal(f.throttled_cnt, 1); /* only the third waited for an empty bucket */
    assert_int_equal((int)hb_ratelimit_held(rl), 0);
    assert_int_equal(hb_ratelimit_tick(rl, 103), -1);
    hb_ratelimit_free(rl);
}

static void the_local_bucket_caps_a_generous_budget(void **state) {
    fake_t f;
    hb_ratelimit_t *rl = limiter(&f, 0);
    (void)state;
    for (int i = 1; i <= 4; i++)
        hb_ratelimit_submit(rl, "s", 10, 2, ITEM(i), 0);
    hb_ratelimit_granted(rl, "s", 2, 0, 0);
    /* asked again at once for the rest, granted more than the local burst */
    assert_int_equal(f.asks, 2);
    hb_ratelimit_granted(rl, "s", 2, 0, 0);
    assert_int_equal(f.sent_cnt, 2); /* the local bucket is empty */
    assert_int_equal(hb_ratelimit_tick(rl, 0), 100);
    (void)hb_ratelimit_tick(rl, 100);
    assert_int_equal(f.sent_cnt, 3);
    (void)hb_ratelimit_tick(rl, 200);
    assert_int_equal(f.sent_cnt, 4);
    hb_ratelimit_free(rl);
}

static void refuses_what_could_not_wait(void **state) {
    fake_t f;
    hb_ratelimit_t *rl = limiter(&f, 0);
    (void)state;
    /* 1/s, burst 1: the 7th would wait 6 s > max_queue_wait (5 s) */
    for (int i = 1; i <= 7; i++)
        hb_ratelimit_submit(rl, "s", 1, 1, ITEM(i), 0);
    assert_int_equal(f.refused_cnt, 1);
    assert_int_equal(f.refused[0], 7);
    assert_non_null(strstr(f.reason, "rate limited: "));
    assert_non_null(strstr(f.reason, "max_queue_wait"));
    assert_int_equal((int)hb_ratelimit_held(rl), 6);
    /* the budget never answers (database away): held max_queue_wait, then refused */
    assert_int_equal(hb_ratelimit_tick(rl, 4999), 1);
    assert_int_equal(f.refused_cnt, 1);
    (void)hb_ratelimit_tick(rl, 5000);
    assert_int_equal(f.refused_cnt, 7);
    assert_non_null(strstr(f.reason, "held 5000 ms"));
    assert_int_equal(f.sent_cnt, 0);
    assert_int_equal((int)hb_ratelimit_held(rl), 0);
    hb_ratelimit_free(rl);
}

static void refuses_over_a_full_queue(void **state) {
    fake_t f;
    hb_ratelimit_t *rl = limiter(&f, 2);
    (void)state;
    for (int i = 1; i <= 3; i++)
        hb_ratelimit_submit(rl, "s", 100, 100, ITEM(i), 0);
    assert_int_equal(f.refused_cnt, 1);
    assert_int_equal(f.refused[0], 3);
    assert_non_null(strstr(f.reason, "max_host_queue"));
    /* another subscription has its own queue */
    hb_ratelimit_submit(rl, "t", 100, 100, ITEM(4), 0);
    assert_int_equal(f.refused_cnt, 1);
    hb_ratelimit_free(rl);
    assert_int_equal(f.dropped, 3); /* freed while held */
}

static void unused_grants_lapse_and_failed_asks_are_retried(void **state) {
    fake_t f;
    hb_ratelimit_t *rl = limiter(&f, 0);
    (void)state;
    f.ask_result = -1; /* no database */
    hb_ratelimit_submit(rl, "s", 10, 5, ITEM(1), 0);
    assert_int_equal(f.asks, 1);
    assert_int_equal(hb_ratelimit_tick(rl, 10), 990); /* asked again in a second */
    f.ask_result = 0;
    (void)hb_ratelimit_tick(rl, 1000);
    assert_int_equal(f.asks, 2);
    hb_ratelimit_granted(rl, "s", -1, 0, 1001); /* the statement failed */
    assert_int_equal(f.sent_cnt, 0);
    assert_int_equal(f.asks, 2);
    (void)hb_ratelimit_tick(rl, 2001);
    assert_int_equal(f.asks, 3);
    hb_ratelimit_granted(rl, "s", 1, 0, 2001);
    assert_int_equal(f.sent_cnt, 1);
    /* a grant nobody waits for any more (an answer given up on) is ignored */
    hb_ratelimit_granted(rl, "s", 5, 0, 2002);
    hb_ratelimit_submit(rl, "s", 10, 5, ITEM(2), 2003);
    assert_int_equal(f.sent_cnt, 1);
    assert_int_equal(f.asks, 4);
    hb_ratelimit_granted(rl, "s", 3, 0, 2003);
    assert_int_equal(f.sent_cnt, 2);
    /* two granted tokens left over: usable within the lease, not after */
    hb_ratelimit_submit(rl, "s", 10, 5, ITEM(3), 2100);
    assert_int_equal(f.sent_cnt, 3);
    assert_int_equal(f.asks, 4);
    hb_ratelimit_submit(rl, "s", 10, 5, ITEM(4), 2300);
    assert_int_equal(f.sent_cnt, 3);
    assert_int_equal(f.asks, 5);
    hb_ratelimit_free(rl);
    assert_int_equal(f.dropped, 1);
}

/* Rates far below one a second are valid ((0, 10000]): the waits they give
 * are huge, never negative (a double out of range cast to long long). */
static void tiny_rates_wait_long_not_negative(void **state) {
    fake_t f;
    hb_bucket_t b;
    hb_ratelimit_t *rl = limiter(&f, 0);
    (void)state;
    hb_bucket_init(&b, 1e-17, 1, 0);
    assert_int_equal(hb_bucket_take(&b, 0), 1);
    assert_true(hb_bucket_wait_ms(&b, 0) > 0);
    hb_ratelimit_submit(rl, "s", 1e-17, 1, ITEM(1), 0);
    hb_ratelimit_submit(rl, "s", 1e-17, 1, ITEM(2), 0); /* would wait ~3e12 years */
    assert_int_equal(f.refused_cnt, 1);
    assert_int_equal(f.refused[0], 2);
    assert_int_equal((int)hb_ratelimit_held(rl), 1);
    hb_ratelimit_granted(rl, "s", 1, 0, 0);
    assert_int_equal(f.sent_cnt, 1);
    hb_ratelimit_free(rl);
}

static int even_item(void *item, void *arg) {
    (void)arg;
    return (int)(intptr_t)item % 2 == 0;
}

/* A revocation takes some items back: they are dropped, never sent, and the
 * others keep their order and their turn (the tail still appends). */
static void withdrawn_items_are_dropped_and_the_rest_keep_their_turn(void **state) {
    fake_t f;
    hb_ratelimit_t *rl = limiter(&f, 0);
    (void)state;
    for (int i = 1; i <= 4; i++)
        hb_ratelimit_submit(rl, i <= 2 ? "s" : "t", 10, 5, ITEM(i), 0);
    assert_int_equal((int)hb_ratelimit_held(rl), 4);
    assert_int_equal((int)hb_ratelimit_withdraw(rl, even_item, NULL), 2);
    assert_int_equal(f.dropped, 2);
    assert_int_equal((int)hb_ratelimit_held(rl), 2);
    hb_ratelimit_submit(rl, "s", 10, 5, ITEM(5), 1);
    hb_ratelimit_submit(rl, "t", 10, 5, ITEM(6), 1); /* after the withdrawn tail */
    assert_int_equal((int)hb_ratelimit_withdraw(rl, even_item, NULL), 1);
    hb_ratelimit_granted(rl, "s", 5, 0, 2);
    hb_ratelimit_granted(rl, "t", 5, 0, 2);
    assert_int_equal(f.sent_cnt, 3);
    assert_int_equal(f.sent[0], 1);
    assert_int_equal(f.sent[1], 5);
    assert_int_equal(f.sent[2], 3);
    assert_int_equal((int)hb_ratelimit_held(rl), 0);
    hb_ratelimit_free(rl);
    assert_int_equal(f.dropped, 3);
}

/* A grant does not lengthen the lease of the tokens granted before it: each
 * token is used within lease_ms of its own grant or dropped, so replicas
 * together stay within the bound (docs/design.md, "Rate limits"). */
static void a_new_grant_does_not_extend_the_lease_of_older_tokens(void **state) {
    fake_t f;
    hb_ratelimit_t *rl = limiter(&f, 0);
    (void)state;
    for (int i = 1; i <= 20; i++)
        hb_ratelimit_submit(rl, "sub-a", 10, 10, ITEM(i), 0);
    hb_ratelimit_granted(rl, "sub-a", 10, 0, 0);
    assert_int_equal(f.sent_cnt, 10); /* the local burst */
    /* ten more granted at 1 ms, while the local bucket is empty: leased until 251 */
    hb_ratelimit_granted(rl, "sub-a", 10, 0, 1);
    assert_int_equal(f.sent_cnt, 10);
    /* at 200 one more arrives: the local bucket has two tokens again (two
     * go), and the limiter asks for the one it lacks */
    hb_ratelimit_submit(rl, "sub-a", 10, 10, ITEM(21), 200);
    assert_int_equal(f.sent_cnt, 12);
    assert_int_equal(f.last_wanted, 1);
    hb_ratelimit_granted(rl, "sub-a", 1, 0, 201);
    assert_int_equal(f.sent_cnt, 12);
    /* at 450 the local bucket has two tokens, but the eight tokens left of
     * the grant at 1 ms lapsed at 251: only the one granted at 201 is used */
    (void)hb_ratelimit_tick(rl, 450);
    assert_int_equal(f.sent_cnt, 13);
    hb_ratelimit_free(rl);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bucket_starts_full_and_refills_at_its_rate),
        cmocka_unit_test(bucket_takes_fractional_rates_and_live_changes),
        cmocka_unit_test(sends_only_with_a_shared_and_a_local_token),
        cmocka_unit_test(the_local_bucket_caps_a_generous_budget),
        cmocka_unit_test(refuses_what_could_not_wait),
        cmocka_unit_test(refuses_over_a_full_queue),
        cmocka_unit_test(unused_grants_lapse_and_failed_asks_are_retried),
        cmocka_unit_test(tiny_rates_wait_long_not_negative),
        cmocka_unit_test(withdrawn_items_are_dropped_and_the_rest_keep_their_turn),
        cmocka_unit_test(a_new_grant_does_not_extend_the_lease_of_older_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
