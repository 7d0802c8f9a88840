"""endpoint_health follows delivery_attempts exactly as before issue 12's
rewrite of its trigger (sql/60_deliveries.sql, _track_health: one hash
aggregate instead of a CTE joined back to its groups and sorted).

The trigger as it was is kept here as the reference, on copies of the two
tables in a scratch schema; random batches of attempts (several subscriptions,
every outcome, ties in time, circuit-open errors, rows without their
subscription) go into both, and the health rows must be the same after each.
No two failures share an instant here: of those, the trigger before kept the
error of whichever its sort put first; the rewrite keeps the one inserted last.

The tolerance: since a batch of successes leaves a recent, non-failing row
alone (so that replicas do not wait for each other's lock on a busy
subscription's row), last_success_at may be older than the reference's, by
less than 1 s: it is NULL exactly when the reference's is, and otherwise
reference - 1 s < last_success_at <= reference. Every other column is equal.
The batches here are a second apart, so success batches leave some rows alone.
"""
import datetime
import random
import uuid

import pytest

# SQL only: the sanitizer pass (make test-asan) skips it.
pytestmark = pytest.mark.sql_only

LAG = datetime.timedelta(seconds=1)


def within_tolerance(got, ref):
    """got and ref: the health rows (all columns, in order), sorted by subscription."""
    if len(got) != len(ref):
        return False
    for g, r in zip(got, ref):
        if g[:3] != r[:3] or g[4:] != r[4:]:
            return False
        if (g[3] is None) != (r[3] is None):
            return False
        if g[3] is not None and not (r[3] - LAG < g[3] <= r[3]):
            return False
    return True

REFERENCE = """
CREATE SCHEMA ref;
CREATE TABLE ref.delivery_attempts (LIKE hookbridge.delivery_attempts INCLUDING DEFAULTS);
CREATE TABLE ref.endpoint_health (LIKE hookbridge.endpoint_health INCLUDING ALL);
CREATE FUNCTION ref.track_health() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, hookbridge, public AS $$
BEGIN
    WITH a AS (
        SELECT coalesce(n.subscription_id,
                        (SELECT d.subscription_id FROM hookbridge.deliveries d
                          WHERE d.delivery_id = n.delivery_id LIMIT 1)) AS sid,
               n.started_at, n.outcome, n.error
          FROM new_rows n
         WHERE n.outcome = 'delivered'
            OR (n.outcome IN ('retry', 'failed')
                AND NOT coalesce(n.error, '') LIKE ANY (ARRAY[
                    'circuit open%', 'endpoint busy: %', 'endpoint slow: %',
                    'rate limited: %', 'waiting behind %',
                    'waiting for the subscription''s new URL %']))
    ), s AS (
        SELECT sid, max(started_at) FILTER (WHERE outcome = 'delivered') AS ok_at
          FROM a GROUP BY sid
    ), agg AS (
        SELECT s.sid, s.ok_at,
               count(a.*) FILTER (WHERE a.outcome <> 'delivered'
                                    AND a.started_at > coalesce(s.ok_at, '-infinity')) AS fails,
               min(a.started_at) FILTER (WHERE a.outcome <> 'delivered'
                                           AND a.started_at > coalesce(s.ok_at, '-infinity')) AS first_fail,
               max(a.started_at) FILTER (WHERE a.outcome <> 'delivered') AS last_fail,
               (array_agg(a.error ORDER BY a.started_at DESC)
                    FILTER (WHERE a.outcome <> 'delivered'))[1] AS last_err
          FROM s JOIN a USING (sid)
         GROUP BY s.sid, s.ok_at
    )
    INSERT INTO ref.endpoint_health AS h
           (subscription_id, consecutive_failures, failing_since, last_success_at,
            last_failure_at, last_error)
    SELECT sid, fails, first_fail, ok_at, last_fail, last_err FROM agg
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
CREATE TRIGGER health AFTER INSERT ON ref.delivery_attempts
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ref.track_health();
"""

COLUMNS = ("delivery_id, attempt, started_at, duration_ms, http_status, outcome, error, "
           "response_snippet, subscription_id")
ERRORS = [None, "HTTP 503", "circuit open: 5 failures", "timeout", "HTTP 500",
          "rate limited: held 5000 ms"]


# the mix of outcomes: about as many failures as successes; nine successes in ten
# (the rows are seldom failing, so batches of successes leave them alone)
MIXES = {"failing": ["delivered", "retry", "retry", "failed", "dropped"],
         "mostly delivered": ["delivered"] * 17 + ["retry", "failed", "dropped"]}


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_the_health_rows_are_those_of_the_trigger_before_the_rewrite_to_1s_of_last_success(
        pg_cluster, mix):
    db = pg_cluster.migrated_database("health")
    conn = pg_cluster.connect(db)
    rnd = random.Random(12)
    subs = [str(uuid.UUID(int=rnd.getrandbits(128))) for _ in range(5)]
    try:
        with conn.cursor() as cur:
            cur.execute(REFERENCE)
            # a delivery whose attempts come without their subscription
            known = str(uuid.UUID(int=rnd.getrandbits(128)))
            cur.execute("INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, "
                        "event_ids, event_type) VALUES (%s, %s, 'e', 't')", (known, subs[0]))
            lagged = 0
            for batch in range(80):
                rows = []
                ms = rnd.sample(range(1000), 15)  # distinct instants, in no order
                for k in range(rnd.randint(1, 15)):
                    outcome = rnd.choice(MIXES[mix])
                    missing = rnd.random() < 0.1
                    did = (known if missing and rnd.random() < 0.5
                           else str(uuid.UUID(int=rnd.getrandbits(128))))
                    rows.append((did, rnd.randint(1, 5),
                                 f"2026-12-04 10:{batch // 60:02d}:{batch % 60:02d}.{ms[k]:03d}+00",
                                 5, 500, outcome,
                                 None if outcome == "delivered" else rnd.choice(ERRORS),
                                 None, None if missing else rnd.choice(subs)))
                values = ",".join(["(%s,%s,%s,%s,%s,%s,%s,%s,%s)"] * len(rows))
                flat = [v for r in rows for v in r]
                for table in ("hookbridge.delivery_attempts", "ref.delivery_attempts"):
                    cur.execute(f"INSERT INTO {table} ({COLUMNS}) VALUES {values}", flat)
                cur.execute("SELECT * FROM hookbridge.endpoint_health ORDER BY 1")
                got = cur.fetchall()
                cur.execute("SELECT * FROM ref.endpoint_health ORDER BY 1")
                ref = cur.fetchall()
                assert within_tolerance(got, ref), f"batch {batch}: {got} != {ref}"
                lagged += sum(g[3] != r[3] for g, r in zip(got, ref))
            assert len(got) == len(subs)
            assert any(h[3] is not None for h in got)
            if mix == "failing":
                assert any(h[1] > 0 for h in got)
            else:  # the tolerance was used: batches of successes left rows alone
                assert lagged > 0
    finally:
        conn.close()
        pg_cluster.drop_database(db)
