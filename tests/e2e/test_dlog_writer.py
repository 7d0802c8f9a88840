"""The delivery-log writer (lib/hb_dlog.c) against a real database, driven by
tests/bench/bench_dlog.c with a fixed clock (every run writes the same rows).

Issue 12 made the writer insert new deliveries with a plain INSERT (the
upsert only for later attempts); a first attempt logged a second time (after
a crash, or by another replica) meets a unique violation, and the batch is
then written again through the upsert alone. These tests check what a user
of the log sees: nothing lost, nothing changed, every kind of row as before.
"""
import os
import subprocess

from hbtest.procs import BIN, REPO, SLOW

BUILD = REPO / ("build-san" if BIN.name == "bin-san" else "build")
DELIVERIES = 3000
CLOCK_MS = 1796400000000  # 2026-12-04T10:40:00Z
DELIVERY_COLUMNS = ("delivery_id, subscription_id, event_ids, event_type, status, attempts, "
                    "first_attempt_at, last_attempt_at, last_http_status, last_error, body, "
                    "content_type, replay_requested_at, replay_claimed_at, log_day")


def bench_dlog(url, **env):
    tool = BUILD / "tests/bench/bench_dlog"
    assert tool.exists(), f"{tool} is missing (run make)"
    full = dict(os.environ, HOOKBRIDGE_DATABASE_URL=url, BENCH_DLOG_DELIVERIES=str(DELIVERIES),
                BENCH_DLOG_CLOCK_MS=str(CLOCK_MS), BENCH_DLOG_ODD="1",
                **{k: str(v) for k, v in env.items()})
    r = subprocess.run([str(tool)], env=full, capture_output=True, text=True, timeout=120 * SLOW)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def rows(cur, sql):
    cur.execute(sql)
    return cur.fetchall()


def test_a_first_attempt_logged_again_adds_its_attempt_and_changes_no_delivery(pg_cluster):
    once, twice = pg_cluster.migrated_database("dlog1"), pg_cluster.migrated_database("dlog2")
    try:
        r1 = bench_dlog(pg_cluster.url(once))
        r2 = bench_dlog(pg_cluster.url(twice), BENCH_DLOG_AGAIN=1)
        # Only the row whose id is no uuid is refused (the services log to stdout).
        assert r1.stdout.count("rejected by the database") == 1, r1.stdout[-2000:]
        assert r2.stdout.count("rejected by the database") == 1, r2.stdout[-2000:]
        c1, c2 = pg_cluster.connect(once), pg_cluster.connect(twice)
        try:
            with c1.cursor() as a, c2.cursor() as b:
                q = f"SELECT {DELIVERY_COLUMNS} FROM hookbridge.deliveries ORDER BY 1, log_day"
                got1, got2 = rows(a, q), rows(b, q)
                assert len(got1) == DELIVERIES + 4
                assert got2 == got1
                q = "SELECT count(*) FROM hookbridge.delivery_attempts"
                # every first attempt (and the odd rows') a second time
                assert rows(b, q)[0][0] == rows(a, q)[0][0] + DELIVERIES
                q = ("SELECT delivery_id, attempt, started_at, duration_ms, http_status, outcome,"
                     " error, response_snippet, subscription_id FROM hookbridge.delivery_attempts"
                     " WHERE attempt = 1 ORDER BY 1 LIMIT 3")
                first = rows(b, q)
                assert len(first) == 3 and first[0] == first[1]  # the same attempt, twice
        finally:
            c1.close()
            c2.close()
    finally:
        pg_cluster.drop_database(once)
        pg_cluster.drop_database(twice)


def test_every_kind_of_row_is_logged_and_a_malformed_id_costs_only_its_own(pg_cluster):
    db = pg_cluster.migrated_database("dlog3")
    try:
        bench_dlog(pg_cluster.url(db))
        conn = pg_cluster.connect(db)
        try:
            with conn.cursor() as cur:
                got = rows(cur, "SELECT delivery_id::text, status, attempts, last_error, "
                                "body IS NOT NULL, content_type, event_type, log_day::text, "
                                "last_http_status FROM hookbridge.deliveries "
                                "WHERE delivery_id::text LIKE '0b5e2f4a-%' ORDER BY 1")
                err = 'timeout "after" 30 s\\ ?('  # invalid UTF-8 made '?'
                assert got == [
                    ("0b5e2f4a-1c3d-4e5f-8a9b-0c1d2e3f4a5b", "failed", 3, err, True,
                     "application/cloudevents+json", "user.?.start", "2026-12-04", None),
                    # given in capitals: the same uuid
                    ("0b5e2f4a-1c3d-4e5f-8a9b-0c1d2e3f4a5c", "retry", 3, err, False, None,
                     "user.?.start", "2026-12-04", None),
                    # a dropped one keeps its payload too (replay_dropped)
                    ("0b5e2f4a-1c3d-4e5f-8a9b-0c1d2e3f4a5d", "dropped", 0, err, True,
                     "application/cloudevents+json", "user.?.start", "2026-12-04", None),
                    # in the same batch as the malformed id, still written
                    ("0b5e2f4a-1c3d-4e5f-8a9b-0c1d2e3f4a5e", "retry", 3, err, False, None,
                     "user.?.start", "2026-12-04", None),
                ]
                assert rows(cur, "SELECT count(*), count(DISTINCT delivery_id), "
                                 "count(*) FILTER (WHERE status = 'delivered') "
                                 "FROM hookbridge.deliveries") == [(DELIVERIES + 4,
                                                                    DELIVERIES + 4,
                                                                    DELIVERIES)]
                # the retried deliveries: attempt 2 delivered, first_attempt_at the first's
                got = rows(cur, "SELECT count(*) FROM hookbridge.deliveries d "
                                "JOIN hookbridge.delivery_attempts a1 "
                                "  ON a1.delivery_id = d.delivery_id AND a1.attempt = 1 "
                                "JOIN hookbridge.delivery_attempts a2 "
                                "  ON a2.delivery_id = d.delivery_id AND a2.attempt = 2 "
                                "WHERE d.status = 'delivered' AND d.attempts = 2 "
                                "  AND d.first_attempt_at = a1.started_at "
                                "  AND d.last_attempt_at = a2.started_at "
                                "  AND a1.outcome = 'retry' AND a1.error = 'HTTP 503'")
                assert 0 < got[0][0] < DELIVERIES // 5
        finally:
            conn.close()
    finally:
        pg_cluster.drop_database(db)
