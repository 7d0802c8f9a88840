/*
 * Topic provisioning through the Admin API (see hb_topics.h for the policy).
 *
 * One short-lived admin client (a producer handle, as librdkafka's admin
 * examples use) asks for the metadata of every topic, creates the missing
 * ones in one CreateTopics request, then describes the existing ones'
 * retention.ms in one DescribeConfigs request. Every request waits on its
 * own queue with a deadline, so an unreachable cluster ends in an error
 * naming it rather than a hang.
 */
#include "hb_topics.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "hb_buf.h"
#include "hb_kafka.h"
#include "hb_retry.h"

#define TOPICS_TIMEOUT_MS 30000

long long hb_topics_tier_retention_ms(long long delay_ms) {
    long long r = delay_ms * HB_TOPICS_TIER_RETENTION_FACTOR;
    return r > HB_TOPICS_TIER_MIN_RETENTION_MS ? r : HB_TOPICS_TIER_MIN_RETENTION_MS;
}

static void plan_add(hb_topic_plan_t *plan, const hb_config_t *cfg, const char *name,
                     const char *role, long long retention_ms) {
    hb_topic_spec_t *t;
    plan->v = hb_realloc(plan->v, (plan->n + 1) * sizeof(*plan->v));
    t = &plan->v[plan->n++];
    memset(t, 0, sizeof(*t));
    t->name = hb_strdup(name);
    snprintf(t->role, sizeof(t->role), "%s", role);
    t->partitions = (int)cfg->topic_partitions;
    t->replication_factor = (int)cfg->topic_replication_factor;
    t->retention_ms = retention_ms;
    t->tier = !strncmp(role, "delay tier", 10);
    /* With acks=all, two in-sync copies before an acknowledgement once there are three. */
    t->min_insync_replicas = t->replication_factor >= 3 ? 2 : 0;
}

int hb_topics_plan(hb_topic_plan_t *plan, const hb_config_t *cfg, char *errstr,
                   size_t errstr_size) {
    hb_schedule_t s;
    char why[256];
    memset(plan, 0, sizeof(*plan));
    if (hb_schedule_parse(&s, cfg->retry_schedule, cfg->retry_hop_tiers, cfg->retry_topic_prefix,
                          why, sizeof(why)) < 0) {
        hb_seterr(errstr, errstr_size, "%s: %s", hb_schedule_setting(why), why);
        return -1;
    }
    plan_add(plan, cfg, cfg->events_topic, "events", cfg->events_retention_ms);
    for (int i = 0; i < s.tiers; i++) {
        char role[48], d[24];
        hb_delay_format(s.tiers_ms[i], d, sizeof(d));
        snprintf(role, sizeof(role), "delay tier %s%s", d, s.hop_only[i] ? " (hops only)" : "");
        plan_add(plan, cfg, s.tier_topics[i], role, hb_topics_tier_retention_ms(s.tiers_ms[i]));
    }
    plan_add(plan, cfg, cfg->dlq_topic, "dead letters", cfg->dlq_retention_ms);
    hb_schedule_free(&s);
    /* Two roles on one topic (a tier named like the DLQ) would be provisioned twice. */
    for (size_t i = 0; i < plan->n; i++)
        for (size_t j = i + 1; j < plan->n; j++)
            if (!strcmp(plan->v[i].name, plan->v[j].name)) {
                hb_seterr(errstr, errstr_size, "topic %s is both the %s and the %s topic",
                          plan->v[i].name, plan->v[i].role, plan->v[j].role);
                hb_topics_plan_free(plan);
                return -1;
            }
    return 0;
}

void hb_topics_plan_free(hb_topic_plan_t *plan) {
    for (size_t i = 0; i < plan->n; i++)
        free(plan->v[i].name);
    free(plan->v);
    memset(plan, 0, sizeof(*plan));
}

/* "7d", "36h", "90m", "45s" or milliseconds: the largest whole unit. */
static void fmt_retention(long long ms, char *out, size_t outsz) {
    static const struct {
        long long ms;
        const char *unit;
    } units[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}};
    if (ms < 0) {
        snprintf(out, outsz, ms == -1 ? "unlimited" : "unknown");
        return;
    }
    for (size_t i = 0; i < HB_ARRAY_SIZE(units); i++)
        if (ms >= units[i].ms && ms % units[i].ms == 0) {
            snprintf(out, outsz, "%lld%s", ms / units[i].ms, units[i].unit);
            return;
        }
    snprintf(out, outsz, "%lldms", ms);
}

