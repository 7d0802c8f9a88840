/* The consumed messages' decoder: writer schemas from a directory (sorted,
 * only *.avsc, a bad one named), the built-in history, and the answers for the
 * Schema Registry framing without a registry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <unistd.h>

#include "hb_decoder.h"
#include "hb_schemas.h"

static void write_file(const char *dir, const char *name, const char *text) {
    char path[512];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* The reader schema with one optional field more (a newer producer's). */
static char *newer_schema(void) {
    json_t *s = json_loads(hb_schema_identity_event, 0, NULL);
    char *out;
    assert_non_null(s);
    (void)json_array_append_new(
        json_object_get(s, "fields"),
        json_pack("{s:s,s:[s,s],s:n}", "name", "riskScore", "type", "null", "long", "default"));
    out = json_dumps(s, JSON_COMPACT);
    json_decref(s);
    return out;
}

static void *encode_with(const char *schema, size_t *len) {
    char err[256];
    hb_codec_t *c = hb_codec_new(schema, err, sizeof(err));
    json_t *ev = json_pack("{s:s,s:s,s:s,s:i}", "uuid", "u1", "published", "p", "eventType",
                           "user.session.start", "riskScore", 5);
    void *buf = NULL;
    assert_non_null(c);
    assert_int_equal(hb_codec_encode(c, ev, &buf, len, err, sizeof(err)), 0);
    json_decref(ev);
    hb_codec_free(c);
    return buf;
}

static void directory_of_writer_schemas(void **state) {
    char dir[] = "/tmp/hb-test-decoder-XXXXXX", err[512];
    char *newer = newer_schema();
    hb_config_t cfg;
    hb_decoder_t *d;
    json_t *out = NULL;
    int64_t wait_ms = -1;
    size_t len = 0;
    void *buf = encode_with(newer, &len);
    (void)state;
    assert_non_null(mkdtemp(dir));
    write_file(dir, "v2.avsc", newer);
    write_file(dir, "README.txt", "not a schema, not read");
    memset(&cfg, 0, sizeof(cfg));

    /* without the directory: poison, and it says which fingerprint */
    d = hb_decoder_new(&cfg, hb_schema_identity_event, err, sizeof(err));
    assert_non_null(d);
    assert_int_equal(hb_decoder_decode(d, buf, len, &out, &wait_ms, err, sizeof(err)),
                     HB_DECODE_POISON);
    assert_non_null(strstr(err, "unknown writer schema fingerprint"));
    assert_null(hb_decoder_unready(d, err, sizeof(err)));
    hb_decoder_free(d);

    cfg.writer_schemas_dir = dir;
    d = hb_decoder_new(&cfg, hb_schema_identity_event, err, sizeof(err));
    assert_non_null(d);
    assert_int_equal(hb_decoder_decode(d, buf, len, &out, &wait_ms, err, sizeof(err)),
                     HB_DECODE_OK);
    assert_string_equal(json_string_value(json_object_get(out, "uuid")), "u1");
    assert_null(json_object_get(out, "riskScore"));
    json_decref(out);
    /* the registry framing without a registry is poison that says what to set */
    assert_int_equal(
        hb_decoder_decode(d, "\x00\x00\x00\x00\x2a\x02", 6, &out, &wait_ms, err, sizeof(err)),
        HB_DECODE_POISON);
    assert_non_null(strstr(err, "schema id 42, and no schema registry is configured"));
    hb_decoder_free(d);

    /* a schema that does not resolve stops the start, naming the file */
    write_file(dir, "w0.avsc",
               "{\"type\":\"record\",\"name\":\"IdentityEvent\",\"namespace\":"
               "\"hookbridge\",\"fields\":[{\"name\":\"uuid\",\"type\":\"int\"}]}");
    assert_null(hb_decoder_new(&cfg, hb_schema_identity_event, err, sizeof(err)));
    assert_non_null(strstr(err, "HOOKBRIDGE_WRITER_SCHEMAS_DIR: "));
    assert_non_null(strstr(err, "/w0.avsc: "));
    cfg.writer_schemas_dir = "/nonexistent/hb-writer-schemas";
    assert_null(hb_decoder_new(&cfg, hb_schema_identity_event, err, sizeof(err)));
    assert_non_null(strstr(err, "No such file or directory"));

    {
        char path[512];
        snprintf(path, sizeof(path), "%s/w0.avsc", dir);
        unlink(path);
        snprintf(path, sizeof(path), "%s/v2.avsc", dir);
        unlink(path);
        snprintf(path, sizeof(path), "%s/README.txt", dir);
        unlink(path);
        rmdir(dir);
    }
    free(buf);
    free(newer);
}

