/*
 * hookbridge-migrate: applies the ordered SQL migrations of schema hookbridge.
 *
 *   hookbridge-migrate up     [--dir DIR]   apply what is pending, in order
 *   hookbridge-migrate status [--dir DIR]   list each migration: applied or pending
 *
 * A migration is a file DIR/NNNN_name.sql (NNNN: its version, digits). Each is
 * applied in its own transaction together with its row in
 * hookbridge.hookbridge_migrations (version, name, sha256 checksum,
 * applied_at), so a migration is either wholly applied and recorded or not at
 * all; a file must therefore not contain BEGIN/COMMIT itself. `up` holds a
 * session advisory lock (MIGRATE_LOCK_KEY) for its whole run, so replicas
 * started together (Kubernetes init containers) apply each migration once.
 *
 * Before applying anything both commands check history against the files and
 * refuse (exit 1, naming the file) when an applied file's checksum changed,
 * an applied version's file is missing, or a pending file sorts before an
 * applied one: the database would no longer match what the files describe.
 *
 * The migrations directory: --dir DIR, else $HOOKBRIDGE_MIGRATIONS_DIR, else
 * <directory of this binary>/../migrations when it exists (a source tree:
 * bin/hookbridge-migrate), else /usr/share/hookbridge/migrations (packages and
 * the container image).
 *
 * Exit status: 0 ok, 1 error. Messages never contain the connection string or
 * the password (hb_store_pg_connect describes host and port only).
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
#include "hb_store.h"

#define PROG "hookbridge-migrate"
#define MIGRATE_LOCK_KEY "7526676533394417767" /* "hookbrdg" as a bigint */
#define MIGRATE_SYSTEM_DIR "/usr/share/hookbridge/migrations"

typedef struct {
    long version;
    char *file;      /* "0001_init.sql" */
    char *name;      /* "init" */
    char *sql;       /* contents, NUL-terminated */
    char sha256[65]; /* hex */
    /* from the database */
    int applied;
    int changed; /* applied with another checksum */
    char applied_at[40];
} mig_t;

typedef struct {
    mig_t *v;
    size_t n;
} mig_list_t;

typedef struct {
    long version;
    char *name;
    char *checksum;
    char *applied_at;
} mig_row_t;

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
    hb_store_pg_error(conn, res, why, sizeof(why));
    PQclear(res);
    hb_seterr(errstr, errstr_size, "%s: %s", what, why);
    return -1;
}

/* Creates the bookkeeping table when missing (without needing CREATE on the
 * database when the schema already exists). */
static int ensure_table(PGconn *conn, char *errstr, size_t errstr_size) {
    PGresult *res = NULL;
    int have_schema, have_table;
    if (exec_ok(conn,
                "SELECT to_regnamespace('hookbridge') IS NOT NULL,"
                "       to_regclass('hookbridge.hookbridge_migrations') IS NOT NULL",
                0, NULL, PGRES_TUPLES_OK, &res, "reading the catalog", errstr, errstr_size) < 0)
        return -1;
    have_schema = !strcmp(PQgetvalue(res, 0, 0), "t");
    have_table = !strcmp(PQgetvalue(res, 0, 1), "t");
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
    return 0;
}

/* Marks the applied migrations in l; fails naming the first inconsistency
 * (all of them are printed to stderr). */
