/*
 * The retrier service: consumes the delay tiers, re-delivers each attempt
 * when it is due, dead-letters deliveries out of attempts, and serves replay
 * requests and automatic deactivation of endpoints that keep failing.
 */
#ifndef HB_RETRIER_H
#define HB_RETRIER_H

#include "hb_config.h"

typedef struct hb_retrier_s hb_retrier_t;

hb_retrier_t *hb_retrier_new(const hb_config_t *cfg, char *errstr, size_t errstr_size) HB_MUSTCHECK;
int hb_retrier_run(hb_retrier_t *r);
void hb_retrier_free(hb_retrier_t *r);

#endif
