/* main() of a long-running service (see hb_service.h). */
#include "hb_service.h"

#include <stdio.h>
#include <sys/resource.h>

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
 * ours. Raised to the hard limit, as Go programs do; a hard limit below
 * what the settings need stops the start instead, naming them. Returns 0,
 * or -1 with the reason. */
static int open_files_fit(const hb_config_t *cfg, rlim_t *raised_from, char *errstr,
                          size_t errstr_size) {
    struct rlimit rl;
    long long endpoints =
        cfg->max_connections > cfg->max_in_flight ? cfg->max_connections : cfg->max_in_flight;
    long long need = endpoints + FILES_BESIDES_ENDPOINTS;
    *raised_from = 0;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0; /* nothing known: nothing to say */
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < rl.rlim_max) {
        rlim_t was = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
            *raised_from = was;
        else if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
            return 0;
    }
    if (rl.rlim_cur == RLIM_INFINITY || (long long)rl.rlim_cur >= need)
        return 0;
    snprintf(errstr, errstr_size,
             "HOOKBRIDGE_MAX_CONNECTIONS (%lld) and HOOKBRIDGE_MAX_IN_FLIGHT (%lld) need %lld "
             "open files, but this process may open %llu (ulimit -n, RLIMIT_NOFILE): lower "
             "them or raise the limit",
             (long long)cfg->max_connections, (long long)cfg->max_in_flight, need,
             (unsigned long long)rl.rlim_cur);
    return -1;
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
    rlim_t files_was;
    if (open_files_fit(&cfg, &files_was, errstr, sizeof(errstr)) < 0) {
        fprintf(stderr, "%s: %s\n", name, errstr);
        hb_config_free(&cfg);
        return 2;
    }
    if (hb_log_level_parse(cfg.log_level, &lvl) < 0) /* validated by hb_config_load */
        lvl = HB_LOG_INFO;
    hb_log_init(component, lvl);
    if (files_was) {
        struct rlimit now;
        if (getrlimit(RLIMIT_NOFILE, &now) == 0)
            hb_info("open files limit raised from %llu to the hard limit, %llu",
                    (unsigned long long)files_was, (unsigned long long)now.rlim_cur);
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
    return r < 0 ? 1 : 0;
}
