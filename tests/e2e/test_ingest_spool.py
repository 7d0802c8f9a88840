"""The ingest endpoint's durable spool (HOOKBRIDGE_INGEST_SPOOL_DIR): what
Okta, and the operator, see when the Kafka brokers are away, when the
producer crashes or is stopped with deliveries on the spool, and when the
spool cannot take a delivery. The contract is docs/ingest.md's spool
section (session 22's SPOOL-SPEC). Real parts on loopback: the producer
(hookbridge-producer --listen), the devbroker (SIGUSR1 takes every broker
down, SIGUSR2 brings them back) and HTTP; the topics are read back with a
Kafka client."""
import json
import os
import re
import signal
import stat
import subprocess
import threading
import time
import uuid


from hbtest.ingest import Ingest, envelope, topic_messages
from hbtest.procs import SLOW, wait_until
from hbtest.stack import topic_records
from test_delivery import event
from test_ingest import brokers_refuse

DELIVERIES = "hookbridge_ingest_spool_deliveries"
BYTES = "hookbridge_ingest_spool_bytes"
ANSWERED = "hookbridge_ingest_spool_answered_total"
REPLAYED = "hookbridge_ingest_spool_replayed_total"
REPLAYING = "hookbridge_ingest_spool_replaying"
FAILURES = "hookbridge_ingest_spool_failures_total"
# DIR/<wall-clock ms, 16 hex digits>-<sequence, 8 hex digits>.okta
SPOOL_NAME = re.compile(r"([0-9a-fA-F]{16})-[0-9a-fA-F]{8}\.okta")


def spool_env(spool, **more):
    """The settings of an endpoint with a spool in `spool`, answering from it
    after 0.5 s without the brokers' acks (the default is 1 s)."""
    env = {"HOOKBRIDGE_INGEST_SPOOL_DIR": str(spool), "HOOKBRIDGE_INGEST_SPOOL_WAIT": "500ms"}
    env.update(more)
    return env


def user_event(etype="user.session.start"):
    """An event of a user of its own (the topic's key: test_delivery's
    event() gives every event of a run the same user)."""
    return event(etype, user="00u" + uuid.uuid4().hex[:10])


def body_of(events):
    """The exact bytes posted: the spool keeps them as they came."""
    return json.dumps(envelope(events)).encode()


def spooled(spool):
    """The deliveries on the spool (its *.okta files), oldest first."""
    return sorted(spool.glob("*.okta")) if spool.is_dir() else []


def lines(ing):
    """The producer's JSON log lines, as dicts."""
    return [json.loads(l) for l in ing.proc.output().splitlines() if l.startswith("{")]


def said(ing, level, *words):
    """The log lines at `level` whose message holds every one of `words`."""
    return [l for l in lines(ing) if l["level"] == level and all(w in l["msg"] for w in words)]


def brokers_down(broker):
    broker.proc.signal(signal.SIGUSR1)
    wait_until(lambda: brokers_refuse(broker.bootstrap), 10 * SLOW, "every broker down")


def brokers_up(broker):
    broker.proc.signal(signal.SIGUSR2)
    wait_until(lambda: not brokers_refuse(broker.bootstrap), 10 * SLOW, "the brokers back")


def keys_on(bootstrap):
    return sorted(m.key.decode() for m in topic_messages(bootstrap))


def users(events):
    """The events' keys: their user (target and actor here)."""
    return sorted(e["actor"]["id"] for e in events)


def wait_published(spool, bootstrap, events, what):
    """Waits until the spool is empty and every event is on the events
    topic (at least once: the spool may publish one twice)."""
    wait_until(lambda: not spooled(spool) or None, 30, f"{what}: the spool emptied")
    wait_until(lambda: set(keys_on(bootstrap)) >= set(users(events)) or None, 20,
               f"{what}: the events on the topic")
    assert set(keys_on(bootstrap)) == set(users(events))


def spool_empty(ing, bad_bytes=0):
    """Waits until the spool's gauges say it holds no delivery (they follow
    the directory within about 0.1 s), and takes only bad_bytes on its
    volume (the files set aside as .bad, in 4 KiB blocks)."""
    wait_until(lambda: (ing.metric(DELIVERIES), ing.metric(BYTES)) == (0, bad_bytes) or None, 5,
               "the spool's gauges to say 0")


