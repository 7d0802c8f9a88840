/*
 * Tests: json_equal as the JSON text path needs it (tests/unit, header only).
 */
#ifndef HB_TEST_JSON_SAME_H
#define HB_TEST_JSON_SAME_H

#include <jansson.h>
#include <string.h>

/* json_equal, also for keys with a NUL (json_equal looks keys up by
 * strlen), and members in the same order; reals bit for bit. */
static inline int same_value(json_t *a, json_t *b) {
    if (json_typeof(a) != json_typeof(b))
        return 0;
    switch (json_typeof(a)) {
    case JSON_OBJECT: {
        const char *key;
        size_t key_len;
        json_t *val;
        void *it = json_object_iter(b);
        if (json_object_size(a) != json_object_size(b))
            return 0;
        json_object_keylen_foreach(a, key, key_len, val) {
            if (!it || json_object_iter_key_len(it) != key_len ||
                memcmp(json_object_iter_key(it), key, key_len) ||
                !same_value(val, json_object_iter_value(it)))
                return 0;
            it = json_object_iter_next(b, it);
        }
        return 1;
    }
    case JSON_ARRAY:
        if (json_array_size(a) != json_array_size(b))
            return 0;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!same_value(json_array_get(a, i), json_array_get(b, i)))
                return 0;
        return 1;
    case JSON_REAL: {
        double x = json_real_value(a), y = json_real_value(b);
        return !memcmp(&x, &y, sizeof(x));
    }
    default: return json_equal(a, b);
    }
}

#endif
