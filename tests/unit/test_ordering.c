/* Ordered delivery: the keys of an event and the chains' decisions
 * (hb_ordering.h), table by table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "hb_ordering.h"

#define A "aaaaaaaa-0000-0000-0000-000000000001"
#define B "aaaaaaaa-0000-0000-0000-000000000002"
#define C "aaaaaaaa-0000-0000-0000-000000000003"
#define T "aaaaaaaa-0000-0000-0000-00000000000f"
#define SUB "5ub5ub5u-0000-0000-0000-000000000000"

static void keys_follow_the_option(void **state) {
    static const struct {
        hb_order_by_t by;
        const char *event;
        const char *msg_key;
        const char *want; /* NULL: no key */
    } cases[] = {
        {HB_ORDER_ACTOR, "{\"actor\":{\"id\":\"00uA\"}}", NULL, "00uA"},
        {HB_ORDER_ACTOR, "{\"actor\":{\"id\":\"\"}}", NULL, NULL},
        {HB_ORDER_ACTOR, "{}", NULL, NULL},
        {HB_ORDER_TARGET,
         "{\"target\":[{\"id\":\"0oaApp\",\"type\":\"AppInstance\"},{\"id\":\"00uU\",\"type\":"
         "\"User\"}]}",
         NULL, "00uU"},
        {HB_ORDER_TARGET, "{\"target\":[{\"id\":\"00gG\",\"type\":\"UserGroup\"}]}", NULL, "00gG"},
        {HB_ORDER_TARGET, "{\"target\":[]}", NULL, NULL},
        {HB_ORDER_KEY, "{}", "00uK", "00uK"},
        {HB_ORDER_KEY, "{}", NULL, NULL},
        {HB_ORDER_NONE, "{\"actor\":{\"id\":\"00uA\"}}", NULL, NULL},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *ev = json_loads(cases[i].event, 0, NULL);
        char out[64];
        int got = hb_order_key(cases[i].by, ev, cases[i].msg_key,
                               cases[i].msg_key ? strlen(cases[i].msg_key) : 0, out, sizeof(out));
        assert_non_null(ev);
        if (cases[i].want) {
            assert_int_equal(got, 1);
            assert_string_equal(out, cases[i].want);
        } else {
            assert_int_equal(got, 0);
        }
        json_decref(ev);
    }
}

static int item_a, item_b, item_c;

/* A new key asks for its tail; with none, the first is sent and the others
 * wait in memory until it is delivered. */
static void a_new_key_asks_then_sends_one_at_a_time(void **state) {
    hb_chains_t *cs = hb_chains_new();
    hb_chain_t *c = hb_chains_get(cs, SUB, "00uA", 0);
    void *item;
    char after[37];
    (void)state;
    hb_chain_push(c, &item_a, A);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_KEY);
    hb_chain_push(c, &item_b, B);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_WAIT); /* still asking */
    hb_chain_answer(c, 0, NULL, 1);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_SEND);
    assert_ptr_equal(item, &item_a);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_WAIT); /* a in flight */
    hb_chain_settled(c, 0);                                          /* delivered */
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_SEND);
    assert_ptr_equal(item, &item_b);
    hb_chain_settled(c, 0);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_WAIT);
    /* known idle: the next goes at once, no question */
    hb_chain_push(c, &item_c, C);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_SEND);
    assert_string_equal(hb_chain_tail(c), C);
    hb_chains_free(cs, NULL);
}

/* The head goes to a delay tier: the ones behind it are parked, each behind
 * its predecessor; a later arrival asks whether the tail is final. */
