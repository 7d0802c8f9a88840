-- sql/45_rate_limits.sql: the budget behind options.rate_limit, shared by
-- every replica of the dispatcher and the retrier.
--
-- Each subscription with a rate limit has one token bucket row
-- (hookbridge.rate_limit_buckets, migration 0004): it holds at most `burst`
-- tokens and refills at `per_second`, on the database's clock. A service that
-- holds deliveries for the subscription draws tokens with take_rate_tokens()
-- (asynchronously, on its store's request lane, never on the delivery loop)
-- and sends one request per token; tokens it cannot use within a short lease
-- (lib/hb_ratelimit.h) are dropped, never given back. So all replicas together
-- send at most burst + per_second * (T + lease) requests in any T seconds; see
-- docs/design.md, "Rate limits".
--
--   SQLSTATE  raised here (all codes: docs/sql.md, Errors)
--   --------  --------------------------------------------------------------
--   HB012     invalid argument (a NULL subscription id, wanted < 0)

-- Draws up to `wanted` tokens for a subscription. granted: how many were
-- taken (0 .. wanted); wait_ms: when none is left, the milliseconds until the
-- next one (0 otherwise). A subscription without a rate limit (or gone) is not
-- limited: everything wanted is granted, and no row is kept.
CREATE OR REPLACE FUNCTION hookbridge.take_rate_tokens(subscription_id uuid, wanted integer)
RETURNS TABLE (granted integer, wait_ms integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_rl     jsonb;
    v_rate   double precision;
    v_burst  double precision;
    v_now    timestamptz;
    v_tokens double precision;
    v_at     timestamptz;
    v_take   integer;
BEGIN
    IF take_rate_tokens.subscription_id IS NULL OR take_rate_tokens.wanted IS NULL
       OR take_rate_tokens.wanted < 0 THEN
        RAISE EXCEPTION 'subscription_id must not be NULL and wanted must be >= 0'
            USING ERRCODE = 'HB012';
    END IF;
    SELECT s.options -> 'rate_limit' INTO v_rl
      FROM hookbridge.subscriptions s
     WHERE s.id = take_rate_tokens.subscription_id AND s.deregistered_at IS NULL;
    IF v_rl IS NULL OR jsonb_typeof(v_rl) <> 'object' THEN
        DELETE FROM hookbridge.rate_limit_buckets b
         WHERE b.subscription_id = take_rate_tokens.subscription_id;
        RETURN QUERY SELECT take_rate_tokens.wanted, 0;
        RETURN;
    END IF;
    v_rate := (v_rl ->> 'per_second')::double precision;
    v_burst := coalesce((v_rl ->> 'burst')::double precision, ceil(v_rate));

    INSERT INTO hookbridge.rate_limit_buckets AS b (subscription_id, tokens, refilled_at)
    VALUES (take_rate_tokens.subscription_id, v_burst, clock_timestamp())
    ON CONFLICT ON CONSTRAINT rate_limit_buckets_pkey DO NOTHING;
    SELECT b.tokens, b.refilled_at INTO v_tokens, v_at
      FROM hookbridge.rate_limit_buckets b
     WHERE b.subscription_id = take_rate_tokens.subscription_id
       FOR UPDATE;
    -- deregistered while this waited for the row (deregister deletes the
    -- bucket, and holds its key until it commits): no bucket is put back
    IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM hookbridge.subscriptions s
                                 WHERE s.id = take_rate_tokens.subscription_id
                                   AND s.deregistered_at IS NULL) THEN
        DELETE FROM hookbridge.rate_limit_buckets b
         WHERE b.subscription_id = take_rate_tokens.subscription_id;
        RETURN QUERY SELECT take_rate_tokens.wanted, 0;
        RETURN;
    END IF;
    -- read once the row is ours: a time from before waiting for another
    -- replica's draw would turn refilled_at back, and the next draw would
    -- refill that interval twice
    v_now := clock_timestamp();
    -- refill; a clock that went back refills nothing
    v_tokens := least(v_burst,
                      v_tokens + v_rate * greatest(0, extract(epoch FROM v_now - v_at)));
    v_take := least(take_rate_tokens.wanted, floor(v_tokens)::integer);
    v_tokens := v_tokens - v_take;
    UPDATE hookbridge.rate_limit_buckets b SET tokens = v_tokens, refilled_at = v_now
     WHERE b.subscription_id = take_rate_tokens.subscription_id;
    -- capped at the largest integer (24 days): a tiny rate's wait is no error
    RETURN QUERY SELECT v_take,
                        CASE WHEN v_tokens >= 1 THEN 0
                             ELSE least(ceil((1 - v_tokens) / v_rate * 1000),
                                        2147483647)::integer END;
END
$$;

COMMENT ON FUNCTION hookbridge.take_rate_tokens(uuid, integer) IS
    'Services only: draws up to wanted tokens from the subscription''s shared rate-limit bucket '
    '(options.rate_limit); returns how many were granted and, when none is left, the ms until '
    'the next.';
