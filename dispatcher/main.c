/*
 * hookbridge-dispatcher: read configuration, build the dispatcher, run its
 * loop until SIGTERM/SIGINT, tear down. Everything else is in dispatcher.c.
 */
#include <stdio.h>

#include "dispatcher.h"
#include "hb_config.h"
#include "hb_log.h"

int main(int argc, char **argv) {
    hb_config_t cfg;
    hb_dispatcher_t *d;
    hb_log_level_t lvl = HB_LOG_INFO;
    char errstr[512];
    int r;

    r = hb_config_load(&cfg, HB_PROG_DISPATCHER, "hookbridge-dispatcher", argc, argv, errstr,
                       sizeof(errstr));
    if (r != 0) {
        if (r < 0)
            fprintf(stderr, "hookbridge-dispatcher: %s\n", errstr);
        hb_config_free(&cfg);
        return r < 0 ? 2 : 0;
    }
    if (cfg.args_cnt > 0) {
        fprintf(stderr, "hookbridge-dispatcher: unknown argument \"%s\" (see --help)\n",
                cfg.args[0]);
        hb_config_free(&cfg);
        return 2;
    }
    if (hb_log_level_parse(cfg.log_level, &lvl) < 0) /* validated by hb_config_load */
        lvl = HB_LOG_INFO;
    hb_log_init("dispatcher", lvl);

    d = hb_dispatcher_new(&cfg, errstr, sizeof(errstr));
    if (!d) {
        hb_error("cannot start: %s", errstr);
        hb_config_free(&cfg);
        return 1;
    }
    r = hb_dispatcher_run(d);
    hb_dispatcher_free(d);
    hb_config_free(&cfg);
    return r < 0 ? 1 : 0;
}
