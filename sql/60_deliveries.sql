-- sql/60_deliveries.sql: the delivery log's side - endpoint health and
-- automatic deactivation, replay, and the operators' view of recent
-- deliveries.
--
-- Endpoint health. A statement trigger on delivery_attempts keeps, per
-- subscription, the consecutive failed attempts and since when it has been
-- failing, and the last success (less than 1 s behind: see _track_health).
-- A delivery the services did not attempt (logged 'retry' with why: its
-- endpoint's circuit open (in the retrier 'attempt not made: circuit open
-- ...', a skip counted as an attempt of the schedule), its host busy or
-- slow, its rate limit, waiting
-- behind an earlier delivery of its ordering key or for a new URL's
-- verification) says nothing about the endpoint and is not counted.
-- hookbridge.deactivate_failing(interval), run by the retrier every minute,
-- deactivates subscriptions failing for longer than that and records why in
-- subscriptions.deactivation_reason.
--
-- Replay. hookbridge.replay(delivery_id) marks a failed delivery 'replay';
-- the retrier claims such rows (hookbridge.claim_replays, a lease so that a
-- retrier that dies after claiming does not lose the request) and puts the
-- stored body back on the first delay tier, due at once, with a fresh retry
-- schedule and the same webhook-id. The delivery's next attempt row moves
-- its status on (delivered, retry or failed again). A replayed delivery
-- moves to today's partition (log_day), so a replay near the retention's
-- edge is never written into a day about to be dropped.
--
-- Retention. deliveries and delivery_attempts are partitioned by UTC day
-- (migrations/0002_delivery_log_partitions.sql). The services call
-- hookbridge.maintain_delivery_log() at start and every hour (the retrier;
-- one replica at a time under an advisory lock): it creates the partitions of
-- today and the next days, moves rows that waited in a DEFAULT partition for
-- their day into it, and drops both tables' partitions of the days past
-- limit('delivery_log_retention_days') (set with set_retention): whole
-- tables, never long deletes. A subscription deregistered before the first
-- day kept is forgotten then (_forget_deregistered): its row and every row
-- keyed by its id outside the delivery log.
--
--   SQLSTATE  raised here (all codes: docs/sql.md, Errors)
--   --------  --------------------------------------------------------------
--   HB010     subscription not found
--   HB012     invalid argument (deactivate_failing, replay_failed, replay_dropped)
--   HB020     delivery not found
--   HB015     a NULL subscription id (replay_failed, replay_dropped)
--   HB021     delivery cannot be replayed (not failed, no stored body, or its
--             subscription is deregistered or inactive)
--   HB026     invalid delivery-log retention (set_retention, UPDATE of limits)
--   HB027     delivery not in the delivery log (never made, its first
--             attempt under way, or past the retention; replay, cancel)
--   HB028     delivery cannot be cancelled (neither retry nor replay)

-- Endpoint health ------------------------------------------------------------

