/* Standard Webhooks signing: known answers, rotation, verification, base64, ids.
 * Expected signatures are computed here with OpenSSL's one-shot HMAC() and
 * EVP_EncodeBlock, independently of the code under test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "hb_sign.h"

/* The Standard Webhooks specification's example. */
#define SPEC_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define SPEC_ID "msg_p5jXN8AQM9LWM0D4loKWxJek"
#define SPEC_TS 1614265330
#define SPEC_BODY "{\"test\": 2432232314}"
#define SPEC_SIG "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

/* Independent reference: "v1," + base64(HMAC-SHA256(key, id.ts.body)). */
static void reference_sig(const hb_secret_t *s, const char *id, long long ts, const char *body,
                          char *out, size_t outsz) {
    char msg[512];
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    unsigned char b64[64];
    int n = snprintf(msg, sizeof(msg), "%s.%lld.%s", id, ts, body);
    assert_true(n > 0 && (size_t)n < sizeof(msg));
    assert_non_null(
        HMAC(EVP_sha256(), s->key, (int)s->key_len, (unsigned char *)msg, (size_t)n, mac, &maclen));
    assert_int_equal(maclen, 32);
    assert_int_equal(EVP_EncodeBlock(b64, mac, (int)maclen), 44);
    snprintf(out, outsz, "v1,%s", (char *)b64);
}

static hb_secret_t secret_of(const char *text) {
    hb_secret_t s;
    char err[128];
    assert_int_equal(hb_secret_parse(text, &s, err, sizeof(err)), 0);
    return s;
}

/* Keyed contexts are reused per key (a cache of a few dozen slots per
 * thread): many keys taken in turn, more than there are slots so that keys
 * share slots and re-key them, each signature again over and over, every one
 * equal to the reference; keys of other lengths and a key that differs in
 * its last byte only must not be taken for one another. */
static void many_keys_in_turn_sign_like_the_reference(void **state) {
    enum { KEYS = 300 };
    static hb_secret_t keys[KEYS];
    char hdr[256], ref[128], id[32];
    for (int i = 0; i < KEYS; i++) {
        keys[i].key_len = 1 + (size_t)(i % HB_SECRET_MAX);
        for (size_t k = 0; k < keys[i].key_len; k++)
            keys[i].key[k] = (uint8_t)(i / HB_SECRET_MAX + 3 * k);
    }
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < KEYS; i++) {
            snprintf(id, sizeof(id), "msg_%d_%d", round, i);
            assert_int_equal(hb_sign_header(&keys[i], 1, 0, id, 1700000000 + i, SPEC_BODY,
                                            strlen(SPEC_BODY), hdr, sizeof(hdr)),
                             0);
            reference_sig(&keys[i], id, 1700000000 + i, SPEC_BODY, ref, sizeof(ref));
            assert_string_equal(hdr, ref);
        }
    }
    hb_secret_t a = keys[40], b = keys[40];
    b.key[b.key_len - 1] ^= 1;
    for (int i = 0; i < 4; i++) {
        hb_secret_t *s = i % 2 ? &b : &a;
        assert_int_equal(
            hb_sign_header(s, 1, 0, "d", 7, SPEC_BODY, strlen(SPEC_BODY), hdr, sizeof(hdr)), 0);
        reference_sig(s, "d", 7, SPEC_BODY, ref, sizeof(ref));
        assert_string_equal(hdr, ref);
    }
}

static void spec_example_signs_and_verifies(void **state) {
    hb_secret_t s = secret_of(SPEC_SECRET);
    char hdr[256], ref[128], err[128];
    assert_int_equal(s.key_len, 24);
    assert_int_equal(s.expires_ms, 0);
    assert_int_equal(
        hb_sign_header(&s, 1, 0, SPEC_ID, SPEC_TS, SPEC_BODY, strlen(SPEC_BODY), hdr, sizeof(hdr)),
        0);
    assert_string_equal(hdr, SPEC_SIG);
    reference_sig(&s, SPEC_ID, SPEC_TS, SPEC_BODY, ref, sizeof(ref));
    assert_string_equal(hdr, ref);
    assert_int_equal(hb_sign_verify(&s, SPEC_ID, "1614265330", SPEC_BODY, strlen(SPEC_BODY),
                                    SPEC_SIG, SPEC_TS + 10, 300, err, sizeof(err)),
                     0);
}

