/*
 * The dispatcher service: consumes identity events, matches them against the
 * subscription index, delivers, and commits offsets only when every delivery
 * an event caused is durable. Also runs endpoint verification challenges.
 */
#ifndef HB_DISPATCHER_H
#define HB_DISPATCHER_H

#include "hb_config.h"

typedef struct hb_dispatcher_s hb_dispatcher_t;

/* Builds the parts that need no network (codec, HTTP engine, health server). */
hb_dispatcher_t *hb_dispatcher_new(const hb_config_t *cfg, char *errstr,
                                   size_t errstr_size) HB_MUSTCHECK;

/* Runs until hb_stop_requested, then drains and commits. Returns 0 on a clean
 * stop, -1 on a fatal error (already logged). */
int hb_dispatcher_run(hb_dispatcher_t *d);

void hb_dispatcher_free(hb_dispatcher_t *d);

#endif
