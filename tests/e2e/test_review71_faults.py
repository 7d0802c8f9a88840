"""Review 71: the services' logs under sustained faults and load. While a
condition lasts a service says when it begins, then counts: it never writes
a line per message, delivery or retry at the traffic's rate (the delivery
log and the metrics have every one). docs/operations.md, Health, shutdown
and logs, has the figures measured per fault."""
import collections
import json
import re
import subprocess
import time

from hbtest.procs import BIN, wait_until
from hbtest.stack import Broker, Dispatcher, Receiver, Retrier
from test_delivery import register_verified, sql

LEFT_OUT = " line(s) not logged in the last "


def subscribe_all(db_url, url, options):
    """An active, verified subscription to every event type the producer's
    --generate writes, its auth value a secret no line may show."""
    types = subprocess.run([str(BIN / "hookbridge-producer"), "--list-types"],
                           capture_output=True, text=True, check=True).stdout.split()
    opts = dict(options, auth_header="Authorization", auth_value="Bearer sekrit-r71")
    sub = sql(db_url, "SELECT hookbridge.register('r71', %s, %s, %s::jsonb)::text", url, types,
              json.dumps(opts))[0][0]
    sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                "status = 'active' WHERE id = %s", sub)
    return sub


def kind(msg):
    """A line's kind: its words up to the first colon, ids and numbers as ID
    and N ("attempt N not made (waiting behind ID")."""
    msg = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "ID", msg)
    return re.sub(r"\d+", "N", msg).split(":")[0]


def log_lines(svc):
    return [json.loads(l) for l in svc.proc.output().splitlines() if l.startswith("{")]


def test_poison_messages_at_300_a_second_are_counted_not_logged_each(db_url, broker, procs,
                                                                     workdir):
    """A producer writes 1,500 undecodable messages to the events topic at
    about 300 a second (a wrong serializer deployed). Each goes to the
    dead-letter topic with its reason; the dispatcher's log said so in one
    error line each: on main (4981d51) 5,861 lines in 15 s at 400 a second,
    390 lines/s, as many as the messages. Now at most 10 per 30 s are
    written, besides the first of each topic (with its reason and offset),
    and once the window is over one error line counts the ones left out:
    the lines and the count add up to every message, as
    hookbridge_poison_messages_total does. About 35 s (the window)."""
    from kafka import KafkaProducer
    receiver = Receiver(procs, workdir, args=["--quiet"])
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env={"HOOKBRIDGE_LOG_LEVEL": "info"})
    d.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"])
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap.split(","), linger_ms=5)
    total, rate = 1500, 300
    t0 = time.monotonic()
    for i in range(total):
        kp.send(broker.events_topic, key=b"k%d" % (i % 40), value=b"\x00not avro %d" % i)
        if i % 30 == 29:
            time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
    kp.flush()
    kp.close()
    print(f"{total} poison messages in {time.monotonic() - t0:.1f} s")
    wait_until(lambda: d.metric("hookbridge_poison_messages_total") == total or None, 20,
               "every poison message dead-lettered")

    def said():
        out = log_lines(d)
        each = [l for l in out if l["msg"].startswith("poison message sent to")]
        left = [l for l in out if LEFT_OUT in l["msg"] and '"poison message' in l["msg"]]
        return each, left

    each, _ = said()
    assert len(each) <= 10 + 1, len(each)  # before the summary: no line per message
    # the window's summary comes once it is over (30 s after its first line)
    wait_until(lambda: len(said()[0]) + sum(int(l["msg"].split()[0]) for l in said()[1])
               >= total or None, 35, "the poison lines and their summary to add up")
    each, left = said()
    print(f"{len(each)} poison lines, {len(left)} summaries: {[l['msg'] for l in left]}")
    assert len(each) <= 10 + 1, len(each)
    assert len(each) + sum(int(l["msg"].split()[0]) for l in left) == total
    first = each[0]
    assert first["level"] == "error" and first["topic"] == broker.events_topic
    assert "not single-object encoded (bad magic)" in first["msg"], first
    assert all(l["level"] == "error" and "hookbridge_poison_messages_total" in l["msg"]
               for l in left), left
    assert d.proc.alive()


