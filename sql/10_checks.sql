-- sql/10_checks.sql: the validation helpers every subscription function
-- shares, and the limits they read.
--
-- Code, not state: hookbridge-migrate re-applies every sql/ file, in name
-- order, after the numbered migrations whenever one of them changed
-- (migrations/README.md). Each object is defined once, here or in another
-- sql/ file; write it so that running the file again is harmless.
--
--   SQLSTATE  raised here (all codes: docs/sql.md, Errors)
--   --------  --------------------------------------------------------------
--   HB001     invalid name (empty, longer than limit('max_name_length'))
--   HB002     invalid url (not http/https, no host or not a valid one,
--             credentials in it, whitespace or control characters, bad
--             port, over 2048 chars)
--   HB003     unknown event type (the message names it; see
--             hookbridge.event_types)
--   HB004     invalid event type list (NULL or empty, a NULL element)
--   HB006     invalid option value (an integer option out of range)
--   HB007     invalid signing secret (must be whsec_ + base64 of 24..64 bytes)
--   HB010     subscription not found (unknown id, or deregistered)
--   HB012     unknown limit
--   HB014     a configured limit is exceeded (the message names the limit)
--   HB015     a required argument is NULL (the subscription id)

-- Limits -------------------------------------------------------------------------

-- The value of a limit; HB012 for a name that is not in hookbridge.limits.
-- ("limit" is a reserved word: call it schema-qualified, hookbridge.limit('...').)
CREATE OR REPLACE FUNCTION hookbridge.limit(name text) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
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

-- The bound named p_name (hookbridge.limit() when it knows the name), else
-- p_default. Looked up at call time: _check_headers needs no particular order
-- of definition.
CREATE OR REPLACE FUNCTION hookbridge._limit_or(p_name text, p_default bigint) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v bigint;
BEGIN
    IF to_regprocedure('hookbridge.limit(text)') IS NULL THEN
        RETURN p_default;
    END IF;
    EXECUTE 'SELECT hookbridge.limit($1)::bigint' INTO v USING p_name;
    RETURN coalesce(v, p_default);
END
$$;

-- Raises HB014 when a subscription would have more than the allowed number of
-- event types.
CREATE OR REPLACE FUNCTION hookbridge._check_event_type_count(p_count bigint) RETURNS void
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

-- http(s)://host[:port][/path][?query][#fragment]; no user:password@.
-- Whether the host may be private or loopback is decided by the services on
-- the resolved address (HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS), not here.
CREATE OR REPLACE FUNCTION hookbridge._check_url(p_url text) RETURNS void
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
        -- an IPv6 address, as the services' HTTP client will read it
        BEGIN
            IF hp IS NOT NULL AND family(hp[1]::inet) <> 6 THEN
                hp := NULL;
            END IF;
        EXCEPTION WHEN invalid_text_representation THEN
            hp := NULL;
        END;
    ELSE
        hp := regexp_match(m[2], '^([A-Za-z0-9._-]*)(:([0-9]*))?$');
        -- dot-separated labels, none empty, none beginning or ending with
        -- '-' (a final dot, the root, is fine): 'api..example.com' or '-'
        -- name no host, and were only found out when the challenge failed
        IF hp IS NOT NULL AND hp[1] <> ''
           AND hp[1] !~ '^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$' THEN
            hp := NULL;
        END IF;
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
CREATE OR REPLACE FUNCTION hookbridge._check_event_types(p_types text[]) RETURNS text[]
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

CREATE OR REPLACE FUNCTION hookbridge._opt_int(p_opts jsonb, p_key text, p_lo integer, p_hi integer)
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

-- 'whsec_' + base64 of 24..64 bytes (the key of HMAC-SHA256).
CREATE OR REPLACE FUNCTION hookbridge._check_secret(p_secret text) RETURNS void
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

-- Locks and returns a live (not deregistered) subscription; HB015 for a NULL
-- id, HB010 for an unknown or deregistered one.
CREATE OR REPLACE FUNCTION hookbridge._live(p_id uuid) RETURNS hookbridge.subscriptions
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    -- (a NULL id locks nothing; _live_read raises HB015 for it)
    PERFORM 1 FROM hookbridge.subscriptions s WHERE s.id = p_id FOR UPDATE;
    RETURN hookbridge._live_read(p_id);
END
$$;

-- _live for the functions that only read (signing_secret,
-- sealed_signing_secret): the same checks, no lock. A read holding the row
-- lock for as long as its caller's transaction stays open made the services'
-- sealer, which locks the subscriptions whose secrets it seals, wait for it,
-- and a dispatcher takes no event while its sealer waits.
CREATE OR REPLACE FUNCTION hookbridge._live_read(p_id uuid) RETURNS hookbridge.subscriptions
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v hookbridge.subscriptions;
BEGIN
    IF p_id IS NULL THEN
        RAISE EXCEPTION 'subscription id must not be NULL' USING ERRCODE = 'HB015';
    END IF;
    SELECT * INTO v FROM hookbridge.subscriptions s WHERE s.id = p_id;
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
