/*
 * PostgreSQL connection helpers: connecting with our defaults, and one-line
 * error messages that never carry the conninfo or the password.
 *
 * The design is simple: every module that talks to PostgreSQL (the
 * subscription store, the sealer, the delivery log writer, hookbridge-migrate
 * and hookbridge-secret) connects through hb_pg_connect and turns failures
 * into messages through hb_pg_error, so a message names host and port, never
 * a password, whoever prints it. Stateless but for one mark a connection
 * carries (a write it had refused as read-only, hb_pg_read_only); any
 * thread, one connection on one thread at a time.
 */
#include "hb_pg.h"

#include <ctype.h>
#include <errno.h>
#include <libpq-events.h>
#include <libpq-fe.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "hb_log.h"
#include "hb_metrics.h"

/* Copies the first line of msg, skipping libpq's "connection to server ...
 * failed: " and the server's "FATAL:  " prefixes, and lower-casing the first
 * letter of a sentence ("Connection refused" -> "connection refused"). */
static void pg_first_line(const char *msg, char *out, size_t outsz) {
    const char *p = msg ? msg : "", *q;
    size_t n;
    while (*p == ' ' || *p == '\t' || *p == '\n')
        p++;
    n = strcspn(p, "\n");
    if ((q = strstr(p, "failed: ")) != NULL && (size_t)(q - p) < n) {
        n -= (size_t)(q + 8 - p);
        p = q + 8;
    }
    for (size_t i = 0; i < 3; i++) {
        static const char *const prefixes[] = {"FATAL:  ", "ERROR:  ", "error: "};
        size_t pl = strlen(prefixes[i]);
        if (n >= pl && !strncmp(p, prefixes[i], pl)) {
            p += pl;
            n -= pl;
        }
    }
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\r'))
        n--;
    if (n == 0) {
        p = "unknown error";
        n = strlen(p);
    }
    if (n >= outsz)
        n = outsz - 1;
    memmove(out, p, n); /* out may hold msg (pg_each_server) */
    out[n] = '\0';
    if (isupper((unsigned char)out[0]) && islower((unsigned char)out[1]))
        out[0] = (char)tolower((unsigned char)out[0]);
}

/* Like pg_first_line, for the last line that is not an indented hint. */
void hb_pg_last_line(const char *msg, char *out, size_t outsz) {
    const char *line = msg ? msg : "", *p;
    for (p = line; p && *p; p = strchr(p, '\n')) {
        if (*p == '\n')
            p++;
        if (*p && *p != '\t' && *p != ' ' && *p != '\n')
            line = p;
    }
    pg_first_line(line, out, outsz);
}

/* libpq's message after a multi-host URL found no server that would do
 * ("host1:p1,host2:p2/db?target_session_attrs=read-write" in a failover:
 * the old primary gone, the new one not promoted yet) has one line per
 * server tried, 'connection to server at "h", port p failed: <reason>'
 * (libpq 14+). With two or more, out gets each server's reason:
 * "connection refused (at "h1", port p1); server is in hot standby mode (at
 * "h2", port p2)", and 1 is returned; else 0 (one server: the caller's
 * first line and "host H port P" say it). */
static int pg_each_server(const char *msg, char *out, size_t outsz) {
    static const char lead[] = "connection to server ";
    const char *line = msg ? msg : "";
    int n = 0;
    size_t used = 0;
    out[0] = '\0';
    for (; *line; line += strcspn(line, "\n") + (line[strcspn(line, "\n")] == '\n')) {
        size_t len = strcspn(line, "\n");
        const char *f = strstr(line, " failed: ");
        char reason[200], where[160];
        int w;
        if (strncmp(line, lead, sizeof(lead) - 1) || !f || f >= line + len)
            continue;
        w = (int)(f - line - (sizeof(lead) - 1));
        snprintf(where, sizeof(where), "%.*s", w, line + sizeof(lead) - 1);
        snprintf(reason, sizeof(reason), "%.*s", (int)(line + len - f - 9), f + 9);
        pg_first_line(reason, reason, sizeof(reason));
        if (used < outsz)
            used += (size_t)snprintf(out + used, outsz - used, "%s%s (%s)", n ? "; " : "", reason,
                                     where);
        n++;
    }
    return n >= 2;
}

