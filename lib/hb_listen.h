/*
 * Listen addresses: "host:port", "[v6]:port" or ":port" turned into a
 * passive address to bind (hb_httpd and hookbridge-receiver).
 */
#ifndef HB_LISTEN_H
#define HB_LISTEN_H

#include <stdint.h>
#include <sys/socket.h>

#include "hb_common.h"

/* What hb_listen_resolve() refused; errstr holds the reason in words. */
typedef enum {
    HB_LISTEN_OK = 0,
    HB_LISTEN_ESYNTAX = -1,  /* NULL, or no ':' */
    HB_LISTEN_EPORT = -2,    /* port empty or not a number in 0..65535 */
    HB_LISTEN_EHOST = -3,    /* host part longer than 255 bytes */
    HB_LISTEN_ERESOLVE = -4, /* getaddrinfo() found no address */
} hb_listen_err_t;

/* flags: host "*" means every address, like an empty host. */
#define HB_LISTEN_STAR_ANY 0x1u

/* Resolves listen to the first passive address getaddrinfo() gives; port 0
 * lets the kernel pick. Returns HB_LISTEN_OK, or a negative hb_listen_err_t
 * with a short reason (no address in it) in errstr. */
int hb_listen_resolve(const char *listen, unsigned flags, struct sockaddr_storage *ss,
                      socklen_t *len, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* hb_listen_resolve()'s checks of the text alone (no DNS): HB_LISTEN_OK, or
 * ESYNTAX, EPORT, EHOST with the reason in errstr. */
int hb_listen_check(const char *listen, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* The port of an AF_INET or AF_INET6 address, host order. */
uint16_t hb_listen_port(const struct sockaddr_storage *ss);

#endif
