-- sql/50_secrets.sql: signing secrets and auth values, stored only as
-- ciphertext.
--
-- Signing secrets and auth header values are stored "sealed": AES-256-GCM
-- under a key that only the services hold (HOOKBRIDGE_SECRET_KEY, never in
-- the database), with the key's id beside each value so the key can be
-- rotated. PostgreSQL (pgcrypto) has no GCM, and the database must not hold
-- the key, so the SQL functions cannot seal. They hand the plaintext to the
-- services instead:
--
--   * register(), update(), rotate_secret() write the plaintext columns;
--     BEFORE triggers take the plaintext out of the row before it is stored
--     (so it never reaches the table, the WAL, a replica or a base backup)
--     and put it in hookbridge.secret_inbox, an UNLOGGED table, then NOTIFY
--     hookbridge_seal.
--   * A dispatcher or retrier seals what the inbox holds within a second:
--     secrets_to_seal() (rows locked until its transaction ends, so replicas
--     take turns) and seal_store() per value. An auth value leaves the inbox
--     at once. A signing secret stays readable there for the reveal window
--     (hookbridge.limits secret_reveal_seconds, 15 minutes), so that
--     signing_secret() can show it to the operator who just created it; after
--     that only `hookbridge-secret show <id>`, run where the key is, can.
--   * Until its values are sealed a subscription is not delivered to (the
--     services fail closed); newly registered ones are not active anyway.
--   * A value a service cannot seal (longer than 1 MiB: only a direct write
--     to the plaintext columns gives one) is set aside with the reason
--     (seal_refuse: its plaintext wiped), never handed out again, so the
--     values behind it are sealed; secret_status shows it 'unsealable'.
--   * A crash of PostgreSQL empties unlogged tables: a value not yet sealed
--     is then lost. hookbridge.secret_status shows it ('lost'); set it again
--     with update() or rotate_secret().
--   * Key rotation: sealed_under_other_keys() and reseal() let a service
--     that holds both keys move values to the current key; the view
--     hookbridge.secret_keys counts values per key id (docs/security.md).
--
--   SQLSTATE  raised here (all codes: docs/sql.md, Errors)
--   --------  --------------------------------------------------------------
--   HB006     rotation grace outside 0 .. 7 days; seal_store/reseal arguments
--   HB007     invalid signing secret
--   HB010     subscription not found; HB015 a NULL subscription id
--   HB022     the signing secret can no longer be shown from SQL
--   HB023     the signing secret is not sealed yet (no service running?)

-- The plaintext columns ----------------------------------------------------------

CREATE OR REPLACE FUNCTION hookbridge._inbox_signing_secret() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF NEW.secret IS NOT NULL THEN
        INSERT INTO hookbridge.secret_inbox (subscription_id, kind, secret_id, value)
        VALUES (NEW.subscription_id, 'signing', NEW.id, NEW.secret);
        NEW.secret := NULL;
        NEW.sealed := NULL;
        NEW.key_id := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION hookbridge._inbox_auth_value() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_inbox bigint;
BEGIN
    IF NEW.auth_value IS NOT NULL THEN
        -- a value set before is superseded, sealed or not
        DELETE FROM hookbridge.secret_inbox i WHERE i.subscription_id = NEW.id AND i.kind = 'auth';
        INSERT INTO hookbridge.secret_inbox (subscription_id, kind, value)
        VALUES (NEW.id, 'auth', NEW.auth_value)
        RETURNING id INTO v_inbox;
        NEW.auth_value := NULL;
        NEW.auth_sealed := NULL;
        NEW.auth_key_id := NULL;
        NEW.auth_pending := v_inbox;
    ELSIF NEW.auth_header IS NULL THEN
        DELETE FROM hookbridge.secret_inbox i WHERE i.subscription_id = NEW.id AND i.kind = 'auth';
        NEW.auth_sealed := NULL;
        NEW.auth_key_id := NULL;
        NEW.auth_pending := NULL;
    END IF;
    RETURN NEW;
END
$$;

