"""Review 64: promises of earlier reviews that no test held: the back-off of
a connection whose writes a read-only server keeps refusing (review 56),
hookbridge-producer when the brokers take nothing for 30 s, the ingest
endpoint's largest delivery, a dead server that keeps its connections open and
never answers the store's empty query (review 48), and the log line of a
Kafka topic deleted under the dispatcher.

Each check says what it did on main's binaries (58f732a)."""
import http.client
import json
import os
import signal
import subprocess
import time

import pytest

from hbtest.ingest import AUTH_HEADER, PATH, Ingest, envelope
from hbtest.procs import BIN, SLOW, wait_until
from hbtest.kafka import delete_topics
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier, produce, topic_records
from hbtest.tcpproxy import TcpProxy
from test_broker_frozen import freezable  # noqa: F401 (a fixture)
from test_delivery import event, sql
from test_promises import verified_active
from test_reactivate import delivery_of
from test_review45_faults import retrier_behind
from test_review18_faults import read_event
from test_review40_faults import finish  # (exit status or None if killed, out, err)
from test_review50_faults import env_for, freeze, kill_if_running, producing_until_the_brokers_freeze

PRODUCER = str(BIN / "hookbridge-producer")


def reconnection_gaps(proxy, n0, count, what):
    """The seconds between the `count` connections the proxy accepts after its
    n0-th, once it has accepted them (20 s at most)."""
    wait_until(lambda: len(proxy.accepted) >= n0 + count, 20 * SLOW, what)
    at = proxy.accepted[n0:n0 + count]
    return [round(b - a, 2) for a, b in zip(at, at[1:])]


def _via(db_url, port):
    host, rest = db_url.rsplit("@", 1)
    return f"{host}@127.0.0.1:{port}/{rest.split('/', 1)[1]}"


@pytest.mark.parametrize("far", [False, True], ids=["near", "50ms_away"])
def test_a_store_lane_whose_writes_a_read_only_server_keeps_refusing_backs_off_1_2_4_5_s(
        db_url, pg_cluster, procs, workdir, far):
    """The database is made read-only for new sessions (ALTER DATABASE ... SET
    default_transaction_read_only = on: a primary demoted, a cloud's
    read-only mode) and the retrier's request lane loses its connection:
    each new one has its replay claim refused with SQLSTATE 25006. The lane
    connects again after 1, 2, 4, then 5 s, as docs/operations.md says
    ("PostgreSQL failover"), and its claims are answered again within about
    5 s of the server taking writes.

    On main (58f732a): 2, 3, 5, 6, 6 s (PostgreSQL's log: connections at
    :50.5, :52.5, :55.5, :60.5, :66.5, :72.5): the lane connects only when
    a request comes, the claims come a second apart, and each came a few
    milliseconds before the attempt was due, so it waited a whole second
    more; readiness came back up to 6 s after the database. About 20 s.

    And with the database 50 ms away (the proxy holds each chunk; a connect
    and a refused claim then take over 250 ms): on 542c261 2, 3, 5, 6 s
    (CI 105 once: 2, 2, 4, 5 on a loaded machine), the back-off counted from
    the refusal, not from the attempt that made the refused connection, so
    the next claim, a second after the one that connected, came too early.
    About 25 s."""
    proxy = TcpProxy(pg_cluster.port)
    proxy.start()
    try:
        broker = Broker(procs, workdir)
        r = Retrier(procs, _via(db_url, proxy.port), broker.bootstrap)
        r.wait_ready()
        if far:
            proxy.delay = 0.05
        ((lane,),) = wait_until(lambda: sql(
            db_url, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND "
            "application_name = 'hookbridge' AND query LIKE %s", "%claim_replays%"), 5 * SLOW,
            "the retrier's request lane to claim replays")
        db = db_url.rsplit("/", 1)[1]
        admin = pg_cluster.connect()
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on')
            n0 = len(proxy.accepted)
            cur.execute("SELECT pg_terminate_backend(%s)", (lane,))
        wait_until(lambda: "the server is read-only (default_transaction_read_only)"
                   in r.proc.output(), 5 * SLOW, "a claim refused")
        gaps = reconnection_gaps(proxy, n0, 5, "four reconnections of the request lane")
        print(f"the request lane reconnected after {gaps} s")
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{db}" RESET default_transaction_read_only')
        t1 = time.monotonic()
        wait_until(lambda: "periodic requests are answered again" in r.proc.output(), 8 * SLOW,
                   "the claims answered again")
        back = time.monotonic() - t1
        print(f"answered again {back:.1f} s after the server took writes")
        for gap, want in zip(gaps, (1, 2, 4, 5)):
            assert want - 0.5 <= gap <= want + 0.5 * SLOW, gaps
        assert back <= 5.5 * SLOW + (1.0 if far else 0.0)  # far: a connect and a claim, 0.5 s
        assert len(proxy.accepted) - n0 <= 7  # no connection a second meanwhile
    finally:
        proxy.close()


