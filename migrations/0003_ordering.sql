-- 0003_ordering: where each ordered key's chain ends (issue 14, ordered
-- delivery).
--
-- A subscription with options.ordering delivers the events of one key (the
-- actor, the first target, or the Kafka message key) one at a time. The
-- dispatcher keeps the end of each key's chain in memory while it owns the
-- partition; this table is where it finds it when it does not (after a
-- restart or a partition move): one row per (subscription, key), naming the
-- newest delivery of that key, written by the delivery-log writer in the same
-- transaction as that delivery's row (lib/hb_dlog.c). Its status is read from
-- hookbridge.deliveries. Subscriptions without the option never write here.
--
-- source_partition/source_offset: where the delivery's event was read, so a
-- re-read older event (after a crash) never moves the tail back within a
-- partition.
--
-- A row whose delivery is final (delivered, failed, dropped) may be deleted
-- at any time: the key then starts afresh. No foreign key to subscriptions
-- (like the delivery log).
--
-- Adds no SQLSTATE (HB025, invalid options.ordering, is raised by
-- sql/20_options.sql).

CREATE TABLE hookbridge.ordering_tails (
    subscription_id  uuid NOT NULL,
    ordering_key     text NOT NULL,
    delivery_id      uuid NOT NULL,
    source_partition integer NOT NULL DEFAULT -1,
    source_offset    bigint NOT NULL DEFAULT -1,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, ordering_key)
);
COMMENT ON TABLE hookbridge.ordering_tails IS
    'Per subscription with options.ordering and per key: the newest delivery of that key '
    '(the end of its chain), written by the services. Rows of final deliveries may be deleted.';
