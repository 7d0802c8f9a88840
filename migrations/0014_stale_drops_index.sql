-- 0014: an index for claim_replays to find the retries a retrier dropped
-- after replay_dropped() had taken them back (review 63).
--
-- A retrier judges a due retry by the delivery log's answer to its look-up
-- and writes the drop a moment later. A replay_dropped() in between marked
-- the retry (resume_requested_at) and counted it, and the drop was written
-- over the mark: the operator read "1", the endpoint never got it. Now
-- hookbridge.claim_replays(), which every retrier calls each second, turns
-- such a drop into a replay (sql/60_deliveries.sql). Its candidates are the
-- dropped deliveries with a resume asked for: this partial index holds only
-- those (none but after such a race, or a resumed retry dropped by a later
-- deactivation), so the look each second reads an index of a few entries
-- per day's partition rather than the log.
--
-- CREATE INDEX reads every partition of the log once while it holds the
-- services' delivery-log writes (offsets wait, nothing is lost): a few
-- seconds per million deliveries. IF NOT EXISTS lets you build it
-- beforehand without that (docs/operations.md, Upgrading).
--
-- Also (review 69): subscriptions.verification_retrying says why a
-- requested challenge was not sent too (its endpoint busy, or no
-- dispatcher able to load the subscription: hookbridge.release_verification),
-- not only what an active subscription's failed challenge got; its comment
-- says so.
--
-- sql/: sha256 ab45ecc97307a0658e31b1d44758b070c6282ba40d042419ff49b7da20a8b06e
CREATE INDEX IF NOT EXISTS deliveries_resume_dropped_idx ON hookbridge.deliveries (subscription_id)
    WHERE status = 'dropped' AND resume_requested_at IS NOT NULL;

COMMENT ON COLUMN hookbridge.subscriptions.verification_retrying IS
    'While a requested challenge waits for its outcome after a try that gave none: why it was not '
    'sent (its endpoint busy, or no dispatcher could load the subscription), or what an active '
    'subscription''s challenge got when it failed as a delivery would be retried (a timeout, a '
    'connection error, 408, 429, 5xx). NULL otherwise; cleared when an outcome is recorded or a '
    'new request is made. Bookkeeping: changing it notifies nothing.';
