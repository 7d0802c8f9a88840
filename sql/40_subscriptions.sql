-- sql/40_subscriptions.sql: the subscription lifecycle - register, update,
-- verify, activate, deactivate, deregister, subscribe, unsubscribe - the
-- verification the services run, the triggers that make plain SQL on
-- hookbridge.subscriptions follow the same rules, and the operators' view.
-- Signing secrets are in sql/50_secrets.sql, the delivery side in
-- sql/60_deliveries.sql.
--
-- Operators and platform code call the public functions; each validates its
-- arguments and raises a clear error with a SQLSTATE of class HB, so callers
-- can tell the reasons apart. A function that raises has changed nothing (the
-- statement is rolled back).
--
--   SQLSTATE  raised here (all codes: docs/sql.md, Errors)
--   --------  --------------------------------------------------------------
--   HB001 HB002 HB003 HB004 HB005 HB006 HB007 HB013 HB014 HB016 HB017 HB024
--             validation, through sql/10_checks.sql and sql/20_options.sql
--   HB004     an unsubscribe that would leave no event type
--   HB010     subscription not found (unknown id, or deregistered)
--   HB011     subscription not verified (activate refused)
--   HB012     invalid argument to an internal function
--   HB015     a required argument is NULL (the subscription id)
--
-- Verification: a subscription is delivered to only when active AND
-- verified. A new URL - by update() or by a plain UPDATE of the url column -
-- must be verified again: verification goes back to 'unverified', a
-- challenge is requested at once (hookbridge_verify), and deliveries pause
-- until the new URL answers it; an active subscription stays 'active'
-- meanwhile and resumes by itself when the URL verifies.
--
-- Notifications (delivered at COMMIT, identical ones in a transaction merged):
--   hookbridge_subscriptions  payload: subscription id; any change to a row of
--                             subscriptions (other than the verification
--                             request bookkeeping), its event types or secrets
--   hookbridge_verify         payload: subscription id; hookbridge.verify(),
--                             or a new URL
--
-- subscriptions.deactivated_at is when the subscription last went from
-- 'active' to 'inactive': set by a trigger, so deactivate(),
-- deactivate_failing(), a failed re-verification, deregister() and a plain
-- UPDATE all count; never cleared (activate() leaves it). The retrier drops a
-- pending attempt whose delivery began before it. The time is when the
-- deactivation took effect, the commit of its transaction (a deferred trigger
-- stamps clock_timestamp() then): the services see the subscription active
-- until that commit, so deliveries that begin while a long transaction is
-- still open, after its UPDATE, were pending at the deactivation and are
-- dropped too (stamped at the UPDATE, they went on once it was activated
-- again). A transaction that makes it active again before it commits keeps
-- the moment of the UPDATE: the services never saw it inactive, and a replay
-- asked for in it after the activate() is delivered.

-- Triggers -----------------------------------------------------------------------

CREATE OR REPLACE FUNCTION hookbridge._touch_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER subscriptions_touch BEFORE UPDATE ON hookbridge.subscriptions
    FOR EACH ROW EXECUTE FUNCTION hookbridge._touch_updated_at();

-- Tells the services which subscription changed. The verification request
-- bookkeeping (verify() setting verification_requested_at,
-- claim_verification() setting verification_claimed_until) changes nothing the
-- services hold, so it does not notify this channel; verify() notifies
-- hookbridge_verify itself. Nor does the removal of what a deregistered
-- subscription left (maintain_delivery_log forgets it past the retention):
-- the services dropped it at its deregistration, and a purge of thousands
-- notified as many ids, each loaded again by every service for nothing.
CREATE OR REPLACE FUNCTION hookbridge._notify_subscription() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_id uuid;
BEGIN
    IF TG_TABLE_NAME = 'subscriptions' THEN
        IF TG_OP = 'DELETE' THEN
            IF OLD.deregistered_at IS NOT NULL THEN
                RETURN NULL;
            END IF;
            v_id := OLD.id;
        ELSE
            IF TG_OP = 'UPDATE'
               AND (to_jsonb(OLD) - 'verification_requested_at' - 'verification_claimed_until'
                    - 'verification_retrying' - 'updated_at')
                 = (to_jsonb(NEW) - 'verification_requested_at' - 'verification_claimed_until'
                    - 'verification_retrying' - 'updated_at') THEN
                RETURN NULL;
            END IF;
            v_id := NEW.id;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        v_id := OLD.subscription_id;
        -- (deregister() deletes the secrets while the row is still live:
        -- notified, as its update is)
        IF NOT EXISTS (SELECT 1 FROM hookbridge.subscriptions s
                        WHERE s.id = v_id AND s.deregistered_at IS NULL) THEN
            RETURN NULL;
        END IF;
    ELSE
        v_id := NEW.subscription_id;
    END IF;
    PERFORM pg_notify('hookbridge_subscriptions', v_id::text);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER subscriptions_notify
    AFTER INSERT OR UPDATE OR DELETE ON hookbridge.subscriptions
    FOR EACH ROW EXECUTE FUNCTION hookbridge._notify_subscription();
