/* main() of a long-running service (see hb_service.h). */
#include "hb_service.h"

#include <stdio.h>

#include "hb_log.h"

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
    if (hb_log_level_parse(cfg.log_level, &lvl) < 0) /* validated by hb_config_load */
        lvl = HB_LOG_INFO;
    hb_log_init(component, lvl);

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
