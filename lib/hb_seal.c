/*
 * Sealed secrets (see hb_seal.h): a keyring of AES-256 keys and AES-256-GCM
 * seal/open of short values, written as hex.
 *
 * The keyring is one allocation sized before any key is parsed, so key bytes
 * are never copied by a realloc, and it is wiped when freed. Parsing keeps the
 * key text out of every message: a reason says what is wrong ("31 bytes, want
 * 32") and which key ("key 2 of HOOKBRIDGE_SECRET_KEYS_OLD"), never what it
 * was. Each seal and open builds its own EVP_CIPHER_CTX, so any thread may
 * use a keyring concurrently.
 */
#include "hb_seal.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_sign.h"

#define SEAL_VERSION 0x01
#define SEAL_NONCE_LEN 12
#define SEAL_TAG_LEN 16
#define SEAL_OVERHEAD (1 + SEAL_NONCE_LEN + SEAL_TAG_LEN)
#define SEAL_MAX_PT HB_SEAL_MAX_PLAINTEXT
#define KEY_ID_PREFIX "hookbridge-secret-key-id:"
#define KEY_TEXT_MAX 256 /* longer is not a key; refused before decoding */
#define KEY_FORMS "32 bytes as base64, or 64 hex digits"
#define VAR_CURRENT "HOOKBRIDGE_SECRET_KEY"
#define VAR_OLD "HOOKBRIDGE_SECRET_KEYS_OLD"

typedef struct {
    uint8_t key[HB_SEAL_KEY_LEN];
    char id[HB_SEAL_KEY_ID_LEN + 1];
} seal_key_t;

struct hb_keyring_s {
    size_t n; /* keys[0] is the current key */
    seal_key_t keys[];
};

static const char hexdigits[] = "0123456789abcdef";

static void hex_encode(const uint8_t *in, size_t len, char *out) {
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hexdigits[in[i] >> 4];
        out[2 * i + 1] = hexdigits[in[i] & 15];
    }
    out[2 * len] = '\0';
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes 2*len hex digits (already checked to be hex) into out. */
static void hex_decode(const char *in, size_t len, uint8_t *out) {
    for (size_t i = 0; i < len; i++)
        out[i] = (uint8_t)(hex_value(in[2 * i]) << 4 | hex_value(in[2 * i + 1]));
}

static void openssl_reason(const char *what, char *errstr, size_t errstr_size) {
    char buf[256] = "unknown error";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    hb_seterr(errstr, errstr_size, "%s failed (OpenSSL: %s)", what, buf);
}

/* ---- keys ---------------------------------------------------------------- */

/* One key's text (s, len), trimmed, into key. why gets a reason without the
 * text. A string of hex digits is hex unless it has the 43 characters of
 * unpadded base64 of 32 bytes; anything else is base64, padding optional. */
static int key_parse(const char *s, size_t len, uint8_t key[HB_SEAL_KEY_LEN], char *why,
                     size_t whysz) {
    char b64[KEY_TEXT_MAX + 4];
    uint8_t raw[KEY_TEXT_MAX];
    size_t hexlen = 0, m, got = 0;
    int rc = -1;

    if (len == 0) {
        hb_seterr(why, whysz, "empty (want " KEY_FORMS ")");
        return -1;
    }
    if (len > KEY_TEXT_MAX) {
        hb_seterr(why, whysz, "%zu characters, too long (want " KEY_FORMS ")", len);
        return -1;
    }
    while (hexlen < len && hex_value(s[hexlen]) >= 0)
        hexlen++;
    if (hexlen == len && len != 43) {
        if (len != 2 * HB_SEAL_KEY_LEN) {
            hb_seterr(why, whysz, "%zu hex digits, want %d", len, 2 * HB_SEAL_KEY_LEN);
            return -1;
        }
        hex_decode(s, HB_SEAL_KEY_LEN, key);
        return 0;
    }
    /* Base64: strip up to two '=' and pad again ourselves. */
    m = len;
    while (m > 0 && len - m < 2 && s[m - 1] == '=')
        m--;
    memcpy(b64, s, m);
    if (m % 4 == 1)
        goto garbage;
    while (m % 4 != 0)
        b64[m++] = '=';
    b64[m] = '\0';
    if (hb_base64_decode(b64, raw, sizeof(raw), &got) != 0)
        goto garbage;
    if (got != HB_SEAL_KEY_LEN) {
        hb_seterr(why, whysz, "%zu byte%s, want %d", got, got == 1 ? "" : "s", HB_SEAL_KEY_LEN);
        goto out;
    }
    memcpy(key, raw, HB_SEAL_KEY_LEN);
    rc = 0;
    goto out;
garbage:
    hb_seterr(why, whysz, "neither base64 nor hex (want " KEY_FORMS ")");
out:
    OPENSSL_cleanse(b64, sizeof(b64));
    OPENSSL_cleanse(raw, sizeof(raw));
    return rc;
}

