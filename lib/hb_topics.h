/*
 * Topic provisioning: the topics hookbridge needs, made to measure through
 * Kafka's Admin API (hookbridge-migrate topics).
 *
 * The plan is pure: from the configuration it lists the events topic, one
 * topic per delay tier of the retry schedule and the dead-letter topic, each
 * with partitions, replication factor and retention. A delay tier keeps its
 * messages max(7 days, 10 x its delay): a retry is read at the latest its
 * delay after it was written, plus however long the retriers were down, and
 * a week covers a long outage even for the shortest tier (the default
 * schedule's longest tier, 10 h, gets the week too). The events and
 * dead-letter topics' retentions are settings.
 *
 * hb_topics_apply compares the plan with the cluster: it reads the topics'
 * metadata (partitions, replicas) and retention.ms, retention.bytes,
 * cleanup.policy and message.timestamp.type (DescribeConfigs), creates
 * what is missing (CreateTopics; a delay tier with message.timestamp.type
 * CreateTime, whatever the broker's default) unless only checking, and reports drift on
 * what exists: fewer partitions than planned, another replication factor, a
 * shorter retention, a delay tier cut by size (retention.bytes: retries
 * deleted before they are due once a partition holds that much), compaction
 * (cleanup.policy=compact keeps only the newest message of each key, and
 * hookbridge's keys are a subscription's or a user's), a delay tier stamped
 * by the broker's clock (LogAppendTime: the retrier then cannot tell which
 * retries hold their partition). It never alters an existing topic (adding
 * partitions to the events topic moves keys between partitions; that is the operator's call). Runs
 * in one thread, the caller's.
 */
#ifndef HB_TOPICS_H
#define HB_TOPICS_H

#include <stdio.h>

#include "hb_common.h"
#include "hb_config.h"

#define HB_TOPICS_TIER_MIN_RETENTION_MS (7LL * 86400000)
#define HB_TOPICS_TIER_RETENTION_FACTOR 10

typedef struct {
    char *name;
    char role[48]; /* "events", "delay tier 5m", "dead letters" */
    int partitions;
    int replication_factor;
    long long retention_ms;
    int min_insync_replicas; /* set on creation; 0 = the broker's default */
    int tier;                /* a delay tier: its messages must outlive their wait */
} hb_topic_spec_t;

typedef struct {
    hb_topic_spec_t *v;
    size_t n;
} hb_topic_plan_t;

/* What a topic has on the cluster; retention_ms -1 = unlimited, -2 = unknown;
 * retention_bytes the size a partition is cut to whatever the messages' age
 * (retention.bytes), 0 when none (unlimited or unknown); compacted: its
 * cleanup.policy has compact, which keeps only each key's newest message;
 * log_append_time: its message.timestamp.type is LogAppendTime (the broker's
 * clock stamps what is written, not the writer's). */
typedef struct {
    int partitions;
    int replication_factor;
    long long retention_ms;
    long long retention_bytes;
    int compacted;
    int log_append_time;
} hb_topic_state_t;

/* Retention of a delay tier: max(7 days, 10 x delay). */
long long hb_topics_tier_retention_ms(long long delay_ms);

/* The plan from the configuration (events topic, tiers ascending, DLQ). */
int hb_topics_plan(hb_topic_plan_t *plan, const hb_config_t *cfg, char *errstr,
                   size_t errstr_size) HB_MUSTCHECK;
void hb_topics_plan_free(hb_topic_plan_t *plan);

/* Writes "; "-separated differences of `have` from `want` that need the
 * operator (fewer partitions, another replication factor, shorter
 * retention, a size limit on a delay tier, compaction) to out; returns how
 * many. More partitions or a longer retention is not drift. */
int hb_topics_drift(const hb_topic_spec_t *want, const hb_topic_state_t *have, char *out,
                    size_t outsz);

/* Creates the missing topics of the plan (none when check_only) and reports,
 * one line per topic on out, what was created, what is as planned and what
 * drifted. *problems is the number of topics missing (when check_only) or
 * drifted. -1 when the cluster could not be asked or a creation failed. */
int hb_topics_apply(const hb_config_t *cfg, const hb_topic_plan_t *plan, int check_only, FILE *out,
                    int *problems, char *errstr, size_t errstr_size) HB_MUSTCHECK;

#endif
