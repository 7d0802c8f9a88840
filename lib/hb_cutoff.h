/*
 * A deadline for each request a libmicrohttpd server reads: a connection
 * that has not sent a whole request within limit_ms of its start, or of the
 * end of its previous request, is closed. libmicrohttpd's own connection
 * timeout counts from the last byte received, so a client sending a byte
 * every few seconds (slowloris) kept its connection for good, and as many
 * such clients as the server's connection limit kept everyone else out.
 *
 * Use: hb_cutoff_new() before MHD_start_daemon(), hb_cutoff_notify as its
 * MHD_OPTION_NOTIFY_CONNECTION (cls: the hb_cutoff_t), hb_cutoff_rearm()
 * in its MHD_OPTION_NOTIFY_COMPLETED callback, hb_cutoff_hold() where a
 * request has arrived whole and its answer may take long; hb_cutoff_free()
 * after MHD_stop_daemon(). Any thread.
 */
#ifndef HB_CUTOFF_H
#define HB_CUTOFF_H

#include <microhttpd.h>

typedef struct hb_cutoff_s hb_cutoff_t;

/* what names the server in the log line of a cut ("ingest", "httpd"). */
hb_cutoff_t *hb_cutoff_new(long long limit_ms, const char *what);
void hb_cutoff_free(hb_cutoff_t *c);

void hb_cutoff_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                      enum MHD_ConnectionNotificationCode toe);
/* The request on conn arrived whole: no deadline while it is answered. */
void hb_cutoff_hold(struct MHD_Connection *conn);
/* A request on conn was answered: the next one is due within the limit. */
void hb_cutoff_rearm(struct MHD_Connection *conn);
/* hb_cutoff_rearm as an MHD_OPTION_NOTIFY_COMPLETED callback, for a daemon
 * that does nothing else when a request ends. */
void hb_cutoff_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe);
/* Connections cut so far. */
unsigned long hb_cutoff_count(hb_cutoff_t *c);

#endif
