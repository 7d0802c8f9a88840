-- sql/90_privileges.sql: least privilege for the services and for operators -
-- who may call and read what, for every function and table, in one place.
-- Applied last (the file names give the order), after every function and view
-- exists; re-applied with the others, so a function or table added later gets
-- its privileges here and nowhere else.
--
-- Three group roles (NOLOGIN); grant them to the login roles you use:
--
--   hookbridge_service   the dispatcher and the retrier: read subscriptions
--                        (with their sealed secrets, to sign), write the
--                        delivery log, claim and record verifications and
--                        replays and previews, seal secrets, deactivate endpoints that
--                        keep failing, maintain the delivery log's
--                        partitions, and read hookbridge-migrate's
--                        bookkeeping (its `up` runs in their init
--                        containers). Nothing else: no subscription can be
--                        created or changed with it.
--   hookbridge_operator  people and programs managing subscriptions: every
--                        hookbridge.* API function but the services' ones
--                        (preview() included), the views, the delivery log
--                        and the previews read-only. No direct writes
--                        to the tables (so every change goes through a
--                        validating function) and no read of
--                        subscription_secrets, secret_inbox or auth values
--                        (signing_secret() hands the secret out on purpose).
--   hookbridge_reader    dashboards and reports: the views, the delivery log
--                        without the stored bodies (deliveries.body: the
--                        events' content), the previews' outcomes (not
--                        their body or response), the subscriptions' columns an
--                        operator reads, the limits and event types, and the
--                        functions that only compute (limit, event_fields,
--                        filter_problem, check_filter). Nothing that changes
--                        anything, no secret (not even signing_secret()).
--
--   CREATE ROLE hookbridge_app LOGIN PASSWORD '...' IN ROLE hookbridge_service;
--   CREATE ROLE alice LOGIN IN ROLE hookbridge_operator;
--   CREATE ROLE grafana LOGIN PASSWORD '...' IN ROLE hookbridge_reader;
--
-- The API functions (no leading underscore) are SECURITY DEFINER: they run
-- with the rights of the schema owner, who applied the migrations. Every
-- hookbridge function has a fixed search_path (pg_catalog, hookbridge,
-- public), so a caller cannot substitute objects. Both are written in each
-- function's definition (CREATE OR REPLACE resets what it does not say); this
-- file refuses to finish when one is missing. EXECUTE is revoked from PUBLIC.
--
-- The grants below are the whole truth: each run first revokes what the three
-- roles hold on the schema's tables, views and functions, then grants the
-- lists. (Grants to other roles, made by hand, are left alone.)
--
-- Creating roles needs CREATEROLE: when the migrating user lacks it and the
-- roles do not exist yet, this file says so (WARNING: hookbridge-migrate
-- shows warnings, not notices) and skips the grants;
-- create the roles as above and run this file again by hand (psql -f; it
-- is idempotent), see docs/sql.md. hookbridge_reader (added later) is
-- handled on its own: without it the other two still get their grants.

DO $$
DECLARE
    can_create boolean := (SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hookbridge_service') THEN
        IF can_create THEN
            CREATE ROLE hookbridge_service NOLOGIN;
        ELSE
            RAISE WARNING 'hookbridge_service does not exist and % may not create roles (CREATEROLE): the grants of sql/90_privileges.sql are skipped; create the role and run that file again (docs/sql.md, Roles)', current_user;
        END IF;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hookbridge_operator') THEN
        IF can_create THEN
            CREATE ROLE hookbridge_operator NOLOGIN;
        ELSE
            RAISE WARNING 'hookbridge_operator does not exist and % may not create roles (CREATEROLE): the grants of sql/90_privileges.sql are skipped; create the role and run that file again (docs/sql.md, Roles)', current_user;
        END IF;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hookbridge_reader') THEN
        IF can_create THEN
            CREATE ROLE hookbridge_reader NOLOGIN;
        ELSE
            RAISE WARNING 'hookbridge_reader does not exist and % may not create roles (CREATEROLE): its grants in sql/90_privileges.sql are skipped; create the role and run that file again (docs/sql.md, Roles)', current_user;
        END IF;
    END IF;
END
$$;

-- Our functions: every one in the schema that is not part of an extension
-- (pgcrypto lives here too and is left as it is).
CREATE OR REPLACE FUNCTION hookbridge._own_functions()
RETURNS TABLE (fn regprocedure, name name)
LANGUAGE sql STABLE SET search_path = pg_catalog, hookbridge, public AS $$
    SELECT p.oid::regprocedure, p.proname FROM pg_proc p
     WHERE p.pronamespace = 'hookbridge'::regnamespace AND p.prokind = 'f'
       AND NOT EXISTS (SELECT 1 FROM pg_depend d
                        WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                          AND d.deptype = 'e')
$$;

-- Nobody but the roles below may call any of ours; each function says how it
-- runs, and this checks that it does. One helper runs as the owner too: the
-- trigger that stamps a deactivation at its commit, where whoever commits (an
-- operator, a service) is the current user and may not UPDATE the table.
DO $$
DECLARE
    r record;
    definer_helpers name[] := ARRAY['_stamp_deactivated_at', '_grace_from_commit'];
BEGIN
    FOR r IN SELECT f.fn, f.name, p.prosecdef, p.proconfig
               FROM hookbridge._own_functions() f JOIN pg_proc p ON p.oid = f.fn LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', r.fn);
        IF r.proconfig IS DISTINCT FROM ARRAY['search_path=pg_catalog, hookbridge, public'] THEN
            RAISE EXCEPTION 'function % must say SET search_path = pg_catalog, hookbridge, public', r.fn;
        END IF;
        IF r.prosecdef <> (left(r.name, 1) <> '_' OR r.name = ANY (definer_helpers)) THEN
            RAISE EXCEPTION 'function % must %be SECURITY DEFINER (API functions are, helpers with a leading underscore are not)',
                r.fn, CASE WHEN r.prosecdef THEN 'not ' ELSE '' END;
        END IF;
    END LOOP;
END
$$;

DO $$
DECLARE
    r record;
    -- the API functions only the services call; every other one is the operators'
    service_fns name[] := ARRAY['claim_verification', 'claim_verification_until',
                                'record_verification', 'defer_verification', 'release_verification',
                                'claim_replays', 'claim_preview', 'record_preview', 'release_preview',
                                'deactivate_failing', 'maintain_delivery_log', 'sealed_signing_secret',
                                'secrets_to_seal', 'seal_store', 'seal_refuse', 'sealed_under_other_keys', 'reseal',
                                'take_rate_tokens'];
    -- the API functions that only compute, and all a reader may call
    reader_fns name[] := ARRAY['limit', 'event_fields', 'filter_problem', 'check_filter'];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hookbridge_service')
       OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hookbridge_operator') THEN
        RETURN;
    END IF;
    GRANT USAGE ON SCHEMA hookbridge TO hookbridge_service, hookbridge_operator;
    -- tables and views (and their columns): from nothing to the lists below
    REVOKE ALL ON ALL TABLES IN SCHEMA hookbridge FROM hookbridge_service, hookbridge_operator;

    -- services: read what they deliver, write the delivery log; the secret
    -- inbox (plaintext) only through the functions
    GRANT SELECT ON hookbridge.subscriptions, hookbridge.subscription_event_types,
                    hookbridge.subscription_secrets, hookbridge.event_types, hookbridge.limits
        TO hookbridge_service;
    GRANT SELECT, INSERT, UPDATE ON hookbridge.deliveries, hookbridge.delivery_attempts,
                                   hookbridge.endpoint_health
        TO hookbridge_service;
    -- previews (migration 0012): written through claim_preview,
    -- record_preview and release_preview; read to find the pending ones
    GRANT SELECT ON hookbridge.previews TO hookbridge_service;
    -- ordered delivery: the end of each key's chain (migration 0003)
    GRANT SELECT, INSERT, UPDATE, DELETE ON hookbridge.ordering_tails TO hookbridge_service;
    GRANT SELECT ON hookbridge.ordering_tails TO hookbridge_operator;
    -- delivery_attempts.id (a plain sequence: the table is partitioned)
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA hookbridge FROM hookbridge_service, hookbridge_operator;
    GRANT USAGE ON SEQUENCE hookbridge.delivery_attempts_id_seq TO hookbridge_service;

    -- operators: the views and the log, read-only; changes through the API
    GRANT SELECT ON hookbridge.subscription_overview, hookbridge.recent_deliveries,
                    hookbridge.deliveries, hookbridge.delivery_attempts,
                    hookbridge.endpoint_health, hookbridge.event_types, hookbridge.limits,
                    hookbridge.subscription_event_types, hookbridge.previews
        TO hookbridge_operator;
    GRANT SELECT (id, name, url, status, verification, verification_requested_at,
                  verification_claimed_until, verification_retrying, verified_at,
                  verification_failed_at, verification_error, auth_header, options, created_at,
                  updated_at, deregistered_at, deactivation_reason, deactivated_at)
        ON hookbridge.subscriptions TO hookbridge_operator;
    -- both: which secrets are sealed, under which key
    GRANT SELECT ON hookbridge.secret_keys, hookbridge.secret_status
        TO hookbridge_operator, hookbridge_service;
    -- both: hookbridge-migrate's bookkeeping, which `hookbridge-migrate up` (the
    -- services' init containers, also when a migrate Job with another role
    -- applied everything) and `status` read; only the migrating role writes it
    GRANT SELECT ON hookbridge.hookbridge_migrations, hookbridge.hookbridge_sql_files
        TO hookbridge_operator, hookbridge_service;

    FOR r IN SELECT * FROM hookbridge._own_functions() LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM hookbridge_service, hookbridge_operator',
                       r.fn);
        IF r.name = ANY (service_fns) THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO hookbridge_service', r.fn);
        ELSIF left(r.name, 1) <> '_' THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO hookbridge_operator', r.fn);
        END IF;
    END LOOP;

    -- readers (dashboards): read-only, no secret, no payload
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hookbridge_reader') THEN
        RETURN;
    END IF;
    GRANT USAGE ON SCHEMA hookbridge TO hookbridge_reader;
    REVOKE ALL ON ALL TABLES IN SCHEMA hookbridge FROM hookbridge_reader;
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA hookbridge FROM hookbridge_reader;
    GRANT SELECT ON hookbridge.subscription_overview, hookbridge.recent_deliveries,
                    hookbridge.secret_status, hookbridge.secret_keys,
                    hookbridge.delivery_attempts, hookbridge.endpoint_health,
                    hookbridge.event_types, hookbridge.limits,
                    hookbridge.subscription_event_types, hookbridge.ordering_tails
        TO hookbridge_reader;
    GRANT SELECT (delivery_id, subscription_id, event_ids, event_type, status, attempts,
                  first_attempt_at, last_attempt_at, last_http_status, last_error, created_at,
                  content_type, replay_requested_at, replay_claimed_at, log_day, replay_due_at,
                  resume_requested_at)
        ON hookbridge.deliveries TO hookbridge_reader;
    -- previews: their outcome, not the body sent nor the endpoint's answer
    GRANT SELECT (id, subscription_id, event_type, status, requested_at, claimed_until, sent_at,
                  http_status, error, duration_ms, content_type)
        ON hookbridge.previews TO hookbridge_reader;
    GRANT SELECT (id, name, url, status, verification, verification_requested_at,
                  verification_claimed_until, verification_retrying, verified_at,
                  verification_failed_at, verification_error, auth_header, options, created_at,
                  updated_at, deregistered_at, deactivation_reason, deactivated_at)
        ON hookbridge.subscriptions TO hookbridge_reader;
    FOR r IN SELECT * FROM hookbridge._own_functions() LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM hookbridge_reader', r.fn);
        IF r.name = ANY (reader_fns) THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO hookbridge_reader', r.fn);
        END IF;
    END LOOP;
END
$$;
