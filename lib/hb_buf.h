/*
 * A growable byte buffer, the one every module appends text to (canonical
 * schemas, PostgreSQL array literals, the metrics page).
 *
 * A zeroed hb_buf_t is empty. Appending doubles the capacity as needed and
 * keeps the content NUL-terminated (p is NULL until something is appended or
 * reserved). Allocation failure aborts, as everywhere (hb_realloc). One owner
 * at a time; no locking.
 */
#ifndef HB_BUF_H
#define HB_BUF_H

#include "hb_common.h"

typedef struct hb_buf_s {
    char *p;
    size_t len, cap;
} hb_buf_t;

/* Room for more bytes plus the terminating NUL; p is then never NULL. */
void hb_buf_reserve(hb_buf_t *b, size_t more);
void hb_buf_put(hb_buf_t *b, const void *s, size_t n);
void hb_buf_puts(hb_buf_t *b, const char *s);
void hb_buf_printf(hb_buf_t *b, const char *fmt, ...) HB_PRINTF(2, 3);
/* Frees the content; the buffer is empty again. */
void hb_buf_free(hb_buf_t *b);

#endif
