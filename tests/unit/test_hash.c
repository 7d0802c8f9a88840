/*
 * Tests of hb_hash (the string-keyed table behind the index, HTTP hosts,
 * circuits and batches) and hb_buf (the growable buffer): growth past many
 * resizes, removal with tombstones, removal during a walk, and appending.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "hb_buf.h"
#include "hb_hash.h"

#define N 5000

static void test_put_get_del(void **state) {
    hb_hash_t h = {0};
    static int vals[N];
    char key[32];
    (void)state;
    assert_null(hb_hash_get(&h, "absent"));
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "https://host-%d:443", i);
        vals[i] = i;
        (void)hb_hash_put(&h, key, &vals[i]);
    }
    assert_int_equal(hb_hash_count(&h), N);
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "https://host-%d:443", i);
        assert_ptr_equal(hb_hash_get(&h, key), &vals[i]);
    }
    for (int i = 0; i < N; i += 2) { /* every other one leaves a tombstone */
        snprintf(key, sizeof(key), "https://host-%d:443", i);
        hb_hash_del(&h, hb_hash_find(&h, key));
    }
    assert_int_equal(hb_hash_count(&h), N / 2);
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "https://host-%d:443", i);
        if (i % 2)
            assert_ptr_equal(hb_hash_get(&h, key), &vals[i]);
        else
            assert_null(hb_hash_get(&h, key));
    }
    /* a key removed can come back */
    (void)hb_hash_put(&h, "https://host-0:443", &vals[0]);
    assert_ptr_equal(hb_hash_get(&h, "https://host-0:443"), &vals[0]);
    hb_hash_clear(&h);
    assert_int_equal(hb_hash_count(&h), 0);
    assert_null(hb_hash_get(&h, "https://host-1:443"));
}

static void test_walk_and_remove(void **state) {
    hb_hash_t h = {0};
    static int vals[100];
    char key[16];
    hb_hash_slot_t *s;
    size_t pos = 0, seen = 0;
    (void)state;
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        (void)hb_hash_put(&h, key, &vals[i]);
    }
    while ((s = hb_hash_each(&h, &pos)) != NULL) { /* every key once, removing as we go */
        seen++;
        hb_hash_del(&h, s);
    }
    assert_int_equal(seen, 100);
    assert_int_equal(hb_hash_count(&h), 0);
    hb_hash_clear(&h);
}

/* Keys that come and go (the retrier's deliveries in flight, each a new
 * id; hosts and ordering keys over weeks): the table's size follows the
 * keys it holds now. It doubled at every rehash, tombstones or not: 200,000
 * ids added and removed one at a time, two at most held, left 262,144
 * slots (4 MiB), walked whole by hb_hash_each. */
static void test_churn_keeps_its_size(void **state) {
    hb_hash_t h = {0};
    static int vals[8];
    char key[32];
    hb_hash_slot_t *s;
    size_t pos = 0, seen = 0;
    (void)state;
    for (int i = 0; i < 8; i++) { /* some that stay all along */
        snprintf(key, sizeof(key), "stay-%d", i);
        (void)hb_hash_put(&h, key, &vals[i]);
    }
    for (int i = 0; i < 200000; i++) {
        snprintf(key, sizeof(key), "delivery-%d", i);
        (void)hb_hash_put(&h, key, &vals[0]);
        if (i > 0) { /* the one before leaves: two at most in flight */
            snprintf(key, sizeof(key), "delivery-%d", i - 1);
            hb_hash_del(&h, hb_hash_find(&h, key));
        }
        assert_true(h.cap <= 64);
    }
    assert_int_equal(hb_hash_count(&h), 9);
    for (int i = 0; i < 8; i++) { /* the ones that stayed survived every rehash */
        snprintf(key, sizeof(key), "stay-%d", i);
        assert_ptr_equal(hb_hash_get(&h, key), &vals[i]);
    }
    assert_non_null(hb_hash_get(&h, "delivery-199999"));
    while (hb_hash_each(&h, &pos))
        seen++;
    assert_int_equal(seen, 9);
    /* a big table emptied shrinks at its next rehash */
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof(key), "host-%d", i);
        (void)hb_hash_put(&h, key, &vals[1]);
    }
    assert_true(h.cap >= 10000);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof(key), "host-%d", i);
        hb_hash_del(&h, hb_hash_find(&h, key));
    }
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof(key), "later-%d", i);
        s = hb_hash_put(&h, key, &vals[2]);
        assert_ptr_equal(s->val, &vals[2]);
        hb_hash_del(&h, s);
    }
    assert_true(h.cap <= 64);
    assert_int_equal(hb_hash_count(&h), 9);
    hb_hash_clear(&h);
}

static void test_buf(void **state) {
    hb_buf_t b = {0};
    (void)state;
    assert_null(b.p);
    hb_buf_reserve(&b, 0);
    assert_string_equal(b.p, "");
    for (int i = 0; i < 1000; i++)
        hb_buf_puts(&b, "0123456789");
    assert_int_equal(b.len, 10000);
    assert_int_equal(strlen(b.p), 10000);
    hb_buf_printf(&b, "|%d|%s", 42, "x");
    assert_string_equal(b.p + 10000, "|42|x");
    hb_buf_put(&b, "\0z", 2); /* bytes, not only text */
    assert_int_equal(b.len, 10007);
    assert_int_equal(b.p[10006], 'z');
    hb_buf_free(&b);
    assert_null(b.p);
    assert_int_equal(b.len, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_del),
        cmocka_unit_test(test_walk_and_remove),
        cmocka_unit_test(test_churn_keeps_its_size),
        cmocka_unit_test(test_buf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
