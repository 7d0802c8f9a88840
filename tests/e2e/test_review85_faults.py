"""Review 85: what grows while the services run for days (RSS, open files,
/metrics, the state tables) under subscription churn, failing endpoints and
many distinct ordering keys."""
import json
import re
import statistics
import time
import uuid
from pathlib import Path

from hbtest.lifecycle import ACTIVE, sql, wait_taken
from hbtest.procs import BIN, SLOW, free_port, wait_until
from hbtest.stack import Dispatcher, produce


WAVE = 10000


def rss_kib(proc):
    """The process's resident set (KiB), from /proc."""
    status = Path(f"/proc/{proc.pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))


def settled_rss(svc, samples=5):
    """The median of a few RSS readings 0.2 s apart: one reading can catch a
    burst of allocations the next pass frees."""
    vals = []
    for _ in range(samples):
        vals.append(rss_kib(svc.proc))
        time.sleep(0.2)
    return statistics.median(vals)


def keyed_events(n):
    """n user.session.start events, each with an actor of its own: a key the
    dispatcher never saw before."""
    out = []
    for _ in range(n):
        user = "00u" + uuid.uuid4().hex[:17]
        out.append({"uuid": str(uuid.uuid4()), "eventType": "user.session.start",
                    "displayMessage": "r85", "severity": "INFO",
                    "actor": {"id": user, "type": "User", "alternateId": f"{user}@example.com"},
                    "target": [{"id": user, "type": "User"}],
                    "outcome": {"result": "SUCCESS"}})
    return out


def test_keys_of_an_ordered_subscription_seen_once_do_not_pile_up_in_memory(
        db_url, broker, procs, workdir):
    """docs/operations.md, Scaling: an ordered subscription (options.ordering)
    keeps what the dispatcher knows of each key (its chain) in memory after
    the key's last event: a minute, five when the key's last delivery waits
    in a delay tier, and nothing else bounded them. With events keyed by
    user (the actor, as Okta's are), an endpoint that is down and a
    dispatcher reading a backlog as fast as it can, every event left about
    900 bytes for five minutes: a million events (an hour's backlog at 300
    a second) would take about 900 MB, and the pod is OOM-killed.
    HOOKBRIDGE_MAX_ORDERED_KEYS (default 100,000) bounds them: at that many
    the idle ones are forgotten at once, and a key seen again asks the
    delivery log for its end first, as after a minute.

    Measured as growth between two plateaus, each after all of a wave's
    10,000 events (every one a new key) were read and parked: with the
    bound at 2,000 keys, the third and fourth waves leave the RSS within
    10 MiB of where the second took it (4.8 MiB here), and
    hookbridge_ordered_keys stays at most twice the bound (391 to 1,342).
    main's dispatcher (5800dcc) grew 18.6 MiB over those two waves (37.8,
    44.3, 50.4, 62.9 MiB after each); with the fix, four runs: 4.8, 3.3,
    -1.3, 6.0 MiB. Under sanitizers (whose allocator keeps freed memory a
    while) only the keys are checked. About 16 s (25 s on a loaded machine)."""
    dead = free_port()  # nothing listens there: every attempt is refused
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={
        "HOOKBRIDGE_MAX_ORDERED_KEYS": "2000", "HOOKBRIDGE_LOG_LEVEL": "info",
        "HOOKBRIDGE_CIRCUIT_FAILURES": "3", "HOOKBRIDGE_CONNECT_TIMEOUT": "1s"})
    d.wait_ready(30)
    sub = sql(db_url, "SELECT hookbridge.register('r85', %s, %s, %s::jsonb)",
              f"http://127.0.0.1:{dead}/hook", ["user.session.start"],
              json.dumps({"ordering": "actor"}))[0][0]
    # as if its challenge had been answered (nothing listens to answer it)
    sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
        "verified_at = now(), status = 'active' WHERE id = %s", sub)
    wait_taken(d, [sub], ACTIVE)

    read = 0
    rss, keys = [], []
    for n in (WAVE,) * 4:
        produce(broker.bootstrap, keyed_events(n))
        read += n
        wait_until(lambda: d.metric("hookbridge_messages_consumed_total") >= read, 60 * SLOW,
                   f"the dispatcher to read {read} events")
        wait_until(lambda: d.metric("hookbridge_deliveries_total{outcome=\"retry\"}") >= read,
                   60 * SLOW, f"the {read} deliveries to be parked in the delay tier")
        rss.append(settled_rss(d))
        keys.append(d.metric("hookbridge_ordered_keys", None))
    mib = [round(r / 1024, 1) for r in rss]
    print(f"RSS after each wave of {WAVE} new keys: {mib} MiB; ordered keys kept: {keys}")
    # the first two waves fill what is reused after (the hash tables, the
    # broker's buffers, malloc's arenas); two more then. A sanitizer build
    # keeps what is freed for a while (ASan's quarantine): the keys only.
    assert BIN.name == "bin-san" or mib[3] - mib[1] < 10, \
        f"the dispatcher's RSS after each wave of {WAVE} new keys: {mib} MiB"
    assert all(k is not None and k <= 2 * 2000 for k in keys), \
        f"ordered keys kept after each wave: {keys} (HOOKBRIDGE_MAX_ORDERED_KEYS=2000)"
    assert d.proc.alive()
