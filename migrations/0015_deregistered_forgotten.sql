-- 0015: a deregistered subscription is forgotten past the delivery log's
-- retention.
--
-- hookbridge.deregister() keeps the subscription's row (without its
-- credentials) for the history in the delivery log, but nothing ever removed
-- it, nor what it left: its subscription_event_types rows, its
-- endpoint_health row (and previews, ordering tails). 13,000
-- register/deregister cycles (a platform that creates and deletes endpoints
-- per tenant or test environment) left 13,000 rows, 26,000 event-type rows
-- and 11,700 health rows for good, and every query that joins them (the
-- services' loads, the views) slowed with them. Now
-- hookbridge.maintain_delivery_log() (sql/60_deliveries.sql) forgets a
-- subscription deregistered before the first day the log keeps: every
-- delivery made while it was live is in a day the same maintenance drops.
--
-- subscriptions_deregistered_idx: the maintenance's scan of those rows, in
-- (deregistered_at, id) order, without reading the live ones. A partial index
-- of the deregistered rows of one table of subscriptions: built in a moment.
--
-- sql/: sha256 50a0ec2f775171776a4dc8bac32a9ee48c43b74e56f619c8ce818820bdd89a18
CREATE INDEX IF NOT EXISTS subscriptions_deregistered_idx
    ON hookbridge.subscriptions (deregistered_at, id) WHERE deregistered_at IS NOT NULL;

COMMENT ON COLUMN hookbridge.subscriptions.deregistered_at IS
    'When deregister() removed it (NULL: live). The row stays, without its credentials, for the '
    'delivery log''s retention: maintain_delivery_log() deletes it, with its event types, endpoint '
    'health, previews and ordering tails, once this day is before the first day the log keeps '
    '(later while the log still holds a delivery of it).';
COMMENT ON TABLE hookbridge.endpoint_health IS
    'Per subscription, kept by a trigger on delivery_attempts; a deregistered subscription''s row '
    'goes with it past the delivery log''s retention (maintain_delivery_log).';
