"""Review 53: time as production meets it. The dispatcher and the retrier run
on hosts whose wall clocks disagree with each other and with PostgreSQL's by
seconds to hours (a node whose NTP broke, a VM resumed from a pause), and NTP
steps a clock while they run. A time one process writes (a retry's due time
in its delay-tier message, a secret's expiry stamped by PostgreSQL) was
judged by another's wall clock, and a wait inside one process (a deferred
retry) by its own wall clock: a retrier ahead sent retries before the delay
(or the Retry-After) the endpoint asked for, a retrier whose clock NTP set
back held every waiting retry that much longer, a dispatcher behind signed
with a rotated secret past its grace. The services now judge those times by
PostgreSQL's clock, advanced by their monotonic one (docs/operations.md,
Clocks), and say when their host's clock is off.

The clocks are moved with an LD_PRELOAD shim (hbtest/clockshim.py) for one
process at a time; PostgreSQL, the devbroker and the receiver keep the real
time. Each check says what it did on main's binaries (2148894)."""
import re
import subprocess
import time

import pytest

from hbtest.clockshim import SteppedClock, env as clock_env
from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier, produce
from test_delivery import event, sql
from test_promises import verified_active

NEW_SECRET = "whsec_" + "bmV3LXNlY3JldC1mb3ItcmV2aWV3LTUzLWNsb2Nrcy0h"


def signatures(post):
    return post["headers"]["webhook-signature"].split()


def test_skewed_hosts_neither_sign_past_the_grace_nor_retry_early(db_url, procs, workdir):
    """The dispatcher's host is an hour behind, the retrier's two minutes
    ahead; PostgreSQL has the right time. A secret rotated with 2 s of grace
    must be gone from the signatures once the grace is over, and a failed
    attempt's retry must come no sooner than the schedule's 4 s after it.
    Both services say that their host's clock is off, and by how much (in
    their log and in hookbridge_clock_skew_seconds).

    Checked to fail on main's binaries (2148894): the delivery made 3 s
    after the rotation is signed with both secrets (the old one's grace ends
    an hour later by the dispatcher's clock), the retry comes 0.1 s after
    the first attempt, and neither service says a word about its clock.
    About 10 s."""
    schedule = "4s"
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0"}
    broker = Broker(procs, workdir, retry_schedule=schedule)
    rcv = Receiver(procs, workdir, fail_first=1)
    sub = verified_active(db_url, rcv.url)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=dict(env, **clock_env(-3600)))
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=dict(env, **clock_env(120)))
    d.wait_ready()
    r.wait_ready()

    sql(db_url, "SELECT hookbridge.rotate_secret(%s, interval '2 seconds', %s)", sub, NEW_SECRET)
    time.sleep(3)  # the old secret's grace is over, by PostgreSQL's clock
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(rcv.posts()) >= 2, 15 * SLOW, "the first attempt and its retry")
    first, retry = rcv.posts()[:2]
    gap = (retry["time_ms"] - first["time_ms"]) / 1000
    print(f"signatures: {len(signatures(first))}, retry {gap:.2f} s after the first attempt")
    assert len(signatures(first)) == 1, "signed with the rotated secret past its grace"
    assert retry["headers"]["webhook-id"] == first["headers"]["webhook-id"]
    assert gap >= 4 - 0.05, f"retried {gap:.2f} s after the first attempt, before its 4 s"
    assert "this host's clock is 3600." in d.proc.output() and "behind PostgreSQL's" \
        in d.proc.output(), d.proc.output()[-3000:]
    assert "this host's clock is 120." in r.proc.output() and "ahead of PostgreSQL's" \
        in r.proc.output(), r.proc.output()[-3000:]
    assert abs(d.metric("hookbridge_clock_skew_seconds") + 3600) < 1
    assert abs(r.metric("hookbridge_clock_skew_seconds") - 120) < 1


