/*
 * Signal handling: see hb_signal.h. Only async-signal-safe calls in the
 * handler (write, _exit).
 */
#include "hb_signal.h"

#include <string.h>
#include <unistd.h>

volatile sig_atomic_t hb_stop_requested = 0;
static int hb_signal_wake_fd = -1;

static void on_stop(int sig) {
    static const char msg[] = "{\"level\":\"warn\",\"msg\":\"second signal: exiting now\"}\n";
    (void)sig;
    if (hb_stop_requested) {
        (void)!write(STDOUT_FILENO, msg, sizeof(msg) - 1);
        _exit(1);
    }
    hb_stop_requested = 1;
    if (hb_signal_wake_fd >= 0)
        (void)!write(hb_signal_wake_fd, "s", 1);
}

void hb_signal_install(int wake_fd) {
    struct sigaction sa;
    hb_signal_wake_fd = wake_fd;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}
