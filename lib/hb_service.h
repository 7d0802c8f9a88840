/*
 * main() of a long-running service (dispatcher, retrier): load the
 * configuration for the program, set up logging, build, run until
 * SIGTERM/SIGINT, tear down. Exit status: 0 clean stop (or --help), 1 could
 * not start or failed, 2 bad configuration or arguments.
 */
#ifndef HB_SERVICE_H
#define HB_SERVICE_H

#include "hb_config.h"

typedef struct hb_service_ops_s {
    void *(*create)(const hb_config_t *cfg, char *errstr, size_t errstr_size);
    int (*run)(void *svc);
    void (*destroy)(void *svc);
} hb_service_ops_t;

/* component: the log's "component" ("dispatcher"); program: HB_PROG_*. */
int hb_service_main(int argc, char **argv, unsigned program, const char *component,
                    const hb_service_ops_t *ops);

/* Raises the soft limit on open files (RLIMIT_NOFILE) to the hard one when
 * it is lower: every socket is an open file, and past the soft limit each new
 * one fails with EMFILE. Returns the limit now, 0 when there is none (or it
 * cannot be read); *raised_from is the soft limit before, 0 when unchanged. */
unsigned long long hb_open_files_raise(unsigned long long *raised_from);

#endif