/* Replaces every occurrence of secret in buf with "***" (in place; never grows). */
static void pg_scrub(char *buf, const char *secret) {
    size_t sl = secret ? strlen(secret) : 0;
    char *p = buf;
    if (sl < 3)
        return;
    while ((p = strstr(p, secret)) != NULL) {
        memcpy(p, "***", 3);
        memmove(p + 3, p + sl, strlen(p + sl) + 1);
        p += 3;
    }
}

void hb_pg_describe(const struct pg_conn *conn, char *out, size_t outsz) {
    const char *host = conn ? PQhost(conn) : NULL, *port = conn ? PQport(conn) : NULL;
    hb_seterr(out, outsz, "host %s port %s", host && *host ? host : "(default)",
              port && *port ? port : "5432");
}

/* The connection's own mark (libpq's instance data for this procedure): a
 * write refused with SQLSTATE 25006 by a server that did not report being
 * read-only (hb_pg_read_only). The procedure itself only accepts every event. */
static int pg_event(PGEventId id, void *info, void *arg) {
    (void)id;
    (void)info;
    (void)arg;
    return 1;
}

static const char pg_refused[] = "the server refused a write as read-only (SQLSTATE 25006) "
                                 "without reporting it, " HB_PG_NOT_PRIMARY;

void hb_pg_error(struct pg_conn *conn, const struct pg_result *res, char *errstr,
                 size_t errstr_size) {
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    char line[512];
    if (conn && state && !strcmp(state, "25006")) /* read_only_sql_transaction */
        (void)PQsetInstanceData(conn, pg_event, (void *)pg_refused);
    if (primary) {
        pg_first_line(primary, line, sizeof(line));
        if (state)
            hb_seterr(errstr, errstr_size, "%s (SQLSTATE %s)", line, state);
        else
            hb_seterr(errstr, errstr_size, "%s", line);
        return;
    }
    pg_first_line(conn ? PQerrorMessage(conn) : "no connection", line, sizeof(line));
    hb_seterr(errstr, errstr_size, "%s", line);
}

/* The password in conninfo, if any (caller frees). Only conninfo strings that
 * parse are looked at; a bare database name has none. */
static char *pg_password(const char *conninfo) {
    PQconninfoOption *opts, *o;
    char *perr = NULL, *pw = NULL;
    opts = PQconninfoParse(conninfo, &perr);
    if (!opts) {
        PQfreemem(perr);
        return NULL;
    }
    for (o = opts; o->keyword; o++)
        if (!strcmp(o->keyword, "password") && o->val && *o->val)
            pw = hb_strdup(o->val);
    PQconninfoFree(opts);
    return pw;
}

/* Server notices and warnings (and a FATAL sent before the server closes the
 * connection) go to the log instead of libpq's default stderr printer. */
static void pg_notice(void *arg, const char *message) {
    char line[512];
    (void)arg;
    pg_first_line(message, line, sizeof(line));
    if (!strncmp(message, "NOTICE", 6) || !strncmp(message, "DEBUG", 5) ||
        !strncmp(message, "INFO", 4) || !strncmp(message, "LOG", 3))
        hb_log(HB_LOG_DEBUG, NULL, "database: %s", line);
    else
        hb_log(HB_LOG_WARN, NULL, "database: %s", line);
}

static int looks_like_conninfo(const char *s) {
    return strchr(s, '=') || !strncmp(s, "postgres://", 11) || !strncmp(s, "postgresql://", 13);
}

/* A URI whose user name or password holds a '/' or an '@' that is not
 * percent-encoded: libpq ends the host part at the first '/', and the user
 * info at the first '@', so postgresql://hb:Ab/cd@db/hookbridge has the host
 * "hb", the port "Ab" and the rest of the password, '@' and all, for the
 * database name, and postgresql://hb:Ab@cd@db/hookbridge the host "cd@db";
 * its errors quote them ("invalid integer value "Ab" for connection option
 * "port"", "could not translate host name "cd@db""). An '@' in the host part
 * after the user info, or after a host part that has none (before any '?'),
 * is that mistake (a database name with an '@' is written %40); such a
 * string is not valid. */
