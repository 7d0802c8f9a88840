-- 0005: one index fewer on the delivery log (issue 12: PostgreSQL's CPU per
-- logged attempt).
--
-- deliveries_delivered_idx (subscription_id, last_attempt_at) WHERE status =
-- 'delivered' took an index entry for nine in ten deliveries, and its only
-- reader was subscription_overview's last_delivered_at, which now reads
-- endpoint_health.last_success_at (kept by the delivery_attempts trigger:
-- the start of the subscription's latest delivered attempt, the same instant).
DROP INDEX hookbridge.deliveries_delivered_idx;
