"""Review 56: leftovers of the failover and clock work (reviews 53 to 55) as
production meets them: a server that refuses writes as read-only without
saying so, a failover that leaves a service on a hot standby,
`hookbridge-migrate status` read by a script on a host whose
clock is off.

Each check says what it did on main's binaries (0603895)."""
import os
import re
import subprocess
import time

from hbtest.clockshim import env as clock_env
from hbtest.pg import MIGRATIONS
from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier, produce
from test_delivery import event, sql
from test_promises import verified_active
from test_reactivate import delivery_of
from test_review54_faults import pair  # noqa: F401 (a fixture)

# Raises what a read-only server raises (SQLSTATE 25006) for the sessions
# listed in fenced, and for no other: the server reports nothing (as before
# PostgreSQL 14, or a connection made read-only by a proxy).
FENCE = """
CREATE TABLE public.fenced (pid int PRIMARY KEY);
CREATE FUNCTION public.fence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_backend_pid() IN (SELECT pid FROM public.fenced) THEN
        RAISE EXCEPTION 'cannot execute INSERT in a read-only transaction'
            USING ERRCODE = 'read_only_sql_transaction';
    END IF;
    RETURN NULL;
END $$;
"""
FENCE_INSERTS = ("CREATE TRIGGER fence BEFORE INSERT ON hookbridge.delivery_attempts "
                 "FOR EACH STATEMENT EXECUTE FUNCTION public.fence()")
FENCE_UPDATES = ("CREATE TRIGGER fence BEFORE UPDATE ON hookbridge.deliveries "
                 "FOR EACH STATEMENT EXECUTE FUNCTION public.fence()")


def dlog_pids(db_url):
    return [p for (p,) in sql(db_url, "SELECT pid FROM pg_stat_activity WHERE application_name "
                              "= 'hookbridge-dlog' AND datname = current_database()")]


def test_a_delivery_log_connection_refused_writes_without_a_report_connects_again(
        db_url, procs, workdir):
    """The delivery log's connection has every write refused with SQLSTATE
    25006 (read_only_sql_transaction) while the server reports neither
    in_hot_standby nor default_transaction_read_only (a server before
    PostgreSQL 14 turned read-only; here a trigger fences that one session).
    The writer takes it as a server that is not the primary: it drops the
    connection and connects again with its back-off, so the next delivery is
    logged within seconds on a new connection, and its log says why.

    On main (0603895): every round failed on the same connection ("cannot
    write, will retry: cannot execute INSERT in a read-only transaction
    (SQLSTATE 25006)") for as long as the fence stayed, and event 2's
    delivery was never logged. About 8 s."""
    broker = Broker(procs, workdir)
    rcv = Receiver(procs, workdir)
    verified_active(db_url, rcv.url)
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    e1 = event("user.session.start")
    produce(broker.bootstrap, [e1])
    wait_until(lambda: delivery_of(db_url, e1), 10 * SLOW, "event 1 logged")
    (fenced,) = dlog_pids(db_url)
    sql(db_url, FENCE)
    sql(db_url, FENCE_INSERTS)
    sql(db_url, "INSERT INTO public.fenced VALUES (%s)", fenced)

    t0 = time.monotonic()
    e2 = event("user.session.start")
    produce(broker.bootstrap, [e2])
    wait_until(lambda: delivery_of(db_url, e2), 6 * SLOW,
               "event 2 logged on a new connection while the old one stays fenced")
    print(f"event 2 logged {time.monotonic() - t0:.1f} s after it was produced")
    assert fenced not in dlog_pids(db_url)
    out = d.proc.output()
    assert "refused a write as read-only (SQLSTATE 25006)" in out, out[-3000:]
    assert "postgres:" not in out  # the URL's user info: no conninfo in messages


def test_a_store_request_connection_refused_writes_without_a_report_connects_again(
        db_url, procs, workdir):
    """The same for the subscription store's request lane: the retrier's
    replay claim (an UPDATE, every second) is refused with SQLSTATE 25006
    on its connection, the server reporting nothing. The lane drops that
    connection and the next claim, a second later, is answered on a new
    one: the retrier says its periodic requests are answered again.

    On main (0603895): the claim failed every second on the same
    connection for as long as the fence stayed (warned every 30 s), never
    answered. About 9 s."""
    broker = Broker(procs, workdir)
    r = Retrier(procs, db_url, broker.bootstrap)
    r.wait_ready()
    ((fenced,),) = wait_until(lambda: sql(
        db_url, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND "
        "application_name = 'hookbridge' AND query LIKE %s", "%claim_replays%"), 5 * SLOW,
        "the retrier's request lane to claim replays")
    sql(db_url, FENCE)
    sql(db_url, FENCE_UPDATES)
    sql(db_url, "INSERT INTO public.fenced VALUES (%s)", fenced)
    wait_until(lambda: "SQLSTATE 25006" in r.proc.output(), 5 * SLOW, "the claim refused")
    wait_until(lambda: "periodic requests are answered again" in r.proc.output(), 5 * SLOW,
               "the claim answered on a new connection")
    assert "refused a write as read-only (SQLSTATE 25006)" in r.proc.output()