/* The dispatcher's decode (hb_decoder_decode_event): a message written with
 * the reader schema becomes text without a jansson value; one that resolves
 * from another writer keeps the value the general way made. Both: the text
 * hb_decoder_decode's value dumps to, the strings the dispatcher reads,
 * members indexed; poison stays poison with the same reason. */
/* A uuid or event type holding a NUL character is no string the dispatcher
 * reads: before, it read up to the NUL, so "user.session.start\u0000x" went
 * to the subscriptions to user.session.start. */
static void strings_holding_a_nul_are_not_read_up_to_it(void **state) {
    json_error_t jerr;
    json_t *j = json_loads("{\"uuid\":\"u1\\u0000x\",\"published\":\"p\","
                           "\"eventType\":\"user.session.start\\u0000x\"}",
                           JSON_ALLOW_NUL, &jerr);
    hb_event_t *ev;
    (void)state;
    assert_non_null(j);
    ev = hb_ev_from_json(j);
    assert_non_null(ev);
    assert_null(hb_ev_type(ev));
    assert_null(hb_ev_uuid(ev));
    assert_string_equal(ev->published, "p");
    hb_ev_unref(ev);
    json_decref(j);
}

static void decode_event_is_decode(void **state) {
    char dir[] = "/tmp/hb-test-decoder-XXXXXX", err[512], jerr[512];
    char *newer = newer_schema();
    const char *schemas[2] = {hb_schema_identity_event, newer};
    hb_config_t cfg;
    hb_decoder_t *d;
    (void)state;
    assert_non_null(mkdtemp(dir));
    write_file(dir, "v2.avsc", newer);
    memset(&cfg, 0, sizeof(cfg));
    cfg.writer_schemas_dir = dir;
    d = hb_decoder_new(&cfg, hb_schema_identity_event, err, sizeof(err));
    assert_non_null(d);
    for (int w = 0; w < 2; w++) {
        size_t len = 0;
        void *buf = encode_with(schemas[w], &len);
        json_t *out = NULL;
        hb_event_t *ev = NULL;
        int64_t wait_ms = -1;
        char *want;
        assert_int_equal(hb_decoder_decode(d, buf, len, &out, &wait_ms, jerr, sizeof(jerr)),
                         HB_DECODE_OK);
        assert_int_equal(hb_decoder_decode_event(d, buf, len, &ev, &wait_ms, err, sizeof(err)),
                         HB_DECODE_OK);
        want = json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(15));
        assert_string_equal(ev->text, want);
        assert_int_equal(ev->len, strlen(want));
        assert_int_equal(ev->n, json_object_size(out));
        assert_string_equal(hb_ev_uuid(ev), "u1");
        assert_string_equal(hb_ev_type(ev), "user.session.start");
        assert_string_equal(ev->published, "p");
        if (w == 0)
            assert_null(ev->json); /* made only when asked for */
        else
            assert_non_null(ev->json);
        assert_true(json_equal(hb_ev_json(ev), out));
        assert_int_equal(hb_ev_find(ev, "eventType"), 2);
        assert_int_equal(hb_ev_find(ev, "riskScore"), -1);
        free(want);
        json_decref(out);
        hb_ev_unref(ev);
        /* cut short: poison, the same reason, no event */
        assert_int_equal(hb_decoder_decode(d, buf, len - 1, &out, &wait_ms, jerr, sizeof(jerr)),
                         HB_DECODE_POISON);
        assert_int_equal(hb_decoder_decode_event(d, buf, len - 1, &ev, &wait_ms, err, sizeof(err)),
                         HB_DECODE_POISON);
        assert_null(ev);
        assert_string_equal(err, jerr);
        free(buf);
    }
    hb_decoder_free(d);
    {
        char path[512];
        snprintf(path, sizeof(path), "%s/v2.avsc", dir);
        unlink(path);
        rmdir(dir);
    }
    free(newer);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(directory_of_writer_schemas),
        cmocka_unit_test(strings_holding_a_nul_are_not_read_up_to_it),
        cmocka_unit_test(decode_event_is_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