static void append(char *out, size_t outsz, int *n, const char *item) {
    size_t len = strlen(out);
    if (len < outsz)
        snprintf(out + len, outsz - len, "%s%s", *n > 0 ? "; " : "", item);
    (*n)++;
}

int hb_topics_drift(const hb_topic_spec_t *want, const hb_topic_state_t *have, char *out,
                    size_t outsz) {
    char a[32], b[32], item[160];
    int n = 0;
    if (outsz)
        out[0] = '\0';
    if (have->partitions < want->partitions) {
        snprintf(item, sizeof(item), "%d partitions, fewer than the %d planned", have->partitions,
                 want->partitions);
        append(out, outsz, &n, item);
    }
    if (have->replication_factor != want->replication_factor) {
        snprintf(item, sizeof(item), "replication factor %d, not %d", have->replication_factor,
                 want->replication_factor);
        append(out, outsz, &n, item);
    }
    if (have->retention_ms >= 0 && have->retention_ms < want->retention_ms) {
        fmt_retention(have->retention_ms, a, sizeof(a));
        fmt_retention(want->retention_ms, b, sizeof(b));
        snprintf(item, sizeof(item), "retention %s, shorter than the %s planned", a, b);
        append(out, outsz, &n, item);
    }
    if (want->tier && have->retention_bytes > 0) {
        snprintf(item, sizeof(item),
                 "retention.bytes %lld: retries are deleted before they are due once a "
                 "partition holds that much",
                 have->retention_bytes);
        append(out, outsz, &n, item);
    }
    if (want->tier && have->log_append_time) {
        snprintf(item, sizeof(item),
                 "message.timestamp.type LogAppendTime: the broker's clock stamps the retries, "
                 "so one due later than its tier holds its partition");
        append(out, outsz, &n, item);
    }
    if (have->compacted) {
        snprintf(item, sizeof(item),
                 "cleanup.policy compact: only the newest message of each key is kept");
        append(out, outsz, &n, item);
    }
    return n;
}

/* Waits for the one result event of an admin request on q. */
static rd_kafka_event_t *wait_result(rd_kafka_queue_t *q, const char *what, char *errstr,
                                     size_t errstr_size) {
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, TOPICS_TIMEOUT_MS + 5000);
    if (!ev) {
        hb_seterr(errstr, errstr_size, "%s: no answer from the brokers", what);
        return NULL;
    }
    if (rd_kafka_event_error(ev)) {
        /* librdkafka's mock cluster (hookbridge-devbroker) has no controller to ask. */
        int timed_out = rd_kafka_event_error(ev) == RD_KAFKA_RESP_ERR__TIMED_OUT;
        hb_seterr(errstr, errstr_size, "%s: %s%s", what, rd_kafka_event_error_string(ev),
                  timed_out ? " (a broker without the Admin API, such as hookbridge-devbroker, "
                              "never answers: the devbroker creates its topics itself)"
                            : "");
        rd_kafka_event_destroy(ev);
        return NULL;
    }
    return ev;
}

