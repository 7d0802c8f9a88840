-- 0006: a claimed verification request is leased, not cleared.
--
-- hookbridge.claim_verification() used to clear verification_requested_at, so
-- a dispatcher that died (or stopped) between claiming a request and recording
-- its result lost it: the subscription stayed unverified, its events skipped,
-- until someone called verify() again. Now the claim sets
-- verification_claimed_until and leaves the request; the request ends when
-- record_verification() records a result, and a dispatcher takes it up again
-- once the lease has expired (docs/design.md, Verification).
--
-- claim_verification gains its lease argument (with a default, so a caller of
-- the one-argument form still works): the old signature goes here, the new
-- definition is in sql/40_subscriptions.sql.
ALTER TABLE hookbridge.subscriptions ADD COLUMN verification_claimed_until timestamptz;

COMMENT ON COLUMN hookbridge.subscriptions.verification_claimed_until IS
    'While a dispatcher runs the requested challenge: until when its claim holds. The request '
    '(verification_requested_at) stays set until the result is recorded; after this time another '
    'dispatcher may claim it again. Bookkeeping: changing it notifies nothing.';

DROP FUNCTION IF EXISTS hookbridge.claim_verification(uuid);
