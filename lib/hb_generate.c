/*
 * Synthetic identity events for `hookbridge-producer --generate N`: load for
 * benchmarks and demos that looks like an Okta org's System Log; and the
 * sample event of a subscription's preview (hb_gen_event_of). A pool of
 * users (stable ids, so the same keys recur), a few admins, apps and groups;
 * sign-ins dominate the mix as they do in a real org, and some fail.
 *
 * Deterministic for a seed (splitmix64), single-threaded. Every event has an
 * eventType from the catalogue and published = now; uuid, version and
 * severity defaults are left to hb_event_normalize like any other input.
 *
 * Cheap per event, since the generator shares the CPU with what it loads:
 * what recurs (a user, an app, a group, a place's geography and security
 * context, a user agent, an outcome, constant strings) is made once, on
 * first use, and shared by reference between events; the rest is built
 * member by member (json_pack parses its format every time), with jansson's
 * _nocheck calls since every string here is known UTF-8; published rewrites
 * only its milliseconds within a second. The draws from the generator are
 * the same, in the same order, as when everything was made afresh: a seed
 * gives the same events.
 */
#include "hb_generate.h"

#include <stdio.h>
#include <string.h>

#include "hb_event.h"

static uint64_t splitmix(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static size_t gen_below(hb_gen_t *g, size_t n) {
    return (size_t)(splitmix(&g->state) % n);
}

#define PICK(g, arr) ((arr)[gen_below((g), HB_ARRAY_SIZE(arr))])

void hb_gen_init(hb_gen_t *g, uint64_t seed) {
    memset(g, 0, sizeof(*g));
    g->state = seed;
}

/* Okta-style id: 3-character prefix and 17 base62 characters. */
static void okta_id(char *out, size_t outsz, const char *prefix, uint64_t n) {
    static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    uint64_t h = n * 2654435761ULL + 1;
    char tail[18];
    for (int i = 0; i < 17; i++)
        tail[i] = b62[splitmix(&h) % 62];
    tail[17] = '\0';
    snprintf(out, outsz, "%s%s", prefix, tail);
}

static void random_token(hb_gen_t *g, char *out, size_t len) {
    static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for (size_t i = 0; i + 1 < len; i++)
        out[i] = b62[gen_below(g, 62)];
    out[len - 1] = '\0';
}

static const char *const firsts[] = {
    "Ada", "Grace",    "Alan",    "Barbara", "Edsger", "Frances", "Donald", "Katherine",
    "Ken", "Margaret", "Dennis",  "Radia",   "Linus",  "Hedy",    "John",   "Sophie",
    "Tim", "Annie",    "Niklaus", "Shafi",   "Leslie", "Jean",    "Bjarne", "Adele"};
static const char *const lasts[] = {
    "Lovelace", "Hopper",     "Turing",   "Liskov",   "Dijkstra",    "Allen",
    "Knuth",    "Johnson",    "Thompson", "Hamilton", "Ritchie",     "Perlman",
    "Torvalds", "Lamarr",     "Backus",   "Wilson",   "Berners-Lee", "Easley",
    "Wirth",    "Goldwasser", "Lamport",  "Bartik",   "Stroustrup",  "Goldberg"};

/* The constant values events share (g->consts). */
enum {
    K_USER, /* "User" */
    K_NULL, /* "null" */
    K_MOBILE,
    K_COMPUTER,
    K_V4,
    K_WEB,
    K_EMPTY, /* {} */
    K_OKTA_PROVIDER,
    K_ZERO,
    K_URI_IDENTIFY,
    K_URI_USERS,
    K_INFO,
    K_WARN,
    K_COUNT
};

_Static_assert(K_COUNT <= HB_ARRAY_SIZE(((hb_gen_t *)0)->consts), "hb_gen_t.consts");

static json_t *gen_const(hb_gen_t *g, int k) {
    static const char *const strings[] = {
        [K_USER] = "User",
        [K_NULL] = "null",
        [K_MOBILE] = "Mobile",
        [K_COMPUTER] = "Computer",
        [K_V4] = "V4",
        [K_WEB] = "WEB",
        [K_OKTA_PROVIDER] = "OKTA_AUTHENTICATION_PROVIDER",
        [K_URI_IDENTIFY] = "/idp/idx/identify",
        [K_URI_USERS] = "/api/v1/users",
        [K_INFO] = "INFO",
        [K_WARN] = "WARN",
    };
    if (!g->consts[k])
        g->consts[k] = k == K_EMPTY  ? json_object()
                       : k == K_ZERO ? json_integer(0)
                                     : json_string_nocheck(strings[k]);
    return g->consts[k];
}

/* Member setters: set_new takes v's reference, set_shared adds one. */
static void set_new(json_t *o, const char *key, json_t *v) {
    (void)json_object_set_new_nocheck(o, key, v);
}

static void set_str(json_t *o, const char *key, const char *s) {
    set_new(o, key, json_string_nocheck(s));
}

static void set_shared(json_t *o, const char *key, json_t *v) {
    (void)json_object_set_nocheck(o, key, v);
}

/* {id, type, alternateId, displayName}, as all actors and targets are. */
static json_t *gen_entity(hb_gen_t *g, const char *id, const char *type, const char *alt,
                          const char *name) {
    json_t *j = json_object();
    set_str(j, "id", id);
    if (!strcmp(type, "User"))
        set_shared(j, "type", gen_const(g, K_USER));
    else
        set_str(j, "type", type);
    set_str(j, "alternateId", alt);
    set_str(j, "displayName", name);
    return j;
}

/* User u (shared; one reference for the caller). */
static json_t *gen_user(hb_gen_t *g, int u, int with_detail) {
    json_t **slot = &g->users[u][with_detail ? 1 : 0];
    if (!*slot) {
        char id[24], login[96], name[96];
        const char *first = firsts[u % (int)HB_ARRAY_SIZE(firsts)];
        const char *last = lasts[(u / (int)HB_ARRAY_SIZE(firsts)) % (int)HB_ARRAY_SIZE(lasts)];
        okta_id(id, sizeof(id), "00u", (uint64_t)u);
        snprintf(login, sizeof(login), "%c.%s%d@example.com", first[0] | 0x20, last, u);
        for (char *c = login; *c; c++)
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c | 0x20);
        snprintf(name, sizeof(name), "%s %s", first, last);
        *slot = gen_entity(g, id, "User", login, name);
        if (with_detail)
            set_shared(*slot, "detailEntry", gen_const(g, K_EMPTY));
    }
    return json_incref(*slot);
}

