/*
 * Standard Webhooks signing, secrets, base64 and ids.
 *
 * A signature is HMAC-SHA256(key, "<id>.<timestamp>.<body>"), base64-encoded
 * and written "v1,<sig>"; during a secret rotation every unexpired secret
 * signs and the entries are joined by single spaces. The MAC is computed
 * incrementally (EVP_MAC) so the body is never copied. The HMAC-SHA256
 * template context is made once (pthread_once) and only copied; each thread
 * keeps its own keyed contexts (a small cache per thread, see hb_hmac_keyed),
 * so any thread may sign or verify concurrently. Verification compares decoded MACs with
 * CRYPTO_memcmp so timing reveals nothing about how much of a guess was right.
 *
 * Base64 is our own strict codec (standard alphabet, padding required on
 * decode, no whitespace) because OpenSSL's EVP_DecodeBlock accepts padding
 * loosely and reports lengths that include it.
 *
 * Ids: hb_uuid_random is a v4 UUID from RAND_bytes; hb_uuid_derive is a
 * v8-layout UUID over SHA-256 of its parts joined by '\n', so the same event
 * to the same subscription always gets the same delivery id.
 */
#include "hb_sign.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HB_MAC_LEN 32     /* SHA-256 */
#define HB_MAC_B64_LEN 44 /* 4 * ceil(32 / 3) */
#define HB_SECRET_PREFIX "whsec_"

/* ---- base64 ---------------------------------------------------------- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t hb_base64_encode(const void *in, size_t len, char *out, size_t outsz) {
    const uint8_t *p = in;
    size_t need = 4 * ((len + 2) / 3), o = 0, i;
    if (outsz == 0)
        return 0;
    if (need + 1 > outsz) {
        out[0] = '\0';
        return 0;
    }
    for (i = 0; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = b64_alphabet[(v >> 18) & 63];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        out[o++] = b64_alphabet[(v >> 18) & 63];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int b64_value(char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decodes exactly n characters (a multiple of 4, padded). */
static int b64_decode_n(const char *in, size_t n, uint8_t *out, size_t outsz, size_t *out_len) {
    size_t o = 0;
    if (n % 4 != 0)
        return -1;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            char c = in[i + k];
            if (c == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad) /* data after '=' */
                return -1;
            v[k] = b64_value(c);
            if (v[k] < 0)
                return -1;
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        size_t nbytes = 3 - (size_t)pad;
        if (o + nbytes > outsz)
            return -1;
        out[o++] = (uint8_t)(w >> 16);
        if (nbytes > 1)
            out[o++] = (uint8_t)(w >> 8);
        if (nbytes > 2)
            out[o++] = (uint8_t)w;
    }
    *out_len = o;
    return 0;
}

int hb_base64_decode(const char *in, uint8_t *out, size_t outsz, size_t *out_len) {
    return b64_decode_n(in, strlen(in), out, outsz, out_len);
}

/* ---- secrets ----------------------------------------------------------- */

int hb_secret_parse(const char *text, hb_secret_t *out, char *errstr, size_t errstr_size) {
    size_t len;
    memset(out, 0, sizeof(*out));
    if (!text || !*text) {
        hb_seterr(errstr, errstr_size, "empty secret");
        return -1;
    }
    if (!strncmp(text, HB_SECRET_PREFIX, strlen(HB_SECRET_PREFIX)))
        text += strlen(HB_SECRET_PREFIX);
    if (hb_base64_decode(text, out->key, sizeof(out->key), &len) != 0) {
        OPENSSL_cleanse(out, sizeof(*out));
        hb_seterr(errstr, errstr_size,
                  "secret is not whsec_ followed by base64 of at most %d bytes", HB_SECRET_MAX);
        return -1;
    }
    if (len == 0) {
        hb_seterr(errstr, errstr_size, "secret key is empty");
        return -1;
    }
    out->key_len = len;
    out->expires_ms = 0;
    return 0;
}

/* ---- HMAC ---------------------------------------------------------------- */

