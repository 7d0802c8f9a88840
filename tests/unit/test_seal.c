/* Sealed secrets: round trip, the stored layout, tampering, rows, rotation,
 * key parsing and ids, and that no message carries a key or a plaintext.
 *
 * The .c file is included (as h2o's tests do) to reach gcm_seal/gcm_open with
 * a fixed nonce for the GCM specification's known answers, without adding a
 * fixed-nonce entry point to the library's API. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../lib/hb_seal.c"

/* All-zero key, three spellings. Its id, computed independently:
 *   head -c 32 /dev/zero | cat <(printf 'hookbridge-secret-key-id:') - | openssl dgst -sha256
 *   SHA2-256(stdin)= 5ac1ccaf0517ead451c15afc476a0f2d77714937c9badf6628fc8f2749d91fb9 */
#define ZERO_B64 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
#define ZERO_B64_NOPAD "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
#define ZERO_HEX "0000000000000000000000000000000000000000000000000000000000000000"
#define ZERO_ID "5ac1ccaf0517ead4"

/* Two other keys (bytes 0x01..0x20 in hex; bytes 0xff.. in base64). */
#define KEY_A "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20"
#define KEY_B "//////////////////////////////////////////8="
#define KEY_A_MARK "0102030405" /* what a leaked key would show */

#define SUB1 "0b6c8a52-3f1e-4d2a-9c55-7e2f1a9d0c31"
#define SUB2 "9f0e4d3c-2b1a-4098-8776-655443322110"
#define PLAIN "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTAxMjM0NTY3"

static hb_keyring_t *ring(const char *cur, const char *old) {
    char err[256];
    hb_keyring_t *kr = hb_keyring_new(cur, old, err, sizeof(err));
    if (!kr)
        fail_msg("hb_keyring_new: %s", err);
    return kr;
}

static char *seal(const hb_keyring_t *kr, const char *aad, const char *pt) {
    char err[256], *hex = NULL;
    assert_int_equal(hb_seal_hex(kr, aad, pt, strlen(pt), &hex, err, sizeof(err)), 0);
    assert_non_null(hex);
    return hex;
}

static void aad_signing(char *out, const char *sub, long long id) {
    assert_int_equal(hb_seal_aad_signing(out, HB_SEAL_AAD_MAX, sub, id), 0);
}

/* Opening must fail; the reason must contain want and never the plaintext. */
static void open_fails(const hb_keyring_t *kr, const char *key_id_text, const char *aad,
                       const char *hex, const char *want) {
    char err[512], *out = (char *)"untouched";
    size_t len = 99;
    assert_int_equal(hb_unseal_hex(kr, key_id_text, aad, hex, &out, &len, err, sizeof(err)), -1);
    assert_null(out);
    assert_int_equal(len, 0);
    if (!strstr(err, want))
        fail_msg("error \"%s\" lacks \"%s\"", err, want);
    assert_null(strstr(err, PLAIN));
    assert_null(strstr(err, "c2VjcmV0"));
    assert_null(strstr(err, KEY_A_MARK));
}

static void round_trip(void **state) {
    hb_keyring_t *kr = ring(KEY_A, NULL);
    char aad[HB_SEAL_AAD_MAX], err[256], *hex, *out = NULL;
    size_t len = 0;
    aad_signing(aad, SUB1, 7);
    hex = seal(kr, aad, PLAIN);
    assert_int_equal(
        hb_unseal_hex(kr, hb_keyring_current_id(kr), aad, hex, &out, &len, err, sizeof(err)), 0);
    assert_string_equal(out, PLAIN);
    assert_int_equal(len, strlen(PLAIN));
    hb_secret_free(out);
    /* The empty value and one as libpq prints bytea ("\x..."), in capitals. */
    free(hex);
    hex = seal(kr, aad, "");
    assert_int_equal(
        hb_unseal_hex(kr, hb_keyring_current_id(kr), aad, hex, &out, NULL, err, sizeof(err)), 0);
    assert_string_equal(out, "");
    hb_secret_free(out);
    free(hex);
    hex = seal(kr, aad, PLAIN);
    {
        char *bytea = hb_malloc(strlen(hex) + 3);
        snprintf(bytea, strlen(hex) + 3, "\\x%s", hex);
        for (char *p = bytea + 2; *p; p++)
            *p = (char)toupper((unsigned char)*p);
        assert_int_equal(
            hb_unseal_hex(kr, hb_keyring_current_id(kr), aad, bytea, &out, &len, err, sizeof(err)),
            0);
        assert_string_equal(out, PLAIN);
        hb_secret_free(out);
        free(bytea);
    }
    free(hex);
    hb_keyring_free(kr);
    hb_secret_free(NULL);
}

