/* main() of a long-running service (see hb_service.h). */
#include "hb_service.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "hb_kafka.h"
#include "hb_log.h"

/* Open files besides the connections to endpoints: the health port's 80
 * connections, librdkafka's sockets and wake-up pipes (a few per broker, for
 * the consumer and the producer each), PostgreSQL's connections, resolver
 * threads' sockets, the standard streams. */
#define FILES_BESIDES_ENDPOINTS 256

/* Every connection to an endpoint is an open file, up to max_connections
 * (never fewer than max_in_flight). The soft limit is often 1024 (a shell,
 * containerd 2's containers) while the hard one is far higher: past the soft
 * one every new socket failed with EMFILE, so the health port stopped
 * answering (the liveness probe restarts the pod), Kafka and PostgreSQL
 * could not reconnect, and endpoints' circuits opened on failures that were
 * ours. Raised to the hard limit, as Go programs do (hb_open_files_raise);
 * a hard limit below what the settings need stops the start instead, naming
 * them. Returns 0, or -1 with the reason. */
unsigned long long hb_open_files_raise(unsigned long long *raised_from) {
    struct rlimit rl;
    *raised_from = 0;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0; /* nothing known: nothing to say */
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < rl.rlim_max) {
        rlim_t was = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
            *raised_from = (unsigned long long)was;
        else if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
            return 0;
    }
    return rl.rlim_cur == RLIM_INFINITY ? 0 : (unsigned long long)rl.rlim_cur;
}

static int open_files_fit(const hb_config_t *cfg, unsigned long long *raised_from, char *errstr,
                          size_t errstr_size) {
    long long endpoints =
        cfg->max_connections > cfg->max_in_flight ? cfg->max_connections : cfg->max_in_flight;
    long long need = endpoints + FILES_BESIDES_ENDPOINTS;
    unsigned long long limit = hb_open_files_raise(raised_from);
    if (!limit || (long long)limit >= need)
        return 0;
    snprintf(errstr, errstr_size,
             "HOOKBRIDGE_MAX_CONNECTIONS (%lld) and HOOKBRIDGE_MAX_IN_FLIGHT (%lld) need %lld "
             "open files, but this process may open %llu (ulimit -n, RLIMIT_NOFILE): lower "
             "them or raise the limit",
             (long long)cfg->max_connections, (long long)cfg->max_in_flight, need, limit);
    return -1;
}

#define MIB (1024.0 * 1024.0)
#define CGROUP_V2_MEMORY_MAX "/sys/fs/cgroup/memory.max"
#define CGROUP_V1_MEMORY_LIMIT "/sys/fs/cgroup/memory/memory.limit_in_bytes"

/* What a service holds besides the payload budget, as docs/operations.md
 * (Scaling) counts it: about 20 MiB, the events fetched ahead from Kafka
 * (queued.max.messages.kbytes: 16 MiB unless the passthrough sets it),
 * about 20 KiB per request in flight and up to 90 KiB per connection kept
 * open (HTTPS). */
static long long memory_besides_budget(const hb_config_t *cfg, long long *fetch_bytes) {
    long long fetch_kb = 16384;
    long long conns =
        cfg->max_connections > cfg->max_in_flight ? cfg->max_connections : cfg->max_in_flight;
    for (size_t i = 0; i < cfg->kafka_props_cnt; i++)
        if (!strcmp(cfg->kafka_props[2 * i], "queued.max.messages.kbytes")) {
            long long v = strtoll(cfg->kafka_props[2 * i + 1], NULL, 10);
            if (v > 0) /* librdkafka refused anything else */
                fetch_kb = v;
        }
    *fetch_bytes = fetch_kb * 1024;
    return 20 * 1024 * 1024 + *fetch_bytes + cfg->max_in_flight * 20 * 1024 + conns * 90 * 1024;
}

/* The container's memory limit in bytes from cfg->memory_limit_file (the
 * default file missing: cgroup v1's), 0 when there is none ("max", v1's
 * page-rounded 2^63) or the check is off (an empty setting, not in a
 * cgroup). *from names the file read. A file set by the operator that
 * cannot be read or holds no limit we understand is said in note. */