static int uri_userinfo_lost(const char *s) {
    const char *p = strstr(s, "://"), *auth_end, *path_end, *at;
    if (!p || (strncmp(s, "postgres://", 11) && strncmp(s, "postgresql://", 13)))
        return 0;
    p += 3;
    auth_end = p + strcspn(p, "/?");
    at = memchr(p, '@', (size_t)(auth_end - p));
    if (at) /* the user info ends at the first '@': no other may follow */
        return memchr(at + 1, '@', (size_t)(auth_end - at - 1)) != NULL;
    path_end = auth_end + strcspn(auth_end, "?");
    return memchr(auth_end, '@', (size_t)(path_end - auth_end)) != NULL;
}

/* An integer as libpq's parse_int_param reads one: spaces, a sign, digits,
 * spaces. */
static int pg_int_ok(const char *v, long lo, long hi) {
    char *end;
    long n;
    errno = 0;
    n = strtol(v, &end, 10);
    if (end == v || errno)
        return 0;
    while (isspace((unsigned char)*end))
        end++;
    return !*end && n >= lo && n <= hi;
}

/* nocase: compared as libpq compares the TLS versions (pg_strcasecmp:
 * "tlsv1.2" is taken); the other lists are compared exactly, as it does. */
static int pg_one_of(const char *v, const char *const *choices, int nocase) {
    for (; *choices; choices++)
        if (nocase ? !strcasecmp(v, *choices) : !strcmp(v, *choices))
            return 1;
    return 0;
}

/* The value of keyword in opts, NULL when not given. */
static const char *pg_opt(const PQconninfoOption *opts, const char *keyword) {
    for (; opts->keyword; opts++)
        if (!strcmp(opts->keyword, keyword))
            return opts->val;
    return NULL;
}

static int pg_elems(const char *v) {
    int n = 1;
    for (; *v; v++)
        n += *v == ',';
    return n;
}

/* What libpq 15 checks of the values together when it connects
 * (connectOptions2): the TLS version range, and as many ports (or one) as
 * hosts, as many host names as addresses. Only what the string gives is
 * judged: a host left to PGHOST or the default is not counted. 1: fine. */
static int pg_combination_ok(const PQconninfoOption *opts, char *why, size_t whysz) {
    const char *min = pg_opt(opts, "ssl_min_protocol_version"),
               *max = pg_opt(opts, "ssl_max_protocol_version"), *host = pg_opt(opts, "host"),
               *addr = pg_opt(opts, "hostaddr"), *port = pg_opt(opts, "port");
    int nhosts = addr && *addr ? pg_elems(addr) : host && *host ? pg_elems(host) : 0;
    /* the bounds are valid here: TLSv1 below all, then TLSv1.1 .. 1.3 in text order */
    if (min && *min && max && *max && strcasecmp(min, "TLSv1") != 0 &&
        (!strcasecmp(max, "TLSv1") || strcasecmp(min, max) > 0)) {
        hb_seterr(why, whysz,
                  "ssl_min_protocol_version is above ssl_max_protocol_version (no TLS version "
                  "is left)");
        return 0;
    }
    if (addr && *addr && host && *host && pg_elems(host) != nhosts) {
        hb_seterr(why, whysz, "%d host names for %d hostaddr values (as many of each)",
                  pg_elems(host), nhosts);
        return 0;
    }
    if (nhosts && port && *port && pg_elems(port) != 1 && pg_elems(port) != nhosts) {
        hb_seterr(why, whysz, "%d port numbers for %d hosts (one for all, or one per host)",
                  pg_elems(port), nhosts);
        return 0;
    }
    return 1;
}

