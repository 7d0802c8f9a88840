/*
 * hookbridge-migrate: applies the SQL of schema hookbridge - the ordered
 * migrations (state) and the re-applied files of functions (code).
 *
 *   hookbridge-migrate up     [--dir DIR]   apply what is pending, in order
 *   hookbridge-migrate status [--dir DIR]   list each migration: applied or pending
 *   hookbridge-migrate topics [--check]     create the Kafka topics (events, delay
 *                                           tiers, dead letters) that are missing and
 *                                           report drift on the others (hb_topics);
 *                                           --check creates nothing
 *
 * Two kinds of file (migrations/README.md):
 *
 *   DIR/NNNN_name.sql  a migration (NNNN: its version, digits): tables,
 *       columns, indexes, seed rows - state. Each is applied once, in its own
 *       transaction together with its row in hookbridge.hookbridge_migrations
 *       (version, name, sha256 checksum, applied_at), so a migration is
 *       either wholly applied and recorded or not at all; a file must
 *       therefore not contain BEGIN/COMMIT itself.
 *   DIR/../sql/NAME.sql code: every function, view, trigger and grant, each
 *       defined once, written to be re-applied (CREATE OR REPLACE). When one
 *       of them is new or its checksum differs from the one recorded in
 *       hookbridge.hookbridge_sql_files, or a migration was applied, `up`
 *       applies all of them, in name order, after the migrations and in the
 *       transaction of the last one (or a transaction of their own when no
 *       migration was pending), and records their checksums. All of them,
 *       not only the changed one: a later file (the privileges) covers what
 *       an earlier one defines. CREATE OR REPLACE cannot change a function's
 *       arguments or result type, nor drop a view's column: such a change
 *       comes with a migration that drops the old object (DROP FUNCTION IF
 *       EXISTS with the old signature), and the SQL file defines the new one.
 *       No sql/ directory beside DIR: only migrations are applied.
 *
 * `up` holds a session advisory lock (MIGRATE_LOCK_KEY) for its whole run, so
 * replicas started together (Kubernetes init containers) apply each migration
 * once. Each transaction runs with lock_timeout = migrate_lock_timeout: a
 * statement waiting for a table lock queues every later request for that
 * table (the services' writes) behind it, so on a timeout (or a deadlock)
 * the step is rolled back, the sessions holding hookbridge's tables are
 * named, and it is tried again until migrate_lock_wait has passed
 * (apply_step).
 *
 * Before applying anything both commands check history against the files and
 * refuse (exit 1, naming the file) when an applied migration's checksum
 * changed, an applied version's file is missing, or a pending file sorts
 * before an applied one: the database would no longer match what the files
 * describe. Applied versions after the last file are a newer release's (an
 * image rolled back): `up` then applies nothing, SQL files included, and
 * exits 0. The one exception is the layout before 0001_baseline.sql: a
 * database that applied exactly 0001_init .. 0008_deactivation_epoch (their
 * names and checksums are below) holds the baseline's state, and `up` records
 * 0001_baseline.sql in their place (tests/e2e/test_migrate_layout.py).
 *
 * The migrations directory: --dir DIR, else $HOOKBRIDGE_MIGRATIONS_DIR, else
 * <directory of this binary>/../migrations when it exists (a source tree:
 * bin/hookbridge-migrate), else /usr/share/hookbridge/migrations (packages and
 * the container image).
 *
 * `topics` needs no database, only the Kafka settings (HOOKBRIDGE_KAFKA_BROKERS
 * and the HOOKBRIDGE_KAFKA_* passthrough for TLS/SASL) and the topic settings.
 *
 * Exit status: 0 ok, 1 error; `topics --check`: 2 when a topic is missing or
 * drifted (`topics` without --check reports drift and exits 0). Messages never contain the
 * connection string or the password (hb_pg_connect describes host and port only).
 */
#include <dirent.h>
#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hb_config.h"
#include "hb_log.h"
#include "hb_pg.h"
#include "hb_topics.h"

#define PROG "hookbridge-migrate"
#define MIGRATE_LOCK_KEY "7526676533394417767" /* "hookbrdg" as a bigint */
#define MIGRATE_SYSTEM_DIR "/usr/share/hookbridge/migrations"

typedef struct {
    long version;
    char *file;      /* "0001_baseline.sql", "10_checks.sql" */
    char *name;      /* "baseline"; an SQL file: its file name */
    char *sql;       /* contents, NUL-terminated */
    char sha256[65]; /* hex */
    /* from the database */
    int applied;
    int changed;    /* applied with another checksum */
    int old_layout; /* 0001_baseline.sql: recorded as 0001..0008 of the earlier layout */
    char applied_at[40];
} mig_t;

typedef struct {
    mig_t *v;
    size_t n;
} mig_list_t;

/* The SQL files (DIR/../sql) and what the database recorded of them. */
typedef struct {
    char dir[PATH_MAX];
    int exists;
    int table_exists;
    mig_list_t files; /* by name; version 0 */
    char **gone;      /* recorded, but no longer a file */
    size_t gone_n;
} sql_set_t;

typedef struct {
    long version;
    char *name;
    char *checksum;
    char *applied_at;
} mig_row_t;

/* The migrations before 0001_baseline.sql, whose end state the baseline
 * holds (tests/fixtures/migrations-0008 has the files). */
static const struct {
    const char *name, *sha256;
} old_layout[] = {
    {"init", "dd0a168bb6111948fdabe7f2a7f5fc78a7fad7aaadbd477d25a4d3155baef2df"},
    {"filter", "b145f81ce143ff3097bb43525c9af5a63ce657a1860741aef50ff3e1926ad31e"},
    {"lifecycle", "679f8f4743d28fb6192ee31c4071b7e3d4ed8bfc477a71826727b404447efb07"},
    {"payload_options", "9be7bba2e3d5a377f7c87fab5740b9eebe06df000d870bc76f3b92babd63fa0f"},
    {"retry", "cd66c099c46c0f1403b40c059a8da76c24d2d1b86e10c61c077012ac127e8761"},
    {"roles", "d2fba7136fe840acff78e474ff63c9e87ca8c8ae2e25303cc4803fa4ce516a05"},
    {"sealed_secrets", "2c58418492474cce5658f0a75453f39635d5e4ff11eae30ca153da1833bc27e0"},
    {"deactivation_epoch", "ecfd76090a32f232f67e58d5dcf9db8f5b52cec3d43fc6dde4997b61f718f2c3"},
};
#define OLD_LAYOUT_N ((long)(sizeof(old_layout) / sizeof(old_layout[0])))