static void prefix_is_optional(void **state) {
    hb_secret_t a = secret_of(SPEC_SECRET);
    hb_secret_t b = secret_of(&SPEC_SECRET[strlen("whsec_")]);
    assert_int_equal(a.key_len, b.key_len);
    assert_memory_equal(a.key, b.key, a.key_len);
}

static void bad_secrets_are_rejected(void **state) {
    static const char *const bad[] = {
        "",
        "whsec_",
        "whsec_not base64!",
        "whsec_abc",
        "whsec_YWJj=",
        "whsec_YQ==YQ==",
        /* 65 bytes decoded: one more than HB_SECRET_MAX */
        ("whsec_"
         "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE"
         "="),
    };
    for (size_t i = 0; i < HB_ARRAY_SIZE(bad); i++) {
        hb_secret_t s;
        char err[128] = "";
        assert_int_equal(hb_secret_parse(bad[i], &s, err, sizeof(err)), -1);
        assert_true(err[0] != '\0');
        if (strlen(bad[i]) > strlen("whsec_"))
            assert_null(strstr(err, bad[i] + strlen("whsec_"))); /* never echoes it */
    }
}

static void two_secrets_give_two_signatures(void **state) {
    hb_secret_t s[2] = {secret_of(SPEC_SECRET),
                        secret_of("whsec_c2Vjb25kLXNlY3JldC1rZXktYnl0ZXMhIQ==")};
    char hdr[256], r0[128], r1[128], want[300], err[128];
    const char *body = "{\"data\":{\"events\":[]}}";
    s[0].expires_ms = 2000; /* old secret, still in its grace period at now=1000 */
    assert_int_equal(
        hb_sign_header(s, 2, 1000, "d-1", 1700000000, body, strlen(body), hdr, sizeof(hdr)), 0);
    reference_sig(&s[0], "d-1", 1700000000, body, r0, sizeof(r0));
    reference_sig(&s[1], "d-1", 1700000000, body, r1, sizeof(r1));
    snprintf(want, sizeof(want), "%s %s", r0, r1);
    assert_string_equal(hdr, want);
    /* a receiver holding either secret accepts */
    for (int i = 0; i < 2; i++)
        assert_int_equal(hb_sign_verify(&s[i], "d-1", "1700000000", body, strlen(body), hdr,
                                        1700000000, 300, err, sizeof(err)),
                         0);
}

static void expired_secret_is_omitted(void **state) {
    hb_secret_t s[2] = {secret_of(SPEC_SECRET),
                        secret_of("whsec_c2Vjb25kLXNlY3JldC1rZXktYnl0ZXMhIQ==")};
    char hdr[256], r1[128];
    s[0].expires_ms = 5000;
    assert_int_equal(hb_sign_header(s, 2, 5000, "d-2", 42, "x", 1, hdr, sizeof(hdr)), 0);
    reference_sig(&s[1], "d-2", 42, "x", r1, sizeof(r1));
    assert_string_equal(hdr, r1);
    /* nothing left to sign with */
    s[1].expires_ms = 1;
    assert_int_equal(hb_sign_header(s, 2, 5000, "d-2", 42, "x", 1, hdr, sizeof(hdr)), -1);
}

static void short_output_buffer_fails(void **state) {
    hb_secret_t s = secret_of(SPEC_SECRET);
    char hdr[40];
    assert_int_equal(
        hb_sign_header(&s, 1, 0, SPEC_ID, SPEC_TS, SPEC_BODY, strlen(SPEC_BODY), hdr, sizeof(hdr)),
        -1);
    assert_string_equal(hdr, "");
}

static void verify_accepts_any_one_of_several(void **state) {
    hb_secret_t s = secret_of(SPEC_SECRET);
    char err[128];
    static const char *const headers[] = {
        "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= " SPEC_SIG,
        SPEC_SIG " v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "v1a,whatever " SPEC_SIG,
        "v2,zzz   " SPEC_SIG "  ",
    };
    for (size_t i = 0; i < HB_ARRAY_SIZE(headers); i++)
        assert_int_equal(hb_sign_verify(&s, SPEC_ID, "1614265330", SPEC_BODY, strlen(SPEC_BODY),
                                        headers[i], SPEC_TS, 300, err, sizeof(err)),
                         0);
}

