/*
 * PostgreSQL connection helpers shared by the subscription store, the sealer,
 * the delivery log writer, hookbridge-migrate and hookbridge-secret (libpq
 * types stay out of this header). Any thread.
 */
#ifndef HB_PG_H
#define HB_PG_H

#include "hb_common.h"

/* hb_pg_connect: blocking connect with defaults the conninfo may
 * override (connect_timeout 10 s, TCP keepalives, tcp_user_timeout 15 s) and
 * ones it may not (client_encoding UTF8, application_name). On failure returns
 * NULL and a one-line reason naming host and port, e.g.
 * "database: connection refused (host 127.0.0.1 port 5432)"; never the
 * conninfo or the password. Caller PQfinish()es the result. Any thread.
 * Takes PostgreSQL's clock as the reference (hb_pg_clock_sample). */
struct pg_conn;
struct pg_result;
struct pg_conn *hb_pg_connect(const char *conninfo, const char *application_name, char *errstr,
                              size_t errstr_size) HB_MUSTCHECK;

/* hb_pg_connect without reading PostgreSQL's clock: for a tool that keeps
 * no time by it (hookbridge-migrate), so it has no word on this host's. */
struct pg_conn *hb_pg_connect_untimed(const char *conninfo, const char *application_name,
                                      char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* Reads PostgreSQL's clock over conn (idle, blocking: one round trip) and
 * takes it as the reference (hb_wall_ms); warns when this host's clock is
 * off. hb_pg_connect does it on each new connection. */
void hb_pg_clock_sample(struct pg_conn *conn);

/* 0 when libpq can parse conninfo (a URI or key=value string; anything else
 * is a database name) and the option values libpq checks only when it
 * connects (sslmode, target_session_attrs, port, connect_timeout, ...) are
 * ones it takes; else -1, with why naming the option, never a value: then no
 * connection attempt can succeed. */
int hb_pg_conninfo_problem(const char *conninfo, char *why, size_t whysz);

/* hb_pg_conninfo_problem(...) == 0. */
int hb_pg_conninfo_valid(const char *conninfo);

/* One-line reason for a failed command: the server's message with its SQLSTATE
 * ("... (SQLSTATE HB003)") when res carries one, else the connection's error,
 * trimmed to its first line. res may be NULL. A write refused with SQLSTATE
 * 25006 (read_only_sql_transaction) marks conn read-only from then on
 * (hb_pg_read_only): every failed command passes here. */
void hb_pg_error(struct pg_conn *conn, const struct pg_result *res, char *errstr,
                 size_t errstr_size);

/* "host H port P" of conn, for messages (never the password). */
void hb_pg_describe(const struct pg_conn *conn, char *out, size_t outsz);

/* Like hb_pg_error's fallback, for the last line of a libpq message that is
 * not an indented hint (libpq appends to the last command's message). */
void hb_pg_last_line(const char *msg, char *out, size_t outsz);

/* Why conn cannot take writes (a demoted or fenced primary, a hot standby,
 * a cloud's read-only mode on a full disk: their writes fail with SQLSTATE
 * 25006), e.g. "the server is a hot standby, not the primary", from what
 * the server last reported of itself; or, when it did not say (servers
 * before PostgreSQL 14 report neither in_hot_standby nor
 * default_transaction_read_only; a connection made read-only some other
 * way), "the server refused a write as read-only ..." once a write on conn
 * failed with 25006 (hb_pg_error). NULL when neither. Never waits. */
const char *hb_pg_read_only(const struct pg_conn *conn);

/* In every reason hb_pg_read_only gives (and so in hb_pg_fail's message on
 * such a server): a caller may look for it. */
#define HB_PG_NOT_PRIMARY "not the primary"

/* 1 when a writer should drop conn and connect again: lost, or its server
 * read-only (hb_pg_read_only). A multi-host URL with target_session_attrs
 * (or a DNS name moved by the failover) then finds the new primary; a
 * server still read-only is retried after the caller's back-off. */
int hb_pg_unusable(const struct pg_conn *conn);

/* The value conn was opened with for a conninfo keyword (the URL's, or a
 * default hb_pg_connect gave), into out ("" when unset); 1 when set. */
int hb_pg_conn_option(const struct pg_conn *conn, const char *keyword, char *out, size_t outsz);

/* For a connection that only reads (the subscription store's LISTEN): the
 * reason to connect again when the URL asked for a primary
 * (target_session_attrs=read-write or primary) and the server no longer is
 * one, as libpq would judge it at connect time; else NULL. */
const char *hb_pg_left_primary(const struct pg_conn *conn);

/* After a failed command: clears res (may be NULL) and says
 * "database: <what>: <reason>", or "database: <what>: connection lost
 * (<reason>); reconnecting" when PQstatus says the connection is gone, or
 * "database: <what>: the server is ..., not the primary (<reason>);
 * reconnecting" when it is read-only (the caller then drops it:
 * hb_pg_unusable). Returns -1. */
int hb_pg_fail(struct pg_conn *conn, struct pg_result *res, const char *what, char *errstr,
               size_t errstr_size);

/* 1 when the server has closed conn while it was idle (its socket reads an
 * end: idle_session_timeout, a pooler's or a firewall's idle limit, a
 * restart), with why: nothing was sent on it, so the caller may connect
 * again and send what it was about to, instead of failing it. 0 when it
 * looks fine; never waits. For connections that LISTEN to nothing (it
 * consumes what the socket holds). */
int hb_pg_idle_closed(struct pg_conn *conn, char *why, size_t whysz);

#endif