static void hex_layout(void **state) {
    hb_keyring_t *kr = ring(KEY_A, NULL);
    char aad[HB_SEAL_AAD_MAX];
    const size_t lens[] = {0, 1, 16, 17, 44, 300};
    aad_signing(aad, SUB1, 1);
    for (size_t i = 0; i < HB_ARRAY_SIZE(lens); i++) {
        char *pt = hb_calloc(1, lens[i] + 1), *hex;
        memset(pt, 'x', lens[i]);
        hex = seal(kr, aad, pt);
        /* version | 12-byte nonce | ciphertext (same length as the plaintext) | 16-byte tag */
        assert_int_equal(strlen(hex), 2 * (1 + 12 + lens[i] + 16));
        assert_memory_equal(hex, "01", 2);
        assert_int_equal(strspn(hex, "0123456789abcdef"), strlen(hex));
        free(hex);
        free(pt);
    }
    hb_keyring_free(kr);
}

static void same_plaintext_seals_differently(void **state) {
    hb_keyring_t *kr = ring(KEY_A, NULL);
    char aad[HB_SEAL_AAD_MAX], *h1, *h2;
    aad_signing(aad, SUB1, 1);
    h1 = seal(kr, aad, PLAIN);
    h2 = seal(kr, aad, PLAIN);
    assert_string_not_equal(h1, h2);
    /* The nonces differ, not just the ciphertext. */
    assert_false(memcmp(h1 + 2, h2 + 2, 24) == 0);
    free(h1);
    free(h2);
    hb_keyring_free(kr);
}

static void any_flipped_bit_fails(void **state) {
    hb_keyring_t *kr = ring(KEY_A, NULL);
    char aad[HB_SEAL_AAD_MAX], *hex;
    const char *id = hb_keyring_current_id(kr);
    size_t nbytes;
    aad_signing(aad, SUB1, 1);
    hex = seal(kr, aad, "whsec_short");
    nbytes = strlen(hex) / 2;
    for (size_t b = 0; b < nbytes; b++)
        for (int bit = 0; bit < 8; bit++) {
            char *t = hb_strdup(hex);
            int v = hex_value(t[2 * b]) << 4 | hex_value(t[2 * b + 1]);
            v ^= 1 << bit;
            t[2 * b] = hexdigits[v >> 4];
            t[2 * b + 1] = hexdigits[v & 15];
            /* byte 0 is the format version; 1-12 nonce, then ciphertext, then tag */
            open_fails(kr, id, aad, t, b == 0 ? "format version" : "does not authenticate");
            free(t);
        }
    free(hex);
    hb_keyring_free(kr);
}