static void mig_list_free(mig_list_t *l) {
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].file);
        free(l->v[i].name);
        free(l->v[i].sql);
    }
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void sha256_hex(const void *data, size_t len, char out[65]) {
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
        memset(out, '0', 64);
        out[64] = '\0';
        return;
    }
    for (unsigned int i = 0; i < 32; i++) {
        out[i * 2] = hex[md[i] >> 4];
        out[i * 2 + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

static int read_file(const char *path, char **out, size_t *len, char *errstr, size_t errstr_size) {
    FILE *fp = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0, r;
    if (!fp) {
        hb_seterr(errstr, errstr_size, "%s: %s", path, strerror(errno));
        return -1;
    }
    do {
        if (cap - n < 8192) {
            cap = cap ? cap * 2 : 16384;
            buf = hb_realloc(buf, cap + 1);
        }
        r = fread(buf + n, 1, cap - n, fp);
        n += r;
    } while (r > 0);
    if (ferror(fp)) {
        hb_seterr(errstr, errstr_size, "%s: read error", path);
        fclose(fp);
        free(buf);
        return -1;
    }
    fclose(fp);
    if (!buf)
        buf = hb_malloc(1);
    buf[n] = '\0';
    if (memchr(buf, '\0', n)) {
        hb_seterr(errstr, errstr_size, "%s: contains a NUL byte", path);
        free(buf);
        return -1;
    }
    *out = buf;
    *len = n;
    return 0;
}

/* "0001_init.sql" -> version 1, name "init". Other names are not migrations. */
static int parse_name(const char *file, long *version, char **name) {
    size_t len = strlen(file), digits = strspn(file, "0123456789");
    char *end;
    if (digits == 0 || digits > 9 || file[digits] != '_' || len < digits + 6 ||
        strcmp(file + len - 4, ".sql"))
        return -1;
    errno = 0;
    *version = strtol(file, &end, 10);
    if (errno || end != file + digits)
        return -1;
    *name = hb_strndup(file + digits + 1, len - digits - 1 - 4);
    return 0;
}

static int mig_cmp(const void *a, const void *b) {
    const mig_t *x = a, *y = b;
    return x->version < y->version ? -1 : x->version > y->version;
}

static int load_dir(const char *dir, mig_list_t *l, char *errstr, size_t errstr_size) {
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t cap = 0;
    char path[PATH_MAX];
    if (!d) {
        hb_seterr(errstr, errstr_size, "migrations directory %s: %s", dir, strerror(errno));
        return -1;
    }
    while ((de = readdir(d)) != NULL) {
        mig_t m;
        size_t len;
        memset(&m, 0, sizeof(m));
        if (de->d_name[0] == '.' || parse_name(de->d_name, &m.version, &m.name) < 0)
            continue;
        m.file = hb_strdup(de->d_name);
        if (l->n == cap) {
            cap = cap ? cap * 2 : 16;
            l->v = hb_realloc(l->v, cap * sizeof(*l->v));
        }
        l->v[l->n++] = m;
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) >= sizeof(path)) {
            hb_seterr(errstr, errstr_size, "%s/%s: path too long", dir, de->d_name);
            goto fail;
        }
        if (read_file(path, &l->v[l->n - 1].sql, &len, errstr, errstr_size) < 0)
            goto fail;
        sha256_hex(l->v[l->n - 1].sql, len, l->v[l->n - 1].sha256);
    }
    closedir(d);
    d = NULL;
    if (l->n)
        qsort(l->v, l->n, sizeof(*l->v), mig_cmp);
    for (size_t i = 1; i < l->n; i++)
        if (l->v[i].version == l->v[i - 1].version) {
            hb_seterr(errstr, errstr_size, "%s and %s have the same version", l->v[i - 1].file,
                      l->v[i].file);
            goto fail;
        }
    return 0;
fail:
    if (d)
        closedir(d);
    return -1;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(((const mig_t *)a)->file, ((const mig_t *)b)->file);
}

/* The SQL files: every *.sql in DIR/../sql, in name order. No such directory
 * is not an error (set->exists stays 0). */
static int load_sql_dir(const char *dir, sql_set_t *set, char *errstr, size_t errstr_size) {
    DIR *d;
    struct dirent *de;
    size_t cap = 0, dlen = strlen(dir);
    char path[PATH_MAX];
    while (dlen > 1 && dir[dlen - 1] == '/')
        dlen--;
    if ((size_t)snprintf(set->dir, sizeof(set->dir), "%.*s/../sql", (int)dlen, dir) >=
        sizeof(set->dir)) {
        hb_seterr(errstr, errstr_size, "%s: path too long", dir);
        return -1;
    }
    if ((d = opendir(set->dir)) == NULL) {
        if (errno == ENOENT)
            return 0;
        hb_seterr(errstr, errstr_size, "SQL directory %s: %s", set->dir, strerror(errno));
        return -1;
    }
    set->exists = 1;
    while ((de = readdir(d)) != NULL) {
        mig_t *m;
        size_t len = strlen(de->d_name);
        if (de->d_name[0] == '.' || len < 5 || strcmp(de->d_name + len - 4, ".sql"))
            continue;
        if (set->files.n == cap) {
            cap = cap ? cap * 2 : 16;
            set->files.v = hb_realloc(set->files.v, cap * sizeof(*set->files.v));
        }
        m = &set->files.v[set->files.n++];
        memset(m, 0, sizeof(*m));
        m->file = hb_strdup(de->d_name);
        m->name = hb_strdup(de->d_name);
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", set->dir, de->d_name) >= sizeof(path)) {
            hb_seterr(errstr, errstr_size, "%s/%s: path too long", set->dir, de->d_name);
            closedir(d);
            return -1;
        }
        if (read_file(path, &m->sql, &len, errstr, errstr_size) < 0) {
            closedir(d);
            return -1;
        }
        sha256_hex(m->sql, len, m->sha256);
    }
    closedir(d);
    if (set->files.n)
        qsort(set->files.v, set->files.n, sizeof(*set->files.v), name_cmp);
    return 0;
}

