-- sql/30_filters.sql: validation of subscription content filters (the
-- `filter` option), so an invalid filter is refused when it is registered,
-- never at delivery time.
--
--   SQLSTATE  raised here (all codes: docs/sql.md, Errors)
--   --------  --------------------------------------------------------------
--   HB013     invalid filter (the message says where and what, e.g.
--             filter.$or[1]."target[].type": unknown operator "$gt" ...)
--
-- The syntax is documented in docs/filters.md. These functions apply the same
-- rules as the dispatcher's compiler (lib/hb_filter.c), with the same bounds:
-- filter objects nest at most 8 deep, at most 64 conditions (operators, bare
-- scalars and $and/$or/$not entries), paths of at most 16 segments and 256
-- bytes, strings of at most 1024 bytes, numbers within the 64-bit integer
-- range, $in/$nin lists of at most 100 items.
-- tests/filter_cases.json is the table both are tested against; the messages
-- are the same text where both look at the same problem first (jsonb orders
-- object keys differently from the original text, so a filter with several
-- problems may be reported by a different one).
--
--   hookbridge.filter_problem(f jsonb) -> text   NULL when valid (or f IS NULL)
--   hookbridge.check_filter(f jsonb)             raises HB013 when invalid

-- A key as shown in messages: at most 64 bytes (cut at a character boundary,
-- "..." appended), control characters as '?'.
CREATE OR REPLACE FUNCTION hookbridge._filter_display(p_key text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v text := p_key;
    n int;
BEGIN
    IF octet_length(v) > 64 THEN
        n := 64;
        WHILE octet_length(left(v, n)) > 64 LOOP
            n := n - 1;
        END LOOP;
        v := left(v, n) || '...';
    END IF;
    RETURN regexp_replace(v, '[\x01-\x1f]', '?', 'g');
END
$$;

-- The problem with a scalar operand (string, number, boolean or null), or NULL.
CREATE OR REPLACE FUNCTION hookbridge._filter_scalar_problem(p_v jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    t text := jsonb_typeof(p_v);
    n numeric;
BEGIN
    IF t IN ('array', 'object') THEN
        RETURN 'must be a string, number, boolean or null, got ' || t
               || CASE WHEN t = 'array' THEN ' (use $in for a list of values)' ELSE '' END;
    END IF;
    IF t = 'string' AND octet_length(p_v #>> '{}') > 1024 THEN
        RETURN 'string is longer than 1024 bytes';
    END IF;
    -- The dispatcher reads the stored filter as text, where a jsonb number
    -- has no exponent (1e19 is 10000000000000000000): beyond 64 bits that is
    -- an integer it cannot read, and the subscription could not be loaded.
    -- One with a decimal point it reads as a double and checks that, so
    -- 9223372036854775807.0 (2^63 as a double) is outside too: the same
    -- check here (float8, like strtod, rounds to the nearest double), else
    -- a filter register() took would make the dispatcher skip its
    -- subscription. Far outside, numeric decides (float8 could overflow).
    IF t = 'number' THEN
        n := (p_v #>> '{}')::numeric;
        IF n NOT BETWEEN -9223372036854775809 AND 9223372036854775808
           OR (strpos(p_v #>> '{}', '.') = 0
               AND n NOT BETWEEN -9223372036854775808 AND 9223372036854775807)
           OR (strpos(p_v #>> '{}', '.') > 0
               AND NOT (n::float8 >= -9223372036854775808::float8
                        AND n::float8 < 9223372036854775808::float8)) THEN
            RETURN 'number is outside the 64-bit integer range (-9223372036854775808 .. '
                   '9223372036854775807)';
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- "<path>": condition. p_loc ends at the path; p_nodes counts conditions.
CREATE OR REPLACE FUNCTION hookbridge._filter_condition(p_path text, p_cond jsonb, p_loc text,
                                                        INOUT p_nodes int, OUT p_problem text)
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_op text;
    v_arg jsonb;
    v_at text;
    v_t text;
    i int;
BEGIN
    -- The path first, then its condition.
    IF octet_length(p_path) > 256 THEN
        p_problem := p_loc || ': path is longer than 256 bytes';
        RETURN;
    END IF;
    IF p_path !~ '^[A-Za-z0-9_]+(\[\])?(\.[A-Za-z0-9_]+(\[\])?)*$' THEN
        p_problem := p_loc || ': invalid path (dot-separated segments of letters, digits and _, '
                     'each optionally followed by [] for any element of an array)';
        RETURN;
    END IF;
    IF array_length(string_to_array(p_path, '.'), 1) > 16 THEN
        p_problem := p_loc || ': path has more than 16 segments';
        RETURN;
    END IF;

    v_t := jsonb_typeof(p_cond);
    IF v_t = 'array' THEN
        p_problem := p_loc || ': a condition cannot be an array; use {"$in": [...]} to match any '
                     'of several values';
        RETURN;
    END IF;
    IF v_t <> 'object' THEN
        p_nodes := p_nodes + 1;
        IF p_nodes > 64 THEN
            p_problem := p_loc || ': filter has more than 64 conditions (operators and $and/$or/$not)';
            RETURN;
        END IF;
        p_problem := p_loc || ': ' || hookbridge._filter_scalar_problem(p_cond);
        RETURN; -- NULL when the scalar is fine
    END IF;
    IF p_cond = '{}'::jsonb THEN
        p_problem := p_loc || ': condition must not be empty; give at least one operator '
                     '(known: $eq $ne $in $nin $exists $prefix)';
        RETURN;
    END IF;

    FOR v_op, v_arg IN SELECT e.key, e.value FROM jsonb_each(p_cond) AS e LOOP
        IF v_op NOT IN ('$eq', '$ne', '$in', '$nin', '$exists', '$prefix') THEN
            IF left(v_op, 1) <> '$' THEN
                p_problem := format('%s: "%s" is not an operator (known: $eq $ne $in $nin $exists '
                                    '$prefix); to test a nested field, write its dotted path as '
                                    'the key, e.g. "%s.%s"',
                                    p_loc, hookbridge._filter_display(v_op),
                                    hookbridge._filter_display(p_path),
                                    hookbridge._filter_display(v_op));
            ELSE
                p_problem := format('%s: unknown operator "%s" (known: $eq $ne $in $nin $exists '
                                    '$prefix)', p_loc, hookbridge._filter_display(v_op));
            END IF;
            RETURN;
        END IF;
        p_nodes := p_nodes + 1;
        IF p_nodes > 64 THEN
            p_problem := p_loc || ': filter has more than 64 conditions (operators and $and/$or/$not)';
            RETURN;
        END IF;
        v_at := p_loc || '.' || v_op;
        v_t := jsonb_typeof(v_arg);
        IF v_op IN ('$eq', '$ne') THEN
            p_problem := v_at || ': ' || hookbridge._filter_scalar_problem(v_arg);
        ELSIF v_op IN ('$in', '$nin') THEN
            IF v_t <> 'array' THEN
                p_problem := v_at || ': must be a non-empty array of values, got ' || v_t;
            ELSIF jsonb_array_length(v_arg) = 0 THEN
                p_problem := v_at || ': must be a non-empty array of values';
            ELSIF jsonb_array_length(v_arg) > 100 THEN
                p_problem := v_at || ': has more than 100 items';
            ELSE
                FOR i IN 0 .. jsonb_array_length(v_arg) - 1 LOOP
                    p_problem := v_at || '[' || i || ']: '
                                 || hookbridge._filter_scalar_problem(v_arg -> i);
                    EXIT WHEN p_problem IS NOT NULL;
                END LOOP;
            END IF;
        ELSIF v_op = '$exists' THEN
            IF v_t <> 'boolean' THEN
                p_problem := v_at || ': must be true or false, got ' || v_t;
            END IF;
        ELSE -- $prefix
            IF v_t <> 'string' THEN
                p_problem := v_at || ': must be a string, got ' || v_t;
            ELSIF octet_length(v_arg #>> '{}') > 1024 THEN
                p_problem := v_at || ': string is longer than 1024 bytes';
            END IF;
        END IF;
        IF p_problem IS NOT NULL THEN
            RETURN;
        END IF;
    END LOOP;
END
$$;

-- A filter object at p_depth (the whole filter is 1). p_loc names it.
CREATE OR REPLACE FUNCTION hookbridge._filter_object(p_f jsonb, p_loc text, p_depth int,
                                                     INOUT p_nodes int, OUT p_problem text)
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    k text;
    v jsonb;
    v_at text;
    i int;
BEGIN
    IF jsonb_typeof(p_f) <> 'object' THEN
        p_problem := p_loc || ': must be a JSON object, got ' || jsonb_typeof(p_f);
        RETURN;
    END IF;
    IF p_depth > 8 THEN
        p_problem := p_loc || ': filters nest deeper than 8 levels';
        RETURN;
    END IF;
    IF p_f = '{}'::jsonb AND p_depth > 1 THEN
        p_problem := p_loc || ': must not be empty (only the whole filter may be {}, which '
                     'matches every event)';
        RETURN;
    END IF;
    FOR k, v IN SELECT e.key, e.value FROM jsonb_each(p_f) AS e LOOP
        IF left(k, 1) <> '$' THEN
            SELECT * INTO p_nodes, p_problem
              FROM hookbridge._filter_condition(k, v,
                       p_loc || '."' || hookbridge._filter_display(k) || '"', p_nodes);
        ELSIF k NOT IN ('$and', '$or', '$not') THEN
            p_problem := format('%s: unknown combinator "%s" (known: $and $or $not; operators such '
                                'as $eq go inside a path''s condition: {"<path>": {"$eq": ...}})',
                                p_loc, hookbridge._filter_display(k));
        ELSE
            p_nodes := p_nodes + 1;
            v_at := p_loc || '.' || k;
            IF p_nodes > 64 THEN
                p_problem := p_loc || ': filter has more than 64 conditions (operators and '
                             '$and/$or/$not)';
            ELSIF k = '$not' THEN
                SELECT * INTO p_nodes, p_problem
                  FROM hookbridge._filter_object(v, v_at, p_depth + 1, p_nodes);
            ELSIF jsonb_typeof(v) <> 'array' THEN
                p_problem := v_at || ': must be a non-empty array of filters, got ' || jsonb_typeof(v);
            ELSIF jsonb_array_length(v) = 0 THEN
                p_problem := v_at || ': must be a non-empty array of filters';
            ELSE
                FOR i IN 0 .. jsonb_array_length(v) - 1 LOOP
                    SELECT * INTO p_nodes, p_problem
                      FROM hookbridge._filter_object(v -> i, v_at || '[' || i || ']',
                                                     p_depth + 1, p_nodes);
                    EXIT WHEN p_problem IS NOT NULL;
                END LOOP;
            END IF;
        END IF;
        IF p_problem IS NOT NULL THEN
            RETURN;
        END IF;
    END LOOP;
END
$$;

-- NULL when f is a valid filter (or NULL: no filter), else what is wrong and
-- where, e.g. 'filter.$or[1]."target[].type": unknown operator "$gt" (...)'.
CREATE OR REPLACE FUNCTION hookbridge.filter_problem(f jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_nodes int;
    v_problem text;
BEGIN
    IF f IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT * INTO v_nodes, v_problem FROM hookbridge._filter_object(f, 'filter', 1, 0);
    RETURN v_problem;
END
$$;

COMMENT ON FUNCTION hookbridge.filter_problem(jsonb) IS
    'NULL when the subscription filter is valid, else where and what is wrong (docs/filters.md).';

-- Raises HB013 with filter_problem()'s message when f is invalid.
CREATE OR REPLACE FUNCTION hookbridge.check_filter(f jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_problem text := hookbridge.filter_problem(f);
BEGIN
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION '%', v_problem USING ERRCODE = 'HB013',
            HINT = 'See docs/filters.md for the filter syntax.';
    END IF;
END
$$;

COMMENT ON FUNCTION hookbridge.check_filter(jsonb) IS
    'Raises SQLSTATE HB013 when the subscription filter is invalid (docs/filters.md).';
