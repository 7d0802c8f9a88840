"""Review 68: a rolling upgrade, the previous release's dispatcher and
retrier side by side with this one's against this release's schema
(docs/operations.md, Migrations and upgrades), on the devbroker and on
Apache Kafka.

Opt-in: it needs the previous release's binaries, which `make test` does not
build (too slow for CI). Build them in a worktree of their own and point
HOOKBRIDGE_TEST_OLD_BIN at its bin directory (its hookbridge-migrate finds
that tree's migrations/ and sql/ beside it):

    git -C /work/main worktree add /tmp/hb-old 58f732a
    make -C /tmp/hb-old -j2 all
    HOOKBRIDGE_TEST_OLD_BIN=/tmp/hb-old/bin HOOKBRIDGE_BIN=$PWD/bin \\
        python3 -m pytest -q tests/e2e/test_review68_faults.py

Without it the test is skipped. 58f732a is the last release before
migration 0014 (previews given back, stale drops sent as replays)."""
import collections
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hbtest import stack
from hbtest.procs import BIN, wait_until
from hbtest.stack import Dispatcher, Receiver, Retrier, produce
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql

OLD_BIN = os.environ.get("HOOKBRIDGE_TEST_OLD_BIN")
SCHEDULE = "2s,4s,8s"
ENV = {"HOOKBRIDGE_RETRY_SCHEDULE": SCHEDULE, "HOOKBRIDGE_RETRY_JITTER": "0",
       # every first request fails: the circuit is not what this is about
       "HOOKBRIDGE_CIRCUIT_FAILURES": "0"}
DROP_WHY = "subscription was deactivated after this delivery began"