static int create_missing(rd_kafka_t *rk, const hb_topic_plan_t *plan, const int *missing,
                          int *created, char *errstr, size_t errstr_size) {
    rd_kafka_NewTopic_t **nt = hb_calloc(plan->n, sizeof(*nt));
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *opt = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_event_t *ev = NULL;
    size_t cnt = 0;
    int rc = -1;
    char kerr[512];

    for (size_t i = 0; i < plan->n; i++) {
        const hb_topic_spec_t *t = &plan->v[i];
        char v[32];
        if (!missing[i])
            continue;
        nt[cnt] = rd_kafka_NewTopic_new(t->name, t->partitions, t->replication_factor, kerr,
                                        sizeof(kerr));
        if (!nt[cnt]) {
            hb_seterr(errstr, errstr_size, "topic %s: %s", t->name, kerr);
            goto out;
        }
        cnt++;
        snprintf(v, sizeof(v), "%lld", t->retention_ms);
        if (rd_kafka_NewTopic_set_config(nt[cnt - 1], "retention.ms", v) != 0) {
            hb_seterr(errstr, errstr_size, "topic %s: cannot set retention.ms", t->name);
            goto out;
        }
        /* a tier's messages carry their writer's time (on PostgreSQL's
         * clock), whatever the broker's default (log.message.timestamp.type):
         * the retrier judges by it which retries hold their partition */
        if (t->tier &&
            rd_kafka_NewTopic_set_config(nt[cnt - 1], "message.timestamp.type", "CreateTime")) {
            hb_seterr(errstr, errstr_size, "topic %s: cannot set message.timestamp.type", t->name);
            goto out;
        }
        if (t->min_insync_replicas > 0) {
            snprintf(v, sizeof(v), "%d", t->min_insync_replicas);
            if (rd_kafka_NewTopic_set_config(nt[cnt - 1], "min.insync.replicas", v) != 0) {
                hb_seterr(errstr, errstr_size, "topic %s: cannot set min.insync.replicas", t->name);
                goto out;
            }
        }
    }
    if (cnt == 0) {
        rc = 0;
        goto out;
    }
    if (rd_kafka_AdminOptions_set_operation_timeout(opt, TOPICS_TIMEOUT_MS, kerr, sizeof(kerr)) ||
        rd_kafka_AdminOptions_set_request_timeout(opt, TOPICS_TIMEOUT_MS, kerr, sizeof(kerr))) {
        hb_seterr(errstr, errstr_size, "admin options: %s", kerr);
        goto out;
    }
    rd_kafka_CreateTopics(rk, nt, cnt, opt, q);
    if (!(ev = wait_result(q, "CreateTopics", errstr, errstr_size)))
        goto out;
    {
        size_t n = 0;
        const rd_kafka_topic_result_t **res =
            rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
        for (size_t i = 0; i < n; i++) {
            const char *name = rd_kafka_topic_result_name(res[i]);
            rd_kafka_resp_err_t err = rd_kafka_topic_result_error(res[i]);
            for (size_t j = 0; j < plan->n; j++)
                if (missing[j] && !strcmp(plan->v[j].name, name)) {
                    /* Created meanwhile by someone else: it exists, which is what matters. */
                    if (!err || err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
                        created[j] = err ? 2 : 1;
                }
            if (err && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                const char *s = rd_kafka_topic_result_error_string(res[i]);
                hb_seterr(errstr, errstr_size, "creating topic %s: %s", name,
                          s && *s ? s : rd_kafka_err2str(err));
                goto out;
            }
        }
    }
    rc = 0;
out:
    if (ev)
        rd_kafka_event_destroy(ev);
    for (size_t i = 0; i < cnt; i++)
        rd_kafka_NewTopic_destroy(nt[i]);
    free(nt);
    rd_kafka_AdminOptions_destroy(opt);
    rd_kafka_queue_destroy(q);
    return rc;
}

/* retention.ms, retention.bytes, cleanup.policy and message.timestamp.type
 * of every topic with
 * want[i] set, into have[i]. */
static int describe_retention(rd_kafka_t *rk, const hb_topic_plan_t *plan, const int *want,
                              hb_topic_state_t *have, char *errstr, size_t errstr_size) {
    rd_kafka_ConfigResource_t **res = hb_calloc(plan->n, sizeof(*res));
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *opt = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
    rd_kafka_event_t *ev = NULL;
    size_t cnt = 0;
    int rc = -1;
    char kerr[512];

    for (size_t i = 0; i < plan->n; i++)
        if (want[i])
            res[cnt++] = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, plan->v[i].name);
    if (cnt == 0) {
        rc = 0;
        goto out;
    }
    if (rd_kafka_AdminOptions_set_request_timeout(opt, TOPICS_TIMEOUT_MS, kerr, sizeof(kerr))) {
        hb_seterr(errstr, errstr_size, "admin options: %s", kerr);
        goto out;
    }
    rd_kafka_DescribeConfigs(rk, res, cnt, opt, q);
    if (!(ev = wait_result(q, "DescribeConfigs", errstr, errstr_size)))
        goto out;
    {
        size_t n = 0;
        const rd_kafka_ConfigResource_t **out = rd_kafka_DescribeConfigs_result_resources(
            rd_kafka_event_DescribeConfigs_result(ev), &n);
        for (size_t i = 0; i < n; i++) {
            const char *name = rd_kafka_ConfigResource_name(out[i]);
            size_t ne = 0;
            const rd_kafka_ConfigEntry_t **e;
            if (rd_kafka_ConfigResource_error(out[i])) {
                hb_seterr(errstr, errstr_size, "describing topic %s: %s", name,
                          rd_kafka_ConfigResource_error_string(out[i]));
                goto out;
            }
            e = rd_kafka_ConfigResource_configs(out[i], &ne);
            for (size_t j = 0; j < plan->n; j++) {
                if (!want[j] || strcmp(plan->v[j].name, name))
                    continue;
                for (size_t k = 0; k < ne; k++) {
                    const char *v = rd_kafka_ConfigEntry_value(e[k]), *key;
                    char *end;
                    long long x;
                    if (!v)
                        continue;
                    key = rd_kafka_ConfigEntry_name(e[k]);
                    x = strtoll(v, &end, 10);
                    if (!strcmp(key, "retention.ms"))
                        have[j].retention_ms = (*end || end == v) ? -2 : x < 0 ? -1 : x;
                    else if (!strcmp(key, "retention.bytes") && !*end && end != v && x >= 0)
                        have[j].retention_bytes = x > 0 ? x : 1; /* 0 bytes: cut at once */
                    else if (!strcmp(key, "cleanup.policy"))
                        have[j].compacted = strstr(v, "compact") != NULL;
                    else if (!strcmp(key, "message.timestamp.type"))
                        have[j].log_append_time = !strcmp(v, "LogAppendTime");
                }
            }
        }
    }
    rc = 0;
out:
    if (ev)
        rd_kafka_event_destroy(ev);
    for (size_t i = 0; i < cnt; i++)
        rd_kafka_ConfigResource_destroy(res[i]);
    free(res);
    rd_kafka_AdminOptions_destroy(opt);
    rd_kafka_queue_destroy(q);
    return rc;
}

