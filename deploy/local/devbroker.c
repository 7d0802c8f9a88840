/*
 * hookbridge-devbroker: an embedded Kafka-protocol broker for local runs and
 * tests only. Never point production at it.
 *
 * It wraps librdkafka's mock cluster (rdkafka_mock.h): a set of in-process
 * brokers listening on loopback that every Kafka client can talk to. A mock
 * cluster needs an rd_kafka_t for its bookkeeping, so we create a producer
 * handle that is never used to produce. At start it creates the topics
 * hookbridge needs (CreateTopics is not supported by the mock), checks that
 * every broker accepts TCP connections, and only then writes the bootstrap
 * list to --bootstrap-file (temporary file + rename, so a reader never sees a
 * partial list): the file's existence means "ready".
 *
 * One thread of ours (main) sleeps in poll(2) on a self-pipe that the signal
 * handlers write to: SIGTERM/SIGINT stop (hb_signal), SIGUSR1 takes every
 * broker down and SIGUSR2 brings them back, SIGHUP makes the next Produce
 * request any broker gets fail with OUT_OF_ORDER_SEQUENCE_NUMBER (to an
 * idempotent producer, as librdkafka's is, a fatal error: the broker lost
 * what it had acknowledged), for fault-injection tests. The
 * handlers only set flags; the loop acts on them. At exit the bootstrap file
 * is removed before the cluster goes away.
 *
 * Limits (see docs/design.md): each partition keeps about the last 5 MiB; a
 * broker set down refuses connections but keeps leadership.
 */
#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <syslog.h>
#include <unistd.h>

#include "hb_common.h"
#include "hb_log.h"
#include "hb_retry.h"
#include "hb_signal.h"

#define DEVBROKER_MAX_TOPICS 64

typedef struct {
    const char *name;
    int partitions; /* 0: --partitions */
} devbroker_topic_t;

typedef struct {
    const char *bootstrap_file;
    int brokers;
    int partitions;
    devbroker_topic_t topics[DEVBROKER_MAX_TOPICS];
    int topics_cnt;
    char *owned[DEVBROKER_MAX_TOPICS]; /* names split from NAME:P */
    int owned_cnt;
} devbroker_opts_t;

static const char *const default_topics[] = {"identity.events", "hookbridge.dlq"};

static volatile sig_atomic_t want_down = 0, want_up = 0, want_produce_error = 0;
static int wake_fd = -1;

static void on_fault_signal(int sig) {
    if (sig == SIGUSR1)
        want_down = 1;
    else if (sig == SIGHUP)
        want_produce_error = 1;
    else
        want_up = 1;
    if (wake_fd >= 0)
        (void)!write(wake_fd, "f", 1);
}

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: hookbridge-devbroker --bootstrap-file FILE [--brokers N] [--partitions N]\n"
            "                            [--topic NAME[:PARTITIONS]]... [--log-level LEVEL]\n"
            "\n"
            "An embedded Kafka-protocol broker (librdkafka's mock cluster) on loopback,\n"
            "FOR LOCAL RUNS AND TESTS ONLY: it keeps only about the last 5 MiB per\n"
            "partition and supports no admin API. Production uses a real Kafka cluster.\n"
            "\n"
            "  --bootstrap-file FILE   write the bootstrap list here once ready (removed at exit)\n"
            "  --brokers N             brokers in the cluster (default 3)\n"
            "  --partitions N          partitions per created topic (default 6)\n"
            "  --topic NAME[:P]        create another topic (repeatable)\n"
            "  --retry-schedule S      create the delay-tier topics of this schedule\n"
            "                          (default: $HOOKBRIDGE_RETRY_SCHEDULE, "
            "else " HB_RETRY_SCHEDULE_DEFAULT ")\n"
            "  --retry-hop-tiers S     and these hop tiers (default: "
            "$HOOKBRIDGE_RETRY_HOP_TIERS,\n"
            "                          else " HB_RETRY_HOP_TIERS_DEFAULT "; empty: none)\n"
            "  --log-level LEVEL       debug, info, warn, error (default info)\n"
            "\n"
            "Topics created: identity.events, hookbridge.dlq, hookbridge.retry.<delay> for\n"
            "each distinct delay of the retry schedule and hop tier, and every --topic.\n"
            "Signals: SIGTERM/SIGINT stop; SIGUSR1 takes\n"
            "all brokers down, SIGUSR2 brings them back up, SIGHUP fails the next Produce request\n"
            "with OUT_OF_ORDER_SEQUENCE_NUMBER (fault-injection tests).\n");
}

