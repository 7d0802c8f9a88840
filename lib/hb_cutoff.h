/*
 * A deadline for each request a libmicrohttpd server reads: a connection
 * that has not sent a whole request within limit_ms of its start, or of the
 * end of its previous request, is closed. libmicrohttpd's own connection
 * timeout counts from the last byte received, so a client sending a byte
 * every few seconds (slowloris) kept its connection for good, and as many
 * such clients as the server's connection limit kept everyone else out.
 *
 * A request body may take longer (hb_cutoff_body_start, _bytes): a server
 * that has accepted a request's headers (authenticated, size announced
 * within bounds) gives its body limit_ms from then, and 1 s more for every
 * min_body_rate bytes that arrive, the way Apache's mod_reqtimeout does
 * (body=...,MinRate=...). So a large body over a slow link arrives, as long
 * as it keeps coming at min_body_rate on average, while a client trickling
 * its headers is still cut at limit_ms. (libmicrohttpd's own timeout still
 * closes a connection after its seconds without a byte.)
 *
 * Room: a server whose connections are few (a connection limit, a thread
 * each) sets hb_cutoff_set_room(n): a connection that opens with more than n
 * others open (and not cut) has the one that has waited longest for a
 * request closed, so that clients sending nothing or half a request cannot
 * hold every connection for the deadline, and a client that sends its
 * request at once is served however many of them there are (hb_cutoff.c:
 * Room says which connections are never closed so).
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

/* what names the server in the log line of a cut ("ingest", "httpd");
 * min_body_rate, in bytes per second: every that many bytes of a body buy
 * it a second beyond limit_ms (0: a body gets no more than limit_ms). */
hb_cutoff_t *hb_cutoff_new(long long limit_ms, long long min_body_rate, const char *what);
void hb_cutoff_free(hb_cutoff_t *c);
/* More than room connections open: the longest waiting is closed (0: never). */
void hb_cutoff_set_room(hb_cutoff_t *c, long room);
/* Counts the connections cut at their deadline and closed to make room in
 * hookbridge_http_connections_closed_total{port,reason} (hb_metrics_reset()
 * only after hb_cutoff_free()). */
void hb_cutoff_count_closes(hb_cutoff_t *c, const char *port);

void hb_cutoff_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                      enum MHD_ConnectionNotificationCode toe);
/* The headers of the request on conn are accepted and its body is to come:
 * it is due within limit_ms from now, and ... */
void hb_cutoff_body_start(struct MHD_Connection *conn);
/* ... n more of its bytes arrived: min_body_rate's share of a second later
 * for each (call it only for bytes the server keeps: bytes it discards
 * buy no time). */
void hb_cutoff_body_bytes(struct MHD_Connection *conn, size_t n);
/* The request on conn arrived whole: no deadline while it is answered. */
void hb_cutoff_hold(struct MHD_Connection *conn);
/* A request on conn was answered: the next one is due within the limit. */
void hb_cutoff_rearm(struct MHD_Connection *conn);
/* hb_cutoff_rearm as an MHD_OPTION_NOTIFY_COMPLETED callback, for a daemon
 * that does nothing else when a request ends. */
void hb_cutoff_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe);
/* Connections cut at their deadline so far. */
unsigned long hb_cutoff_count(hb_cutoff_t *c);
/* Connections closed so far to make room, and those open and not cut now. */
unsigned long hb_cutoff_evicted(hb_cutoff_t *c);
long hb_cutoff_open(hb_cutoff_t *c);

#endif
