/*
 * Memory per open connection of the HTTP engine (hb_http), alone.
 *
 *     bench_tlsconn SCHEME PORT HOSTS [CA_FILE|-] [ROUNDS]
 *
 * One hb_http engine (max_in_flight = HOSTS, one connection per host, private
 * networks allowed) sends one GET to each of HOSTS loopback hosts
 * SCHEME://127.79.a.b:PORT/hook (the addresses of scripts/bench_lib.sh's
 * bench_loopback_addresses 127.79 HOSTS), ROUNDS times (default 2): the first
 * round opens a connection to every host, the next ones reuse them. The server
 * must keep idle connections open meanwhile. CA_FILE is the engine's ca_file;
 * "-" or absent: none, the system CA bundle, as in production (the server's
 * certificate must then verify against the system bundle, or every request
 * fails: which the output shows).
 *
 * After each round it prints one line:
 *   round N: ok OK failed F; sockets S; RSS +R KiB (R/S per socket);
 *   heap in use +H KiB (H/S per socket)
 * the deltas from before the first request (RSS: /proc/self/statm; heap:
 * mallinfo2, every arena, mmapped chunks included), and after the last round
 * the same once more after malloc_trim(0). Exits 1 when nothing succeeded.
 * tests/e2e/test_tls.py runs it with a bound; scripts/bench_https.sh reports
 * the dispatcher's own figure.
 */
#include <dirent.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hb_http.h"

typedef struct {
    long ok, failed;
    char first_error[256];
} tally_t;

static void on_done(const hb_http_result_t *res, void *opaque) {
    tally_t *t = opaque;
    if (res->http_status >= 200 && res->http_status < 300) {
        t->ok++;
    } else {
        if (t->failed++ == 0)
            snprintf(t->first_error, sizeof(t->first_error), "%d %.200s", res->http_status,
                     res->error);
    }
}

static long rss_kib(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = 0;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static long heap_kib(void) {
    struct mallinfo2 mi = mallinfo2();
    return (long)((mi.uordblks + mi.hblkhd) / 1024);
}

static long sockets(void) {
    long n = 0;
    char path[300], target[64];
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        snprintf(path, sizeof(path), "/proc/self/fd/%.256s", e->d_name);
        ssize_t len = readlink(path, target, sizeof(target) - 1);
        if (len > 0) {
            target[len] = '\0';
            n += strncmp(target, "socket:", 7) == 0;
        }
    }
    closedir(d);
    return n;
}

static void report(const char *what, long rss0, long heap0, long socks0) {
    long s = sockets() - socks0, r = rss_kib() - rss0, h = heap_kib() - heap0;
    printf("%s: sockets %ld; RSS %+ld KiB (%.1f KiB per socket); heap in use %+ld KiB "
           "(%.1f KiB per socket)\n",
           what, s, r, s > 0 ? (double)r / (double)s : 0.0, h, s > 0 ? (double)h / (double)s : 0.0);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench_tlsconn SCHEME PORT HOSTS [CA_FILE|-] [ROUNDS]\n");
        return 2;
    }
    const char *scheme = argv[1], *port = argv[2];
    long hosts = strtol(argv[3], NULL, 10);
    const char *ca = argc > 4 && strcmp(argv[4], "-") != 0 ? argv[4] : NULL;
    long rounds = argc > 5 ? strtol(argv[5], NULL, 10) : 2;
    if (hosts < 1 || hosts > 62500 || rounds < 1) {
        fprintf(stderr, "bench_tlsconn: HOSTS 1..62500, ROUNDS >= 1\n");
        return 2;
    }
    char errstr[256];
    hb_http_conf_t conf = {
        .max_in_flight = hosts,
        .max_host_connections = 1,
        .connect_timeout_ms = 10000,
        .allow_http = 1,
        .allow_private_networks = 1,
        .ca_file = ca,
    };
    hb_http_t *h = hb_http_new(&conf, errstr, sizeof(errstr));
    if (!h) {
        fprintf(stderr, "bench_tlsconn: %s\n", errstr);
        return 2;
    }
    long rss0 = rss_kib(), heap0 = heap_kib(), socks0 = sockets();
    long total_ok = 0;
    for (long round = 1; round <= rounds; round++) {
        tally_t t = {0};
        for (long i = 0; i < hosts; i++) {
            char url[128];
            snprintf(url, sizeof(url), "%s://127.79.%ld.%ld:%s/hook", scheme, i / 250, i % 250 + 1,
                     port);
            hb_http_req_t req = {
                .method = HB_HTTP_GET,
                .url = url,
                .timeout_ms = 30000,
                .max_response_bytes = 1024,
                .done = on_done,
                .opaque = &t,
            };
            hb_http_submit(h, &req);
        }
        while (t.ok + t.failed < hosts)
            hb_http_run(h, 1000, -1);
        total_ok += t.ok;
        char what[400];
        snprintf(what, sizeof(what), "round %ld: ok %ld failed %ld%s%s", round, t.ok, t.failed,
                 t.failed ? ", first: " : "", t.first_error);
        report(what, rss0, heap0, socks0);
        fflush(stdout);
    }
    malloc_trim(0);
    report("after malloc_trim", rss0, heap0, socks0);
    if (!getenv("BENCH_TLSCONN_KEEP")) /* set: exit with the connections open (heaptrack) */
        hb_http_free(h);
    return total_ok > 0 ? 0 : 1;
}
