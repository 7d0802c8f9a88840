-- 0007_sealed_secrets: signing secrets and auth values only as ciphertext.
--
-- Signing secrets and auth header values are stored "sealed": AES-256-GCM
-- under a key that only the services hold (HOOKBRIDGE_SECRET_KEY, never in
-- the database), with the key's id beside each value so the key can be
-- rotated. PostgreSQL (pgcrypto) has no GCM, and the database must not hold
-- the key, so the SQL functions cannot seal. They hand the plaintext to the
-- services instead:
--
--   * register(), update(), rotate_secret() write as before; BEFORE triggers
--     take the plaintext out of the row before it is stored (so it never
--     reaches the table, the WAL, a replica or a base backup) and put it in
--     hookbridge.secret_inbox, an UNLOGGED table, then NOTIFY
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
--   * A crash of PostgreSQL empties unlogged tables: a value not yet sealed
--     is then lost. hookbridge.secret_status shows it ('lost'); set it again
--     with update() or rotate_secret().
--   * Key rotation: sealed_under_other_keys() and reseal() let a service
--     that holds both keys move values to the current key; the view
--     hookbridge.secret_keys counts values per key id (docs/security.md).
--
-- The plaintext columns (subscriptions.auth_value, subscription_secrets.secret)
-- stay, always NULL, so the functions of earlier migrations still write
-- through them. What was stored in plaintext before this migration is moved
-- to the inbox and sealed by the services like a new value; rotate the
-- secrets of an upgraded installation to be rid of copies in old WAL.
--
-- Error codes added here:
--   HB022     the signing secret can no longer be shown from SQL
--   HB023     the signing secret is not sealed yet (no service running?)

INSERT INTO hookbridge.limits (name, value, description) VALUES
    ('secret_reveal_seconds', 900,
     'Seconds after register, update or rotate_secret during which signing_secret() shows a new signing secret. Afterwards it is only in sealed form (hookbridge-secret show).');

CREATE UNLOGGED TABLE hookbridge.secret_inbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('signing', 'auth')),
    secret_id       bigint, -- subscription_secrets.id of a signing secret
    value           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sealed_at       timestamptz,
    CONSTRAINT secret_inbox_signing_row CHECK ((kind = 'signing') = (secret_id IS NOT NULL))
);
CREATE INDEX secret_inbox_pending_idx ON hookbridge.secret_inbox (id) WHERE sealed_at IS NULL;
CREATE INDEX secret_inbox_secret_idx ON hookbridge.secret_inbox (secret_id);
COMMENT ON TABLE hookbridge.secret_inbox IS
    'Plaintext secrets on their way to being sealed by the services (UNLOGGED: never in WAL, replicas or base backups).';

ALTER TABLE hookbridge.subscription_secrets
    ALTER COLUMN secret DROP NOT NULL,
    ADD COLUMN sealed bytea,
    ADD COLUMN key_id text CHECK (key_id ~ '^[0-9a-f]{16}$'),
    ADD CONSTRAINT subscription_secrets_sealed_pair CHECK ((sealed IS NULL) = (key_id IS NULL));

ALTER TABLE hookbridge.subscriptions
    DROP CONSTRAINT subscriptions_auth_pair,
    ADD COLUMN auth_sealed bytea,
    ADD COLUMN auth_key_id text CHECK (auth_key_id ~ '^[0-9a-f]{16}$'),
    ADD COLUMN auth_pending bigint, -- secret_inbox.id of the auth value to seal
    ADD CONSTRAINT subscriptions_auth_sealed_pair
        CHECK ((auth_sealed IS NULL) = (auth_key_id IS NULL)),
    ADD CONSTRAINT subscriptions_auth_needs_header
        CHECK (auth_header IS NOT NULL OR (auth_sealed IS NULL AND auth_pending IS NULL));

-- The plaintext columns -------------------------------------------------------

CREATE FUNCTION hookbridge._inbox_signing_secret() RETURNS trigger
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

CREATE FUNCTION hookbridge._inbox_auth_value() RETURNS trigger
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
CREATE FUNCTION hookbridge._inbox_forget_secret() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    DELETE FROM hookbridge.secret_inbox i WHERE i.secret_id = OLD.id;
    RETURN NULL;
END
$$;

