/* hookbridge-retrier: everything is in retrier.c. */
#include "retrier.h"
#include "hb_service.h"

static void *create(const hb_config_t *cfg, char *errstr, size_t errstr_size) {
    return hb_retrier_new(cfg, errstr, errstr_size);
}
static int run(void *svc) {
    return hb_retrier_run(svc);
}
static void destroy(void *svc) {
    hb_retrier_free(svc);
}

int main(int argc, char **argv) {
    static const hb_service_ops_t ops = {create, run, destroy};
    return hb_service_main(argc, argv, HB_PROG_RETRIER, "retrier", &ops);
}