static json_t *gen_admin(hb_gen_t *g) {
    static const char *const admins[][2] = {{"it-admin@example.com", "IT Admin"},
                                            {"helpdesk@example.com", "Help Desk"},
                                            {"scim@example.com", "SCIM Provisioning"}};
    size_t a = gen_below(g, HB_ARRAY_SIZE(admins));
    if (!g->admins[a]) {
        char id[24];
        okta_id(id, sizeof(id), "00u", 100000 + a);
        g->admins[a] = gen_entity(g, id, "User", admins[a][0], admins[a][1]);
    }
    return json_incref(g->admins[a]);
}

static json_t *gen_app(hb_gen_t *g) {
    static const char *const apps[][2] = {{"slack", "Slack"},     {"salesforce", "Salesforce"},
                                          {"github", "GitHub"},   {"zoomus", "Zoom"},
                                          {"workday", "Workday"}, {"google", "Google Workspace"}};
    size_t a = gen_below(g, HB_ARRAY_SIZE(apps));
    if (!g->apps[a]) {
        char id[24];
        okta_id(id, sizeof(id), "0oa", 200000 + a);
        g->apps[a] = gen_entity(g, id, "AppInstance", apps[a][1], apps[a][1]);
    }
    return json_incref(g->apps[a]);
}

static json_t *gen_group(hb_gen_t *g) {
    static const char *const groups[] = {"Engineering", "Sales",       "Finance",
                                         "Support",     "Contractors", "Admins"};
    size_t i = gen_below(g, HB_ARRAY_SIZE(groups));
    if (!g->groups[i]) {
        char id[24];
        okta_id(id, sizeof(id), "00g", 300000 + i);
        g->groups[i] = gen_entity(g, id, "UserGroup", groups[i], groups[i]);
    }
    return json_incref(g->groups[i]);
}