int hb_pg_conninfo_problem(const char *conninfo, char *why, size_t whysz) {
    /* The values libpq checks only when it connects (libpq 15,
     * connectOptions2 and the integer options): a mistake there failed
     * every attempt, like an outage, for ever. */
    static const char *const sslmode[] = {"disable",   "allow",       "prefer", "require",
                                          "verify-ca", "verify-full", NULL};
    static const char *const on_off3[] = {"disable", "prefer", "require", NULL};
    static const char *const tsa[] = {"any",     "read-write",     "read-only", "primary",
                                      "standby", "prefer-standby", NULL};
    static const char *const tls[] = {"", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", NULL};
    static const struct {
        const char *key;
        const char *const *choices;
        int nocase;
    } enums[] = {{"sslmode", sslmode, 0},
                 {"gssencmode", on_off3, 0},
                 {"channel_binding", on_off3, 0},
                 {"target_session_attrs", tsa, 0},
                 {"ssl_min_protocol_version", tls, 1},
                 {"ssl_max_protocol_version", tls, 1}};
    static const char *const ints[] = {"connect_timeout",
                                       "keepalives",
                                       "keepalives_idle",
                                       "keepalives_interval",
                                       "keepalives_count",
                                       "tcp_user_timeout",
                                       NULL};
    PQconninfoOption *opts, *o;
    char *perr = NULL;
    int ok = 1;
    if (!conninfo || !looks_like_conninfo(conninfo))
        return 0;
    opts = uri_userinfo_lost(conninfo) ? NULL : PQconninfoParse(conninfo, &perr);
    PQfreemem(perr); /* it may quote part of the string */
    if (!opts) {
        hb_seterr(why, whysz,
                  "the connection string is not valid (a libpq URI or key=value string; "
                  "percent-encode special characters in the password)");
        return -1;
    }
    for (o = opts; ok && o->keyword; o++) {
        if (!o->val)
            continue;
        for (size_t i = 0; ok && i < sizeof(enums) / sizeof(enums[0]); i++)
            if (!strcmp(o->keyword, enums[i].key) &&
                !pg_one_of(o->val, enums[i].choices, enums[i].nocase)) {
                char list[160] = "";
                for (const char *const *c = enums[i].choices; *c; c++)
                    if (**c)
                        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                                 *list ? ", " : "", *c);
                hb_seterr(why, whysz, "%s is not one of %s", o->keyword, list);
                ok = 0;
            }
        for (const char *const *k = ints; ok && *k; k++)
            if (!strcmp(o->keyword, *k) && !pg_int_ok(o->val, INT_MIN, INT_MAX)) {
                hb_seterr(why, whysz, "%s is not an integer", o->keyword);
                ok = 0;
            }
        if (ok && !strcmp(o->keyword, "port")) {
            /* one per host, comma-separated; an empty one is the default */
            char *ports = strdup(o->val), *save = NULL;
            for (char *p = ports ? strtok_r(ports, ",", &save) : NULL; ok && p;
                 p = strtok_r(NULL, ",", &save))
                if (*p && !pg_int_ok(p, 1, 65535)) {
                    hb_seterr(why, whysz, "port is not a port number (1 to 65535)");
                    ok = 0;
                }
            free(ports);
        }
    }
    if (ok)
        ok = pg_combination_ok(opts, why, whysz);
    PQconninfoFree(opts);
    return ok ? 0 : -1;
}

int hb_pg_conninfo_valid(const char *conninfo) {
    char why[256];
    return hb_pg_conninfo_problem(conninfo, why, sizeof(why)) == 0;
}

/* How far off the endpoints' clocks a webhook-timestamp is refused (the
 * Standard Webhooks libraries' default tolerance) */
#define WEBHOOK_TOLERANCE_MS (5 * 60 * 1000)

/* Takes PostgreSQL's clock as the reference (hb_wall_ms): one round trip on
 * each new connection, so a reconnect also follows a step of the server's
 * clock and the monotonic clock's drift. Says so when this host's clock is
 * off; a failure changes nothing (the connection's first real statement
 * reports it). */