static void value_moved_to_another_row_fails(void **state) {
    hb_keyring_t *kr = ring(KEY_A, NULL);
    char aad[HB_SEAL_AAD_MAX], other[HB_SEAL_AAD_MAX], want[256], *hex;
    const char *id = hb_keyring_current_id(kr);
    aad_signing(aad, SUB1, 1);
    hex = seal(kr, aad, PLAIN);
    aad_signing(other, SUB2, 1); /* another subscription */
    open_fails(kr, id, other, hex, "copied from another row");
    aad_signing(other, SUB1, 2); /* another secret row of the same subscription */
    snprintf(want, sizeof(want),
             "sealed value does not authenticate under key %s (wrong key, "
             "altered, or copied from another row)",
             id);
    open_fails(kr, id, other, hex, want);
    assert_int_equal(hb_seal_aad_auth(other, sizeof(other), SUB1), 0); /* the auth column */
    open_fails(kr, id, other, hex, "does not authenticate");
    open_fails(kr, id, "", hex, "does not authenticate");
    free(hex);
    hb_keyring_free(kr);
}

static void old_key_opens_after_rotation(void **state) {
    hb_keyring_t *before = ring(KEY_A, NULL), *after = ring(KEY_B, KEY_A);
    char aad[HB_SEAL_AAD_MAX], err[512], id_a[HB_SEAL_KEY_ID_LEN + 1], *v1, *v2, *out = NULL;
    aad_signing(aad, SUB1, 3);
    snprintf(id_a, sizeof(id_a), "%s", hb_keyring_current_id(before));
    v1 = seal(before, aad, PLAIN);

    /* After rotation: A is old, B current; A's values still open. */
    assert_string_not_equal(hb_keyring_current_id(after), id_a);
    assert_int_equal(hb_keyring_has(after, id_a), 1);
    assert_int_equal(hb_keyring_has(after, hb_keyring_current_id(after)), 1);
    assert_int_equal(hb_keyring_count(after), 2);
    assert_string_equal(hb_keyring_id(after, 1), id_a);
    assert_null(hb_keyring_id(after, 2));
    assert_int_equal(hb_unseal_hex(after, id_a, aad, v1, &out, NULL, err, sizeof(err)), 0);
    assert_string_equal(out, PLAIN);
    hb_secret_free(out);

    /* New seals use B: they open under B's id only, and not with the old ring. */
    v2 = seal(after, aad, PLAIN);
    assert_int_equal(
        hb_unseal_hex(after, hb_keyring_current_id(after), aad, v2, &out, NULL, err, sizeof(err)),
        0);
    hb_secret_free(out);
    open_fails(after, id_a, aad, v2, "does not authenticate");
    open_fails(before, hb_keyring_current_id(after), aad, v2, hb_keyring_current_id(after));
    free(v1);
    free(v2);
    hb_keyring_free(before);
    hb_keyring_free(after);
}

static void unknown_key_id_is_named(void **state) {
    hb_keyring_t *kr = ring(KEY_A, NULL);
    char aad[HB_SEAL_AAD_MAX], *hex;
    aad_signing(aad, SUB1, 1);
    hex = seal(kr, aad, PLAIN);
    open_fails(kr, "0123456789abcdef", aad, hex,
               "sealed with key 0123456789abcdef, which is not configured "
               "(HOOKBRIDGE_SECRET_KEY, HOOKBRIDGE_SECRET_KEYS_OLD)");
    open_fails(kr, NULL, aad, hex, "sealed with key (none), which is not configured");
    open_fails(kr, "x'; DROP", aad, hex, "sealed with key (not a key id)");
    free(hex);
    hb_keyring_free(kr);
}