static int add_topic(devbroker_opts_t *o, const char *spec, char *errstr, size_t errstr_size) {
    const char *colon = strrchr(spec, ':');
    devbroker_topic_t *t;
    if (o->topics_cnt >= DEVBROKER_MAX_TOPICS) {
        hb_seterr(errstr, errstr_size, "too many topics (at most %d)", DEVBROKER_MAX_TOPICS);
        return -1;
    }
    t = &o->topics[o->topics_cnt];
    t->partitions = 0;
    if (colon) {
        if (hb_parse_int(colon + 1, 1, 10000, &t->partitions) != 0 || colon == spec) {
            hb_seterr(errstr, errstr_size, "--topic %s: want NAME or NAME:PARTITIONS", spec);
            return -1;
        }
        o->owned[o->owned_cnt] = hb_strndup(spec, (size_t)(colon - spec));
        t->name = o->owned[o->owned_cnt++];
    } else {
        if (!*spec) {
            hb_seterr(errstr, errstr_size, "--topic: empty name");
            return -1;
        }
        t->name = spec;
    }
    o->topics_cnt++;
    return 0;
}

/* Returns 0, 1 after --help, -1 on a bad argument. */
static int parse_args(devbroker_opts_t *o, int argc, char **argv, hb_log_level_t *level,
                      char *errstr, size_t errstr_size) {
    const char *schedule = getenv("HOOKBRIDGE_RETRY_SCHEDULE");
    const char *hops = getenv("HOOKBRIDGE_RETRY_HOP_TIERS"); /* "": none */
    hb_schedule_t sch;
    o->brokers = 3;
    o->partitions = 6;
    for (size_t i = 0; i < HB_ARRAY_SIZE(default_topics); i++)
        o->topics[o->topics_cnt++] = (devbroker_topic_t){default_topics[i], 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        }
        if (i + 1 >= argc) {
            hb_seterr(errstr, errstr_size, "%s: unknown flag or missing value", a);
            return -1;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--bootstrap-file")) {
            o->bootstrap_file = v;
        } else if (!strcmp(a, "--brokers")) {
            if (hb_parse_int_flag(a, v, 1, 16, NULL, &o->brokers, errstr, errstr_size) != 0)
                return -1;
        } else if (!strcmp(a, "--partitions")) {
            if (hb_parse_int_flag(a, v, 1, 10000, NULL, &o->partitions, errstr, errstr_size) != 0)
                return -1;
        } else if (!strcmp(a, "--topic")) {
            if (add_topic(o, v, errstr, errstr_size) != 0)
                return -1;
        } else if (!strcmp(a, "--retry-schedule")) {
            schedule = v;
        } else if (!strcmp(a, "--retry-hop-tiers")) {
            hops = v;
        } else if (!strcmp(a, "--log-level")) {
            if (hb_log_level_parse(v, level) != 0) {
                hb_seterr(errstr, errstr_size, "--log-level: want debug, info, warn or error");
                return -1;
            }
        } else {
            hb_seterr(errstr, errstr_size, "%s: unknown flag", a);
            return -1;
        }
    }
    if (!o->bootstrap_file || !*o->bootstrap_file) {
        hb_seterr(errstr, errstr_size, "--bootstrap-file is required");
        return -1;
    }
    if (hb_schedule_parse(&sch, schedule && *schedule ? schedule : HB_RETRY_SCHEDULE_DEFAULT,
                          hops ? hops : HB_RETRY_HOP_TIERS_DEFAULT, "hookbridge.retry.", errstr,
                          errstr_size) < 0)
        return -1;
    for (int t = 0; t < sch.tiers && o->topics_cnt < DEVBROKER_MAX_TOPICS; t++) {
        o->owned[o->owned_cnt] = hb_strdup(sch.tier_topics[t]);
        o->topics[o->topics_cnt++] = (devbroker_topic_t){o->owned[o->owned_cnt++], 0};
    }
    hb_schedule_free(&sch);
    return 0;
}