void hb_pg_clock_sample(PGconn *conn) {
    int64_t host = hb_host_wall_ms(), m0 = hb_ticks_ms(), m1, ref, skew = 0;
    PGresult *res = PQexec(conn, "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint");
    m1 = hb_ticks_ms();
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
        ref = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        int warn = ref > 0 && hb_clock_reference(ref, m0, m1, host, &skew);
        if (ref > 0)
            hb_metric_set(hb_metrics_gauge("hookbridge_clock_skew_seconds", NULL,
                                           "this host's wall clock minus PostgreSQL's, at the "
                                           "last database connection"),
                          (double)skew / 1000);
        /* which of the two is wrong cannot be told from here: when it is
         * PostgreSQL's, every webhook-timestamp is off by as much, and
         * Standard Webhooks receivers refuse one off by more than 5 minutes */
        if (warn)
            hb_warn("this host's clock is %.1f s %s PostgreSQL's: hookbridge times retries, "
                    "secret expiry and leases by PostgreSQL's clock, but the logs of other "
                    "programs here, and Kafka's producers outside hookbridge, are off by as "
                    "much; check NTP on this host (docs/operations.md, Clocks)%s",
                    (double)(skew < 0 ? -skew : skew) / 1000, skew < 0 ? "behind" : "ahead of",
                    skew >= WEBHOOK_TOLERANCE_MS || skew <= -WEBHOOK_TOLERANCE_MS
                        ? "; if this host's clock is right, PostgreSQL's is off, and so is "
                          "every webhook-timestamp: receivers refuse one more than 5 minutes "
                          "off"
                        : "");
    }
    PQclear(res);
}

static struct pg_conn *pg_connect(const char *conninfo, const char *application_name,
                                  int sample_clock, char *errstr, size_t errstr_size) {
    /* Keywords before dbname are defaults the conninfo may override; the ones
     * after it are not negotiable. */
    const char *keys[] = {"connect_timeout",  "keepalives",
                          "keepalives_idle",  "keepalives_interval",
                          "keepalives_count", "tcp_user_timeout",
                          "dbname",           "client_encoding",
                          "application_name", NULL};
    const char *vals[] = {"10",
                          "1",
                          "30",
                          "10",
                          "3",
                          "15000",
                          conninfo ? conninfo : "",
                          "UTF8",
                          application_name ? application_name : "hookbridge",
                          NULL};
    char why[512], where[300];
    char *pw = NULL, *perr = NULL;
    PGconn *conn;

    if (!conninfo)
        conninfo = "";
    if (looks_like_conninfo(conninfo)) {
        PQconninfoOption *opts =
            uri_userinfo_lost(conninfo) ? NULL : PQconninfoParse(conninfo, &perr);
        if (!opts) {
            /* libpq's message may quote part of the string: do not repeat it. */
            PQfreemem(perr);
            hb_seterr(errstr, errstr_size,
                      "database: the connection string is not valid "
                      "(check HOOKBRIDGE_DATABASE_URL)");
            return NULL;
        }
        PQconninfoFree(opts);
        pw = pg_password(conninfo);
    }
    conn = PQconnectdbParams(keys, vals, 1);
    if (!conn) {
        hb_seterr(errstr, errstr_size, "database: out of memory");
        goto fail;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        char each[900];
        if (pg_each_server(PQerrorMessage(conn), each, sizeof(each))) {
            pg_scrub(each, pw);
            hb_seterr(errstr, errstr_size, "database: no server would do: %s", each);
            PQfinish(conn);
            conn = NULL;
            goto fail;
        }
        pg_first_line(PQerrorMessage(conn), why, sizeof(why));
        pg_scrub(why, pw);
        hb_pg_describe(conn, where, sizeof(where));
        pg_scrub(where, pw);
        hb_seterr(errstr, errstr_size, "database: %s (%s)", why, where);
        PQfinish(conn);
        conn = NULL;
    } else {
        PQsetNoticeProcessor(conn, pg_notice, NULL);
        /* before any result: libpq copies a connection's procedures into each */
        (void)PQregisterEventProc(conn, pg_event, "hookbridge", NULL);
        if (sample_clock)
            hb_pg_clock_sample(conn);
    }
fail:
    if (pw) {
        OPENSSL_cleanse(pw, strlen(pw));
        free(pw);
    }
    return conn;
}

