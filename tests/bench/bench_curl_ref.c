/*
 * make bench: the reference client, what libcurl alone costs per request.
 *
 *     bench_curl_ref URL [CONNECTIONS [SECONDS [BODY_BYTES]]]
 *
 * One thread, one curl multi handle, CONNECTIONS (default 32) easy handles
 * POSTing a BODY_BYTES (default 900) JSON body to URL for SECONDS (default 5)
 * over keep-alive connections: each easy handle is re-added as soon as its
 * request finishes, so it keeps its connection and CONNECTIONS requests are
 * always in flight. The loop is curl's own (curl_multi_perform +
 * curl_multi_poll), the simplest client the multi interface allows, with no
 * work of ours between requests: scripts/bench.sh compares the dispatcher's
 * deliveries per CPU-second with this client's requests per CPU-second, both
 * against the same nginx in the same run (issue 12: target >= 0.7).
 *
 * The request is a delivery's (bench_delivery_headers); with the environment
 * BENCH_REF_HEADERS=minimal, two short header lines instead.
 *
 * Prints one line, "requests seconds requests_per_s cpu_seconds
 * requests_per_cpu_s failed" (CPU time: getrusage of this process, user +
 * system), and exits 1 when nothing succeeded.
 */
#include <curl/curl.h>

#include "bench_client.h"

/* The response body (nginx answers 204: none) is discarded. */
static size_t discard(char *ptr, size_t size, size_t nmemb, void *userdata) {
    (void)ptr;
    (void)userdata;
    return size * nmemb;
}

int main(int argc, char **argv) {
    CURL *easy[BENCH_MAX_CONNECTIONS];
    struct curl_slist *headers = NULL;
    CURLM *multi;
    char *body;
    long conns, seconds, body_bytes, requests = 0, failed = 0;
    double t0, c0, deadline, elapsed, cpu;
    int running = 0, active;

    bench_args_t args = bench_args("bench_curl_ref", argc, argv);
    conns = args.conns;
    seconds = args.seconds;
    body_bytes = args.body_bytes;
    body = args.body;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return 1;
    const char *which = getenv("BENCH_REF_HEADERS");
    const char *const *lines =
        which && strcmp(which, "minimal") == 0 ? bench_minimal_headers : bench_delivery_headers;
    for (; *lines; lines++) {
        struct curl_slist *more = curl_slist_append(headers, *lines);
        if (!more)
            return 1;
        headers = more;
    }
    multi = curl_multi_init();
    if (!multi)
        return 1;
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, conns);
    for (long i = 0; i < conns; i++) {
        easy[i] = curl_easy_init();
        if (!easy[i])
            return 1;
        curl_easy_setopt(easy[i], CURLOPT_URL, args.url);
        curl_easy_setopt(easy[i], CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(easy[i], CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(easy[i], CURLOPT_POSTFIELDSIZE, body_bytes);
        curl_easy_setopt(easy[i], CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(easy[i], CURLOPT_NOSIGNAL, 1L);
        curl_multi_add_handle(multi, easy[i]);
    }

    t0 = bench_now_s();
    c0 = bench_cpu_s();
    deadline = t0 + (double)seconds;
    active = (int)conns;
    while (active > 0) {
        CURLMsg *msg;
        int left;
        int stopping = bench_now_s() >= deadline;
        if (curl_multi_perform(multi, &running) != CURLM_OK)
            return 1;
        while ((msg = curl_multi_info_read(multi, &left))) {
            CURL *e = msg->easy_handle;
            long status = 0;
            if (msg->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
            if (msg->data.result == CURLE_OK && status >= 200 && status < 300)
                requests++;
            else
                failed++;
            curl_multi_remove_handle(multi, e);
            if (stopping)
                active--;
            else
                curl_multi_add_handle(multi, e); /* same handle: same connection */
        }
        if (active > 0 && curl_multi_poll(multi, NULL, 0, 100, NULL) != CURLM_OK)
            return 1;
    }
    elapsed = bench_now_s() - t0;
    cpu = bench_cpu_s() - c0;
    printf("%ld %.3f %.0f %.3f %.0f %ld\n", requests, elapsed, (double)requests / elapsed, cpu,
           cpu > 0 ? (double)requests / cpu : 0.0, failed);

    for (long i = 0; i < conns; i++)
        curl_easy_cleanup(easy[i]);
    curl_multi_cleanup(multi);
    curl_slist_free_all(headers);
    curl_global_cleanup();
    free(body);
    return requests > 0 ? 0 : 1;
}
