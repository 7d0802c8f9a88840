/*
 * What every libmicrohttpd server of ours (the operations endpoint, the
 * ingest endpoint, the reference receiver) does with the library's own
 * diagnostics beyond logging them.
 */
#ifndef HB_MHD_H
#define HB_MHD_H

/* Call with each line libmicrohttpd logs (MHD_OPTION_EXTERNAL_LOGGER), on
 * the thread it logs from. When the line says accept(2) failed for want of
 * open files with no connection open, sleeps HB_MHD_STARVED_PAUSE_MS and
 * returns 1; else returns 0 at once. */
int hb_mhd_pace_accept(const char *line);

#define HB_MHD_STARVED_PAUSE_MS 100

#endif