/* librdkafka's log lines (its own threads) as ours, one level quieter: the
 * mock cluster is chatty about connections coming and going. */
static void on_rdkafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    hb_log_level_t lvl = level <= LOG_ERR      ? HB_LOG_WARN
                         : level <= LOG_NOTICE ? HB_LOG_INFO
                                               : HB_LOG_DEBUG;
    /* The handle exists only to host the cluster; it is not meant to connect. */
    if (!strcmp(fac, "CONFWARN") && strstr(buf, "bootstrap.servers"))
        lvl = HB_LOG_DEBUG;
    hb_log(lvl, HB_KV("facility", fac), "rdkafka: %s", buf);
}

/* One TCP connect to host:port; 0 when accepted. */
static int tcp_probe(const char *hostport) {
    char host[256];
    const char *colon = strrchr(hostport, ':');
    struct addrinfo hints, *res = NULL;
    int fd, rc = -1;
    size_t hlen;
    if (!colon || (hlen = (size_t)(colon - hostport)) >= sizeof(host))
        return -1;
    memcpy(host, hostport, hlen);
    host[hlen] = '\0';
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0)
        return -1;
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0)
        rc = 0;
    if (fd >= 0)
        close(fd);
    freeaddrinfo(res);
    return rc;
}

/* Waits up to timeout_ms until every broker of the comma list accepts. */
static int wait_accepting(const char *bootstraps, int timeout_ms, char *errstr,
                          size_t errstr_size) {
    int64_t deadline = hb_mono_ms() + timeout_ms;
    char *list = hb_strdup(bootstraps), *save = NULL;
    int rc = 0;
    for (char *hp = strtok_r(list, ",", &save); hp; hp = strtok_r(NULL, ",", &save)) {
        while (tcp_probe(hp) != 0) {
            if (hb_mono_ms() >= deadline) {
                hb_seterr(errstr, errstr_size, "broker %s does not accept connections", hp);
                rc = -1;
                goto done;
            }
            (void)poll(NULL, 0, 50);
        }
    }
done:
    free(list);
    return rc;
}

/* path.tmp.<pid>, written and fsynced, then renamed over path. */
static int write_atomically(const char *path, const char *text, char *errstr, size_t errstr_size) {
    char tmp[4096];
    size_t len = strlen(text), off = 0;
    int fd, n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        hb_seterr(errstr, errstr_size, "bootstrap file path too long");
        return -1;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        hb_seterr(errstr, errstr_size, "%s: %s", tmp, strerror(errno));
        return -1;
    }
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            hb_seterr(errstr, errstr_size, "%s: %s", tmp, strerror(errno));
            goto fail;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        fd = -1;
        hb_seterr(errstr, errstr_size, "%s: %s", tmp, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        hb_seterr(errstr, errstr_size, "rename to %s: %s", path, strerror(errno));
        goto fail;
    }
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    (void)unlink(tmp);
    return -1;
}

static int create_topics(rd_kafka_mock_cluster_t *mc, const devbroker_opts_t *o, char *errstr,
                         size_t errstr_size) {
    int rf = o->brokers < 3 ? o->brokers : 3;
    for (int i = 0; i < o->topics_cnt; i++) {
        const devbroker_topic_t *t = &o->topics[i];
        int parts = t->partitions ? t->partitions : o->partitions;
        rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mc, t->name, parts, rf);
        if (err) {
            hb_seterr(errstr, errstr_size, "create topic %s: %s", t->name, rd_kafka_err2str(err));
            return -1;
        }
        hb_debug("topic %s created with %d partitions", t->name, parts);
    }
    return 0;
}

static void set_brokers(rd_kafka_mock_cluster_t *mc, int brokers, int up) {
    for (int id = 1; id <= brokers; id++) {
        rd_kafka_resp_err_t err =
            up ? rd_kafka_mock_broker_set_up(mc, id) : rd_kafka_mock_broker_set_down(mc, id);
        if (err)
            hb_warn("broker %d: set %s: %s", id, up ? "up" : "down", rd_kafka_err2str(err));
    }
    hb_info("all %d brokers %s", brokers, up ? "up" : "down");
}