static void malformed_values(void **state) {
    hb_keyring_t *kr = ring(KEY_A, NULL);
    const char *id = hb_keyring_current_id(kr);
    char aad[HB_SEAL_AAD_MAX], *hex, *t;
    aad_signing(aad, SUB1, 1);
    open_fails(kr, id, aad, "", "sealed value is malformed (0 bytes");
    open_fails(kr, id, aad, "01abc", "sealed value is malformed (odd number of hex digits)");
    open_fails(kr, id, aad, "01zz", "sealed value is malformed (not hex)");
    hex = seal(kr, aad, PLAIN);
    t = hb_strdup(hex);
    t[strlen(t) - 2] = '\0'; /* one byte short of a tag: still "authenticate", not a crash */
    open_fails(kr, id, aad, t, "does not authenticate");
    t[2 * 28] = '\0'; /* shorter than version + nonce + tag */
    open_fails(kr, id, aad, t, "malformed (28 bytes; a sealed value has 29 to");
    free(t);
    hex[1] = '2';
    open_fails(kr, id, aad, hex, "malformed (format version 2, this program reads 1)");
    free(hex);
    /* Authentic, but with a NUL inside: refused, as the callers use C strings. */
    {
        char err[256], *out = NULL;
        assert_int_equal(hb_seal_hex(kr, aad, "ab\0cd", 5, &hex, err, sizeof(err)), 0);
        assert_int_equal(hb_unseal_hex(kr, id, aad, hex, &out, NULL, err, sizeof(err)), -1);
        assert_null(out);
        assert_string_equal(err, "sealed value is malformed (plaintext contains a NUL byte)");
        free(hex);
    }
    hb_keyring_free(kr);
}

/* Key text refused by hb_keyring_new: the reason, and never the text. */
static void bad_key(const char *cur, const char *old, const char *want) {
    char err[512] = "";
    hb_keyring_t *kr = hb_keyring_new(cur, old, err, sizeof(err));
    if (kr)
        fail_msg("accepted %s / %s", cur ? cur : "(null)", old ? old : "(null)");
    if (strcmp(err, want))
        fail_msg("got \"%s\", want \"%s\"", err, want);
    if (cur && strlen(cur) >= 6)
        assert_null(strstr(err, cur));
    if (old && strlen(old) >= 6)
        assert_null(strstr(err, old));
    assert_null(strstr(err, KEY_A_MARK));
}

static void key_parsing_errors(void **state) {
    static const char key_a[] = KEY_A;
    bad_key(NULL, NULL, "HOOKBRIDGE_SECRET_KEY: empty (want 32 bytes as base64, or 64 hex digits)");
    bad_key("", NULL, "HOOKBRIDGE_SECRET_KEY: empty (want 32 bytes as base64, or 64 hex digits)");
    bad_key(" \n", NULL,
            "HOOKBRIDGE_SECRET_KEY: empty (want 32 bytes as base64, or 64 hex digits)");
    /* base64 of 31 and 33 bytes */
    bad_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", NULL,
            "HOOKBRIDGE_SECRET_KEY: 31 bytes, want 32");
    bad_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+", NULL,
            "HOOKBRIDGE_SECRET_KEY: 33 bytes, want 32");
    /* only hex digits: read as hex (unless 43 long, unpadded base64 of 32 bytes) */
    bad_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", NULL,
            "HOOKBRIDGE_SECRET_KEY: 44 hex digits, want 64");
    bad_key("c2hvcnQ=", NULL, "HOOKBRIDGE_SECRET_KEY: 5 bytes, want 32");
    /* hex of 31 bytes, 33 bytes, an odd count */
    bad_key(&key_a[2], NULL, "HOOKBRIDGE_SECRET_KEY: 62 hex digits, want 64");
    bad_key(KEY_A "21", NULL, "HOOKBRIDGE_SECRET_KEY: 66 hex digits, want 64");
    bad_key(&key_a[1], NULL, "HOOKBRIDGE_SECRET_KEY: 63 hex digits, want 64");
    /* garbage: not the alphabet, url-safe base64, two keys where one belongs */
    bad_key("correct horse battery staple!", NULL,
            "HOOKBRIDGE_SECRET_KEY: neither base64 nor hex (want 32 bytes as base64, or 64 hex "
            "digits)");
    bad_key("_____________________________________________8", NULL,
            "HOOKBRIDGE_SECRET_KEY: neither base64 nor hex (want 32 bytes as base64, or 64 hex "
            "digits)");
    bad_key(KEY_A "," ZERO_HEX, NULL,
            "HOOKBRIDGE_SECRET_KEY: neither base64 nor hex (want 32 bytes as base64, or 64 hex "
            "digits)");
    /* old keys are numbered from 1 */
    bad_key(KEY_A, ZERO_HEX ", c2hvcnQ=", "key 2 of HOOKBRIDGE_SECRET_KEYS_OLD: 5 bytes, want 32");
    bad_key(KEY_A, "\tjunk!",
            "key 1 of HOOKBRIDGE_SECRET_KEYS_OLD: neither base64 nor hex (want "
            "32 bytes as base64, or 64 hex digits)");
    bad_key(KEY_A, KEY_B " " KEY_A "00",
            "key 2 of HOOKBRIDGE_SECRET_KEYS_OLD: 66 hex digits, want 64");
}

