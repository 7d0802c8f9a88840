/*
 * A delivery's signature without anything else: hb_sign_header over a
 * 900-byte body with one secret (as the dispatcher signs every delivery), and
 * with SECRETS secrets taken in turn (many subscriptions), and hb_uuid_derive
 * of a delivery id from an event uuid and a subscription id. Prints CPU ns per
 * call (CLOCK_PROCESS_CPUTIME_ID) for every round.
 * BENCH_SIGN_CALLS (default 200000) calls a round, BENCH_SIGN_ROUNDS
 * (default 3) rounds, BENCH_SIGN_SECRETS (default 1000) secrets for the
 * second figure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hb_sign.h"
#include "hb_sub.h"

static double cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static size_t env_size(const char *name, size_t dflt) {
    const char *v = getenv(name);
    return v && *v ? strtoul(v, NULL, 10) : dflt;
}

int main(void) {
    size_t calls = env_size("BENCH_SIGN_CALLS", 200000);
    size_t rounds = env_size("BENCH_SIGN_ROUNDS", 3);
    size_t nsecrets = env_size("BENCH_SIGN_SECRETS", 1000);
    hb_secret_t *secrets = calloc(nsecrets ? nsecrets : 1, sizeof(*secrets));
    char body[900], out[480], id[HB_UUID_LEN + 1];
    const char *parts[3] = {"6b1f7c1e-7a35-4f0e-9a55-0f4c9d7c1a2b",
                            "0f8b6a1e-3c2d-8e4f-9a0b-1c2d3e4f5a6b", NULL};
    unsigned long sum = 0;
    if (!secrets)
        return 1;
    memset(body, 'x', sizeof(body));
    for (size_t i = 0; i < (nsecrets ? nsecrets : 1); i++) {
        secrets[i].key_len = 32;
        for (size_t k = 0; k < 32; k++)
            secrets[i].key[k] = (uint8_t)(i * 31 + k * 7);
    }
    printf("bench_sign: %zu calls a round, %zu-byte body, 32-byte keys\n", calls, sizeof(body));
    for (size_t r = 0; r < rounds; r++) {
        double t0 = cpu_ns();
        for (size_t i = 0; i < calls; i++) {
            if (hb_sign_header(secrets, 1, 0, parts[1], 1764384600 + (int64_t)i, body, sizeof(body),
                               out, sizeof(out)) != 0)
                return 1;
            sum += (unsigned char)out[3];
        }
        printf("round %zu sign, one secret       %6.0f ns/call\n", r + 1,
               (cpu_ns() - t0) / (double)calls);
        t0 = cpu_ns();
        for (size_t i = 0; nsecrets && i < calls; i++) {
            if (hb_sign_header(&secrets[i % nsecrets], 1, 0, parts[1], 1764384600 + (int64_t)i,
                               body, sizeof(body), out, sizeof(out)) != 0)
                return 1;
            sum += (unsigned char)out[3];
        }
        printf("round %zu sign, %zu secrets in turn %6.0f ns/call\n", r + 1, nsecrets,
               (cpu_ns() - t0) / (double)calls);
        t0 = cpu_ns();
        for (size_t i = 0; i < calls; i++) {
            hb_uuid_derive(parts, 2, id);
            sum += (unsigned char)id[0];
        }
        printf("round %zu uuid_derive             %6.0f ns/call\n", r + 1,
               (cpu_ns() - t0) / (double)calls);
    }
    fprintf(stderr, "(checksum %lu)\n", sum);
    free(secrets);
    return 0;
}