def test_brokers_away_a_delivery_is_answered_200_from_the_spool_and_published_when_back(
        broker, procs, workdir):
    """Okta: with every broker down, its delivery of 3 events is answered
    200 {"spooled": 3, "acknowledged": 0} after the spool wait (0.5 s), well
    within its 3 s, instead of 503 after the ingest timeout (Okta retries
    once, then gives up: the events were lost). The load balancer: /readyz
    stays 200 (the spool takes deliveries). The operator: the delivery is one
    file on the spool, as Okta sent it, counted in the spool's gauges; once
    the brokers are back its 3 events are on the topic, the file is gone and
    the gauges are 0."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(spool))
    ing.wait_ready()
    sent = [user_event() for _ in range(3)]
    body = body_of(sent)
    brokers_down(broker)

    t0 = time.monotonic()
    status, _, answer = ing.post(body)
    took = time.monotonic() - t0
    assert status == 200, answer
    assert answer == {"spooled": 3, "acknowledged": 0}
    assert took < 3 * SLOW, f"answered after {took:.1f}s: Okta waits 3 s"
    (f,) = spooled(spool)
    m = SPOOL_NAME.fullmatch(f.name)
    assert m, f.name
    assert abs(int(m.group(1), 16) - time.time() * 1000) < 120000, f.name  # wall-clock ms
    assert f.read_bytes() == body
    assert not list(spool.glob("*.tmp"))
    # the gauges follow the directory within about 0.1 s
    wait_until(lambda: ing.metric(DELIVERIES) == 1 or None, 2, "the spool's gauge")
    assert ing.metric(BYTES) == (len(body) + 4095) // 4096 * 4096  # on the volume: 4 KiB blocks
    assert ing.metric(ANSWERED) == 1
    # Ready all along (without a spool it says 503 "no Kafka broker
    # reachable" within about 1 s of the brokers going down).
    until = time.monotonic() + 2 * SLOW
    while time.monotonic() < until:
        assert ing.ops("/readyz")[0] == 200, ing.ops("/readyz")
        time.sleep(0.1)
    assert ing.metric(DELIVERIES) == 1  # nothing acknowledged it meanwhile
    # ... and the log says so: not "not ready"
    assert said(ing, "warn", "all Kafka brokers are down", "answered from the spool"), lines(ing)
    assert not [l for l in lines(ing) if "not ready" in l["msg"]], lines(ing)

    brokers_up(broker)
    wait_published(spool, broker.bootstrap, sent, "brokers back")
    spool_empty(ing)
    assert ing.metric(FAILURES) == 0
    # the events that waited for the spool are not "failed": it published them
    assert ing.metric('hookbridge_ingest_events_total{outcome="failed"}') == 0


def test_a_spooled_delivery_survives_a_crash_and_the_next_start_publishes_it(
        broker, procs, workdir):
    """Okta: a delivery answered 200 from the spool is not lost when the
    producer is killed (SIGKILL: no stop of any kind) before the brokers
    came back. The operator: the next producer on the same directory (the
    dead one's lock does not keep it out) says it found 1 delivery on the
    spool, publishes its 3 events, removes the file and counts it in
    hookbridge_ingest_spool_replayed_total."""
    spool = workdir / "spool"
    first = Ingest(procs, broker.bootstrap, name="ingest-killed", extra_env=spool_env(spool))
    first.wait_ready()
    sent = [user_event() for _ in range(3)]
    brokers_down(broker)
    status, _, answer = first.post(sent)
    assert status == 200 and answer == {"spooled": 3, "acknowledged": 0}, answer
    first.proc.kill()
    (f,) = spooled(spool)
    size = -(-f.stat().st_size // 4096) * 4096  # what it takes on the volume: 4 KiB blocks

    brokers_up(broker)
    second = Ingest(procs, broker.bootstrap, name="ingest-next", extra_env=spool_env(spool))
    wait_published(spool, broker.bootstrap, sent, "the next start")
    assert second.metric(REPLAYED) == 1
    spool_empty(second)
    found = said(second, "info", "ingest spool: ", " found in ")
    assert len(found) == 1, lines(second)
    assert re.fullmatch(
        rf"ingest spool: 1 deliver(y|ies) \({size} bytes\) found in {re.escape(str(spool))}: "
        r"publishing them", found[0]["msg"]), found[0]["msg"]


def test_a_delivery_larger_than_the_spool_is_answered_as_without_a_spool(broker, procs, workdir):
    """Okta: a delivery the spool cannot take (HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES
    4096, one 4 KiB block, and a body of more) is answered as without a spool: 503 with
    Retry-After after the ingest timeout while the brokers are down, never a
    200 for events that are nowhere. The operator: a warning line about the
    spool and hookbridge_ingest_spool_failures_total 1; nothing is left in
    the directory."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(
        spool, HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES="4096", HOOKBRIDGE_INGEST_TIMEOUT="1s"))
    ing.wait_ready()
    sent = [dict(user_event(), displayMessage="x" * 2500) for _ in range(2)]
    body = body_of(sent)
    assert len(body) > 4096
    brokers_down(broker)
    status, hdrs, answer = ing.post(body)
    assert status == 503 and "retry-after" in hdrs, answer
    assert answer["acknowledged"] == 0 and answer["events"] == 2, answer
    assert "spooled" not in answer, answer
    assert not spooled(spool) and not list(spool.glob("*.tmp"))
    assert ing.metric(FAILURES) == 1
    assert ing.metric(DELIVERIES) == 0 and ing.metric(ANSWERED) == 0
    assert said(ing, "warn", "spool"), lines(ing)