def test_a_run_whose_local_queue_stays_full_30_s_stops_and_says_where_to_go_on(
        freezable):  # noqa: F811
    """hookbridge-producer reading stdin while the brokers take nothing (a
    frozen devbroker) and its local queue (here 10 events) is full: it waits
    30 s for room, then stops reading, as a Ctrl-C would: the queued lines
    are named as unsent, the run says at which line the input was left and
    why, and exits 1 within the 5 s drain; no line is counted as failed for
    the queue.

    On main (58f732a): line 12 failed after 30 s ("line 12: produce to
    identity.events: Local: Queue full"), then line 13 30 s later, and so on,
    30 s a line for as long as the brokers stayed away; stopped by hand
    after 75 s it said "stopped after line 13 of stdin", past the two lines
    that had failed. About 40 s."""
    lines = [event("user.session.start") for _ in range(15)]
    proc = producing_until_the_brokers_freeze(freezable, lines)
    try:
        t0 = time.monotonic()
        proc.stdin.write("".join(json.dumps(e) + "\n" for e in lines[1:]))
        rc, out, err = finish(proc, 45 * SLOW)
        took = time.monotonic() - t0
    finally:
        kill_if_running(proc)
        freezable.proc.signal(signal.SIGCONT)
    print(f"exit {rc} after {took:.1f} s\n{out[-2000:]}\n{err}")
    assert rc == 1, out + err
    assert 29 <= took <= 38 * SLOW, f"{took:.1f} s"
    assert "took no line for 30 s, the local queue full" in out, out
    assert "produced 1, failed 10" in out, out + err
    assert "hookbridge-producer: the lines left unsent: 2-11" in err, err
    assert ("stopped after line 11 of stdin (the Kafka brokers took no event for 30 s: the "
            "local queue stayed full)") in err, err
    assert "Queue full" not in err, err


def _page(size):
    """An event-hook delivery of exactly `size` bytes: events of about
    240 KB each (the largest an event may be is 256 KiB, encoded)."""
    events, total = [], len(json.dumps(envelope([])))
    while True:
        e = event("user.session.start")
        e["displayMessage"] = ""
        bare = len(json.dumps(e)) + (2 if events else 0)  # ", " between events
        events.append(e)
        if total + bare + 240_000 >= size:
            e["displayMessage"] = "x" * (size - total - bare)
            body = json.dumps(envelope(events)).encode()
            assert len(body) == size
            return body, len(events)
        e["displayMessage"] = "x" * 240_000
        total += bare + 240_000


