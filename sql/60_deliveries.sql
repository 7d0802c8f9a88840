-- sql/60_deliveries.sql: the delivery log's side - endpoint health and
-- automatic deactivation, replay, and the operators' view of recent
-- deliveries.
--
-- Endpoint health. A statement trigger on delivery_attempts keeps, per
-- subscription, the consecutive failed attempts and since when it has been
-- failing. hookbridge.deactivate_failing(interval), run by the retrier every
-- minute, deactivates subscriptions failing for longer than that and records
-- why in subscriptions.deactivation_reason.
--
-- Replay. hookbridge.replay(delivery_id) marks a failed delivery 'replay';
-- the retrier claims such rows (hookbridge.claim_replays, a lease so that a
-- retrier that dies after claiming does not lose the request) and puts the
-- stored body back on the first delay tier, due at once, with a fresh retry
-- schedule and the same webhook-id. The delivery's next attempt row moves
-- its status on (delivered, retry or failed again).
--
--   SQLSTATE  raised here (all codes: docs/sql.md, Errors)
--   --------  --------------------------------------------------------------
--   HB010     subscription not found
--   HB012     invalid argument (deactivate_failing, replay_failed)
--   HB020     delivery not found
--   HB021     delivery cannot be replayed (not failed, no stored body, or its
--             subscription is deregistered or inactive)

-- Endpoint health ------------------------------------------------------------

CREATE OR REPLACE FUNCTION hookbridge._track_health() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    WITH a AS (
        SELECT d.subscription_id AS sid, n.started_at, n.outcome, n.error
          FROM new_rows n JOIN hookbridge.deliveries d USING (delivery_id)
         WHERE n.outcome = 'delivered'
            OR (n.outcome IN ('retry', 'failed') AND coalesce(n.error, '') NOT LIKE 'circuit open%')
    ), s AS (
        SELECT sid, max(started_at) FILTER (WHERE outcome = 'delivered') AS ok_at
          FROM a GROUP BY sid
    ), agg AS (
        SELECT s.sid, s.ok_at,
               count(a.*) FILTER (WHERE a.outcome <> 'delivered'
                                    AND a.started_at > coalesce(s.ok_at, '-infinity')) AS fails,
               min(a.started_at) FILTER (WHERE a.outcome <> 'delivered'
                                           AND a.started_at > coalesce(s.ok_at, '-infinity')) AS first_fail,
               max(a.started_at) FILTER (WHERE a.outcome <> 'delivered') AS last_fail,
               (array_agg(a.error ORDER BY a.started_at DESC)
                    FILTER (WHERE a.outcome <> 'delivered'))[1] AS last_err
          FROM s JOIN a USING (sid)
         GROUP BY s.sid, s.ok_at
    )
    INSERT INTO hookbridge.endpoint_health AS h
           (subscription_id, consecutive_failures, failing_since, last_success_at,
            last_failure_at, last_error)
    SELECT sid, fails, first_fail, ok_at, last_fail, last_err FROM agg
    ON CONFLICT (subscription_id) DO UPDATE SET
        consecutive_failures = CASE WHEN EXCLUDED.last_success_at IS NOT NULL
                                    THEN EXCLUDED.consecutive_failures
                                    ELSE h.consecutive_failures + EXCLUDED.consecutive_failures END,
        failing_since = CASE WHEN EXCLUDED.last_success_at IS NOT NULL THEN EXCLUDED.failing_since
                             ELSE coalesce(h.failing_since, EXCLUDED.failing_since) END,
        last_success_at = greatest(h.last_success_at, EXCLUDED.last_success_at),
        last_failure_at = greatest(h.last_failure_at, EXCLUDED.last_failure_at),
        last_error = coalesce(EXCLUDED.last_error, h.last_error);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER delivery_attempts_health AFTER INSERT ON hookbridge.delivery_attempts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hookbridge._track_health();