static void verify_rejects_with_reason(void **state) {
    hb_secret_t s = secret_of(SPEC_SECRET);
    hb_secret_t other = secret_of("whsec_c2Vjb25kLXNlY3JldC1rZXktYnl0ZXMhIQ==");
    const char *tampered = "{\"test\": 2432232315}";
    char err[128];
    struct {
        const hb_secret_t *secret;
        const char *id, *ts, *body, *sig;
        int64_t now;
        const char *reason;
    } cases[] = {
        {&s, SPEC_ID, "1614265330", tampered, SPEC_SIG, SPEC_TS, "no matching signature"},
        {&s, "msg_other", "1614265330", SPEC_BODY, SPEC_SIG, SPEC_TS, "no matching signature"},
        {&s, SPEC_ID, "1614265331", SPEC_BODY, SPEC_SIG, SPEC_TS, "no matching signature"},
        {&other, SPEC_ID, "1614265330", SPEC_BODY, SPEC_SIG, SPEC_TS, "no matching signature"},
        {&s, SPEC_ID, "1614265330", SPEC_BODY, "v1,g0hM9SsE+OTPJTGt", SPEC_TS,
         "no matching signature"},
        {&s, SPEC_ID, "1614265330", SPEC_BODY,
         "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", SPEC_TS, "no matching signature"},
        {&s, SPEC_ID, "1614265330", SPEC_BODY, SPEC_SIG, SPEC_TS + 301, "timestamp too old"},
        {&s, SPEC_ID, "1614265330", SPEC_BODY, SPEC_SIG, SPEC_TS - 301, "timestamp too new"},
        {&s, SPEC_ID, "16142653x0", SPEC_BODY, SPEC_SIG, SPEC_TS, "malformed timestamp"},
        {&s, SPEC_ID, " 1614265330", SPEC_BODY, SPEC_SIG, SPEC_TS, "malformed timestamp"},
        {&s, SPEC_ID, "", SPEC_BODY, SPEC_SIG, SPEC_TS, "malformed timestamp"},
        {&s, SPEC_ID, NULL, SPEC_BODY, SPEC_SIG, SPEC_TS, "malformed timestamp"},
        {&s, SPEC_ID, "1614265330", SPEC_BODY, "", SPEC_TS, "missing signature"},
        {&s, NULL, "1614265330", SPEC_BODY, SPEC_SIG, SPEC_TS, "missing webhook-id"},
    };
    for (size_t i = 0; i < HB_ARRAY_SIZE(cases); i++) {
        err[0] = '\0';
        assert_int_equal(hb_sign_verify(cases[i].secret, cases[i].id, cases[i].ts, cases[i].body,
                                        strlen(cases[i].body), cases[i].sig, cases[i].now, 300, err,
                                        sizeof(err)),
                         -1);
        assert_string_equal(err, cases[i].reason);
    }
    /* the tolerance edge is inclusive */
    assert_int_equal(hb_sign_verify(&s, SPEC_ID, "1614265330", SPEC_BODY, strlen(SPEC_BODY),
                                    SPEC_SIG, SPEC_TS + 300, 300, err, sizeof(err)),
                     0);
}

