-- 0001_init: the hookbridge schema, its subscription functions and the
-- delivery log.
--
-- Subscriptions are managed in SQL. Operators and platform code call the
-- functions below; each validates its arguments and raises a clear error with
-- a SQLSTATE of class HB, so callers can tell the reasons apart. A function
-- that raises has changed nothing (the statement is rolled back).
--
--   SQLSTATE  meaning
--   --------  --------------------------------------------------------------
--   HB001     invalid name (empty, longer than 200 characters)
--   HB002     invalid url (not http/https, no host, credentials in it,
--             whitespace or control characters, bad port, over 2048 chars)
--   HB003     unknown event type (the message names it; see
--             hookbridge.event_types)
--   HB004     invalid event type list (NULL or empty, a NULL element, or an
--             unsubscribe that would leave none)
--   HB005     unknown option key (the message names it)
--   HB006     invalid option value (format, batch_max, batch_window_ms,
--             timeout_ms, auth_header, auth_value, options not an object,
--             rotation grace period)
--   HB007     invalid signing secret (must be whsec_ + base64 of 24..64 bytes)
--   HB010     subscription not found (unknown id, or deregistered)
--   HB011     subscription not verified (activate refused)
--   HB012     invalid argument to an internal function
--
-- Invariants the tables enforce:
--   * an active subscription is verified (CHECK); a failed re-verification
--     therefore also deactivates it (hookbridge.record_verification);
--   * a live subscription has exactly one current secret (expires_at NULL)
--     and at least one event type (kept by the functions);
--   * auth_value and the signing secret never appear in `options`.
--
-- Notifications (delivered at COMMIT, identical ones in a transaction merged):
--   hookbridge_subscriptions  payload: subscription id; any change to a row of
--                             subscriptions (other than the verification
--                             request bookkeeping), its event types or secrets
--   hookbridge_verify         payload: subscription id; hookbridge.verify()
--
-- The delivery log (deliveries, delivery_attempts) has no foreign key to
-- subscriptions: it is append-heavy and outlives deregistration.
--
-- Functions resolve gen_random_bytes() through their search_path
-- (pg_catalog, hookbridge, public): pgcrypto must live in one of those
-- schemas (this migration installs it into hookbridge when it is missing).

CREATE SCHEMA IF NOT EXISTS hookbridge;
CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA hookbridge;

-- Event type catalogue -----------------------------------------------------

CREATE TABLE hookbridge.event_types (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,200}$'),
    description text NOT NULL DEFAULT ''
);

-- Seeded with exactly the lines of schema/event_types.txt (a test keeps them equal).
INSERT INTO hookbridge.event_types (name, description) VALUES
    ('user.lifecycle.create', 'User created'),
    ('user.lifecycle.activate', 'User activated'),
    ('user.lifecycle.deactivate', 'User deactivated'),
    ('user.lifecycle.suspend', 'User suspended'),
    ('user.lifecycle.unsuspend', 'User unsuspended'),
    ('user.lifecycle.reactivate', 'User reactivated'),
    ('user.lifecycle.delete.initiated', 'User deletion initiated'),
    ('user.session.start', 'User signed in (session started)'),
    ('user.session.end', 'User signed out (session ended)'),
    ('user.authentication.sso', 'User single sign-on to an app'),
    ('user.account.update_password', 'User changed their password'),
    ('user.account.reset_password', 'User''s password was reset'),
    ('user.account.lock', 'User account locked'),
    ('user.account.unlock', 'User account unlocked'),
    ('user.account.update_profile', 'User profile updated'),
    ('user.mfa.factor.activate', 'User activated an MFA factor'),
    ('user.mfa.factor.deactivate', 'User deactivated an MFA factor'),
    ('group.user_membership.add', 'User added to a group'),
    ('group.user_membership.remove', 'User removed from a group'),
    ('application.user_membership.add', 'User assigned to an application'),
    ('application.user_membership.remove', 'User unassigned from an application');

