/*
 * Kafka configuration and producing. See hb_kafka.h.
 *
 * librdkafka calls the log callback from its own threads; hb_log is
 * thread-safe (one write per line), so the callback logs directly.
 */
#include "hb_kafka.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "hb_log.h"

static void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    hb_log_level_t lvl = level <= 3   ? HB_LOG_ERROR
                         : level <= 4 ? HB_LOG_WARN
                         : level <= 6 ? HB_LOG_INFO
                                      : HB_LOG_DEBUG;
    hb_log(lvl, HB_KV("source", "librdkafka", "facility", fac), "%s", buf);
}

int hb_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *errstr,
                      size_t errstr_size) {
    char kerr[512];
    if (rd_kafka_conf_set(conf, name, value, kerr, sizeof(kerr)) != RD_KAFKA_CONF_OK) {
        hb_seterr(errstr, errstr_size, "kafka property %s: %s", name, kerr);
        return -1;
    }
    return 0;
}

int hb_kafka_conf_passthrough(rd_kafka_conf_t *conf, const hb_config_t *cfg, char *errstr,
                              size_t errstr_size) {
    for (size_t i = 0; i < cfg->kafka_props_cnt; i++) {
        const char *name = cfg->kafka_props[2 * i], *value = cfg->kafka_props[2 * i + 1];
        char kerr[512], var[300];
        size_t n = (size_t)snprintf(var, sizeof(var), "HOOKBRIDGE_KAFKA_");
        for (const char *p = name; *p && n + 1 < sizeof(var); p++)
            var[n++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
        var[n] = '\0';
        if (rd_kafka_conf_set(conf, name, value, kerr, sizeof(kerr)) != RD_KAFKA_CONF_OK) {
            /* librdkafka's text may quote the value for enums; it never does
             * for string properties such as passwords. */
            hb_seterr(errstr, errstr_size, "%s (%s): %s", var, name, kerr);
            return -1;
        }
    }
    return 0;
}

rd_kafka_conf_t *hb_kafka_conf_new(const hb_config_t *cfg, const char *client_id, char *errstr,
                                   size_t errstr_size) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (hb_kafka_conf_set(conf, "bootstrap.servers", cfg->kafka_brokers, errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "client.id", client_id, errstr, errstr_size) < 0 ||
        hb_kafka_conf_passthrough(conf, cfg, errstr, errstr_size) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
    return conf;
}

rd_kafka_t *hb_kafka_producer_new(rd_kafka_conf_t *conf,
                                  void (*dr_cb)(rd_kafka_t *, const rd_kafka_message_t *, void *),
                                  char *errstr, size_t errstr_size) {
    rd_kafka_t *rk;
    char kerr[512];
    if (hb_kafka_conf_set(conf, "enable.idempotence", "true", errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "acks", "all", errstr, errstr_size) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    if (dr_cb)
        rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof(kerr));
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        hb_seterr(errstr, errstr_size, "kafka producer: %s", kerr);
        return NULL;
    }
    conf = NULL; /* now owned by the rd_kafka_t */
    return rk;
}

int hb_kafka_produce(rd_kafka_t *rk, const char *topic, const void *key, size_t key_len,
                     const void *val, size_t val_len, void *msg_opaque, int block_ms, char *errstr,
                     size_t errstr_size) {
    int64_t deadline = hb_mono_ms() + block_ms;
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_KEY((void *)key, key_len), RD_KAFKA_V_VALUE((void *)val, val_len),
            RD_KAFKA_V_OPAQUE(msg_opaque), RD_KAFKA_V_END);
        if (!err)
            return 0;
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || hb_mono_ms() >= deadline) {
            hb_seterr(errstr, errstr_size, "produce to %s: %s", topic, rd_kafka_err2str(err));
            return -1;
        }
        rd_kafka_poll(rk, 100); /* serve delivery reports to make room */
    }
}

rd_kafka_topic_t *hb_kafka_topic_prepare(rd_kafka_t *rk, const char *topic, int timeout_ms,
                                         char *errstr, size_t errstr_size) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err;
    if (!rkt) {
        hb_seterr(errstr, errstr_size, "topic %s: %s", topic,
                  rd_kafka_err2str(rd_kafka_last_error()));
        return NULL;
    }
    err = rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms);
    if (!err && md->topic_cnt == 1 && md->topics[0].err)
        err = md->topics[0].err;
    if (md)
        rd_kafka_metadata_destroy(md);
    if (err) {
        hb_seterr(errstr, errstr_size, "topic %s: no metadata yet: %s", topic,
                  rd_kafka_err2str(err));
        rd_kafka_topic_destroy(rkt);
        return NULL;
    }
    return rkt;
}

#define HB_KAFKA_PROBE_EVERY_MS 2000

int hb_kafka_reach_down(hb_kafka_reach_t *r, int err) {
    int was_down = r->down;
    if (err != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        return 0;
    r->down = 1;
    r->next_probe_ms = hb_mono_ms() + HB_KAFKA_PROBE_EVERY_MS;
    return !was_down;
}

int hb_kafka_reach_probe(hb_kafka_reach_t *r, rd_kafka_t *rk, rd_kafka_topic_t *rkt,
                         int timeout_ms) {
    const struct rd_kafka_metadata *md = NULL;
    int up = 0;
    if (!r->down || !rk || hb_mono_ms() < r->next_probe_ms)
        return 0;
    r->next_probe_ms = hb_mono_ms() + HB_KAFKA_PROBE_EVERY_MS;
    if (rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR && md &&
        md->broker_cnt > 0) {
        up = md->broker_cnt;
        r->down = 0;
    }
    if (md)
        rd_kafka_metadata_destroy(md);
    return up;
}

int hb_kafka_flush(rd_kafka_t *rk, int timeout_ms) {
    (void)rd_kafka_flush(rk, timeout_ms);
    return rd_kafka_outq_len(rk);
}