/* A context with the digest set, made once: every keyed context starts as a
 * copy of it (EVP_MAC_CTX_dup), since setting the digest by name looks it up
 * in the provider every time. The template itself is never used, so threads
 * may share it.
 *
 * Keyed contexts are kept per thread, in a direct-mapped cache of
 * HB_MAC_SLOTS slots chosen by the key's bytes: a signature with a key its
 * slot already holds only re-initialises the context (EVP_MAC_init with no
 * key starts again from the key's saved inner state), where a fresh context
 * per signature cost a copy of the template (some ten allocations) and the
 * key set-up (two SHA-256 blocks). A key that finds its slot taken re-keys
 * that slot's context (no allocation either). The cache holds copies of the
 * keys to recognise them; it is cleansed and freed when its thread exits. */
#define HB_MAC_SLOTS 64

typedef struct {
    EVP_MAC_CTX *ctx;
    size_t key_len; /* 0: ctx holds no usable key */
    uint8_t key[HB_SECRET_MAX];
} hb_mac_slot_t;

static EVP_MAC_CTX *hb_hmac_template;
static pthread_key_t hb_mac_cache_key;
static int hb_mac_cache_ok; /* hb_mac_cache_key was created */
static pthread_once_t hb_hmac_once = PTHREAD_ONCE_INIT;

static void hb_mac_cache_free(void *arg) {
    hb_mac_slot_t *slots = arg;
    for (int i = 0; i < HB_MAC_SLOTS; i++)
        EVP_MAC_CTX_free(slots[i].ctx);
    OPENSSL_cleanse(slots, HB_MAC_SLOTS * sizeof(*slots));
    free(slots);
}

static void hb_hmac_fetch(void) {
    EVP_MAC *alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
    char digest[] = "SHA256";
    OSSL_PARAM params[2];
    hb_mac_cache_ok = pthread_key_create(&hb_mac_cache_key, hb_mac_cache_free) == 0;
    if (!alg)
        return;
    hb_hmac_template = EVP_MAC_CTX_new(alg);
    EVP_MAC_free(alg); /* the context holds its own reference */
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0);
    params[1] = OSSL_PARAM_construct_end();
    if (hb_hmac_template && EVP_MAC_CTX_set_params(hb_hmac_template, params) != 1) {
        EVP_MAC_CTX_free(hb_hmac_template);
        hb_hmac_template = NULL;
    }
}

/* The calling thread's context keyed with secret, initialised for a new MAC;
 * NULL when out of memory or OpenSSL fails. */
static EVP_MAC_CTX *hb_hmac_keyed(const hb_secret_t *secret) {
    hb_mac_slot_t *slots, *s;
    uint32_t h = 2166136261u; /* FNV-1a of the key: its slot */
    if (!hb_mac_cache_ok)
        return NULL;
    slots = pthread_getspecific(hb_mac_cache_key);
    if (!slots) {
        slots = calloc(HB_MAC_SLOTS, sizeof(*slots));
        if (!slots)
            return NULL;
        if (pthread_setspecific(hb_mac_cache_key, slots) != 0) {
            free(slots);
            return NULL;
        }
    }
    for (size_t i = 0; i < secret->key_len; i++)
        h = (h ^ secret->key[i]) * 16777619u;
    s = &slots[h % HB_MAC_SLOTS];
    if (s->key_len == secret->key_len && CRYPTO_memcmp(s->key, secret->key, s->key_len) == 0 &&
        EVP_MAC_init(s->ctx, NULL, 0, NULL) == 1)
        return s->ctx;
    s->key_len = 0;
    if (!s->ctx && !(s->ctx = EVP_MAC_CTX_dup(hb_hmac_template)))
        return NULL;
    if (EVP_MAC_init(s->ctx, secret->key, secret->key_len, NULL) != 1)
        return NULL;
    memcpy(s->key, secret->key, secret->key_len);
    s->key_len = secret->key_len;
    return s->ctx;
}

/* mac = HMAC-SHA256(key, "<id>.<timestamp>.<body>"). */
static int hb_hmac_compute(const hb_secret_t *secret, const char *msg_id, const char *ts,
                           const void *body, size_t body_len, uint8_t mac[HB_MAC_LEN]) {
    EVP_MAC_CTX *ctx;
    size_t maclen = 0;

    pthread_once(&hb_hmac_once, hb_hmac_fetch);
    if (!hb_hmac_template || secret->key_len == 0 || secret->key_len > HB_SECRET_MAX)
        return -1;
    ctx = hb_hmac_keyed(secret);
    if (!ctx || EVP_MAC_update(ctx, (const unsigned char *)msg_id, strlen(msg_id)) != 1 ||
        EVP_MAC_update(ctx, (const unsigned char *)".", 1) != 1 ||
        EVP_MAC_update(ctx, (const unsigned char *)ts, strlen(ts)) != 1 ||
        EVP_MAC_update(ctx, (const unsigned char *)".", 1) != 1 ||
        (body_len && EVP_MAC_update(ctx, body, body_len) != 1) ||
        EVP_MAC_final(ctx, mac, &maclen, HB_MAC_LEN) != 1 || maclen != HB_MAC_LEN)
        return -1;
    return 0;
}

