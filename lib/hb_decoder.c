/*
 * The consumed messages' decoder. See hb_decoder.h.
 *
 * The design: the codec answers everything it can by itself (single-object
 * messages of any writer it was given, registry ids it was given); only a
 * registry id it does not know comes here, and is looked up in the registry
 * cache (never blocking). A schema that arrives is given to the codec under
 * its id, so each id costs one lookup per process; a schema that does not
 * resolve into the reader is remembered as poison, with its reason.
 *
 * What must hold: nothing the registry's absence causes is ever reported as
 * poison; everything poison says why.
 */
#include "hb_decoder.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_log.h"
#include "hb_metrics.h"
#include "hb_registry.h"
#include "hb_schemas.h"

/* How soon a message whose writer schema is being fetched is read again. */
#define HB_DECODE_PENDING_MS 100
/* Said of id 0, which no registry hands out: the likeliest cause. */
#define HB_DECODE_ID0_HINT                                                                         \
    " (id 0 is what an event framed with Apicurio's 8-byte schema ids reads as: 0x00, then a "     \
    "64-bit id whose first 4 bytes are 0; configure the producer's serializer for 4-byte ids, "    \
    "docs/schemas.md)"
#define HB_WRITER_SCHEMA_MAX (1024 * 1024)

struct hb_decoder_s {
    hb_codec_t *codec;
    hb_registry_t *registry;    /* NULL: no Schema Registry configured */
    json_t *bad_ids;            /* {"<id>": "reason"}: fetched, does not resolve */
    hb_jdoc_t doc;              /* hb_decoder_decode_event's, reused */
    int registry_was_down;      /* for logging the transitions once */
    hb_metric_t *m_unavailable; /* 1 while the registry's last answers fail */
};

static const char *const *history_of(const char *reader_schema) {
    if (reader_schema == hb_schema_identity_event)
        return hb_schema_history_identity_event;
    if (reader_schema == hb_schema_delivery_retry)
        return hb_schema_history_delivery_retry;
    return NULL;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n > m && !strcmp(s + n - m, suffix);
}