static void a_parked_head_parks_the_rest_in_order(void **state) {
    hb_chains_t *cs = hb_chains_new();
    hb_chain_t *c = hb_chains_get(cs, SUB, "00uA", 0);
    void *item;
    char after[37];
    (void)state;
    hb_chain_push(c, &item_a, A);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_KEY);
    hb_chain_answer(c, 1, T, 1); /* an old tail, delivered */
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_SEND);
    hb_chain_push(c, &item_b, B);
    hb_chain_push(c, &item_c, C);
    hb_chain_settled(c, 1); /* a: retry */
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_PARK);
    assert_ptr_equal(item, &item_b);
    assert_string_equal(after, A);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_PARK);
    assert_ptr_equal(item, &item_c);
    assert_string_equal(after, B);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_WAIT);
    /* later: is C final yet? not found (its row is on its way) is not final */
    hb_chain_push(c, &item_a, T);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_TAIL);
    assert_string_equal(hb_chain_tail(c), C);
    hb_chain_answer(c, 0, NULL, 0);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_PARK);
    assert_string_equal(after, C);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_WAIT); /* burst over */
    /* and once the tail is final, the next is sent */
    hb_chain_push(c, &item_b, B);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_TAIL);
    hb_chain_answer(c, 1, NULL, 1);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_SEND);
    hb_chains_free(cs, NULL);
}

/* A tail found not final in the log (after a restart) is waited behind; a
 * revoked partition makes every chain ask again; idle chains are evicted,
 * busy or parked ones are not. */
static void restart_revoke_and_eviction(void **state) {
    hb_chains_t *cs = hb_chains_new();
    hb_chain_t *c = hb_chains_get(cs, SUB, "00uA", 0), *d;
    void *item;
    char after[37];
    (void)state;
    hb_chain_push(c, &item_a, A);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_KEY);
    hb_chain_answer(c, 1, T, 0); /* the log: T waits in a tier */
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_PARK);
    assert_string_equal(after, T);
    d = hb_chains_get(cs, SUB, "00uB", 0);
    hb_chain_push(d, &item_b, B);
    assert_int_equal(hb_chain_next(d, &item, after), HB_CHAIN_ASK_KEY);
    hb_chain_answer(d, 0, NULL, 1);
    assert_int_equal(hb_chain_next(d, &item, after), HB_CHAIN_SEND);
    hb_chain_settled(d, 0);
    assert_int_equal(hb_chains_count(cs), 2);
    assert_int_equal(hb_chains_evict_idle(cs, 100000, 60000), 1); /* B idle; A parked */
    assert_int_equal(hb_chains_count(cs), 1);
    hb_chains_forget(cs);
    hb_chain_push(c, &item_c, C);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_KEY);
    hb_chain_unasked(c); /* could not ask: asks again */
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_KEY);
    hb_chain_stop(c);
    hb_chain_answer(c, 0, NULL, 1);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_WAIT); /* stopped */
    hb_chains_free(cs, NULL);
}

/* Partitions moved (any of them) while a head was in flight: that head went
 * to a delay tier, but its row reaches the log only after the broker has the
 * retry. The log's tail (an older delivery, final) must not let the next one
 * go while the head waits: the chain checks its own tail first. */
static void a_revocation_keeps_the_head_whose_row_is_on_its_way(void **state) {
    hb_chains_t *cs = hb_chains_new();
    hb_chain_t *c = hb_chains_get(cs, SUB, "00uA", 0);
    void *item;
    char after[37];
    (void)state;
    hb_chain_push(c, &item_a, A);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_KEY);
    hb_chain_answer(c, 1, T, 1); /* an old tail, delivered */
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_SEND);
    hb_chain_push(c, &item_b, B);
    hb_chains_forget(cs);   /* a rebalance while a is in flight */
    hb_chain_settled(c, 1); /* a: retry, its row not logged yet */
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_KEY);
    hb_chain_answer(c, 1, T, 1); /* the log still names T, delivered */
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_TAIL);
    assert_string_equal(hb_chain_tail(c), A);
    hb_chain_answer(c, 0, NULL, 0); /* a: not in the log yet */
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_PARK);
    assert_ptr_equal(item, &item_b);
    assert_string_equal(after, A);

    /* the partition came back after another replica parked C behind B: the
     * log's tail is newer than this chain's, and waits */
    hb_chains_forget(cs);
    hb_chain_push(c, &item_a, T);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_KEY);
    hb_chain_answer(c, 1, C, 0);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_TAIL);
    assert_string_equal(hb_chain_tail(c), B);
    hb_chain_answer(c, 1, NULL, 0); /* b: found, waiting too */
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_PARK);
    assert_string_equal(after, C);

    /* the log's tail is this chain's own: no second question */
    hb_chains_forget(cs);
    hb_chain_push(c, &item_b, B);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_KEY);
    hb_chain_answer(c, 1, T, 1);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_SEND);
    hb_chains_free(cs, NULL);
}