static void key_forms_and_ids(void **state) {
    const char *forms[] = {ZERO_B64, ZERO_B64_NOPAD, ZERO_HEX, "  " ZERO_B64 "\n"};
    char upper[65];
    for (size_t i = 0; i < HB_ARRAY_SIZE(forms); i++) {
        hb_keyring_t *kr = ring(forms[i], NULL);
        assert_string_equal(hb_keyring_current_id(kr), ZERO_ID);
        hb_keyring_free(kr);
    }
    for (size_t i = 0; i < 64; i++)
        upper[i] = (char)toupper((unsigned char)KEY_A[i]);
    upper[64] = '\0';
    {
        hb_keyring_t *a = ring(KEY_A, NULL), *b = ring(upper, NULL), *c = ring(KEY_B, NULL);
        assert_string_equal(hb_keyring_current_id(a), hb_keyring_current_id(b));
        assert_string_not_equal(hb_keyring_current_id(a), hb_keyring_current_id(c));
        assert_int_equal(strlen(hb_keyring_current_id(c)), 16);
        assert_int_equal(strspn(hb_keyring_current_id(c), "0123456789abcdef"), 16);
        assert_int_equal(hb_keyring_has(a, ZERO_ID), 0);
        assert_int_equal(hb_keyring_has(a, NULL), 0);
        hb_keyring_free(a);
        hb_keyring_free(b);
        hb_keyring_free(c);
    }
    /* The same key twice, in any spelling, is one key; separators are free. */
    {
        hb_keyring_t *kr =
            ring(ZERO_HEX, " ," ZERO_B64 ",\n" ZERO_B64_NOPAD " " KEY_A ",, " KEY_A " ");
        assert_int_equal(hb_keyring_count(kr), 2);
        assert_string_equal(hb_keyring_id(kr, 0), ZERO_ID);
        hb_keyring_free(kr);
        kr = ring(KEY_A, " , ");
        assert_int_equal(hb_keyring_count(kr), 1);
        hb_keyring_free(kr);
    }
}

static void generated_keys(void **state) {
    char k1[HB_SEAL_KEY_B64_LEN + 1], k2[HB_SEAL_KEY_B64_LEN + 1], small[44], err[256];
    hb_keyring_t *kr;
    assert_int_equal(hb_keyring_generate_key(k1, sizeof(k1), err, sizeof(err)), 0);
    assert_int_equal(hb_keyring_generate_key(k2, sizeof(k2), err, sizeof(err)), 0);
    assert_int_equal(strlen(k1), 44);
    assert_int_equal(k1[43], '=');
    assert_string_not_equal(k1, k2);
    kr = ring(k1, k2); /* a generated key is a valid key */
    assert_int_equal(hb_keyring_count(kr), 2);
    hb_keyring_free(kr);
    assert_int_equal(hb_keyring_generate_key(small, sizeof(small), err, sizeof(err)), -1);
}

