/*
 * The delivery path, written once for the dispatcher and the retrier:
 * render -> sign -> send -> classify. The two programs differ only in where
 * work comes from and where failures go.
 *
 *   body = hb_deliver_render(sub, events, n, delivery_id, source, now)
 *   hb_deliver_send(http, sub, delivery_id, attempt, body, ...)   (signs with
 *       the subscription's current secrets at send time, fresh timestamp)
 *   ... done callback ... hb_deliver_classify(result) -> outcome + reason
 */
#ifndef HB_DELIVER_H
#define HB_DELIVER_H

#include <jansson.h>

#include "hb_common.h"
#include "hb_dlog.h"
#include "hb_event.h"
#include "hb_http.h"
#include "hb_sub.h"

typedef struct hb_payload_s {
    char *body; /* malloc'd */
    size_t len;
    const char *content_type; /* static string */
} hb_payload_t;

/* Renders the subscription's payload format for n events (n >= 1), each
 * reduced first to the subscription's field selection (sub->fields plus
 * uuid, published and eventType, which are always kept):
 * okta (default), application/json: {"eventType":"com.okta.event_hook",
 *   "eventTypeVersion":"1.0","cloudEventsVersion":"0.1","source":..,
 *   "eventId":<delivery id>,"eventTime":<now>,"contentType":"application/json",
 *   "data":{"events":[..]}}
 * cloudevents: one event: application/cloudevents+json {"specversion":"1.0",
 *   "id":<uuid>,"source":..,"type":<eventType>,"subject":<first User
 *   target's id, when delivered>,"time":<published>,
 *   "datacontenttype":"application/json","data":<event>}; a batch:
 *   application/cloudevents-batch+json, a JSON array of those.
 * event, application/json: the event itself; a batch: a JSON array of them.
 * A batch is n > 1 events, or one to a subscription with batch_max > 1 (its
 * bodies keep one shape, whatever the traffic).
 * The events are borrowed; each is written by copying its text (whole, or
 * member by member for a field selection): no jansson value is made. */
int hb_deliver_render(const hb_sub_t *sub, hb_event_t *const *events, size_t n,
                      const char *delivery_id, const char *source, int64_t now_ms,
                      hb_payload_t *out, char *errstr, size_t errstr_size) HB_MUSTCHECK;
/* The same for events given as jansson objects (tests, tools): each becomes
 * an hb_event_t first, so the bytes are those hb_deliver_render writes. */
int hb_deliver_render_json(const hb_sub_t *sub, json_t *const *events, size_t n,
                           const char *delivery_id, const char *source, int64_t now_ms,
                           hb_payload_t *out, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* The delivery id (the webhook-id) of events[0..n) to subscription sub_id,
 * written to id, derived from "delivery" (n == 1) or "batch", every event's
 * uuid and sub_id: the same events to the same subscription always get the
 * same id. Returns their uuids, comma-separated (the caller frees). */
char *hb_deliver_id(const char *sub_id, hb_event_t *const *events, size_t n,
                    char id[HB_UUID_LEN + 1]);
/* The same from the events' uuids (a delivery's event_ids, split). */
char *hb_deliver_id_of(const char *sub_id, const char *const *uuids, size_t n,
                       char id[HB_UUID_LEN + 1]);

/* A batch body of n events as hb_deliver_render wrote it (content_type its
 * content type), split without its events at hand (the retrier has only the
 * body): out[0] its first `half` events, out[1] the rest, each as the format
 * writes that many events (the okta envelope under eventId ids[k] and a fresh
 * eventTime now_ms; an array format's part is an array, of one event too). The
 * events are kept as they were rendered (the subscription's field selection
 * of then); types[k] (malloc'd) is the eventType of part k's first event.
 * -1 (errstr) when body is not a batch of n events. */
int hb_deliver_split_body(const char *body, size_t len, const char *content_type, size_t n,
                          size_t half, const char *const ids[2], int64_t now_ms,
                          hb_payload_t out[2], char *types[2], char *errstr,
                          size_t errstr_size) HB_MUSTCHECK;

/* Submits one attempt: POST with Content-Type, User-Agent, webhook-id,
 * webhook-timestamp, webhook-signature (all unexpired secrets), the auth
 * header when configured, then the subscription's custom headers. Takes ownership of payload->body.
 * The timeout is the subscription's timeout_ms, else default_timeout_ms. */
void hb_deliver_send(hb_http_t *http, const hb_sub_t *sub, const char *delivery_id,
                     hb_payload_t *payload, long long default_timeout_ms, size_t max_response_bytes,
                     hb_http_done_cb *done, void *opaque);

/* The same, the request borrowing payload->body: the caller keeps it,
 * unchanged, until the done callback has returned (no copy of the body is
 * made, so a delivery waiting for its host holds its payload once). */
void hb_deliver_send_borrowed(hb_http_t *http, const hb_sub_t *sub, const char *delivery_id,
                              const hb_payload_t *payload, long long default_timeout_ms,
                              size_t max_response_bytes, hb_http_done_cb *done, void *opaque);

/* 2xx delivered; timeouts, connection errors, 408, 429 and 5xx retryable;
 * 3xx (redirects are not followed), other 4xx and refused addresses final.
 * Writes the reason ("HTTP 503", "timeout after 10000 ms", "redirect (HTTP 302)
 * not followed") into reason; empty on success. */
hb_outcome_t hb_deliver_classify(const hb_http_result_t *res, char *reason, size_t reason_size);

/* Verification challenge: GET url with X-Okta-Verification-Challenge: <random>
 * (plus the auth header and the custom headers), signed like a delivery:
 * webhook-id <the challenge>, webhook-timestamp, webhook-signature over an
 * empty body with the subscription's unexpired secrets. The check of the
 * answer is hb_deliver_check_challenge. */
void hb_deliver_verify_send(hb_http_t *http, const hb_sub_t *sub, const char *challenge,
                            long long timeout_ms, hb_http_done_cb *done, void *opaque);
/* 0 when the response is 200 with JSON {"verification": challenge};
 * else -1 with reason "HTTP 404", "timeout after 5000 ms", "wrong echo",
 * "response is not JSON". */
int hb_deliver_check_challenge(const hb_http_result_t *res, const char *challenge, char *reason,
                               size_t reason_size);

#endif