/* A key whose last delivery went to a delay tier and that gets no more
 * events must not stay in memory for good (one chain per user ever retried):
 * a parked chain is evicted too, after a longer idle time; a new one asks the
 * log. */
static void a_parked_idle_chain_is_evicted_in_the_end(void **state) {
    hb_chains_t *cs = hb_chains_new();
    hb_chain_t *c = hb_chains_get(cs, SUB, "00uA", 0);
    void *item;
    char after[37];
    (void)state;
    hb_chain_push(c, &item_a, A);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_KEY);
    hb_chain_answer(c, 0, NULL, 1);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_SEND);
    hb_chain_settled(c, 1); /* a: retry; nothing behind it */
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_WAIT);
    assert_int_equal(hb_chains_evict_idle(cs, 60000, 60000), 0); /* parked: kept a while */
    assert_int_equal(hb_chains_evict_idle(cs, 3600000, 60000), 1);
    assert_int_equal(hb_chains_count(cs), 0);
    c = hb_chains_get(cs, SUB, "00uA", 3600000);
    hb_chain_push(c, &item_b, B);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_KEY);
    hb_chains_free(cs, NULL);
}

static int is_b(void *item, void *arg) {
    (void)arg;
    return item == &item_b;
}

static void count_drop(void *item, void *arg) {
    (void)item;
    ++*(int *)arg;
}

/* A revocation takes a queued delivery back (is_b): the others keep their
 * order; the head abandoned unsent is waited behind, as if parked. */
static void a_withdrawn_item_leaves_the_queue_and_an_abandoned_head_parks_the_rest(void **state) {
    hb_chains_t *cs = hb_chains_new();
    hb_chain_t *c = hb_chains_get(cs, SUB, "00uA", 0);
    void *item;
    char after[37];
    int dropped = 0;
    (void)state;
    hb_chain_push(c, &item_a, A);
    hb_chain_push(c, &item_b, B);
    hb_chain_push(c, &item_c, C);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_ASK_KEY);
    hb_chain_answer(c, 0, NULL, 1);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_SEND);
    assert_ptr_equal(item, &item_a);
    assert_int_equal((int)hb_chains_withdraw(cs, is_b, count_drop, &dropped), 1);
    assert_int_equal(dropped, 1);
    assert_int_equal((int)hb_chains_withdraw(cs, is_b, count_drop, &dropped), 0);
    hb_chain_revoked(c); /* a abandoned before it was sent */
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_PARK);
    assert_ptr_equal(item, &item_c);
    assert_string_equal(after, A);
    assert_int_equal(hb_chain_next(c, &item, after), HB_CHAIN_WAIT);
    hb_chains_free(cs, NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(keys_follow_the_option),
        cmocka_unit_test(a_new_key_asks_then_sends_one_at_a_time),
        cmocka_unit_test(a_parked_head_parks_the_rest_in_order),
        cmocka_unit_test(restart_revoke_and_eviction),
        cmocka_unit_test(a_revocation_keeps_the_head_whose_row_is_on_its_way),
        cmocka_unit_test(a_parked_idle_chain_is_evicted_in_the_end),
        cmocka_unit_test(a_withdrawn_item_leaves_the_queue_and_an_abandoned_head_parks_the_rest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