static void base64_round_trips(void **state) {
    uint8_t in[300], out[300];
    char enc[420];
    unsigned char ref[420];
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (uint8_t)(i * 7 + 3);
    for (size_t len = 0; len < sizeof(in); len++) {
        size_t n = hb_base64_encode(in, len, enc, sizeof(enc)), got = 0;
        assert_int_equal(n, 4 * ((len + 2) / 3));
        assert_int_equal(EVP_EncodeBlock(ref, in, (int)len), (int)n);
        assert_string_equal(enc, (char *)ref);
        assert_int_equal(hb_base64_decode(enc, out, sizeof(out), &got), 0);
        assert_int_equal(got, len);
        assert_memory_equal(in, out, len);
    }
    /* RFC 4648 test vectors */
    static const char *const rfc[][2] = {{"", ""},
                                         {"f", "Zg=="},
                                         {"fo", "Zm8="},
                                         {"foo", "Zm9v"},
                                         {"foob", "Zm9vYg=="},
                                         {"fooba", "Zm9vYmE="},
                                         {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < HB_ARRAY_SIZE(rfc); i++) {
        hb_base64_encode(rfc[i][0], strlen(rfc[i][0]), enc, sizeof(enc));
        assert_string_equal(enc, rfc[i][1]);
    }
    /* too small an output buffer */
    assert_int_equal(hb_base64_encode("foobar", 6, enc, 8), 0);
    assert_int_equal(hb_base64_decode("Zm9vYmFy", out, 5, &(size_t){0}), -1);
    /* malformed input */
    static const char *const bad[] = {"Zm9", "Zm9v!", "Z===", "Zg==Zg==", "Zm 9v", "Zg=a"};
    for (size_t i = 0; i < HB_ARRAY_SIZE(bad); i++)
        assert_int_equal(hb_base64_decode(bad[i], out, sizeof(out), &(size_t){0}), -1);
}

static int is_uuid_shape(const char *u) {
    if (strlen(u) != HB_UUID_LEN)
        return 0;
    for (int i = 0; i < HB_UUID_LEN; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? u[i] != '-' : !strchr("0123456789abcdef", u[i]))
            return 0;
    }
    return strchr("89ab", u[19]) != NULL; /* RFC 4122 variant */
}

static void random_uuids_are_v4_and_distinct(void **state) {
    char a[HB_UUID_LEN + 1], b[HB_UUID_LEN + 1];
    assert_int_equal(hb_uuid_random(a), 0);
    assert_int_equal(hb_uuid_random(b), 0);
    assert_true(is_uuid_shape(a));
    assert_int_equal(a[14], '4');
    assert_string_not_equal(a, b);
}

static void derived_uuids_are_stable_v8(void **state) {
    const char *p1[] = {"evt-123", "sub-456"};
    const char *p2[] = {"evt-123", "sub-457"};
    const char *p3[] = {"evt-123\nsub-456"}; /* same bytes after joining */
    char a[HB_UUID_LEN + 1], b[HB_UUID_LEN + 1], c[HB_UUID_LEN + 1];
    hb_uuid_derive(p1, 2, a);
    hb_uuid_derive(p1, 2, b);
    assert_string_equal(a, b);
    assert_true(is_uuid_shape(a));
    assert_int_equal(a[14], '8');
    /* pinned: SHA-256("evt-123\nsub-456"), first 16 bytes, v8 + variant bits */
    assert_string_equal(a, "b6c9c97e-6a55-82e2-8fa6-d7f7efbd5b0a");
    hb_uuid_derive(p2, 2, c);
    assert_string_not_equal(a, c);
    hb_uuid_derive(p3, 1, c);
    assert_string_equal(a, c);
}

static void secret_equal_compares_whole_values(void **state) {
    (void)state;
    assert_true(hb_secret_equal("Bearer abc", "Bearer abc"));
    assert_false(hb_secret_equal("Bearer abd", "Bearer abc"));
    assert_false(hb_secret_equal("Bearer ab", "Bearer abc"));
    assert_false(hb_secret_equal("Bearer abcd", "Bearer abc"));
    assert_false(hb_secret_equal("", "Bearer abc"));
    assert_false(hb_secret_equal(NULL, "Bearer abc"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(spec_example_signs_and_verifies),
        cmocka_unit_test(many_keys_in_turn_sign_like_the_reference),
        cmocka_unit_test(secret_equal_compares_whole_values),
        cmocka_unit_test(prefix_is_optional),
        cmocka_unit_test(bad_secrets_are_rejected),
        cmocka_unit_test(two_secrets_give_two_signatures),
        cmocka_unit_test(expired_secret_is_omitted),
        cmocka_unit_test(short_output_buffer_fails),
        cmocka_unit_test(verify_accepts_any_one_of_several),
        cmocka_unit_test(verify_rejects_with_reason),
        cmocka_unit_test(base64_round_trips),
        cmocka_unit_test(random_uuids_are_v4_and_distinct),
        cmocka_unit_test(derived_uuids_are_stable_v8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
