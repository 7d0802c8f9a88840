/*
 * Sealed secrets: signing secrets and auth header values at rest.
 *
 * What is sealed: every value that lets someone impersonate hookbridge to an
 * endpoint (a subscription's signing secrets, its auth header value). The
 * database holds only ciphertext; the key comes from HOOKBRIDGE_SECRET_KEY
 * and is never stored in PostgreSQL, so a dump, a replica or a read-only role
 * reveals nothing usable.
 *
 * Format: AES-256-GCM (OpenSSL EVP), written as lowercase hex of
 *   0x01 (format version) | 12-byte random nonce | ciphertext | 16-byte tag
 * so a value is 2 * (1 + 12 + n + 16) hex digits for n plaintext bytes. A
 * fresh nonce (RAND_bytes) per seal: sealing the same value twice gives two
 * different texts.
 *
 * AAD: each value is bound to the row it belongs to by authenticated data
 * that is not stored: "hookbridge:signing:<subscription uuid>:<secret id>" or
 * "hookbridge:auth:<subscription uuid>" (hb_seal_aad_*). A value copied into
 * another row, or altered in any bit, does not open.
 *
 * Key ids and rotation: a key's id is the lowercase hex of the first 8 bytes
 * of SHA-256("hookbridge-secret-key-id:" || key) and is stored beside each
 * value. New values are always sealed with the current key; old keys
 * (HOOKBRIDGE_SECRET_KEYS_OLD) only open. The store re-seals a value whose
 * key id is not the current one, so an old key can be dropped once no row
 * names it.
 *
 * What never leaks: no error text contains key material, key text or
 * plaintext; keys and opened plaintext are wiped (OPENSSL_cleanse) when
 * freed. A keyring is read-only after hb_keyring_new: any thread may use it.
 */
#ifndef HB_SEAL_H
#define HB_SEAL_H

#include <stddef.h>

#include "hb_common.h"

#define HB_SEAL_KEY_LEN 32    /* AES-256 */
#define HB_SEAL_KEY_ID_LEN 16 /* hex digits */
#define HB_SEAL_KEY_B64_LEN 44
#define HB_SEAL_AAD_MAX 96 /* room for either AAD string and its NUL */

typedef struct hb_keyring_s hb_keyring_t;

/* current: the key as base64 (standard alphabet, padding optional) of exactly
 * 32 bytes, or 64 hex digits; surrounding whitespace is ignored. old: NULL/""
 * or a list of such keys separated by commas and/or whitespace (opening only).
 * Errors name which key is bad and why ("key 2 of HOOKBRIDGE_SECRET_KEYS_OLD:
 * 31 bytes, want 32") but never echo key material. The same key twice is fine
 * (deduplicated). Returns NULL on error. */
hb_keyring_t *hb_keyring_new(const char *current, const char *old, char *errstr,
                             size_t errstr_size) HB_MUSTCHECK;
void hb_keyring_free(hb_keyring_t *kr); /* wipes the keys; NULL ok */

const char *hb_keyring_current_id(const hb_keyring_t *kr);      /* 16 lowercase hex chars */
int hb_keyring_has(const hb_keyring_t *kr, const char *key_id); /* 1 or 0 */
/* Distinct keys, the current one first (index 0), then the old ones in the
 * order given. */
size_t hb_keyring_count(const hb_keyring_t *kr);
const char *hb_keyring_id(const hb_keyring_t *kr, size_t i);

/* The longest value hb_seal_hex seals (secrets are short; this bounds int
 * conversions). */
#define HB_SEAL_MAX_PLAINTEXT (1u << 20)

/* Seals (pt, ptlen) with the current key, bound to aad (NUL-terminated, see
 * hb_seal_aad_*). *hex_out: hb_malloc'ed, NUL-terminated lowercase hex of the
 * format above; caller frees (free()). */
int hb_seal_hex(const hb_keyring_t *kr, const char *aad, const void *pt, size_t ptlen,
                char **hex_out, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* Opens hex (as above; a leading "\x", as libpq prints bytea, is accepted)
 * sealed with key key_id and bound to aad. *out: hb_malloc'ed, NUL-terminated
 * plaintext (an error if it contains a NUL), *outlen its length (outlen may be
 * NULL); free it with hb_secret_free. Errors never hold plaintext or key bytes:
 *   "sealed with key <id>, which is not configured (HOOKBRIDGE_SECRET_KEY,
 *    HOOKBRIDGE_SECRET_KEYS_OLD)"
 *   "sealed value does not authenticate under key <id> (wrong key, altered,
 *    or copied from another row)"
 *   "sealed value is malformed (<why>)" */
int hb_unseal_hex(const hb_keyring_t *kr, const char *key_id, const char *aad, const char *hex,
                  char **out, size_t *outlen, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* Wipes strlen(p) bytes, then frees. NULL ok. */
void hb_secret_free(char *p);

/* 32 random bytes (RAND_bytes) as standard padded base64: 44 chars and a NUL,
 * so outsz >= 45. A new HOOKBRIDGE_SECRET_KEY. */
int hb_keyring_generate_key(char *out, size_t outsz, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* The AAD strings, shared by the store and hookbridge-secret. sub_id must be a
 * UUID in 8-4-4-4-12 form (either case; written lowercase). 0, or -1 when
 * sub_id is not such a UUID or out (HB_SEAL_AAD_MAX is enough) is too small.
 *   signing secret row: "hookbridge:signing:<sub uuid>:<secret row id, decimal>"
 *   auth value:         "hookbridge:auth:<sub uuid>" */
int hb_seal_aad_signing(char *out, size_t n, const char *sub_id, long long secret_id) HB_MUSTCHECK;
int hb_seal_aad_auth(char *out, size_t n, const char *sub_id) HB_MUSTCHECK;

#endif
