/*
 * Shutdown signals for the daemons: SIGTERM/SIGINT set a flag the main loop
 * reads (installed with sigaction; the handler only counts), SIGPIPE is
 * ignored. The first signal asks for a graceful drain; a second one means
 * "exit now", which the handler does itself with _exit(1) because the loop
 * may be the thing that is stuck.
 */
#ifndef HB_SIGNAL_H
#define HB_SIGNAL_H

#include <signal.h>

extern volatile sig_atomic_t hb_stop_requested;

/* Installs the handlers. wake_fd >= 0: the handler also writes a byte to it
 * so a sleeping loop wakes at once. */
void hb_signal_install(int wake_fd);

#endif
