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
#include <string.h>
#include <time.h>

#define MHD_STARVED_WORDS "resource limit at FIRST connection"

int hb_mhd_pace_accept(const char *line) {
    struct timespec pause = {0, HB_MHD_STARVED_PAUSE_MS * 1000000L};
    if (!line || !strstr(line, MHD_STARVED_WORDS))
        return 0;
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR) /* the rest of it */
        ;
    return 1;
}