-- Deactivates live, active subscriptions that have failed every attempt for
-- longer than p_after. Returns what it deactivated and why.
CREATE OR REPLACE FUNCTION hookbridge.deactivate_failing(p_after interval)
RETURNS TABLE (subscription_id uuid, reason text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF p_after IS NULL OR p_after <= interval '0' THEN
        RAISE EXCEPTION 'p_after must be a positive interval' USING ERRCODE = 'HB012';
    END IF;
    RETURN QUERY
    UPDATE hookbridge.subscriptions s
       SET status = 'inactive',
           deactivation_reason = format(
               'deactivated automatically: every attempt failed since %s (%s consecutive failures; last error: %s)',
               to_char(h.failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               h.consecutive_failures, coalesce(h.last_error, 'none'))
      FROM hookbridge.endpoint_health h
     WHERE h.subscription_id = s.id
       AND s.status = 'active' AND s.deregistered_at IS NULL
       AND h.failing_since < now() - p_after
       AND (h.last_success_at IS NULL OR h.last_success_at < h.failing_since)
    RETURNING s.id, s.deactivation_reason;
END
$$;

-- activate() clears the reason of an earlier automatic deactivation.
CREATE OR REPLACE FUNCTION hookbridge._clear_deactivation_reason() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF NEW.status = 'active' AND OLD.status <> 'active' THEN
        NEW.deactivation_reason := NULL;
        -- a fresh start: old failures must not deactivate it again at once
        UPDATE hookbridge.endpoint_health h
           SET failing_since = NULL, consecutive_failures = 0
         WHERE h.subscription_id = NEW.id;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER subscriptions_reactivated BEFORE UPDATE OF status ON hookbridge.subscriptions
    FOR EACH ROW EXECUTE FUNCTION hookbridge._clear_deactivation_reason();

-- Replay ---------------------------------------------------------------------

CREATE OR REPLACE FUNCTION hookbridge._check_replayable(d hookbridge.deliveries) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_sub hookbridge.subscriptions;
BEGIN
    IF d.status <> 'failed' THEN
        RAISE EXCEPTION 'delivery % is %; only failed deliveries can be replayed', d.delivery_id, d.status
            USING ERRCODE = 'HB021';
    END IF;
    IF d.body IS NULL THEN
        RAISE EXCEPTION 'delivery % has no stored payload to replay', d.delivery_id
            USING ERRCODE = 'HB021';
    END IF;
    SELECT * INTO v_sub FROM hookbridge.subscriptions s WHERE s.id = d.subscription_id;
    IF NOT FOUND OR v_sub.deregistered_at IS NOT NULL THEN
        RAISE EXCEPTION 'delivery %: its subscription % is deregistered', d.delivery_id, d.subscription_id
            USING ERRCODE = 'HB021';
    END IF;
    IF v_sub.status <> 'active' THEN
        RAISE EXCEPTION 'delivery %: its subscription % is inactive; activate it first',
            d.delivery_id, d.subscription_id
            USING ERRCODE = 'HB021';
    END IF;
END
$$;

-- Sends a failed delivery again (same webhook-id, the stored payload, the
-- subscription's current URL and secret, a fresh retry schedule).
CREATE OR REPLACE FUNCTION hookbridge.replay(delivery_id uuid) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v hookbridge.deliveries;
BEGIN
    IF replay.delivery_id IS NULL THEN
        RAISE EXCEPTION 'delivery_id must not be NULL' USING ERRCODE = 'HB020';
    END IF;
    SELECT * INTO v FROM hookbridge.deliveries d WHERE d.delivery_id = replay.delivery_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'delivery % not found', replay.delivery_id USING ERRCODE = 'HB020',
            HINT = 'Delivery ids are the webhook-id values; see hookbridge.deliveries.';
    END IF;
    PERFORM hookbridge._check_replayable(v);
    UPDATE hookbridge.deliveries d
       SET status = 'replay', replay_requested_at = now(), replay_claimed_at = NULL
     WHERE d.delivery_id = replay.delivery_id;
    RETURN replay.delivery_id;
END
$$;

-- Replays every failed delivery of a subscription since a time; returns how
-- many. Deliveries without a stored payload are skipped.
CREATE OR REPLACE FUNCTION hookbridge.replay_failed(subscription_id uuid, since timestamptz)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_sub hookbridge.subscriptions;
    n     integer;
BEGIN
    IF replay_failed.subscription_id IS NULL OR replay_failed.since IS NULL THEN
        RAISE EXCEPTION 'subscription_id and since must not be NULL' USING ERRCODE = 'HB012';
    END IF;
    SELECT * INTO v_sub FROM hookbridge.subscriptions s WHERE s.id = replay_failed.subscription_id;
    IF NOT FOUND OR v_sub.deregistered_at IS NOT NULL THEN
        RAISE EXCEPTION 'subscription % not found', replay_failed.subscription_id
            USING ERRCODE = 'HB010';
    END IF;
    IF v_sub.status <> 'active' THEN
        RAISE EXCEPTION 'subscription % is inactive; activate it first', replay_failed.subscription_id
            USING ERRCODE = 'HB021';
    END IF;
    UPDATE hookbridge.deliveries d
       SET status = 'replay', replay_requested_at = now(), replay_claimed_at = NULL
     WHERE d.subscription_id = replay_failed.subscription_id
       AND d.status = 'failed' AND d.body IS NOT NULL
       AND d.last_attempt_at >= replay_failed.since;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- For the retrier: up to p_limit replay requests, each leased for
-- p_lease (a request whose retrier died is claimed again after that).
CREATE OR REPLACE FUNCTION hookbridge.claim_replays(p_limit integer, p_lease interval DEFAULT '5 minutes')
RETURNS TABLE (delivery_id uuid, subscription_id uuid, event_ids text, event_type text,
                          content_type text, body text, attempts integer, first_attempt_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    RETURN QUERY
    UPDATE hookbridge.deliveries d SET replay_claimed_at = now()
      FROM (SELECT c.delivery_id FROM hookbridge.deliveries c
             WHERE c.status = 'replay'
               AND (c.replay_claimed_at IS NULL OR c.replay_claimed_at < now() - p_lease)
             ORDER BY c.replay_requested_at
             LIMIT greatest(p_limit, 0)
             FOR UPDATE SKIP LOCKED) pick
     WHERE d.delivery_id = pick.delivery_id
    RETURNING d.delivery_id, d.subscription_id, d.event_ids, d.event_type,
              coalesce(d.content_type, 'application/json'), d.body, d.attempts,
              d.first_attempt_at;
END
$$;

-- Views ---------------------------------------------------------------------------------

-- The deliveries of live subscriptions in the last limit('recent_deliveries_days')
-- days. A deregistered subscription's history stays in hookbridge.deliveries.
CREATE OR REPLACE VIEW hookbridge.recent_deliveries AS
SELECT d.delivery_id,
       d.subscription_id,
       s.name AS subscription_name,
       d.event_type,
       d.event_ids,
       d.status,
       d.attempts,
       d.last_http_status,
       d.last_error,
       d.first_attempt_at,
       d.last_attempt_at,
       d.created_at
  FROM hookbridge.deliveries d
  JOIN hookbridge.subscriptions s ON s.id = d.subscription_id AND s.deregistered_at IS NULL
 WHERE d.created_at > now() - make_interval(days => hookbridge.limit('recent_deliveries_days')::integer);

COMMENT ON VIEW hookbridge.recent_deliveries IS
    'Deliveries of live subscriptions in the last limit(''recent_deliveries_days'') days, newest not ordered.';