static void aad_strings(void **state) {
    char out[HB_SEAL_AAD_MAX], tiny[20];
    assert_int_equal(hb_seal_aad_signing(out, sizeof(out), "0B6C8A52-3F1E-4D2A-9C55-7E2F1A9D0C31",
                                         9007199254740993LL),
                     0);
    assert_string_equal(out,
                        "hookbridge:signing:0b6c8a52-3f1e-4d2a-9c55-7e2f1a9d0c31:9007199254740993");
    assert_int_equal(hb_seal_aad_auth(out, sizeof(out), SUB2), 0);
    assert_string_equal(out, "hookbridge:auth:" SUB2);
    assert_int_equal(hb_seal_aad_auth(out, sizeof(out), "0b6c8a523f1e4d2a9c557e2f1a9d0c31"), -1);
    assert_int_equal(hb_seal_aad_auth(out, sizeof(out), "{" SUB1 "}"), -1);
    assert_int_equal(hb_seal_aad_signing(out, sizeof(out), "", 1), -1);
    assert_int_equal(hb_seal_aad_signing(out, sizeof(out), NULL, 1), -1);
    assert_int_equal(hb_seal_aad_auth(tiny, sizeof(tiny), SUB1), -1);
    assert_int_equal(hb_seal_aad_signing(out, HB_SEAL_AAD_MAX, SUB1, -9223372036854775807LL - 1),
                     0);
}

/* AES-256-GCM known answers from the GCM specification (McGrew & Viega),
 * test cases 13, 14 and 16, through the same internal functions hb_seal_hex
 * and hb_unseal_hex use (with the spec's nonce instead of a random one). */
static void gcm_known_answers(void **state) {
    static const struct {
        const char *key, *iv, *pt, *aad, *ct, *tag;
    } kat[] = {
        {ZERO_HEX, "000000000000000000000000", "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"},
        {ZERO_HEX, "000000000000000000000000", "00000000000000000000000000000000", "",
         "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"},
        {"feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
         "cafebabefacedbaddecaf888",
         "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
         "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
         "feedfacedeadbeeffeedfacedeadbeefabaddad2",
         "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
         "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
         "76fc6ece0f4e1768cddf8853bb2d551b"},
    };
    for (size_t i = 0; i < HB_ARRAY_SIZE(kat); i++) {
        uint8_t key[32], iv[12], pt[64], aad[32], ct[64], tag[16], back[65];
        char ct_hex[129], tag_hex[33];
        size_t ptlen = strlen(kat[i].pt) / 2, aadlen = strlen(kat[i].aad) / 2;
        hex_decode(kat[i].key, 32, key);
        hex_decode(kat[i].iv, 12, iv);
        hex_decode(kat[i].pt, ptlen, pt);
        hex_decode(kat[i].aad, aadlen, aad);
        assert_int_equal(gcm_seal(key, iv, aad, aadlen, pt, ptlen, ct, tag), 0);
        hex_encode(ct, ptlen, ct_hex);
        hex_encode(tag, 16, tag_hex);
        assert_string_equal(ct_hex, kat[i].ct);
        assert_string_equal(tag_hex, kat[i].tag);
        assert_int_equal(gcm_open(key, iv, aad, aadlen, ct, ptlen, tag, back), 0);
        assert_memory_equal(back, pt, ptlen);
        tag[15] ^= 0x80;
        assert_int_equal(gcm_open(key, iv, aad, aadlen, ct, ptlen, tag, back), 1);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip),
        cmocka_unit_test(hex_layout),
        cmocka_unit_test(same_plaintext_seals_differently),
        cmocka_unit_test(any_flipped_bit_fails),
        cmocka_unit_test(value_moved_to_another_row_fails),
        cmocka_unit_test(old_key_opens_after_rotation),
        cmocka_unit_test(unknown_key_id_is_named),
        cmocka_unit_test(malformed_values),
        cmocka_unit_test(key_parsing_errors),
        cmocka_unit_test(key_forms_and_ids),
        cmocka_unit_test(generated_keys),
        cmocka_unit_test(aad_strings),
        cmocka_unit_test(gcm_known_answers),
    };
    return cmocka_run_group_tests_name("seal", tests, NULL, NULL);
}