struct pg_conn *hb_pg_connect(const char *conninfo, const char *application_name, char *errstr,
                              size_t errstr_size) {
    return pg_connect(conninfo, application_name, 1, errstr, errstr_size);
}

struct pg_conn *hb_pg_connect_untimed(const char *conninfo, const char *application_name,
                                      char *errstr, size_t errstr_size) {
    return pg_connect(conninfo, application_name, 0, errstr, errstr_size);
}

/* A server parameter as the server last reported it: "on" is 1. */
static int pg_reported_on(const struct pg_conn *conn, const char *name) {
    const char *v = conn ? PQparameterStatus(conn, name) : NULL;
    return v && !strcmp(v, "on");
}

const char *hb_pg_read_only(const struct pg_conn *conn) {
    if (!conn || PQstatus(conn) != CONNECTION_OK)
        return NULL;
    if (pg_reported_on(conn, "in_hot_standby"))
        return "the server is a hot standby, " HB_PG_NOT_PRIMARY;
    if (pg_reported_on(conn, "default_transaction_read_only"))
        return "the server is read-only (default_transaction_read_only), " HB_PG_NOT_PRIMARY;
    return PQinstanceData(conn, pg_event); /* a write refused (hb_pg_error), or NULL */
}

int hb_pg_unusable(const struct pg_conn *conn) {
    return !conn || PQstatus(conn) == CONNECTION_BAD || hb_pg_read_only(conn) != NULL;
}

int hb_pg_conn_option(const struct pg_conn *conn, const char *keyword, char *out, size_t outsz) {
    PQconninfoOption *opts = conn ? PQconninfo((struct pg_conn *)conn) : NULL;
    const char *v = opts ? pg_opt(opts, keyword) : NULL;
    int set = v && *v;
    snprintf(out, outsz, "%s", set ? v : "");
    PQconninfoFree(opts);
    return set;
}

const char *hb_pg_left_primary(const struct pg_conn *conn) {
    char tsa[32];
    if (!hb_pg_read_only(conn)) /* the usual case: no options to copy */
        return NULL;
    if (!hb_pg_conn_option(conn, "target_session_attrs", tsa, sizeof(tsa)))
        return NULL;
    if (!strcmp(tsa, "read-write") ||
        (!strcmp(tsa, "primary") && pg_reported_on(conn, "in_hot_standby")))
        return hb_pg_read_only(conn);
    return NULL;
}

int hb_pg_fail(struct pg_conn *conn, struct pg_result *res, const char *what, char *errstr,
               size_t errstr_size) {
    char why[512];
    const char *ro;
    hb_pg_error(conn, res, why, sizeof(why)); /* first: it marks a refused write */
    ro = hb_pg_read_only(conn);
    PQclear(res);
    if (PQstatus(conn) == CONNECTION_BAD)
        hb_seterr(errstr, errstr_size, "database: %s: connection lost (%s); reconnecting", what,
                  why);
    else if (ro)
        hb_seterr(errstr, errstr_size, "database: %s: %s (%s); reconnecting", what, ro, why);
    else
        hb_seterr(errstr, errstr_size, "database: %s: %s", what, why);
    return -1;
}

int hb_pg_idle_closed(struct pg_conn *conn, char *why, size_t whysz) {
    /* The server's last words (an error, "terminating connection due to
     * idle-session timeout") and the end come as two reads: read until the
     * socket holds nothing more (a few rounds: an idle connection gets
     * nothing else but the odd notice). */
    for (int round = 0; conn && PQstatus(conn) == CONNECTION_OK && round < 4; round++) {
        struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
        if (pfd.fd < 0 || poll(&pfd, 1, 0) <= 0)
            return 0;
        if (!PQconsumeInput(conn) || PQstatus(conn) != CONNECTION_OK) {
            hb_pg_last_line(PQerrorMessage(conn), why, whysz);
            return 1;
        }
    }
    return 0;
}