def test_a_64_mib_delivery_is_taken_whole_and_a_byte_more_is_refused_unread(broker, procs):
    """The ingest endpoint with its body limit at the highest it takes,
    HOOKBRIDGE_INGEST_MAX_BODY_BYTES=67108864 (64 MiB): a delivery of exactly
    64 MiB (280 events) is answered 200 with every event produced; one byte
    more is answered 413, none of its events produced; a limit above 64 MiB
    stops the producer at start (exit 2) naming the variable. About 10 s."""
    r = subprocess.run([PRODUCER, "--listen", "127.0.0.1:0"], capture_output=True, text=True,
                       timeout=20 * SLOW,
                       env=env_for(broker.bootstrap, HOOKBRIDGE_INGEST_AUTH_VALUE="s3cret-value",
                                   HOOKBRIDGE_INGEST_MAX_BODY_BYTES="67108865"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "HOOKBRIDGE_INGEST_MAX_BODY_BYTES" in r.stderr, r.stderr
    assert "s3cret-value" not in r.stdout + r.stderr

    ing = Ingest(procs, broker.bootstrap,
                 extra_env={"HOOKBRIDGE_INGEST_MAX_BODY_BYTES": "67108864",
                            "HOOKBRIDGE_INGEST_TIMEOUT": "60s", "HOOKBRIDGE_LOG_LEVEL": "info"})
    ing.wait_ready()
    body, n = _page(64 << 20)
    t0 = time.monotonic()
    status, _, answer = ing.post(body, timeout=120)
    print(f"64 MiB, {n} events: {status} {answer} in {time.monotonic() - t0:.1f} s")
    assert (status, answer) == (200, {"produced": n})
    produced = ing.metric('hookbridge_ingest_events_total{outcome="produced"}')
    assert produced == n, produced

    # One byte more, sent chunked (no Content-Length to refuse it by): read
    # as it comes, nothing kept, 413 at its end.
    more, _ = _page((64 << 20) + 1)
    conn = http.client.HTTPConnection("127.0.0.1", ing.port, timeout=120 * SLOW)
    conn.request("POST", PATH, body=(more[i:i + 65536] for i in range(0, len(more), 65536)),
                 encode_chunked=True, headers={AUTH_HEADER: ing.auth_value,
                                               "Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    assert resp.status == 413, resp.read()
    conn.close()
    assert ing.metric('hookbridge_ingest_events_total{outcome="produced"}') == n
    assert ing.proc.alive()


def test_a_retry_due_while_the_store_s_backend_answers_nothing_goes_within_25_s(
        pg_cluster, db_url, procs, workdir):
    """The retrier's subscription store connection stays open but its
    server process answers nothing (SIGSTOP: the kernel still acknowledges
    what is sent, so tcp_user_timeout never fires; a hung proxy or pooler in
    between does the same), the rest of the server answering. A's retry
    comes due meanwhile. The store's check of its idle connection is not
    answered: due retries wait (docs/operations.md, PostgreSQL not
    answering), but the connection is given up 15 s after the check went
    unanswered, made again, the subscriptions loaded again, and A's retry
    is delivered.

    On main (58f732a): the retrier held A's retry for as long as the
    backend stayed stopped ("due retries wait until the subscriptions are
    current again (the check of the idle connection to the database is
    not answered ...)"): still held after 40 s, with no bound, though every
    other connection to the server was answered. About 30 s."""
    proxy = TcpProxy(pg_cluster.port)
    proxy.start()
    stopped = None
    try:
        broker, receiver, d, r, sub, a = retrier_behind(
            proxy, pg_cluster, procs, workdir, db_url, "15s")
        # the retrier's store connection: the one of its backends that has
        # sent the empty query of its check (within 5 s of quiet)
        (stopped,) = wait_until(lambda: [
            pid for pid, port, q in sql(
                db_url, "SELECT pid, client_port, query FROM pg_stat_activity "
                "WHERE datname = current_database()")
            if port in proxy.ports and q == ""], 10 * SLOW,
            "the retrier's store to check its idle connection")
        os.kill(stopped, signal.SIGSTOP)
        t0 = time.monotonic()
        _, status, n, err = wait_until(
            lambda: (row := delivery_of(db_url, a)) and row[1] != "retry" and row, 40 * SLOW,
            "A's retry to settle while the store's backend is stopped")
        took = time.monotonic() - t0
        print(f"A {status} after {n} attempt(s), {took:.1f} s after the backend stopped")
        assert status == "delivered", (status, err)
        assert took <= 25 * SLOW
        out = r.proc.output()
        assert "the check of the idle connection got no answer in 15 s" in out, out[-3000:]
        assert "subscriptions current again: 1 due retry that waited for them goes on" in out
    finally:
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        proxy.close()


def test_a_deleted_topic_s_revoked_partitions_are_not_said_to_have_a_new_owner(
        apache_kafka, db_url, procs, workdir):
    """On Apache Kafka the events topic is deleted under a running
    dispatcher that has consumed from it. Its partitions are revoked, and
    the commit of their offsets fails (Local: Group partition assignment
    lost). The warning says the topic was deleted and no consumer takes the
    partitions over.

    On main (58f732a): "committing the offsets of 6 revoked partition(s)
    failed: Local: Group partition assignment lost; their new owner starts
    from the offsets committed before and delivers again what this process
    finished after them": there is no new owner, the topic is gone, and
    nothing is delivered again. About 15 s."""
    space = apache_kafka.space()
    rcv = Receiver(procs, workdir)
    d = Dispatcher(procs, db_url, space.bootstrap)
    d.wait_ready(30)
    verified_active(db_url, rcv.url)
    e = event("user.session.start")
    produce(space.bootstrap, [e])
    wait_until(lambda: delivery_of(db_url, e), 15 * SLOW, "the event delivered and logged")
    delete_topics(space.bootstrap, [space.events_topic])
    wait_until(lambda: "revoked partition(s) failed" in d.proc.output(), 30 * SLOW,
               "the dispatcher's commit at the revocation to fail")
    said = [line for line in d.proc.output().splitlines() if "revoked partition(s) failed" in line]
    print("\n".join(said))
    assert all(f"their topic ({space.events_topic}) was deleted: no consumer takes them over"
               in line for line in said), said
    assert not any("new owner" in line for line in said), said


def test_the_delivery_log_refused_by_a_read_only_server_backs_off_250_ms_doubling_to_5_s(
        db_url, pg_cluster, procs, workdir):
    """The same for the dispatcher's delivery log: the database read-only for
    new sessions, the log's connection lost, a delivery to write. Each new
    connection has its write refused with SQLSTATE 25006 and is dropped; the
    next comes after the log's back-off, 250 ms doubling to 5 s
    (lib/hb_dlog.c), not at once, and the row is written within about 5 s
    of the server taking writes again. About 25 s."""
    proxy = TcpProxy(pg_cluster.port)
    proxy.start()
    try:
        broker = Broker(procs, workdir)
        rcv = Receiver(procs, workdir)
        verified_active(db_url, rcv.url)
        d = Dispatcher(procs, _via(db_url, proxy.port), broker.bootstrap)
        d.wait_ready()
        db = db_url.rsplit("/", 1)[1]
        admin = pg_cluster.connect()
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on')
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                        "datname = %s AND application_name = 'hookbridge-dlog'", (db,))
        n0 = len(proxy.accepted)
        e = event("user.session.start")
        produce(broker.bootstrap, [e])
        gaps = reconnection_gaps(proxy, n0, 7, "six reconnections of the delivery log")
        print(f"the delivery log reconnected after {gaps} s")
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{db}" RESET default_transaction_read_only')
        t1 = time.monotonic()
        wait_until(lambda: delivery_of(db_url, e), 8 * SLOW, "the delivery logged")
        back = time.monotonic() - t1
        print(f"logged {back:.1f} s after the server took writes")
        out = d.proc.output()
        assert "delivery log: cannot write, will retry: the server is read-only " \
            "(default_transaction_read_only)" in out, out[-3000:]
        for gap, want in zip(gaps, (0.25, 0.5, 1, 2, 4, 5)):
            assert want * 0.8 <= gap <= want + 0.5 * SLOW, gaps
        assert back <= 5.5 * SLOW
    finally:
        proxy.close()


def test_a_delivery_larger_than_the_local_queue_while_the_brokers_are_frozen_is_503_then_taken(
        freezable, procs):  # noqa: F811
    """docs/ingest.md, What each answer means: a delivery with more events
    than librdkafka's local queue holds (here 10), while the brokers take
    nothing (a frozen devbroker), waits HOOKBRIDGE_INGEST_TIMEOUT (here 3 s)
    for room and is answered 503 with Retry-After, the warn line naming its
    events; Okta's retry once the brokers are back is answered 200 with
    every event produced, and every event is on the topic. About 10 s."""
    ing = Ingest(procs, freezable.bootstrap,
                 extra_env={"HOOKBRIDGE_KAFKA_QUEUE_BUFFERING_MAX_MESSAGES": "10",
                            "HOOKBRIDGE_INGEST_TIMEOUT": "3s"})
    ing.wait_ready()
    events = [event("user.session.start") for _ in range(15)]
    freeze(freezable)
    try:
        t0 = time.monotonic()
        status, headers, answer = ing.post(events)
        took = time.monotonic() - t0
    finally:
        freezable.proc.signal(signal.SIGCONT)
    print(f"{status} {answer} after {took:.1f} s")
    assert status == 503 and "retry-after" in headers, (status, headers, answer)
    assert 2.5 <= took <= 6 * SLOW, took
    warned = [line for line in ing.proc.output().splitlines()
              if '"level":"warn"' in line and events[0]["uuid"] in line]
    assert warned, ing.proc.output()[-3000:]
    ing.wait_ready(30)
    status, _, answer = ing.post(events)
    assert (status, answer) == (200, {"produced": 15})
    assert {e["uuid"] for e in events} <= {read_event(m.value)["uuid"]
                        for m in topic_records(freezable.bootstrap, "identity.events", want=15)}
