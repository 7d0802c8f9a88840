/* Request deadlines (hb_cutoff) on a real libmicrohttpd server, in both of
 * the threading modes hookbridge runs one in: a client trickling its request
 * is cut at the deadline, clients sending whole requests are served on one
 * connection for longer than it, a request whose answer takes long is
 * not cut while it is answered, and a body arriving over a slow link at the
 * minimum rate or faster is not cut at the deadline, one slower is. With
 * room set, connections holding half a request make room for new ones,
 * oldest first, and a kept-alive connection and a body under way stay. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hb_common.h"
#include "hb_cutoff.h"

/* Long enough that a loaded machine (the sanitizer pass, six test workers on
 * two cores) keeps the fast client within it: it waits 150 ms between
 * requests. */
#define LIMIT_MS 600
/* bytes/s a body must keep up, once its headers are in */
#define RATE 2000

typedef struct {
    struct MHD_Daemon *d;
    hb_cutoff_t *c;
    int port;
} srv_t;

/* Answers "ok" on the second call (a response queued on the first, before
 * the request is known to be whole, makes libmicrohttpd close the
 * connection after it); GET /slow holds its request, then answers after
 * LIMIT_MS + 300 ms; POST /body reads a body as the ingest endpoint does. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    static const char body[] = "ok";
    struct MHD_Response *resp;
    enum MHD_Result ret;
    (void)cls;
    (void)method;
    (void)version;
    (void)upload_data;
    if (!*con_cls) {
        *con_cls = (void *)1;
        if (!strcmp(url, "/body"))
            hb_cutoff_body_start(conn);
        return MHD_YES;
    }
    if (*upload_data_size) {
        hb_cutoff_body_bytes(conn, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (!strcmp(url, "/slow")) {
        hb_cutoff_hold(conn);
        usleep((LIMIT_MS + 300) * 1000);
    }
    resp = MHD_create_response_from_buffer(2, (void *)body, MHD_RESPMEM_PERSISTENT);
    ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void srv_start(srv_t *s, unsigned flags, long long limit_ms) {
    s->c = hb_cutoff_new(limit_ms, RATE, "test");
    assert_non_null(s->c);
    s->d =
        MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_NOTIFY_CONNECTION,
                         hb_cutoff_notify, s->c, MHD_OPTION_NOTIFY_COMPLETED, hb_cutoff_completed,
                         NULL, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)30, MHD_OPTION_END);
    assert_non_null(s->d);
    s->port = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT)->port;
}

static void srv_stop(srv_t *s) {
    MHD_stop_daemon(s->d);
    hb_cutoff_free(s->c);
}

static int dial(int port) {
    struct sockaddr_in sin;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    return fd;
}

/* Reads until the server closes (1) or timeout_ms passes (0); the bytes read
 * are appended to buf when given. */
static int closed_within(int fd, int timeout_ms) {
    int64_t until = hb_mono_ms() + timeout_ms;
    char buf[512];
    for (;;) {
        int64_t left = until - hb_mono_ms();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0)
            return 0;
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
    }
}

/* One whole request on fd; returns 1 when "200" and "ok" came back. */
static int ask(int fd, const char *path) {
    char req[128], buf[1024];
    size_t got = 0;
    int64_t until = hb_mono_ms() + 5000;
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    if (send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t)strlen(req))
        return 0;
    while (hb_mono_ms() < until && got < sizeof(buf) - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        if (n <= 0)
            return 0;
        got += (size_t)n;
        buf[got] = '\0';
        if (strstr(buf, " 200 ") && strstr(buf, "\r\n\r\nok"))
            return 1;
    }
    return 0;
}

/* POSTs a body of 4000 bytes in pieces of `piece` bytes every 100 ms;
 * returns 1 when it was answered 200 "ok", 0 when the server closed the
 * connection first (and then how long after the headers in *cut_ms). */
static int post_slowly(int port, size_t piece, int64_t *cut_ms) {
    static const char head[] = "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n";
    char chunk[4000];
    int fd = dial(port), answered = 0;
    int64_t t0 = hb_mono_ms();
    memset(chunk, 'b', sizeof(chunk));
    *cut_ms = 0;
    if (send(fd, head, strlen(head), MSG_NOSIGNAL) != (ssize_t)strlen(head))
        fail_msg("cannot send the headers");
    for (size_t sent = 0; sent < sizeof(chunk) && !*cut_ms; sent += piece) {
        size_t n = sizeof(chunk) - sent < piece ? sizeof(chunk) - sent : piece;
        /* (not after the last piece: the answer is read below) */
        if (send(fd, chunk, n, MSG_NOSIGNAL) != (ssize_t)n ||
            (sent + n < sizeof(chunk) && closed_within(fd, 100)))
            *cut_ms = hb_mono_ms() - t0;
    }
    if (!*cut_ms) {
        char buf[1024];
        size_t got = 0;
        int64_t until = hb_mono_ms() + 5000;
        while (!answered && hb_mono_ms() < until && got < sizeof(buf) - 1) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            ssize_t n;
            if (poll(&p, 1, 100) <= 0)
                continue;
            n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
            if (n <= 0)
                break;
            got += (size_t)n;
            buf[got] = '\0';
            answered = strstr(buf, " 200 ") && strstr(buf, "\r\n\r\nok");
        }
    }
    close(fd);
    return answered;
}

