/*
 * Listen addresses.
 *
 * Every listening socket hookbridge opens (the operations endpoint in
 * hb_httpd, the reference receiver) is configured as one string: "host:port",
 * "[v6]:port" for an IPv6 literal, or ":port" for every address. The port is
 * the text after the last ':' and must be a decimal 0..65535 (0: the kernel
 * picks); the host is everything before it, brackets stripped, at most 255
 * bytes, and goes to getaddrinfo() with AI_PASSIVE | AI_NUMERICSERV, so an
 * empty host binds the wildcard address. Callers that want "*" to mean the
 * wildcard too say so with HB_LISTEN_STAR_ANY. The first address returned is
 * the one used. Nothing here keeps state: any thread may call it, and it may
 * block on DNS for a host name, so call it before serving, not from a loop.
 * Failures come back as a code plus a short reason, so each caller keeps its
 * own wording ("listen address ..." in a service log, "--listen ..." on a
 * command line).
 */
#include "hb_listen.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#define HB_LISTEN_HOST_MAX 256

/* The host (brackets stripped) and port of listen, without resolving. */
static int listen_parse(const char *listen, char host[HB_LISTEN_HOST_MAX], const char **portp,
                        char *errstr, size_t errstr_size) {
    const char *colon, *port, *h = listen;
    int portnum;
    size_t hlen;

    if (!listen || !(colon = strrchr(listen, ':'))) {
        hb_seterr(errstr, errstr_size, "not host:port");
        return HB_LISTEN_ESYNTAX;
    }
    port = colon + 1;
    /* digits only, as the integer settings: strtol alone would take "+80" and " 80" */
    if (*port == '-' || hb_parse_int(port, 0, 65535, &portnum) != 0) {
        hb_seterr(errstr, errstr_size, "bad port");
        return HB_LISTEN_EPORT;
    }
    hlen = (size_t)(colon - listen);
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (hlen >= HB_LISTEN_HOST_MAX) {
        hb_seterr(errstr, errstr_size, "host name too long");
        return HB_LISTEN_EHOST;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *portp = port;
    return HB_LISTEN_OK;
}

int hb_listen_check(const char *listen, char *errstr, size_t errstr_size) {
    char host[HB_LISTEN_HOST_MAX];
    const char *port;
    return listen_parse(listen, host, &port, errstr, errstr_size);
}

int hb_listen_resolve(const char *listen, unsigned flags, struct sockaddr_storage *ss,
                      socklen_t *len, char *errstr, size_t errstr_size) {
    char host[HB_LISTEN_HOST_MAX];
    const char *port;
    struct addrinfo hints, *res = NULL;
    int rc = listen_parse(listen, host, &port, errstr, errstr_size);
    if (rc != HB_LISTEN_OK)
        return rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int any = !*host || ((flags & HB_LISTEN_STAR_ANY) && !strcmp(host, "*"));
    rc = getaddrinfo(any ? NULL : host, port, &hints, &res);
    if (rc != 0 || !res) {
        hb_seterr(errstr, errstr_size, "%s", rc ? gai_strerror(rc) : "no address");
        if (res)
            freeaddrinfo(res);
        return HB_LISTEN_ERESOLVE;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return HB_LISTEN_OK;
}

uint16_t hb_listen_port(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}
