-- sql/70_previews.sql: previews of a subscription - one sample event sent
-- once to its endpoint, as Okta's event hook "Preview", GitHub's "ping" or
-- Stripe's "send test webhook" do - and the dispatcher's side of them.
--
-- hookbridge.preview(id, event_type) adds a row to hookbridge.previews and
-- notifies hookbridge_preview (payload: the preview's id). A dispatcher
-- claims it (claim_preview: a lease, so one replica sends it; a replica that
-- dies, or cannot record the outcome, leaves it to be claimed again when the
-- lease ends - the endpoint may then get the preview twice, with the same
-- webhook-id), builds a sample event of the type (obviously fake data),
-- renders, signs and sends it exactly as a delivery to the subscription,
-- once, and records the outcome (record_preview). One the HTTP engine does
-- not send now (the host's queue full) is given back (release_preview),
-- claimable again a second later, and recorded failed, saying why, when its
-- endpoint stays busy through 12 x max_queue_wait of tries; one whose
-- subscription the dispatcher cannot load (a secret sealed under a key it
-- lacks) is given back for the other replicas, and recorded failed, saying
-- why, when none has sent it 6 s later. A preview is not retried after an answer,
-- not in the delivery log, not counted in the endpoint's health (automatic
-- deactivation) or its rate limit. It is sent whatever the subscription's
-- status and verification, but not once it is deregistered (cancelled).
-- Each preview() removes the previews asked for more than 7 days ago and
-- keeps the subscription's 20 newest, and every one still pending.
--
--   SQLSTATE  raised here (all codes: docs/sql.md, Errors)
--   --------  --------------------------------------------------------------
--   HB003     unknown event type (not in hookbridge.event_types)
--   HB010     subscription not found (unknown id, or deregistered)
--   HB012     invalid argument to an internal function (a lease not positive,
--             a negative delay)
--   HB015     a NULL subscription id
--   HB029     the subscription does not take that event type

CREATE OR REPLACE FUNCTION hookbridge.preview(subscription_id uuid, event_type text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_sub hookbridge.subscriptions := hookbridge._live(preview.subscription_id);
    v_type text := preview.event_type;
    v_id uuid;
BEGIN
    IF v_type IS NULL THEN
        SELECT t.event_type INTO v_type FROM hookbridge.subscription_event_types t
         WHERE t.subscription_id = v_sub.id ORDER BY t.event_type LIMIT 1;
    ELSIF NOT EXISTS (SELECT 1 FROM hookbridge.event_types e WHERE e.name = v_type) THEN
        RAISE EXCEPTION 'unknown event type "%"', v_type
            USING ERRCODE = 'HB003', HINT = 'The known event types are in hookbridge.event_types.';
    ELSIF NOT EXISTS (SELECT 1 FROM hookbridge.subscription_event_types t
                       WHERE t.subscription_id = v_sub.id AND t.event_type = v_type) THEN
        RAISE EXCEPTION 'subscription % does not take event type "%"', v_sub.id, v_type
            USING ERRCODE = 'HB029',
                  HINT = 'Preview one of its types (subscription_event_types), or subscribe(id, ARRAY[type]) first.';
    END IF;
    DELETE FROM hookbridge.previews p WHERE p.requested_at < now() - interval '7 days';
    -- a pending one is not removed: it was asked for, its id handed out,
    -- and a dispatcher may be sending it (an operator's loop of previews
    -- gets every one, not the last 20)
    DELETE FROM hookbridge.previews p
     WHERE p.subscription_id = v_sub.id AND p.status <> 'pending'
       AND p.id NOT IN (SELECT q.id FROM hookbridge.previews q WHERE q.subscription_id = v_sub.id
                         ORDER BY q.requested_at DESC LIMIT 19);
    INSERT INTO hookbridge.previews (subscription_id, event_type)
    VALUES (v_sub.id, v_type) RETURNING id INTO v_id;
    PERFORM pg_notify('hookbridge_preview', v_id::text);
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION hookbridge.preview(uuid, text) IS
    'Sends one sample event of event_type (NULL: the subscription''s first type by name) to the '
    'subscription''s endpoint now, signed and shaped as its deliveries, whatever its status; '
    'returns the preview''s id, whose outcome is in hookbridge.previews.';

-- Internal functions for the services ----------------------------------------------

-- Takes a pending preview for `lease`: its subscription, event type and the
-- claim (the time its lease ends), which names it for record_preview; no row
-- when another replica holds it or it is not pending. A preview whose
-- subscription was deregistered is cancelled here instead.
CREATE OR REPLACE FUNCTION hookbridge.claim_preview(id uuid,
                                                    lease interval DEFAULT interval '70 seconds')
RETURNS TABLE (subscription_id uuid, event_type text, claim timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF lease IS NULL OR lease <= interval '0' THEN
        RAISE EXCEPTION 'lease must be positive' USING ERRCODE = 'HB012';
    END IF;
    UPDATE hookbridge.previews p
       SET status = 'cancelled', claimed_until = NULL,
           error = 'not sent: the subscription was deregistered'
      FROM hookbridge.subscriptions s
     WHERE p.id = claim_preview.id AND p.status = 'pending' AND s.id = p.subscription_id
       AND s.deregistered_at IS NOT NULL;
    RETURN QUERY
    UPDATE hookbridge.previews p SET claimed_until = clock_timestamp() + lease
     WHERE p.id = claim_preview.id AND p.status = 'pending'
       AND (p.claimed_until IS NULL OR p.claimed_until <= now())
    RETURNING p.subscription_id, p.event_type, p.claimed_until;
END
$$;

-- Records a preview's outcome, sent under `claim`: delivered for a 2xx,
-- else failed. Returns false, changing nothing, when the claim no longer
-- holds (its lease ran out and another dispatcher took it).
CREATE OR REPLACE FUNCTION hookbridge.record_preview(id uuid, claim timestamptz,
                                                     http_status integer, error text,
                                                     response text, duration_ms integer,
                                                     content_type text, body text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    UPDATE hookbridge.previews p
       SET status = CASE WHEN record_preview.http_status BETWEEN 200 AND 299
                         THEN 'delivered' ELSE 'failed' END,
           claimed_until = NULL,
           sent_at = clock_timestamp() - coalesce(record_preview.duration_ms, 0) * interval '1 millisecond',
           http_status = nullif(record_preview.http_status, 0),
           error = left(nullif(record_preview.error, ''), 500),
           response = record_preview.response,
           duration_ms = record_preview.duration_ms,
           content_type = record_preview.content_type,
           body = record_preview.body
     WHERE p.id = record_preview.id AND p.status = 'pending'
       AND p.claimed_until = record_preview.claim;
    RETURN FOUND;
END
$$;

-- Gives back a preview claimed under `claim` and not sent (the HTTP engine
-- did not take it now: the endpoint's queue full, or the dispatcher
-- stopping): it stays pending, claimable by any dispatcher `after` from
-- now (not at its lease's end), and `error` says why it waits. Returns
-- false, changing nothing, when the claim no longer holds.
CREATE OR REPLACE FUNCTION hookbridge.release_preview(id uuid, claim timestamptz, error text,
                                                      after interval DEFAULT interval '0')
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF after IS NULL OR after < interval '0' THEN
        RAISE EXCEPTION 'after must not be negative' USING ERRCODE = 'HB012';
    END IF;
    UPDATE hookbridge.previews p
       SET claimed_until = clock_timestamp() + release_preview.after,
           error = left(nullif(release_preview.error, ''), 500)
     WHERE p.id = release_preview.id AND p.status = 'pending'
       AND p.claimed_until = release_preview.claim;
    RETURN FOUND;
END
$$;