CREATE OR REPLACE TRIGGER subscription_event_types_notify
    AFTER INSERT OR UPDATE OR DELETE ON hookbridge.subscription_event_types
    FOR EACH ROW EXECUTE FUNCTION hookbridge._notify_subscription();
CREATE OR REPLACE TRIGGER subscription_secrets_notify
    AFTER INSERT OR UPDATE OR DELETE ON hookbridge.subscription_secrets
    FOR EACH ROW EXECUTE FUNCTION hookbridge._notify_subscription();

-- Plain SQL on hookbridge.subscriptions follows the functions' rules: names and
-- URLs are validated when set, a new URL must be verified again, and only a
-- verified subscription becomes active.
CREATE OR REPLACE FUNCTION hookbridge._guard_subscription() RETURNS trigger
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
        NEW.verification_claimed_until := NULL; -- a claim was for the old URL
        NEW.verification_retrying := NULL;
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

CREATE OR REPLACE TRIGGER subscriptions_guard BEFORE INSERT OR UPDATE ON hookbridge.subscriptions
    FOR EACH ROW EXECUTE FUNCTION hookbridge._guard_subscription();

CREATE OR REPLACE FUNCTION hookbridge._set_deactivated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF OLD.status = 'active' AND NEW.status IS DISTINCT FROM 'active' THEN
        NEW.deactivated_at := clock_timestamp(); -- moved to the commit (below)
    ELSIF pg_trigger_depth() >= 2
          AND current_setting('hookbridge.stamping_deactivation', true) = NEW.id::text THEN
        RETURN NEW; -- _stamp_deactivated_at, at the commit
    ELSE
        NEW.deactivated_at := OLD.deactivated_at; -- only this trigger writes it
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER subscriptions_deactivated_at BEFORE UPDATE ON hookbridge.subscriptions
    FOR EACH ROW EXECUTE FUNCTION hookbridge._set_deactivated_at();

-- At the commit of a transaction that deactivated a subscription (and left it
-- inactive), its deactivated_at becomes that moment. The UPDATE below is the
-- only one _set_deactivated_at lets write the column: made from this trigger
-- (a nested trigger there) with the transaction-local mark naming the row. It
-- runs at the commit as whoever commits (an operator or a service role, which
-- may not UPDATE the table): as its owner, like the functions that deactivate
-- (the one helper that is SECURITY DEFINER, sql/90_privileges.sql).
CREATE OR REPLACE FUNCTION hookbridge._stamp_deactivated_at() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    PERFORM set_config('hookbridge.stamping_deactivation', NEW.id::text, true);
    UPDATE hookbridge.subscriptions s SET deactivated_at = clock_timestamp()
     WHERE s.id = NEW.id AND s.status <> 'active';
    PERFORM set_config('hookbridge.stamping_deactivation', '', true);
    RETURN NULL;
END
$$;

-- A constraint trigger cannot be replaced, and dropping one would lock the
-- table against the services' reads while `up` runs: made once, when missing
-- (a change to its definition needs a migration that drops it).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t
                    WHERE t.tgrelid = 'hookbridge.subscriptions'::regclass
                      AND t.tgname = 'subscriptions_deactivated_at_commit') THEN
        CREATE CONSTRAINT TRIGGER subscriptions_deactivated_at_commit
            AFTER UPDATE OF status ON hookbridge.subscriptions
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW WHEN (OLD.status = 'active' AND NEW.status IS DISTINCT FROM 'active')
            EXECUTE FUNCTION hookbridge._stamp_deactivated_at();
    END IF;
END
$$;