static void run(unsigned flags) {
    srv_t s;
    srv_start(&s, flags, LIMIT_MS);

    /* trickling a byte every 50 ms: cut at the deadline, not later */
    int slow = dial(s.port);
    int64_t t0 = hb_mono_ms(), cut_at = 0;
    static const char line[] = "GET / HTTP/1.1\r\nX-Trickle: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for (size_t i = 0; i < sizeof(line) - 1 && !cut_at; i++) {
        if (send(slow, line + i, 1, MSG_NOSIGNAL) != 1 || closed_within(slow, 50))
            cut_at = hb_mono_ms();
    }
    if (!cut_at && closed_within(slow, 2000))
        cut_at = hb_mono_ms();
    assert_true(cut_at > 0);
    assert_true(cut_at - t0 >= LIMIT_MS - 50);
    assert_true(cut_at - t0 < LIMIT_MS + 1000);
    close(slow);
    assert_int_equal(hb_cutoff_count(s.c), 1);

    /* whole requests, each within the limit of the one before: served on one
     * connection for longer than the limit */
    int fd = dial(s.port);
    for (int i = 0; i < 5; i++) {
        if (!ask(fd, "/"))
            fail_msg("request %d of the fast connection not answered", i);
        usleep(150 * 1000);
    }
    /* an answer that takes longer than the limit: not cut while it is made */
    assert_true(ask(fd, "/slow"));
    /* and after it, idle past the limit: cut */
    assert_true(closed_within(fd, LIMIT_MS + 1000));
    close(fd);
    assert_int_equal(hb_cutoff_count(s.c), 2);

    /* a body at twice the minimum rate (4000 B/s), 1 s long, much longer
     * than the deadline: answered */
    int64_t cut_ms;
    if (!post_slowly(s.port, 400, &cut_ms))
        fail_msg("a body at twice the minimum rate was not answered (cut after %lld ms)",
                 (long long)cut_ms);
    assert_int_equal(hb_cutoff_count(s.c), 2);
    /* a body at a tenth of it (200 B/s): cut soon after the deadline, not
     * after the 20 s it would take */
    assert_false(post_slowly(s.port, 20, &cut_ms));
    assert_true(cut_ms >= LIMIT_MS - 50);
    assert_true(cut_ms < LIMIT_MS + 1500);
    assert_int_equal(hb_cutoff_count(s.c), 3);
    srv_stop(&s);
}

/* Room for 4: a kept-alive connection that had a request answered, a body
 * under way, then connections that send half a request, one by one. */
static void run_room(unsigned flags) {
    srv_t s;
    int half[10];
    static const char head[] = "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\nbb";
    srv_start(&s, flags, 10000); /* no deadline passes here */
    hb_cutoff_set_room(s.c, 4);
    int kept = dial(s.port);
    assert_true(ask(kept, "/"));
    int body = dial(s.port);
    assert_int_equal(send(body, head, strlen(head), MSG_NOSIGNAL), (ssize_t)strlen(head));
    for (int i = 0; i < 10; i++) {
        usleep(50 * 1000); /* read by the server: no bytes unread */
        half[i] = dial(s.port);
        assert_int_equal(send(half[i], "GET / HTTP/1.1\r\n", 16, MSG_NOSIGNAL), 16);
    }
    /* the 8 oldest of them closed, at once: not at the deadline */
    for (int i = 0; i < 8; i++)
        if (!closed_within(half[i], 300))
            fail_msg("the connection sending half a request %d was not closed", i);
    assert_int_equal(hb_cutoff_evicted(s.c), 8);
    assert_int_equal(hb_cutoff_open(s.c), 4);
    /* a new client sending its request at once is answered, and so is the
     * kept-alive connection; the body under way was not closed */
    int fresh = dial(s.port);
    assert_true(ask(fresh, "/"));
    assert_false(closed_within(half[9], 100));
    assert_true(closed_within(half[8], 300));
    assert_true(ask(kept, "/"));
    assert_false(closed_within(body, 100));
    assert_int_equal(hb_cutoff_evicted(s.c), 9);
    assert_int_equal(hb_cutoff_count(s.c), 0);
    close(fresh);
    close(kept);
    close(body);
    for (int i = 0; i < 10; i++)
        close(half[i]);
    srv_stop(&s);
}

static void test_room_internal_thread(void **state) {
    (void)state;
    run_room(MHD_USE_AUTO_INTERNAL_THREAD);
}

static void test_room_thread_per_connection(void **state) {
    (void)state;
    run_room(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ITC);
}

static void test_internal_thread(void **state) {
    (void)state;
    run(MHD_USE_AUTO_INTERNAL_THREAD);
}

static void test_thread_per_connection(void **state) {
    (void)state;
    run(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ITC);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_internal_thread),
        cmocka_unit_test(test_thread_per_connection),
        cmocka_unit_test(test_room_internal_thread),
        cmocka_unit_test(test_room_thread_per_connection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