static void sql_set_free(sql_set_t *set) {
    mig_list_free(&set->files);
    for (size_t i = 0; i < set->gone_n; i++)
        free(set->gone[i]);
    free(set->gone);
    set->gone = NULL;
    set->gone_n = 0;
}

/* --dir, then the environment, then next to the binary, then the system path. */
static const char *pick_dir(const char *flag_dir, char *buf, size_t bufsz) {
    const char *env = getenv("HOOKBRIDGE_MIGRATIONS_DIR");
    char exe[PATH_MAX];
    ssize_t n;
    struct stat sb;
    if (flag_dir)
        return flag_dir;
    if (env && *env)
        return env;
    n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        char *slash;
        exe[n] = '\0';
        if ((slash = strrchr(exe, '/')) != NULL) {
            *slash = '\0';
            if ((size_t)snprintf(buf, bufsz, "%s/../migrations", exe) < bufsz &&
                stat(buf, &sb) == 0 && S_ISDIR(sb.st_mode))
                return buf;
        }
    }
    return MIGRATE_SYSTEM_DIR;
}

/* The SQLSTATE of the last statement that failed: a lock timeout (55P03),
 * or a deadlock (40P01), is tried again, anything else ends the run. */
static char last_sqlstate[6];

static void note_failure(const PGresult *res) {
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    snprintf(last_sqlstate, sizeof(last_sqlstate), "%s", state ? state : "");
}

static int exec_ok(PGconn *conn, const char *sql, int nparams, const char *const *params,
                   ExecStatusType want, PGresult **out, const char *what, char *errstr,
                   size_t errstr_size) {
    char why[512];
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) == want) {
        if (out)
            *out = res;
        else
            PQclear(res);
        return 0;
    }
    note_failure(res);
    hb_pg_error(conn, res, why, sizeof(why));
    PQclear(res);
    hb_seterr(errstr, errstr_size, "%s: %s", what, why);
    return -1;
}

/* Creates the bookkeeping table when missing (without needing CREATE on the
 * database when the schema already exists). */
static int ensure_table(PGconn *conn, char *errstr, size_t errstr_size) {
    PGresult *res = NULL;
    int have_schema, have_table, have_sql_table;
    if (exec_ok(conn,
                "SELECT to_regnamespace('hookbridge') IS NOT NULL,"
                "       to_regclass('hookbridge.hookbridge_migrations') IS NOT NULL,"
                "       to_regclass('hookbridge.hookbridge_sql_files') IS NOT NULL",
                0, NULL, PGRES_TUPLES_OK, &res, "reading the catalog", errstr, errstr_size) < 0)
        return -1;
    have_schema = !strcmp(PQgetvalue(res, 0, 0), "t");
    have_table = !strcmp(PQgetvalue(res, 0, 1), "t");
    have_sql_table = !strcmp(PQgetvalue(res, 0, 2), "t");
    PQclear(res);
    if (!have_schema &&
        exec_ok(conn, "CREATE SCHEMA IF NOT EXISTS hookbridge", 0, NULL, PGRES_COMMAND_OK, NULL,
                "creating schema hookbridge", errstr, errstr_size) < 0)
        return -1;
    if (!have_table &&
        exec_ok(conn,
                "CREATE TABLE IF NOT EXISTS hookbridge.hookbridge_migrations ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())",
                0, NULL, PGRES_COMMAND_OK, NULL, "creating hookbridge.hookbridge_migrations",
                errstr, errstr_size) < 0)
        return -1;
    if (!have_sql_table &&
        exec_ok(conn,
                "CREATE TABLE IF NOT EXISTS hookbridge.hookbridge_sql_files ("
                " name text PRIMARY KEY,"
                " checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())",
                0, NULL, PGRES_COMMAND_OK, NULL, "creating hookbridge.hookbridge_sql_files", errstr,
                errstr_size) < 0)
        return -1;
    return 0;
}

/* How many rows of res (version, name, checksum, ...) are the migrations of
 * the earlier layout, in order, when DIR starts with 0001_baseline.sql; 0
 * otherwise (also when a row is not one of them). */
static long old_layout_rows(PGresult *res, const mig_list_t *l) {
    long n = PQntuples(res);
    if (l->n == 0 || l->v[0].version != 1 || strcmp(l->v[0].name, "baseline") || n == 0 ||
        n > OLD_LAYOUT_N)
        return 0;
    for (long r = 0; r < n; r++)
        if (strtol(PQgetvalue(res, (int)r, 0), NULL, 10) != r + 1 ||
            strcmp(PQgetvalue(res, (int)r, 1), old_layout[r].name) ||
            strcmp(PQgetvalue(res, (int)r, 2), old_layout[r].sha256))
            return 0;
    return n;
}

/* Marks the applied migrations in l; fails naming the first inconsistency
 * (all of them are printed to stderr). Applied migrations numbered after the
 * last file of l were applied by a newer release (the image was rolled back,
 * or an older pod restarted during a rollout): not an inconsistency, they are
 * listed in `ahead` (version, name, applied_at). Returns 0, -1 when the
 * history does not match the files, -2 when it could not be read. */
