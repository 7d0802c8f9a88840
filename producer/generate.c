/*
 * Synthetic identity events for `hookbridge-producer --generate N`: load for
 * benchmarks and demos that looks like an Okta org's System Log. A pool of
 * users (stable ids, so the same keys recur), a few admins, apps and groups;
 * sign-ins dominate the mix as they do in a real org, and some fail.
 *
 * Deterministic for a seed (splitmix64), single-threaded. Every event has an
 * eventType from the catalogue and published = now; uuid, version and
 * severity defaults are left to hb_event_normalize like any other input.
 */
#include "producer.h"

#include <stdio.h>
#include <string.h>

#include "hb_event.h"

#define HB_GEN_USERS 500

static uint64_t gen_next(hb_gen_t *g) {
    uint64_t z = (g->state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static size_t gen_below(hb_gen_t *g, size_t n) {
    return (size_t)(gen_next(g) % n);
}

#define PICK(g, arr) ((arr)[gen_below((g), HB_ARRAY_SIZE(arr))])

void hb_gen_init(hb_gen_t *g, uint64_t seed) {
    g->state = seed;
}

/* Okta-style id: 3-character prefix and 17 base62 characters. */
static void okta_id(char *out, size_t outsz, const char *prefix, uint64_t n) {
    static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    hb_gen_t h = {n * 2654435761ULL + 1};
    char tail[18];
    for (int i = 0; i < 17; i++)
        tail[i] = b62[gen_next(&h) % 62];
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

static json_t *gen_user(int u, int with_detail) {
    char id[24], login[96], name[96];
    const char *first = firsts[u % (int)HB_ARRAY_SIZE(firsts)];
    const char *last = lasts[(u / (int)HB_ARRAY_SIZE(firsts)) % (int)HB_ARRAY_SIZE(lasts)];
    okta_id(id, sizeof(id), "00u", (uint64_t)u);
    snprintf(login, sizeof(login), "%c.%s%d@example.com", first[0] | 0x20, last, u);
    for (char *c = login; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c | 0x20);
    snprintf(name, sizeof(name), "%s %s", first, last);
    json_t *j = json_pack("{s:s, s:s, s:s, s:s}", "id", id, "type", "User", "alternateId", login,
                          "displayName", name);
    if (with_detail)
        (void)json_object_set_new(j, "detailEntry", json_object());
    return j;
}

static json_t *gen_admin(hb_gen_t *g) {
    static const char *const admins[][2] = {{"it-admin@example.com", "IT Admin"},
                                            {"helpdesk@example.com", "Help Desk"},
                                            {"scim@example.com", "SCIM Provisioning"}};
    size_t a = gen_below(g, HB_ARRAY_SIZE(admins));
    char id[24];
    okta_id(id, sizeof(id), "00u", 100000 + a);
    return json_pack("{s:s, s:s, s:s, s:s}", "id", id, "type", "User", "alternateId", admins[a][0],
                     "displayName", admins[a][1]);
}

static json_t *gen_app(hb_gen_t *g) {
    static const char *const apps[][2] = {{"slack", "Slack"},     {"salesforce", "Salesforce"},
                                          {"github", "GitHub"},   {"zoomus", "Zoom"},
                                          {"workday", "Workday"}, {"google", "Google Workspace"}};
    size_t a = gen_below(g, HB_ARRAY_SIZE(apps));
    char id[24];
    okta_id(id, sizeof(id), "0oa", 200000 + a);
    return json_pack("{s:s, s:s, s:s, s:s}", "id", id, "type", "AppInstance", "alternateId",
                     apps[a][1], "displayName", apps[a][1]);
}

static json_t *gen_group(hb_gen_t *g) {
    static const char *const groups[] = {"Engineering", "Sales",       "Finance",
                                         "Support",     "Contractors", "Admins"};
    size_t i = gen_below(g, HB_ARRAY_SIZE(groups));
    char id[24];
    okta_id(id, sizeof(id), "00g", 300000 + i);
    return json_pack("{s:s, s:s, s:s, s:s}", "id", id, "type", "UserGroup", "alternateId",
                     groups[i], "displayName", groups[i]);
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

static void gen_context(hb_gen_t *g, json_t *ev, const char *uri) {
    size_t pl = gen_below(g, HB_ARRAY_SIZE(places)), ag = gen_below(g, HB_ARRAY_SIZE(agents));
    char ip[32], req[24], sess[24];
    static const char *const nets[] = {"198.51.100", "203.0.113", "192.0.2"};
    snprintf(ip, sizeof(ip), "%s.%u", PICK(g, nets), (unsigned)(1 + gen_below(g, 254)));
    random_token(g, req, sizeof(req));
    random_token(g, sess, sizeof(sess));
    json_t *geo =
        json_pack("{s:s, s:s, s:s, s:s, s:{s:f, s:f}}", "city", places[pl].city, "state",
                  places[pl].state, "country", places[pl].country, "postalCode", places[pl].postal,
                  "geolocation", "lat", places[pl].lat, "lon", places[pl].lon);
    (void)json_object_set_new(ev, "client",
                              json_pack("{s:{s:s, s:s, s:s}, s:s, s:s, s:s, s:O}", "userAgent",
                                        "rawUserAgent", agents[ag].raw, "os", agents[ag].os,
                                        "browser", agents[ag].browser, "zone", "null", "device",
                                        ag == 2 ? "Mobile" : "Computer", "ipAddress", ip,
                                        "geographicalContext", geo));
    (void)json_object_set_new(ev, "request",
                              json_pack("{s:[{s:s, s:s}]}", "ipChain", "ip", ip, "version", "V4"));
    (void)json_object_set_new(ev, "securityContext",
                              json_pack("{s:i, s:s, s:s, s:s, s:b}", "asNumber", places[pl].asn,
                                        "asOrg", places[pl].isp, "isp", places[pl].isp, "domain",
                                        places[pl].domain, "isProxy", 0));
    (void)json_object_set_new(ev, "transaction",
                              json_pack("{s:s, s:s, s:{}}", "type", "WEB", "id", req, "detail"));
    (void)json_object_set_new(ev, "debugContext",
                              json_pack("{s:{s:s, s:s, s:s}}", "debugData", "requestId", req,
                                        "requestUri", uri, "url", uri));
    (void)json_object_set_new(ev, "authenticationContext",
                              json_pack("{s:s, s:s, s:i}", "authenticationProvider",
                                        "OKTA_AUTHENTICATION_PROVIDER", "externalSessionId", sess,
                                        "authenticationStep", 0));
    json_decref(geo);
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

json_t *hb_gen_event(hb_gen_t *g) {
    const char *type = gen_type(g), *message = "Identity event", *legacy = NULL;
    int u = (int)gen_below(g, HB_GEN_USERS);
    int self_service = !strncmp(type, "user.session.", 13) ||
                       !strcmp(type, "user.authentication.sso") ||
                       !strcmp(type, "user.account.update_password") ||
                       !strcmp(type, "user.account.update_profile") ||
                       !strcmp(type, "user.account.lock") || !strncmp(type, "user.mfa.", 9);
    int failed = !strcmp(type, "user.session.start") && gen_below(g, 100) < 12;
    char published[32];
    json_t *ev, *targets = json_array();

    for (size_t i = 0; i < HB_ARRAY_SIZE(messages); i++)
        if (!strncmp(type, messages[i].prefix, strlen(messages[i].prefix))) {
            message = messages[i].message;
            legacy = messages[i].legacy;
            break;
        }
    hb_format_time(hb_wall_ms(), published, sizeof(published));
    ev = json_pack("{s:s, s:s, s:s, s:s}", "eventType", type, "published", published, "severity",
                   failed || !strcmp(type, "user.account.lock") ? "WARN" : "INFO", "displayMessage",
                   message);
    if (legacy)
        (void)json_object_set_new(ev, "legacyEventType",
                                  json_string(failed ? "core.user_auth.login_failed" : legacy));
    (void)json_object_set_new(ev, "actor", self_service ? gen_user(u, 1) : gen_admin(g));

    if (!strcmp(type, "user.authentication.sso")) {
        (void)json_array_append_new(targets, gen_app(g));
    } else if (!strncmp(type, "group.", 6)) {
        (void)json_array_append_new(targets, gen_user(u, 0));
        (void)json_array_append_new(targets, gen_group(g));
    } else if (!strncmp(type, "application.", 12)) {
        (void)json_array_append_new(targets, gen_user(u, 0));
        (void)json_array_append_new(targets, gen_app(g));
    } else if (strncmp(type, "user.session.", 13)) {
        (void)json_array_append_new(targets, gen_user(u, 0));
    }
    if (json_array_size(targets))
        (void)json_object_set_new(ev, "target", targets);
    else
        json_decref(targets);

    if (failed) {
        static const char *const reasons[] = {"INVALID_CREDENTIALS", "VERIFICATION_ERROR",
                                              "LOCKED_OUT"};
        (void)json_object_set_new(
            ev, "outcome",
            json_pack("{s:s, s:s}", "result", "FAILURE", "reason", PICK(g, reasons)));
    } else {
        (void)json_object_set_new(ev, "outcome", json_pack("{s:s}", "result", "SUCCESS"));
    }
    gen_context(g, ev, self_service ? "/idp/idx/identify" : "/api/v1/users");
    return ev;
}