static void install_fault_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_fault_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

int main(int argc, char **argv) {
    devbroker_opts_t o;
    hb_log_level_t level = HB_LOG_INFO;
    char errstr[512];
    rd_kafka_conf_t *conf = NULL;
    rd_kafka_t *rk = NULL;
    rd_kafka_mock_cluster_t *mc = NULL;
    const char *bootstraps;
    int pipefd[2] = {-1, -1}, rc = 1, file_written = 0;

    memset(&o, 0, sizeof(o));
    hb_log_init("devbroker", HB_LOG_INFO);
    int prc = parse_args(&o, argc, argv, &level, errstr, sizeof(errstr));
    if (prc != 0) {
        if (prc < 0) {
            hb_error("%s", errstr);
            fprintf(stderr, "hookbridge-devbroker: %s (see --help)\n", errstr);
        }
        rc = prc > 0 ? 0 : 2;
        goto done;
    }
    hb_log_init("devbroker", level);

    if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) != 0) {
        hb_error("pipe: %s", strerror(errno));
        goto done;
    }
    wake_fd = pipefd[1];
    hb_signal_install(pipefd[1]);
    install_fault_signals();

    conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "client.id", "hookbridge-devbroker", errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK) {
        hb_error("rdkafka conf: %s", errstr);
        goto done;
    }
    rd_kafka_conf_set_log_cb(conf, on_rdkafka_log);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!rk) {
        hb_error("rd_kafka_new: %s", errstr);
        goto done;
    }
    conf = NULL; /* now owned by the rd_kafka_t */

    mc = rd_kafka_mock_cluster_new(rk, o.brokers);
    if (!mc) {
        hb_error("cannot create the mock cluster");
        goto done;
    }
    if (create_topics(mc, &o, errstr, sizeof(errstr)) != 0) {
        hb_error("%s", errstr);
        goto done;
    }
    bootstraps = rd_kafka_mock_cluster_bootstraps(mc);
    if (wait_accepting(bootstraps, 10000, errstr, sizeof(errstr)) != 0) {
        hb_error("%s", errstr);
        goto done;
    }
    if (write_atomically(o.bootstrap_file, bootstraps, errstr, sizeof(errstr)) != 0) {
        hb_error("bootstrap file: %s", errstr);
        goto done;
    }
    file_written = 1;
    hb_log(HB_LOG_INFO, HB_KV("bootstrap_servers", bootstraps, "bootstrap_file", o.bootstrap_file),
           "devbroker ready: %d brokers, %d topics (local and test use only)", o.brokers,
           o.topics_cnt);

    while (!hb_stop_requested) {
        struct pollfd pfd = {pipefd[0], POLLIN, 0};
        char drain[64];
        if (poll(&pfd, 1, -1) < 0 && errno != EINTR) {
            hb_error("poll: %s", strerror(errno));
            break;
        }
        while (read(pipefd[0], drain, sizeof(drain)) > 0)
            ;
        if (want_down) {
            want_down = 0;
            set_brokers(mc, o.brokers, 0);
        }
        if (want_up) {
            want_up = 0;
            set_brokers(mc, o.brokers, 1);
        }
        if (want_produce_error) {
            want_produce_error = 0;
            rd_kafka_mock_push_request_errors(mc, 0 /* Produce */, 1,
                                              RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER);
            hb_info("the next Produce request fails with OUT_OF_ORDER_SEQUENCE_NUMBER");
        }
    }
    hb_info("stopping");
    rc = 0;

done:
    if (file_written && unlink(o.bootstrap_file) != 0)
        hb_warn("remove %s: %s", o.bootstrap_file, strerror(errno));
    if (mc)
        rd_kafka_mock_cluster_destroy(mc);
    if (rk)
        rd_kafka_destroy(rk);
    if (conf)
        rd_kafka_conf_destroy(conf);
    wake_fd = -1;
    if (pipefd[0] >= 0) {
        close(pipefd[0]);
        close(pipefd[1]);
    }
    for (int i = 0; i < o.owned_cnt; i++)
        free(o.owned[i]);
    if (rc == 0 && file_written)
        hb_info("stopped");
    return rc;
}