static int check_history(PGconn *conn, mig_list_t *l, const char *dir, int table_exists,
                         mig_list_t *ahead, char *errstr, size_t errstr_size) {
    PGresult *res = NULL;
    int bad = 0;
    long max_applied = -1, old_at, max_file = l->n ? l->v[l->n - 1].version : -1;
    if (!table_exists)
        return 0;
    if (exec_ok(conn,
                "SELECT version, name, checksum,"
                "       to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
                "  FROM hookbridge.hookbridge_migrations ORDER BY version",
                0, NULL, PGRES_TUPLES_OK, &res, "reading hookbridge.hookbridge_migrations", errstr,
                errstr_size) < 0)
        return -2; /* nothing known: not the same as a history that does not match */
    old_at = old_layout_rows(res, l);
    if (old_at > 0 && old_at < OLD_LAYOUT_N) {
        hb_seterr(errstr, errstr_size,
                  "the database is at %04ld_%s.sql of the layout before 0001_baseline.sql; "
                  "apply that layout up to %04ld_%s.sql first (the hookbridge-migrate and "
                  "migrations of a build before the baseline), then this one",
                  old_at, old_layout[old_at - 1].name, OLD_LAYOUT_N,
                  old_layout[OLD_LAYOUT_N - 1].name);
        PQclear(res);
        return -1;
    }
    if (old_at == OLD_LAYOUT_N) {
        /* The baseline's state, built by the earlier files: up records it. */
        l->v[0].applied = 1;
        l->v[0].old_layout = 1;
        snprintf(l->v[0].applied_at, sizeof(l->v[0].applied_at), "%s",
                 PQgetvalue(res, (int)old_at - 1, 3));
        max_applied = 1;
    }
    for (int r = 0; r < PQntuples(res) && !old_at; r++) {
        char *end;
        long version = strtol(PQgetvalue(res, r, 0), &end, 10);
        const char *name = PQgetvalue(res, r, 1), *sum = PQgetvalue(res, r, 2);
        mig_t *m = NULL;
        for (size_t i = 0; i < l->n && !m; i++)
            if (l->v[i].version == version)
                m = &l->v[i];
        if (version > max_applied)
            max_applied = version;
        if (!m && version > max_file) {
            mig_t *a;
            ahead->v = hb_realloc(ahead->v, (ahead->n + 1) * sizeof(*ahead->v));
            a = &ahead->v[ahead->n++];
            memset(a, 0, sizeof(*a));
            a->version = version;
            a->name = hb_strdup(name);
            a->applied = 1;
            snprintf(a->applied_at, sizeof(a->applied_at), "%s", PQgetvalue(res, r, 3));
            continue;
        }
        if (!m) {
            fprintf(stderr,
                    "%s: error: migration %04ld_%s.sql was applied but its file is "
                    "missing from %s\n",
                    PROG, version, name, dir);
            bad++;
            continue;
        }
        m->applied = 1;
        snprintf(m->applied_at, sizeof(m->applied_at), "%s", PQgetvalue(res, r, 3));
        if (strcmp(sum, m->sha256)) {
            fprintf(stderr,
                    "%s: error: %s/%s was changed after it was applied (checksum %.12s, "
                    "applied %.12s); add a new migration instead\n",
                    PROG, dir, m->file, m->sha256, sum);
            m->changed = 1;
            bad++;
        }
    }
    PQclear(res);
    for (size_t i = 0; i < l->n; i++)
        if (!l->v[i].applied && l->v[i].version < max_applied) {
            fprintf(stderr,
                    "%s: error: %s/%s is pending but a later migration (%04ld) is "
                    "already applied; renumber it after %04ld\n",
                    PROG, dir, l->v[i].file, max_applied, max_applied);
            bad++;
        }
    if (bad)
        hb_seterr(errstr, errstr_size,
                  "refusing to run: the applied migrations do not match %s (%d problem%s above)",
                  dir, bad, bad == 1 ? "" : "s");
    return bad ? -1 : 0;
}

/* 1-based line of a 1-based character position in sql (UTF-8). */
static long line_of(const char *sql, long pos) {
    long line = 1, chars = 0;
    for (const unsigned char *p = (const unsigned char *)sql; *p && chars < pos - 1; p++) {
        if ((*p & 0xc0) != 0x80)
            chars++;
        if (*p == '\n')
            line++;
    }
    return line;
}

/* Runs the statements of one file (no transaction of its own); an error names
 * the file and the line. */
static int run_file(PGconn *conn, const mig_t *m, const char *dir, char *errstr,
                    size_t errstr_size) {
    char why[512];
    /* A file holds many statements: the simple query protocol runs them all. */
    PGresult *res = PQexec(conn, m->sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK &&
        PQresultStatus(res) != PGRES_EMPTY_QUERY) {
        const char *pos = PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION);
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        note_failure(res);
        hb_pg_error(conn, res, why, sizeof(why));
        if (state && !strcmp(state, "42501")) { /* insufficient_privilege */
            size_t n = strlen(why);
            snprintf(why + n, sizeof(why) - n,
                     "; the role running `up` (%s) must own schema hookbridge and, for the "
                     "first migration (it creates the schema and the pgcrypto extension), "
                     "have CREATE on the database: docs/operations.md, PostgreSQL",
                     PQuser(conn));
        }
        if (pos)
            hb_seterr(errstr, errstr_size, "%s/%s, line %ld: %s", dir, m->file,
                      line_of(m->sql, strtol(pos, NULL, 10)), why);
        else
            hb_seterr(errstr, errstr_size, "%s/%s: %s", dir, m->file, why);
        PQclear(res);
        return -1;
    }
    PQclear(res);
    return 0;
}

/* Marks the SQL files the database recorded with the same checksum (applied)
 * or another one (changed), and lists the recorded ones that are gone. */