static const struct {
    const char *city, *state, *country, *postal;
    double lat, lon;
    const char *isp, *domain;
    int asn;
} places[] = {
    {"San Francisco", "California", "United States", "94107", 37.7697, -122.3933, "comcast",
     "comcast.net", 7922},
    {"New York", "New York", "United States", "10001", 40.7484, -73.9967, "verizon", "verizon.net",
     701},
    {"London", "England", "United Kingdom", "EC1A", 51.5164, -0.093, "british telecom", "bt.com",
     2856},
    {"Berlin", "Land Berlin", "Germany", "10117", 52.517, 13.3889, "deutsche telekom ag",
     "telekom.de", 3320},
    {"Zürich", "Zurich", "Switzerland", "8001", 47.3769, 8.5417, "swisscom ag", "swisscom.ch",
     3303},
    {"Bengaluru", "Karnataka", "India", "560001", 12.9716, 77.5946, "bharti airtel", "airtel.in",
     9498},
};

static const struct {
    const char *raw, *os, *browser;
} agents[] = {
    {"Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:125.0) Gecko/20100101 Firefox/125.0",
     "Mac OS X", "FIREFOX"},
    {"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Safari/537.36",
     "Windows 10", "CHROME"},
    {"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
     "Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
     "iOS", "MOBILE_SAFARI"},
    {"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
     "Safari/537.36",
     "Linux", "CHROME"},
};

_Static_assert(HB_ARRAY_SIZE(places) == HB_GEN_PLACES, "HB_GEN_PLACES");
_Static_assert(HB_ARRAY_SIZE(agents) == HB_GEN_AGENTS, "HB_GEN_AGENTS");

static json_t *gen_geo(hb_gen_t *g, size_t pl) {
    if (!g->geo[pl]) {
        json_t *j = json_object(), *loc = json_object();
        set_str(j, "city", places[pl].city);
        set_str(j, "state", places[pl].state);
        set_str(j, "country", places[pl].country);
        set_str(j, "postalCode", places[pl].postal);
        set_new(loc, "lat", json_real(places[pl].lat));
        set_new(loc, "lon", json_real(places[pl].lon));
        set_new(j, "geolocation", loc);
        g->geo[pl] = j;
    }
    return g->geo[pl];
}

static json_t *gen_security(hb_gen_t *g, size_t pl) {
    if (!g->security[pl]) {
        json_t *j = json_object();
        set_new(j, "asNumber", json_integer(places[pl].asn));
        set_str(j, "asOrg", places[pl].isp);
        set_str(j, "isp", places[pl].isp);
        set_str(j, "domain", places[pl].domain);
        set_new(j, "isProxy", json_false());
        g->security[pl] = j;
    }
    return g->security[pl];
}

static json_t *gen_agent(hb_gen_t *g, size_t ag) {
    if (!g->agents[ag]) {
        json_t *j = json_object();
        set_str(j, "rawUserAgent", agents[ag].raw);
        set_str(j, "os", agents[ag].os);
        set_str(j, "browser", agents[ag].browser);
        g->agents[ag] = j;
    }
    return g->agents[ag];
}

/* "<net>.<host>" without snprintf. */
static void put_ip(char *out, const char *net, unsigned host) {
    size_t n = strlen(net);
    char digits[4], *d = digits + sizeof(digits);
    memcpy(out, net, n);
    out[n++] = '.';
    do
        *--d = (char)('0' + host % 10);
    while ((host /= 10) != 0);
    memcpy(out + n, d, (size_t)(digits + sizeof(digits) - d));
    out[n + (size_t)(digits + sizeof(digits) - d)] = '\0';
}

static void gen_context(hb_gen_t *g, json_t *ev, int uri) {
    size_t pl = gen_below(g, HB_ARRAY_SIZE(places)), ag = gen_below(g, HB_ARRAY_SIZE(agents));
    char ip[32], req[24], sess[24];
    static const char *const nets[] = {"198.51.100", "203.0.113", "192.0.2"};
    unsigned host = (unsigned)(1 + gen_below(g, 254)); /* drawn before the net, as ever */
    json_t *client = json_object(), *request = json_object(), *chain = json_array(),
           *hop = json_object(), *tx = json_object(), *debug = json_object(), *data = json_object(),
           *auth = json_object(), *jip, *jreq;
    put_ip(ip, PICK(g, nets), host);
    random_token(g, req, sizeof(req));
    random_token(g, sess, sizeof(sess));
    jip = json_string_nocheck(ip);
    jreq = json_string_nocheck(req);

    set_shared(client, "userAgent", gen_agent(g, ag));
    set_shared(client, "zone", gen_const(g, K_NULL));
    set_shared(client, "device", gen_const(g, ag == 2 ? K_MOBILE : K_COMPUTER));
    set_shared(client, "ipAddress", jip);
    set_shared(client, "geographicalContext", gen_geo(g, pl));
    set_new(ev, "client", client);

    set_shared(hop, "ip", jip);
    set_shared(hop, "version", gen_const(g, K_V4));
    (void)json_array_append_new(chain, hop);
    set_new(request, "ipChain", chain);
    set_new(ev, "request", request);

    set_shared(ev, "securityContext", gen_security(g, pl));

    set_shared(tx, "type", gen_const(g, K_WEB));
    set_shared(tx, "id", jreq);
    set_shared(tx, "detail", gen_const(g, K_EMPTY));
    set_new(ev, "transaction", tx);

    set_shared(data, "requestId", jreq);
    set_shared(data, "requestUri", gen_const(g, uri));
    set_shared(data, "url", gen_const(g, uri));
    set_new(debug, "debugData", data);
    set_new(ev, "debugContext", debug);

    set_shared(auth, "authenticationProvider", gen_const(g, K_OKTA_PROVIDER));
    set_str(auth, "externalSessionId", sess);
    set_shared(auth, "authenticationStep", gen_const(g, K_ZERO));
    set_new(ev, "authenticationContext", auth);
    json_decref(jip);
    json_decref(jreq);
}