def test_migrate_status_on_a_host_whose_clock_is_off_prints_only_its_table(db_url):
    """`hookbridge-migrate status` prints one line per migration on stdout,
    for scripts. On a host two minutes behind PostgreSQL its stdout is the
    same as on a host whose clock is right: the tool keeps no time by
    PostgreSQL's clock and has no word on this host's (the services say it
    at their start).

    On main (0603895): a JSON log line ({"time":...,"level":"warn",...,
    "msg":"this host's clock is 120.0 s behind PostgreSQL's..."}) came on
    stdout ahead of the table. About 1 s."""
    def status(extra):
        return subprocess.run([str(BIN / "hookbridge-migrate"), "status", "--dir",
                               str(MIGRATIONS)], capture_output=True, text=True, timeout=30 * SLOW,
                              env=dict(os.environ, HOOKBRIDGE_DATABASE_URL=db_url, **extra))
    right, behind = status({}), status(clock_env(-120))
    assert right.returncode == 0 and behind.returncode == 0, behind.stderr
    assert "0001_baseline" in right.stdout
    assert behind.stdout == right.stdout, behind.stdout


def test_the_retriers_sweep_answered_ends_the_warned_failures_of_its_periodic_requests(
        db_url, procs, workdir):
    """The retrier's periodic requests: the replay claim (every second), the
    sweep of failing endpoints and the log's upkeep. The replay claim alone
    fails (here its function renamed away); the sweep, every second with
    auto_deactivate_after = 4 s, is answered. The failure is warned of; the
    claims failing on while the sweeps are answered flood nothing (the
    warnings keep their 30 s pace), and nothing says the periodic requests
    are answered again until the claim is (review 59: on c36abc8 an
    answered sweep said so one second after each warning, while the claims
    went on failing). Once the claim is answered, that is said, once.

    On main (0603895): only an answered replay claim said so and ended the
    failures. About 11 s."""
    broker = Broker(procs, workdir)
    r = Retrier(procs, db_url, broker.bootstrap,
                extra_env={"HOOKBRIDGE_AUTO_DEACTIVATE_AFTER": "4s"})
    r.wait_ready()
    sql(db_url, "ALTER FUNCTION hookbridge.claim_replays(integer, interval) "
        "RENAME TO claim_replays_away")
    wait_until(lambda: "claim_replays" in r.proc.output(), 5 * SLOW, "the replay claim to fail")
    time.sleep(3)  # three more failed claims and answered sweeps
    said = re.findall(r'"msg":"([^"]*(?:claim_replays|answered again)[^"]*)"', r.proc.output())
    print(said)
    assert len(said) == 1 and "claim_replays" in said[0], said
    sql(db_url, "ALTER FUNCTION hookbridge.claim_replays_away(integer, interval) "
        "RENAME TO claim_replays")
    wait_until(lambda: "periodic requests are answered again" in r.proc.output(), 5 * SLOW,
               "the claim answered to end the failures")
    said = re.findall(r'"msg":"([^"]*(?:claim_replays|answered again)[^"]*)"', r.proc.output())
    assert len(said) == 2 and "answered again" in said[1], said


def test_a_service_whose_reconnect_finds_a_hot_standby_names_it_on_readyz(pair, procs, workdir):  # noqa: F811
    """The URL names two servers without target_session_attrs (any server
    will do, in order): the primary, then its hot standby. The dispatcher
    runs on the primary; the primary stops, and every reconnect finds the
    standby, where LISTEN fails. /readyz says the server is a hot standby,
    with no count-down of the next attempt (it would be stale when read);
    once the standby is promoted the dispatcher is ready again.

    On main (0603895): /readyz said only "database not connected" (the
    standby was named only when the dispatcher started on it), while the
    log said "database: LISTEN: the server is a hot standby, not the
    primary (...); reconnecting; next attempt in N s". About 8 s."""
    primary, replica, name = pair
    broker = Broker(procs, workdir)
    hosts = f"127.0.0.1:{primary.port},127.0.0.1:{replica.port}"
    d = Dispatcher(procs, f"postgresql://postgres@{hosts}/{name}", broker.bootstrap)
    d.wait_ready()
    primary.stop()
    wait_until(lambda: "next attempt in" in d.proc.output(), 10 * SLOW,
               "a reconnect to find the standby")
    code, body = wait_until(lambda: (got := d.get("/readyz")) and "standby" in got[1] and got,
                            3 * SLOW, "/readyz to name the standby")
    print(f"/readyz {code}: {body.strip()}")
    assert code == 503 and "hot standby, not the primary" in body, body
    assert "next attempt" not in body, body
    replica.promote()
    d.wait_ready(20 * SLOW)