def test_a_spool_directory_in_use_or_unusable_refuses_the_start(broker, procs, workdir):
    """The operator: a second producer started on a spool directory another
    one uses exits 1 with an error naming the spool and saying it is in use
    (two processes replaying one spool would publish every file twice), and
    the first goes on taking deliveries; a directory that cannot be created
    (its parent is a regular file) exits 1 naming the path and why."""
    spool = workdir / "spool"
    first = Ingest(procs, broker.bootstrap, name="ingest-owner", extra_env=spool_env(spool))
    first.wait_ready()
    assert (spool / ".lock").exists()
    second = Ingest(procs, broker.bootstrap, name="ingest-second", extra_env=spool_env(spool),
                    wait=False)
    wait_until(lambda: not second.proc.alive(), 20, "the second producer to refuse")
    assert second.proc.p.returncode == 1, second.proc.output()[-3000:]
    assert said(second, "error", "ingest spool", "in use by another process"), lines(second)
    status, _, answer = first.post([user_event()])
    assert status == 200 and answer == {"produced": 1}, answer

    plain = workdir / "a-file"
    plain.write_text("not a directory\n")
    bad = plain / "spool"
    third = Ingest(procs, broker.bootstrap, name="ingest-bad-dir", extra_env=spool_env(bad),
                   wait=False)
    wait_until(lambda: not third.proc.alive(), 20, "the producer to refuse the path")
    assert third.proc.p.returncode == 1, third.proc.output()[-3000:]
    out = third.proc.output()
    why = [l for l in out.splitlines() if str(bad) in l]
    assert why, out[-3000:]
    assert any("not a directory" in l.lower() for l in why), why


