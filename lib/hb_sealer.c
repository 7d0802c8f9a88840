/*
 * The sealer: plaintext secrets into sealed values, and sealed values onto
 * the current key.
 *
 * The design is simple: the SQL functions (register, rotate_secret,
 * set_auth ...) never see a key, so they leave each new value in plaintext in
 * hookbridge.secret_inbox and NOTIFY hookbridge_seal. A service that holds
 * the key takes the inbox in batches (hookbridge.secrets_to_seal, which
 * locks the rows it returns), seals each value (AES-256-GCM, lib/hb_seal.h,
 * bound to its row by the AAD) and stores it (hookbridge.seal_store), one
 * transaction per batch: what was sealed before a failure is kept. Re-sealing
 * moves values sealed under an older key this service holds
 * (HOOKBRIDGE_SECRET_KEYS_OLD) to the current one the same way
 * (sealed_under_other_keys, reseal).
 *
 * It runs on the caller's connection and thread (the store's) and keeps no
 * state. A failure leaves no transaction open; the caller sees a lost
 * connection through PQstatus. No plaintext and no key reaches a message.
 */
#include "hb_sealer.h"

#include <errno.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

#include "hb_buf.h"
#include "hb_log.h"
#include "hb_pg.h"
#include "hb_sign.h"

#define SEALER_BATCH 100 /* inbox rows (or values to re-seal) per transaction */
#define SEALER_BATCH_STR "100"

typedef struct {
    PGconn *conn;
    const hb_keyring_t *keyring;
} sealer_t;

int hb_sealer_row_aad(char *aad, size_t n, const char *sub_id, long long secret_id, char *errstr,
                      size_t errstr_size) {
    int rc = secret_id > 0 ? hb_seal_aad_signing(aad, n, sub_id, secret_id)
                           : hb_seal_aad_auth(aad, n, sub_id);
    if (rc < 0)
        hb_seterr(errstr, errstr_size, "not a subscription id: \"%.40s\"", sub_id);
    return rc;
}

/* A row id; -1 when s is not a non-negative integer. */
static int parse_id(const char *s, long long *out) {
    char *end;
    long long v;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 0)
        return -1;
    *out = v;
    return 0;
}