CREATE FUNCTION hookbridge._notify_seal() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    PERFORM pg_notify('hookbridge_seal', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER subscription_secrets_inbox BEFORE INSERT OR UPDATE ON hookbridge.subscription_secrets
    FOR EACH ROW EXECUTE FUNCTION hookbridge._inbox_signing_secret();
CREATE TRIGGER subscriptions_inbox BEFORE INSERT OR UPDATE ON hookbridge.subscriptions
    FOR EACH ROW EXECUTE FUNCTION hookbridge._inbox_auth_value();
CREATE TRIGGER subscription_secrets_forget AFTER DELETE ON hookbridge.subscription_secrets
    FOR EACH ROW EXECUTE FUNCTION hookbridge._inbox_forget_secret();
CREATE TRIGGER secret_inbox_notify AFTER INSERT ON hookbridge.secret_inbox
    FOR EACH STATEMENT EXECUTE FUNCTION hookbridge._notify_seal();

-- What earlier versions stored in plaintext: through the triggers above.
UPDATE hookbridge.subscriptions SET auth_value = auth_value WHERE auth_value IS NOT NULL;
UPDATE hookbridge.subscription_secrets SET secret = secret WHERE secret IS NOT NULL;

ALTER TABLE hookbridge.subscriptions
    ADD CONSTRAINT subscriptions_auth_value_sealed CHECK (auth_value IS NULL);
ALTER TABLE hookbridge.subscription_secrets
    ADD CONSTRAINT subscription_secrets_secret_sealed CHECK (secret IS NULL);
COMMENT ON COLUMN hookbridge.subscriptions.auth_value IS
    'Always NULL: a value written here is moved to secret_inbox and sealed into auth_sealed.';
COMMENT ON COLUMN hookbridge.subscription_secrets.secret IS
    'Always NULL: a value written here is moved to secret_inbox and sealed into sealed.';

-- update(): the stored auth value can no longer be read back ----------------------

-- As in 0003, except: an auth_value given is always sealed again (the stored
-- one cannot be compared), and a kept auth header is validated with the new
-- options without reading its value. A secret given always becomes the only
-- signing secret (the previous one expires at once).
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
        UPDATE hookbridge.subscription_secrets sec SET expires_at = now()
         WHERE sec.subscription_id = update.id
           AND (sec.expires_at IS NULL OR sec.expires_at > now());
        INSERT INTO hookbridge.subscription_secrets (subscription_id, secret)
        VALUES (update.id, v_secret);
    END IF;
END
$$;

-- signing_secret(): shown during the reveal window only ------------------------

CREATE OR REPLACE FUNCTION hookbridge.signing_secret(id uuid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_sid bigint;
    v     text;
BEGIN
    PERFORM hookbridge._live(signing_secret.id);
    SELECT sec.id INTO v_sid FROM hookbridge.subscription_secrets sec
     WHERE sec.subscription_id = signing_secret.id AND sec.expires_at IS NULL;
    SELECT i.value INTO v FROM hookbridge.secret_inbox i
     WHERE i.kind = 'signing' AND i.secret_id = v_sid
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
CREATE FUNCTION hookbridge.sealed_signing_secret(id uuid)
RETURNS TABLE (secret_id bigint, sealed text, key_id text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    PERFORM hookbridge._live(sealed_signing_secret.id);
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
-- A replica calling it meanwhile waits, then finds those rows done.
CREATE FUNCTION hookbridge.secrets_to_seal(max_rows integer DEFAULT 100)
RETURNS TABLE (inbox_id bigint, subscription_id uuid, kind text, secret_id bigint, value text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    -- Housekeeping first: revealable copies past their window, and auth values
    -- superseded before they were sealed.
    DELETE FROM hookbridge.secret_inbox i
     WHERE i.sealed_at IS NOT NULL
       AND i.created_at <= now() - make_interval(secs => hookbridge.limit('secret_reveal_seconds'));
    RETURN QUERY
        SELECT i.id, i.subscription_id, i.kind, i.secret_id, i.value
          FROM hookbridge.secret_inbox i
         WHERE i.sealed_at IS NULL
         ORDER BY i.id
         LIMIT greatest(1, least(coalesce(max_rows, 100), 1000))
           FOR UPDATE;
END
$$;

-- Stores the sealed form (hex of the AES-256-GCM blob) of inbox row inbox_id.
-- An auth value superseded meanwhile by a newer one is dropped unsealed.
CREATE FUNCTION hookbridge.seal_store(inbox_id bigint, sealed text, key_id text)
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

-- Sealed values under one of old_key_ids (the older keys a service holds),
-- locked like secrets_to_seal.
CREATE FUNCTION hookbridge.sealed_under_other_keys(old_key_ids text[], max_rows integer DEFAULT 100)
RETURNS TABLE (kind text, subscription_id uuid, secret_id bigint, sealed text, key_id text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_max integer := greatest(1, least(coalesce(max_rows, 100), 1000));
BEGIN
    RETURN QUERY
        SELECT 'signing'::text, sec.subscription_id, sec.id, encode(sec.sealed, 'hex'), sec.key_id
          FROM hookbridge.subscription_secrets sec
         WHERE sec.key_id = ANY (old_key_ids)
           AND (sec.expires_at IS NULL OR sec.expires_at > now())
         ORDER BY sec.id LIMIT v_max
           FOR UPDATE;
    RETURN QUERY
        SELECT 'auth'::text, s.id, NULL::bigint, encode(s.auth_sealed, 'hex'), s.auth_key_id
          FROM hookbridge.subscriptions s
         WHERE s.auth_key_id = ANY (old_key_ids) AND s.deregistered_at IS NULL
         ORDER BY s.id LIMIT v_max
           FOR UPDATE;
END
$$;

-- Replaces a sealed value by its form under another key, if it is still the
-- one read (old_key_id); returns whether it did.
CREATE FUNCTION hookbridge.reseal(kind text, subscription_id uuid, secret_id bigint,
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

-- For operators --------------------------------------------------------------------

-- How many live values each key id seals: a key can be retired when its rows
-- are gone (docs/security.md, rotating the key).
CREATE VIEW hookbridge.secret_keys AS
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
-- waiting for a service ('pending'), or lost in a database crash before a
-- service sealed them ('lost': set them again with rotate_secret / update).
CREATE VIEW hookbridge.secret_status AS
SELECT s.id, s.name,
       CASE WHEN sec.sealed IS NOT NULL THEN 'sealed'
            WHEN EXISTS (SELECT 1 FROM hookbridge.secret_inbox i
                          WHERE i.secret_id = sec.id AND i.sealed_at IS NULL) THEN 'pending'
            ELSE 'lost' END AS signing_secret,
       sec.key_id AS signing_key_id,
       CASE WHEN s.auth_header IS NULL THEN 'none'
            WHEN s.auth_pending IS NULL THEN 'sealed'
            WHEN EXISTS (SELECT 1 FROM hookbridge.secret_inbox i WHERE i.id = s.auth_pending)
                THEN 'pending'
            ELSE 'lost' END AS auth_value,
       s.auth_key_id
  FROM hookbridge.subscriptions s
  LEFT JOIN hookbridge.subscription_secrets sec
         ON sec.subscription_id = s.id AND sec.expires_at IS NULL
 WHERE s.deregistered_at IS NULL;

-- Privileges (as in 0006) ------------------------------------------------------------

DO $$
DECLARE
    r record;
    service_fns name[] := ARRAY['sealed_signing_secret', 'secrets_to_seal', 'seal_store',
                                'sealed_under_other_keys', 'reseal'];
    have_roles boolean := EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hookbridge_service')
                          AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hookbridge_operator');
BEGIN
    FOR r IN SELECT * FROM hookbridge._own_functions() LOOP
        IF r.name = ANY (service_fns) OR r.name IN ('update', 'signing_secret')
           OR r.name LIKE '\_inbox\_%' OR r.name = '_notify_seal' THEN
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', r.fn);
            IF have_roles AND r.name = ANY (service_fns) THEN
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO hookbridge_service', r.fn);
            ELSIF have_roles AND r.name IN ('update', 'signing_secret') THEN
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO hookbridge_operator', r.fn);
            END IF;
        END IF;
    END LOOP;
    IF have_roles THEN
        GRANT SELECT ON hookbridge.secret_keys, hookbridge.secret_status
            TO hookbridge_operator, hookbridge_service;
        -- the inbox holds plaintext: nobody reads it but the functions above
        REVOKE ALL ON hookbridge.secret_inbox FROM hookbridge_service, hookbridge_operator;
    END IF;
END
$$;
