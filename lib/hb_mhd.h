/*
 * What every libmicrohttpd server of ours (the operations endpoint, the
 * ingest endpoint, the reference receiver) does with the library's own
 * diagnostics beyond logging them.
 */
#ifndef HB_MHD_H
#define HB_MHD_H

#include <stdarg.h>

#include "hb_common.h"
#include "hb_log.h"

/* libmicrohttpd's logger (MHD_OPTION_EXTERNAL_LOGGER) of every server of
 * ours, called with its format and arguments on the thread it logs from:
 * the line, its line breaks trimmed, at warn as "WHO: line", at most as
 * many as lim lets through. When it says accept(2) failed for want of open
 * files with no connection open, it then sleeps HB_MHD_STARVED_PAUSE_MS. */
void hb_mhd_log(hb_log_limit_t *lim, const char *who, const char *fmt, va_list ap) HB_PRINTF(3, 0);

#define HB_MHD_STARVED_PAUSE_MS 100

#endif