/* id = hex(SHA-256("hookbridge-secret-key-id:" || key)[0..8)) */
static int key_id(const uint8_t key[HB_SEAL_KEY_LEN], char id[HB_SEAL_KEY_ID_LEN + 1]) {
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, KEY_ID_PREFIX, strlen(KEY_ID_PREFIX)) == 1 &&
             EVP_DigestUpdate(ctx, key, HB_SEAL_KEY_LEN) == 1 &&
             EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen >= HB_SEAL_KEY_ID_LEN / 2;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return -1;
    hex_encode(md, HB_SEAL_KEY_ID_LEN / 2, id);
    return 0;
}

static int is_key_sep(char c) {
    return c == ',' || isspace((unsigned char)c);
}

/* Next key of a comma/whitespace separated list: *p advances past it. */
static int next_token(const char **p, const char **tok, size_t *len) {
    const char *s = *p;
    while (*s && is_key_sep(*s))
        s++;
    if (!*s)
        return 0;
    *tok = s;
    while (*s && !is_key_sep(*s))
        s++;
    *len = (size_t)(s - *tok);
    *p = s;
    return 1;
}

/* Adds a parsed key unless the ring already has it. */
static int ring_add(hb_keyring_t *kr, const uint8_t key[HB_SEAL_KEY_LEN]) {
    for (size_t i = 0; i < kr->n; i++)
        if (CRYPTO_memcmp(kr->keys[i].key, key, HB_SEAL_KEY_LEN) == 0)
            return 0;
    if (key_id(key, kr->keys[kr->n].id) < 0)
        return -1;
    memcpy(kr->keys[kr->n].key, key, HB_SEAL_KEY_LEN);
    kr->n++;
    return 0;
}

hb_keyring_t *hb_keyring_new(const char *current, const char *old, char *errstr,
                             size_t errstr_size) {
    uint8_t key[HB_SEAL_KEY_LEN];
    char why[128];
    const char *p, *tok;
    size_t len, nold = 0;
    hb_keyring_t *kr = NULL;
    int k = 0;

    p = current ? current : "";
    if (!next_token(&p, &tok, &len)) {
        hb_seterr(errstr, errstr_size, VAR_CURRENT ": empty (want " KEY_FORMS ")");
        return NULL;
    }
    for (p = old ? old : ""; next_token(&p, &tok, &len);)
        nold++;
    kr = hb_calloc(1, sizeof(*kr) + (nold + 1) * sizeof(seal_key_t));

    /* The current key is one key: only surrounding whitespace is trimmed. */
    tok = current;
    while (isspace((unsigned char)*tok))
        tok++;
    len = strlen(tok);
    while (len > 0 && isspace((unsigned char)tok[len - 1]))
        len--;
    if (key_parse(tok, len, key, why, sizeof(why)) < 0) {
        hb_seterr(errstr, errstr_size, VAR_CURRENT ": %s", why);
        goto fail;
    }
    if (ring_add(kr, key) < 0)
        goto fail_id;
    for (p = old ? old : ""; next_token(&p, &tok, &len);) {
        k++;
        if (key_parse(tok, len, key, why, sizeof(why)) < 0) {
            hb_seterr(errstr, errstr_size, "key %d of " VAR_OLD ": %s", k, why);
            goto fail;
        }
        if (ring_add(kr, key) < 0)
            goto fail_id;
    }
    OPENSSL_cleanse(key, sizeof(key));
    return kr;
fail_id:
    openssl_reason("SHA-256 of a key", errstr, errstr_size);
fail:
    OPENSSL_cleanse(key, sizeof(key));
    hb_keyring_free(kr);
    return NULL;
}

void hb_keyring_free(hb_keyring_t *kr) {
    if (!kr)
        return;
    OPENSSL_cleanse(kr->keys, kr->n * sizeof(seal_key_t));
    free(kr);
}

const char *hb_keyring_current_id(const hb_keyring_t *kr) {
    return kr->keys[0].id;
}

size_t hb_keyring_count(const hb_keyring_t *kr) {
    return kr->n;
}

const char *hb_keyring_id(const hb_keyring_t *kr, size_t i) {
    return i < kr->n ? kr->keys[i].id : NULL;
}

static const seal_key_t *ring_find(const hb_keyring_t *kr, const char *id) {
    if (!id)
        return NULL;
    for (size_t i = 0; i < kr->n; i++)
        if (!strcmp(kr->keys[i].id, id))
            return &kr->keys[i];
    return NULL;
}