static int read_sql_history(PGconn *conn, sql_set_t *set, char *errstr, size_t errstr_size) {
    PGresult *res = NULL;
    if (exec_ok(conn, "SELECT to_regclass('hookbridge.hookbridge_sql_files') IS NOT NULL", 0, NULL,
                PGRES_TUPLES_OK, &res, "reading the catalog", errstr, errstr_size) < 0)
        return -1;
    set->table_exists = !strcmp(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    if (!set->table_exists)
        return 0;
    if (exec_ok(conn,
                "SELECT name, checksum,"
                "       to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
                "  FROM hookbridge.hookbridge_sql_files ORDER BY name",
                0, NULL, PGRES_TUPLES_OK, &res, "reading hookbridge.hookbridge_sql_files", errstr,
                errstr_size) < 0)
        return -1;
    for (int r = 0; r < PQntuples(res); r++) {
        const char *name = PQgetvalue(res, r, 0);
        mig_t *m = NULL;
        for (size_t i = 0; i < set->files.n && !m; i++)
            if (!strcmp(set->files.v[i].name, name))
                m = &set->files.v[i];
        if (!m) {
            set->gone = hb_realloc(set->gone, (set->gone_n + 1) * sizeof(*set->gone));
            set->gone[set->gone_n++] = hb_strdup(name);
            continue;
        }
        snprintf(m->applied_at, sizeof(m->applied_at), "%s", PQgetvalue(res, r, 2));
        if (!strcmp(PQgetvalue(res, r, 1), m->sha256))
            m->applied = 1;
        else
            m->changed = 1;
    }
    PQclear(res);
    return 0;
}

/* Whether the SQL files differ from what the database recorded. */
static int sql_changed(const sql_set_t *set) {
    if (!set->exists)
        return 0;
    for (size_t i = 0; i < set->files.n; i++)
        if (!set->files.v[i].applied)
            return 1;
    return set->gone_n > 0;
}

/* Applies every SQL file, in name order, and records them, inside the
 * caller's transaction. */
static int apply_sql(PGconn *conn, const sql_set_t *set, char *errstr, size_t errstr_size) {
    for (size_t i = 0; i < set->files.n; i++) {
        const mig_t *m = &set->files.v[i];
        const char *params[2] = {m->name, m->sha256};
        if (run_file(conn, m, set->dir, errstr, errstr_size) < 0 ||
            exec_ok(conn,
                    "INSERT INTO hookbridge.hookbridge_sql_files (name, checksum) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO UPDATE"
                    " SET checksum = EXCLUDED.checksum, applied_at = now()",
                    2, params, PGRES_COMMAND_OK, NULL, m->file, errstr, errstr_size) < 0)
            return -1;
    }
    for (size_t i = 0; i < set->gone_n; i++) {
        const char *params[1] = {set->gone[i]};
        if (exec_ok(conn, "DELETE FROM hookbridge.hookbridge_sql_files WHERE name = $1", 1, params,
                    PGRES_COMMAND_OK, NULL, set->gone[i], errstr, errstr_size) < 0)
            return -1;
    }
    return 0;
}

static void print_sql_applied(const sql_set_t *set) {
    for (size_t i = 0; i < set->files.n; i++) {
        const mig_t *m = &set->files.v[i];
        printf("sql/%s %s\n", m->file,
               m->changed   ? "applied (changed)"
               : m->applied ? "applied again (unchanged)"
                            : "applied (new)");
    }
    for (size_t i = 0; i < set->gone_n; i++)
        printf("sql/%s forgotten: the file is gone (what it defined stays until a migration "
               "drops it)\n",
               set->gone[i]);
}

/* How long a step waits for a lock before it rolls back and tries again, and
 * how long it keeps trying (migrate_lock_timeout, migrate_lock_wait). */
typedef struct {
    long long timeout_ms, wait_ms;
} lock_policy_t;

/* Starts a step's transaction. Its statements wait at most timeout_ms for a
 * lock: while one waits, every later request for that table queues behind it,
 * the services' writes included. */
static int begin_step(PGconn *conn, const lock_policy_t *lp, const char *what, char *errstr,
                      size_t errstr_size) {
    char ms[32];
    const char *params[1] = {ms};
    snprintf(ms, sizeof(ms), "%lld", lp->timeout_ms);
    if (exec_ok(conn, "BEGIN", 0, NULL, PGRES_COMMAND_OK, NULL, what, errstr, errstr_size) < 0)
        return -1;
    if (exec_ok(conn, "SELECT set_config('lock_timeout', $1 || 'ms', true)", 1, params,
                PGRES_TUPLES_OK, NULL, what, errstr, errstr_size) < 0) {
        PQclear(PQexec(conn, "ROLLBACK"));
        return -1;
    }
    return 0;
}

/* One transaction: the migration m and its row, then, when sql is given,
 * every SQL file. */
static int apply_one(PGconn *conn, const lock_policy_t *lp, const mig_t *m, const char *dir,
                     const sql_set_t *sql, char *errstr, size_t errstr_size) {
    char version[24];
    const char *params[3] = {version, m->name, m->sha256};
    snprintf(version, sizeof(version), "%ld", m->version);
    if (begin_step(conn, lp, m->file, errstr, errstr_size) < 0)
        return -1;
    if (run_file(conn, m, dir, errstr, errstr_size) < 0 ||
        exec_ok(conn,
                "INSERT INTO hookbridge.hookbridge_migrations (version, name, checksum)"
                " VALUES ($1::integer, $2, $3)",
                3, params, PGRES_COMMAND_OK, NULL, m->file, errstr, errstr_size) < 0 ||
        (sql && apply_sql(conn, sql, errstr, errstr_size) < 0) ||
        exec_ok(conn, "COMMIT", 0, NULL, PGRES_COMMAND_OK, NULL, m->file, errstr, errstr_size) <
            0) {
        PQclear(PQexec(conn, "ROLLBACK"));
        return -1;
    }
    return 0;
}

/* One transaction: the history of the earlier layout replaced by the
 * baseline's row (when convert), then, when sql is given, every SQL file. */
static int apply_rest(PGconn *conn, const lock_policy_t *lp, const mig_t *baseline, int convert,
                      const sql_set_t *sql, char *errstr, size_t errstr_size) {
    const char *params[2] = {baseline->name, baseline->sha256};
    char max[24];
    const char *del[1] = {max};
    snprintf(max, sizeof(max), "%ld", OLD_LAYOUT_N);
    if (begin_step(conn, lp, "BEGIN", errstr, errstr_size) < 0)
        return -1;
    if ((convert &&
         (exec_ok(conn,
                  "DELETE FROM hookbridge.hookbridge_migrations"
                  " WHERE version BETWEEN 1 AND $1::integer",
                  1, del, PGRES_COMMAND_OK, NULL, baseline->file, errstr, errstr_size) < 0 ||
          exec_ok(conn,
                  "INSERT INTO hookbridge.hookbridge_migrations (version, name, checksum)"
                  " VALUES (1, $1, $2)",
                  2, params, PGRES_COMMAND_OK, NULL, baseline->file, errstr, errstr_size) < 0)) ||
        (sql && apply_sql(conn, sql, errstr, errstr_size) < 0) ||
        exec_ok(conn, "COMMIT", 0, NULL, PGRES_COMMAND_OK, NULL, "COMMIT", errstr, errstr_size) <
            0) {
        PQclear(PQexec(conn, "ROLLBACK"));
        return -1;
    }
    return 0;
}

/* Names the sessions that have held a lock on one of hookbridge's tables for
 * longer than a lock timeout: whom a step waited for. Never their query text,
 * which may carry a secret. */
static void describe_holders(PGconn *conn, long long older_ms, char *buf, size_t bufsz) {
    char ms[32];
    const char *params[1] = {ms};
    PGresult *res;
    size_t n = 0;
    snprintf(ms, sizeof(ms), "%lld", older_ms);
    res = PQexecParams(conn,
                       "SELECT a.pid, coalesce(nullif(a.application_name, ''), 'unnamed'),"
                       "       coalesce(a.usename::text, '?'), coalesce(a.state, '?'),"
                       "       extract(epoch FROM now() - a.xact_start)::bigint"
                       "  FROM pg_stat_activity a"
                       " WHERE a.pid <> pg_backend_pid()"
                       "   AND a.xact_start < now() - ($1 || ' milliseconds')::interval"
                       "   AND EXISTS (SELECT 1 FROM pg_locks l"
                       "                 JOIN pg_class c ON c.oid = l.relation"
                       "                WHERE l.pid = a.pid AND l.granted"
                       "                  AND c.relnamespace = 'hookbridge'::regnamespace)"
                       " ORDER BY a.xact_start LIMIT 3",
                       1, NULL, params, NULL, NULL, 0);
    buf[0] = '\0';
    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        for (int i = 0; i < PQntuples(res) && n < bufsz; i++)
            n += (size_t)snprintf(
                buf + n, bufsz - n, "%ssession of pid %s (%s, user %s, %s, transaction open %s s)",
                i ? "; " : "", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
                PQgetvalue(res, i, 3), PQgetvalue(res, i, 4));
    if (!buf[0])
        snprintf(buf, bufsz, "no session holds hookbridge's tables for that long now");
    PQclear(res);
}

/* Runs one step of `up` (apply_one, or apply_rest when rest) and, when a
 * statement of it waited lp->timeout_ms for a lock, or was ended to break a
 * deadlock (a writer holding a table the step asks for next, and asking for
 * one the step holds: PostgreSQL's deadlock_timeout, 1 s by default, comes
 * before the lock timeout, and the session that waited first, the step's,
 * is the one ended), tries it again until lp->wait_ms have passed. Each
 * failed attempt has rolled back, so the services' writes that queued behind
 * it go on meanwhile. */
static int apply_step(PGconn *conn, const lock_policy_t *lp, const mig_t *m, const char *dir,
                      int rest, int convert, const sql_set_t *sql, char *errstr,
                      size_t errstr_size) {
    int64_t start = hb_mono_ms();
    long long pause = 500;
    char holders[768];
    for (int attempt = 1;; attempt++) {
        int64_t spent;
        int deadlock;
        last_sqlstate[0] = '\0';
        if ((rest ? apply_rest(conn, lp, m, convert, sql, errstr, errstr_size)
                  : apply_one(conn, lp, m, dir, sql, errstr, errstr_size)) == 0)
            return 0;
        deadlock = !strcmp(last_sqlstate, "40P01");           /* deadlock_detected */
        if (strcmp(last_sqlstate, "55P03") != 0 && !deadlock) /* lock_not_available */
            return -1;
        /* a deadlock's other party may be young: every holder, oldest first */
        describe_holders(conn, deadlock ? 0 : lp->timeout_ms, holders, sizeof(holders));
        spent = hb_mono_ms() - start;
        if (spent + pause > lp->wait_ms) {
            size_t n = strlen(errstr);
            snprintf(errstr + n, errstr_size - n,
                     "; gave up after %d attempts in %lld ms (HOOKBRIDGE_MIGRATE_LOCK_WAIT), "
                     "nothing of this step applied; holding hookbridge's tables: %s",
                     attempt, (long long)spent, holders);
            return -1;
        }
        if (deadlock)
            printf("%s: ended by PostgreSQL to break a deadlock with another session's locks "
                   "(attempt %d); rolled back, so the services' writes go on; holding "
                   "hookbridge's tables: %s; trying again in %lld ms\n",
                   rest ? "the SQL files" : m->file, attempt, holders, pause);
        else
            printf("%s: a lock was not granted within %lld ms (attempt %d); rolled back, so the "
                   "services' writes go on; holding hookbridge's tables: %s; trying again in "
                   "%lld ms\n",
                   rest ? "the SQL files" : m->file, lp->timeout_ms, attempt, holders, pause);
        fflush(stdout);
        usleep((useconds_t)(pause * 1000));
        pause = pause * 2 > 15000 ? 15000 : pause * 2;
    }
}

/* Takes the migration lock; when another session holds it, says who before
 * waiting, so that an `up` that seems to hang explains itself (often the
 * session of an `up` that was killed: it keeps the lock until the server
 * notices, at the end of the statement it was running). */
static int take_lock(PGconn *conn, const char *const *key, char *errstr, size_t errstr_size) {
    PGresult *res = NULL;
    int got;
    if (exec_ok(conn, "SELECT pg_try_advisory_lock($1::bigint)", 1, key, PGRES_TUPLES_OK, &res,
                "taking the migration lock", errstr, errstr_size) < 0)
        return -1;
    got = !strcmp(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    if (got)
        return 0;
    res = PQexecParams(conn,
                       "SELECT l.pid, coalesce(nullif(a.application_name, ''), 'unnamed'),"
                       "       coalesce(a.usename::text, '?')"
                       "  FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
                       " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                       "   AND l.database = (SELECT oid FROM pg_database"
                       "                      WHERE datname = current_database())"
                       "   AND (l.classid::bigint << 32 | l.objid::bigint) = $1::bigint",
                       1, NULL, key, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0)
        printf("waiting for the migration lock, held by the session of pid %s (%s, user %s): "
               "another hookbridge-migrate up, or one that was killed and whose statement "
               "is still running\n",
               PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2));
    else
        printf("waiting for the migration lock, held by another session\n");
    PQclear(res);
    fflush(stdout);
    return exec_ok(conn, "SELECT pg_advisory_lock($1::bigint)", 1, key, PGRES_TUPLES_OK, NULL,
                   "taking the migration lock", errstr, errstr_size);
}

static int cmd_up(PGconn *conn, const lock_policy_t *lp, mig_list_t *l, const char *dir,
                  char *errstr, size_t errstr_size) {
    const char *key[1] = {MIGRATE_LOCK_KEY};
    sql_set_t sql;
    mig_list_t ahead = {NULL, 0};
    int applied = 0, rc = -1, convert, need_sql;
    size_t last = l->n;
    memset(&sql, 0, sizeof(sql));
    if (take_lock(conn, key, errstr, errstr_size) < 0)
        return -1;
    if (ensure_table(conn, errstr, errstr_size) < 0)
        goto out;
    if (check_history(conn, l, dir, 1, &ahead, errstr, errstr_size) < 0)
        goto out;
    if (ahead.n > 0) {
        /* A newer release migrated this database (expand-only, so this
         * release's code still works on it): every file here is applied, and
         * its SQL files are not put back over the newer release's. */
        printf("the database is ahead of this release: a newer one applied %04ld_%s.sql (%zu "
               "migration%s unknown here); nothing applied, the SQL files stay as it left "
               "them\n",
               ahead.v[ahead.n - 1].version, ahead.v[ahead.n - 1].name, ahead.n,
               ahead.n == 1 ? "" : "s");
        rc = 0;
        goto out;
    }
    if (load_sql_dir(dir, &sql, errstr, errstr_size) < 0 ||
        read_sql_history(conn, &sql, errstr, errstr_size) < 0)
        goto out;
    for (size_t i = 0; i < l->n; i++)
        if (!l->v[i].applied)
            last = i;
    convert = l->n > 0 && l->v[0].old_layout;
    /* A migration may drop what an SQL file defines: apply them all again. */
    need_sql = sql.exists && (sql_changed(&sql) || last < l->n || convert);
    if (convert) {
        /* Its own transaction: the state is the baseline's already. */
        if (apply_step(conn, lp, &l->v[0], dir, 1, 1, last == l->n && need_sql ? &sql : NULL,
                       errstr, errstr_size) < 0)
            goto out;
        printf("recorded %s as applied: the database was at %04ld_%s.sql of the earlier "
               "layout, which it replaces\n",
               l->v[0].file, OLD_LAYOUT_N, old_layout[OLD_LAYOUT_N - 1].name);
    }
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].applied)
            continue;
        if (apply_step(conn, lp, &l->v[i], dir, 0, 0, i == last && need_sql ? &sql : NULL, errstr,
                       errstr_size) < 0)
            goto out;
        printf("applied %s\n", l->v[i].file);
        applied++;
    }
    if (need_sql && last == l->n && !convert &&
        apply_step(conn, lp, &l->v[0], dir, 1, 0, &sql, errstr, errstr_size) < 0)
        goto out;
    if (need_sql)
        print_sql_applied(&sql);
    else if (!sql.exists)
        printf("no SQL files: %s does not exist\n", sql.dir);
    if (applied == 0)
        printf("up to date: %zu migration%s applied\n", l->n, l->n == 1 ? "" : "s");
    else
        printf("%d migration%s applied; %zu in total\n", applied, applied == 1 ? "" : "s", l->n);
    rc = 0;
