-- 0002_delivery_log_partitions: the delivery log partitioned by day, so that
-- a retention can drop whole days (issue 14, part 3).
--
-- hookbridge.deliveries is partitioned by RANGE (log_day), one partition per
-- UTC day, named deliveries_pYYYYMMDD; hookbridge.delivery_attempts by RANGE
-- (started_at), one per UTC day, delivery_attempts_pYYYYMMDD. Each has a
-- DEFAULT partition (deliveries_default, delivery_attempts_default) for rows
-- of a day that has no partition (a service's clock far ahead, a retry of a
-- delivery whose day was dropped), so no write ever fails for its date.
-- The services create the partitions ahead and drop those past the retention
-- (hookbridge.maintain_delivery_log, sql/60_deliveries.sql); the retention is
-- the limit delivery_log_retention_days (default 30; set with
-- hookbridge.set_retention).
--
-- log_day is the UTC day of the delivery's first attempt, as the services
-- know it (the dispatcher's first attempt time, which the DeliveryRetry
-- message carries as first_attempt_ms; a replay's request time): every writer
-- of one delivery computes the same day, so the upsert of hb_dlog finds the
-- row by (delivery_id, log_day), the primary key. created_at keeps its
-- meaning (when the row was first written).
--
-- What changed besides the partitioning, each paid per logged attempt:
--   * delivery_attempts.delivery_id no longer references deliveries (a
--     partitioned table's key includes log_day, and both tables drop the same
--     days): no key-share lock and index probe per inserted attempt;
--   * delivery_attempts.subscription_id (the writer has it): the endpoint
--     health trigger no longer joins deliveries;
--   * delivery_attempts has no primary key (its id stays, from a plain
--     sequence: identity columns are not allowed on partitioned tables in
--     PostgreSQL 15), and no index on started_at, nor deliveries on
--     created_at alone: a time range is a range of partitions now.
--
-- The rows of the unpartitioned tables are copied (one partition for each day
-- they cover, which the first maintenance drops when it is past the
-- retention), then those tables are dropped. That rewrites the whole log in
-- the migration's transaction, which holds an exclusive lock on both tables
-- while it runs (docs/operations.md, Upgrading, gives the cost).

-- What depends on the tables' row types is re-created by sql/ afterwards.
DROP VIEW IF EXISTS hookbridge.recent_deliveries;
DROP VIEW IF EXISTS hookbridge.subscription_overview;
DROP FUNCTION IF EXISTS hookbridge._check_replayable(hookbridge.deliveries);
DROP FUNCTION IF EXISTS hookbridge.claim_replays(integer, interval);

ALTER TABLE hookbridge.delivery_attempts RENAME TO delivery_attempts_unpartitioned;
ALTER TABLE hookbridge.deliveries RENAME TO deliveries_unpartitioned;
ALTER TABLE hookbridge.delivery_attempts_unpartitioned
    DROP CONSTRAINT delivery_attempts_delivery_id_fkey;
ALTER TABLE hookbridge.delivery_attempts_unpartitioned DROP CONSTRAINT delivery_attempts_pkey;
ALTER TABLE hookbridge.delivery_attempts_unpartitioned ALTER COLUMN id DROP IDENTITY;
ALTER TABLE hookbridge.deliveries_unpartitioned DROP CONSTRAINT deliveries_pkey;
DROP INDEX hookbridge.deliveries_sub_time_idx, hookbridge.deliveries_time_idx,
           hookbridge.deliveries_failed_idx, hookbridge.deliveries_delivered_idx,
           hookbridge.deliveries_replay_idx, hookbridge.delivery_attempts_delivery_idx,
           hookbridge.delivery_attempts_time_idx;

INSERT INTO hookbridge.limits (name, value, description) VALUES
    ('delivery_log_retention_days', 30,
     'Days the delivery log (deliveries, delivery_attempts) keeps: the services drop each day''s partitions once the day ended that many days ago. Set with hookbridge.set_retention(interval); 1 to 3650.');

CREATE TABLE hookbridge.deliveries (
    delivery_id         uuid NOT NULL,
    subscription_id     uuid NOT NULL, -- no FK: history outlives the subscription
    event_ids           text NOT NULL, -- comma-separated event uuids (a batch has several)
    event_type          text NOT NULL,
    status              text NOT NULL DEFAULT 'pending',
    attempts            integer NOT NULL DEFAULT 0
                        CONSTRAINT deliveries_attempts_check CHECK (attempts >= 0),
    first_attempt_at    timestamptz,
    last_attempt_at     timestamptz,
    last_http_status    integer,
    last_error          text,
    body                text, -- kept for failed deliveries, for replay
    created_at          timestamptz NOT NULL DEFAULT now(),
    content_type        text,
    replay_requested_at timestamptz, -- hookbridge.replay()
    replay_claimed_at   timestamptz, -- hookbridge.claim_replays()
    -- the partition key: the UTC day of the first attempt (see above)
    log_day             date NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')::date,
    CONSTRAINT deliveries_status_check
        CHECK (status IN ('pending', 'delivered', 'retry', 'failed', 'dropped', 'replay')),
    PRIMARY KEY (delivery_id, log_day)
) PARTITION BY RANGE (log_day);
CREATE INDEX deliveries_sub_time_idx ON hookbridge.deliveries (subscription_id, created_at DESC);
CREATE INDEX deliveries_failed_idx ON hookbridge.deliveries (subscription_id, last_attempt_at)
    WHERE status = 'failed';
CREATE INDEX deliveries_delivered_idx ON hookbridge.deliveries (subscription_id, last_attempt_at)
    WHERE status = 'delivered';
CREATE INDEX deliveries_replay_idx ON hookbridge.deliveries (replay_requested_at)
    WHERE status = 'replay';
CREATE TABLE hookbridge.deliveries_default PARTITION OF hookbridge.deliveries DEFAULT;

CREATE SEQUENCE hookbridge.delivery_attempts_id_seq AS bigint;
CREATE TABLE hookbridge.delivery_attempts (
    id               bigint NOT NULL DEFAULT nextval('hookbridge.delivery_attempts_id_seq'),
    delivery_id      uuid NOT NULL, -- deliveries.delivery_id (no FK: see above)
    attempt          integer NOT NULL -- 0: dropped, never attempted
                     CONSTRAINT delivery_attempts_attempt_check CHECK (attempt >= 0),
    started_at       timestamptz NOT NULL,
    duration_ms      bigint NOT NULL DEFAULT 0,
    http_status      integer, -- NULL: no response
    outcome          text NOT NULL CONSTRAINT delivery_attempts_outcome_check
                     CHECK (outcome IN ('delivered', 'retry', 'failed', 'dropped')),
    error            text,
    response_snippet text,
    subscription_id  uuid -- the delivery's (NULL only for rows older than this column)
) PARTITION BY RANGE (started_at);
ALTER SEQUENCE hookbridge.delivery_attempts_id_seq OWNED BY hookbridge.delivery_attempts.id;
CREATE INDEX delivery_attempts_delivery_idx ON hookbridge.delivery_attempts (delivery_id, attempt);
CREATE TABLE hookbridge.delivery_attempts_default PARTITION OF hookbridge.delivery_attempts DEFAULT;

COMMENT ON TABLE hookbridge.deliveries IS
    'One row per delivery, partitioned by log_day (the UTC day of its first attempt); days past limit(''delivery_log_retention_days'') are dropped by the services.';
COMMENT ON TABLE hookbridge.delivery_attempts IS
    'One row per attempt, partitioned by the UTC day of started_at; dropped with the deliveries of the same day.';

-- One partition of each table for every day the old rows cover, and for
-- today and the next three days (the services keep creating them ahead).
DO $$
DECLARE
    d date;
BEGIN
    FOR d IN
        SELECT day FROM (
            SELECT (CASE WHEN status = 'replay' AND replay_requested_at IS NOT NULL
                         THEN date_trunc('milliseconds', replay_requested_at)
                         ELSE coalesce(first_attempt_at, created_at) END AT TIME ZONE 'UTC')::date AS day
              FROM hookbridge.deliveries_unpartitioned
            UNION
            SELECT (started_at AT TIME ZONE 'UTC')::date FROM hookbridge.delivery_attempts_unpartitioned
            UNION
            SELECT g::date FROM generate_series((now() AT TIME ZONE 'UTC')::date,
                                                (now() AT TIME ZONE 'UTC')::date + 3,
                                                interval '1 day') g
        ) days ORDER BY day
    LOOP
        EXECUTE format('CREATE TABLE hookbridge.%I PARTITION OF hookbridge.deliveries'
                       ' FOR VALUES FROM (%L) TO (%L)',
                       'deliveries_p' || to_char(d, 'YYYYMMDD'), d, d + 1);
        EXECUTE format('CREATE TABLE hookbridge.%I PARTITION OF hookbridge.delivery_attempts'
                       ' FOR VALUES FROM (%L) TO (%L)',
                       'delivery_attempts_p' || to_char(d, 'YYYYMMDD'),
                       d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END
$$;

INSERT INTO hookbridge.deliveries
       (delivery_id, subscription_id, event_ids, event_type, status, attempts, first_attempt_at,
        last_attempt_at, last_http_status, last_error, body, created_at, content_type,
        replay_requested_at, replay_claimed_at, log_day)
SELECT delivery_id, subscription_id, event_ids, event_type, status, attempts, first_attempt_at,
       last_attempt_at, last_http_status, last_error, body, created_at, content_type,
       date_trunc('milliseconds', replay_requested_at), replay_claimed_at,
       -- a pending replay is logged under its request's day (claim_replays)
       (CASE WHEN status = 'replay' AND replay_requested_at IS NOT NULL
             THEN date_trunc('milliseconds', replay_requested_at)
             ELSE coalesce(first_attempt_at, created_at) END AT TIME ZONE 'UTC')::date
  FROM hookbridge.deliveries_unpartitioned;

INSERT INTO hookbridge.delivery_attempts
       (id, delivery_id, attempt, started_at, duration_ms, http_status, outcome, error,
        response_snippet, subscription_id)
SELECT a.id, a.delivery_id, a.attempt, a.started_at, a.duration_ms, a.http_status, a.outcome,
       a.error, a.response_snippet, d.subscription_id
  FROM hookbridge.delivery_attempts_unpartitioned a
  LEFT JOIN hookbridge.deliveries_unpartitioned d USING (delivery_id);

SELECT setval('hookbridge.delivery_attempts_id_seq',
              coalesce((SELECT max(id) FROM hookbridge.delivery_attempts), 0) + 1, false);

DROP TABLE hookbridge.delivery_attempts_unpartitioned;
DROP TABLE hookbridge.deliveries_unpartitioned;