-- Subscriptions --------------------------------------------------------------

CREATE TABLE hookbridge.subscriptions (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                      text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    url                       text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    status                    text NOT NULL DEFAULT 'inactive'
                              CHECK (status IN ('active', 'inactive')),
    verification              text NOT NULL DEFAULT 'unverified'
                              CHECK (verification IN ('unverified', 'verified', 'failed')),
    verification_requested_at timestamptz,
    verified_at               timestamptz,
    verification_error        text,
    auth_header               text,
    auth_value                text,
    -- format, batch_max, batch_window_ms, timeout_ms (validated by register)
    options                   jsonb NOT NULL DEFAULT '{}',
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    deregistered_at           timestamptz,
    CONSTRAINT subscriptions_active_is_verified
        CHECK (status <> 'active' OR verification = 'verified'),
    CONSTRAINT subscriptions_auth_pair
        CHECK ((auth_header IS NULL) = (auth_value IS NULL)),
    CONSTRAINT subscriptions_options_object
        CHECK (jsonb_typeof(options) = 'object'
               AND NOT options ?| ARRAY['auth_value', 'secret', 'auth_header']),
    CONSTRAINT subscriptions_deregistered_inactive
        CHECK (deregistered_at IS NULL OR status = 'inactive')
);

CREATE INDEX subscriptions_live_idx ON hookbridge.subscriptions (created_at)
    WHERE deregistered_at IS NULL;
CREATE INDEX subscriptions_verify_pending_idx ON hookbridge.subscriptions (id)
    WHERE verification_requested_at IS NOT NULL;

CREATE TABLE hookbridge.subscription_event_types (
    subscription_id uuid NOT NULL REFERENCES hookbridge.subscriptions (id) ON DELETE CASCADE,
    event_type      text NOT NULL REFERENCES hookbridge.event_types (name),
    PRIMARY KEY (subscription_id, event_type)
);
CREATE INDEX subscription_event_types_type_idx
    ON hookbridge.subscription_event_types (event_type);

CREATE TABLE hookbridge.subscription_secrets (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id uuid NOT NULL REFERENCES hookbridge.subscriptions (id) ON DELETE CASCADE,
    secret          text NOT NULL CHECK (secret ~ '^whsec_[A-Za-z0-9+/]+={0,2}$'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz -- NULL: the current secret
);
CREATE UNIQUE INDEX subscription_secrets_current_idx
    ON hookbridge.subscription_secrets (subscription_id) WHERE expires_at IS NULL;
CREATE INDEX subscription_secrets_sub_idx
    ON hookbridge.subscription_secrets (subscription_id, created_at);

-- Delivery log -----------------------------------------------------------------

CREATE TABLE hookbridge.deliveries (
    delivery_id      uuid PRIMARY KEY,
    subscription_id  uuid NOT NULL, -- no FK: history outlives the subscription
    event_ids        text NOT NULL, -- comma-separated event uuids (a batch has several)
    event_type       text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'retry', 'failed', 'dropped')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    first_attempt_at timestamptz,
    last_attempt_at  timestamptz,
    last_http_status integer,
    last_error       text,
    body             text, -- kept for failed deliveries, for replay
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_sub_time_idx ON hookbridge.deliveries (subscription_id, created_at DESC);
CREATE INDEX deliveries_time_idx ON hookbridge.deliveries (created_at);
CREATE INDEX deliveries_failed_idx ON hookbridge.deliveries (subscription_id, last_attempt_at)
    WHERE status = 'failed';

CREATE TABLE hookbridge.delivery_attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id      uuid NOT NULL REFERENCES hookbridge.deliveries (delivery_id) ON DELETE CASCADE,
    attempt          integer NOT NULL CHECK (attempt >= 0), -- 0: dropped, never attempted
    started_at       timestamptz NOT NULL,
    duration_ms      bigint NOT NULL DEFAULT 0,
    http_status      integer, -- NULL: no response
    outcome          text NOT NULL
                     CHECK (outcome IN ('delivered', 'retry', 'failed', 'dropped')),
    error            text,
    response_snippet text
);
CREATE INDEX delivery_attempts_delivery_idx ON hookbridge.delivery_attempts (delivery_id, attempt);
CREATE INDEX delivery_attempts_time_idx ON hookbridge.delivery_attempts (started_at);