static int check_history(PGconn *conn, mig_list_t *l, const char *dir, int table_exists,
                         char *errstr, size_t errstr_size) {
    PGresult *res = NULL;
    int bad = 0;
    long max_applied = -1;
    if (!table_exists)
        return 0;
    if (exec_ok(conn,
                "SELECT version, name, checksum,"
                "       to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
                "  FROM hookbridge.hookbridge_migrations ORDER BY version",
                0, NULL, PGRES_TUPLES_OK, &res, "reading hookbridge.hookbridge_migrations", errstr,
                errstr_size) < 0)
        return -1;
    for (int r = 0; r < PQntuples(res); r++) {
        char *end;
        long version = strtol(PQgetvalue(res, r, 0), &end, 10);
        const char *name = PQgetvalue(res, r, 1), *sum = PQgetvalue(res, r, 2);
        mig_t *m = NULL;
        for (size_t i = 0; i < l->n && !m; i++)
            if (l->v[i].version == version)
                m = &l->v[i];
        if (version > max_applied)
            max_applied = version;
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

static int apply_one(PGconn *conn, const mig_t *m, const char *dir, char *errstr,
                     size_t errstr_size) {
    char version[24], why[512];
    const char *params[3] = {version, m->name, m->sha256};
    PGresult *res;
    snprintf(version, sizeof(version), "%ld", m->version);
    if (exec_ok(conn, "BEGIN", 0, NULL, PGRES_COMMAND_OK, NULL, m->file, errstr, errstr_size) < 0)
        return -1;
    /* A file holds many statements: the simple query protocol runs them all. */
    res = PQexec(conn, m->sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK &&
        PQresultStatus(res) != PGRES_EMPTY_QUERY) {
        const char *pos = PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION);
        hb_store_pg_error(conn, res, why, sizeof(why));
        if (pos)
            hb_seterr(errstr, errstr_size, "%s/%s, line %ld: %s", dir, m->file,
                      line_of(m->sql, strtol(pos, NULL, 10)), why);
        else
            hb_seterr(errstr, errstr_size, "%s/%s: %s", dir, m->file, why);
        PQclear(res);
        PQclear(PQexec(conn, "ROLLBACK"));
        return -1;
    }
    PQclear(res);
    if (exec_ok(conn,
                "INSERT INTO hookbridge.hookbridge_migrations (version, name, checksum)"
                " VALUES ($1::integer, $2, $3)",
                3, params, PGRES_COMMAND_OK, NULL, m->file, errstr, errstr_size) < 0 ||
        exec_ok(conn, "COMMIT", 0, NULL, PGRES_COMMAND_OK, NULL, m->file, errstr, errstr_size) <
            0) {
        PQclear(PQexec(conn, "ROLLBACK"));
        return -1;
    }
    return 0;
}

static int cmd_up(PGconn *conn, mig_list_t *l, const char *dir, char *errstr, size_t errstr_size) {
    const char *key[1] = {MIGRATE_LOCK_KEY};
    int applied = 0, rc = -1;
    if (exec_ok(conn, "SELECT pg_advisory_lock($1::bigint)", 1, key, PGRES_TUPLES_OK, NULL,
                "taking the migration lock", errstr, errstr_size) < 0)
        return -1;
    if (ensure_table(conn, errstr, errstr_size) < 0)
        goto out;
    if (check_history(conn, l, dir, 1, errstr, errstr_size) < 0)
        goto out;
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].applied)
            continue;
        if (apply_one(conn, &l->v[i], dir, errstr, errstr_size) < 0)
            goto out;
        printf("applied %s\n", l->v[i].file);
        applied++;
    }
    if (applied == 0)
        printf("up to date: %zu migration%s applied\n", l->n, l->n == 1 ? "" : "s");
    else
        printf("%d migration%s applied; %zu in total\n", applied, applied == 1 ? "" : "s", l->n);
    rc = 0;
out:
    PQclear(
        PQexecParams(conn, "SELECT pg_advisory_unlock($1::bigint)", 1, NULL, key, NULL, NULL, 0));
    return rc;
}

static int cmd_status(PGconn *conn, mig_list_t *l, const char *dir, char *errstr,
                      size_t errstr_size) {
    PGresult *res = NULL;
    int table_exists, rc;
    if (exec_ok(conn, "SELECT to_regclass('hookbridge.hookbridge_migrations') IS NOT NULL", 0, NULL,
                PGRES_TUPLES_OK, &res, "reading the catalog", errstr, errstr_size) < 0)
        return -1;
    table_exists = !strcmp(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    rc = check_history(conn, l, dir, table_exists, errstr, errstr_size);
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].applied)
            printf("%-40s applied  %s  sha256:%.12s%s\n", l->v[i].file, l->v[i].applied_at,
                   l->v[i].sha256, l->v[i].changed ? "  CHANGED SINCE APPLIED" : "");
        else
            printf("%-40s pending\n", l->v[i].file);
    }
    return rc;
}

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: %s up|status [--dir DIR]\n"
            "  up       apply pending migrations in order (each in its own transaction)\n"
            "  status   list migrations as applied or pending\n"
            "  --dir    migrations directory (default: $HOOKBRIDGE_MIGRATIONS_DIR, else\n"
            "           <binary dir>/../migrations if present, else %s)\n",
            PROG, MIGRATE_SYSTEM_DIR);
}

int main(int argc, char **argv) {
    hb_config_t cfg;
    char errstr[1024], dirbuf[PATH_MAX];
    const char *cmd = NULL, *flag_dir = NULL, *dir;
    mig_list_t l = {NULL, 0};
    PGconn *conn = NULL;
    int rc, status = 1;

    if ((rc = hb_config_load_tool(&cfg, HB_PROG_MIGRATE, PROG, argc, argv, usage, 1)) >= 0)
        return rc;
    for (int i = 0; i < cfg.args_cnt; i++) {
        const char *a = cfg.args[i];
        if (!strcmp(a, "--dir") && i + 1 < cfg.args_cnt) {
            flag_dir = cfg.args[++i];
        } else if (!strncmp(a, "--dir=", 6) && a[6]) {
            flag_dir = a + 6;
        } else if (!cmd && (!strcmp(a, "up") || !strcmp(a, "status"))) {
            cmd = a;
        } else {
            fprintf(stderr, "%s: error: unexpected argument \"%s\"\n", PROG, a);
            usage(stderr);
            goto out;
        }
    }
    if (!cmd) {
        usage(stderr);
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
    conn = hb_store_pg_connect(cfg.database_url, PROG, errstr, sizeof(errstr));
    if (!conn) {
        fprintf(stderr, "%s: error: %s\n", PROG, errstr);
        goto out;
    }
    PQclear(PQexec(conn, "SET client_min_messages = warning"));
    if (!strcmp(cmd, "up"))
        rc = cmd_up(conn, &l, dir, errstr, sizeof(errstr));
    else
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