static long long memory_limit(const hb_config_t *cfg, const char **from, char *note,
                              size_t note_size) {
    const char *path = cfg->memory_limit_file;
    char buf[64];
    FILE *f;
    size_t n;
    long long v;
    note[0] = '\0';
    if (!*path)
        return 0;
    f = fopen(path, "r");
    if (!f && !strcmp(path, CGROUP_V2_MEMORY_MAX) && errno == ENOENT) {
        path = CGROUP_V1_MEMORY_LIMIT;
        f = fopen(path, "r");
        if (!f && errno == ENOENT)
            return 0; /* not in a cgroup with a memory controller */
    }
    if (!f) {
        snprintf(note, note_size,
                 "memory: cannot read %s (HOOKBRIDGE_MEMORY_LIMIT_FILE): %s; "
                 "the payload budget is not checked against the container's memory limit",
                 path, strerror(errno));
        return 0;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    while (n > 0 && strchr(" \t\r\n", buf[n - 1]))
        buf[--n] = '\0';
    if (!strcmp(buf, "max"))
        return 0;
    errno = 0;
    v = strtoll(buf, NULL, 10);
    if (n == 0 || buf[strspn(buf, "0123456789")] || errno || v <= 0) {
        snprintf(note, note_size,
                 "memory: %s (HOOKBRIDGE_MEMORY_LIMIT_FILE) holds no memory "
                 "limit (\"%.40s\"); the payload budget is not checked against it",
                 path, buf);
        return 0;
    }
    if (v >= (1LL << 62)) /* cgroup v1's "no limit" */
        return 0;
    *from = path;
    return v;
}

/* A payload budget the container cannot hold: the kernel kills the pod
 * (OOM) before the budget pauses consumption, and the restarted pod takes
 * the same backlog and dies again. Refused when the budget alone is not
 * below the limit; warned about (in warn) when it and what the service
 * holds besides come to more. Returns 0, or -1 with the reason. */
static int memory_fits(const hb_config_t *cfg, char *warn, size_t warn_size, char *errstr,
                       size_t errstr_size) {
    const char *from = NULL;
    long long fetch, besides = memory_besides_budget(cfg, &fetch);
    long long budget = cfg->max_pending_bytes;
    long long limit = memory_limit(cfg, &from, warn, warn_size), room;
    char advice[160];
    if (!limit || budget + besides <= limit)
        return 0;
    room = limit - besides;
    if (room >= 1024 * 1024) /* max_pending_bytes' least */
        snprintf(advice, sizeof(advice), "lower it to at most %.0f MiB (%lld) or raise the limit",
                 (double)(room / 1024 / 1024), room / (1024 * 1024) * (1024 * 1024));
    else
        snprintf(advice, sizeof(advice),
                 "raise the limit, or lower HOOKBRIDGE_MAX_CONNECTIONS and "
                 "HOOKBRIDGE_MAX_IN_FLIGHT as well as the budget");
    if (budget >= limit) {
        snprintf(errstr, errstr_size,
                 "HOOKBRIDGE_MAX_PENDING_BYTES (%.0f MiB) is not below the container's memory "
                 "limit, %.0f MiB (%s): the service would be OOM-killed before the budget could "
                 "pause consumption; it needs about %.0f MiB besides the budget: %s",
                 budget / MIB, limit / MIB, from, besides / MIB, advice);
        return -1;
    }
    snprintf(warn, warn_size,
             "memory: HOOKBRIDGE_MAX_PENDING_BYTES (%.0f MiB) and about %.0f MiB the service "
             "holds besides (20 MiB, %.0f MiB of events fetched ahead, %lld requests in flight, "
             "up to %lld connections) come to %.0f MiB, more than the container's memory limit, "
             "%.0f MiB (%s): it may be OOM-killed before the budget pauses consumption; %s",
             budget / MIB, besides / MIB, fetch / MIB, cfg->max_in_flight,
             cfg->max_connections > cfg->max_in_flight ? cfg->max_connections : cfg->max_in_flight,
             (budget + besides) / MIB, limit / MIB, from, advice);
    return 0;
}

int hb_service_main(int argc, char **argv, unsigned program, const char *component,
                    const hb_service_ops_t *ops) {
    hb_config_t cfg;
    hb_log_level_t lvl = HB_LOG_INFO;
    char errstr[512], name[64];
    void *svc;
    int r;

    snprintf(name, sizeof(name), "hookbridge-%s", component);
    r = hb_config_load(&cfg, program, name, argc, argv, errstr, sizeof(errstr));
    if (r != 0) {
        if (r < 0)
            fprintf(stderr, "%s: %s\n", name, errstr);
        hb_config_free(&cfg);
        return r < 0 ? 2 : 0;
    }
    if (cfg.args_cnt > 0) {
        fprintf(stderr, "%s: unknown argument \"%s\" (see --help)\n", name, cfg.args[0]);
        hb_config_free(&cfg);
        return 2;
    }
    if (!*cfg.database_url) {
        /* A configuration mistake like a missing key: status 2, one line. */
        fprintf(stderr,
                "%s: HOOKBRIDGE_DATABASE_URL is not set: the PostgreSQL connection string "
                "(a libpq URI or key=value string)\n",
                name);
        hb_config_free(&cfg);
        return 2;
    }
    unsigned long long files_was;
    if (open_files_fit(&cfg, &files_was, errstr, sizeof(errstr)) < 0) {
        fprintf(stderr, "%s: %s\n", name, errstr);
        hb_config_free(&cfg);
        return 2;
    }
    char memory_warning[600];
    if (memory_fits(&cfg, memory_warning, sizeof(memory_warning), errstr, sizeof(errstr)) < 0) {
        fprintf(stderr, "%s: %s\n", name, errstr);
        hb_config_free(&cfg);
        return 2;
    }
    if (hb_log_level_parse(cfg.log_level, &lvl) < 0) /* validated by hb_config_load */
        lvl = HB_LOG_INFO;
    hb_log_init(component, lvl);
    if (memory_warning[0])
        hb_warn("%s", memory_warning);
    if (files_was) {
        struct rlimit now;
        if (getrlimit(RLIMIT_NOFILE, &now) == 0)
            hb_info("open files limit raised from %llu to the hard limit, %llu", files_was,
                    (unsigned long long)now.rlim_cur);
    }

    svc = ops->create(&cfg, errstr, sizeof(errstr));
    if (!svc) {
        hb_error("cannot start: %s", errstr);
        hb_config_free(&cfg);
        return 1;
    }
    r = ops->run(svc);
    ops->destroy(svc);
    hb_config_free(&cfg);
    if (hb_kafka_abandoned()) /* its thread still runs: no exit(3) clean-up under it */
        _exit(r < 0 ? 1 : 0);
    return r < 0 ? 1 : 0;
}