-- Triggers ---------------------------------------------------------------------

CREATE FUNCTION hookbridge._touch_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER subscriptions_touch BEFORE UPDATE ON hookbridge.subscriptions
    FOR EACH ROW EXECUTE FUNCTION hookbridge._touch_updated_at();

-- Tells the services which subscription changed. The verification request
-- bookkeeping (verify() setting, claim_verification() clearing
-- verification_requested_at) changes nothing the services hold, so it does not
-- notify this channel; verify() notifies hookbridge_verify itself.
CREATE FUNCTION hookbridge._notify_subscription() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_id uuid;
BEGIN
    IF TG_TABLE_NAME = 'subscriptions' THEN
        IF TG_OP = 'DELETE' THEN
            v_id := OLD.id;
        ELSE
            IF TG_OP = 'UPDATE'
               AND (to_jsonb(OLD) - 'verification_requested_at' - 'updated_at')
                 = (to_jsonb(NEW) - 'verification_requested_at' - 'updated_at') THEN
                RETURN NULL;
            END IF;
            v_id := NEW.id;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        v_id := OLD.subscription_id;
    ELSE
        v_id := NEW.subscription_id;
    END IF;
    PERFORM pg_notify('hookbridge_subscriptions', v_id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER subscriptions_notify
    AFTER INSERT OR UPDATE OR DELETE ON hookbridge.subscriptions
    FOR EACH ROW EXECUTE FUNCTION hookbridge._notify_subscription();
CREATE TRIGGER subscription_event_types_notify
    AFTER INSERT OR UPDATE OR DELETE ON hookbridge.subscription_event_types
    FOR EACH ROW EXECUTE FUNCTION hookbridge._notify_subscription();
CREATE TRIGGER subscription_secrets_notify
    AFTER INSERT OR UPDATE OR DELETE ON hookbridge.subscription_secrets
    FOR EACH ROW EXECUTE FUNCTION hookbridge._notify_subscription();

-- Validation helpers -------------------------------------------------------------

CREATE FUNCTION hookbridge._check_name(p_name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF p_name IS NULL OR btrim(p_name) = '' THEN
        RAISE EXCEPTION 'name must not be empty' USING ERRCODE = 'HB001';
    END IF;
    IF length(p_name) > 200 THEN
        RAISE EXCEPTION 'name is longer than 200 characters (%)', length(p_name)
            USING ERRCODE = 'HB001';
    END IF;
END
$$;

-- http(s)://host[:port][/path][?query][#fragment]; no user:password@.
-- Whether the host may be private or loopback is decided by the services on
-- the resolved address (HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS), not here.
CREATE FUNCTION hookbridge._check_url(p_url text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    m text[];
    hp text[];
BEGIN
    IF p_url IS NULL OR p_url = '' THEN
        RAISE EXCEPTION 'url must not be empty' USING ERRCODE = 'HB002';
    END IF;
    IF length(p_url) > 2048 THEN
        RAISE EXCEPTION 'url is longer than 2048 characters (%)', length(p_url)
            USING ERRCODE = 'HB002';
    END IF;
    IF p_url ~ '[[:space:][:cntrl:]]' THEN
        RAISE EXCEPTION 'url contains whitespace or control characters' USING ERRCODE = 'HB002';
    END IF;
    m := regexp_match(p_url, '^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)$');
    IF m IS NULL THEN
        RAISE EXCEPTION 'url must be an absolute http:// or https:// URL' USING ERRCODE = 'HB002';
    END IF;
    IF lower(m[1]) NOT IN ('http', 'https') THEN
        RAISE EXCEPTION 'url scheme "%" is not allowed (use http or https)', m[1]
            USING ERRCODE = 'HB002';
    END IF;
    IF position('@' IN m[2]) > 0 THEN
        RAISE EXCEPTION 'url must not contain credentials (user:password@); use the auth_header and auth_value options'
            USING ERRCODE = 'HB002';
    END IF;
    IF left(m[2], 1) = '[' THEN
        hp := regexp_match(m[2], '^\[([0-9A-Fa-f:.]+)\](:([0-9]*))?$');
    ELSE
        hp := regexp_match(m[2], '^([A-Za-z0-9._-]*)(:([0-9]*))?$');
    END IF;
    IF hp IS NULL THEN
        RAISE EXCEPTION 'url host "%" is not a valid host name or address', m[2]
            USING ERRCODE = 'HB002';
    END IF;
    IF hp[1] = '' THEN
        RAISE EXCEPTION 'url has no host' USING ERRCODE = 'HB002';
    END IF;
    IF hp[3] IS NOT NULL AND hp[3] <> ''
       AND (length(hp[3]) > 5 OR hp[3]::integer NOT BETWEEN 1 AND 65535) THEN
        RAISE EXCEPTION 'url port % is out of range (1..65535)', hp[3] USING ERRCODE = 'HB002';
    END IF;
END
$$;

-- Returns the distinct event types, in the order given.
CREATE FUNCTION hookbridge._check_event_types(p_types text[]) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_unknown text;
BEGIN
    IF p_types IS NULL OR cardinality(p_types) = 0 THEN
        RAISE EXCEPTION 'event_types must not be empty' USING ERRCODE = 'HB004';
    END IF;
    IF array_position(p_types, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'event_types must not contain NULL' USING ERRCODE = 'HB004';
    END IF;
    SELECT x.t INTO v_unknown
      FROM unnest(p_types) WITH ORDINALITY AS x(t, i)
     WHERE NOT EXISTS (SELECT 1 FROM hookbridge.event_types e WHERE e.name = x.t)
     ORDER BY x.i LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unknown event type "%"', v_unknown
            USING ERRCODE = 'HB003', HINT = 'The known event types are in hookbridge.event_types.';
    END IF;
    RETURN ARRAY(SELECT x.t FROM unnest(p_types) WITH ORDINALITY AS x(t, i)
                 GROUP BY x.t ORDER BY min(x.i));
END
$$;

CREATE FUNCTION hookbridge._opt_int(p_opts jsonb, p_key text, p_lo integer, p_hi integer)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v numeric;
BEGIN
    IF jsonb_typeof(p_opts -> p_key) = 'number' THEN
        v := (p_opts ->> p_key)::numeric;
        IF v = trunc(v) AND v BETWEEN p_lo AND p_hi THEN
            RETURN v::integer;
        END IF;
    END IF;
    RAISE EXCEPTION 'option % must be an integer between % and %', p_key, p_lo, p_hi
        USING ERRCODE = 'HB006';
END
$$;

-- Header names the delivery itself sets; a subscription cannot override them.
CREATE FUNCTION hookbridge._reserved_header(p_name text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT lower(p_name) IN ('host', 'content-type', 'content-length', 'transfer-encoding',
                             'connection', 'user-agent', 'webhook-id', 'webhook-timestamp',
                             'webhook-signature', 'expect', 'te', 'upgrade')
$$;

-- 'whsec_' + base64 of 24..64 bytes (the key of HMAC-SHA256).
CREATE FUNCTION hookbridge._check_secret(p_secret text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_b64 text;
BEGIN
    IF p_secret IS NOT NULL AND p_secret ~ '^whsec_[A-Za-z0-9+/]+={0,2}$' THEN
        v_b64 := substr(p_secret, 7);
        IF length(v_b64) % 4 = 0
           AND length(decode(v_b64, 'base64')) BETWEEN 24 AND 64 THEN
            RETURN;
        END IF;
    END IF;
    -- Never echo the value: it is a secret.
    RAISE EXCEPTION 'secret must be "whsec_" followed by the base64 of 24 to 64 bytes'
        USING ERRCODE = 'HB007';
END
$$;

-- Validates register()'s options. Returns the options to store: format,
-- batch_max, batch_window_ms, timeout_ms (normalised) - never auth_value or
-- the secret, which have their own columns/table.
CREATE FUNCTION hookbridge._check_options(p_opts jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    k text;
    v_out jsonb := '{}';
BEGIN
    IF p_opts IS NULL THEN
        RETURN v_out;
    END IF;
    IF jsonb_typeof(p_opts) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object' USING ERRCODE = 'HB006';
    END IF;
    FOR k IN SELECT jsonb_object_keys(p_opts) AS key ORDER BY key LOOP
        IF k NOT IN ('auth_header', 'auth_value', 'secret', 'format', 'batch_max',
                     'batch_window_ms', 'timeout_ms') THEN
            RAISE EXCEPTION 'unknown option "%"', k USING ERRCODE = 'HB005',
                HINT = 'Known options: auth_header, auth_value, secret, format, batch_max, batch_window_ms, timeout_ms.';
        END IF;
    END LOOP;

    IF p_opts ? 'format' THEN
        IF jsonb_typeof(p_opts -> 'format') <> 'string'
           OR (p_opts ->> 'format') NOT IN ('okta', 'cloudevents', 'event') THEN
            RAISE EXCEPTION 'option format must be one of "okta", "cloudevents", "event"'
                USING ERRCODE = 'HB006';
        END IF;
        v_out := v_out || jsonb_build_object('format', p_opts ->> 'format');
    END IF;
    IF p_opts ? 'batch_max' THEN
        v_out := v_out || jsonb_build_object('batch_max',
                                             hookbridge._opt_int(p_opts, 'batch_max', 1, 100));
    END IF;
    IF p_opts ? 'batch_window_ms' THEN
        v_out := v_out || jsonb_build_object('batch_window_ms',
                                             hookbridge._opt_int(p_opts, 'batch_window_ms', 0, 60000));
    END IF;
    IF p_opts ? 'timeout_ms' THEN
        v_out := v_out || jsonb_build_object('timeout_ms',
                                             hookbridge._opt_int(p_opts, 'timeout_ms', 100, 60000));
    END IF;

    IF (p_opts ? 'auth_header') <> (p_opts ? 'auth_value') THEN
        RAISE EXCEPTION 'options auth_header and auth_value must be given together'
            USING ERRCODE = 'HB006';
    END IF;
    IF p_opts ? 'auth_header' THEN
        IF jsonb_typeof(p_opts -> 'auth_header') <> 'string'
           OR length(p_opts ->> 'auth_header') > 256
           OR (p_opts ->> 'auth_header') !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' THEN
            RAISE EXCEPTION 'option auth_header must be an HTTP header name (a token of at most 256 characters)'
                USING ERRCODE = 'HB006';
        END IF;
        IF hookbridge._reserved_header(p_opts ->> 'auth_header') THEN
            RAISE EXCEPTION 'option auth_header "%" names a header hookbridge sets itself',
                p_opts ->> 'auth_header' USING ERRCODE = 'HB006';
        END IF;
        -- Never echo auth_value: it is a secret.
        IF jsonb_typeof(p_opts -> 'auth_value') <> 'string'
           OR length(p_opts ->> 'auth_value') NOT BETWEEN 1 AND 4096
           OR (p_opts ->> 'auth_value') ~ '[\r\n[:cntrl:]]' THEN
            RAISE EXCEPTION 'option auth_value must be a string of 1 to 4096 characters without CR, LF or other control characters'
                USING ERRCODE = 'HB006';
        END IF;
    END IF;
    IF p_opts ? 'secret' THEN
        IF jsonb_typeof(p_opts -> 'secret') <> 'string' THEN
            PERFORM hookbridge._check_secret(NULL);
        END IF;
        PERFORM hookbridge._check_secret(p_opts ->> 'secret');
    END IF;
    RETURN v_out;
END
$$;

-- Locks and returns a live (not deregistered) subscription, or raises HB010.
CREATE FUNCTION hookbridge._live(p_id uuid) RETURNS hookbridge.subscriptions
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v hookbridge.subscriptions;
BEGIN
    SELECT * INTO v FROM hookbridge.subscriptions s
     WHERE s.id = p_id AND s.deregistered_at IS NULL
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % not found', coalesce(p_id::text, 'NULL')
            USING ERRCODE = 'HB010';
    END IF;
    RETURN v;
END
$$;

-- Public functions -------------------------------------------------------------

CREATE FUNCTION hookbridge.register(name text, url text, event_types text[],
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

COMMENT ON FUNCTION hookbridge.register(text, text, text[], jsonb) IS
    'New subscription (inactive, unverified). options: auth_header, auth_value, secret, '
    'format (okta|cloudevents|event), batch_max (1..100), batch_window_ms (0..60000), '
    'timeout_ms (100..60000).';

-- The current signing secret ("whsec_<base64>"), to hand to the subscriber.
CREATE FUNCTION hookbridge.signing_secret(id uuid) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v text;
BEGIN
    SELECT sec.secret INTO v
      FROM hookbridge.subscription_secrets sec
      JOIN hookbridge.subscriptions s ON s.id = sec.subscription_id
     WHERE sec.subscription_id = signing_secret.id AND sec.expires_at IS NULL
       AND s.deregistered_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % not found', coalesce(signing_secret.id::text, 'NULL')
            USING ERRCODE = 'HB010';
    END IF;
    RETURN v;
END
$$;

-- Asks the dispatcher to run the verification challenge now.
CREATE FUNCTION hookbridge.verify(id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    PERFORM hookbridge._live(verify.id);
    UPDATE hookbridge.subscriptions s SET verification_requested_at = now()
     WHERE s.id = verify.id;
    PERFORM pg_notify('hookbridge_verify', verify.id::text);
END
$$;

-- Only a verified subscription can be activated. Activating an active one is a no-op.
CREATE FUNCTION hookbridge.activate(id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v hookbridge.subscriptions;
BEGIN
    v := hookbridge._live(activate.id);
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

-- Stops deliveries (and pending retries, which check the status). Idempotent.
CREATE FUNCTION hookbridge.deactivate(id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v hookbridge.subscriptions;
BEGIN
    v := hookbridge._live(deactivate.id);
    IF v.status <> 'inactive' THEN
        UPDATE hookbridge.subscriptions s SET status = 'inactive' WHERE s.id = deactivate.id;
    END IF;
END
$$;

-- Removes the subscription: it stops receiving and disappears from the
-- services; the row (without its credentials) and the delivery log are kept.
CREATE FUNCTION hookbridge.deregister(id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    PERFORM hookbridge._live(deregister.id);
    DELETE FROM hookbridge.subscription_secrets sec WHERE sec.subscription_id = deregister.id;
    UPDATE hookbridge.subscriptions s
       SET status = 'inactive', deregistered_at = now(), verification_requested_at = NULL,
           auth_header = NULL, auth_value = NULL
     WHERE s.id = deregister.id;
END
$$;

CREATE FUNCTION hookbridge.subscribe(id uuid, event_types text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_types text[];
BEGIN
    PERFORM hookbridge._live(subscribe.id);
    v_types := hookbridge._check_event_types(subscribe.event_types);
    INSERT INTO hookbridge.subscription_event_types (subscription_id, event_type)
    SELECT subscribe.id, t FROM unnest(v_types) AS t
        ON CONFLICT DO NOTHING;
END
$$;

CREATE FUNCTION hookbridge.unsubscribe(id uuid, event_types text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_types text[];
BEGIN
    PERFORM hookbridge._live(unsubscribe.id);
    v_types := hookbridge._check_event_types(unsubscribe.event_types);
    IF NOT EXISTS (SELECT 1 FROM hookbridge.subscription_event_types st
                    WHERE st.subscription_id = unsubscribe.id
                      AND st.event_type <> ALL (v_types)) THEN
        RAISE EXCEPTION 'a subscription needs at least one event type (deactivate or deregister it instead)'
            USING ERRCODE = 'HB004';
    END IF;
    DELETE FROM hookbridge.subscription_event_types st
     WHERE st.subscription_id = unsubscribe.id AND st.event_type = ANY (v_types);
END
$$;

-- New current secret (given, or generated); the previous one keeps signing for
-- `grace` (0 .. 7 days). Older previous secrets expire now: at most two sign.
CREATE FUNCTION hookbridge.rotate_secret(id uuid, grace interval DEFAULT '24 hours',
                                         secret text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_secret text := rotate_secret.secret;
BEGIN
    PERFORM hookbridge._live(rotate_secret.id);
    IF grace IS NULL OR grace < interval '0' OR grace > interval '7 days' THEN
        RAISE EXCEPTION 'grace must be between 0 and 7 days' USING ERRCODE = 'HB006';
    END IF;
    IF v_secret IS NULL THEN
        v_secret := 'whsec_' || encode(gen_random_bytes(32), 'base64');
    ELSE
        PERFORM hookbridge._check_secret(v_secret);
    END IF;
    UPDATE hookbridge.subscription_secrets sec SET expires_at = now()
     WHERE sec.subscription_id = rotate_secret.id AND sec.expires_at > now();
    UPDATE hookbridge.subscription_secrets sec SET expires_at = now() + grace
     WHERE sec.subscription_id = rotate_secret.id AND sec.expires_at IS NULL;
    INSERT INTO hookbridge.subscription_secrets (subscription_id, secret)
    VALUES (rotate_secret.id, v_secret);
    RETURN v_secret;
END
$$;

-- Internal functions for the services ------------------------------------------

-- Takes a pending verification request: clears it and returns the id, or NULL
-- when none is pending (another replica took it, or the subscription is gone).
-- Concurrent callers serialise on the row lock, so exactly one gets the id.
-- A replica that crashes after claiming loses the request; call verify() again.
CREATE FUNCTION hookbridge.claim_verification(id uuid) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v uuid;
BEGIN
    UPDATE hookbridge.subscriptions s SET verification_requested_at = NULL
     WHERE s.id = claim_verification.id AND s.verification_requested_at IS NOT NULL
       AND s.deregistered_at IS NULL
    RETURNING s.id INTO v;
    RETURN v;
END
$$;

-- Stores a challenge's outcome. ok: verified. Not ok: 'failed' with the reason;
-- an active subscription that fails re-verification is also deactivated (an
-- active subscription is always verified), so it must be verified and
-- activated again.
CREATE FUNCTION hookbridge.record_verification(id uuid, ok boolean, reason text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF ok IS NULL THEN
        RAISE EXCEPTION 'ok must not be NULL' USING ERRCODE = 'HB012';
    END IF;
    PERFORM hookbridge._live(record_verification.id);
    IF ok THEN
        UPDATE hookbridge.subscriptions s
           SET verification = 'verified', verified_at = now(), verification_error = NULL
         WHERE s.id = record_verification.id;
    ELSE
        UPDATE hookbridge.subscriptions s
           SET verification = 'failed', status = 'inactive',
               verification_error = left(coalesce(nullif(reason, ''), 'verification failed'), 500)
         WHERE s.id = record_verification.id;
    END IF;
END
$$;