/* Partitions and replicas of the plan's topics from one metadata request;
 * exists[i] 0 when the cluster does not know plan->v[i]. *retired: the
 * topics named like a delay tier of this prefix that the schedule does not
 * have (tiers of an earlier schedule), one line each. */
static int read_metadata(rd_kafka_t *rk, const hb_config_t *cfg, const hb_topic_plan_t *plan,
                         int *exists, hb_topic_state_t *have, hb_buf_t *retired, char *errstr,
                         size_t errstr_size) {
    const struct rd_kafka_metadata *md = NULL;
    hb_schedule_t sch;
    char why[256];
    rd_kafka_resp_err_t err;
    if (hb_schedule_parse(&sch, cfg->retry_schedule, cfg->retry_hop_tiers, cfg->retry_topic_prefix,
                          why, sizeof(why)) < 0) {
        hb_seterr(errstr, errstr_size, "%s: %s", hb_schedule_setting(why), why);
        return -1;
    }
    /* Asked a second at a time: a failure retrying does not cure (a wrong
     * password, an untrusted certificate) ends the wait after a few seconds
     * with librdkafka's reason, instead of "Broker transport failure" after
     * the whole timeout. */
    for (int64_t start = hb_mono_ms();;) {
        char why_auth[768];
        err = rd_kafka_metadata(rk, 1, NULL, &md, 1000);
        if (!err || hb_mono_ms() - start >= TOPICS_TIMEOUT_MS)
            break;
        if (hb_mono_ms() - start >= 3000 && hb_kafka_auth_failure(why_auth, sizeof(why_auth))) {
            hb_schedule_free(&sch);
            hb_seterr(errstr, errstr_size, "cannot read the cluster's metadata: %s", why_auth);
            return -1;
        }
    }
    if (err) {
        char why_auth[768];
        hb_schedule_free(&sch);
        if (hb_kafka_auth_failure(why_auth, sizeof(why_auth)))
            hb_seterr(errstr, errstr_size, "cannot read the cluster's metadata: %s", why_auth);
        else
            hb_seterr(errstr, errstr_size, "cannot read the cluster's metadata: %s",
                      rd_kafka_err2str(err));
        return -1;
    }
    for (size_t i = 0; i < plan->n; i++) {
        exists[i] = 0;
        for (int t = 0; t < md->topic_cnt; t++) {
            const rd_kafka_metadata_topic_t *mt = &md->topics[t];
            if (strcmp(mt->topic, plan->v[i].name) || mt->err)
                continue;
            exists[i] = 1;
            have[i].partitions = mt->partition_cnt;
            have[i].replication_factor = 0;
            for (int p = 0; p < mt->partition_cnt; p++)
                if (p == 0 || mt->partitions[p].replica_cnt < have[i].replication_factor)
                    have[i].replication_factor = mt->partitions[p].replica_cnt;
            have[i].retention_ms = -2;
        }
    }
    for (int t = 0; t < md->topic_cnt; t++) {
        int old = 0;
        long long ms = hb_schedule_tier_ms(&sch, md->topics[t].topic, &old);
        char d[32];
        if (!old || md->topics[t].err)
            continue;
        hb_delay_format(ms, d, sizeof(d));
        hb_buf_printf(
            retired,
            "retired   %-32s delay tier %s, not in HOOKBRIDGE_RETRY_SCHEDULE: the retriers "
            "drain it; delete it once hookbridge_consumer_lag shows it empty\n",
            md->topics[t].topic, d);
    }
    rd_kafka_metadata_destroy(md);
    hb_schedule_free(&sch);
    return 0;
}