def test_leftovers_at_start_a_partial_file_is_dropped_a_garbled_one_set_aside(
        broker, procs, workdir):
    """The operator, at start: a *.tmp file (a write cut short: never
    answered 200) is deleted and its events are not published; a *.okta
    file that is no event-hook body is renamed .bad, named in an error line
    and counted, and does not hold up the valid deliveries beside it, which
    are published oldest first (the start says it found all three)."""
    spool = workdir / "spool"
    spool.mkdir(mode=0o700)
    partial = [user_event()]
    (spool / "0000000000000004-00000004.tmp").write_bytes(body_of(partial))
    garbled = spool / "0000000000000001-00000001.okta"
    garbled.write_text("not json")
    older = [user_event(), user_event()]
    # the same user (the key): one partition, where the order shows
    newer = [dict(user_event(), actor=older[0]["actor"], target=older[0]["target"])]
    (spool / "0000000000000003-00000003.okta").write_bytes(body_of(newer))
    (spool / "0000000000000002-00000002.okta").write_bytes(body_of(older))
    good = older + newer
    sizes = sum(-(-p.stat().st_size // 4096) * 4096 for p in spooled(spool))  # 4 KiB blocks
    stray = [user_event()]  # named by hand: not a spooled delivery's name
    (spool / "by-hand.okta").write_bytes(body_of(stray))

    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(spool))
    # left alone, named at warn (then moved away: the wait below reads *.okta)
    assert said(ing, "warn", "by-hand.okta is not named as a spooled delivery is"), lines(ing)
    (spool / "by-hand.okta").rename(workdir / "by-hand.okta")
    wait_published(spool, broker.bootstrap, good, "the valid files")
    one_key = [m.value for m in topic_messages(broker.bootstrap)
               if m.key.decode() == older[0]["actor"]["id"]]
    assert [[e["uuid"] for e in (older[0], newer[0]) if e["uuid"].encode() in v]
            for v in one_key] == [[older[0]["uuid"]], [newer[0]["uuid"]]]
    assert not list(spool.glob("*.tmp"))
    assert sorted(p.name for p in spool.iterdir() if p.name != ".lock") == [
        garbled.name + ".bad"]
    assert (spool / (garbled.name + ".bad")).read_text() == "not json"
    assert set(keys_on(broker.bootstrap)) == set(users(good))  # not the partial one's
    found = said(ing, "info", "ingest spool: ", " found in ")
    assert len(found) == 1 and found[0]["msg"].startswith(
        f"ingest spool: 3 deliveries ({sizes} bytes) found in {spool}"), found
    assert [l for l in lines(ing) if l["level"] == "error" and garbled.name in json.dumps(l)], \
        lines(ing)
    assert ing.metric(FAILURES) == 1
    assert ing.metric(REPLAYED) == 2
    spool_empty(ing, bad_bytes=4096)  # the .bad file stays on the volume


def test_sigterm_answers_a_spooled_delivery_200_at_once_and_keeps_its_file(
        broker, procs, workdir):
    """Okta: a delivery still waiting for the brokers' acks within the
    spool wait (HOOKBRIDGE_INGEST_SPOOL_WAIT 20 s: nothing on the disk yet)
    when SIGTERM arrives is written to the spool and answered 200 spooled at
    once, not 503 (which Okta would retry once, to a stopping endpoint). The
    operator: exit code 0 within 3 to 4 s (the brokers away, the stop's
    flush ends after 3 s without an acknowledgement, not its 5 s: review 46
    keeps 3 s for librdkafka to reconnect to brokers just back), the file
    stays with a warning saying how many
    stay on the ingest spool, and the next start on the directory publishes
    it."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, name="ingest-stopped", extra_env=spool_env(
        spool, HOOKBRIDGE_INGEST_SPOOL_WAIT="20s", HOOKBRIDGE_INGEST_TIMEOUT="30s"))
    ing.wait_ready()
    sent = [user_event()]
    body = body_of(sent)
    brokers_down(broker)
    answer = {}

    def post():
        answer["r"] = ing.post(body)
        answer["at"] = time.monotonic()
    t = threading.Thread(target=post)
    t.start()
    ing.wait_in_progress()  # the delivery is in, waiting for its acknowledgements
    assert "r" not in answer, answer  # still waiting for the acks
    assert not spooled(spool)  # the disk is touched only once the wait is over
    t0 = time.monotonic()
    ing.proc.signal(signal.SIGTERM)
    t.join(30 * SLOW)
    status, _, got = answer["r"]
    assert status == 200 and got == {"spooled": 1, "acknowledged": 0}, got
    assert answer["at"] - t0 < 3 * SLOW, f"answered {answer['at'] - t0:.1f}s after SIGTERM"
    assert ing.proc.p.wait(30 * SLOW) == 0
    # not the whole 5 s flush for messages no broker takes (whose file stays anyway)
    took = time.monotonic() - t0
    assert took < 4.5 * SLOW, f"exited {took:.1f}s after SIGTERM"
    (f,) = spooled(spool)
    assert f.read_bytes() == body
    stay = said(ing, "warn", "stay on the ingest spool")
    assert len(stay) == 1 and re.search(r"\b1\b", stay[0]["msg"]), lines(ing)

    brokers_up(broker)
    again = Ingest(procs, broker.bootstrap, name="ingest-restarted", extra_env=spool_env(spool))
    wait_published(spool, broker.bootstrap, sent, "the next start")
    assert again.metric(REPLAYED) == 1


def test_with_the_brokers_up_the_spool_changes_nothing_okta_sees(broker, procs, workdir):
    """Okta: with a spool and the brokers answering, a delivery is answered
    200 {"produced": 3} exactly as without one, and a body that is no
    event hook, or without the secret, is refused as before (400, 401) and
    never spooled. The operator: the directory is created private (0700)
    and holds no delivery afterwards; nothing is counted as answered from
    the spool, replayed or failed."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(spool))
    ing.wait_ready()
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    sent = [user_event() for _ in range(3)]
    status, _, answer = ing.post(sent)
    assert status == 200 and answer == {"produced": 3}, answer
    wait_until(lambda: not spooled(spool) or None, 2, "the acknowledged delivery's file to go")
    assert not list(spool.glob("*.tmp"))
    assert ing.post({"eventType": "com.okta.event_hook", "data": {"events": {}}})[0] == 400
    assert ing.post([user_event()], auth="Bearer wrong")[0] == 401
    assert sorted(p.name for p in spool.iterdir()) == [".lock"]
    assert keys_on(broker.bootstrap) == users(sent)
    spool_empty(ing)
    assert (ing.metric(ANSWERED), ing.metric(REPLAYED), ing.metric(FAILURES)) == (0, 0, 0)


def test_an_event_the_schema_refuses_in_a_spooled_delivery_is_dead_lettered_when_back(
        broker, procs, workdir):
    """Okta: a delivery holding an event the schema refuses (no eventType),
    sent while the brokers are down, is answered 200 from the spool, the
    refused event named as in the normal answer. The operator: once the
    brokers are back the good events are on the events topic and the refused
    one on the dead-letter topic as sent, with the reason."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(spool))
    ing.wait_ready()
    good = [user_event(), user_event()]
    refused = {"uuid": "spooled-no-type", "displayMessage": "no eventType"}
    brokers_down(broker)
    status, _, answer = ing.post([good[0], refused, good[1]])
    assert status == 200, answer
    assert (answer["spooled"], answer["acknowledged"]) == (3, 0), answer
    assert answer.get("dead_lettered") == 1, answer
    assert [(r["event"], r.get("uuid")) for r in answer["refused"]] == [(1, refused["uuid"])]
    assert answer["refused"][0]["error"] == "data.events[1]: eventType: missing"

    brokers_up(broker)
    wait_published(spool, broker.bootstrap, good, "brokers back")
    dead = topic_records(broker.bootstrap, broker.dlq_topic, want=1)
    assert {m.key.decode() for m in dead} == {refused["uuid"]}
    for m in dead:
        assert json.loads(m.value) == refused
        assert dict(m.headers)["hookbridge-reason"] == b"data.events[1]: eventType: missing"


def test_an_outage_longer_than_the_ingest_timeout_is_ridden_out_by_the_replay(
        broker, procs, workdir):
    """Okta: the brokers stay away longer than HOOKBRIDGE_INGEST_TIMEOUT (1 s
    here; with the default 10 s, the outage that lost Okta's events before
    the spool): the delivery answered 200 from the spool is not lost
    although the messages first sent for it failed. The operator: the
    replay tries it again while they are away (a warning naming the file:
    not published yet) and publishes it once they are back, its refused
    event to the dead-letter topic as a POST would;
    hookbridge_ingest_spool_replayed_total 1."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap,
                 extra_env=spool_env(spool, HOOKBRIDGE_INGEST_TIMEOUT="1s"))
    ing.wait_ready()
    good = [user_event(), user_event()]
    refused = {"uuid": "replayed-no-type", "displayMessage": "no eventType"}
    brokers_down(broker)
    status, _, answer = ing.post([good[0], refused, good[1]])
    assert status == 200, answer
    assert (answer["spooled"], answer["acknowledged"], answer["dead_lettered"]) == (3, 0, 1)
    (f,) = spooled(spool)
    wait_until(lambda: said(ing, "warn", f.name, "not published yet") or None, 15,
               "the replay's first try to fail")
    assert spooled(spool) == [f] and ing.metric(REPLAYED) == 0

    brokers_up(broker)
    wait_published(spool, broker.bootstrap, good, "brokers back")
    assert ing.metric(REPLAYED) == 1
    dead = topic_records(broker.bootstrap, broker.dlq_topic, want=1)
    assert {m.key.decode() for m in dead} == {refused["uuid"]}
    assert all(json.loads(m.value) == refused for m in dead)
    spool_empty(ing)


