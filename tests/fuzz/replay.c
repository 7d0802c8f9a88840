/*
 * Replays a corpus through one fuzz target without libFuzzer: a plain main()
 * that reads every regular file under the given files and directories
 * (default: the whole seed corpus, tests/fuzz/corpus, compiled in as
 * HB_FUZZ_CORPUS) and calls LLVMFuzzerTestOneInput on its bytes. Built with
 * the normal compiler, it runs in `make test-unit`, so the seeds and every
 * regression input run under AddressSanitizer+UBSan in `make test-asan`.
 *
 * Every target gets every corpus, not just its own: a target must cope with
 * any bytes. A broken property aborts, and a SIGABRT handler names the file
 * that was running (sanitizers abort too when run with abort_on_error=1, as
 * make test-asan does; the other fatal signals are left to the sanitizers).
 * With -v each file is named before it runs. Finding no input at all is a
 * failure too, so a moved corpus cannot pass silently.
 *
 *   replay_<target> [-v] [FILE|DIR]...
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

#ifndef HB_FUZZ_CORPUS
#define HB_FUZZ_CORPUS "tests/fuzz/corpus"
#endif

static const char *prog;
static size_t replayed;
static const char *volatile current; /* the file being replayed */
static int verbose;

static void say(const char *s) {
    ssize_t w = write(STDERR_FILENO, s, strlen(s));
    (void)w;
}

static void on_fatal(int sig) {
    if (current) {
        say(prog);
        say(": while replaying ");
        say(current);
        say("\n");
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static int replay_file(const char *path, off_t size) {
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    size_t n;
    if (!f) {
        fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
        return -1;
    }
    buf = malloc(size > 0 ? (size_t)size : 1);
    if (!buf) {
        fclose(f);
        fprintf(stderr, "%s: %s: out of memory\n", prog, path);
        return -1;
    }
    n = fread(buf, 1, (size_t)size, f);
    fclose(f);
    if (n != (size_t)size) {
        free(buf);
        fprintf(stderr, "%s: %s: short read\n", prog, path);
        return -1;
    }
    if (verbose)
        fprintf(stderr, "%s: %s\n", prog, path);
    current = path;
    (void)LLVMFuzzerTestOneInput(buf, n);
    current = NULL;
    free(buf);
    replayed++;
    return 0;
}

static int replay_path(const char *path) {
    struct stat st;
    DIR *d;
    struct dirent *e;
    int r = 0;
    if (stat(path, &st) < 0) {
        fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
        return -1;
    }
    if (S_ISREG(st.st_mode))
        return replay_file(path, st.st_size);
    if (!S_ISDIR(st.st_mode))
        return 0;
    d = opendir(path);
    if (!d) {
        fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL && r == 0) {
        char *child;
        size_t len;
        if (e->d_name[0] == '.') /* ., .. and hidden files such as .gitkeep */
            continue;
        len = strlen(path) + strlen(e->d_name) + 2;
        child = malloc(len);
        if (!child) {
            r = -1;
            break;
        }
        snprintf(child, len, "%s/%s", path, e->d_name);
        r = replay_path(child);
        free(child);
    }
    closedir(d);
    return r;
}

int main(int argc, char **argv) {
    const char *slash = strrchr(argv[0], '/');
    int r = 0;
    prog = slash ? slash + 1 : argv[0];
    signal(SIGABRT, on_fatal);
    if (argc > 1 && !strcmp(argv[1], "-v")) {
        verbose = 1;
        argc--;
        argv++;
    }
    if (argc < 2)
        r = replay_path(HB_FUZZ_CORPUS);
    for (int i = 1; i < argc && r == 0; i++)
        r = replay_path(argv[i]);
    if (r == 0 && replayed == 0) {
        fprintf(stderr, "%s: no inputs found\n", prog);
        r = -1;
    }
    printf("%s: %zu inputs replayed, %s\n", prog, replayed, r == 0 ? "ok" : "FAILED");
    return r == 0 ? 0 : 1;
}
