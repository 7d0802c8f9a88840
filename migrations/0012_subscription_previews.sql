-- 0012: previews of a subscription (hookbridge.preview(), sql/70_previews.sql):
-- one sample event of a type, rendered and signed as a real delivery to the
-- subscription would be, sent once to its endpoint by a dispatcher; the
-- request and its outcome are a row of hookbridge.previews.

CREATE TABLE hookbridge.previews (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    subscription_id uuid NOT NULL REFERENCES hookbridge.subscriptions (id) ON DELETE CASCADE,
    event_type      text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed', 'cancelled')),
    requested_at    timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    sent_at         timestamptz,
    http_status     integer,
    error           text,
    response        text,
    duration_ms     integer,
    content_type    text,
    body            text
);

CREATE INDEX previews_pending ON hookbridge.previews (requested_at) WHERE status = 'pending';
CREATE INDEX previews_subscription ON hookbridge.previews (subscription_id, requested_at);

COMMENT ON TABLE hookbridge.previews IS
    'Previews asked for with hookbridge.preview(): one sample event sent once to a subscription''s '
    'endpoint, and what it answered. Kept 7 days, and at most 20 per subscription.';
COMMENT ON COLUMN hookbridge.previews.id IS
    'The preview''s id, also the webhook-id of its request.';
COMMENT ON COLUMN hookbridge.previews.status IS
    'pending (not sent yet, or sent and not recorded yet); delivered (answered 2xx); failed (any '
    'other answer, or none: error says why); cancelled (the subscription was deregistered first).';
COMMENT ON COLUMN hookbridge.previews.claimed_until IS
    'While a dispatcher sends it: when its claim expires (then another dispatcher sends it).';
COMMENT ON COLUMN hookbridge.previews.sent_at IS 'When its request was sent.';
COMMENT ON COLUMN hookbridge.previews.response IS
    'The start of the response body (HOOKBRIDGE_RESPONSE_SNIPPET_BYTES).';
COMMENT ON COLUMN hookbridge.previews.body IS
    'The request body as sent (content_type): the subscription''s payload shape.';

-- sql/: sha256 3d8d2331f61ef02f1f9e2d19d4bfa573e84126d73badbf8f544cbc104fdbb764
