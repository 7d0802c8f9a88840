/*
 * Avro codec with the single-object encoding (Avro spec): 0xC3 0x01, the
 * 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing
 * Canonical Form, then the Avro binary body.
 *
 * A codec holds one reader schema (the current one) and the writer schemas
 * it can resolve from (the reader itself plus older or newer versions
 * registered with hb_codec_add_writer), looked up by fingerprint. Resolution
 * follows Avro's rules: a writer field the reader lacks is skipped, a reader
 * field the writer lacks takes its default, ints widen to longs.
 *
 * Decode also reads the Confluent Schema Registry framing: 0x00, a 4-byte
 * big-endian schema id, the Avro binary body. The codec knows only the ids
 * registered with hb_codec_add_writer_id; an unknown one is answered with
 * HB_CODEC_UNKNOWN_ID, and the caller fetches the schema (hb_registry.h).
 *
 * JSON mapping (both ways) is the natural one people write, not Avro's JSON
 * encoding: a record is an object; a union ["null", T] is null/absent or the
 * T value itself; map is an object; array is an array; long/int are integers;
 * double is a number; enum is its symbol string. Unknown object members are
 * ignored on encode. Errors name the path: "actor.id: expected a string".
 *
 * A codec is not thread-safe; each thread that decodes owns one.
 */
#ifndef HB_CODEC_H
#define HB_CODEC_H

#include <jansson.h>

#include "hb_common.h"
#include "hb_json.h"

typedef struct hb_codec_s hb_codec_t;

hb_codec_t *hb_codec_new(const char *reader_schema_json, char *errstr,
                         size_t errstr_size) HB_MUSTCHECK;
void hb_codec_free(hb_codec_t *c);

/* Registers a writer schema (an older or newer version) that decode can
 * resolve into the reader. Fails, saying why, when it does not resolve. */
int hb_codec_add_writer(hb_codec_t *c, const char *writer_schema_json, char *errstr,
                        size_t errstr_size) HB_MUSTCHECK;

/* The same for messages framed with Schema Registry id `id`. */
int hb_codec_add_writer_id(hb_codec_t *c, uint32_t id, const char *writer_schema_json, char *errstr,
                           size_t errstr_size) HB_MUSTCHECK;

/* hb_codec_decode's answer to a Schema Registry id it was not given. */
#define HB_CODEC_UNKNOWN_ID (-2)

/* 1 and *id when buf is Schema Registry framed (0x00 + 4-byte id), else 0. */
int hb_codec_registry_id(const void *buf, size_t len, uint32_t *id);

/* Tests: encode and decode every message the general way (avro-c's generic
 * value, built from the JSON and written, or read and turned into JSON),
 * never the direct walks between JSON and the bytes that encode uses and
 * decode uses for messages written with the reader schema; both must give
 * the same answer, byte for byte, error for error. */
void hb_codec_set_generic_only(hb_codec_t *c, int on);

/* Fingerprint (CRC-64-AVRO of the canonical form) of the reader schema. */
uint64_t hb_codec_fingerprint(const hb_codec_t *c);

/* CRC-64-AVRO of raw bytes (the spec's Rabin fingerprint). */
uint64_t hb_crc64_avro(const void *buf, size_t len);

/* The Parsing Canonical Form (Avro spec) of a schema given as JSON text:
 * full names, only the attributes that matter, fixed order, no whitespace.
 * *out is malloc'd, caller frees. */
int hb_codec_canonical_form(const char *schema_json, char **out, char *errstr,
                            size_t errstr_size) HB_MUSTCHECK;

/* JSON -> single-object-encoded bytes; *buf is malloc'd, caller frees. */
int hb_codec_encode(hb_codec_t *c, const json_t *obj, void **buf, size_t *len, char *errstr,
                    size_t errstr_size) HB_MUSTCHECK;

/* JSON -> Schema Registry framed bytes with schema id `id` (the reader
 * schema's id in the registry); *buf is malloc'd, caller frees. */
int hb_codec_encode_registry(hb_codec_t *c, const json_t *obj, uint32_t id, void **buf, size_t *len,
                             char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* Single-object-encoded (or Schema Registry framed) bytes -> new JSON object
 * (caller json_decref's). Errors (-1) say what is wrong: "not single-object
 * encoded (bad magic)", "unknown writer schema fingerprint 0x...",
 * "truncated or corrupt Avro data", "N trailing bytes"; HB_CODEC_UNKNOWN_ID
 * for a Schema Registry id not registered with hb_codec_add_writer_id. */
int hb_codec_decode(hb_codec_t *c, const void *buf, size_t len, json_t **out, char *errstr,
                    size_t errstr_size) HB_MUSTCHECK;

/* hb_codec_decode with the answer as compact JSON text and its index (doc,
 * reset first, reusable from call to call): the bytes hb_json_put writes of
 * the value hb_codec_decode makes, the same errors. A message written with
 * the reader schema goes from the bytes to the text without a jansson value
 * (*json NULL); one that takes the general way (a writer to resolve) also
 * hands over that value in *json (caller json_decref's). */
int hb_codec_decode_doc(hb_codec_t *c, const void *buf, size_t len, hb_jdoc_t *doc, json_t **json,
                        char *errstr, size_t errstr_size) HB_MUSTCHECK;

#endif
