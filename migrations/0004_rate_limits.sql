-- 0004: the shared budget of the per-subscription rate limit (options.rate_limit).
--
-- One row per rate-limited subscription: a token bucket that every dispatcher
-- and retrier draws from through hookbridge.take_rate_tokens()
-- (sql/45_rate_limits.sql), so replicas together stay within the limit. The
-- row is made on the first draw and goes with its subscription. Small and hot:
-- updated on every draw, never scanned.
CREATE TABLE hookbridge.rate_limit_buckets (
    subscription_id uuid PRIMARY KEY
        REFERENCES hookbridge.subscriptions (id) ON DELETE CASCADE,
    tokens          double precision NOT NULL,
    refilled_at     timestamptz NOT NULL
);

COMMENT ON TABLE hookbridge.rate_limit_buckets IS
    'Token buckets of rate-limited subscriptions (options.rate_limit), shared by every '
    'replica through hookbridge.take_rate_tokens(). Written by that function only.';
COMMENT ON COLUMN hookbridge.rate_limit_buckets.tokens IS
    'Tokens left at refilled_at (0 .. burst); refilled at per_second on each draw.';
