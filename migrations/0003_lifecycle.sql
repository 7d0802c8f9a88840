-- 0003_lifecycle: the whole subscription lifecycle in SQL - update(),
-- configurable limits, verification outcomes, operator views - and the same
-- rules for plain SQL on the table as for the functions.
--
-- New SQLSTATEs (the others are listed at the top of 0001_init.sql):
--   HB014     a configured limit is exceeded (the message names the limit;
--             see hookbridge.limits)
--   HB015     a required argument is NULL (the subscription id)
--
-- What changes from 0001:
--   * hookbridge.update(id, url, name, options) changes a live subscription.
--   * A new URL - by update() or by a plain UPDATE of the url column - must
--     be verified again: verification goes back to 'unverified', a challenge
--     is requested at once (hookbridge_verify), and deliveries pause until the
--     new URL answers it. An active subscription stays 'active' meanwhile and
--     resumes by itself when the URL verifies. A subscription is therefore
--     delivered to only when active AND verified (the services require both);
--     the table CHECK "active => verified" becomes "active => not failed",
--     and a trigger still refuses to make an unverified subscription active.
--   * Names and URLs are validated by a trigger too, so plain SQL follows the
--     rules the functions follow.
--   * The name length and the number of event types per subscription are
--     bounded by hookbridge.limits (HB014), which other parts read with
--     hookbridge.limit(name).
--   * A NULL subscription id raises HB015 instead of HB010.
--   * record_verification() stores when a verification failed, and ignores an
--     outcome for a URL the subscription no longer has (optional 4th argument).
--   * Views: hookbridge.subscription_overview, hookbridge.recent_deliveries.

-- Limits -------------------------------------------------------------------------

-- Bounds the functions enforce, changeable at run time with a plain UPDATE
-- (they apply to later calls; existing subscriptions are not re-checked).
CREATE TABLE hookbridge.limits (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    value       bigint NOT NULL CHECK (value >= 1),
    description text NOT NULL DEFAULT ''
);

INSERT INTO hookbridge.limits (name, value, description) VALUES
    ('max_event_types_per_subscription', 50,
     'Event types one subscription may have (register, subscribe). Subscriptions per event type are unlimited.'),
    ('max_headers', 20,
     'Custom request headers (options.headers) per subscription.'),
    ('max_header_bytes', 8192,
     'Total bytes of a subscription''s custom headers: the sum of name and value lengths.'),
    ('max_name_length', 200,
     'Characters in a subscription name.'),
    ('recent_deliveries_days', 7,
     'Days of history shown by the view hookbridge.recent_deliveries.');

-- The value of a limit; HB012 for a name that is not in hookbridge.limits.
-- ("limit" is a reserved word: call it schema-qualified, hookbridge.limit('...').)
CREATE FUNCTION hookbridge.limit(name text) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v bigint;
BEGIN
    SELECT l.value INTO v FROM hookbridge.limits l WHERE l.name = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown limit "%"', coalesce($1, 'NULL') USING ERRCODE = 'HB012',
            HINT = 'The limits are the rows of hookbridge.limits.';
    END IF;
    RETURN v;
END
$$;

COMMENT ON FUNCTION hookbridge.limit(text) IS
    'The value of a row of hookbridge.limits (HB012 if there is no such limit).';

-- Subscriptions: columns and constraints ------------------------------------------

ALTER TABLE hookbridge.subscriptions
    ADD COLUMN verification_failed_at timestamptz,
    DROP CONSTRAINT subscriptions_active_is_verified,
    ADD CONSTRAINT subscriptions_active_not_failed
        CHECK (status <> 'active' OR verification <> 'failed'),
    -- the upper bound is hookbridge.limit('max_name_length'), checked by the trigger
    DROP CONSTRAINT subscriptions_name_check,
    ADD CONSTRAINT subscriptions_name_not_empty CHECK (length(name) >= 1);

COMMENT ON COLUMN hookbridge.subscriptions.verified_at IS
    'When the endpoint last answered the verification challenge correctly.';
COMMENT ON COLUMN hookbridge.subscriptions.verification_failed_at IS
    'When the last verification failed (the reason is in verification_error).';
