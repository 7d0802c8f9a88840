-- 0007: what an active subscription's challenge got while it is asked again.
--
-- A challenge of an active subscription that fails as a delivery would be
-- retried (a timeout, a connection or TLS error, 408, 429, 5xx) is not
-- recorded as a failure, which would deactivate the subscription over a
-- blip: the dispatcher sends it again when its claim expires, for up to
-- HOOKBRIDGE_VERIFY_TRY_LATER_FOR. Meanwhile the operator who called verify()
-- (or changed the URL) saw only a request 'running' or 'pending', for minutes;
-- what the endpoint answered was in the dispatcher's log alone. The
-- dispatcher now notes it here (hookbridge.defer_verification), and
-- subscription_overview shows it.
--
-- sql/: sha256 19a0d0b0f17b4cd28d7a8f32a0f7c40cb9c5ee21ab0659788fdb64c69254277e
ALTER TABLE hookbridge.subscriptions ADD COLUMN verification_retrying text;

COMMENT ON COLUMN hookbridge.subscriptions.verification_retrying IS
    'While the requested challenge of an active subscription is asked again after a failure a '
    'delivery would retry (a timeout, a connection error, 408, 429, 5xx): what the last one got. '
    'NULL otherwise; cleared when an outcome is recorded or a new request is made. Bookkeeping: '
    'changing it notifies nothing.';
