/*
 * Pacing libmicrohttpd's accept when the process is out of open files.
 *
 * When accept(2) fails with EMFILE or ENFILE, libmicrohttpd (0.9.75, Debian
 * 12's, and on) stops accepting until a connection closes, if one is open;
 * with none open nothing would ever resume it, so it logs "Hit process or
 * system resource limit at FIRST connection ... Will try busy waiting" and
 * goes straight back to poll(), where the listening socket, its connection
 * still waiting, is readable at once: its thread spun at 100 % of a core
 * for as long as the process stayed out of files, taking the core the
 * service needed to finish the work that would give descriptors back
 * (review 87: 81 % of a core while one /healthz probe waited). No option
 * changes that (MHD_OPTION_CONNECTION_LIMIT counts connections, not files),
 * so the logger that line goes through, which runs on the accepting thread
 * with no connection open on it, sleeps 100 ms: accept is tried ten times a
 * second, the probe answered within 100 ms of a descriptor coming free.
 * Any thread; no state.
 */
#include "hb_mhd.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MHD_STARVED_WORDS "resource limit at FIRST connection"

void hb_mhd_log(hb_log_limit_t *lim, const char *who, const char *fmt, va_list ap) {
    char msg[512];
    size_t n;
    struct timespec pause = {0, HB_MHD_STARVED_PAUSE_MS * 1000000L};
    vsnprintf(msg, sizeof(msg), fmt, ap);
    n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    hb_log_limited(lim, HB_LOG_WARN, NULL, "%s: %s", who, msg);
    if (!strstr(msg, MHD_STARVED_WORDS))
        return;
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR) /* the rest of it */
        ;
}
