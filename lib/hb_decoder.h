/*
 * The consumed messages' decoder: a codec for the reader schema plus every
 * writer schema a service knows for it, and the Schema Registry.
 *
 * Writer schemas come from (1) the schema history compiled into the
 * programs (schema/history/NAME.vN.avsc, hb_schema_history_*), (2) the
 * operator's directory HOOKBRIDGE_WRITER_SCHEMAS_DIR (*.avsc, read once at
 * start; a file that does not parse or does not resolve into the reader stops
 * the start with the file's name and the reason), and (3) for messages in the
 * Schema Registry framing, the registry (hb_registry), fetched at first sight
 * of an id and kept.
 *
 * hb_decoder_decode answers one of three things:
 *   HB_DECODE_OK      *out is the message as JSON;
 *   HB_DECODE_POISON  the bytes cannot be read, errstr says why: bad framing,
 *                     an unknown writer fingerprint, a registry id the
 *                     registry does not have, a writer schema that does not
 *                     resolve into the reader, corrupt Avro. Dead-letter it;
 *   HB_DECODE_WAIT    the writer schema is in the registry but not here yet
 *                     (a fetch is under way, or the registry cannot be
 *                     reached, or it does not have a new id yet:
 *                     hb_registry's grace): read the message again in
 *                     *wait_ms. Never dead-letter it.
 * hb_decoder_unready says why the service is not ready (the registry is
 * down), or NULL.
 *
 * One thread (the consuming loop).
 */
#ifndef HB_DECODER_H
#define HB_DECODER_H

#include <jansson.h>

#include "hb_codec.h"
#include "hb_common.h"
#include "hb_config.h"
#include "hb_event.h"

typedef struct hb_decoder_s hb_decoder_t;

#define HB_DECODE_OK 0
#define HB_DECODE_POISON (-1)
#define HB_DECODE_WAIT 1

/* reader_schema: one of the embedded schemas (hb_schemas.h), whose history
 * is then added; the directory and registry settings come from cfg. */
hb_decoder_t *hb_decoder_new(const hb_config_t *cfg, const char *reader_schema, char *errstr,
                             size_t errstr_size) HB_MUSTCHECK;
void hb_decoder_free(hb_decoder_t *d);

int hb_decoder_decode(hb_decoder_t *d, const void *buf, size_t len, json_t **out, int64_t *wait_ms,
                      char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* hb_decoder_decode, the message as an event (hb_event.h: its JSON text,
 * and a jansson value only when the general way made one): *out is a new
 * reference when HB_DECODE_OK. A message that is not a JSON object is
 * poison. */
int hb_decoder_decode_event(hb_decoder_t *d, const void *buf, size_t len, hb_event_t **out,
                            int64_t *wait_ms, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* NULL when ready, else the reason (in buf). */
const char *hb_decoder_unready(hb_decoder_t *d, char *buf, size_t buf_size);

/* Adds the *.avsc files of dir (sorted by name) to c as writer schemas;
 * *added counts them. Errors name the file. */
int hb_decoder_load_dir(hb_codec_t *c, const char *dir, int *added, char *errstr,
                        size_t errstr_size) HB_MUSTCHECK;

#endif
