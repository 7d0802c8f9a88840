-- 0001_baseline: schema hookbridge as it stands - its state, not its code.
--
-- How the SQL is laid out (migrations/README.md says it at more length):
--
--   * migrations/NNNN_name.sql hold STATE: the schema, the extension, tables,
--     columns, constraints, indexes, comments on tables and columns, and seed
--     rows. Each is applied once, in order, and may never be edited after it
--     was applied (hookbridge-migrate refuses). This file is the whole state
--     as of the first release; later changes are new numbered files.
--   * sql/*.sql hold CODE: every function, view and trigger (each trigger next
--     to its function), and the privileges. Each object has one definition in
--     one place, written to be re-applied (CREATE OR REPLACE ...).
--     hookbridge-migrate applies them after the numbered migrations, in the
--     transaction of the last one, whenever a file is new or its checksum
--     changed (then all of them, in name order).
--
-- So no file here defines a function, a view or a trigger, and nothing here
-- may call one: at this point the functions do not exist yet.
--
-- A database built by the migrations 0001_init .. 0008_deactivation_epoch of
-- the earlier layout holds exactly this state; hookbridge-migrate records
-- this file as applied for it instead of running it
-- (tests/e2e/test_migrate_layout.py checks that both end in the same schema).
--
-- Invariants the tables enforce (the functions in sql/ keep the others):
--   * an active subscription is not 'failed' (a failed re-verification also
--     deactivates); the trigger hookbridge._guard_subscription refuses to make
--     an unverified subscription active;
--   * a live subscription has exactly one current secret (expires_at NULL)
--     and at least one event type (kept by the functions);
--   * auth_value and the signing secret never appear in `options`, and the
--     plaintext columns subscriptions.auth_value and
--     subscription_secrets.secret are always NULL (values are sealed by the
--     services; sql/secrets.sql).
--
-- The delivery log (deliveries, delivery_attempts) has no foreign key to
-- subscriptions: it is append-heavy and outlives deregistration.
--
-- Functions resolve gen_random_bytes() through their search_path
-- (pg_catalog, hookbridge, public): pgcrypto must live in one of those
-- schemas (this migration installs it into hookbridge when it is missing).
--
-- The SQLSTATEs of class HB the functions raise are listed in docs/sql.md
-- (Errors) and at the top of each sql/ file for what that file raises.

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

-- Limits -------------------------------------------------------------------------

-- Bounds the functions enforce, changeable at run time with a plain UPDATE
-- (they apply to later calls; existing subscriptions are not re-checked).
-- Read with hookbridge.limit(name).
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
     'Days of history shown by the view hookbridge.recent_deliveries.'),
    ('secret_reveal_seconds', 900,
     'Seconds after register, update or rotate_secret during which signing_secret() shows a new signing secret. Afterwards it is only in sealed form (hookbridge-secret show).');

-- Subscriptions --------------------------------------------------------------

CREATE TABLE hookbridge.subscriptions (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- the upper bound is hookbridge.limit('max_name_length'), checked by the trigger
    name                      text NOT NULL,
    url                       text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    status                    text NOT NULL DEFAULT 'inactive'
                              CHECK (status IN ('active', 'inactive')),
    verification              text NOT NULL DEFAULT 'unverified'
                              CHECK (verification IN ('unverified', 'verified', 'failed')),
    verification_requested_at timestamptz,
    verified_at               timestamptz,
    verification_error        text,
    auth_header               text,
    auth_value                text, -- always NULL (see the comment below)
    -- format, batch_max, batch_window_ms, timeout_ms, fields, headers, filter
    -- (validated by hookbridge._check_options)
    options                   jsonb NOT NULL DEFAULT '{}',
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    deregistered_at           timestamptz,
    verification_failed_at    timestamptz,
    -- why deactivate_failing() deactivated it; cleared when it is activated
    deactivation_reason       text,
    auth_sealed               bytea,
    auth_key_id               text CHECK (auth_key_id ~ '^[0-9a-f]{16}$'),
    auth_pending              bigint, -- secret_inbox.id of the auth value to seal
    -- when it last went from active to inactive (set by a trigger only); the
    -- retrier drops the retries of deliveries that began before it
    deactivated_at            timestamptz,
    CONSTRAINT subscriptions_active_not_failed
        CHECK (status <> 'active' OR verification <> 'failed'),
    CONSTRAINT subscriptions_name_not_empty CHECK (length(name) >= 1),
    CONSTRAINT subscriptions_options_object
        CHECK (jsonb_typeof(options) = 'object'
               AND NOT options ?| ARRAY['auth_value', 'secret', 'auth_header']),
    CONSTRAINT subscriptions_deregistered_inactive
        CHECK (deregistered_at IS NULL OR status = 'inactive'),
    CONSTRAINT subscriptions_auth_sealed_pair
        CHECK ((auth_sealed IS NULL) = (auth_key_id IS NULL)),
    CONSTRAINT subscriptions_auth_needs_header
        CHECK (auth_header IS NOT NULL OR (auth_sealed IS NULL AND auth_pending IS NULL)),
    CONSTRAINT subscriptions_auth_value_sealed CHECK (auth_value IS NULL)
);

CREATE INDEX subscriptions_live_idx ON hookbridge.subscriptions (created_at)
    WHERE deregistered_at IS NULL;
CREATE INDEX subscriptions_verify_pending_idx ON hookbridge.subscriptions (id)
    WHERE verification_requested_at IS NOT NULL;

COMMENT ON COLUMN hookbridge.subscriptions.verified_at IS
    'When the endpoint last answered the verification challenge correctly.';
COMMENT ON COLUMN hookbridge.subscriptions.verification_failed_at IS
    'When the last verification failed (the reason is in verification_error).';
COMMENT ON COLUMN hookbridge.subscriptions.verification_error IS
    'Why the last verification failed: "HTTP <status>", "wrong echo", "response is not JSON", "timeout after <n> ms", a connection error.';
COMMENT ON COLUMN hookbridge.subscriptions.auth_value IS
    'Always NULL: a value written here is moved to secret_inbox and sealed into auth_sealed.';

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
    -- always NULL (subscription_secrets_secret_sealed); the format check is
    -- the one plaintext secrets had
    secret          text CHECK (secret ~ '^whsec_[A-Za-z0-9+/]+={0,2}$'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz, -- NULL: the current secret
    sealed          bytea,
    key_id          text CHECK (key_id ~ '^[0-9a-f]{16}$'),
    CONSTRAINT subscription_secrets_sealed_pair CHECK ((sealed IS NULL) = (key_id IS NULL)),
    CONSTRAINT subscription_secrets_secret_sealed CHECK (secret IS NULL)
);
CREATE UNIQUE INDEX subscription_secrets_current_idx
    ON hookbridge.subscription_secrets (subscription_id) WHERE expires_at IS NULL;
CREATE INDEX subscription_secrets_sub_idx
    ON hookbridge.subscription_secrets (subscription_id, created_at);

COMMENT ON COLUMN hookbridge.subscription_secrets.secret IS
    'Always NULL: a value written here is moved to secret_inbox and sealed into sealed.';

-- Plaintext secrets on their way to being sealed (sql/secrets.sql) ---------------

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

-- Delivery log -----------------------------------------------------------------

CREATE TABLE hookbridge.deliveries (
    delivery_id         uuid PRIMARY KEY,
    subscription_id     uuid NOT NULL, -- no FK: history outlives the subscription
    event_ids           text NOT NULL, -- comma-separated event uuids (a batch has several)
    event_type          text NOT NULL,
    status              text NOT NULL DEFAULT 'pending',
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    first_attempt_at    timestamptz,
    last_attempt_at     timestamptz,
    last_http_status    integer,
    last_error          text,
    body                text, -- kept for failed deliveries, for replay
    created_at          timestamptz NOT NULL DEFAULT now(),
    content_type        text,
    replay_requested_at timestamptz, -- hookbridge.replay()
    replay_claimed_at   timestamptz, -- hookbridge.claim_replays()
    CONSTRAINT deliveries_status_check
        CHECK (status IN ('pending', 'delivered', 'retry', 'failed', 'dropped', 'replay'))
);
CREATE INDEX deliveries_sub_time_idx ON hookbridge.deliveries (subscription_id, created_at DESC);
CREATE INDEX deliveries_time_idx ON hookbridge.deliveries (created_at);
CREATE INDEX deliveries_failed_idx ON hookbridge.deliveries (subscription_id, last_attempt_at)
    WHERE status = 'failed';
CREATE INDEX deliveries_delivered_idx ON hookbridge.deliveries (subscription_id, last_attempt_at)
    WHERE status = 'delivered';
CREATE INDEX deliveries_replay_idx ON hookbridge.deliveries (replay_requested_at)
    WHERE status = 'replay';

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

-- Endpoint health: per subscription, kept by a trigger on delivery_attempts
-- (sql/deliveries.sql).
CREATE TABLE hookbridge.endpoint_health (
    subscription_id      uuid PRIMARY KEY,
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since        timestamptz, -- first failure after the last success
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    last_error           text
);