int hb_keyring_has(const hb_keyring_t *kr, const char *key_id_text) {
    return ring_find(kr, key_id_text) != NULL;
}

int hb_keyring_generate_key(char *out, size_t outsz, char *errstr, size_t errstr_size) {
    uint8_t key[HB_SEAL_KEY_LEN];
    if (outsz < HB_SEAL_KEY_B64_LEN + 1) {
        hb_seterr(errstr, errstr_size, "key buffer too small");
        return -1;
    }
    if (RAND_bytes(key, sizeof(key)) != 1) {
        openssl_reason("RAND_bytes", errstr, errstr_size);
        return -1;
    }
    hb_base64_encode(key, sizeof(key), out, outsz);
    OPENSSL_cleanse(key, sizeof(key));
    return 0;
}

/* ---- AES-256-GCM ------------------------------------------------------------ */

/* ct gets ptlen bytes; the caller bounds ptlen and aadlen by SEAL_MAX_PT. */
static int gcm_seal(const uint8_t key[HB_SEAL_KEY_LEN], const uint8_t nonce[SEAL_NONCE_LEN],
                    const void *aad, size_t aadlen, const void *pt, size_t ptlen, uint8_t *ct,
                    uint8_t tag[SEAL_TAG_LEN]) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, ok;
    ok = ctx && EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SEAL_NONCE_LEN, NULL) == 1 &&
         EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
         (aadlen == 0 || EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aadlen) == 1) &&
         (ptlen == 0 || EVP_EncryptUpdate(ctx, ct, &n, pt, (int)ptlen) == 1) &&
         EVP_EncryptFinal_ex(ctx, ct + ptlen, &n) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SEAL_TAG_LEN, tag) == 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* 0 opened into pt (ctlen bytes), 1 does not authenticate, -1 OpenSSL failed. */
static int gcm_open(const uint8_t key[HB_SEAL_KEY_LEN], const uint8_t nonce[SEAL_NONCE_LEN],
                    const void *aad, size_t aadlen, const uint8_t *ct, size_t ctlen,
                    const uint8_t tag[SEAL_TAG_LEN], uint8_t *pt) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, rc = -1;
    if (ctx && EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SEAL_NONCE_LEN, NULL) == 1 &&
        EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
        (aadlen == 0 || EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aadlen) == 1) &&
        (ctlen == 0 || EVP_DecryptUpdate(ctx, pt, &n, ct, (int)ctlen) == 1) &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SEAL_TAG_LEN, (void *)tag) == 1) {
        /* The tag is checked here; a mismatch is data, not an OpenSSL fault. */
        rc = EVP_DecryptFinal_ex(ctx, pt + ctlen, &n) == 1 ? 0 : 1;
        ERR_clear_error();
    }
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

/* ---- seal / open ------------------------------------------------------------ */

int hb_seal_hex(const hb_keyring_t *kr, const char *aad, const void *pt, size_t ptlen,
                char **hex_out, char *errstr, size_t errstr_size) {
    size_t aadlen = aad ? strlen(aad) : 0, total = SEAL_OVERHEAD + ptlen;
    uint8_t *buf;

    *hex_out = NULL;
    if (ptlen > SEAL_MAX_PT || aadlen > SEAL_MAX_PT) {
        hb_seterr(errstr, errstr_size, "value to seal is too long (%zu bytes, at most %u)", ptlen,
                  SEAL_MAX_PT);
        return -1;
    }
    buf = hb_malloc(total);
    buf[0] = SEAL_VERSION;
    if (RAND_bytes(buf + 1, SEAL_NONCE_LEN) != 1) {
        openssl_reason("RAND_bytes", errstr, errstr_size);
        free(buf);
        return -1;
    }
    if (gcm_seal(kr->keys[0].key, buf + 1, aad, aadlen, pt, ptlen, buf + 1 + SEAL_NONCE_LEN,
                 buf + 1 + SEAL_NONCE_LEN + ptlen) < 0) {
        openssl_reason("AES-256-GCM seal", errstr, errstr_size);
        free(buf);
        return -1;
    }
    *hex_out = hb_malloc(2 * total + 1);
    hex_encode(buf, total, *hex_out);
    free(buf); /* ciphertext only: nothing to wipe */
    return 0;
}

/* Prints a key id from the database only when it looks like one. */
static const char *shown_id(const char *id) {
    size_t n = 0;
    if (!id || !*id)
        return "(none)";
    while (id[n] && n <= 64 && isalnum((unsigned char)id[n]))
        n++;
    return id[n] ? "(not a key id)" : id;
}

