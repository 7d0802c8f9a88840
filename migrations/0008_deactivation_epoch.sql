-- 0008_deactivation_epoch: a deactivation drops the retries pending at that
-- moment, even when the subscription is active again before they are due.
--
-- subscriptions.deactivated_at is when the subscription last went from
-- 'active' to 'inactive': set by a trigger, so deactivate(),
-- deactivate_failing(), a failed re-verification, deregister() and a plain
-- UPDATE all count; never cleared (activate() leaves it). The services read it
-- with the rest of the row, and the retrier drops a pending attempt whose
-- delivery began before it ("subscription was deactivated after this delivery
-- began"). A replay counts as beginning when the retrier takes the request
-- up, so a replay requested after the reactivation is delivered.
--
-- The time is clock_timestamp(), the moment of the UPDATE on the database's
-- clock (not now(), the start of its transaction: deliveries that begin while
-- a long transaction is still open began before the deactivation took
-- effect, and should be dropped too).
--
-- Subscriptions already inactive when this migration runs get their
-- updated_at (the deactivation was that change or an earlier one; no delivery
-- begins while a subscription is inactive, so the later bound drops the
-- same retries).

ALTER TABLE hookbridge.subscriptions
    ADD COLUMN deactivated_at timestamptz;

UPDATE hookbridge.subscriptions SET deactivated_at = updated_at
 WHERE status = 'inactive' AND deregistered_at IS NULL;

CREATE FUNCTION hookbridge._set_deactivated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF OLD.status = 'active' AND NEW.status IS DISTINCT FROM 'active' THEN
        NEW.deactivated_at := clock_timestamp();
    ELSE
        NEW.deactivated_at := OLD.deactivated_at; -- only this trigger writes it
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER subscriptions_deactivated_at BEFORE UPDATE ON hookbridge.subscriptions
    FOR EACH ROW EXECUTE FUNCTION hookbridge._set_deactivated_at();

-- Privileges (as in 0006): the services read the whole row already; operators
-- read the listed columns, now this one too.
REVOKE ALL ON FUNCTION hookbridge._set_deactivated_at() FROM PUBLIC;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hookbridge_operator') THEN
        GRANT SELECT (deactivated_at) ON hookbridge.subscriptions TO hookbridge_operator;
    END IF;
END
$$;