-- A signing secret removed (deregister) takes its revealable copy along.
CREATE OR REPLACE FUNCTION hookbridge._inbox_forget_secret() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    DELETE FROM hookbridge.secret_inbox i WHERE i.secret_id = OLD.id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION hookbridge._notify_seal() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    PERFORM pg_notify('hookbridge_seal', '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER subscription_secrets_inbox BEFORE INSERT OR UPDATE ON hookbridge.subscription_secrets
    FOR EACH ROW EXECUTE FUNCTION hookbridge._inbox_signing_secret();
CREATE OR REPLACE TRIGGER subscriptions_inbox BEFORE INSERT OR UPDATE ON hookbridge.subscriptions
    FOR EACH ROW EXECUTE FUNCTION hookbridge._inbox_auth_value();
CREATE OR REPLACE TRIGGER subscription_secrets_forget AFTER DELETE ON hookbridge.subscription_secrets
    FOR EACH ROW EXECUTE FUNCTION hookbridge._inbox_forget_secret();
CREATE OR REPLACE TRIGGER secret_inbox_notify AFTER INSERT ON hookbridge.secret_inbox
    FOR EACH STATEMENT EXECUTE FUNCTION hookbridge._notify_seal();

-- For operators ---------------------------------------------------------------------

-- New current secret (given, or generated); the previous one keeps signing for
-- `grace` (0 .. 7 days). Older previous secrets expire now: at most two sign.
-- Expired ones are deleted: a subscription keeps at most two rows.
CREATE OR REPLACE FUNCTION hookbridge.rotate_secret(id uuid, grace interval DEFAULT '24 hours',
                                                    secret text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
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
    -- counted from the commit (subscription_secrets_grace_at_commit): the
    -- services see the new secret only then
    PERFORM set_config('hookbridge.rotating', 'on', true);
    UPDATE hookbridge.subscription_secrets sec SET expires_at = now() + grace
     WHERE sec.subscription_id = rotate_secret.id AND sec.expires_at IS NULL;
    PERFORM set_config('hookbridge.rotating', '', true);
    -- those that sign no more go (and their revealable copies with them): a
    -- secret rotated every day no longer leaves a row a day behind, forever
    DELETE FROM hookbridge.subscription_secrets sec
     WHERE sec.subscription_id = rotate_secret.id AND sec.expires_at <= now();
    INSERT INTO hookbridge.subscription_secrets (subscription_id, secret)
    VALUES (rotate_secret.id, v_secret);
    RETURN v_secret;
END
$$;

CREATE OR REPLACE FUNCTION hookbridge.signing_secret(id uuid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_sid bigint;
    v     text;
BEGIN
    PERFORM hookbridge._live_read(signing_secret.id); -- reads: no row lock
    SELECT sec.id INTO v_sid FROM hookbridge.subscription_secrets sec
     WHERE sec.subscription_id = signing_secret.id AND sec.expires_at IS NULL;
    SELECT i.value INTO v FROM hookbridge.secret_inbox i
     WHERE i.kind = 'signing' AND i.secret_id = v_sid AND i.seal_error IS NULL
       AND i.created_at > now() - make_interval(secs => hookbridge.limit('secret_reveal_seconds'))
     ORDER BY i.id DESC LIMIT 1;
    IF v IS NULL THEN
        RAISE EXCEPTION 'the signing secret of subscription % is sealed and can no longer be shown here',
                        signing_secret.id
            USING ERRCODE = 'HB022',
                  HINT = 'A new secret is shown for secret_reveal_seconds (hookbridge.limits) after register, update or rotate_secret. '
                         'Read it with "hookbridge-secret show <id>" where HOOKBRIDGE_SECRET_KEY is set, or call rotate_secret() for a new one.';
    END IF;
    RETURN v;
END
$$;

-- For the services (and hookbridge-secret, which runs with their role) ------------

-- The current signing secret of a live subscription, sealed.
CREATE OR REPLACE FUNCTION hookbridge.sealed_signing_secret(id uuid)
RETURNS TABLE (secret_id bigint, sealed text, key_id text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    PERFORM hookbridge._live_read(sealed_signing_secret.id); -- reads: no row lock
    RETURN QUERY
        SELECT sec.id, encode(sec.sealed, 'hex'), sec.key_id
          FROM hookbridge.subscription_secrets sec
         WHERE sec.subscription_id = sealed_signing_secret.id AND sec.expires_at IS NULL;
    IF NOT FOUND OR EXISTS (SELECT 1 FROM hookbridge.subscription_secrets sec
                             WHERE sec.subscription_id = sealed_signing_secret.id
                               AND sec.expires_at IS NULL AND sec.sealed IS NULL) THEN
        RAISE EXCEPTION 'the signing secret of subscription % is not sealed yet', sealed_signing_secret.id
            USING ERRCODE = 'HB023',
                  HINT = 'A running dispatcher or retrier seals it within a second; see hookbridge.secret_status.';
    END IF;
END
$$;

-- Plaintext waiting to be sealed, oldest first, locked until the caller's
-- transaction ends: call it in a transaction, seal_store() each row, commit.
-- Their subscriptions are locked first, in the order every function that
-- changes a subscription takes (_live locks the subscription, then its
-- secrets and, through triggers, its inbox rows go): with the inbox rows
-- locked first, a deregister() or update() of a subscription being sealed
-- deadlocked with the sealer, and PostgreSQL aborted one of the two. A
-- subscription another session holds is skipped, never waited for: waiting
-- for an operator's open transaction stalled the dispatcher (it takes no
-- event while its sealer waits), and a statement locking many subscriptions
-- in another order (SELECT verify(id) FROM subscriptions) deadlocked with it
-- (even a bounded wait does: the sealer holds the rows it locked before).
-- What is skipped is sealed at the next pass: one is due at every
-- subscription notification, a service that finds a subscription it loads
-- not sealed yet seals first (lib/hb_store.c, load_one), and one that still
-- finds it not sealed tries again shortly (the holder's commit need not
-- notify anything: a statement that only locked the row does not).
CREATE OR REPLACE FUNCTION hookbridge.secrets_to_seal(max_rows integer DEFAULT 100)
RETURNS TABLE (inbox_id bigint, subscription_id uuid, kind text, secret_id bigint, value text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_max integer := greatest(1, least(coalesce(max_rows, 100), 1000));
    v_subs uuid[];
BEGIN
    SELECT coalesce(array_agg(locked.id), '{}') INTO v_subs
      FROM (SELECT s.id FROM hookbridge.subscriptions s
             WHERE s.id IN (SELECT i.subscription_id FROM hookbridge.secret_inbox i
                             WHERE i.sealed_at IS NULL AND i.seal_error IS NULL
                             ORDER BY i.id LIMIT v_max)
             ORDER BY s.id
               FOR UPDATE SKIP LOCKED) locked;
    -- Housekeeping: revealable copies past their window, and auth values
    -- superseded before they were sealed.
    DELETE FROM hookbridge.secret_inbox i
     WHERE i.sealed_at IS NOT NULL
       AND i.created_at <= now() - make_interval(secs => hookbridge.limit('secret_reveal_seconds'));
    RETURN QUERY
        SELECT i.id, i.subscription_id, i.kind, i.secret_id, i.value
          FROM hookbridge.secret_inbox i
         WHERE i.sealed_at IS NULL AND i.seal_error IS NULL
           AND i.subscription_id = ANY (v_subs)
         ORDER BY i.id
         LIMIT v_max
           FOR UPDATE;
END
$$;

-- Stores the sealed form (hex of the AES-256-GCM blob) of inbox row inbox_id.
-- An auth value superseded meanwhile by a newer one is dropped unsealed.
CREATE OR REPLACE FUNCTION hookbridge.seal_store(inbox_id bigint, sealed text, key_id text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v hookbridge.secret_inbox;
BEGIN
    IF seal_store.sealed IS NULL OR seal_store.sealed !~ '^([0-9a-f]{2})+$'
       OR seal_store.key_id IS NULL OR seal_store.key_id !~ '^[0-9a-f]{16}$' THEN
        RAISE EXCEPTION 'seal_store: sealed must be lowercase hex and key_id 16 hex digits'
            USING ERRCODE = 'HB006';
    END IF;
    SELECT * INTO v FROM hookbridge.secret_inbox i WHERE i.id = seal_store.inbox_id;
    IF NOT FOUND OR v.sealed_at IS NOT NULL THEN
        RETURN;
    END IF;
    IF v.kind = 'signing' THEN
        UPDATE hookbridge.subscription_secrets sec
           SET sealed = decode(seal_store.sealed, 'hex'), key_id = seal_store.key_id
         WHERE sec.id = v.secret_id;
        UPDATE hookbridge.secret_inbox i SET sealed_at = now() WHERE i.id = v.id;
    ELSE
        UPDATE hookbridge.subscriptions s
           SET auth_sealed = decode(seal_store.sealed, 'hex'), auth_key_id = seal_store.key_id,
               auth_pending = NULL
         WHERE s.id = v.subscription_id AND s.auth_pending = v.id;
        DELETE FROM hookbridge.secret_inbox i WHERE i.id = v.id;
    END IF;
END
$$;

-- Sets aside inbox row inbox_id, which the caller (a service, in the
-- transaction of its secrets_to_seal) could not seal, with the reason: its
-- plaintext is wiped, secrets_to_seal no longer hands it out (so it does not
-- stand before the rows behind it at every pass), and secret_status shows the
-- value 'unsealable' until a new one replaces it (update, rotate_secret).
-- Returns whether it did (false: sealed or set aside meanwhile, or gone).
CREATE OR REPLACE FUNCTION hookbridge.seal_refuse(inbox_id bigint, reason text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    UPDATE hookbridge.secret_inbox i
       SET seal_error = left(coalesce(nullif(seal_refuse.reason, ''), 'cannot be sealed'), 500),
           value = ''
     WHERE i.id = seal_refuse.inbox_id AND i.sealed_at IS NULL AND i.seal_error IS NULL;
    RETURN FOUND;
END
$$;

-- Sealed values under one of old_key_ids (the older keys a service holds),
-- locked like secrets_to_seal: their subscriptions first, then the secrets
-- (with the secrets first, a deregister() meanwhile could deadlock with it).
-- A subscription locked by someone else is skipped, not waited for: moving
-- its values can wait for a later pass, and a service reloading (or sealing)
-- waited for an operator's open transaction, taking no event meanwhile.
-- At the commit of a transaction that rotated a secret, the previous secret's
-- grace starts again from that moment: the services see the new secret only
-- at the commit, so a rotation committed later than its grace after the
-- transaction began (an operator who commits once the receiver has the new
-- secret) left the previous one expired at once, and the receiver, still on
-- it, refused every delivery (HTTP 401, dead-lettered). Only rotate_secret's
-- update is moved (the mark it sets), not an expiry written by hand; the
-- update below, made from a trigger, is not moved again. It runs as whoever
-- commits: as its owner, like rotate_secret (sql/90_privileges.sql). Under
-- SET CONSTRAINTS ALL IMMEDIATE it fires at the end of rotate_secret's
-- update, the grace then counted from there; its own update, made while the
-- mark is still set, fires it again, and that one does nothing (it moved
-- the expiry again and again until "stack depth limit exceeded", the
-- rotation refused).
CREATE OR REPLACE FUNCTION hookbridge._grace_from_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF pg_trigger_depth() > 1 THEN
        RETURN NULL;
    END IF;
    UPDATE hookbridge.subscription_secrets sec
       SET expires_at = sec.expires_at + (clock_timestamp() - now())
     WHERE sec.id = NEW.id AND sec.expires_at = NEW.expires_at;
    RETURN NULL;
END
$$;

-- A constraint trigger cannot be replaced: made once, when missing (as
-- subscriptions_deactivated_at_commit, sql/40_subscriptions.sql).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t
                    WHERE t.tgrelid = 'hookbridge.subscription_secrets'::regclass
                      AND t.tgname = 'subscription_secrets_grace_at_commit') THEN
        CREATE CONSTRAINT TRIGGER subscription_secrets_grace_at_commit
            AFTER UPDATE OF expires_at ON hookbridge.subscription_secrets
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW WHEN (NEW.expires_at IS NOT NULL
                               AND current_setting('hookbridge.rotating', true) = 'on')
            EXECUTE FUNCTION hookbridge._grace_from_commit();
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION hookbridge.sealed_under_other_keys(old_key_ids text[], max_rows integer DEFAULT 100)
RETURNS TABLE (kind text, subscription_id uuid, secret_id bigint, sealed text, key_id text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_max integer := greatest(1, least(coalesce(max_rows, 100), 1000));
    v_subs uuid[];
BEGIN
    SELECT coalesce(array_agg(locked.id), '{}') INTO v_subs
      FROM (SELECT s.id FROM hookbridge.subscriptions s
             WHERE s.id IN (SELECT sec.subscription_id FROM hookbridge.subscription_secrets sec
                             WHERE sec.key_id = ANY (old_key_ids)
                               AND (sec.expires_at IS NULL OR sec.expires_at > now())
                             ORDER BY sec.id LIMIT v_max)
                OR s.id IN (SELECT a.id FROM hookbridge.subscriptions a
                             WHERE a.auth_key_id = ANY (old_key_ids) AND a.deregistered_at IS NULL
                             ORDER BY a.id LIMIT v_max)
             ORDER BY s.id
               FOR UPDATE SKIP LOCKED) locked;
    RETURN QUERY
        SELECT 'signing'::text, sec.subscription_id, sec.id, encode(sec.sealed, 'hex'), sec.key_id
          FROM hookbridge.subscription_secrets sec
         WHERE sec.key_id = ANY (old_key_ids) AND sec.subscription_id = ANY (v_subs)
           AND (sec.expires_at IS NULL OR sec.expires_at > now())
         ORDER BY sec.id LIMIT v_max
           FOR UPDATE;
    RETURN QUERY
        SELECT 'auth'::text, s.id, NULL::bigint, encode(s.auth_sealed, 'hex'), s.auth_key_id
          FROM hookbridge.subscriptions s
         WHERE s.auth_key_id = ANY (old_key_ids) AND s.deregistered_at IS NULL
           AND s.id = ANY (v_subs)
         ORDER BY s.id LIMIT v_max
           FOR UPDATE;
END
$$;

-- Replaces a sealed value by its form under another key, if it is still the
-- one read (old_key_id); returns whether it did.
CREATE OR REPLACE FUNCTION hookbridge.reseal(kind text, subscription_id uuid, secret_id bigint,
                                             old_key_id text, sealed text, key_id text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF reseal.sealed IS NULL OR reseal.sealed !~ '^([0-9a-f]{2})+$'
       OR reseal.key_id IS NULL OR reseal.key_id !~ '^[0-9a-f]{16}$' THEN
        RAISE EXCEPTION 'reseal: sealed must be lowercase hex and key_id 16 hex digits'
            USING ERRCODE = 'HB006';
    END IF;
    IF reseal.kind = 'signing' THEN
        UPDATE hookbridge.subscription_secrets sec
           SET sealed = decode(reseal.sealed, 'hex'), key_id = reseal.key_id
         WHERE sec.id = reseal.secret_id AND sec.subscription_id = reseal.subscription_id
           AND sec.key_id = reseal.old_key_id;
    ELSE
        UPDATE hookbridge.subscriptions s
           SET auth_sealed = decode(reseal.sealed, 'hex'), auth_key_id = reseal.key_id
         WHERE s.id = reseal.subscription_id AND s.auth_key_id = reseal.old_key_id;
    END IF;
    RETURN FOUND;
END
$$;

-- Views ---------------------------------------------------------------------------------

-- How many live values each key id seals: a key can be retired when its rows
-- are gone (docs/security.md, rotating the key).
CREATE OR REPLACE VIEW hookbridge.secret_keys AS
SELECT k.key_id, sum(k.signing)::bigint AS signing_secrets, sum(k.auth)::bigint AS auth_values
  FROM (SELECT sec.key_id, 1 AS signing, 0 AS auth
          FROM hookbridge.subscription_secrets sec
          JOIN hookbridge.subscriptions s ON s.id = sec.subscription_id
         WHERE sec.key_id IS NOT NULL AND s.deregistered_at IS NULL
           AND (sec.expires_at IS NULL OR sec.expires_at > now())
        UNION ALL
        SELECT s.auth_key_id, 0, 1
          FROM hookbridge.subscriptions s
         WHERE s.auth_key_id IS NOT NULL AND s.deregistered_at IS NULL) k
 GROUP BY k.key_id;

-- Per live subscription: whether its signing secret and auth value are sealed,
-- waiting for a service ('pending'), set aside by a service that could not
-- seal them ('unsealable', the reason in seal_error), or lost in a database
-- crash before a service sealed them ('lost'); set an unsealable or lost
-- value again with rotate_secret / update.
CREATE OR REPLACE VIEW hookbridge.secret_status AS
SELECT s.id, s.name,
       CASE WHEN sec.sealed IS NOT NULL THEN 'sealed'
            WHEN EXISTS (SELECT 1 FROM hookbridge.secret_inbox i
                          WHERE i.secret_id = sec.id AND i.sealed_at IS NULL
                            AND i.seal_error IS NULL) THEN 'pending'
            WHEN EXISTS (SELECT 1 FROM hookbridge.secret_inbox i
                          WHERE i.secret_id = sec.id AND i.seal_error IS NOT NULL)
                THEN 'unsealable'
            ELSE 'lost' END AS signing_secret,
       sec.key_id AS signing_key_id,
       CASE WHEN s.auth_header IS NULL THEN 'none'
            WHEN s.auth_pending IS NULL THEN 'sealed'
            WHEN EXISTS (SELECT 1 FROM hookbridge.secret_inbox i
                          WHERE i.id = s.auth_pending AND i.seal_error IS NULL) THEN 'pending'
            WHEN EXISTS (SELECT 1 FROM hookbridge.secret_inbox i WHERE i.id = s.auth_pending)
                THEN 'unsealable'
            ELSE 'lost' END AS auth_value,
       s.auth_key_id,
       -- why a value is 'unsealable' (the signing secret's reason first)
       coalesce((SELECT i.seal_error FROM hookbridge.secret_inbox i
                  WHERE sec.sealed IS NULL AND i.secret_id = sec.id AND i.seal_error IS NOT NULL
                  ORDER BY i.id DESC LIMIT 1),
                (SELECT i.seal_error FROM hookbridge.secret_inbox i
                  WHERE i.id = s.auth_pending)) AS seal_error
  FROM hookbridge.subscriptions s
  LEFT JOIN hookbridge.subscription_secrets sec
         ON sec.subscription_id = s.id AND sec.expires_at IS NULL
 WHERE s.deregistered_at IS NULL;