out:
    PQclear(
        PQexecParams(conn, "SELECT pg_advisory_unlock($1::bigint)", 1, NULL, key, NULL, NULL, 0));
    sql_set_free(&sql);
    mig_list_free(&ahead);
    return rc;
}

static int cmd_status(PGconn *conn, mig_list_t *l, const char *dir, char *errstr,
                      size_t errstr_size) {
    PGresult *res = NULL;
    sql_set_t sql;
    mig_list_t ahead = {NULL, 0};
    int table_exists, rc;
    memset(&sql, 0, sizeof(sql));
    if (exec_ok(conn, "SELECT to_regclass('hookbridge.hookbridge_migrations') IS NOT NULL", 0, NULL,
                PGRES_TUPLES_OK, &res, "reading the catalog", errstr, errstr_size) < 0)
        return -1;
    table_exists = !strcmp(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    rc = check_history(conn, l, dir, table_exists, &ahead, errstr, errstr_size);
    if (rc == -2) /* listing every migration as pending would be wrong */
        return -1;
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].applied)
            printf("%-40s applied  %s  sha256:%.12s%s\n", l->v[i].file, l->v[i].applied_at,
                   l->v[i].sha256,
                   l->v[i].changed      ? "  CHANGED SINCE APPLIED"
                   : l->v[i].old_layout ? "  (as 0001..0008 of the earlier layout; up records it)"
                                        : "");
        else
            printf("%-40s pending\n", l->v[i].file);
    }
    for (size_t i = 0; i < ahead.n; i++) {
        char file[300];
        snprintf(file, sizeof(file), "%04ld_%s.sql", ahead.v[i].version, ahead.v[i].name);
        printf("%-40s applied  %s  (by a newer release: no file here)\n", file,
               ahead.v[i].applied_at);
    }
    if (load_sql_dir(dir, &sql, errstr, errstr_size) < 0 ||
        read_sql_history(conn, &sql, errstr, errstr_size) < 0) {
        sql_set_free(&sql);
        mig_list_free(&ahead);
        return -1;
    }
    if (!sql.exists)
        printf("no SQL files: %s does not exist\n", sql.dir);
    for (size_t i = 0; i < sql.files.n; i++) {
        char file[300];
        const mig_t *m = &sql.files.v[i];
        snprintf(file, sizeof(file), "sql/%s", m->file);
        if (m->applied)
            printf("%-40s applied  %s  sha256:%.12s\n", file, m->applied_at, m->sha256);
        else if (m->changed)
            printf("%-40s changed  (%s)  sha256:%.12s\n", file,
                   ahead.n ? "by the newer release; up leaves it" : "up applies it", m->sha256);
        else
            printf("%-40s new      (%s)\n", file,
                   ahead.n ? "the newer release has none; up leaves it" : "up applies it");
    }
    for (size_t i = 0; i < sql.gone_n; i++)
        printf("sql/%-36s recorded, but the file is gone\n", sql.gone[i]);
    sql_set_free(&sql);
    mig_list_free(&ahead);
    return rc;
}