def migrate_up(url, bindir):
    r = subprocess.run([str(Path(bindir) / "hookbridge-migrate"), "up"],
                       env=dict(os.environ, HOOKBRIDGE_DATABASE_URL=url),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{bindir}: up exited {r.returncode}: {r.stdout}{r.stderr}"
    return r.stdout


def functions(url):
    """Every function of schema hookbridge as defined now (one text)."""
    return sql(url, "SELECT string_agg(pg_get_functiondef(p.oid), E'\\n' "
               "ORDER BY p.oid::regprocedure::text) FROM pg_proc p "
               "JOIN pg_namespace n ON n.oid = p.pronamespace "
               "WHERE n.nspname = 'hookbridge' AND p.prokind = 'f'")[0][0]


@pytest.mark.apache
@pytest.mark.skipif(not OLD_BIN, reason="needs the previous release's binaries: "
                    "HOOKBRIDGE_TEST_OLD_BIN (see the module's docstring)")
def test_a_rolling_upgrade_with_old_and_new_side_by_side_loses_and_repeats_nothing(
        pg_cluster, new_broker, procs, workdir):
    """The previous release's stack (its migrations, two dispatchers, two
    retriers) delivers a stream of events to a plain, a batching and an
    ordered subscription whose endpoints fail every first request (retries
    wait on the delay tiers), a preview is asked for, a subscription is
    deactivated with retries pending, and a drop that an earlier release's
    race left counted but dropped waits in the log. Then this release's
    `hookbridge-migrate up` runs under them; the operator takes the
    deactivation back (activate, replay_dropped) while only old services
    run; the dispatchers and retriers are replaced one at a time; an old
    pod restarted meanwhile runs the old `up`; a dispatcher and a retrier
    are rolled back to the old release. What a user sees: every event
    acknowledged once (no duplicate even), the ordered one in order, every
    preview delivered (old dispatchers against the new sql/70_previews.sql),
    the deactivation's events and the old race's drop delivered by old
    retriers calling the new claim_replays, the old `up` saying the
    database is ahead and leaving the new functions as they are."""
    old, new = Path(OLD_BIN), BIN
    url = pg_cluster.url(pg_cluster.create_database("roll"))
    migrate_up(url, old)

    def start(cls, bindir, name):
        stack.BIN = Path(bindir)
        try:
            return cls(procs, url, broker.bootstrap, extra_env=ENV, name=name)
        finally:
            stack.BIN = new

    def receiver(name, **kw):
        return Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                        name=name, args=["--quiet"], **kw)

    broker = new_broker(retry_schedule=SCHEDULE)
    rcv = {k: receiver(f"r{k}", fail_first=1)
           for k in ("plain", "batch", "ordered", "deact", "stale")}
    rcv["preview"] = receiver("rpreview")
    svcs = {"d1": start(Dispatcher, old, "d1-old"), "d2": start(Dispatcher, old, "d2-old"),
            "r1": start(Retrier, old, "r1-old"), "r2": start(Retrier, old, "r2-old")}
    for s in svcs.values():
        s.wait_ready()
    session = ["user.session.start"]
    subs = {"plain": register_verified(url, rcv["plain"].url, session),
            "batch": register_verified(url, rcv["batch"].url, session,
                                       {"batch_max": 5, "batch_window_ms": 500}),
            "ordered": register_verified(url, rcv["ordered"].url, ["user.session.end"],
                                         {"ordering": "actor"}),
            "deact": register_verified(url, rcv["deact"].url, ["user.account.lock"]),
            "stale": register_verified(url, rcv["stale"].url, ["user.account.unlock"]),
            "preview": register_verified(url, rcv["preview"].url, ["user.account.unlock"])}
    # A drop the previous release's race left (review 63): counted by
    # replay_dropped, its resume written, then dropped by the retrier.
    stale_id = sql(
        url, "INSERT INTO hookbridge.deliveries (delivery_id, subscription_id, event_ids, "
        "event_type, status, attempts, first_attempt_at, last_attempt_at, last_error, body, "
        "log_day, resume_requested_at) SELECT gen_random_uuid(), s.id, gen_random_uuid()::text, "
        "'user.account.unlock', 'dropped', 1, now() - interval '2 minutes', now(), %s, "
        "'{\"stale\": 1}', (now() AT TIME ZONE 'UTC')::date, now() - interval '1 minute' "
        "FROM hookbridge.subscriptions s WHERE s.id = %s RETURNING delivery_id::text",
        DROP_WHY, subs["stale"])[0][0]
    sql(url, "SELECT hookbridge.deactivate(%s)", subs["stale"])
    sql(url, "SELECT hookbridge.activate(%s)", subs["stale"])
    sql(url, "UPDATE hookbridge.deliveries SET resume_requested_at = clock_timestamp() "
        "WHERE delivery_id = %s", stale_id)

    produced, ordered, stop = [], [], threading.Event()
    actors = [f"00uroll{i:05d}" for i in range(3)]

    def produce_stream():
        i = 0
        while not stop.is_set():
            evs = [event("user.session.start", a) for a in actors]
            # the ordered ones slower: each waits for its first retry (2 s)
            ends = [event("user.session.end", a) for a in actors] if i % 6 == 0 else []
            produce(broker.bootstrap, evs + ends)
            produced.extend(e["uuid"] for e in evs)
            ordered.extend(e["uuid"] for e in ends)
            i += 1
            time.sleep(0.5)
    stream = threading.Thread(target=produce_stream)
    stream.start()
    try:
        locks = [event("user.account.lock") for _ in range(3)]
        produce(broker.bootstrap, locks)
        wait_until(lambda: len(rcv["deact"].posts()) >= 3, 20, "the first attempts to fail")
        sql(url, "SELECT hookbridge.deactivate(%s)", subs["deact"])
        previews = [sql(url, "SELECT hookbridge.preview(%s)", subs["preview"])[0][0]]
        time.sleep(3)  # some of the deactivated ones dropped when due (old retriers)
        assert sql(url, "SELECT status FROM hookbridge.deliveries WHERE delivery_id = %s",
                   stale_id) == [("dropped",)], "the old claim_replays leaves it dropped"

        up = migrate_up(url, new)
        assert "applied 0014_stale_drops_index.sql" in up
        new_functions = functions(url)
        # old services only, against the new functions
        previews.append(sql(url, "SELECT hookbridge.preview(%s)", subs["preview"])[0][0])
        sql(url, "SELECT hookbridge.activate(%s)", subs["deact"])
        assert sql(url, "SELECT hookbridge.replay_dropped(%s, now() - interval '1 hour')",
                   subs["deact"]) == [(3,)]
        wait_until(lambda: sql(url, "SELECT status FROM hookbridge.deliveries "
                               "WHERE delivery_id = %s", stale_id) == [("delivered",)],
                   20, "an old retrier to send the old race's drop (the new claim_replays)")

        # replaced one at a time
        for key in ("d1", "r1", "d2", "r2"):
            svcs[key].proc.stop()
            cls = Dispatcher if key[0] == "d" else Retrier
            svcs[key] = start(cls, new, f"{key}-new")
            svcs[key].wait_ready()
            if key == "d1":
                previews.append(sql(url, "SELECT hookbridge.preview(%s)", subs["preview"])[0][0])
            time.sleep(2)
        # an old pod restarted during the rollout: its init container
        out = migrate_up(url, old)
        assert "the database is ahead of this release" in out, out
        assert functions(url) == new_functions, "the old up put its functions back"
        # rolled back
        for key in ("r2", "d2"):
            svcs[key].proc.stop()
            svcs[key] = start(Retrier if key[0] == "r" else Dispatcher, old, f"{key}-back")
            svcs[key].wait_ready()
        previews.append(sql(url, "SELECT hookbridge.preview(%s)", subs["preview"])[0][0])
        time.sleep(2)
    finally:
        stop.set()
        stream.join()

    wait_until(lambda: sql(url, "SELECT count(*) FROM hookbridge.deliveries "
                           "WHERE status NOT IN ('delivered')") == [(0,)], 90,
               "every delivery to be delivered")
    wait_until(lambda: sql(url, "SELECT count(*) FROM hookbridge.previews "
                           "WHERE status = 'delivered' AND id = ANY (%s::uuid[])",
                           previews) == [(len(previews),)], 30, "every preview delivered")
    for k, want in (("plain", produced), ("batch", produced), ("ordered", ordered)):
        got = collections.Counter(e["uuid"] for _, e in rcv[k].events())
        assert [u for u in want if got[u] != 1] == [], f"{k}: each event once"
    order = {u: i for i, u in enumerate(ordered)}
    for a in actors:
        seen = [order[e["uuid"]] for _, e in rcv["ordered"].events() if e["actor"]["id"] == a]
        assert seen == sorted(seen), f"actor {a} out of order"
    assert sorted(e["uuid"] for _, e in rcv["deact"].events()) == sorted(
        e["uuid"] for e in locks)
    assert [r["headers"]["webhook-id"] for r in rcv["stale"].posts()
            if r["status"] == 204] == [stale_id]
    for p in procs.procs:
        assert '"level":"error"' not in p.output(), f"{p.name} said an error"
