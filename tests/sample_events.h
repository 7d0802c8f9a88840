/*
 * The sample Okta System Log events the codec tests (tests/unit/test_codec.c)
 * and the fuzz seed generator (tests/fuzz/gen_seeds.c) share, so both speak of
 * the same event. The JSON text is exactly what gen_seeds writes to
 * tests/fuzz/corpus/event_json/, so regenerating the corpus leaves it as
 * committed: keep the non-ASCII as \u escapes.
 */
#ifndef HB_TESTS_SAMPLE_EVENTS_H
#define HB_TESTS_SAMPLE_EVENTS_H

/* A full Okta System Log event as Okta sends it (nulls left out). */
static const char full_event[] =
    "{\"uuid\":\"f1c9b0b4-6c59-11ee-9f1a-0b5d4c1e2a77\","
    "\"published\":\"2024-05-01T12:34:56.789Z\",\"eventType\":\"user.session.start\","
    "\"version\":\"0\",\"severity\":\"INFO\",\"legacyEventType\":\"core.user_auth.login_success\","
    "\"displayMessage\":\"User login to Okta\","
    "\"actor\":{\"id\":\"00u1abcdEFGHijkl0h7\",\"type\":\"User\","
    "\"alternateId\":\"grace@example.com\",\"displayName\":\"Grace Hopper\","
    "\"detailEntry\":{\"methodTypeUsed\":\"Password\"}},"
    "\"client\":{\"userAgent\":{\"rawUserAgent\":\"Mozilla/5.0 (Macintosh) Firefox/125.0\","
    "\"os\":\"Mac OS X\",\"browser\":\"FIREFOX\"},\"zone\":\"null\",\"device\":\"Computer\","
    "\"id\":\"cli1\",\"ipAddress\":\"198.51.100.7\",\"geographicalContext\":{\"city\":"
    "\"Z\\u00fcrich\",\"state\":\"Zurich\",\"country\":\"Switzerland\",\"postalCode\":\"8001\","
    "\"geolocation\":{\"lat\":47.3769,\"lon\":8.5417}}},"
    "\"outcome\":{\"result\":\"SUCCESS\"},"
    "\"target\":[{\"id\":\"0oa1app\",\"type\":\"AppInstance\",\"alternateId\":\"Slack\","
    "\"displayName\":\"Slack\"},{\"id\":\"00u1abcdEFGHijkl0h7\",\"type\":\"User\","
    "\"detailEntry\":{}}],"
    "\"transaction\":{\"type\":\"WEB\",\"id\":\"Zc3Vq1f\",\"detail\":{}},"
    "\"debugContext\":{\"debugData\":{\"requestId\":\"Zc3Vq1f\",\"requestUri\":\"/api/v1/authn\","
    "\"url\":\"/api/v1/authn?\"}},"
    "\"authenticationContext\":{\"authenticationProvider\":\"OKTA_AUTHENTICATION_PROVIDER\","
    "\"credentialProvider\":\"OKTA_CREDENTIAL_PROVIDER\",\"credentialType\":\"PASSWORD\","
    "\"issuer\":{\"id\":\"iss1\",\"type\":\"OKTA\"},\"externalSessionId\":\"102abc\","
    "\"interface\":\"Okta Dashboard\",\"authenticationStep\":0},"
    "\"securityContext\":{\"asNumber\":3303,\"asOrg\":\"swisscom\",\"isp\":\"swisscom ag\","
    "\"domain\":\"swisscom.ch\",\"isProxy\":false},"
    "\"request\":{\"ipChain\":[{\"ip\":\"198.51.100.7\",\"version\":\"V4\",\"source\":\"x\","
    "\"geographicalContext\":{\"city\":\"Z\\u00fcrich\",\"country\":\"Switzerland\","
    "\"geolocation\":{\"lat\":47.0,\"lon\":8.0}}},{\"ip\":\"203.0.113.9\",\"version\":\"V4\"}]}}";

/* The least an event may carry: its three required fields. */
#define MINIMAL_EVENT_UUID "u-1"
#define MINIMAL_EVENT_PUBLISHED "2024-05-01T00:00:00Z"
#define MINIMAL_EVENT_TYPE "user.account.lock"
static const char minimal_event[] =
    "{\"uuid\":\"" MINIMAL_EVENT_UUID "\",\"published\":\"" MINIMAL_EVENT_PUBLISHED
    "\",\"eventType\":\"" MINIMAL_EVENT_TYPE "\"}";

#endif