def test_a_full_spool_makes_the_endpoint_not_ready_until_it_is_published(
        broker, procs, workdir):
    """The load balancer: the spool full (HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES
    4096, all taken by one delivery of exactly 4096 bytes while the brokers
    are away), /readyz says 503 "spool is full", so Okta's next deliveries
    go to an endpoint that can take them; once the brokers are back and the
    delivery is published, it is ready again."""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap,
                 extra_env=spool_env(spool, HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES="4096"))
    ing.wait_ready()
    sent = [user_event()]
    sent[0]["displayMessage"] += "x" * (4096 - len(body_of(sent)))
    body = body_of(sent)
    assert len(body) == 4096
    brokers_down(broker)
    status, _, answer = ing.post(body)
    assert status == 200 and answer == {"spooled": 1, "acknowledged": 0}, answer
    wait_until(lambda: ing.ops("/readyz")[0] == 503 or None, 5, "/readyz to say 503")
    assert "spool is full" in ing.ops("/readyz")[1]

    brokers_up(broker)
    wait_published(spool, broker.bootstrap, sent, "brokers back")
    ing.wait_ready(10)


def spool_full_of_a_bad_file(procs, broker, workdir):
    """An endpoint whose spool (HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES 8192) is
    full of one garbled file of 5000 bytes (two 4 KiB blocks), set aside as
    .bad at the start: (ing, spool, the .bad file)."""
    spool = workdir / "spool"
    spool.mkdir(mode=0o700)
    garbled = spool / "0000000000000001-00000001.okta"
    garbled.write_text("x" * 5000)
    ing = Ingest(procs, broker.bootstrap,
                 extra_env=spool_env(spool, HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES="8192"))
    bad = spool / (garbled.name + ".bad")
    wait_until(lambda: bad.exists() or None, 10, "the garbled file set aside")
    return ing, spool, bad