int hb_sign_header(const hb_secret_t *secrets, int secrets_cnt, int64_t now_ms, const char *msg_id,
                   int64_t timestamp_s, const void *body, size_t body_len, char *out,
                   size_t outsz) {
    char digits[24], *ts = digits + sizeof(digits);
    uint64_t left = timestamp_s < 0 ? (uint64_t)0 - (uint64_t)timestamp_s : (uint64_t)timestamp_s;
    size_t len = 0;
    int signed_cnt = 0;

    if (outsz == 0)
        return -1;
    out[0] = '\0';
    *--ts = '\0'; /* the decimal timestamp, as "%lld" writes it */
    do
        *--ts = (char)('0' + left % 10);
    while ((left /= 10) > 0);
    if (timestamp_s < 0)
        *--ts = '-';
    for (int i = 0; i < secrets_cnt; i++) {
        uint8_t mac[HB_MAC_LEN];
        char b64[HB_MAC_B64_LEN + 1];
        if (secrets[i].expires_ms != 0 && secrets[i].expires_ms <= now_ms)
            continue;
        if (hb_hmac_compute(&secrets[i], msg_id, ts, body, body_len, mac) != 0)
            return -1;
        hb_base64_encode(mac, sizeof(mac), b64, sizeof(b64));
        /* "v1," + sig, preceded by a space after the first entry */
        size_t need = (signed_cnt ? 1 : 0) + 3 + HB_MAC_B64_LEN;
        if (len + need + 1 > outsz) {
            out[0] = '\0';
            return -1;
        }
        if (signed_cnt)
            out[len++] = ' ';
        memcpy(out + len, "v1,", 3);
        memcpy(out + len + 3, b64, HB_MAC_B64_LEN);
        len += 3 + HB_MAC_B64_LEN;
        out[len] = '\0';
        signed_cnt++;
    }
    return signed_cnt > 0 ? 0 : -1;
}

/* Strict decimal seconds, optional leading '-'; no spaces or trailing bytes. */
static int parse_timestamp(const char *s, int64_t *out) {
    char *end = NULL;
    long long v;
    if (!s || !*s || (*s != '-' && (*s < '0' || *s > '9')))
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || *end != '\0')
        return -1;
    *out = (int64_t)v;
    return 0;
}

int hb_sign_verify(const hb_secret_t *secret, const char *msg_id, const char *timestamp,
                   const void *body, size_t body_len, const char *signature_header, int64_t now_s,
                   int64_t tolerance_s, char *errstr, size_t errstr_size) {
    uint8_t expected[HB_MAC_LEN];
    int64_t ts;
    int match = 0;

    if (!msg_id || !*msg_id) {
        hb_seterr(errstr, errstr_size, "missing webhook-id");
        return -1;
    }
    if (!signature_header || !*signature_header) {
        hb_seterr(errstr, errstr_size, "missing signature");
        return -1;
    }
    if (parse_timestamp(timestamp, &ts) != 0) {
        hb_seterr(errstr, errstr_size, "malformed timestamp");
        return -1;
    }
    if (ts < now_s - tolerance_s) {
        hb_seterr(errstr, errstr_size, "timestamp too old");
        return -1;
    }
    if (ts > now_s + tolerance_s) {
        hb_seterr(errstr, errstr_size, "timestamp too new");
        return -1;
    }
    if (hb_hmac_compute(secret, msg_id, timestamp, body, body_len, expected) != 0) {
        hb_seterr(errstr, errstr_size, "cannot compute HMAC-SHA256");
        return -1;
    }
    /* Every entry is checked (no early exit), so the time taken depends only
     * on the header's shape, not on which entry matched. */
    for (const char *p = signature_header; *p;) {
        const char *end;
        size_t n;
        while (*p == ' ')
            p++;
        end = p;
        while (*end && *end != ' ')
            end++;
        n = (size_t)(end - p);
        if (n > 3 && !memcmp(p, "v1,", 3)) {
            uint8_t got[HB_MAC_LEN + 3];
            size_t got_len = 0;
            if (b64_decode_n(p + 3, n - 3, got, sizeof(got), &got_len) == 0 &&
                got_len == HB_MAC_LEN && CRYPTO_memcmp(got, expected, HB_MAC_LEN) == 0)
                match = 1;
        }
        p = end;
    }
    OPENSSL_cleanse(expected, sizeof(expected));
    if (!match) {
        hb_seterr(errstr, errstr_size, "no matching signature");
        return -1;
    }
    return 0;
}

