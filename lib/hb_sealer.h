/*
 * The sealer: seals what hookbridge.secret_inbox holds and moves values
 * sealed under an older key to the current one (lib/hb_sealer.c). Runs on the
 * caller's connection and thread; libpq types stay out of this header.
 */
#ifndef HB_SEALER_H
#define HB_SEALER_H

#include "hb_common.h"
#include "hb_seal.h"

struct pg_conn;

/* Seals every plaintext value waiting in the inbox with the current key of
 * keyring (NULL: nothing is sealed, 0). -1 on a failure, with the reason;
 * values sealed before it are kept. A lost connection shows in PQstatus. */
int hb_sealer_seal_inbox(struct pg_conn *conn, const hb_keyring_t *keyring, char *errstr,
                         size_t errstr_size) HB_MUSTCHECK;

/* Moves every value sealed under an older key keyring holds to its current
 * key (nothing to do with one key). A value that does not open is left, with
 * a warning naming its subscription. -1 on a database failure. */
int hb_sealer_reseal(struct pg_conn *conn, const hb_keyring_t *keyring, char *errstr,
                     size_t errstr_size) HB_MUSTCHECK;

/* The AAD that binds a sealed value to its row (lib/hb_seal.h): a signing
 * secret (secret_id > 0) or the auth value of subscription sub_id. -1 when
 * sub_id is not a subscription id. */
int hb_sealer_row_aad(char *aad, size_t n, const char *sub_id, long long secret_id, char *errstr,
                      size_t errstr_size) HB_MUSTCHECK;

#endif
