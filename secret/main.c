/*
 * hookbridge-secret: the operator's tool for sealed secrets (lib/hb_seal.h).
 *
 *   hookbridge-secret generate-key      a new HOOKBRIDGE_SECRET_KEY on stdout,
 *                                       "key id: <id>" on stderr
 *   hookbridge-secret key-id            the id of HOOKBRIDGE_SECRET_KEY ("<id> current")
 *                                       and of each old key ("<id> old"), one per line
 *   hookbridge-secret show <sub-id>     the subscription's current signing secret
 *                                       (whsec_...), opened with the configured keys
 *
 * Settings come from hb_config like every program's (HOOKBRIDGE_SECRET_KEY,
 * HOOKBRIDGE_SECRET_KEYS_OLD, HOOKBRIDGE_DATABASE_URL). Output is plain text
 * for people. Exit status: 0 ok, 1 runtime error (database, a value that does
 * not open), 2 usage or configuration error. No message carries a key, the
 * connection string or a secret; only `show` prints one, on stdout.
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_config.h"
#include "hb_log.h"
#include "hb_seal.h"
#include "hb_pg.h"

#define PROG "hookbridge-secret"
#define SHOW_SQL                                                                                   \
    "SELECT s.secret_id, s.sealed, s.key_id, $1::uuid::text "                                      \
    "FROM hookbridge.sealed_signing_secret($1::uuid) AS s"

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: " PROG " <command>\n"
            "\n"
            "Commands:\n"
            "  generate-key          print a new random key for HOOKBRIDGE_SECRET_KEY (base64)\n"
            "                        on stdout and its key id on stderr; needs no settings\n"
            "  key-id                print the key id of HOOKBRIDGE_SECRET_KEY (\"<id> current\")\n"
            "                        and of each key in HOOKBRIDGE_SECRET_KEYS_OLD (\"<id> old\")\n"
            "  show <subscription>   print the subscription's current signing secret\n"
            "                        (whsec_...), read from HOOKBRIDGE_DATABASE_URL and opened\n"
            "                        with the keys above\n"
            "\n"
            "Exit status: 0 ok, 1 error, 2 usage or configuration error.\n");
}

static int cmd_generate_key(void) {
    char key[HB_SEAL_KEY_B64_LEN + 1], errstr[256];
    hb_keyring_t *kr;
    if (hb_keyring_generate_key(key, sizeof(key), errstr, sizeof(errstr)) < 0) {
        fprintf(stderr, "%s: error: %s\n", PROG, errstr);
        return 1;
    }
    kr = hb_keyring_new(key, NULL, errstr, sizeof(errstr));
    if (!kr) {
        fprintf(stderr, "%s: error: %s\n", PROG, errstr);
        return 1;
    }
    printf("%s\n", key);
    fflush(stdout);
    fprintf(stderr, "key id: %s\n", hb_keyring_current_id(kr));
    hb_keyring_free(kr);
    return 0;
}

/* The configured keyring, or NULL after printing why (exit 2). */
static hb_keyring_t *configured_keyring(const hb_config_t *cfg) {
    char errstr[512];
    hb_keyring_t *kr;
    if (!*cfg->secret_key) {
        fprintf(stderr,
                "%s: error: HOOKBRIDGE_SECRET_KEY is not set (generate one with: " PROG
                " generate-key)\n",
                PROG);
        return NULL;
    }
    kr = hb_keyring_new(cfg->secret_key, cfg->secret_keys_old, errstr, sizeof(errstr));
    if (!kr)
        fprintf(stderr, "%s: error: %s\n", PROG, errstr);
    return kr;
}

static int cmd_key_id(const hb_config_t *cfg) {
    hb_keyring_t *kr = configured_keyring(cfg);
    if (!kr)
        return 2;
    for (size_t i = 0; i < hb_keyring_count(kr); i++)
        printf("%s %s\n", hb_keyring_id(kr, i), i == 0 ? "current" : "old");
    hb_keyring_free(kr);
    return 0;
}