static int sealer_command(sealer_t *sl, const char *sql, char *errstr, size_t errstr_size) {
    PGresult *res = PQexecParams(sl->conn, sql, 0, NULL, NULL, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        return hb_pg_fail(sl->conn, res, sql, errstr, errstr_size);
    PQclear(res);
    return 0;
}

/* Ends the transaction of a failed pass (the connection may be gone). */
static int sealer_abort(sealer_t *sl, int rc) {
    char ignored[64];
    if (PQstatus(sl->conn) == CONNECTION_OK && PQtransactionStatus(sl->conn) != PQTRANS_IDLE)
        (void)sealer_command(sl, "ROLLBACK", ignored, sizeof(ignored));
    return rc;
}

/* Why inbox row i of res cannot be sealed, in why (then 1), whatever key
 * seals it; 0 when it can be tried. */
static int row_unsealable(const PGresult *res, int i, long long *inbox_id, long long *secret_id,
                          char *why, size_t why_size) {
    char aad[128];
    size_t len = (size_t)PQgetlength(res, i, 4);
    *secret_id = 0;
    if (parse_id(PQgetvalue(res, i, 0), inbox_id) < 0) {
        *inbox_id = -1;
        hb_seterr(why, why_size, "inbox row without an id");
        return 1;
    }
    if (!strcmp(PQgetvalue(res, i, 2), "signing") &&
        (parse_id(PQgetvalue(res, i, 3), secret_id) < 0 || *secret_id <= 0)) {
        hb_seterr(why, why_size, "inbox row without a secret row id");
        return 1;
    }
    if (hb_sealer_row_aad(aad, sizeof(aad), PQgetvalue(res, i, 1), *secret_id, why, why_size) < 0)
        return 1;
    if (len > HB_SEAL_MAX_PLAINTEXT) {
        hb_seterr(why, why_size, "the value is %zu bytes, more than a sealed value may hold (%u)",
                  len, HB_SEAL_MAX_PLAINTEXT);
        return 1;
    }
    return 0;
}

/* Sets inbox row inbox_id aside (hookbridge.seal_refuse) with why, and says
 * so: a row that cannot be sealed must not stand before the others at every
 * pass (secrets_to_seal hands the inbox out oldest first). 0, or -1 on a
 * database error. */
static int refuse_row(sealer_t *sl, const char *sub_id, const char *kind, long long inbox_id,
                      const char *why, char *errstr, size_t errstr_size) {
    char id[32];
    const char *params[2] = {id, why};
    PGresult *res;
    if (inbox_id < 0) /* cannot be (an identity column); nothing to name */
        return 0;
    snprintf(id, sizeof(id), "%lld", inbox_id);
    res = PQexecParams(sl->conn, "SELECT hookbridge.seal_refuse($1::bigint, $2::text)", 2, NULL,
                       params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return hb_pg_fail(sl->conn, res, "setting aside a secret that cannot be sealed", errstr,
                          errstr_size);
    PQclear(res);
    hb_log(HB_LOG_ERROR, HB_KV("subscription_id", sub_id, "inbox_id", id),
           "cannot seal its %s: %s; set aside (hookbridge.secret_status shows it unsealable), "
           "the others are sealed; set it again with %s",
           strcmp(kind, "signing") ? "auth value" : "signing secret", why,
           strcmp(kind, "signing") ? "update()" : "rotate_secret()");
    return 0;
}

/* Seals one batch of hookbridge.secret_inbox in one transaction, the batch
 * stored with one statement (seal_store over the arrays of inbox ids and
 * sealed values: 10,000 new subscriptions took 5 s one statement each, while
 * the follower took no event); returns the number of rows sealed or set
 * aside, -1 on a database error or when sealing itself fails (what was
 * sealed before is kept). A row that cannot be sealed, whatever the key (too
 * long, or not a row of a subscription), is set aside and the batch goes on. */
static int seal_batch(sealer_t *sl, char *errstr, size_t errstr_size) {
    static const char batch[] = SEALER_BATCH_STR;
    const char *params[3];
    char aad[128], why[256], ignored[256], *hex = NULL;
    hb_buf_t ids = {0}, vals = {0};
    PGresult *res, *r2;
    int n, failed = 0, stored = 0, secrets = 0, refused = 0;

    if (sealer_command(sl, "BEGIN", errstr, errstr_size) < 0)
        return -1;
    params[0] = batch;
    res = PQexecParams(sl->conn,
                       "SELECT inbox_id::text, subscription_id::text, kind, secret_id::text, value"
                       "  FROM hookbridge.secrets_to_seal($1::integer)",
                       1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return sealer_abort(
            sl, hb_pg_fail(sl->conn, res, "taking secrets to seal", errstr, errstr_size));
    n = PQntuples(res);
    hb_buf_puts(&ids, "{");
    hb_buf_puts(&vals, "{");
    for (int i = 0; i < n; i++) {
        const char *sub_id = PQgetvalue(res, i, 1), *value = PQgetvalue(res, i, 4);
        long long secret_id, inbox_id;
        if (row_unsealable(res, i, &inbox_id, &secret_id, why, sizeof(why))) {
            if (refuse_row(sl, sub_id, PQgetvalue(res, i, 2), inbox_id, why, errstr, errstr_size) <
                0) {
                PQclear(res);
                hb_buf_free(&ids);
                hb_buf_free(&vals);
                return sealer_abort(sl, -1);
            }
            refused += inbox_id >= 0;
            continue;
        }
        if (hb_sealer_row_aad(aad, sizeof(aad), sub_id, secret_id, errstr, errstr_size) < 0 ||
            hb_seal_hex(sl->keyring, aad, value, (size_t)PQgetlength(res, i, 4), &hex, errstr,
                        errstr_size) < 0) {
            failed = 1; /* the cipher's failure, not the row's: stop here */
            break;
        }
        /* array literals: a number and lower-case hex need no quoting */
        hb_buf_printf(&ids, "%s%lld", stored ? "," : "", inbox_id);
        hb_buf_printf(&vals, "%s%s", stored ? "," : "", hex);
        free(hex);
        hex = NULL;
        stored++;
        secrets += secret_id > 0;
        hb_log(HB_LOG_DEBUG, HB_KV("subscription_id", sub_id), "sealing its %s",
               secret_id ? "signing secret" : "auth value");
    }
    PQclear(res);
    hb_buf_puts(&ids, "}");
    hb_buf_puts(&vals, "}");
    if (stored > 0) { /* what was sealed before a failure is kept */
        params[0] = ids.p;
        params[1] = vals.p;
        params[2] = hb_keyring_current_id(sl->keyring);
        r2 = PQexecParams(sl->conn,
                          "SELECT hookbridge.seal_store(t.inbox_id, t.sealed, $3::text)"
                          "  FROM unnest($1::bigint[], $2::text[]) AS t(inbox_id, sealed)",
                          3, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r2) != PGRES_TUPLES_OK) {
            hb_buf_free(&ids);
            hb_buf_free(&vals);
            return sealer_abort(
                sl, hb_pg_fail(sl->conn, r2, "storing sealed secrets", errstr, errstr_size));
        }
        PQclear(r2);
    }
    hb_buf_free(&ids);
    hb_buf_free(&vals);
    if (sealer_command(sl, "COMMIT", failed ? ignored : errstr,
                       failed ? sizeof(ignored) : errstr_size) < 0)
        return sealer_abort(sl, -1);
    if (stored > 0)
        hb_info("sealed %d signing secret(s) and %d auth value(s)", secrets, stored - secrets);
    /* the rows taken, when each was sealed or set aside (the caller takes
     * another batch after a full one: never the same rows again and again) */
    return failed ? -1 : stored + refused;
}

/* Moves one batch of values sealed under an older key this service holds
 * to the current key; returns how many it moved (-1 on a database error).
 * A value that does not open (altered, or from another row) is left, and said. */
static int reseal_batch(sealer_t *sl, const char *old_ids, char *errstr, size_t errstr_size) {
    static const char batch[] = SEALER_BATCH_STR;
    const char *current = hb_keyring_current_id(sl->keyring), *params[6];
    char aad[128], why[256], *plain = NULL, *hex = NULL;
    PGresult *res, *r2;
    int n, moved = 0;

    if (sealer_command(sl, "BEGIN", errstr, errstr_size) < 0)
        return -1;
    params[0] = old_ids;
    params[1] = batch;
    res = PQexecParams(sl->conn,
                       "SELECT kind, subscription_id::text, secret_id::text, sealed, key_id"
                       "  FROM hookbridge.sealed_under_other_keys($1::text[], $2::integer)",
                       2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return sealer_abort(
            sl, hb_pg_fail(sl->conn, res, "finding secrets under old keys", errstr, errstr_size));
    n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        const char *kind = PQgetvalue(res, i, 0), *sub_id = PQgetvalue(res, i, 1);
        const char *key_id = PQgetvalue(res, i, 4);
        size_t len;
        long long secret_id = 0;
        if (!strcmp(kind, "signing") && parse_id(PQgetvalue(res, i, 2), &secret_id) < 0)
            secret_id = 0; /* cannot be (a row id); the AAD then does not match */
        if (hb_sealer_row_aad(aad, sizeof(aad), sub_id, secret_id, why, sizeof(why)) < 0 ||
            hb_unseal_hex(sl->keyring, key_id, aad, PQgetvalue(res, i, 3), &plain, &len, why,
                          sizeof(why)) < 0) {
            hb_log(HB_LOG_WARN, HB_KV("subscription_id", sub_id),
                   "cannot move its %s to the current key: %s",
                   secret_id ? "signing secret" : "auth value", why);
            continue;
        }
        if (hb_seal_hex(sl->keyring, aad, plain, len, &hex, errstr, errstr_size) < 0) {
            hb_secret_free(plain);
            PQclear(res);
            return sealer_abort(sl, -1);
        }
        hb_secret_free(plain);
        params[0] = kind;
        params[1] = sub_id;
        params[2] = PQgetisnull(res, i, 2) ? NULL : PQgetvalue(res, i, 2);
        params[3] = key_id;
        params[4] = hex;
        params[5] = current;
        r2 = PQexecParams(sl->conn,
                          "SELECT hookbridge.reseal($1::text, $2::uuid, $3::bigint, $4::text,"
                          " $5::text, $6::text)",
                          6, NULL, params, NULL, NULL, 0);
        free(hex);
        if (PQresultStatus(r2) != PGRES_TUPLES_OK) {
            PQclear(res);
            return sealer_abort(
                sl, hb_pg_fail(sl->conn, r2, "re-sealing a secret", errstr, errstr_size));
        }
        PQclear(r2);
        moved++;
    }
    PQclear(res);
    if (sealer_command(sl, "COMMIT", errstr, errstr_size) < 0)
        return sealer_abort(sl, -1);
    return moved;
}

/* Moves every value sealed under an older key this service holds
 * (HOOKBRIDGE_SECRET_KEYS_OLD) to the current key. */
static int reseal_all(sealer_t *sl, char *errstr, size_t errstr_size) {
    char old_ids[1024];
    size_t len = 0, cnt;
    int moved, total = 0;

    if (!sl->keyring || (cnt = hb_keyring_count(sl->keyring)) < 2)
        return 0;
    /* A text[] literal of key ids (16 hex digits each: nothing to quote). */
    old_ids[len++] = '{';
    for (size_t i = 1; i < cnt && len + HB_SEAL_KEY_ID_LEN + 3 < sizeof(old_ids); i++)
        len += (size_t)snprintf(old_ids + len, sizeof(old_ids) - len, "%s%s", i > 1 ? "," : "",
                                hb_keyring_id(sl->keyring, i));
    snprintf(old_ids + len, sizeof(old_ids) - len, "}");
    do {
        if ((moved = reseal_batch(sl, old_ids, errstr, errstr_size)) < 0)
            return -1;
        total += moved;
    } while (moved > 0);
    if (total)
        hb_info("secrets moved to the current key %s: %d", hb_keyring_current_id(sl->keyring),
                total);
    return 0;
}

int hb_sealer_seal_inbox(struct pg_conn *conn, const hb_keyring_t *keyring, char *errstr,
                         size_t errstr_size) {
    sealer_t sl = {conn, keyring};
    int n;
    if (!keyring)
        return 0;
    do {
        n = seal_batch(&sl, errstr, errstr_size);
    } while (n == SEALER_BATCH);
    return n < 0 ? -1 : 0;
}

int hb_sealer_reseal(struct pg_conn *conn, const hb_keyring_t *keyring, char *errstr,
                     size_t errstr_size) {
    sealer_t sl = {conn, keyring};
    return reseal_all(&sl, errstr, errstr_size);
}
