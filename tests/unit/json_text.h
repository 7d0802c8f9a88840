/*
 * Tests: a JSON text written in a test, parsed, or the test fails naming the
 * column (tests/unit, header only; include after <cmocka.h>).
 */
#ifndef HB_TEST_JSON_TEXT_H
#define HB_TEST_JSON_TEXT_H

#include <jansson.h>

static inline json_t *parse(const char *text) {
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (!j)
        fail_msg("test JSON at column %d: %s", jerr.column, jerr.text);
    return j;
}

#endif