int hb_unseal_hex(const hb_keyring_t *kr, const char *key_id_text, const char *aad, const char *hex,
                  char **out, size_t *outlen, char *errstr, size_t errstr_size) {
    size_t aadlen = aad ? strlen(aad) : 0, hexlen, total, ctlen;
    const seal_key_t *k;
    uint8_t *buf = NULL, *pt = NULL;
    int r;

    *out = NULL;
    if (outlen)
        *outlen = 0;
    if (!hex)
        hex = "";
    if (hex[0] == '\\' && hex[1] == 'x')
        hex += 2;
    hexlen = strlen(hex);
    for (size_t i = 0; i < hexlen; i++)
        if (hex_value(hex[i]) < 0) {
            hb_seterr(errstr, errstr_size, "sealed value is malformed (not hex)");
            return -1;
        }
    if (hexlen % 2) {
        hb_seterr(errstr, errstr_size, "sealed value is malformed (odd number of hex digits)");
        return -1;
    }
    total = hexlen / 2;
    if (total < SEAL_OVERHEAD || total - SEAL_OVERHEAD > SEAL_MAX_PT) {
        hb_seterr(errstr, errstr_size,
                  "sealed value is malformed (%zu bytes; a sealed value has %d to %u)", total,
                  SEAL_OVERHEAD, SEAL_OVERHEAD + SEAL_MAX_PT);
        return -1;
    }
    if (hex_value(hex[0]) * 16 + hex_value(hex[1]) != SEAL_VERSION) {
        hb_seterr(errstr, errstr_size,
                  "sealed value is malformed (format version %d, this program reads %d)",
                  hex_value(hex[0]) * 16 + hex_value(hex[1]), SEAL_VERSION);
        return -1;
    }
    if (aadlen > SEAL_MAX_PT) {
        hb_seterr(errstr, errstr_size, "AAD too long");
        return -1;
    }
    k = ring_find(kr, key_id_text);
    if (!k) {
        hb_seterr(errstr, errstr_size,
                  "sealed with key %s, which is not configured (" VAR_CURRENT ", " VAR_OLD ")",
                  shown_id(key_id_text));
        return -1;
    }
    buf = hb_malloc(total);
    hex_decode(hex, total, buf);
    ctlen = total - SEAL_OVERHEAD;
    pt = hb_malloc(ctlen + 1);
    r = gcm_open(k->key, buf + 1, aad, aadlen, buf + 1 + SEAL_NONCE_LEN, ctlen,
                 buf + 1 + SEAL_NONCE_LEN + ctlen, pt);
    free(buf);
    if (r != 0) {
        if (r > 0)
            hb_seterr(errstr, errstr_size,
                      "sealed value does not authenticate under key %s (wrong key, altered, "
                      "or copied from another row)",
                      k->id);
        else
            openssl_reason("AES-256-GCM open", errstr, errstr_size);
        goto fail;
    }
    pt[ctlen] = '\0';
    if (memchr(pt, '\0', ctlen)) {
        hb_seterr(errstr, errstr_size, "sealed value is malformed (plaintext contains a NUL byte)");
        goto fail;
    }
    *out = (char *)pt;
    if (outlen)
        *outlen = ctlen;
    return 0;
fail:
    OPENSSL_cleanse(pt, ctlen + 1);
    free(pt);
    return -1;
}

void hb_secret_free(char *p) {
    if (!p)
        return;
    OPENSSL_cleanse(p, strlen(p));
    free(p);
}

/* ---- AAD ---------------------------------------------------------------- */

/* Lowercase copy of a UUID in 8-4-4-4-12 form, or -1. */
static int uuid_lower(const char *in, char out[HB_UUID_LEN + 1]) {
    if (!in || strlen(in) != HB_UUID_LEN)
        return -1;
    for (int i = 0; i < HB_UUID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (in[i] != '-')
                return -1;
        } else if (hex_value(in[i]) < 0) {
            return -1;
        }
        out[i] = (char)tolower((unsigned char)in[i]);
    }
    out[HB_UUID_LEN] = '\0';
    return 0;
}

int hb_seal_aad_signing(char *out, size_t n, const char *sub_id, long long secret_id) {
    char id[HB_UUID_LEN + 1];
    int w;
    if (n > 0)
        out[0] = '\0';
    if (uuid_lower(sub_id, id) < 0)
        return -1;
    w = snprintf(out, n, "hookbridge:signing:%s:%lld", id, secret_id);
    return w < 0 || (size_t)w >= n ? -1 : 0;
}

int hb_seal_aad_auth(char *out, size_t n, const char *sub_id) {
    char id[HB_UUID_LEN + 1];
    int w;
    if (n > 0)
        out[0] = '\0';
    if (uuid_lower(sub_id, id) < 0)
        return -1;
    w = snprintf(out, n, "hookbridge:auth:%s", id);
    return w < 0 || (size_t)w >= n ? -1 : 0;
}