int hb_topics_apply(const hb_config_t *cfg, const hb_topic_plan_t *plan, int check_only, FILE *out,
                    int *problems, char *errstr, size_t errstr_size) {
    rd_kafka_conf_t *conf = hb_kafka_conf_new(cfg, "hookbridge-migrate", errstr, errstr_size);
    rd_kafka_t *rk;
    int *exists = hb_calloc(plan->n, sizeof(int));
    int *created = hb_calloc(plan->n, sizeof(int));
    int *describe = hb_calloc(plan->n, sizeof(int));
    hb_topic_state_t *have = hb_calloc(plan->n, sizeof(*have));
    int rc = -1;
    char kerr[512];
    hb_buf_t retired = {0};

    *problems = 0;
    if (!conf)
        goto out_nork;
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof(kerr));
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        hb_seterr(errstr, errstr_size, "kafka admin client: %s", kerr);
        goto out_nork;
    }
    conf = NULL; /* now owned by the rd_kafka_t */

    if (read_metadata(rk, cfg, plan, exists, have, &retired, errstr, errstr_size) < 0)
        goto out;
    if (!check_only) {
        int *missing = hb_calloc(plan->n, sizeof(int));
        for (size_t i = 0; i < plan->n; i++)
            missing[i] = !exists[i];
        rc = create_missing(rk, plan, missing, created, errstr, errstr_size);
        free(missing);
        if (rc < 0)
            goto out;
        rc = -1;
    }
    /* Described: what existed, and what someone else created meanwhile. */
    for (size_t i = 0; i < plan->n; i++)
        describe[i] = exists[i] || created[i] == 2;
    if (describe_retention(rk, plan, describe, have, errstr, errstr_size) < 0)
        goto out;

    for (size_t i = 0; i < plan->n; i++) {
        const hb_topic_spec_t *t = &plan->v[i];
        char ret[32], drift[512];
        fmt_retention(t->retention_ms, ret, sizeof(ret));
        if (created[i] == 1) {
            fprintf(out, "created   %-32s %s: %d partitions, replication factor %d, retention %s\n",
                    t->name, t->role, t->partitions, t->replication_factor, ret);
            continue;
        }
        if (!exists[i] && created[i] != 2) {
            fprintf(out,
                    "MISSING   %-32s %s: wants %d partitions, replication factor %d, "
                    "retention %s\n",
                    t->name, t->role, t->partitions, t->replication_factor, ret);
            (*problems)++;
            continue;
        }
        if (created[i] == 2) { /* metadata not read: trust its creator */
            fprintf(out, "exists    %-32s %s (created meanwhile)\n", t->name, t->role);
            continue;
        }
        if (hb_topics_drift(t, &have[i], drift, sizeof(drift)) > 0) {
            fprintf(out, "DRIFT     %-32s %s: %s\n", t->name, t->role, drift);
            (*problems)++;
        } else {
            fmt_retention(have[i].retention_ms, ret, sizeof(ret));
            fprintf(out, "ok        %-32s %s: %d partitions, replication factor %d, retention %s\n",
                    t->name, t->role, have[i].partitions, have[i].replication_factor, ret);
        }
    }
    if (retired.len)
        fwrite(retired.p, 1, retired.len, out);
    rc = 0;
out:
    rd_kafka_destroy(rk);
out_nork:
    hb_buf_free(&retired);
    free(exists);
    free(created);
    free(describe);
    free(have);
    return rc;
}