def test_a_retrier_whose_clock_ntp_sets_back_an_hour_does_not_hold_its_retries(
        db_url, procs, workdir, tmp_path):
    """The retrier holds a retry due 5 s after the first attempt when NTP
    steps its host's clock back an hour (its clock was ahead; the
    dispatcher's is right). The retry must still come about 5 s after the
    first attempt, not an hour later.

    Checked to fail on main's binaries (2148894): nothing comes in the
    test's 12 s (the deferred partition waits for its due time on the
    stepped wall clock, an hour away). About 8 s."""
    schedule = "5s"
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0"}
    clock = SteppedClock(tmp_path / "retrier-clock", 0)
    broker = Broker(procs, workdir, retry_schedule=schedule)
    rcv = Receiver(procs, workdir, fail_first=1)
    verified_active(db_url, rcv.url)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=dict(env, **clock.env()))
    d.wait_ready()
    r.wait_ready()

    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: rcv.posts(), 10 * SLOW, "the first attempt")
    wait_until(lambda: "it waits at" in r.proc.output(), 5 * SLOW, "the retrier to hold it")
    clock.step(-3600)
    wait_until(lambda: len(rcv.posts()) >= 2, 12 * SLOW, "the retry, due 5 s after the first")
    first, retry = rcv.posts()[:2]
    gap = (retry["time_ms"] - first["time_ms"]) / 1000
    print(f"the retry came {gap:.2f} s after the first attempt")
    assert retry["headers"]["webhook-id"] == first["headers"]["webhook-id"]
    assert 5 - 0.05 <= gap < 5 + 3 * SLOW, f"retried {gap:.2f} s after the first attempt"