static int cmd_show(const hb_config_t *cfg, const char *sub_id) {
    char errstr[1024], aad[HB_SEAL_AAD_MAX], *end, *secret = NULL;
    const char *params[1] = {sub_id};
    hb_keyring_t *kr;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    long long secret_id;
    int status = 1;

    if (hb_seal_aad_auth(aad, sizeof(aad), sub_id) < 0) {
        fprintf(stderr, "%s: error: \"%s\" is not a subscription id (a UUID)\n", PROG, sub_id);
        return 2;
    }
    kr = configured_keyring(cfg);
    if (!kr)
        return 2;
    if (!*cfg->database_url) {
        fprintf(stderr, "%s: error: HOOKBRIDGE_DATABASE_URL is not set\n", PROG);
        hb_keyring_free(kr);
        return 2;
    }
    conn = hb_pg_connect(cfg->database_url, PROG, errstr, sizeof(errstr));
    if (!conn) {
        fprintf(stderr, "%s: error: %s\n", PROG, errstr);
        goto out;
    }
    res = PQexecParams(conn, SHOW_SQL, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        hb_pg_error(conn, res, errstr, sizeof(errstr));
        fprintf(stderr, "%s: error: %s\n", PROG, errstr);
        goto out;
    }
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0) || PQgetisnull(res, 0, 1) ||
        PQgetisnull(res, 0, 2)) {
        fprintf(stderr, "%s: error: subscription %s has no current signing secret\n", PROG, sub_id);
        goto out;
    }
    secret_id = strtoll(PQgetvalue(res, 0, 0), &end, 10);
    /* The AAD names the subscription as PostgreSQL writes the uuid. */
    if (*end || hb_seal_aad_signing(aad, sizeof(aad), PQgetvalue(res, 0, 3), secret_id) < 0) {
        fprintf(stderr, "%s: error: unexpected row from hookbridge.sealed_signing_secret\n", PROG);
        goto out;
    }
    if (hb_unseal_hex(kr, PQgetvalue(res, 0, 2), aad, PQgetvalue(res, 0, 1), &secret, NULL, errstr,
                      sizeof(errstr)) < 0) {
        fprintf(stderr, "%s: error: subscription %s, signing secret %lld: %s\n", PROG,
                PQgetvalue(res, 0, 3), secret_id, errstr);
        goto out;
    }
    printf("%s\n", secret);
    status = fflush(stdout) == 0 ? 0 : 1;
out:
    hb_secret_free(secret);
    PQclear(res);
    if (conn)
        PQfinish(conn);
    hb_keyring_free(kr);
    return status;
}

int main(int argc, char **argv) {
    hb_config_t cfg;
    const char *cmd;
    int rc, want_args;

    if ((rc = hb_config_load_tool(&cfg, HB_PROG_SECRET, PROG, argc, argv, usage, 2)) >= 0)
        return rc;
    /* stdout is the command's answer (a secret, for SECRET=$(...)): a log
     * line, such as the warning that this host's clock is off (a connection
     * reads PostgreSQL's), goes to stderr */
    hb_log_init(PROG, HB_LOG_INFO);
    hb_log_to_stderr();
    cmd = cfg.args_cnt > 0 ? cfg.args[0] : NULL;
    want_args = cmd && !strcmp(cmd, "show") ? 2 : 1;
    if (!cmd || (strcmp(cmd, "generate-key") && strcmp(cmd, "key-id") && strcmp(cmd, "show"))) {
        if (cmd)
            fprintf(stderr, "%s: error: unknown command \"%s\"\n", PROG, cmd);
        usage(stderr);
        rc = 2;
    } else if (cfg.args_cnt != want_args) {
        if (cfg.args_cnt < want_args)
            fprintf(stderr, "%s: error: %s needs a subscription id\n", PROG, cmd);
        else
            fprintf(stderr, "%s: error: unexpected argument \"%s\"\n", PROG, cfg.args[want_args]);
        usage(stderr);
        rc = 2;
    } else if (!strcmp(cmd, "generate-key")) {
        rc = cmd_generate_key();
    } else if (!strcmp(cmd, "key-id")) {
        rc = cmd_key_id(&cfg);
    } else {
        rc = cmd_show(&cfg, cfg.args[1]);
    }
    hb_config_free(&cfg);
    return rc;
}
