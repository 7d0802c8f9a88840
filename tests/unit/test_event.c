/* Identity events: the compiled-in catalogue, normalization (what is
 * required, what is filled in, what is rejected and how the error reads),
 * Kafka key selection and the accessors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <ctype.h>
#include <sys/wait.h>
#include <unistd.h>
#include <jansson.h>

#include "hb_codec.h"
#include "hb_event.h"
#include "hb_schemas.h"

#include "hb_generate.h"
#include "json_text.h"

/* ------------------------------------------------------------ catalogue */

static void catalogue_matches_the_embedded_file(void **state) {
    /* Count the non-comment lines independently of the code under test. */
    size_t lines = 0;
    (void)state;
    for (const char *p = hb_event_types_catalogue; *p;) {
        const char *nl = strchr(p, '\n');
        if (*p != '#' && *p != '\n')
            lines++;
        if (!nl)
            break;
        p = nl + 1;
    }
    assert_true(lines >= 20);
    assert_int_equal(hb_event_types_count(), lines);
    assert_string_equal(hb_event_type_at(0), "user.lifecycle.create");
    assert_null(hb_event_type_at(lines));
    for (size_t i = 0; i < lines; i++) {
        const char *t = hb_event_type_at(i);
        assert_non_null(t);
        assert_true(hb_event_type_known(t));
        for (const char *c = t; *c; c++) /* no description or whitespace left */
            assert_false(isspace((unsigned char)*c));
    }
}

static const struct {
    const char *type;
    int known;
} known_cases[] = {
    {"user.session.start", 1},
    {"user.lifecycle.create", 1},
    {"user.account.update_password", 1},
    {"application.user_membership.remove", 1},
    {"group.user_membership.add", 1},
    {"foo.bar", 0},
    {"", 0},
    {"user.session", 0},
    {"user.session.start ", 0},
    {"USER.SESSION.START", 0},
    {"# The event type catalogue: Okta System Log event types hookbridge knows.", 0},
    {"User created", 0},
};

static void catalogue_lookups(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof(known_cases) / sizeof(known_cases[0]); i++)
        if (hb_event_type_known(known_cases[i].type) != known_cases[i].known)
            fail_msg("\"%s\": expected known=%d", known_cases[i].type, known_cases[i].known);
    assert_false(hb_event_type_known(NULL));
}

/* ------------------------------------------------------------ normalization */

static const struct {
    const char *json;
    int allow_unknown;
    const char *error; /* NULL: accepted */
} norm_cases[] = {
    {"{\"eventType\":\"user.session.start\"}", 0, NULL},
    {"{\"eventType\":\"foo.bar\"}", 0, "eventType: \"foo.bar\" is not a known event type"},
    {"{\"eventType\":\"foo.bar\"}", 1, NULL},
    {"{}", 0, "eventType: missing"},
    {"{\"eventType\":\"\"}", 1, "eventType: missing"},
    {"{\"eventType\":null}", 0, "eventType: missing"},
    {"{\"eventType\":42}", 0, "eventType: expected a string"},
    {"[\"user.session.start\"]", 0, "event: expected a JSON object"},
    {"\"user.session.start\"", 0, "event: expected a JSON object"},
    {"{\"eventType\":\"user.session.start\",\"uuid\":17}", 0, "uuid: expected a string"},
    {"{\"eventType\":\"user.session.start\",\"uuid\":\"\"}", 0, "uuid: empty"},
    {"{\"eventType\":\"user.session.start\",\"published\":\"yesterday\"}", 0,
     "published: \"yesterday\" is not an RFC 3339 time (2024-05-01T12:00:00.000Z)"},
    {"{\"eventType\":\"user.session.start\",\"published\":\"2024-05-01T12:00:00Z\"}", 0, NULL},
    {"{\"eventType\":\"user.session.start\",\"published\":\"2024-05-01T12:00:00.123456+02:00\"}", 0,
     NULL},
    {"{\"eventType\":\"user.session.start\",\"published\":\"2024-05-01T12:00:00\"}", 0,
     "published: \"2024-05-01T12:00:00\" is not an RFC 3339 time (2024-05-01T12:00:00.000Z)"},
    {"{\"eventType\":\"user.session.start\",\"published\":\"2024-05-01T12:00:00Zjunk\"}", 0,
     "published: \"2024-05-01T12:00:00Zjunk\" is not an RFC 3339 time (2024-05-01T12:00:00.000Z)"},
    {"{\"eventType\":\"user.session.start\",\"published\":1714564800}", 0,
     "published: expected a string"},
    {"{\"eventType\":\"user.session.start\",\"severity\":\"WARN\"}", 0, NULL},
    {"{\"eventType\":\"user.session.start\",\"severity\":\"warn\"}", 0,
     "severity: \"warn\" is not one of DEBUG, INFO, WARN, ERROR"},
    {"{\"eventType\":\"user.session.start\",\"version\":1}", 0, "version: expected a string"},
};