def test_an_ordered_subscription_whose_head_fails_at_300_events_a_second_says_why_not_each(
        db_url, procs, workdir):
    """An ordered subscription (options.ordering = key) whose endpoint
    answers 503 to everything, 300 events a second for 15 s: every key's
    head fails, and each event behind it waits ("waiting behind <id>").
    On main (4981d51) the services wrote a line per delivery up to 50 per
    10 s of each kind: 52 lines from the dispatcher and 112 from the
    retrier in 15 s (about 11 lines/s; 18,000 an hour of one kind), and as
    many at any rate above 5 events a second. Now a kind writes at most 10
    lines per 30 s besides the first of each subscription: the dispatcher
    still says, with the subscription's id, why its deliveries wait (the
    first line of each subscription's waits is written, on a limit of its
    own: the waits outnumber every other line), the delivery log has every
    one, no kind of line is written more than 12 times, and both services
    together write fewer than 100 lines in the 15 s. About 23 s."""
    sched = "1s,2s,4s"
    broker = Broker(procs, workdir, retry_schedule=sched)
    receiver = Receiver(procs, workdir, status=503, args=["--quiet"])
    sub = subscribe_all(db_url, receiver.url, {"ordering": "key"})
    env = {"HOOKBRIDGE_LOG_LEVEL": "info", "HOOKBRIDGE_RETRY_SCHEDULE": sched}
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, broker.bootstrap, extra_env=env)
    d.wait_ready()
    r.wait_ready()
    n0 = {s: len(log_lines(s)) for s in (d, r)}
    secs, rate = 15, 300
    gen = procs.start("gen", [BIN / "hookbridge-producer", "--generate", secs * rate,
                              "--rate", rate],
                      {"HOOKBRIDGE_KAFKA_BROKERS": broker.bootstrap, "HOOKBRIDGE_LOG_LEVEL": "info"})
    time.sleep(secs)
    said = {s: [l for l in log_lines(s)[n0[s]:] if l.get("source") != "librdkafka"]
            for s in (d, r)}
    for s, lines in said.items():
        print(f"{s.program}: {len(lines)} lines in {secs} s")
    waits = sql(db_url, "SELECT count(*) FROM hookbridge.deliveries WHERE subscription_id = %s "
                        "AND last_error LIKE 'waiting behind %%'", sub)[0][0]
    print(f"{waits} deliveries waiting behind their key's head in the delivery log")
    assert waits > 100, waits
    why = [l for l in said[d] if "(waiting behind " in l["msg"]]
    assert why and why[0]["subscription_id"] == sub, [l["msg"] for l in said[d]][:5]
    kinds = collections.Counter((s.program, kind(l["msg"])) for s in said for l in said[s])
    print(kinds.most_common(6))
    assert max(kinds.values()) <= 12, kinds.most_common(3)  # 10, the first, a summary
    assert len(said[d]) + len(said[r]) < 100, {s.program: len(v) for s, v in said.items()}
    assert "sekrit" not in d.proc.output() + r.proc.output()
    gen.kill()


def test_the_dispatcher_says_once_that_it_cannot_list_pending_requests_and_when_it_can_again(
        pg_cluster, db_url, broker, procs):
    """PostgreSQL goes away under a running dispatcher. Its look for pending
    verification challenges and previews fails at each reconnection: on
    b11fcef it said `cannot list pending verifications` and `... previews`
    again at every one (6 of each in 30 s, review 71), beside the
    database's own reconnection lines. Now each is said once per outage,
    and `pending verifications listed again` / `pending previews listed
    again` when the database is back. About 15 s."""
    from hbtest.tcpproxy import TcpProxy
    proxy = TcpProxy(pg_cluster.port)
    proxy.start()
    url = db_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/")
    d = Dispatcher(procs, url, broker.bootstrap, extra_env={"HOOKBRIDGE_LOG_LEVEL": "info"})
    try:
        d.wait_ready()
        proxy.cut()
        # the looks come every 5 s: three of each fail in 11 s
        time.sleep(11)
        out = d.proc.output()
        assert out.count("cannot list pending verifications") == 1, out[-3000:]
        assert out.count("cannot list pending previews") == 1, out[-3000:]
        assert "said again when the look works" in out
        proxy.start()
        wait_until(lambda: "pending verifications listed again" in d.proc.output()
                   and "pending previews listed again" in d.proc.output(), 20,
                   "the looks working again")
        assert d.proc.output().count("cannot list pending verifications") == 1
    finally:
        proxy.close()