/* Exit status of `topics`: 0, 1 on error, 2 when checking found problems. */
static int cmd_topics(const hb_config_t *cfg, int check_only) {
    hb_topic_plan_t plan;
    char errstr[1024];
    int problems = 0;
    if (hb_topics_plan(&plan, cfg, errstr, sizeof(errstr)) < 0) {
        fprintf(stderr, "%s: error: %s\n", PROG, errstr);
        return 1;
    }
    if (hb_topics_apply(cfg, &plan, check_only, stdout, &problems, errstr, sizeof(errstr)) < 0) {
        fprintf(stderr, "%s: error: %s\n", PROG, errstr);
        hb_topics_plan_free(&plan);
        return 1;
    }
    fflush(stdout);
    if (problems)
        fprintf(stderr, "%s: %d topic%s %s\n", PROG, problems, problems == 1 ? "" : "s",
                check_only ? "missing or drifted"
                           : "drifted from the plan: not changed, see above");
    hb_topics_plan_free(&plan);
    return problems && check_only ? 2 : 0;
}

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: %s up|status [--dir DIR]\n"
            "       %s topics [--check]\n"
            "  up       apply pending migrations in order (each in its own transaction)\n"
            "  status   list migrations as applied or pending\n"
            "  topics   create the missing Kafka topics (events, delay tiers, dead letters) and\n"
            "           report drift on existing ones; --check creates nothing and exits 2\n"
            "           when a topic is missing or drifted\n"
            "  --dir    migrations directory (default: $HOOKBRIDGE_MIGRATIONS_DIR, else\n"
            "           <binary dir>/../migrations if present, else %s)\n",
            PROG, PROG, MIGRATE_SYSTEM_DIR);
}