def test_a_spool_full_of_set_aside_files_stays_ready_while_the_brokers_answer(
        broker, procs, workdir):
    """A spool full of .bad files (garbled deliveries nobody has removed yet)
    cannot take a delivery, but with the brokers answering none needs it: a
    delivery is produced as without a spool. So /readyz stays 200 and Okta's
    deliveries are answered 200 (before, /readyz said 503 "the ingest spool
    is full" on every replica whose spool held them, taking them all out of
    the load balancer while they could publish). Only with the brokers away
    as well is it 503, naming both."""
    ing, spool, _ = spool_full_of_a_bad_file(procs, broker, workdir)
    ing.wait_ready(5)
    sent = [user_event()]
    status, _, answer = ing.post(sent)
    assert status == 200 and answer == {"produced": 1}, answer
    wait_published(spool, broker.bootstrap, sent, "brokers up, spool full")
    time.sleep(1.5)  # the readiness is looked at again every 100 ms
    assert ing.ops("/readyz")[0] == 200, ing.ops("/readyz")

    brokers_down(broker)
    wait_until(lambda: ing.ops("/readyz")[0] == 503 or None, 10 * SLOW,
               "/readyz to say 503 with the spool full and the brokers away")
    said_now = ing.ops("/readyz")[1]
    assert "spool is full" in said_now and "Kafka" in said_now, said_now
    brokers_up(broker)
    ing.wait_ready(10)

    # The next start names the room the set-aside file takes, and counts no
    # delivery found for it (before: "1 deliveries (8192 bytes) found").
    ing.proc.stop()
    before = len(lines(ing))  # the log file is appended to by the next start
    again = Ingest(procs, broker.bootstrap,
                   extra_env=spool_env(spool, HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES="8192"))
    again.wait_ready(5)
    now = [l["msg"] for l in lines(again)[before:]]
    assert any("set aside earlier" in m and "take 8192 of its 8192 bytes" in m for m in now), now
    assert not [m for m in now if " found in " in m], now


