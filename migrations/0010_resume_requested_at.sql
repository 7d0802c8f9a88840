-- 0010: replay_dropped() takes back the retries a deactivation would drop
-- but has not dropped yet.
--
-- A deactivation drops the retries pending at that moment, each when it
-- comes due (the retrier is the one that reads it): up to the longest delay
-- of the schedule after the deactivation, 10 hours by default. The recipe
-- for an endpoint deactivated for failing (activate, then replay_failed and
-- replay_dropped since the outage began) ran replay_dropped before they were
-- dropped: it returned 0 for them, and they were dropped afterwards, brought
-- back only by a second replay_dropped hours later, by an operator who knew
-- to call it. Now replay_dropped marks them (resume_requested_at) and counts
-- them; their payload is on their delay tier, not in the log, so they go on
-- when each comes due, the retrier judging the deactivation by this request
-- instead of the delivery's first attempt. A retrier of an earlier release
-- does not read the column: it drops them when due, as before, and a
-- replay_dropped after that takes them as dropped deliveries.
--
-- sql/: sha256 ebb6958e713509f41ca74c07d504951636e2030848b57c48a83790f371f93b81
ALTER TABLE hookbridge.deliveries ADD COLUMN resume_requested_at timestamptz;

COMMENT ON COLUMN hookbridge.deliveries.resume_requested_at IS
    'A retry pending at a deactivation (status retry), which the retrier would drop when due: '
    'when replay_dropped() asked that it go on instead. NULL: not asked.';