int main(int argc, char **argv) {
    hb_config_t cfg;
    char errstr[1024], dirbuf[PATH_MAX];
    const char *cmd = NULL, *flag_dir = NULL, *dir;
    mig_list_t l = {NULL, 0};
    PGconn *conn = NULL;
    int rc, status = 1, check = 0;

    if ((rc = hb_config_load_tool(&cfg, HB_PROG_MIGRATE, PROG, argc, argv, usage, 1)) >= 0)
        return rc;
    for (int i = 0; i < cfg.args_cnt; i++) {
        const char *a = cfg.args[i];
        if (!strcmp(a, "--dir") && i + 1 < cfg.args_cnt) {
            flag_dir = cfg.args[++i];
        } else if (!strncmp(a, "--dir=", 6) && a[6]) {
            flag_dir = a + 6;
        } else if (!strcmp(a, "--check")) {
            check = 1;
        } else if (!cmd && (!strcmp(a, "up") || !strcmp(a, "status") || !strcmp(a, "topics"))) {
            cmd = a;
        } else {
            fprintf(stderr, "%s: error: unexpected argument \"%s\"\n", PROG, a);
            usage(stderr);
            goto out;
        }
    }
    if (!cmd || (check && strcmp(cmd, "topics"))) {
        usage(stderr);
        goto out;
    }
    if (!strcmp(cmd, "topics")) {
        status = cmd_topics(&cfg, check);
        goto out;
    }
    dir = pick_dir(flag_dir, dirbuf, sizeof(dirbuf));
    if (load_dir(dir, &l, errstr, sizeof(errstr)) < 0) {
        fprintf(stderr, "%s: error: %s\n", PROG, errstr);
        goto out;
    }
    if (l.n == 0) {
        fprintf(stderr, "%s: error: no migrations (NNNN_name.sql) in %s\n", PROG, dir);
        goto out;
    }
    /* untimed: this tool keeps no time by PostgreSQL's clock, and a word on
     * this host's would come on stdout, ahead of `status`'s table (the
     * services say it, at their start) */
    conn = hb_pg_connect_untimed(cfg.database_url, PROG, errstr, sizeof(errstr));
    if (!conn) {
        fprintf(stderr, "%s: error: %s\n", PROG, errstr);
        goto out;
    }
    PQclear(PQexec(conn, "SET client_min_messages = warning"));
    if (!strcmp(cmd, "up")) {
        lock_policy_t lp = {cfg.migrate_lock_timeout_ms, cfg.migrate_lock_wait_ms};
        rc = cmd_up(conn, &lp, &l, dir, errstr, sizeof(errstr));
    } else
        rc = cmd_status(conn, &l, dir, errstr, sizeof(errstr));
    if (rc < 0)
        fprintf(stderr, "%s: error: %s\n", PROG, errstr);
    else
        status = 0;
out:
    if (conn)
        PQfinish(conn);
    mig_list_free(&l);
    hb_config_free(&cfg);
    return status;
}