static void normalize_table(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof(norm_cases) / sizeof(norm_cases[0]); i++) {
        json_t *ev = parse(norm_cases[i].json);
        char err[256] = "";
        int r = hb_event_normalize(ev, norm_cases[i].allow_unknown, err, sizeof(err));
        if (norm_cases[i].error == NULL && r != 0)
            fail_msg("case %zu rejected: %s", i, err);
        if (norm_cases[i].error && (r == 0 || strcmp(err, norm_cases[i].error)))
            fail_msg("case %zu:\nexpected %s\n     got %s", i, norm_cases[i].error,
                     r == 0 ? "(accepted)" : err);
        json_decref(ev);
    }
}

static int is_uuid_v4(const char *s) {
    if (strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!isxdigit((unsigned char)s[i]) || isupper((unsigned char)s[i])) {
            return 0;
        }
    }
    return s[14] == '4' && strchr("89ab", s[19]) != NULL;
}

static void normalize_fills_in_defaults(void **state) {
    json_t *a = parse("{\"eventType\":\"user.session.start\"}");
    json_t *b = parse("{\"eventType\":\"user.session.start\"}");
    char err[128], now[32];
    const char *published;
    (void)state;
    assert_int_equal(hb_event_normalize(a, 0, err, sizeof(err)), 0);
    assert_int_equal(hb_event_normalize(b, 0, err, sizeof(err)), 0);
    assert_true(is_uuid_v4(hb_event_uuid(a)));
    assert_true(is_uuid_v4(hb_event_uuid(b)));
    assert_string_not_equal(hb_event_uuid(a), hb_event_uuid(b));
    published = json_string_value(json_object_get(a, "published"));
    assert_non_null(published);
    assert_int_equal(strlen(published), 24); /* 2026-11-29T02:50:00.123Z */
    hb_format_time(hb_wall_ms(), now, sizeof(now));
    assert_memory_equal(published, now, 10); /* today (unless run exactly at midnight) */
    assert_string_equal(json_string_value(json_object_get(a, "version")), "0");
    assert_string_equal(json_string_value(json_object_get(a, "severity")), "INFO");
    /* normalizing twice changes nothing */
    {
        json_t *copy = json_deep_copy(a);
        assert_int_equal(hb_event_normalize(a, 0, err, sizeof(err)), 0);
        assert_true(json_equal(copy, a));
        json_decref(copy);
    }
    json_decref(a);
    json_decref(b);
}

/* The random bytes come from a pool refilled every 32 UUIDs: many in a row
 * are all v4 and all different, and a child process after a fork never
 * repeats what its parent makes next. */