static int by_name(const struct dirent **a, const struct dirent **b) {
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int avsc_only(const struct dirent *e) {
    return e->d_name[0] != '.' && ends_with(e->d_name, ".avsc");
}

/* The whole file as a string; caller frees. */
static char *read_text(const char *path, char *errstr, size_t errstr_size) {
    FILE *f = fopen(path, "rb");
    char *text;
    size_t n;
    if (!f) {
        hb_seterr(errstr, errstr_size, "%s: %s", path, strerror(errno));
        return NULL;
    }
    text = hb_malloc(HB_WRITER_SCHEMA_MAX + 1);
    n = fread(text, 1, HB_WRITER_SCHEMA_MAX + 1, f);
    if (ferror(f) || n > HB_WRITER_SCHEMA_MAX) {
        hb_seterr(errstr, errstr_size, "%s: %s", path,
                  ferror(f) ? strerror(errno) : "larger than 1 MiB");
        fclose(f);
        free(text);
        return NULL;
    }
    fclose(f);
    text[n] = '\0';
    return text;
}

int hb_decoder_load_dir(hb_codec_t *c, const char *dir, int *added, char *errstr,
                        size_t errstr_size) {
    struct dirent **names = NULL;
    int n = scandir(dir, &names, avsc_only, by_name), r = 0;
    *added = 0;
    if (n < 0) {
        hb_seterr(errstr, errstr_size, "%s: %s", dir, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        char path[4096], why[512];
        char *text = NULL;
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
        if (r == 0) {
            text = read_text(path, errstr, errstr_size);
            if (!text)
                r = -1;
            else if (hb_codec_add_writer(c, text, why, sizeof(why)) < 0) {
                hb_seterr(errstr, errstr_size, "%s: %s", path, why);
                r = -1;
            } else {
                (*added)++;
            }
        }
        free(text);
        free(names[i]);
    }
    free(names);
    return r;
}

hb_decoder_t *hb_decoder_new(const hb_config_t *cfg, const char *reader_schema, char *errstr,
                             size_t errstr_size) {
    hb_decoder_t *d = hb_calloc(1, sizeof(*d));
    const char *const *hist = history_of(reader_schema);
    int from_history = 0, from_dir = 0;
    char why[512];
    d->bad_ids = json_object();
    d->m_unavailable = hb_metrics_gauge("hookbridge_schema_registry_unavailable", NULL,
                                        "1 while the Schema Registry cannot be reached and "
                                        "events in its framing wait (0 without a registry).");
    d->codec = hb_codec_new(reader_schema, errstr, errstr_size);
    if (!d->codec)
        goto fail;
    for (size_t i = 0; hist && hist[i]; i++) {
        if (hb_codec_add_writer(d->codec, hist[i], why, sizeof(why)) < 0) {
            /* a build whose reader cannot read its own history: a bug */
            hb_seterr(errstr, errstr_size, "schema history version %zu: %s", i + 1, why);
            goto fail;
        }
        from_history++;
    }
    if (cfg->writer_schemas_dir && *cfg->writer_schemas_dir) {
        if (hb_decoder_load_dir(d->codec, cfg->writer_schemas_dir, &from_dir, why, sizeof(why)) <
            0) {
            hb_seterr(errstr, errstr_size, "HOOKBRIDGE_WRITER_SCHEMAS_DIR: %s", why);
            goto fail;
        }
        hb_info("writer schemas: %d from %s", from_dir, cfg->writer_schemas_dir);
    }
    if (cfg->schema_registry_url && *cfg->schema_registry_url) {
        hb_registry_opts_t o = {cfg->schema_registry_url, cfg->schema_registry_user_info,
                                cfg->schema_registry_ca_file, cfg->schema_registry_timeout_ms,
                                cfg->schema_registry_not_found_grace_ms};
        char shown[1024];
        /* a CA bundle curl cannot use fails every fetch, from the first
         * event in the registry's framing on: a mistake to stop at start */
        if (cfg->schema_registry_ca_file && *cfg->schema_registry_ca_file &&
            hb_registry_ca_check(cfg->schema_registry_ca_file, why, sizeof(why)) < 0) {
            hb_seterr(errstr, errstr_size, "HOOKBRIDGE_SCHEMA_REGISTRY_CA_FILE=%s: %s",
                      cfg->schema_registry_ca_file, why);
            goto fail;
        }
        d->registry = hb_registry_new(&o, why, sizeof(why));
        if (!d->registry) {
            hb_seterr(errstr, errstr_size, "HOOKBRIDGE_SCHEMA_REGISTRY_URL: %s", why);
            goto fail;
        }
        hb_registry_url_for_log(cfg->schema_registry_url, shown, sizeof(shown));
        hb_info("Schema Registry framing read with writer schemas from %s%s", shown,
                cfg->schema_registry_user_info && *cfg->schema_registry_user_info ? " (basic auth)"
                                                                                  : "");
    }
    hb_debug("writer schemas: %d from the schema history", from_history);
    return d;
fail:
    hb_decoder_free(d);
    return NULL;
}

void hb_decoder_free(hb_decoder_t *d) {
    if (!d)
        return;
    hb_registry_free(d->registry);
    hb_codec_free(d->codec);
    json_decref(d->bad_ids);
    hb_jdoc_free(&d->doc);
    free(d);
}

/* Logs the registry going away and coming back, once each. */
static void note_registry(hb_decoder_t *d, int down, const char *why) {
    if (down && !d->registry_was_down)
        hb_error("schema registry unavailable (events in its framing wait; not ready): %s", why);
    else if (!down && d->registry_was_down)
        hb_info("schema registry reachable again");
    d->registry_was_down = down;
    hb_metric_set(d->m_unavailable, down ? 1.0 : 0.0);
}

/* The codec's decode: to *out, or with doc to doc (and *out when the general
 * way made a value). */
static int codec_decode(hb_decoder_t *d, const void *buf, size_t len, hb_jdoc_t *doc, json_t **out,
                        char *errstr, size_t errstr_size) {
    return doc ? hb_codec_decode_doc(d->codec, buf, len, doc, out, errstr, errstr_size)
               : hb_codec_decode(d->codec, buf, len, out, errstr, errstr_size);
}

static int decode(hb_decoder_t *d, const void *buf, size_t len, hb_jdoc_t *doc, json_t **out,
                  int64_t *wait_ms, char *errstr, size_t errstr_size) {
    char key[16], why[512] = "";
    const char *schema = NULL, *bad;
    uint32_t id = 0;
    int r = codec_decode(d, buf, len, doc, out, errstr, errstr_size);
    *wait_ms = 0;
    if (r != HB_CODEC_UNKNOWN_ID)
        return r == 0 ? HB_DECODE_OK : HB_DECODE_POISON;
    (void)hb_codec_registry_id(buf, len, &id);
    if (!d->registry) {
        hb_seterr(errstr, errstr_size,
                  "not single-object encoded (bad magic): Schema Registry framing with schema id "
                  "%" PRIu32 ", and no schema registry is configured "
                  "(HOOKBRIDGE_SCHEMA_REGISTRY_URL)%s",
                  id, id == 0 ? HB_DECODE_ID0_HINT : "");
        return HB_DECODE_POISON;
    }
    snprintf(key, sizeof(key), "%" PRIu32, id);
    bad = json_string_value(json_object_get(d->bad_ids, key));
    if (bad) {
        hb_seterr(errstr, errstr_size, "%s", bad);
        return HB_DECODE_POISON;
    }
    switch (hb_registry_lookup(d->registry, id, &schema, why, sizeof(why))) {
    case HB_REGISTRY_FOUND:
        note_registry(d, 0, "");
        if (hb_codec_add_writer_id(d->codec, id, schema, why, sizeof(why)) < 0) {
            hb_seterr(errstr, errstr_size, "schema id %" PRIu32 " from the registry: %s", id, why);
            (void)json_object_set_new(d->bad_ids, key, json_string(errstr));
            return HB_DECODE_POISON;
        }
        hb_info("schema id %" PRIu32 " fetched from the schema registry", id);
        r = codec_decode(d, buf, len, doc, out, errstr, errstr_size);
        return r == 0 ? HB_DECODE_OK : HB_DECODE_POISON;
    case HB_REGISTRY_NOT_FOUND:
        note_registry(d, 0, "");
        hb_seterr(errstr, errstr_size, "%s%s", why, id == 0 ? HB_DECODE_ID0_HINT : "");
        return HB_DECODE_POISON;
    case HB_REGISTRY_NOT_YET: /* a replica may not have it yet: not poison for now */
        note_registry(d, 0, "");
        *wait_ms = HB_REGISTRY_RETRY_MS;
        hb_seterr(errstr, errstr_size, "%s (not yet: asking again)", why);
        return HB_DECODE_WAIT;
    case HB_REGISTRY_UNAVAILABLE:
        note_registry(d, 1, why);
        *wait_ms = HB_REGISTRY_RETRY_MS;
        hb_seterr(errstr, errstr_size, "schema registry unavailable: %s", why);
        return HB_DECODE_WAIT;
    case HB_REGISTRY_PENDING: break;
    }
    *wait_ms = HB_DECODE_PENDING_MS;
    hb_seterr(errstr, errstr_size, "schema id %" PRIu32 " is being fetched", id);
    return HB_DECODE_WAIT;
}

int hb_decoder_decode(hb_decoder_t *d, const void *buf, size_t len, json_t **out, int64_t *wait_ms,
                      char *errstr, size_t errstr_size) {
    return decode(d, buf, len, NULL, out, wait_ms, errstr, errstr_size);
}

int hb_decoder_decode_event(hb_decoder_t *d, const void *buf, size_t len, hb_event_t **out,
                            int64_t *wait_ms, char *errstr, size_t errstr_size) {
    json_t *json = NULL;
    int r = decode(d, buf, len, &d->doc, &json, wait_ms, errstr, errstr_size);
    *out = NULL;
    if (r != HB_DECODE_OK) {
        json_decref(json);
        return r;
    }
    *out = hb_ev_new(&d->doc, json); /* takes json */
    if (!*out) {
        hb_seterr(errstr, errstr_size, "the message is not a JSON object");
        return HB_DECODE_POISON;
    }
    return HB_DECODE_OK;
}

const char *hb_decoder_unready(hb_decoder_t *d, char *buf, size_t buf_size) {
    char why[300];
    if (!d->registry || !hb_registry_down(d->registry, why, sizeof(why))) {
        if (d->registry)
            note_registry(d, 0, "");
        return NULL;
    }
    note_registry(d, 1, why);
    snprintf(buf, buf_size, "schema registry unavailable: %s", why);
    return buf;
}