/* ---- ids ----------------------------------------------------------------- */

static void uuid_format(const uint8_t b[16], char out[HB_UUID_LEN + 1]) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

int hb_uuid_random(char out[HB_UUID_LEN + 1]) {
    uint8_t b[16];
    if (RAND_bytes(b, sizeof(b)) != 1) {
        out[0] = '\0';
        return -1;
    }
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    uuid_format(b, out);
    return 0;
}

/* SHA-256 fetched once: EVP_sha256() makes every EVP_DigestInit_ex look the
 * implementation up in the provider again (a delivery id is derived for
 * every delivery). Each thread keeps one digest context and initialises it
 * again for every id: a new context per id cost an allocation of the context
 * and of SHA-256's state, and their frees. */
static EVP_MD *hb_sha256;
static pthread_key_t hb_md_ctx_key;
static int hb_md_ctx_ok; /* hb_md_ctx_key was created */
static pthread_once_t hb_sha256_once = PTHREAD_ONCE_INIT;

static void hb_md_ctx_free(void *arg) {
    EVP_MD_CTX_free(arg);
}

static void hb_sha256_fetch(void) {
    hb_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    hb_md_ctx_ok = pthread_key_create(&hb_md_ctx_key, hb_md_ctx_free) == 0;
}

/* The calling thread's digest context (NULL when out of memory). */
static EVP_MD_CTX *hb_md_ctx(void) {
    EVP_MD_CTX *ctx;
    if (!hb_md_ctx_ok)
        return NULL;
    ctx = pthread_getspecific(hb_md_ctx_key);
    if (!ctx && (ctx = EVP_MD_CTX_new()) && pthread_setspecific(hb_md_ctx_key, ctx) != 0) {
        EVP_MD_CTX_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

void hb_uuid_derive(const char *const *parts, size_t nparts, char out[HB_UUID_LEN + 1]) {
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    pthread_once(&hb_sha256_once, hb_sha256_fetch);
    EVP_MD_CTX *ctx = hb_md_ctx();
    int ok = ctx && EVP_DigestInit_ex(ctx, hb_sha256 ? hb_sha256 : EVP_sha256(), NULL) == 1;
    for (size_t i = 0; ok && i < nparts; i++) {
        const char *p = parts[i] ? parts[i] : "";
        if (i > 0)
            ok = EVP_DigestUpdate(ctx, "\n", 1) == 1;
        if (ok)
            ok = EVP_DigestUpdate(ctx, p, strlen(p)) == 1;
    }
    ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen >= 16;
    if (!ok) {
        /* Only allocation failure gets here; hb_malloc aborts in that case
         * too, and a wrong delivery id would break de-duplication silently. */
        fprintf(stderr, "hookbridge: SHA-256 failed in hb_uuid_derive\n");
        abort();
    }
    md[6] = (uint8_t)((md[6] & 0x0f) | 0x80); /* version 8 */
    md[8] = (uint8_t)((md[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    uuid_format(md, out);
}

int hb_secret_equal(const char *got, const char *want) {
    /* Both through SHA-256 first: what is compared then has one length, so
     * neither the content nor the length of want shows in the time taken. */
    unsigned char g[32], w[32];
    int same;
    if (!got)
        return 0;
    if (!EVP_Digest(got, strlen(got), g, NULL, EVP_sha256(), NULL) ||
        !EVP_Digest(want, strlen(want), w, NULL, EVP_sha256(), NULL))
        return 0;
    same = CRYPTO_memcmp(g, w, sizeof(g)) == 0;
    OPENSSL_cleanse(g, sizeof(g));
    OPENSSL_cleanse(w, sizeof(w));
    return same;
}