def test_okta_logs_waits_out_a_rate_limit_by_oktas_clock_not_its_hosts(broker):
    """hookbridge-producer --okta-logs on a host whose clock is 10 minutes
    behind: Okta answers 429 with X-Rate-Limit-Reset 2 s after its own Date.
    The producer must wait those 2 s (3 at most) and go on, not 10 minutes (cut
    to 120 s) for every 429. (A host ahead waited 1 s and asked again, as
    often as HB_OKTALOG_MAX_LIMITED allows, until Okta's reset came.)

    Checked to fail on main's binaries (2148894): "waiting 120 s", and the
    run is still waiting when the test gives up after 15 s. About 3 s."""
    from test_okta_logs import WINDOW, FakeOkta, run_env

    okta = FakeOkta({"": [(429, {"errorSummary": "API call exceeded rate limit"},
                           {"X-Rate-Limit-Reset": str(int(time.time()) + 2)}),
                          (200, [event("user.session.start")], {})]})
    began = time.monotonic()
    try:
        r = subprocess.run([str(BIN / "hookbridge-producer"), "--okta-logs", okta.url + "/",
                            *WINDOW], env=dict(run_env(broker.bootstrap), **clock_env(-600)),
                           capture_output=True, text=True, timeout=15 * SLOW)
    finally:
        okta.stop()
    took = time.monotonic() - began
    print(f"the run took {took:.1f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"rate limited \(HTTP 429\): waiting [23] s", r.stdout), r.stdout
    assert "produced 1" in r.stdout, r.stdout


@pytest.mark.xdist_group("apache-kafka")  # one Kafka JVM at a time
def test_a_dispatcher_two_hours_ahead_still_writes_its_retries_to_kafka(
        apache_kafka, db_url, procs, workdir):
    """Kafka (4.0 and later) refuses a message stamped more than an hour
    after the broker's clock. A dispatcher on a host two hours ahead stamped
    its delay-tier messages with that clock: every failed attempt's retry
    was refused ("Invalid timestamp") and tried again each second, its
    source offset held, for as long as the clock stayed wrong. It now stamps
    them with PostgreSQL's time: the retry is written and delivered.

    Checked to fail on main's binaries (2148894): the retry never comes
    (the dispatcher logs "the broker did not take a message for
    ...retry.1s (Broker: Invalid timestamp ...)" each second). About 5 s
    (and the Kafka node's start when this worker has none yet)."""
    schedule = "1s"
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0"}
    space = apache_kafka.space(retry_schedule=schedule)
    rcv = Receiver(procs, workdir, fail_first=1)
    verified_active(db_url, rcv.url)
    d = Dispatcher(procs, db_url, space.bootstrap, extra_env=dict(env, **clock_env(7200)))
    r = Retrier(procs, db_url, space.bootstrap, extra_env=env)
    d.wait_ready(60)
    r.wait_ready(60)
    produce(space.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(rcv.posts()) >= 2, 15 * SLOW, "the first attempt and its retry")
    assert [p["status"] for p in rcv.posts()] == [503, 204]
    assert "Invalid timestamp" not in d.proc.output()


def test_a_spool_whose_clock_ntp_sets_back_keeps_the_deliveries_in_their_order(
        broker, procs, workdir, tmp_path):
    """docs/ingest.md, The spool: spooled deliveries are published in the
    order of their files, named by the time they came. NTP sets the
    ingest endpoint's clock back an hour between two deliveries spooled
    while the brokers are away: the second must still come after the
    first (it was named an hour earlier, so published first).

    Checked to fail on main's binaries (2148894): the second delivery's
    file sorts first. About 3 s."""
    from test_ingest_spool import body_of, brokers_down, spool_env, spooled, user_event
    from hbtest.ingest import Ingest

    spool = workdir / "spool"
    clock = SteppedClock(tmp_path / "ingest-clock", 0)
    ing = Ingest(procs, broker.bootstrap, extra_env=dict(spool_env(spool), **clock.env()))
    ing.wait_ready()
    ing.proc.kill_at_teardown = True  # its stop would wait seconds for the brokers
    brokers_down(broker)
    first, second = body_of([user_event()]), body_of([user_event()])
    assert ing.post(first)[0] == 200
    clock.step(-3600)
    time.sleep(0.3)  # the shim reads the step within 0.1 s
    assert ing.post(second)[0] == 200
    files = spooled(spool)
    assert [f.read_bytes() for f in files] == [first, second], [f.name for f in files]


def test_a_retry_after_date_is_counted_from_the_endpoints_date_not_our_clock(
        db_url, procs, workdir):
    """An endpoint whose clock is an hour ahead answers 503 with
    `Retry-After: <its now + 3 s>` as an HTTP date, and its `Date`. The
    retry must come about 3 s later (RFC 9110: the date is the endpoint's
    clock; its Date says where that stands), not an hour and 3 s later.

    Checked to fail on main's binaries (2148894): the retry is due in an
    hour (nothing comes in the test's 10 s). About 6 s."""
    import email.utils
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    posts = []

    class Ahead(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def date_time_string(self, timestamp=None):
            return email.utils.formatdate(time.time() + 3600, usegmt=True)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.append(time.time())
            if len(posts) == 1:
                self.send_response(503)
                self.send_header("Retry-After",
                                 email.utils.formatdate(time.time() + 3600 + 3, usegmt=True))
            else:
                self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ahead)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        schedule = "1s"
        env = {"HOOKBRIDGE_RETRY_SCHEDULE": schedule, "HOOKBRIDGE_RETRY_JITTER": "0"}
        broker = Broker(procs, workdir, retry_schedule=schedule)
        verified_active(db_url, f"http://127.0.0.1:{server.server_address[1]}/hook")
        d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
        r = Retrier(procs, db_url, broker.bootstrap, extra_env=env)
        d.wait_ready()
        r.wait_ready()
        produce(broker.bootstrap, [event("user.session.start")])
        wait_until(lambda: len(posts) >= 2, 10 * SLOW, "the retry, 3 s after the first attempt")
    finally:
        server.shutdown()
        server.server_close()
    gap = posts[1] - posts[0]
    print(f"the retry came {gap:.2f} s after the first attempt")
    assert 2 <= gap < 4 + 2 * SLOW, f"retried {gap:.2f} s after the first attempt"
