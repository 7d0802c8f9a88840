/*
 * Synthetic identity events (hb_generate.c): for `hookbridge-producer
 * --generate N`, and the sample event of a subscription's preview
 * (hookbridge.preview(), sent by the dispatcher). Obviously fake: users of
 * example.com, documentation addresses (RFC 5737).
 */
#ifndef HB_GENERATE_H
#define HB_GENERATE_H

#include <jansson.h>
#include <stdint.h>

/* Synthetic identity events: a mix of the catalogue's types with realistic
 * actors, targets, clients and outcomes (a few hundred bytes each). The
 * generator is deterministic for a seed; uuid is left to normalization.
 * The parts that recur (users, apps, groups, places, user agents,
 * outcomes) are made once and shared by the events that have them: treat
 * an event's nested objects as read-only (normalization only touches its
 * top level). */
#define HB_GEN_USERS 500
#define HB_GEN_PLACES 6
#define HB_GEN_AGENTS 4

typedef struct {
    uint64_t state;
    /* made on first use, one reference each; freed by hb_gen_free */
    json_t *users[HB_GEN_USERS][2]; /* [with detailEntry] */
    json_t *admins[3], *apps[6], *groups[6];
    json_t *geo[HB_GEN_PLACES], *security[HB_GEN_PLACES], *agents[HB_GEN_AGENTS];
    json_t *outcomes[4]; /* SUCCESS, then FAILURE with each reason */
    json_t *consts[16];  /* strings and values events share (generate.c's K_*) */
    int64_t published_sec;
    char published[32]; /* hb_format_time of published_sec's second, ms patched */
} hb_gen_t;

void hb_gen_init(hb_gen_t *g, uint64_t seed);
/* A new event (caller json_decref's; it may outlive the generator). */
json_t *hb_gen_event(hb_gen_t *g);
/* The same of the given type (one of the catalogue's, or any other name:
 * its actor and targets are then a user's). */
json_t *hb_gen_event_of(hb_gen_t *g, const char *type);
void hb_gen_free(hb_gen_t *g);

#endif
