-- sql/20_options.sql: a subscription's options - format, batching, rate_limit,
-- timeout_ms, auth_header/auth_value, secret, and the payload options fields,
-- headers and filter - validated in one place, hookbridge._check_options,
-- for register() and update(). It returns the options to store, never
-- auth_header, auth_value or the secret, which have their own columns/table.
-- docs/payloads.md describes the options for users.
--
--   SQLSTATE  raised here (all codes: docs/sql.md, Errors)
--   --------  --------------------------------------------------------------
--   HB005     unknown option key (the message names it)
--   HB006     invalid option value (format, batch_max, batch_window_ms,
--             timeout_ms, auth_header, auth_value, options not an object)
--   HB007     invalid signing secret (via _check_secret, sql/10_checks.sql)
--   HB013     invalid filter (via check_filter, sql/30_filters.sql)
--   HB016     invalid custom header (options.headers): not an object, a name
--             that is not an HTTP token, a value that is not a string of
--             printable ASCII, a reserved name (one hookbridge sets itself,
--             a hop-by-hop header, a credential header, or the
--             subscription's own auth_header), a name given twice (names are
--             case-insensitive), too many headers or too many bytes
--   HB017     invalid field list (options.fields): not a non-empty array of
--             strings, an unknown top-level event field, a field given twice
--   HB024     invalid rate limit (options.rate_limit): not an object, an
--             unknown key in it, per_second not a number in (0, 10000]
--             (and at least 1e-300),
--             burst not an integer in 1..10000
--   HB025     invalid options.ordering: not one of "actor", "target", "key",
--             or given with batch_max above 1

-- The top-level fields of IdentityEvent (schema/identity_event.avsc; a test
-- keeps the two equal), in schema order.
CREATE OR REPLACE FUNCTION hookbridge.event_fields() RETURNS text[]
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
    SELECT ARRAY['uuid', 'published', 'eventType', 'version', 'severity', 'legacyEventType',
                 'displayMessage', 'actor', 'client', 'outcome', 'target', 'transaction',
                 'debugContext', 'authenticationContext', 'securityContext', 'request']
$$;

COMMENT ON FUNCTION hookbridge.event_fields() IS
    'Top-level IdentityEvent fields that options.fields may select. uuid, published and '
    'eventType are always delivered.';