static void normalize_uuids_are_unique(void **state) {
    json_t *seen = json_object();
    char err[128];
    int fds[2];
    pid_t pid;
    (void)state;
    for (int i = 0; i < 1000; i++) {
        json_t *ev = parse("{\"eventType\":\"user.session.start\"}");
        assert_int_equal(hb_event_normalize(ev, 0, err, sizeof(err)), 0);
        assert_true(is_uuid_v4(hb_event_uuid(ev)));
        assert_null(json_object_get(seen, hb_event_uuid(ev)));
        (void)json_object_set_new(seen, hb_event_uuid(ev), json_true());
        json_decref(ev);
    }
    assert_int_equal(pipe(fds), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* the child: its next UUID to the parent */
        json_t *ev = parse("{\"eventType\":\"user.session.start\"}");
        ssize_t w = -1;
        if (hb_event_normalize(ev, 0, err, sizeof(err)) == 0)
            w = write(fds[1], hb_event_uuid(ev), 36);
        _exit(w == 36 ? 0 : 1);
    }
    {
        char child[37] = "";
        int status = 0;
        json_t *ev = parse("{\"eventType\":\"user.session.start\"}");
        assert_int_equal(read(fds[0], child, 36), 36);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        assert_int_equal(hb_event_normalize(ev, 0, err, sizeof(err)), 0);
        assert_true(is_uuid_v4(child));
        assert_string_not_equal(child, hb_event_uuid(ev));
        assert_null(json_object_get(seen, child));
        json_decref(ev);
    }
    close(fds[0]);
    close(fds[1]);
    json_decref(seen);
}

static void normalize_keeps_given_values(void **state) {
    json_t *ev = parse("{\"eventType\":\"user.account.lock\",\"uuid\":\"my-id\","
                       "\"published\":\"2024-05-01T12:00:00.000Z\",\"version\":\"2\","
                       "\"severity\":\"WARN\",\"displayMessage\":\"x\",\"custom\":[1]}");
    json_t *want = json_deep_copy(ev);
    char err[128];
    (void)state;
    assert_int_equal(hb_event_normalize(ev, 0, err, sizeof(err)), 0);
    assert_true(json_equal(ev, want));
    assert_string_equal(hb_event_uuid(ev), "my-id");
    assert_string_equal(hb_event_type(ev), "user.account.lock");
    json_decref(ev);
    json_decref(want);
}

/* ------------------------------------------------------------ keys */

static const struct {
    const char *json, *key;
} key_cases[] = {
    {"{\"uuid\":\"U\",\"actor\":{\"id\":\"A\"},\"target\":[{\"id\":\"T\",\"type\":\"User\"}]}",
     "T"},
    {"{\"uuid\":\"U\",\"actor\":{\"id\":\"A\"},\"target\":[{\"id\":\"G\",\"type\":\"UserGroup\"},"
     "{\"id\":\"T1\",\"type\":\"User\"},{\"id\":\"T2\",\"type\":\"User\"}]}",
     "T1"},
    {"{\"uuid\":\"U\",\"actor\":{\"id\":\"A\"},\"target\":[{\"id\":\"G\",\"type\":\"UserGroup\"}]}",
     "A"},
    {"{\"uuid\":\"U\",\"actor\":{\"id\":\"A\"},\"target\":[{\"type\":\"User\"}]}", "A"},
    {"{\"uuid\":\"U\",\"actor\":{\"id\":\"A\"},\"target\":[{\"id\":\"\",\"type\":\"User\"}]}", "A"},
    {"{\"uuid\":\"U\",\"actor\":{\"id\":\"A\"},\"target\":[{\"id\":\"T\",\"type\":\"user\"}]}",
     "A"},
    {"{\"uuid\":\"U\",\"actor\":{\"id\":\"A\"},\"target\":[]}", "A"},
    {"{\"uuid\":\"U\",\"actor\":{\"id\":\"A\"},\"target\":{\"id\":\"T\",\"type\":\"User\"}}", "A"},
    {"{\"uuid\":\"U\",\"actor\":{\"type\":\"User\"}}", "U"},
    {"{\"uuid\":\"U\",\"actor\":{\"id\":7}}", "U"},
    {"{\"uuid\":\"U\"}", "U"},
    {"{}", NULL},
};

static void key_selection(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof(key_cases) / sizeof(key_cases[0]); i++) {
        json_t *ev = parse(key_cases[i].json);
        const char *key = hb_event_key(ev);
        if (key_cases[i].key ? !key || strcmp(key, key_cases[i].key) : key != NULL)
            fail_msg("case %zu: expected %s, got %s", i,
                     key_cases[i].key ? key_cases[i].key : "NULL", key ? key : "NULL");
        json_decref(ev);
    }
}

