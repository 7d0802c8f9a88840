-- 0008: replays of a rate-limited subscription paced at its rate.
--
-- replay_failed() and replay_dropped() marked every delivery they took due at
-- once, and the retrier claims 100 requests a second (claim_replays). For a
-- subscription with options.rate_limit the deliveries over the limit go back
-- to the first delay tier unattempted, each logged as an attempt ('rate
-- limited: ...'), and come round every few seconds until their turn: 3000
-- replays at 5 requests a second (a 2 s first tier) wrote about 1000 attempt
-- rows a second to the delivery log (100,000 at the default 5 s tier: about
-- 20,000 a second, for the hours the replay takes), and as many Kafka
-- messages. Now each
-- replayed delivery of such a subscription is given the time its turn comes
-- (replay_due_at), at half the subscription's rate (the other half is left
-- to its live events), and claim_replays hands it out only then.
--
-- sql/: sha256 9a1c70fa6c524688645fdc67c5a72a514ca61eb67574770edfbfd8288f409a2d
ALTER TABLE hookbridge.deliveries ADD COLUMN replay_due_at timestamptz;

COMMENT ON COLUMN hookbridge.deliveries.replay_due_at IS
    'A replay (status replay) of a rate-limited subscription by replay_failed or replay_dropped: '
    'not claimed by a retrier before this time, so that the replays go out at half the '
    'subscription''s rate limit. NULL: due at once.';
