/* A growable byte buffer (see hb_buf.h). */
#include "hb_buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HB_BUF_MIN 256

void hb_buf_reserve(hb_buf_t *b, size_t more) {
    size_t cap;
    if (b->p && b->len + more + 1 <= b->cap)
        return;
    cap = b->cap ? b->cap : HB_BUF_MIN;
    while (cap < b->len + more + 1)
        cap *= 2;
    b->p = hb_realloc(b->p, cap);
    if (!b->cap)
        b->p[0] = '\0';
    b->cap = cap;
}

void hb_buf_put(hb_buf_t *b, const void *s, size_t n) {
    hb_buf_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void hb_buf_puts(hb_buf_t *b, const char *s) {
    hb_buf_put(b, s, strlen(s));
}

void hb_buf_printf(hb_buf_t *b, const char *fmt, ...) {
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    hb_buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void hb_buf_free(hb_buf_t *b) {
    free(b->p);
    memset(b, 0, sizeof(*b));
}