COMMENT ON COLUMN hookbridge.subscriptions.verification_error IS
    'Why the last verification failed: "HTTP <status>", "wrong echo", "response is not JSON", "timeout after <n> ms", a connection error.';

-- Validation helpers ---------------------------------------------------------------

CREATE OR REPLACE FUNCTION hookbridge._check_name(p_name text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_max bigint := hookbridge.limit('max_name_length');
BEGIN
    IF p_name IS NULL OR btrim(p_name) = '' THEN
        RAISE EXCEPTION 'name must not be empty' USING ERRCODE = 'HB001';
    END IF;
    IF length(p_name) > v_max THEN
        RAISE EXCEPTION 'name is longer than % characters (%)', v_max, length(p_name)
            USING ERRCODE = 'HB001',
            HINT = 'The bound is hookbridge.limits max_name_length.';
    END IF;
END
$$;

-- Raises HB014 when a subscription would have more than the allowed number of
-- event types.
CREATE FUNCTION hookbridge._check_event_type_count(p_count bigint) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_max bigint := hookbridge.limit('max_event_types_per_subscription');
BEGIN
    IF p_count > v_max THEN
        RAISE EXCEPTION 'a subscription may have at most % event types (this one would have %)',
            v_max, p_count USING ERRCODE = 'HB014',
            HINT = 'The bound is hookbridge.limits max_event_types_per_subscription.';
    END IF;
END
$$;

-- Locks and returns a live (not deregistered) subscription; HB015 for a NULL
-- id, HB010 for an unknown or deregistered one.
CREATE OR REPLACE FUNCTION hookbridge._live(p_id uuid) RETURNS hookbridge.subscriptions
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v hookbridge.subscriptions;
BEGIN
    IF p_id IS NULL THEN
        RAISE EXCEPTION 'subscription id must not be NULL' USING ERRCODE = 'HB015';
    END IF;
    SELECT * INTO v FROM hookbridge.subscriptions s
     WHERE s.id = p_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % not found', p_id USING ERRCODE = 'HB010';
    END IF;
    IF v.deregistered_at IS NOT NULL THEN
        RAISE EXCEPTION 'subscription % not found (deregistered at %)', p_id, v.deregistered_at
            USING ERRCODE = 'HB010',
            HINT = 'A deregistered subscription cannot be changed; register a new one.';
    END IF;
    RETURN v;
END
$$;

-- Triggers ------------------------------------------------------------------------

-- Plain SQL on hookbridge.subscriptions follows the functions' rules: names and
-- URLs are validated when set, a new URL must be verified again, and only a
-- verified subscription becomes active.
CREATE FUNCTION hookbridge._guard_subscription() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.name IS DISTINCT FROM OLD.name THEN
        PERFORM hookbridge._check_name(NEW.name);
    END IF;
    IF TG_OP = 'INSERT' OR NEW.url IS DISTINCT FROM OLD.url THEN
        PERFORM hookbridge._check_url(NEW.url);
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.url IS DISTINCT FROM OLD.url
       AND NEW.deregistered_at IS NULL THEN
        -- What was verified was the old URL.
        NEW.verification := 'unverified';
        NEW.verified_at := NULL;
        NEW.verification_failed_at := NULL;
        NEW.verification_error := NULL;
        NEW.verification_requested_at := now();
        PERFORM pg_notify('hookbridge_verify', NEW.id::text);
    END IF;
    IF NEW.status = 'active' AND NEW.verification <> 'verified'
       AND (TG_OP = 'INSERT' OR OLD.status <> 'active') THEN
        RAISE EXCEPTION 'subscription % cannot become active: it is not verified (verification: %)',
            NEW.id, NEW.verification USING ERRCODE = 'check_violation',
            HINT = 'Call hookbridge.verify(id), let the endpoint answer the challenge, then hookbridge.activate(id).';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER subscriptions_guard BEFORE INSERT OR UPDATE ON hookbridge.subscriptions
    FOR EACH ROW EXECUTE FUNCTION hookbridge._guard_subscription();

-- Public functions -------------------------------------------------------------------

CREATE OR REPLACE FUNCTION hookbridge.register(name text, url text, event_types text[],
                                               options jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_name  text := register.name;
    v_url   text := register.url;
    v_opts  jsonb := coalesce(register.options, '{}');
    v_types text[];
    v_store jsonb;
    v_id    uuid;
BEGIN
    PERFORM hookbridge._check_name(v_name);
    PERFORM hookbridge._check_url(v_url);
    v_types := hookbridge._check_event_types(register.event_types);
    PERFORM hookbridge._check_event_type_count(cardinality(v_types));
    v_store := hookbridge._check_options(v_opts);

    INSERT INTO hookbridge.subscriptions AS s (name, url, auth_header, auth_value, options)
    VALUES (v_name, v_url, v_opts ->> 'auth_header', v_opts ->> 'auth_value', v_store)
    RETURNING s.id INTO v_id;

    INSERT INTO hookbridge.subscription_event_types (subscription_id, event_type)
    SELECT v_id, t FROM unnest(v_types) AS t;

    INSERT INTO hookbridge.subscription_secrets (subscription_id, secret)
    VALUES (v_id, coalesce(v_opts ->> 'secret',
                           'whsec_' || encode(gen_random_bytes(32), 'base64')));
    RETURN v_id;
END
$$;

CREATE OR REPLACE FUNCTION hookbridge.signing_secret(id uuid) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v      text;
    v_gone timestamptz;
BEGIN
    IF signing_secret.id IS NULL THEN
        RAISE EXCEPTION 'subscription id must not be NULL' USING ERRCODE = 'HB015';
    END IF;
    SELECT s.deregistered_at INTO v_gone FROM hookbridge.subscriptions s
     WHERE s.id = signing_secret.id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % not found', signing_secret.id USING ERRCODE = 'HB010';
    END IF;
    IF v_gone IS NOT NULL THEN
        RAISE EXCEPTION 'subscription % not found (deregistered at %)', signing_secret.id, v_gone
            USING ERRCODE = 'HB010';
    END IF;
    SELECT sec.secret INTO v
      FROM hookbridge.subscription_secrets sec
     WHERE sec.subscription_id = signing_secret.id AND sec.expires_at IS NULL;
    RETURN v;
END
$$;

-- Only a verified subscription can be activated. Activating an active one is a
-- no-op - unless it waits for its new URL to be verified, which is reported.
CREATE OR REPLACE FUNCTION hookbridge.activate(id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v hookbridge.subscriptions;
BEGIN
    v := hookbridge._live(activate.id);
    IF v.verification <> 'verified' AND v.status = 'active' THEN
        RAISE EXCEPTION 'subscription % is active but not verified (verification: %): deliveries resume when its URL is verified',
            activate.id, v.verification USING ERRCODE = 'HB011',
            HINT = 'The challenge was requested when the URL changed; hookbridge.verify(id) asks again.';
    END IF;
    IF v.verification <> 'verified' THEN
        RAISE EXCEPTION 'subscription % is not verified (verification: %)', activate.id,
            v.verification USING ERRCODE = 'HB011',
            HINT = 'Call hookbridge.verify(id) and let the endpoint answer the challenge.';
    END IF;
    IF v.status <> 'active' THEN
        UPDATE hookbridge.subscriptions s SET status = 'active' WHERE s.id = activate.id;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION hookbridge.subscribe(id uuid, event_types text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_types text[];
    v_count bigint;
BEGIN
    PERFORM hookbridge._live(subscribe.id);
    v_types := hookbridge._check_event_types(subscribe.event_types);
    SELECT count(*) INTO v_count FROM (
        SELECT st.event_type FROM hookbridge.subscription_event_types st
         WHERE st.subscription_id = subscribe.id
        UNION
        SELECT t FROM unnest(v_types) AS t) x;
    PERFORM hookbridge._check_event_type_count(v_count);
    INSERT INTO hookbridge.subscription_event_types (subscription_id, event_type)
    SELECT subscribe.id, t FROM unnest(v_types) AS t
        ON CONFLICT DO NOTHING;
END
$$;

-- Changes a live subscription; a NULL argument leaves that part unchanged.
--   url      a new URL must be verified again (see the trigger above); the
--            same URL again changes nothing.
--   name     validated like register's.
--   options  the new options object, validated by _check_options exactly as
--            register's, replacing the stored one. auth_header/auth_value:
--            given - replaced; absent - kept (so `options || '{...}'` changes
--            one option); both JSON null - removed. secret: given - it becomes
--            the only signing secret at once (rotate_secret keeps the previous
--            one for a grace period instead); absent - unchanged.
CREATE FUNCTION hookbridge.update(id uuid, url text DEFAULT NULL, name text DEFAULT NULL,
                                  options jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v       hookbridge.subscriptions;
    v_new   hookbridge.subscriptions;
    v_opts  jsonb := update.options;
    v_store jsonb;
    v_secret text;
BEGIN
    v := hookbridge._live(update.id);
    IF update.name IS NOT NULL THEN
        PERFORM hookbridge._check_name(update.name);
    END IF;
    IF update.url IS NOT NULL THEN
        PERFORM hookbridge._check_url(update.url);
    END IF;
    IF v_opts IS NOT NULL THEN
        IF jsonb_typeof(v_opts) <> 'object' THEN
            RAISE EXCEPTION 'options must be a JSON object' USING ERRCODE = 'HB006';
        END IF;
        IF v_opts -> 'auth_header' = 'null'::jsonb AND v_opts -> 'auth_value' = 'null'::jsonb THEN
            v_opts := v_opts - 'auth_header' - 'auth_value';
        ELSIF NOT v_opts ?| ARRAY['auth_header', 'auth_value'] AND v.auth_header IS NOT NULL THEN
            -- Kept, and validated together with the new options (e.g. a custom
            -- header must not shadow the auth header).
            v_opts := v_opts || jsonb_build_object('auth_header', v.auth_header,
                                                   'auth_value', v.auth_value);
        END IF;
        v_store := hookbridge._check_options(v_opts);
        v_secret := v_opts ->> 'secret';
    END IF;

    v_new := v;
    v_new.name := coalesce(update.name, v.name);
    v_new.url := coalesce(update.url, v.url);
    IF v_opts IS NOT NULL THEN
        v_new.options := v_store;
        v_new.auth_header := v_opts ->> 'auth_header';
        v_new.auth_value := v_opts ->> 'auth_value';
    END IF;
    -- Nothing to change: nothing written, nothing notified, updated_at kept.
    IF (v_new.name, v_new.url, v_new.options, v_new.auth_header, v_new.auth_value)
       IS DISTINCT FROM (v.name, v.url, v.options, v.auth_header, v.auth_value) THEN
        UPDATE hookbridge.subscriptions s
           SET name = v_new.name, url = v_new.url, options = v_new.options,
               auth_header = v_new.auth_header, auth_value = v_new.auth_value
         WHERE s.id = update.id;
    END IF;

    IF v_secret IS NOT NULL
       AND v_secret IS DISTINCT FROM (SELECT sec.secret FROM hookbridge.subscription_secrets sec
                                       WHERE sec.subscription_id = update.id
                                         AND sec.expires_at IS NULL) THEN
        UPDATE hookbridge.subscription_secrets sec SET expires_at = now()
         WHERE sec.subscription_id = update.id
           AND (sec.expires_at IS NULL OR sec.expires_at > now());
        INSERT INTO hookbridge.subscription_secrets (subscription_id, secret)
        VALUES (update.id, v_secret);
    END IF;
END
$$;

COMMENT ON FUNCTION hookbridge.update(uuid, text, text, jsonb) IS
    'Change url, name and/or options of a live subscription (NULL: unchanged). A new url '
    'is verified again before deliveries resume; an active subscription stays active.';

-- Internal functions for the services ----------------------------------------------

-- Stores a challenge's outcome. ok: verified. Not ok: 'failed' with the reason
-- and the time; an active subscription that fails is also deactivated, so it
-- must be verified and activated again. url: the URL that was challenged; an
-- outcome for a URL the subscription no longer has is ignored (the new URL's
-- own challenge is pending). NULL: the current URL.
DROP FUNCTION hookbridge.record_verification(uuid, boolean, text);
CREATE FUNCTION hookbridge.record_verification(id uuid, ok boolean, reason text DEFAULT NULL,
                                               url text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v hookbridge.subscriptions;
BEGIN
    IF ok IS NULL THEN
        RAISE EXCEPTION 'ok must not be NULL' USING ERRCODE = 'HB012';
    END IF;
    v := hookbridge._live(record_verification.id);
    IF record_verification.url IS NOT NULL AND record_verification.url <> v.url THEN
        RETURN;
    END IF;
    IF ok THEN
        UPDATE hookbridge.subscriptions s
           SET verification = 'verified', verified_at = now(), verification_error = NULL
         WHERE s.id = record_verification.id;
    ELSE
        UPDATE hookbridge.subscriptions s
           SET verification = 'failed', status = 'inactive', verification_failed_at = now(),
               verification_error = left(coalesce(nullif(reason, ''), 'verification failed'), 500)
         WHERE s.id = record_verification.id;
    END IF;
END
$$;

-- Views ---------------------------------------------------------------------------------

CREATE INDEX deliveries_delivered_idx ON hookbridge.deliveries (subscription_id, last_attempt_at)
    WHERE status = 'delivered';

-- One row per live subscription: what it receives, whether it can, and how it
-- has been doing. health: 'inactive' (status inactive), 'unverified' (active,
-- waiting for its URL to be verified), 'failing' (its latest finished delivery
-- failed), 'healthy'.
CREATE VIEW hookbridge.subscription_overview AS
SELECT s.id,
       s.name,
       s.url,
       coalesce(et.event_types, '{}') AS event_types,
       s.status,
       s.verification,
       CASE s.verification WHEN 'verified' THEN s.verified_at
                           WHEN 'failed' THEN s.verification_failed_at END AS verification_at,
       s.verification_error,
       s.verification_requested_at,
       coalesce(s.options ->> 'format', 'okta') AS format,
       d24.delivered AS delivered_24h,
       d24.failed AS failed_24h,
       d24.dropped AS dropped_24h,
       ld.last_delivered_at,
       lf.last_failed_at,
       cf.consecutive_failures,
       CASE WHEN s.status <> 'active' THEN 'inactive'
            WHEN s.verification <> 'verified' THEN 'unverified'
            WHEN cf.consecutive_failures > 0 THEN 'failing'
            ELSE 'healthy' END AS health,
       s.created_at,
       s.updated_at
  FROM hookbridge.subscriptions s
  LEFT JOIN LATERAL (
        SELECT array_agg(st.event_type ORDER BY st.event_type) AS event_types
          FROM hookbridge.subscription_event_types st
         WHERE st.subscription_id = s.id) et ON true
 CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE d.status = 'delivered') AS delivered,
               count(*) FILTER (WHERE d.status = 'failed') AS failed,
               count(*) FILTER (WHERE d.status = 'dropped') AS dropped
          FROM hookbridge.deliveries d
         WHERE d.subscription_id = s.id
           AND d.created_at > now() - interval '24 hours') d24
 CROSS JOIN LATERAL (
        SELECT max(d.last_attempt_at) AS last_delivered_at
          FROM hookbridge.deliveries d
         WHERE d.subscription_id = s.id AND d.status = 'delivered') ld
 CROSS JOIN LATERAL (
        SELECT max(d.last_attempt_at) AS last_failed_at
          FROM hookbridge.deliveries d
         WHERE d.subscription_id = s.id AND d.status = 'failed') lf
 CROSS JOIN LATERAL (
        SELECT count(*) AS consecutive_failures
          FROM hookbridge.deliveries d
         WHERE d.subscription_id = s.id AND d.status = 'failed'
           AND d.last_attempt_at > coalesce(ld.last_delivered_at, '-infinity')) cf
 WHERE s.deregistered_at IS NULL;

COMMENT ON VIEW hookbridge.subscription_overview IS
    'Live subscriptions with event types, verification, format, 24h delivery counts and health.';

-- The deliveries of live subscriptions in the last limit('recent_deliveries_days')
-- days. A deregistered subscription's history stays in hookbridge.deliveries.
CREATE VIEW hookbridge.recent_deliveries AS
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