/* Sign-ins dominate a real System Log; the rest of the catalogue shares the remainder. */
static const char *gen_type(hb_gen_t *g) {
    size_t r = gen_below(g, 100), n = hb_event_types_count();
    if (r < 35)
        return "user.session.start";
    if (r < 50)
        return "user.authentication.sso";
    if (r < 60)
        return "user.session.end";
    return n ? hb_event_type_at(gen_below(g, n)) : "user.session.start";
}

static const struct {
    const char *prefix, *message, *legacy;
} messages[] = {
    {"user.session.start", "User login to Okta", "core.user_auth.login_success"},
    {"user.session.end", "User logout from Okta", "core.user_auth.logout_success"},
    {"user.authentication.sso", "User single sign on to app", "app.auth.sso"},
    {"user.lifecycle.create", "Create Okta user", "core.user.config.user_creation.success"},
    {"user.lifecycle.activate", "Activate Okta user", "core.user.config.user_activated"},
    {"user.lifecycle.deactivate", "Deactivate Okta user", "core.user.config.user_deactivated"},
    {"user.lifecycle.suspend", "Suspend Okta user", "core.user.config.user_suspended"},
    {"user.lifecycle.unsuspend", "Unsuspend Okta user", "core.user.config.user_unsuspended"},
    {"user.lifecycle.reactivate", "Reactivate Okta user", "core.user.config.user_reactivated"},
    {"user.lifecycle.delete", "Delete Okta user", "core.user.config.user_deleted"},
    {"user.account.update_password", "User update password for Okta",
     "core.user.config.password_update.success"},
    {"user.account.reset_password", "Fulfill reset password request",
     "core.user.config.password_reset"},
    {"user.account.lock", "Max sign in attempts exceeded", "core.user.account.locked"},
    {"user.account.unlock", "Unlock user account", "core.user.account.unlocked"},
    {"user.account.update_profile", "Update user profile for Okta",
     "core.user.config.profile_update.success"},
    {"user.mfa.factor.activate", "User set up MFA factor", "core.user.factor.activate"},
    {"user.mfa.factor.deactivate", "Reset factor for user", "core.user.factor.deactivate"},
    {"group.user_membership.add", "Add user to group membership",
     "core.user_group_member.user_add"},
    {"group.user_membership.remove", "Remove user from group membership",
     "core.user_group_member.user_remove"},
    {"application.user_membership.add", "Add user to application membership",
     "app.generic.provision.assign_user_to_app"},
    {"application.user_membership.remove", "Remove user from application membership",
     "app.generic.unauth_app_access_attempt"},
};

/* {result: SUCCESS} or, failed, {result: FAILURE, reason} (shared). */
static json_t *gen_outcome(hb_gen_t *g, int failed) {
    static const char *const reasons[] = {"INVALID_CREDENTIALS", "VERIFICATION_ERROR",
                                          "LOCKED_OUT"};
    size_t k = failed ? 1 + gen_below(g, HB_ARRAY_SIZE(reasons)) : 0;
    if (!g->outcomes[k]) {
        json_t *j = json_object();
        set_str(j, "result", k ? "FAILURE" : "SUCCESS");
        if (k)
            set_str(j, "reason", reasons[k - 1]);
        g->outcomes[k] = j;
    }
    return g->outcomes[k];
}