# A disk that hangs (a stalled network volume): while the file named by
# HBTEST_HANG_WHILE exists, fsync and fdatasync wait for it to go.
HANG_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>
typedef int sync_fn(int);
static void hang(void) {
    const char *f = getenv("HBTEST_HANG_WHILE");
    while (f && access(f, F_OK) == 0)
        usleep(10000);
}
int fsync(int fd) {
    hang();
    return ((sync_fn *)dlsym(RTLD_NEXT, "fsync"))(fd);
}
int fdatasync(int fd) {
    hang();
    return ((sync_fn *)dlsym(RTLD_NEXT, "fdatasync"))(fd);
}
"""


def test_a_hung_disk_costs_nothing_while_the_brokers_answer(broker, procs, workdir):
    """Okta, with the spool's disk hung (every sync waits: a stalled network
    volume) and the brokers answering: deliveries are answered 200
    {"produced": N} as fast as without a spool, since the disk is touched
    only for a delivery the brokers have not acknowledged within the spool
    wait. Before, each delivery was written and synced to the spool first,
    so each hung until the disk came back, past Okta's 3 s: every delivery
    failed, on a replica whose brokers were fine. Once the brokers are away
    as well, a delivery goes to the spool and waits for the disk, and is
    answered 200 spooled when it returns."""
    src = workdir / "hang.c"
    src.write_text(HANG_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(workdir / "hang.so"), str(src),
                    "-ldl"], check=True)
    hung = workdir / "disk-hung"
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(
        spool, HOOKBRIDGE_INGEST_SPOOL_WAIT="1s",
        LD_PRELOAD=str(workdir / "hang.so"), HBTEST_HANG_WHILE=str(hung),
        ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"))
    ing.wait_ready()
    hung.touch()
    sent = []
    for _ in range(5):
        sent.append(user_event())
        t0 = time.monotonic()
        status, _, answer = ing.post([sent[-1]])
        took = time.monotonic() - t0
        assert status == 200 and answer == {"produced": 1}, answer
        assert took < 1 * SLOW, f"answered after {took:.1f}s with the disk hung"
    assert keys_on(broker.bootstrap) == users(sent)
    assert ing.ops("/readyz")[0] == 200

    brokers_down(broker)
    late = [user_event()]
    answer = {}
    t = threading.Thread(target=lambda: answer.setdefault("r", ing.post(late)))
    t.start()
    time.sleep(2 * SLOW)  # past the spool wait (1 s): writing, the disk hung
    assert "r" not in answer, answer
    hung.unlink()
    t.join(10 * SLOW)
    status, _, got = answer["r"]
    assert status == 200 and got == {"spooled": 1, "acknowledged": 0}, got
    brokers_up(broker)
    wait_published(spool, broker.bootstrap, sent + late, "brokers back")


def test_a_start_while_the_brokers_are_away_is_ready_and_publishes_when_they_return(
        broker, procs, workdir):
    """The operator restarts the endpoint (or Kubernetes moves it) while
    every broker is away: with a spool it is ready at once (without one it
    stays not ready until they answer, and Okta's deliveries have nowhere
    to go), Okta's deliveries are answered 200 from the spool, and they
    and the delivery found on the spool at start are published once the
    brokers are back."""
    spool = workdir / "spool"
    spool.mkdir(mode=0o700)
    found = [user_event()]
    (spool / "0000019a00000000-00000000.okta").write_bytes(body_of(found))
    brokers_down(broker)
    ing = Ingest(procs, broker.bootstrap,
                 extra_env=spool_env(spool, HOOKBRIDGE_INGEST_TIMEOUT="2s"))
    ing.wait_ready(10)
    sent = [user_event(), user_event()]
    status, _, answer = ing.post(sent)
    assert status == 200 and answer == {"spooled": 2, "acknowledged": 0}, answer
    assert len(spooled(spool)) == 2

    brokers_up(broker)
    wait_published(spool, broker.bootstrap, found + sent, "brokers back")
    spool_empty(ing)


def test_a_delivery_the_brokers_never_take_does_not_hold_up_the_ones_behind_it(
        broker, procs, workdir):
    """The operator: a spooled delivery holding an event larger than this
    producer sends (HOOKBRIDGE_KAFKA_MESSAGE_MAX_BYTES 3000; on Apache Kafka
    also one over the topic's max.message.bytes) is never published: it
    stays on the spool (to publish once the limit is raised), but the
    deliveries spooled after it, already answered 200 to Okta, are
    published all the same, not held up behind it for good."""
    spool = workdir / "spool"
    spool.mkdir(mode=0o700)
    stuck = spool / "0000000000000001-00000001.okta"
    stuck.write_bytes(body_of([dict(user_event(), displayMessage="x" * 5000)]))
    good = [user_event()]
    (spool / "0000000000000002-00000002.okta").write_bytes(body_of(good))
    Ingest(procs, broker.bootstrap,
           extra_env=spool_env(spool, HOOKBRIDGE_KAFKA_MESSAGE_MAX_BYTES="3000"))
    wait_until(lambda: set(keys_on(broker.bootstrap)) >= set(users(good)) or None, 5,
               "the delivery behind the one that cannot be published on the topic")
    assert stuck.exists() or stuck.with_name(stuck.name + ".bad").exists()


def test_deliveries_posted_at_once_during_an_outage_each_get_a_file_and_all_are_published(
        broker, procs, workdir):
    """Okta sends deliveries in parallel: 16 posted at once while the
    brokers are away are each answered 200 from the spool, each in a file
    of its own (no two spooled under one name), and every event of them is
    on the topic once the brokers are back."""
    from concurrent.futures import ThreadPoolExecutor
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(spool))
    ing.wait_ready()
    deliveries = [[user_event(), user_event()] for _ in range(16)]
    brokers_down(broker)
    with ThreadPoolExecutor(len(deliveries)) as pool:
        answers = list(pool.map(ing.post, deliveries))
    assert [(s, a) for s, _, a in answers] == [(200, {"spooled": 2, "acknowledged": 0})] * 16
    assert len(spooled(spool)) == 16
    wait_until(lambda: ing.metric(DELIVERIES) == 16 or None, 5, "16 deliveries on the gauge")

    brokers_up(broker)
    wait_published(spool, broker.bootstrap, [e for d in deliveries for e in d], "brokers back")
    spool_empty(ing)


def test_a_spool_that_cannot_write_answers_as_without_a_spool(broker, procs, workdir):
    """A write error (here the directory removed under the running
    endpoint; a full disk is the same to it): Okta gets the answer it got
    without a spool, 503 with Retry-After while the brokers are away and
    200 {"produced": 1} once they acknowledge, never a 200 for a delivery
    that is nowhere. The operator: a warning naming the spool and why, and
    hookbridge_ingest_spool_failures_total counting each delivery it could
    not take (with the brokers answering, none needs it)."""
    import shutil
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap,
                 extra_env=spool_env(spool, HOOKBRIDGE_INGEST_TIMEOUT="1s"))
    ing.wait_ready()
    shutil.rmtree(spool)
    brokers_down(broker)
    status, hdrs, answer = ing.post([user_event()])
    assert status == 503 and "retry-after" in hdrs, answer
    assert ing.metric(FAILURES) == 1
    warned = said(ing, "warn", str(spool), "cannot write")
    assert warned, lines(ing)

    brokers_up(broker)
    sent = [user_event()]
    status, _, answer = wait_until(lambda: (r := ing.post(sent))[0] == 200 and r, 30,
                                   "a 200 once the brokers are back")
    assert answer == {"produced": 1}, answer
    assert ing.metric(FAILURES) >= 1 and ing.metric(ANSWERED) == 0
    assert set(users(sent)) <= set(keys_on(broker.bootstrap))


def test_a_spool_too_full_for_the_next_delivery_makes_the_endpoint_not_ready(
        broker, procs, workdir):
    """The load balancer: once the spool refuses a delivery for lack of room
    (docs/ingest.md: "the spool is full ... while full, /readyz is 503"),
    /readyz says 503 "spool is full", so Okta's next deliveries go to a
    replica that can take them instead of waiting 1 s here for a 503.
    (HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES 6144: one delivery of about 900
    bytes, which takes a 4 KiB block on the volume, fits, a second does
    not.)"""
    spool = workdir / "spool"
    ing = Ingest(procs, broker.bootstrap, extra_env=spool_env(
        spool, HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES="6144", HOOKBRIDGE_INGEST_MAX_BODY_BYTES="1024",
        HOOKBRIDGE_INGEST_TIMEOUT="1s"))
    ing.wait_ready()

    def delivery():
        sent = [user_event()]
        sent[0]["displayMessage"] += "x" * (900 - len(body_of(sent)))
        return sent
    brokers_down(broker)
    status, _, answer = ing.post(delivery())
    assert status == 200 and answer == {"spooled": 1, "acknowledged": 0}, answer
    status, _, answer = ing.post(delivery())
    assert status == 503, answer
    assert said(ing, "warn", "is full"), lines(ing)
    wait_until(lambda: ing.ops("/readyz")[0] == 503 or None, 3,
               "/readyz to say 503 once the spool refused a delivery as full")
    assert "spool is full" in ing.ops("/readyz")[1]