static void accessors(void **state) {
    json_t *ev = parse("{\"uuid\":\"U\",\"eventType\":\"user.session.end\"}");
    json_t *bad = parse("{\"uuid\":5,\"eventType\":[]}");
    (void)state;
    assert_string_equal(hb_event_uuid(ev), "U");
    assert_string_equal(hb_event_type(ev), "user.session.end");
    assert_null(hb_event_uuid(bad));
    assert_null(hb_event_type(bad));
    json_decref(ev);
    json_decref(bad);
}

/* ------------------------------------------------------------ generator */

static void generated_events_are_valid(void **state) {
    char err[256];
    hb_codec_t *c = hb_codec_new(hb_schema_identity_event, err, sizeof(err));
    hb_gen_t g, g2;
    json_t *seen = json_object();
    (void)state;
    assert_non_null(c);
    hb_gen_init(&g, 42);
    for (int i = 0; i < 2000; i++) {
        json_t *ev = hb_gen_event(&g), *back = NULL;
        void *buf = NULL;
        size_t len = 0;
        const char *key;
        if (hb_event_normalize(ev, 0, err, sizeof(err)) < 0)
            fail_msg("event %d: %s", i, err);
        if (hb_codec_encode(c, ev, &buf, &len, err, sizeof(err)) < 0)
            fail_msg("event %d: %s", i, err);
        assert_true(len > 200 && len < 1200); /* a few hundred bytes */
        assert_int_equal(hb_codec_decode(c, buf, len, &back, err, sizeof(err)), 0);
        assert_true(json_equal(ev, back));
        key = hb_event_key(ev);
        assert_non_null(key);
        assert_memory_equal(key, "00u", 3); /* always a user: the target's or the actor's */
        (void)json_object_set_new(seen, hb_event_type(ev), json_true());
        json_decref(back);
        json_decref(ev);
        free(buf);
    }
    assert_true(json_object_size(seen) == hb_event_types_count()); /* the whole catalogue */
    hb_gen_free(&g);
    /* deterministic for a seed (published aside) */
    hb_gen_init(&g, 7);
    hb_gen_init(&g2, 7);
    for (int i = 0; i < 10; i++) {
        json_t *a = hb_gen_event(&g), *b = hb_gen_event(&g2);
        (void)json_object_del(a, "published");
        (void)json_object_del(b, "published");
        assert_true(json_equal(a, b));
        json_decref(a);
        json_decref(b);
    }
    {
        /* an event outlives its generator (the parts it shares with others too) */
        json_t *a = hb_gen_event(&g), *b;
        hb_gen_free(&g);
        hb_gen_free(&g2);
        b = json_deep_copy(a);
        assert_true(json_equal(a, b));
        json_decref(a);
        json_decref(b);
    }
    json_decref(seen);
    hb_codec_free(c);
}

/* A preview's sample event (hb_gen_event_of): of the type asked for, every
 * type of the catalogue, valid for the schema. */
static void generated_events_of_each_type(void **state) {
    char err[256];
    hb_codec_t *c = hb_codec_new(hb_schema_identity_event, err, sizeof(err));
    hb_gen_t g;
    (void)state;
    assert_non_null(c);
    hb_gen_init(&g, 60);
    for (size_t i = 0; i < hb_event_types_count(); i++) {
        const char *type = hb_event_type_at(i);
        json_t *ev = hb_gen_event_of(&g, type);
        void *buf = NULL;
        size_t len = 0;
        if (hb_event_normalize(ev, 0, err, sizeof(err)) < 0 ||
            hb_codec_encode(c, ev, &buf, &len, err, sizeof(err)) < 0)
            fail_msg("%s: %s", type, err);
        assert_string_equal(hb_event_type(ev), type);
        assert_non_null(json_object_get(ev, "actor"));
        free(buf);
        json_decref(ev);
    }
    hb_gen_free(&g);
    hb_codec_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(catalogue_matches_the_embedded_file),
        cmocka_unit_test(catalogue_lookups),
        cmocka_unit_test(normalize_table),
        cmocka_unit_test(normalize_fills_in_defaults),
        cmocka_unit_test(normalize_uuids_are_unique),
        cmocka_unit_test(normalize_keeps_given_values),
        cmocka_unit_test(key_selection),
        cmocka_unit_test(accessors),
        cmocka_unit_test(generated_events_are_valid),
        cmocka_unit_test(generated_events_of_each_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