/* hb_format_time of now: the whole text once a second, else the milliseconds. */
static const char *gen_published(hb_gen_t *g) {
    int64_t now = hb_wall_ms(), ms = now % 1000;
    size_t len;
    if (!g->published[0] || now / 1000 != g->published_sec) {
        hb_format_time(now, g->published, sizeof(g->published));
        g->published_sec = now / 1000;
        return g->published;
    }
    len = strlen(g->published); /* ...SS.mmmZ */
    g->published[len - 4] = (char)('0' + ms / 100);
    g->published[len - 3] = (char)('0' + ms / 10 % 10);
    g->published[len - 2] = (char)('0' + ms % 10);
    return g->published;
}

json_t *hb_gen_event(hb_gen_t *g) {
    return hb_gen_event_of(g, gen_type(g));
}

json_t *hb_gen_event_of(hb_gen_t *g, const char *type) {
    const char *message = "Identity event", *legacy = NULL;
    int u = (int)gen_below(g, HB_GEN_USERS);
    int self_service = !strncmp(type, "user.session.", 13) ||
                       !strcmp(type, "user.authentication.sso") ||
                       !strcmp(type, "user.account.update_password") ||
                       !strcmp(type, "user.account.update_profile") ||
                       !strcmp(type, "user.account.lock") || !strncmp(type, "user.mfa.", 9);
    int failed = !strcmp(type, "user.session.start") && gen_below(g, 100) < 12;
    json_t *ev = json_object(), *targets = NULL;

    for (size_t i = 0; i < HB_ARRAY_SIZE(messages); i++)
        if (!strncmp(type, messages[i].prefix, strlen(messages[i].prefix))) {
            message = messages[i].message;
            legacy = messages[i].legacy;
            break;
        }
    set_str(ev, "eventType", type);
    set_str(ev, "published", gen_published(g));
    set_shared(ev, "severity",
               gen_const(g, failed || !strcmp(type, "user.account.lock") ? K_WARN : K_INFO));
    set_str(ev, "displayMessage", message);
    if (legacy)
        set_str(ev, "legacyEventType", failed ? "core.user_auth.login_failed" : legacy);
    set_new(ev, "actor", self_service ? gen_user(g, u, 1) : gen_admin(g));

    if (!strcmp(type, "user.authentication.sso")) {
        targets = json_array();
        (void)json_array_append_new(targets, gen_app(g));
    } else if (!strncmp(type, "group.", 6)) {
        targets = json_array();
        (void)json_array_append_new(targets, gen_user(g, u, 0));
        (void)json_array_append_new(targets, gen_group(g));
    } else if (!strncmp(type, "application.", 12)) {
        targets = json_array();
        (void)json_array_append_new(targets, gen_user(g, u, 0));
        (void)json_array_append_new(targets, gen_app(g));
    } else if (strncmp(type, "user.session.", 13)) {
        targets = json_array();
        (void)json_array_append_new(targets, gen_user(g, u, 0));
    }
    if (targets)
        set_new(ev, "target", targets);

    set_shared(ev, "outcome", gen_outcome(g, failed));
    gen_context(g, ev, self_service ? K_URI_IDENTIFY : K_URI_USERS);
    return ev;
}

void hb_gen_free(hb_gen_t *g) {
    for (size_t i = 0; i < HB_GEN_USERS; i++)
        for (size_t k = 0; k < 2; k++)
            json_decref(g->users[i][k]);
    for (size_t i = 0; i < HB_ARRAY_SIZE(g->admins); i++)
        json_decref(g->admins[i]);
    for (size_t i = 0; i < HB_ARRAY_SIZE(g->apps); i++)
        json_decref(g->apps[i]);
    for (size_t i = 0; i < HB_ARRAY_SIZE(g->groups); i++)
        json_decref(g->groups[i]);
    for (size_t i = 0; i < HB_GEN_PLACES; i++) {
        json_decref(g->geo[i]);
        json_decref(g->security[i]);
    }
    for (size_t i = 0; i < HB_GEN_AGENTS; i++)
        json_decref(g->agents[i]);
    for (size_t i = 0; i < HB_ARRAY_SIZE(g->outcomes); i++)
        json_decref(g->outcomes[i]);
    for (size_t i = 0; i < HB_ARRAY_SIZE(g->consts); i++)
        json_decref(g->consts[i]);
    memset(g, 0, sizeof(*g));
}
