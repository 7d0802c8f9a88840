/*
 * Standard Webhooks signatures and secrets (OpenSSL HMAC-SHA256, base64).
 *
 *   webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>
 *
 * Secrets are shown to users as "whsec_<base64 key>"; the key is the decoded
 * bytes. During a rotation both secrets sign and the header carries both
 * signatures, space-separated. Any thread may call these.
 */
#ifndef HB_SIGN_H
#define HB_SIGN_H

#include "hb_common.h"
#include "hb_sub.h"

/* "whsec_<base64>" (prefix optional) -> key bytes. */
int hb_secret_parse(const char *text, hb_secret_t *out, char *errstr,
                    size_t errstr_size) HB_MUSTCHECK;

/* Header value for the unexpired secrets (expires_ms == 0 or > now_ms). */
int hb_sign_header(const hb_secret_t *secrets, int secrets_cnt, int64_t now_ms, const char *msg_id,
                   int64_t timestamp_s, const void *body, size_t body_len, char *out,
                   size_t outsz) HB_MUSTCHECK;

/* Checks a received request (the example receiver, tests): 0 when one of the
 * space-separated v1 signatures matches (constant-time compare) and the
 * timestamp is within tolerance_s of now_s; -1 with a reason otherwise
 * ("no matching signature", "timestamp too old", "malformed timestamp"). */
int hb_sign_verify(const hb_secret_t *secret, const char *msg_id, const char *timestamp,
                   const void *body, size_t body_len, const char *signature_header, int64_t now_s,
                   int64_t tolerance_s, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* Whether a received credential (a header value; NULL when absent) is exactly
 * want, compared in constant time: the SHA-256 digests of both are compared
 * (CRYPTO_memcmp), so neither the content nor the length of want shows in
 * the timing. The example receiver, the ingest endpoint. */
int hb_secret_equal(const char *got, const char *want);

/* Base64 (standard alphabet, padded). out must hold 4*ceil(len/3)+1. */
size_t hb_base64_encode(const void *in, size_t len, char *out, size_t outsz);
int hb_base64_decode(const char *in, uint8_t *out, size_t outsz, size_t *out_len) HB_MUSTCHECK;

/* Random UUID v4 text (OpenSSL RAND_bytes). out holds 37 bytes. */
int hb_uuid_random(char out[HB_UUID_LEN + 1]) HB_MUSTCHECK;

/* Deterministic UUID (v8 layout, SHA-256 of the parts joined by '\n'): the
 * delivery id of an event to a subscription is the same every time the event
 * is consumed, so a redelivery after a crash carries the same webhook-id. */
void hb_uuid_derive(const char *const *parts, size_t nparts, char out[HB_UUID_LEN + 1]);

#endif