-- Public functions -------------------------------------------------------------------

-- A new subscription, inactive and unverified, with a generated signing secret
-- unless options.secret gives one.
CREATE OR REPLACE FUNCTION hookbridge.register(name text, url text, event_types text[],
                                               options jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
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

COMMENT ON FUNCTION hookbridge.register(text, text, text[], jsonb) IS
    'New subscription (inactive, unverified). options: auth_header, auth_value, secret, '
    'format (okta|cloudevents|event), batch_max (1..100), batch_window_ms (0..60000), '
    'timeout_ms (100..60000).';

-- Changes a live subscription; a NULL argument leaves that part unchanged.
--   url      a new URL must be verified again (the trigger
--            _guard_subscription); the same URL again changes nothing.
--   name     validated like register's.
--   options  the new options object, validated by _check_options exactly as
--            register's, replacing the stored one. auth_header/auth_value:
--            given - replaced, and the value sealed again (the stored one
--            cannot be read back to compare); absent - kept, the header
--            validated with the new options without reading its value (so
--            `options || '{...}'` changes one option); both JSON null -
--            removed. secret: given - it becomes the only signing secret at
--            once (rotate_secret keeps the previous one for a grace period
--            instead); absent - unchanged.
CREATE OR REPLACE FUNCTION hookbridge.update(id uuid, url text DEFAULT NULL, name text DEFAULT NULL,
                                             options jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v         hookbridge.subscriptions;
    v_new     hookbridge.subscriptions;
    v_opts    jsonb := update.options;
    v_store   jsonb;
    v_secret  text;
    v_keep    boolean := false;
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
            -- header must not shadow the auth header); the sealed value stays.
            v_opts := v_opts || jsonb_build_object('auth_header', v.auth_header,
                                                   'auth_value', 'kept');
            v_keep := true;
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
        IF NOT v_keep THEN
            v_new.auth_value := v_opts ->> 'auth_value';
        END IF;
    END IF;
    -- Nothing to change: nothing written, nothing notified, updated_at kept.
    IF (v_new.name, v_new.url, v_new.options, v_new.auth_header)
       IS DISTINCT FROM (v.name, v.url, v.options, v.auth_header)
       OR v_new.auth_value IS NOT NULL THEN
        UPDATE hookbridge.subscriptions s
           SET name = v_new.name, url = v_new.url, options = v_new.options,
               auth_header = v_new.auth_header, auth_value = v_new.auth_value
         WHERE s.id = update.id;
    END IF;

    IF v_secret IS NOT NULL THEN
        -- the new secret replaces every earlier one at once (none signs any
        -- more: rotate_secret is the way with a grace), so they go
        DELETE FROM hookbridge.subscription_secrets sec WHERE sec.subscription_id = update.id;
        INSERT INTO hookbridge.subscription_secrets (subscription_id, secret)
        VALUES (update.id, v_secret);
    END IF;
END
$$;

COMMENT ON FUNCTION hookbridge.update(uuid, text, text, jsonb) IS
    'Change url, name and/or options of a live subscription (NULL: unchanged). A new url '
    'is verified again before deliveries resume; an active subscription stays active.';

-- update(id, options => stored || changes), the stored options read under
-- the subscription's row lock: two changes of different options at once both
-- stay. (Reading the options in the caller's statement, as
-- "SELECT update(id, options => options || ...) FROM subscriptions" does,
-- reads them before update() locks the row, so one of two concurrent
-- changes was lost.)
CREATE OR REPLACE FUNCTION hookbridge.update_options(id uuid, changes jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v hookbridge.subscriptions;
BEGIN
    v := hookbridge._live(update_options.id);
    IF changes IS NULL OR jsonb_typeof(changes) <> 'object' THEN
        RAISE EXCEPTION 'changes must be a JSON object' USING ERRCODE = 'HB006';
    END IF;
    PERFORM hookbridge.update(update_options.id, options => v.options || changes);
END
$$;

COMMENT ON FUNCTION hookbridge.update_options(uuid, jsonb) IS
    'Merge changes into the stored options (a key set to null: as update() takes null), '
    'atomically: concurrent changes of different options all stay.';

-- Asks the dispatcher to run the verification challenge now (again, even if
-- a dispatcher holds an earlier request: it can be claimed at once).
CREATE OR REPLACE FUNCTION hookbridge.verify(id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    PERFORM hookbridge._live(verify.id);
    UPDATE hookbridge.subscriptions s
       SET verification_requested_at = now(), verification_claimed_until = NULL,
           verification_retrying = NULL
     WHERE s.id = verify.id;
    PERFORM pg_notify('hookbridge_verify', verify.id::text);
END
$$;

-- Only a verified subscription can be activated. Activating an active one is a
-- no-op - unless it waits for its new URL to be verified, which is reported.
CREATE OR REPLACE FUNCTION hookbridge.activate(id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
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

-- Stops deliveries (and pending retries, which check the status). Idempotent.
CREATE OR REPLACE FUNCTION hookbridge.deactivate(id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
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
-- services; the row (without its credentials) and the delivery log are kept
-- for the delivery log's retention: once its day is past it (the first day
-- maintain_delivery_log keeps), the maintenance forgets the subscription -
-- its row, event types, endpoint health, previews, ordering tails (sql/60).
CREATE OR REPLACE FUNCTION hookbridge.deregister(id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    PERFORM hookbridge._live_read(deregister.id); -- its errors before any lock
    -- its rate limit's bucket too (the row is kept, so ON DELETE CASCADE is not
    -- reached; take_rate_tokens is never called for it again). Put first, then
    -- deleted: the key stays ours until the commit, so a take_rate_tokens()
    -- drawing meanwhile waits for it and then finds the subscription gone
    -- (it looks again once the bucket is its own), where it put a new bucket
    -- back for good when the row had not been there to delete.
    -- The bucket's key before the subscription's row, in the order a draw
    -- takes them (its insert, then the foreign key's share lock on the row):
    -- the other way round, a draw inserting the bucket waited for the row
    -- while this waited for its insert, a deadlock, and one of the two failed.
    INSERT INTO hookbridge.rate_limit_buckets AS b (subscription_id, tokens, refilled_at)
    VALUES (deregister.id, 0, clock_timestamp())
    ON CONFLICT ON CONSTRAINT rate_limit_buckets_pkey DO NOTHING;
    DELETE FROM hookbridge.rate_limit_buckets b WHERE b.subscription_id = deregister.id;
    PERFORM hookbridge._live(deregister.id);
    DELETE FROM hookbridge.subscription_secrets sec WHERE sec.subscription_id = deregister.id;
    UPDATE hookbridge.subscriptions s
       SET status = 'inactive', deregistered_at = now(), verification_requested_at = NULL,
           verification_claimed_until = NULL, verification_retrying = NULL, auth_header = NULL,
           auth_value = NULL
     WHERE s.id = deregister.id;
END
$$;

CREATE OR REPLACE FUNCTION hookbridge.subscribe(id uuid, event_types text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
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

CREATE OR REPLACE FUNCTION hookbridge.unsubscribe(id uuid, event_types text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
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

-- Internal functions for the services ----------------------------------------------

-- Takes a pending verification request for `lease`: returns the claim, the
-- time its lease ends (verification_claimed_until), which also names it for
-- record_verification; NULL when none is claimable (another replica holds it,
-- or none is pending, or the subscription is gone). Concurrent callers
-- serialise on the row lock, so exactly one gets it. The request stays
-- pending (verification_requested_at) until record_verification() ends it: a
-- replica that dies or stops before recording leaves it claimable again when
-- the lease expires, and the dispatchers look for such requests periodically.
-- The dispatcher passes its verify_timeout plus a margin; the default covers
-- the largest verify_timeout.
CREATE OR REPLACE FUNCTION hookbridge.claim_verification_until(id uuid,
                                                               lease interval DEFAULT interval '70 seconds')
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v timestamptz;
BEGIN
    IF lease IS NULL OR lease <= interval '0' THEN
        RAISE EXCEPTION 'lease must be positive' USING ERRCODE = 'HB012';
    END IF;
    -- clock_timestamp: two claims of one row never name the same time, even
    -- in one transaction
    UPDATE hookbridge.subscriptions s SET verification_claimed_until = clock_timestamp() + lease
     WHERE s.id = claim_verification_until.id AND s.verification_requested_at IS NOT NULL
       AND (s.verification_claimed_until IS NULL OR s.verification_claimed_until <= now())
       AND s.deregistered_at IS NULL
    RETURNING s.verification_claimed_until INTO v;
    RETURN v;
END
$$;

-- The previous release's claim: the id instead of the claim. Its dispatchers
-- record with the 4-argument record_verification; both go a release later.
CREATE OR REPLACE FUNCTION hookbridge.claim_verification(id uuid,
                                                         lease interval DEFAULT interval '70 seconds')
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    RETURN CASE WHEN hookbridge.claim_verification_until(claim_verification.id, lease) IS NOT NULL
                THEN claim_verification.id END;
END
$$;

-- Records a challenge's outcome, made under `claim` (claim_verification_until):
-- returns true, or false when the outcome is not recorded because it is out of
-- date - the subscription was deregistered while it ran, the challenged URL
-- is no longer the subscription's (the new URL's request stays), or the claim
-- no longer holds: verify() asked again while it ran, or its lease ran out and
-- another dispatcher took the request. The newer challenge decides; an older
-- one's failure must not deactivate a subscription whose newer challenge
-- passed. An unknown id is HB010.
--
-- claim NULL (the 4-argument form, a dispatcher of the previous release or an
-- operator by hand): the outcome is recorded whatever claim holds; it ends the
-- request it was claimed for, and a request made after that claim and not yet
-- claimed (verify() clears the claim) stays, for a dispatcher to claim and
-- challenge again.
CREATE OR REPLACE FUNCTION hookbridge.record_verification(id uuid, ok boolean, reason text,
                                                          url text, claim timestamptz)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v hookbridge.subscriptions;
BEGIN
    IF ok IS NULL THEN
        RAISE EXCEPTION 'ok must not be NULL' USING ERRCODE = 'HB012';
    END IF;
    -- deregistered while the challenge ran: nothing left to record it for
    -- (claim_verification_until no longer hands out its request either).
    -- Judged with the row locked: a deregister() still open when this began
    -- is committed by the time the lock is had, and was an HB010 error here
    -- (the dispatcher logged "cannot record verification" for it).
    PERFORM 1 FROM hookbridge.subscriptions s WHERE s.id = record_verification.id FOR UPDATE;
    IF EXISTS (SELECT 1 FROM hookbridge.subscriptions s
                WHERE s.id = record_verification.id AND s.deregistered_at IS NOT NULL) THEN
        RETURN false;
    END IF;
    v := hookbridge._live(record_verification.id); -- locked above
    IF record_verification.url IS NOT NULL AND record_verification.url <> v.url THEN
        RETURN false;
    END IF;
    IF claim IS NOT NULL AND v.verification_claimed_until IS DISTINCT FROM claim THEN
        RETURN false;
    END IF;
    IF ok THEN
        UPDATE hookbridge.subscriptions s
           SET verification = 'verified', verified_at = now(), verification_error = NULL,
               verification_requested_at = CASE WHEN s.verification_claimed_until IS NULL
                                                THEN s.verification_requested_at END,
               verification_claimed_until = NULL, verification_retrying = NULL
         WHERE s.id = record_verification.id;
    ELSE
        UPDATE hookbridge.subscriptions s
           SET verification = 'failed', status = 'inactive', verification_failed_at = now(),
               verification_error = left(coalesce(nullif(reason, ''), 'verification failed'), 500),
               verification_requested_at = CASE WHEN s.verification_claimed_until IS NULL
                                                THEN s.verification_requested_at END,
               verification_claimed_until = NULL, verification_retrying = NULL
         WHERE s.id = record_verification.id;
    END IF;
    RETURN true;
END
$$;

-- Notes what the challenge made under `claim` got when it is not an outcome:
-- an active subscription's challenge that failed as a delivery would be
-- retried, sent again when the claim expires (docs/design.md, Verification
-- challenge). Ends nothing. Returns false, changing nothing, when the note
-- is out of date as record_verification's outcome would be (deregistered,
-- another URL, the claim no longer holds).
CREATE OR REPLACE FUNCTION hookbridge.defer_verification(id uuid, reason text, url text,
                                                         claim timestamptz)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    UPDATE hookbridge.subscriptions s
       SET verification_retrying = left(coalesce(nullif(reason, ''), 'failed'), 500)
     WHERE s.id = defer_verification.id AND s.deregistered_at IS NULL
       AND s.url = defer_verification.url
       AND s.verification_claimed_until = defer_verification.claim;
    RETURN FOUND;
END
$$;

-- Gives back a request claimed under `claim` whose challenge was not sent
-- (the HTTP engine did not take it now: its endpoint busy; or the
-- dispatcher cannot load the subscription: a secret sealed under a key it
-- lacks): it stays pending, claimable by any dispatcher `after` from now
-- (not at its lease's end), and `reason` (no secret; NULL keeps the note)
-- says in verification_retrying why it waits. Not an outcome: nothing about
-- the endpoint is recorded (no failure, no deactivation). Returns false,
-- changing nothing, when the claim no longer holds (verify() asked again, a
-- new URL, deregistered, or its lease ran out and another took it).
CREATE OR REPLACE FUNCTION hookbridge.release_verification(id uuid, claim timestamptz,
                                                           reason text,
                                                           after interval DEFAULT interval '0')
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF after IS NULL OR after < interval '0' THEN
        RAISE EXCEPTION 'after must not be negative' USING ERRCODE = 'HB012';
    END IF;
    UPDATE hookbridge.subscriptions s
       SET verification_claimed_until = clock_timestamp() + release_verification.after,
           verification_retrying = coalesce(left(nullif(release_verification.reason, ''), 500),
                                            s.verification_retrying)
     WHERE s.id = release_verification.id AND s.deregistered_at IS NULL
       AND s.verification_requested_at IS NOT NULL
       AND s.verification_claimed_until = release_verification.claim;
    RETURN FOUND;
END
$$;

-- The 4-argument form: no claim (see above).
CREATE OR REPLACE FUNCTION hookbridge.record_verification(id uuid, ok boolean, reason text DEFAULT NULL,
                                                          url text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    PERFORM hookbridge.record_verification(record_verification.id, ok, reason, url,
                                           NULL::timestamptz);
END
$$;

-- Views ---------------------------------------------------------------------------------

-- One row per live subscription: what it receives, whether it can, and how it
-- has been doing. health: 'inactive' (status inactive), 'unverified' (active,
-- waiting for its URL to be verified), 'failing' (its latest finished delivery
-- failed), 'healthy'. verification_request: NULL (none), 'pending' (asked
-- for, no dispatcher holds it), 'running' (a dispatcher's claim holds it).
CREATE OR REPLACE VIEW hookbridge.subscription_overview AS
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
            WHEN cf.consecutive_failures > 0 OR ld.failing_since IS NOT NULL THEN 'failing'
            ELSE 'healthy' END AS health,
       s.created_at,
       s.updated_at,
       -- new columns go last: CREATE OR REPLACE VIEW adds columns only at the end
       CASE WHEN s.verification_requested_at IS NULL THEN NULL
            WHEN s.verification_claimed_until > now() THEN 'running'
            ELSE 'pending' END AS verification_request,
       ld.failing_since,
       s.verification_retrying
  FROM hookbridge.subscriptions s
  LEFT JOIN LATERAL (
        SELECT array_agg(st.event_type ORDER BY st.event_type) AS event_types
          FROM hookbridge.subscription_event_types st
         WHERE st.subscription_id = s.id) et ON true
 CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE d.status = 'delivered') AS delivered,
               count(*) FILTER (WHERE d.status = 'failed') AS failed,
               -- a batch split after a 413 is logged 'dropped' ('split: ...'),
               -- but its events went on in the halves: nothing was lost
               count(*) FILTER (WHERE d.status = 'dropped'
                                  AND coalesce(d.last_error, '') NOT LIKE 'split:%') AS dropped
          FROM hookbridge.deliveries d
         WHERE d.subscription_id = s.id
           AND d.created_at > now() - interval '24 hours'
           AND d.log_day >= ((now() AT TIME ZONE 'UTC') - interval '48 hours')::date) d24
  -- endpoint_health (its trigger) rather than a scan of the delivered deliveries:
  -- no index on them to keep (migrations/0005)
  LEFT JOIN LATERAL (
        SELECT h.last_success_at AS last_delivered_at,
               -- attempts failing since the last success (as deactivate_failing
               -- judges: a failure logged late, older than that success, is not)
               CASE WHEN h.consecutive_failures > 0
                     AND (h.last_success_at IS NULL OR h.last_success_at < h.failing_since)
                    THEN h.failing_since END AS failing_since
          FROM hookbridge.endpoint_health h
         WHERE h.subscription_id = s.id) ld ON true
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