-- Header names a subscription can set neither as auth_header nor in headers:
-- those the delivery sets itself (Content-Type, User-Agent, webhook-*, the
-- verification challenge), those describing the connection or the framing,
-- which only the HTTP client may set.
CREATE OR REPLACE FUNCTION hookbridge._reserved_header(p_name text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, hookbridge, public AS $$
    SELECT lower(p_name) IN ('host', 'content-type', 'content-length', 'content-encoding',
                             'transfer-encoding', 'connection', 'keep-alive',
                             'proxy-connection', 'user-agent', 'expect', 'te', 'trailer',
                             'upgrade', 'x-okta-verification-challenge')
        OR lower(p_name) LIKE 'webhook-%'
$$;

-- options.fields: a non-empty array of distinct known top-level field names.
-- Returned as given (the C side always adds uuid, published and eventType).
CREATE OR REPLACE FUNCTION hookbridge._check_fields(p_fields jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_el jsonb;
    v_seen text[] := '{}';
    v_name text;
BEGIN
    IF jsonb_typeof(p_fields) IS DISTINCT FROM 'array' OR jsonb_array_length(p_fields) = 0 THEN
        RAISE EXCEPTION 'option fields must be a non-empty array of top-level event field names'
            USING ERRCODE = 'HB017',
                  HINT = 'Known fields: ' || array_to_string(hookbridge.event_fields(), ', ') || '.';
    END IF;
    FOR v_el IN SELECT e FROM jsonb_array_elements(p_fields) AS e LOOP
        IF jsonb_typeof(v_el) <> 'string' THEN
            RAISE EXCEPTION 'option fields must contain only strings (found %)', v_el::text
                USING ERRCODE = 'HB017';
        END IF;
        v_name := v_el #>> '{}';
        IF NOT v_name = ANY (hookbridge.event_fields()) THEN
            RAISE EXCEPTION 'option fields: unknown event field "%"', left(v_name, 100)
                USING ERRCODE = 'HB017',
                      HINT = 'Known fields: ' || array_to_string(hookbridge.event_fields(), ', ')
                             || ' (names are case-sensitive).';
        END IF;
        IF v_name = ANY (v_seen) THEN
            RAISE EXCEPTION 'option fields: "%" is listed twice', v_name USING ERRCODE = 'HB017';
        END IF;
        v_seen := v_seen || v_name;
    END LOOP;
    RETURN p_fields;
END
$$;

-- options.headers: {"Name": "value", ...}. Names are HTTP tokens, not
-- reserved, not the auth header (p_auth_header, may be NULL), distinct
-- ignoring case. Values are 1..N characters of printable ASCII (space and tab
-- inside, not at either end). Size = bytes of all names and values together.
-- Values are never echoed in messages: not secrets, but not ours to log.
CREATE OR REPLACE FUNCTION hookbridge._check_headers(p_headers jsonb, p_auth_header text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_max_cnt bigint := hookbridge._limit_or('max_headers', 20);
    v_max_bytes bigint := hookbridge._limit_or('max_header_bytes', 8192);
    v_name text;
    v_val jsonb;
    v_value text;
    v_seen text[] := '{}';
    v_bytes bigint := 0;
BEGIN
    IF jsonb_typeof(p_headers) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'option headers must be a JSON object of header names and string values'
            USING ERRCODE = 'HB016',
                  HINT = 'For example {"headers": {"X-Team": "iam"}}.';
    END IF;
    IF (SELECT count(*) FROM jsonb_object_keys(p_headers)) > v_max_cnt THEN
        RAISE EXCEPTION 'option headers has % headers; at most % are allowed',
            (SELECT count(*) FROM jsonb_object_keys(p_headers)), v_max_cnt
            USING ERRCODE = 'HB016';
    END IF;
    FOR v_name, v_val IN SELECT e.key, e.value FROM jsonb_each(p_headers) AS e ORDER BY e.key LOOP
        IF length(v_name) > 256 OR v_name !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' THEN
            RAISE EXCEPTION 'option headers: "%" is not an HTTP header name (a token of at most 256 characters)',
                left(v_name, 100) USING ERRCODE = 'HB016';
        END IF;
        IF hookbridge._reserved_header(v_name) THEN
            RAISE EXCEPTION 'option headers: "%" is a header hookbridge sets itself', v_name
                USING ERRCODE = 'HB016';
        END IF;
        IF lower(v_name) IN ('authorization', 'proxy-authorization', 'cookie') THEN
            RAISE EXCEPTION 'option headers: "%" carries credentials; use auth_header and auth_value, which are kept out of options',
                v_name USING ERRCODE = 'HB016';
        END IF;
        IF lower(v_name) = lower(p_auth_header) THEN
            RAISE EXCEPTION 'option headers: "%" is the subscription''s auth_header; its value is auth_value',
                v_name USING ERRCODE = 'HB016';
        END IF;
        IF lower(v_name) = ANY (v_seen) THEN
            RAISE EXCEPTION 'option headers: "%" is given twice (header names are case-insensitive)',
                v_name USING ERRCODE = 'HB016';
        END IF;
        v_seen := v_seen || lower(v_name);
        IF jsonb_typeof(v_val) <> 'string' THEN
            RAISE EXCEPTION 'option headers: the value of "%" must be a string', v_name
                USING ERRCODE = 'HB016';
        END IF;
        v_value := v_val #>> '{}';
        IF v_value = '' OR v_value ~ '[^\t\x20-\x7e]' OR v_value ~ '^[ \t]' OR v_value ~ '[ \t]$' THEN
            RAISE EXCEPTION 'option headers: the value of "%" must be printable ASCII (no CR, LF or other control characters), not empty, without leading or trailing whitespace',
                v_name USING ERRCODE = 'HB016';
        END IF;
        v_bytes := v_bytes + octet_length(v_name) + octet_length(v_value);
    END LOOP;
    IF v_bytes > v_max_bytes THEN
        RAISE EXCEPTION 'option headers has % bytes of names and values; at most % are allowed',
            v_bytes, v_max_bytes USING ERRCODE = 'HB016';
    END IF;
    RETURN p_headers;
END
$$;

-- options.rate_limit: {"per_second": <number in (0, 10000], at least 1e-300>, "burst": <integer
-- 1..10000, default ceil(per_second)>}. Returned normalised, with burst
-- always present. Enforced by the services (lib/hb_ratelimit.h) with a budget
-- shared by every replica (hookbridge.take_rate_tokens, sql/45_rate_limits.sql).
CREATE OR REPLACE FUNCTION hookbridge._check_rate_limit(p_rl jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_hint constant text := 'For example {"rate_limit": {"per_second": 10, "burst": 20}}: at most '
                            '10 requests a second on average, up to 20 at once.';
    k text;
    v_rate numeric;
    v_burst numeric;
BEGIN
    IF jsonb_typeof(p_rl) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'option rate_limit must be a JSON object with per_second and burst'
            USING ERRCODE = 'HB024', HINT = v_hint;
    END IF;
    FOR k IN SELECT jsonb_object_keys(p_rl) AS key ORDER BY key LOOP
        IF k NOT IN ('per_second', 'burst') THEN
            RAISE EXCEPTION 'option rate_limit: unknown key "%"', left(k, 100)
                USING ERRCODE = 'HB024', HINT = 'Known keys: per_second, burst. ' || v_hint;
        END IF;
    END LOOP;
    IF jsonb_typeof(p_rl -> 'per_second') IS DISTINCT FROM 'number' THEN
        RAISE EXCEPTION 'option rate_limit: per_second must be a number greater than 0 and at most 10000'
            USING ERRCODE = 'HB024', HINT = v_hint;
    END IF;
    v_rate := (p_rl ->> 'per_second')::numeric;
    IF v_rate <= 0 OR v_rate > 10000 THEN
        RAISE EXCEPTION 'option rate_limit: per_second must be greater than 0 and at most 10000 (got %)',
            v_rate USING ERRCODE = 'HB024', HINT = 'Fractions are allowed: 0.5 is one request every 2 s.';
    END IF;
    -- The services and take_rate_tokens() hold it in a double: 1e-400 was
    -- stored, then read as 0, and the subscription could not be loaded at all.
    IF v_rate < 1e-300 THEN
        RAISE EXCEPTION 'option rate_limit: per_second is too small to be held as a double (at least 1e-300)'
            USING ERRCODE = 'HB024', HINT = 'Fractions are allowed: 0.5 is one request every 2 s.';
    END IF;
    IF p_rl ? 'burst' THEN
        IF jsonb_typeof(p_rl -> 'burst') IS DISTINCT FROM 'number' THEN
            RAISE EXCEPTION 'option rate_limit: burst must be an integer between 1 and 10000'
                USING ERRCODE = 'HB024', HINT = v_hint;
        END IF;
        v_burst := (p_rl ->> 'burst')::numeric;
        IF v_burst <> trunc(v_burst) OR v_burst < 1 OR v_burst > 10000 THEN
            RAISE EXCEPTION 'option rate_limit: burst must be an integer between 1 and 10000 (got %)',
                v_burst USING ERRCODE = 'HB024',
                HINT = 'burst is how many requests may go at once; it defaults to per_second rounded up.';
        END IF;
    ELSE
        v_burst := ceil(v_rate);
    END IF;
    RETURN jsonb_build_object('per_second', v_rate, 'burst', v_burst::integer);
END
$$;

-- Validates a subscription's options (register, and any function that
-- replaces them). Returns the options to store: format, batch_max,
-- batch_window_ms, timeout_ms (normalised to integers), fields, headers and
-- filter - never auth_header, auth_value or the secret, which have their own
-- columns/table. STABLE, not IMMUTABLE: the header limits and the filter check
-- are looked up in the database.
CREATE OR REPLACE FUNCTION hookbridge._check_options(p_opts jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, hookbridge, public AS $$
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
                     'batch_window_ms', 'timeout_ms', 'fields', 'headers', 'filter',
                     'rate_limit', 'ordering') THEN
            RAISE EXCEPTION 'unknown option "%"', k USING ERRCODE = 'HB005',
                HINT = 'Known options: auth_header, auth_value, secret, format, batch_max, batch_window_ms, timeout_ms, fields, headers, filter, rate_limit, ordering.';
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
    -- 100 ms .. 60 s, as in 0001: stored rows stay valid.
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

    IF p_opts ? 'fields' THEN
        v_out := v_out || jsonb_build_object('fields', hookbridge._check_fields(p_opts -> 'fields'));
    END IF;
    IF p_opts ? 'headers' THEN
        v_out := v_out || jsonb_build_object('headers',
                                             hookbridge._check_headers(p_opts -> 'headers',
                                                                       p_opts ->> 'auth_header'));
    END IF;
    IF p_opts ? 'filter' THEN
        IF to_regprocedure('hookbridge.check_filter(jsonb)') IS NOT NULL THEN
            EXECUTE 'SELECT hookbridge.check_filter($1)' USING p_opts -> 'filter';
        END IF;
        v_out := v_out || jsonb_build_object('filter', p_opts -> 'filter');
    END IF;
    IF p_opts ? 'rate_limit' THEN
        v_out := v_out || jsonb_build_object('rate_limit',
                                             hookbridge._check_rate_limit(p_opts -> 'rate_limit'));
    END IF;
    -- Ordered delivery per key (docs/payloads.md): one request at a time per
    -- key, so never several events in one request.
    IF p_opts ? 'ordering' THEN
        IF jsonb_typeof(p_opts -> 'ordering') IS DISTINCT FROM 'string'
           OR (p_opts ->> 'ordering') NOT IN ('actor', 'target', 'key') THEN
            RAISE EXCEPTION 'option ordering must be one of "actor", "target", "key"'
                USING ERRCODE = 'HB025',
                      HINT = 'actor: actor.id; target: the first target of type User (else the first target); key: the events topic''s message key.';
        END IF;
        IF coalesce((v_out ->> 'batch_max')::int, 1) > 1 THEN
            RAISE EXCEPTION 'option ordering cannot be combined with batch_max above 1'
                USING ERRCODE = 'HB025',
                      HINT = 'Ordered events are sent one request at a time; drop batch_max or ordering.';
        END IF;
        v_out := v_out || jsonb_build_object('ordering', p_opts ->> 'ordering');
    END IF;
    RETURN v_out;
END
$$;

COMMENT ON FUNCTION hookbridge._check_options(jsonb) IS
    'Validates subscription options; returns what is stored in subscriptions.options. '
    'Keys: auth_header, auth_value, secret, format (okta|cloudevents|event), '
    'batch_max (1..100), batch_window_ms (0..60000), timeout_ms (100..60000), '
    'fields (HB017), headers (HB016), filter (HB013), rate_limit (HB024), '
    'ordering (actor|target|key, HB025). '
    'See docs/payloads.md.';