-- One pass over the statement's new rows, grouped by subscription (a hash
-- aggregate: no sort, no join of the rows with their own groups): the latest
-- success, the latest failure, and the failures' times and errors as arrays,
-- which only the subscriptions with failures look into (the failures since
-- the latest success: how many and the first; the latest failure's error).
-- Issue 12: this trigger is paid for every logged attempt.
--
-- The row of a busy subscription is written by every replica's delivery-log
-- writer, and a writer that updates it holds its lock until it commits: the
-- others' batches for that subscription would wait for that commit, one
-- after the other. So a batch whose rows for a subscription are all
-- successes leaves the row alone when it reads (without a lock: the row as
-- last committed) that the row
--   * already says what the update would write apart from last_success_at
--     (0 consecutive failures, not failing), and
--   * has a last_success_at less than 1 s older than the batch's newest
--     success.
-- Steady success traffic writes the row about once a second; failures, and
-- the first success after them, at once. The row is as if the batches had
-- been applied one at a time, a batch that writes the row where it commits
-- (it holds the lock until then, as before), one that leaves it alone where
-- it read it, except that last_success_at may be up to (not including) 1 s
-- older than the newest success (docs/sql.md, subscription_overview). So a
-- success logged after a failure committed resets the count; one logged
-- while another writer's failure is not yet committed (its trigger ran, its
-- COMMIT did not) counts before that failure: the count stays until the next
-- success. Before, it waited for that commit and counted after it. Waiting
-- whenever the row is being written (its xmax that of an open transaction)
-- would bring the queue back: every success batch that arrives while one
-- waits, or writes, would take the lock and write in turn.
CREATE OR REPLACE FUNCTION hookbridge._track_health() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    INSERT INTO hookbridge.endpoint_health AS h
           (subscription_id, consecutive_failures, failing_since, last_success_at,
            last_failure_at, last_error)
    SELECT g.sid,
           CASE WHEN g.fail_at IS NULL THEN 0
                ELSE (SELECT count(*) FROM unnest(g.fail_at) t
                       WHERE t > coalesce(g.ok_at, '-infinity')) END,
           CASE WHEN g.fail_at IS NOT NULL
                THEN (SELECT min(t) FROM unnest(g.fail_at) t
                       WHERE t > coalesce(g.ok_at, '-infinity')) END,
           g.ok_at,
           g.last_fail,
           -- of failures at the same instant, the one inserted last
           CASE WHEN g.fail_at IS NOT NULL
                THEN (SELECT u.e FROM unnest(g.fail_at, g.fail_err) WITH ORDINALITY AS u(t, e, i)
                       ORDER BY u.t DESC, u.i DESC LIMIT 1) END
      FROM (SELECT -- the attempt carries its subscription (rows written by hand
                   -- without it: their delivery's)
                   coalesce(n.subscription_id,
                            (SELECT d.subscription_id FROM hookbridge.deliveries d
                              WHERE d.delivery_id = n.delivery_id LIMIT 1)) AS sid,
                   max(n.started_at) FILTER (WHERE n.outcome = 'delivered') AS ok_at,
                   max(n.started_at) FILTER (WHERE n.outcome <> 'delivered') AS last_fail,
                   array_agg(n.started_at) FILTER (WHERE n.outcome <> 'delivered') AS fail_at,
                   array_agg(n.error) FILTER (WHERE n.outcome <> 'delivered') AS fail_err
              FROM new_rows n
             WHERE n.outcome = 'delivered'
                OR (n.outcome IN ('retry', 'failed')
                    AND NOT coalesce(n.error, '') LIKE ANY (ARRAY[
                        -- the retrier's skip, which counts for the schedule only
                        'circuit open%', 'attempt not made: %',
                        'endpoint busy: %', 'endpoint slow: %',
                        'rate limited: %', 'waiting behind %',
                        'waiting for the subscription''s new URL %']))
             GROUP BY 1) g
      LEFT JOIN hookbridge.endpoint_health cur ON cur.subscription_id = g.sid
     WHERE g.sid IS NOT NULL -- neither the attempt nor the log knows its subscription
       -- successes only, and the row (as last committed) is recent and not failing
       AND (g.fail_at IS NULL
            AND cur.consecutive_failures = 0 AND cur.failing_since IS NULL
            AND cur.last_success_at > g.ok_at - interval '1 second') IS NOT TRUE
    ON CONFLICT (subscription_id) DO UPDATE SET
        consecutive_failures = CASE WHEN EXCLUDED.last_success_at IS NOT NULL
                                    THEN EXCLUDED.consecutive_failures
                                    ELSE h.consecutive_failures + EXCLUDED.consecutive_failures END,
        failing_since = CASE WHEN EXCLUDED.last_success_at IS NOT NULL THEN EXCLUDED.failing_since
                             ELSE coalesce(h.failing_since, EXCLUDED.failing_since) END,
        last_success_at = greatest(h.last_success_at, EXCLUDED.last_success_at),
        last_failure_at = greatest(h.last_failure_at, EXCLUDED.last_failure_at),
        last_error = coalesce(EXCLUDED.last_error, h.last_error);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER delivery_attempts_health AFTER INSERT ON hookbridge.delivery_attempts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hookbridge._track_health();

-- Deactivates live, active subscriptions that have failed every attempt for
-- longer than p_after: their failures since the last success span p_after
-- (one failure long ago and no attempt since says nothing about the
-- endpoint now: a quiet subscription is not deactivated for it). Returns
-- what it deactivated and why.
CREATE OR REPLACE FUNCTION hookbridge.deactivate_failing(p_after interval)
RETURNS TABLE (subscription_id uuid, reason text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF p_after IS NULL OR p_after <= interval '0' THEN
        RAISE EXCEPTION 'p_after must be a positive interval' USING ERRCODE = 'HB012';
    END IF;
    -- The subscriptions are locked first, in id order, skipping those someone
    -- else holds (they are judged at the next sweep): a plain UPDATE locked
    -- them in its plan's order, which could deadlock with an operator's
    -- statement changing many subscriptions.
    RETURN QUERY
    WITH picked AS (
        SELECT c.id FROM hookbridge.subscriptions c
          JOIN hookbridge.endpoint_health ch ON ch.subscription_id = c.id
         WHERE c.status = 'active' AND c.deregistered_at IS NULL
           AND ch.failing_since < now() - p_after
         ORDER BY c.id
           FOR UPDATE OF c SKIP LOCKED)
    UPDATE hookbridge.subscriptions s
       SET status = 'inactive',
           deactivation_reason = format(
               'deactivated automatically: every attempt failed since %s (%s consecutive failures; last error: %s)',
               to_char(h.failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               h.consecutive_failures, coalesce(h.last_error, 'none'))
      FROM hookbridge.endpoint_health h, picked
     WHERE s.id = picked.id AND h.subscription_id = s.id
       AND s.status = 'active' AND s.deregistered_at IS NULL
       AND h.failing_since < now() - p_after
       AND h.last_failure_at - h.failing_since >= p_after
       AND (h.last_success_at IS NULL OR h.last_success_at < h.failing_since)
    RETURNING s.id, s.deactivation_reason;
END
$$;

-- activate() clears the reason of an earlier automatic deactivation. It and
-- a new URL start the failure counters afresh: the failures were of the
-- endpoint before (a new URL's are not its own), and must not deactivate it
-- at once, before it was even tried.
CREATE OR REPLACE FUNCTION hookbridge._clear_deactivation_reason() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF NEW.status = 'active' AND OLD.status <> 'active' THEN
        NEW.deactivation_reason := NULL;
    END IF;
    IF (NEW.status = 'active' AND OLD.status <> 'active') OR NEW.url IS DISTINCT FROM OLD.url THEN
        UPDATE hookbridge.endpoint_health h
           SET failing_since = NULL, consecutive_failures = 0
         WHERE h.subscription_id = NEW.id;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER subscriptions_reactivated BEFORE UPDATE OF status, url ON hookbridge.subscriptions
    FOR EACH ROW EXECUTE FUNCTION hookbridge._clear_deactivation_reason();

-- Retention ------------------------------------------------------------------

-- The first day the delivery log keeps as of p_now: the UTC day of p_now -
-- limit('delivery_log_retention_days') days (maintain_delivery_log drops the
-- days before it; replay's HB027 message names it).
CREATE OR REPLACE FUNCTION hookbridge._dlog_first_kept_day(p_now timestamptz) RETURNS date
LANGUAGE sql STABLE SET search_path = pg_catalog, hookbridge, public AS $$
    SELECT ((p_now - make_interval(days => hookbridge.limit('delivery_log_retention_days')::integer))
            AT TIME ZONE 'UTC')::date
$$;

-- The retention row of hookbridge.limits is checked however it is written
-- (set_retention, or a plain UPDATE by the schema owner).
CREATE OR REPLACE FUNCTION hookbridge._check_retention_limit() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    IF NEW.name = 'delivery_log_retention_days' AND NEW.value NOT BETWEEN 1 AND 3650 THEN
        RAISE EXCEPTION 'delivery_log_retention_days must be 1 to 3650 days, not %', NEW.value
            USING ERRCODE = 'HB026';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER limits_retention BEFORE INSERT OR UPDATE ON hookbridge.limits
    FOR EACH ROW EXECUTE FUNCTION hookbridge._check_retention_limit();

-- Sets how long the delivery log keeps deliveries and attempts: whole days
-- (or hours making whole days), 1 to 3650 (HB026 otherwise). Returns the days. The next maintenance (within
-- the hour, or at the services' start) drops the days past it.
CREATE OR REPLACE FUNCTION hookbridge.set_retention(keep interval) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_days integer;
BEGIN
    IF keep IS NULL THEN
        RAISE EXCEPTION 'retention must not be NULL' USING ERRCODE = 'HB026';
    END IF;
    keep := justify_hours(keep); -- '48 hours' is 2 days
    IF extract(month FROM keep) <> 0 OR extract(year FROM keep) <> 0
       OR date_trunc('day', keep) <> keep THEN
        RAISE EXCEPTION 'retention must be whole days (e.g. interval ''30 days''), not %', keep
            USING ERRCODE = 'HB026',
                  HINT = 'The delivery log is kept and dropped by whole UTC days.';
    END IF;
    v_days := extract(day FROM keep)::integer;
    IF v_days NOT BETWEEN 1 AND 3650 THEN
        RAISE EXCEPTION 'retention must be 1 to 3650 days, not %', keep USING ERRCODE = 'HB026';
    END IF;
    UPDATE hookbridge.limits SET value = v_days WHERE name = 'delivery_log_retention_days';
    RETURN v_days;
END
$$;

-- Creates the partitions of day p_day of both tables when missing. Rows that
-- waited in a DEFAULT partition for that day move into the new one (the
-- DEFAULT partition is locked meanwhile, so no row for the day slips in).
-- Returns the names created.
CREATE OR REPLACE FUNCTION hookbridge._dlog_add_day(p_day date) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_name text;
    v_moved bigint;
BEGIN
    v_name := 'deliveries_p' || to_char(p_day, 'YYYYMMDD');
    IF to_regclass('hookbridge.' || v_name) IS NULL THEN
        LOCK TABLE hookbridge.deliveries_default IN EXCLUSIVE MODE;
        EXECUTE format('CREATE TABLE hookbridge.%I (LIKE hookbridge.deliveries'
                       ' INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', v_name);
        EXECUTE format('WITH m AS (DELETE FROM hookbridge.deliveries_default WHERE log_day = %L'
                       ' RETURNING *) INSERT INTO hookbridge.%I SELECT * FROM m', p_day, v_name);
        GET DIAGNOSTICS v_moved = ROW_COUNT;
        EXECUTE format('ALTER TABLE hookbridge.deliveries ATTACH PARTITION hookbridge.%I'
                       ' FOR VALUES FROM (%L) TO (%L)', v_name, p_day, p_day + 1);
        RETURN NEXT v_name || CASE WHEN v_moved > 0
                                   THEN format(' (%s rows from deliveries_default)', v_moved)
                                   ELSE '' END;
    END IF;
    v_name := 'delivery_attempts_p' || to_char(p_day, 'YYYYMMDD');
    IF to_regclass('hookbridge.' || v_name) IS NULL THEN
        LOCK TABLE hookbridge.delivery_attempts_default IN EXCLUSIVE MODE;
        EXECUTE format('CREATE TABLE hookbridge.%I (LIKE hookbridge.delivery_attempts'
                       ' INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', v_name);
        EXECUTE format('WITH m AS (DELETE FROM hookbridge.delivery_attempts_default'
                       ' WHERE started_at >= %L AND started_at < %L RETURNING *)'
                       ' INSERT INTO hookbridge.%I SELECT * FROM m',
                       p_day::timestamp AT TIME ZONE 'UTC', (p_day + 1)::timestamp AT TIME ZONE 'UTC',
                       v_name);
        GET DIAGNOSTICS v_moved = ROW_COUNT;
        EXECUTE format('ALTER TABLE hookbridge.delivery_attempts ATTACH PARTITION hookbridge.%I'
                       ' FOR VALUES FROM (%L) TO (%L)', v_name,
                       p_day::timestamp AT TIME ZONE 'UTC', (p_day + 1)::timestamp AT TIME ZONE 'UTC');
        RETURN NEXT v_name || CASE WHEN v_moved > 0
                                   THEN format(' (%s rows from delivery_attempts_default)', v_moved)
                                   ELSE '' END;
    END IF;
END
$$;

-- Forgetting deregistered subscriptions. deregister() keeps the row (without
-- its credentials) for the history in the delivery log; once the day it was
-- deregistered is past the retention (before the first day kept), every
-- delivery made while it was live is in a day the same maintenance drops,
-- and nothing needs the subscription any more. It is forgotten: its
-- subscription_event_types, endpoint_health, previews, ordering_tails,
-- rate_limit_buckets, subscription_secrets and secret_inbox rows (the
-- last three deregister() removed already; a row written by hand since
-- goes too), and its own row, unless the delivery log still has a delivery
-- of it in a day kept or in a DEFAULT partition (a clock ahead, a retry
-- dropped late): the row then stays until that day goes, to say whose the
-- delivery was. Before (review: 13,000 register/deregister cycles) all of
-- it stayed for good, 2 event-type rows and a health row per cycle, and
-- every query that joins them (the services' loads, the views) slowed with
-- them. A retry, replay or delivery for a forgotten id ends as one for a
-- deregistered id: the services hold neither (a retry is dropped,
-- 'subscription deregistered'), _check_replayable refuses both (HB021),
-- the functions taking an id both (HB010).
--
-- One batch: the subscriptions p_ids, locked by the caller. Returns how many
-- rows of subscriptions it deleted. The deletes notify nothing
-- (_notify_subscription): the services dropped them at deregistration.
CREATE OR REPLACE FUNCTION hookbridge._forget_deregistered(p_ids uuid[], p_keep date)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM hookbridge.subscription_event_types t WHERE t.subscription_id = ANY (p_ids);
    DELETE FROM hookbridge.endpoint_health h WHERE h.subscription_id = ANY (p_ids);
    DELETE FROM hookbridge.previews p WHERE p.subscription_id = ANY (p_ids);
    DELETE FROM hookbridge.ordering_tails o WHERE o.subscription_id = ANY (p_ids);
    DELETE FROM hookbridge.rate_limit_buckets b WHERE b.subscription_id = ANY (p_ids);
    DELETE FROM hookbridge.subscription_secrets sec WHERE sec.subscription_id = ANY (p_ids);
    DELETE FROM hookbridge.secret_inbox i WHERE i.subscription_id = ANY (p_ids);
    DELETE FROM hookbridge.subscriptions s
     WHERE s.id = ANY (p_ids) AND s.deregistered_at IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM hookbridge.deliveries d
                        WHERE d.subscription_id = s.id AND d.log_day >= p_keep);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- The delivery log's upkeep, run by the services (hourly and at start; any
-- caller may run it again: it is idempotent). p_now is the time to act as of
-- (the services pass now(); tests pretend). It
--   * deletes the ordering tails of keys quiet for an hour whose delivery is
--     final or past the retention, and what waited in the DEFAULT partitions
--     for a day before the first day kept (rows written for a day that had no
--     partition; normally none);
--   * forgets the subscriptions deregistered before the first day kept
--     (_forget_deregistered), in batches of 500 in (deregistered_at, id)
--     order, each locked first, skipping one another session holds (it goes
--     next time); it stops starting batches after 1 s or 10,000
--     subscriptions, and the next run goes on (the request connection that
--     runs it also answers the retrier's replay claims and rate-limit draws:
--     a backlog is cleared at 10,000 an hour, a million in about four
--     days, not in one long call).
--     Row locks of deregistered subscriptions only: the functions that lock
--     a subscription's row (_live) wait for them and then refuse it (HB010);
--     cancel() and replay() do not lock a deregistered one's
--     (_delivery_for_update);
--   * drops both tables' partitions of every day before the first day kept,
--     the UTC day of p_now - limit('delivery_log_retention_days') days (so a
--     row is kept at least that many days, at most one more);
--   * creates both tables' partitions of today and the next p_ahead days.
-- Returns one row per thing done: action 'created', 'dropped', 'deleted' or
-- 'skipped' (another session holds the maintenance lock, or a lock was not
-- had within lock_timeout, e.g. for a long-running read: tried again next
-- time), and its object.
--
-- Locks. Dropping a partition takes an ACCESS EXCLUSIVE lock on its parent
-- table, held until this function's transaction commits, and every writer
-- and reader of the log waits for it. So the deletes (the forgetting too)
-- come first (done under
-- that lock, they held the log's writers for as long as they took), and the
-- drops take both parents at once, in the order the delivery-log writer
-- (hb_dlog.c) locks them: deliveries, then delivery_attempts. Dropping a
-- day's delivery_attempts partition first (as the drops by name did) locked
-- the tables the other way round: a writer that had written its deliveries
-- rows and went on to their attempts deadlocked with it, and PostgreSQL
-- cancelled one of the two, most often the maintenance, which then undid all
-- it had done. The creations come after the drops: a new partition's ATTACH
-- holds the DEFAULT partition exclusively, and a reader that had taken the
-- parent and waited for the DEFAULT partition would deadlock with the drops'
-- lock on the parent (with the parents held, the creations take a moment).
-- A lock_timeout of 5 s bounds how long the log's writers wait behind a
-- maintenance that waits for a long report; a deadlock with a session that
-- locks the tables the other way round (a report reading delivery_attempts
-- joined to deliveries) skips the drops too.
CREATE OR REPLACE FUNCTION hookbridge.maintain_delivery_log(p_now timestamptz DEFAULT now(),
                                                            p_ahead integer DEFAULT 3)
RETURNS TABLE (action text, object text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_today date;
    v_keep  date;
    v_n     bigint;
    v_drop  text[];
    v_rel   text;
    v_ids   uuid[];
    v_at    timestamptz := '-infinity';
    v_id    uuid := '00000000-0000-0000-0000-000000000000';
    v_gone  bigint := 0;
    v_seen  bigint := 0;
    v_more  boolean := false;
    v_start timestamptz := clock_timestamp();
BEGIN
    IF p_now IS NULL OR p_ahead IS NULL OR p_ahead NOT BETWEEN 0 AND 31 THEN
        RAISE EXCEPTION 'p_now must not be NULL and p_ahead must be 0 to 31' USING ERRCODE = 'HB012';
    END IF;
    -- one maintenance at a time, across replicas
    IF NOT pg_try_advisory_xact_lock(hashtext('hookbridge.maintain_delivery_log')) THEN
        action := 'skipped'; object := 'another session is maintaining the delivery log';
        RETURN NEXT;
        RETURN;
    END IF;
    PERFORM set_config('lock_timeout', '5s', true);
    v_today := (p_now AT TIME ZONE 'UTC')::date;
    v_keep := hookbridge._dlog_first_kept_day(p_now);

    -- Ordered delivery: the tails of keys whose last delivery is final, or no
    -- longer in the log (or in a day dropped below), and that were quiet for
    -- an hour. A key without a tail starts afresh, which is what a final tail
    -- means anyway; a waiting delivery ('retry', 'pending', 'replay') keeps
    -- its tail.
    BEGIN
        DELETE FROM hookbridge.ordering_tails t
         WHERE t.updated_at < p_now - interval '1 hour'
           AND NOT EXISTS (SELECT 1 FROM hookbridge.deliveries d
                            WHERE d.delivery_id = t.delivery_id AND d.log_day >= v_keep
                              AND d.status NOT IN ('delivered', 'failed', 'dropped'));
        GET DIAGNOSTICS v_n = ROW_COUNT;
        IF v_n > 0 THEN
            action := 'deleted';
            object := format('ordering_tails: %s keys whose last delivery is final', v_n);
            RETURN NEXT;
        END IF;
    EXCEPTION WHEN lock_not_available THEN
        action := 'skipped';
        object := 'ordering_tails (busy: cleared next time)';
        RETURN NEXT;
    END;

    BEGIN
        DELETE FROM hookbridge.deliveries_default WHERE log_day < v_keep;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        IF v_n > 0 THEN
            action := 'deleted';
            object := format('deliveries_default: %s rows before %s', v_n, v_keep);
            RETURN NEXT;
        END IF;
        DELETE FROM hookbridge.delivery_attempts_default
         WHERE started_at < v_keep::timestamp AT TIME ZONE 'UTC';
        GET DIAGNOSTICS v_n = ROW_COUNT;
        IF v_n > 0 THEN
            action := 'deleted';
            object := format('delivery_attempts_default: %s rows before %s', v_n, v_keep);
            RETURN NEXT;
        END IF;
    EXCEPTION WHEN lock_not_available THEN
        action := 'skipped';
        object := 'the DEFAULT partitions (busy: cleared next time)';
        RETURN NEXT;
    END;

    -- Deregistered subscriptions past the retention, a batch at a time,
    -- each its own subtransaction (one that cannot have a lock within
    -- lock_timeout is undone alone, and the rest wait for the next run).
    -- Keyset-paged: the rows kept (the log still names them) and those
    -- skipped are passed once, never taken again in the same run.
    LOOP
        BEGIN
            SELECT array_agg(p.id ORDER BY p.deregistered_at, p.id),
                   max(p.deregistered_at) -- with the last id, the batch's last key
              INTO v_ids, v_at
              FROM (SELECT s.id, s.deregistered_at FROM hookbridge.subscriptions s
                     WHERE s.deregistered_at < v_keep::timestamp AT TIME ZONE 'UTC'
                       AND (s.deregistered_at, s.id) > (v_at, v_id)
                     ORDER BY s.deregistered_at, s.id
                     LIMIT 500
                       FOR UPDATE SKIP LOCKED) p;
            EXIT WHEN v_ids IS NULL;
            v_id := v_ids[cardinality(v_ids)];
            v_seen := v_seen + cardinality(v_ids);
            v_gone := v_gone + hookbridge._forget_deregistered(v_ids, v_keep);
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            action := 'skipped';
            object := 'deregistered subscriptions (busy: forgotten next time)';
            RETURN NEXT;
            EXIT;
        END;
        EXIT WHEN cardinality(v_ids) < 500;
        IF v_seen >= 10000 OR clock_timestamp() - v_start > interval '1 second' THEN
            v_more := true;
            EXIT;
        END IF;
    END LOOP;
    IF v_gone > 0 THEN
        action := 'deleted';
        object := format('subscriptions: %s deregistered before %s, with their event types, '
                         'endpoint health and previews%s', v_gone, v_keep,
                         CASE WHEN v_more THEN ' (more next time)' ELSE '' END);
        RETURN NEXT;
    END IF;

    -- the same days of both tables, oldest first
    SELECT array_agg(c.relname::text ORDER BY to_date(right(c.relname, 8), 'YYYYMMDD'), c.relname)
      INTO v_drop
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent IN ('hookbridge.deliveries'::regclass,
                           'hookbridge.delivery_attempts'::regclass)
       AND c.relname ~ '^(deliveries|delivery_attempts)_p[0-9]{8}$'
       AND to_date(right(c.relname, 8), 'YYYYMMDD') < v_keep;
    IF v_drop IS NOT NULL THEN
        BEGIN
            -- the parents only (every access through them takes their lock)
            LOCK TABLE ONLY hookbridge.deliveries IN ACCESS EXCLUSIVE MODE;
            LOCK TABLE ONLY hookbridge.delivery_attempts IN ACCESS EXCLUSIVE MODE;
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            FOREACH v_rel IN ARRAY v_drop LOOP
                action := 'skipped';
                object := v_rel || ' (busy: dropped next time)';
                RETURN NEXT;
            END LOOP;
            v_drop := '{}';
        END;
        FOREACH v_rel IN ARRAY v_drop LOOP
            BEGIN
                EXECUTE format('DROP TABLE hookbridge.%I', v_rel);
                action := 'dropped';
                object := v_rel;
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                action := 'skipped';
                object := v_rel || ' (busy: dropped next time)';
            END;
            RETURN NEXT;
        END LOOP;
    END IF;

    FOR d IN 0 .. p_ahead LOOP
        BEGIN
            FOR object IN SELECT hookbridge._dlog_add_day(v_today + d) LOOP
                action := 'created';
                RETURN NEXT;
            END LOOP;
        EXCEPTION WHEN lock_not_available THEN
            action := 'skipped';
            object := format('partitions of %s (busy: created next time)', v_today + d);
            RETURN NEXT;
        END;
    END LOOP;
END
$$;

-- Replay ---------------------------------------------------------------------

CREATE OR REPLACE FUNCTION hookbridge._check_replayable(d hookbridge.deliveries) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_sub hookbridge.subscriptions;
BEGIN
    IF d.status NOT IN ('failed', 'dropped') THEN
        RAISE EXCEPTION 'delivery % is %; only failed or dropped deliveries can be replayed',
            d.delivery_id, d.status
            USING ERRCODE = 'HB021';
    END IF;
    IF d.body IS NULL THEN
        RAISE EXCEPTION 'delivery % has no stored payload to replay', d.delivery_id
            USING ERRCODE = 'HB021';
    END IF;
    SELECT * INTO v_sub FROM hookbridge.subscriptions s WHERE s.id = d.subscription_id;
    IF NOT FOUND OR v_sub.deregistered_at IS NOT NULL THEN
        RAISE EXCEPTION 'delivery %: its subscription % is deregistered', d.delivery_id, d.subscription_id
            USING ERRCODE = 'HB021';
    END IF;
    IF v_sub.status <> 'active' THEN
        RAISE EXCEPTION 'delivery %: its subscription % is inactive; activate it first',
            d.delivery_id, d.subscription_id
            USING ERRCODE = 'HB021';
    END IF;
END
$$;


-- The delivery log's row of a delivery id (its latest day's), locked for the
-- caller's change, after its subscription's row; refuses a NULL id (HB020) and an id the log does not have
-- (HB027, naming the days the log keeps).
CREATE OR REPLACE FUNCTION hookbridge._delivery_for_update(delivery_id uuid)
RETURNS hookbridge.deliveries
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v hookbridge.deliveries;
BEGIN
    IF _delivery_for_update.delivery_id IS NULL THEN
        RAISE EXCEPTION 'delivery_id must not be NULL' USING ERRCODE = 'HB020';
    END IF;
    -- Its subscription's row first, as replay_failed and replay_dropped take
    -- it: they move the deliveries they replay to today's partition, and
    -- waiting for such a row's lock, then finding it moved, was an error
    -- (SQLSTATE 40001, "tuple to be locked was already moved to another
    -- partition due to concurrent update"). After this wait the row is read
    -- where it is now. A live subscription's only: a deregistered one's
    -- deliveries are moved by nobody (those functions refuse it), and its
    -- row may be locked by the maintenance forgetting it (maintain_delivery_log),
    -- which then takes the log's tables for the days it drops: a cancel() or
    -- replay() that had read the log and waited for the row deadlocked with
    -- it (review 89: "deadlock detected", the log's writers held meanwhile).
    PERFORM 1 FROM hookbridge.subscriptions s
     WHERE s.id = (SELECT d.subscription_id FROM hookbridge.deliveries d
                    WHERE d.delivery_id = _delivery_for_update.delivery_id LIMIT 1)
       AND s.deregistered_at IS NULL
       FOR UPDATE;
    SELECT * INTO v FROM hookbridge.deliveries d WHERE d.delivery_id = _delivery_for_update.delivery_id
     ORDER BY d.log_day DESC LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'delivery % is not in the delivery log, which keeps % days (since %): it was never made, its first attempt is still under way (a delivery is logged at its outcome), or it has been removed',
            _delivery_for_update.delivery_id, hookbridge.limit('delivery_log_retention_days'),
            to_char(hookbridge._dlog_first_kept_day(now()), 'YYYY-MM-DD')
            USING ERRCODE = 'HB027',
                  HINT = 'Delivery ids are the webhook-id values; the retention is hookbridge.limits delivery_log_retention_days (hookbridge.set_retention).';
    END IF;
    RETURN v;
END
$$;

-- When a replay is asked for: the statement's time (clock_timestamp, not the
-- transaction's start: deactivate, activate and replay in one transaction
-- ask for the replay after the deactivation), rounded up to the millisecond
-- the services compare it at with deactivated_at (hb_sub_deactivated_since),
-- so it is never before a deactivation made earlier.
CREATE OR REPLACE FUNCTION hookbridge._replay_requested_at() RETURNS timestamptz
LANGUAGE sql VOLATILE SET search_path = pg_catalog, hookbridge, public AS $$
    SELECT date_trunc('milliseconds', clock_timestamp() + interval '999 microseconds')
$$;

-- Sends a failed delivery again (same webhook-id, the stored payload, the
-- subscription's current URL and secret, a fresh retry schedule). The
-- delivery moves to today (log_day): its replay is kept for the whole
-- retention, whatever the age of the delivery.
CREATE OR REPLACE FUNCTION hookbridge.replay(delivery_id uuid) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v    hookbridge.deliveries;
    v_at timestamptz := hookbridge._replay_requested_at();
BEGIN
    v := hookbridge._delivery_for_update(replay.delivery_id);
    PERFORM hookbridge._check_replayable(v);
    UPDATE hookbridge.deliveries d
       SET status = 'replay', replay_requested_at = v_at, replay_claimed_at = NULL,
           replay_due_at = NULL, log_day = (v_at AT TIME ZONE 'UTC')::date
     WHERE d.delivery_id = replay.delivery_id AND d.log_day = v.log_day;
    RETURN replay.delivery_id;
END
$$;

-- Replays a subscription's deliveries of one final status whose last
-- attempt was at or after p_since (replay_failed, replay_dropped); returns
-- how many. Deliveries without a stored payload are skipped. They move to
-- today as replay() moves one. A delivery with two rows (a crash redelivered
-- it at a day's end) is its later row, as for replay() and the services'
-- look-ups: an earlier day's failure of a delivery acknowledged the next day
-- is not sent again, and a delivery failed on both days is replayed once
-- (moving both rows to today would collide on the key). Cancelled deliveries
-- (dropped by cancel()) are not taken, nor a batch the retrier split after
-- its endpoint refused it as too large (HTTP 413; its last_error begins
-- "split:"): replay() takes one by its id.
--
-- Pacing. For a subscription with options.rate_limit (per_second P, burst
-- B) each delivery taken gets the time its turn comes, replay_due_at, in the
-- order of their first attempts: the first ceil(B / 2) at once, then one
-- every 2 / P seconds (half the rate: the other half is left to the live
-- events), after the replays of the subscription still waiting for their
-- turn, if any. claim_replays hands a replay out only once it is due. Due
-- at once, all of them went to the first delay tier together, and those
-- over the limit came round through it, each time logged as an attempt,
-- until their turn: tens of thousands of delivery-log rows a second for a
-- large replay (migrations/0008_replay_pacing.sql).
CREATE OR REPLACE FUNCTION hookbridge._replay_all(p_sub uuid, p_since timestamptz, p_status text)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_sub   hookbridge.subscriptions;
    v_at    timestamptz;
    v_rate  double precision; -- replays a second (half the rate limit), NULL: not paced
    v_first double precision; -- how many go at once
    v_from  timestamptz;      -- when the paced ones start
    n       integer;
    n_more  integer;
BEGIN
    IF p_sub IS NULL THEN
        RAISE EXCEPTION 'subscription id must not be NULL' USING ERRCODE = 'HB015';
    END IF;
    IF p_since IS NULL THEN
        RAISE EXCEPTION 'since must not be NULL' USING ERRCODE = 'HB012';
    END IF;
    -- The subscription's row locked (HB010 for an unknown or deregistered
    -- one): two replays of one subscription at once take turns, the second
    -- finding nothing left to take. Unlocked, the second waited for the
    -- first's rows and then failed with SQLSTATE 40001 ("tuple to be locked
    -- was already moved to another partition due to concurrent update"): the
    -- first had moved them to today. A deactivate() meanwhile also comes
    -- before (HB021 below) or after (it drops the replays) as a whole.
    v_sub := hookbridge._live(p_sub);
    v_at := hookbridge._replay_requested_at();
    IF v_sub.status <> 'active' THEN
        RAISE EXCEPTION 'subscription % is inactive; activate it first', p_sub
            USING ERRCODE = 'HB021';
    END IF;
    IF jsonb_typeof(v_sub.options -> 'rate_limit') = 'object' THEN
        v_rate := (v_sub.options #>> '{rate_limit,per_second}')::double precision / 2;
        v_first := ceil(coalesce((v_sub.options #>> '{rate_limit,burst}')::double precision,
                                 ceil(v_rate * 2)) / 2);
        v_from := v_at;
        -- after the replays still waiting for their turn (an earlier call):
        -- those take the burst
        SELECT greatest(v_at, max(w.replay_due_at)) INTO v_from
          FROM hookbridge.deliveries w
         WHERE w.status = 'replay' AND w.subscription_id = p_sub AND w.replay_due_at > v_at;
        IF v_from > v_at THEN
            v_first := 0;
        ELSE
            v_from := v_at;
        END IF;
    END IF;
    -- The retries still waiting first, then the deliveries already dropped
    -- (review 63). A retrier can write the drop of a waiting retry while
    -- this runs (it read the log a moment before). The other way round, a
    -- drop written between the two statements was neither dropped for the
    -- first nor still waiting for the second: not counted, left dropped;
    -- and one written while the marking waited for its row was marked all
    -- the same (the UPDATE did not look at the row again after the wait):
    -- counted, never sent. Now each UPDATE checks the row's status as it is
    -- after any wait: a drop written before or while the marking reads the
    -- row is taken by the second statement as dropped (counted once: a row
    -- marked here stays locked until the commit, so no drop lands on it in
    -- between); one written after it (judged by the retrier before this
    -- request) finds it marked, and claim_replays sends it as a replay.
    n := 0;
    -- replay_dropped: also the retries pending at a deactivation and not due
    -- yet, which the retrier drops only when each comes due (up to the
    -- schedule's longest delay after the deactivation: 10 hours by
    -- default). Their payload is on their delay tier, not in the log, so they
    -- are not replayed now but marked (resume_requested_at): when due, the
    -- retrier judges the deactivation by this request and makes the attempt,
    -- on their schedule. Without it a replay_dropped() right after activate()
    -- left them out, and they were dropped later, to be brought back only by
    -- a second replay_dropped() hours later. A delivery that began (its first
    -- attempt, a replay, or such a request) after the last deactivation is
    -- not pending at it, and is left alone. The row stays where it is (its
    -- day is that of the retries' first_attempt_ms). Whatever its last
    -- attempt: it would be dropped when due, after this request, so after
    -- any `since` up to now (judged by its last attempt, a since taken from
    -- the subscription's deactivated_at left every one of them out, to be
    -- dropped and taken only by a second call with the same since).
    IF p_status = 'dropped' AND v_sub.deactivated_at IS NOT NULL THEN
        UPDATE hookbridge.deliveries d SET resume_requested_at = v_at
          FROM (SELECT c.delivery_id, c.log_day
                  FROM hookbridge.deliveries c
                 WHERE c.subscription_id = p_sub AND c.status = 'retry'
                   AND v_at >= p_since
                   AND greatest(c.first_attempt_at, c.replay_requested_at,
                                c.resume_requested_at) < v_sub.deactivated_at
                   AND NOT EXISTS (SELECT 1 FROM hookbridge.deliveries later
                                    WHERE later.delivery_id = c.delivery_id
                                      AND later.log_day > c.log_day)) pick
         WHERE d.delivery_id = pick.delivery_id AND d.log_day = pick.log_day
           AND d.status = 'retry'; -- as it is now, after a wait for its row
        GET DIAGNOSTICS n = ROW_COUNT;
    END IF;
    UPDATE hookbridge.deliveries d
       SET status = 'replay', replay_requested_at = v_at, replay_claimed_at = NULL,
           log_day = (v_at AT TIME ZONE 'UTC')::date,
           -- at most about 30 years ahead (a tiny rate): a bound, not an error
           replay_due_at = CASE WHEN v_rate IS NOT NULL AND pick.i > v_first
                                THEN v_from + make_interval(secs => least((pick.i - v_first) / v_rate, 1e9)) END
      FROM (SELECT c.delivery_id, c.log_day,
                   row_number() OVER (ORDER BY c.first_attempt_at, c.delivery_id) AS i
              FROM hookbridge.deliveries c
             WHERE c.subscription_id = p_sub
               AND c.status = p_status AND c.body IS NOT NULL
               AND c.last_attempt_at >= p_since
               -- not the cancelled ones, nor a batch split after a 413 (its events
               -- went on in its halves, which are deliveries of their own)
               AND (p_status <> 'dropped' OR c.last_error IS NULL
                    OR (c.last_error NOT LIKE 'cancelled%' AND c.last_error NOT LIKE 'split:%'))
               AND NOT EXISTS (SELECT 1 FROM hookbridge.deliveries later
                                WHERE later.delivery_id = c.delivery_id AND later.log_day > c.log_day)) pick
     WHERE d.delivery_id = pick.delivery_id AND d.log_day = pick.log_day
       AND d.status = p_status; -- as it is now, after a wait for its row
    GET DIAGNOSTICS n_more = ROW_COUNT;
    n := n + n_more;
    RETURN n;
END
$$;

-- Replays every failed delivery of a subscription since a time; returns how
-- many (see _replay_all).
CREATE OR REPLACE FUNCTION hookbridge.replay_failed(subscription_id uuid, since timestamptz)
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
    SELECT hookbridge._replay_all(subscription_id, since, 'failed')
$$;

-- Replays every delivery of a subscription dropped since a time because the
-- subscription stopped (a deactivation, automatic or not, took its pending
-- retries), and takes back its retries still waiting that such a
-- deactivation would drop when they come due (they go on then); returns how
-- many (see _replay_all). After an endpoint was down long enough to be
-- deactivated automatically, replay_failed and then replay_dropped bring
-- back everything it missed while it was active.
CREATE OR REPLACE FUNCTION hookbridge.replay_dropped(subscription_id uuid, since timestamptz)
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
    SELECT hookbridge._replay_all(subscription_id, since, 'dropped')
$$;

-- Gives up on a delivery that is still being retried, or a replay not made
-- yet (one asked for by mistake): its status becomes
-- 'dropped' (final), so its pending retry is discarded when it comes due (the
-- retrier reads the log first) and the deliveries of its ordering key that
-- wait behind it go on. An attempt already under way may still be made; it is
-- logged as an attempt and the delivery stays dropped.
CREATE OR REPLACE FUNCTION hookbridge.cancel(delivery_id uuid, reason text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v hookbridge.deliveries;
BEGIN
    v := hookbridge._delivery_for_update(cancel.delivery_id);
    IF v.status NOT IN ('retry', 'replay') THEN
        RAISE EXCEPTION 'delivery % is %; only a delivery being retried or replayed (status retry or replay) can be cancelled',
            cancel.delivery_id, v.status
            USING ERRCODE = 'HB028',
                  HINT = CASE v.status WHEN 'pending' THEN 'Its first attempt is under way: wait for its outcome.'
                                       ELSE 'It is final already.' END;
    END IF;
    UPDATE hookbridge.deliveries d
       SET status = 'dropped',
           last_error = left('cancelled' || coalesce(': ' || nullif(btrim(cancel.reason), ''), ''), 500)
     WHERE d.delivery_id = cancel.delivery_id AND d.log_day = v.log_day;
END
$$;

-- For the retrier: up to p_limit replay requests, each leased for
-- p_lease (a request whose retrier died is claimed again after that), a
-- paced one (replay_due_at, _replay_all) once it is due.
-- replay_requested_at is where the replay's attempts begin: the services
-- log them under its day (the row's log_day), and it is the same when a
-- request is claimed again.
--
-- First it turns stale drops into replay requests (review 63). A retrier
-- judges a due retry by the log's answer to its look-up and writes the
-- drop a moment later; a replay_dropped() in between marks the retry
-- (resume_requested_at) and counts it, and the drop was then written over
-- the mark: counted, never sent. Such a drop is told by the state alone: a
-- delivery dropped, a resume asked for and no deactivation of its
-- subscription since (resume_requested_at >= deactivated_at: the retrier
-- knowing of it would have made the attempt; the subscription is live), no
-- attempt logged since that request (a second replica, which read the
-- retry again after a rebalance, made it), not cancelled, not a batch split
-- after a 413, with its body. It becomes a replay asked for now, moved to
-- today as replay() moves one: sent within about a second, by whichever
-- retrier claims first. Being judged by the state, a drop written by a
-- retrier that died right after, or by one of an earlier release, is
-- taken all the same. The subscriptions' rows are locked first (skipping
-- those an operator's function holds: taken at the next claim), so
-- replay(), cancel() and replay_dropped() wait for this as a whole instead
-- of for a row moved meanwhile (SQLSTATE 40001), and two retriers never
-- move the same row. A partial index (migration 0014) finds the candidates;
-- there are none but after such a race, or a drop of a resumed retry
-- after a deactivation that came later (which stays dropped, its
-- subscription not locked for it: _stale_drop is the whole rule).
CREATE OR REPLACE FUNCTION hookbridge._stale_drop(c hookbridge.deliveries, s hookbridge.subscriptions)
RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, hookbridge, public AS $$
    SELECT c.status = 'dropped' AND c.resume_requested_at IS NOT NULL
       AND s.id = c.subscription_id AND s.status = 'active' AND s.deregistered_at IS NULL
       AND c.resume_requested_at >= s.deactivated_at
       AND c.body IS NOT NULL
       AND (c.last_error IS NULL
            OR (c.last_error NOT LIKE 'cancelled%' AND c.last_error NOT LIKE 'split:%'))
       AND NOT EXISTS (SELECT 1 FROM hookbridge.delivery_attempts a
                        WHERE a.delivery_id = c.delivery_id
                          AND a.started_at >= c.resume_requested_at
                          AND a.outcome <> 'dropped')
       AND NOT EXISTS (SELECT 1 FROM hookbridge.deliveries later
                        WHERE later.delivery_id = c.delivery_id AND later.log_day > c.log_day)
$$;

CREATE OR REPLACE FUNCTION hookbridge.claim_replays(p_limit integer, p_lease interval DEFAULT '5 minutes')
RETURNS TABLE (delivery_id uuid, subscription_id uuid, event_ids text, event_type text,
                          content_type text, body text, attempts integer, first_attempt_at timestamptz,
                          replay_requested_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, hookbridge, public AS $$
DECLARE
    v_subs uuid[];
    v_at   timestamptz;
BEGIN
    -- only a subscription with a stale drop is locked (one whose drops stay,
    -- e.g. after a later deactivation, is not, each second)
    SELECT array_agg(s.id) INTO v_subs
      FROM (SELECT s.id FROM hookbridge.subscriptions s
             WHERE s.id IN (SELECT c.subscription_id
                              FROM hookbridge.deliveries c
                              JOIN hookbridge.subscriptions t ON t.id = c.subscription_id
                             WHERE c.status = 'dropped' AND c.resume_requested_at IS NOT NULL
                               -- the drops that stay ruled out by the row
                               -- alone, before _stale_drop looks at the
                               -- attempts for each (review 67: 10,000 of
                               -- them cost 200 ms a call, each second, in
                               -- every retrier, for the log's retention)
                               AND t.status = 'active' AND t.deregistered_at IS NULL
                               AND c.resume_requested_at >= t.deactivated_at
                               AND hookbridge._stale_drop(c, t))
             ORDER BY s.id
               FOR NO KEY UPDATE SKIP LOCKED) s;
    IF v_subs IS NOT NULL THEN
        -- judged again under the lock
        v_at := hookbridge._replay_requested_at();
        UPDATE hookbridge.deliveries d
           SET status = 'replay', replay_requested_at = v_at, replay_claimed_at = NULL,
               replay_due_at = NULL, log_day = (v_at AT TIME ZONE 'UTC')::date
          FROM (SELECT c.delivery_id, c.log_day
                  FROM hookbridge.deliveries c
                  JOIN hookbridge.subscriptions s ON s.id = c.subscription_id
                 WHERE c.subscription_id = ANY (v_subs)
                   AND c.status = 'dropped' AND c.resume_requested_at IS NOT NULL
                   AND s.status = 'active' AND s.deregistered_at IS NULL
                   AND c.resume_requested_at >= s.deactivated_at
                   AND hookbridge._stale_drop(c, s)) pick
         WHERE d.delivery_id = pick.delivery_id AND d.log_day = pick.log_day
           AND d.status = 'dropped';
    END IF;
    RETURN QUERY
    UPDATE hookbridge.deliveries d SET replay_claimed_at = now()
      FROM (SELECT c.delivery_id, c.log_day FROM hookbridge.deliveries c
             WHERE c.status = 'replay'
               AND (c.replay_claimed_at IS NULL OR c.replay_claimed_at < now() - p_lease)
               AND (c.replay_due_at IS NULL OR c.replay_due_at <= now())
             ORDER BY c.replay_requested_at
             LIMIT greatest(p_limit, 0)
             FOR UPDATE SKIP LOCKED) pick
     WHERE d.delivery_id = pick.delivery_id AND d.log_day = pick.log_day
    RETURNING d.delivery_id, d.subscription_id, d.event_ids, d.event_type,
              coalesce(d.content_type, 'application/json'), d.body, d.attempts,
              d.first_attempt_at, d.replay_requested_at;
END
$$;

-- Views ---------------------------------------------------------------------------------

-- The deliveries of live subscriptions in the last limit('recent_deliveries_days')
-- days. A deregistered subscription's history stays in hookbridge.deliveries.
CREATE OR REPLACE VIEW hookbridge.recent_deliveries AS
SELECT d.delivery_id,
       d.subscription_id,
       s.name AS subscription_name,
       d.event_type,
       d.event_ids,
       d.status,
       d.attempts,
       d.last_http_status,
       d.last_error,
       d.first_attempt_at,
       d.last_attempt_at,
       d.created_at
  FROM hookbridge.deliveries d
  JOIN hookbridge.subscriptions s ON s.id = d.subscription_id AND s.deregistered_at IS NULL
 WHERE d.created_at > now() - make_interval(days => hookbridge.limit('recent_deliveries_days')::integer)
   -- the same days, by the partition key (a day more: log_day is the first
   -- attempt's day on the services' clock), so only their partitions are read
   AND d.log_day >= ((now() - make_interval(days => hookbridge.limit('recent_deliveries_days')::integer))
                     AT TIME ZONE 'UTC')::date - 1;

COMMENT ON VIEW hookbridge.recent_deliveries IS
    'Deliveries of live subscriptions in the last limit(''recent_deliveries_days'') days, newest not ordered.';
