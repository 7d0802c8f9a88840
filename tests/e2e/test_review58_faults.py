"""Review 58: Kafka operations as a platform team performs them on a running
hookbridge, on Apache Kafka (hbtest.kafka): topics deleted and created
again by mistake."""
import signal
import subprocess
import threading
import time

from hbtest.kafka import delete_topics
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher, Retrier
from test_review21_faults import readyz


def test_a_topic_deleted_under_running_services_is_named_and_they_still_stop(
        apache_kafka, db_url, procs):
    """docs/operations.md, A topic deleted by mistake: a service whose topic
    is deleted while it runs says that the topic does not exist, on /readyz
    and at error, and is ready again within seconds of its creation. Each
    service asks the brokers every second whether they answer, with a
    ListOffsets for a partition of its first topic (the retrier's first
    delay tier, the dispatcher's events topic); once that topic was deleted
    librdkafka did not even send it ("Local: Unknown partition"), so 4 s
    later both said `Kafka brokers not answering for 4 s` at warn and on
    /readyz, for about 5 s until their consumer found the topic missing,
    and `Kafka reachable again` once it was created: an operator looked at
    healthy brokers. The probe now asks about the topic itself then.

    And both stop when told to: a consumer one of whose topics was deleted
    while it ran never finished rd_kafka_destroy (librdkafka 2.0), after
    `stopped` and the final commit, so SIGTERM left both running until
    SIGKILL (Kubernetes: the whole terminationGracePeriodSeconds, exit 137),
    also once the topic was back. Now they wait for it 5 s and exit 0.

    Checked to fail on main's binaries (0603895): the dispatcher's /readyz
    says `Kafka brokers not answering for 4 s` to `... 8 s` (the retrier's
    too, 4.1 s after the deletion); with that fixed alone, neither service
    has exited 15 s after its SIGTERM. About 22 s."""
    sched = "2s"
    space = apache_kafka.space(retry_schedule=sched)
    tier = space.retry_prefix + sched
    env = {"HOOKBRIDGE_RETRY_SCHEDULE": sched}
    d = Dispatcher(procs, db_url, space.bootstrap, extra_env=env)
    r = Retrier(procs, db_url, space.bootstrap, extra_env=env)
    d.wait_ready(30)
    r.wait_ready(30)
    gone = {d: space.events_topic, r: tier}
    seen = {d: set(), r: set()}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for svc in seen:
                seen[svc].add(readyz(svc))
            time.sleep(0.1)
    t = threading.Thread(target=watch)
    t.start()
    try:
        delete_topics(space.bootstrap, [space.events_topic, tier])
        for svc, topic in gone.items():
            wait_until(lambda: (503, f"topic {topic} does not exist\n") in seen[svc], 30,
                       f"the {svc.program} to name {topic} on /readyz")
    finally:
        stop.set()
        t.join()
    for svc, topic in gone.items():
        said = seen[svc] - {(200, "ready\n"), (503, f"topic {topic} does not exist\n")}
        assert not said, f"the {svc.program}'s /readyz: {said}"
        assert f'"level":"error","component":"{svc.program}","msg":"topic {topic} does not ' \
            f'exist: create it' in svc.proc.output()
    space._schedules.clear()  # hookbridge-migrate topics, as the runbook says
    space.create_topics(sched)
    t_created = time.monotonic()
    d.wait_ready(15)
    r.wait_ready(15)
    print(f"both ready {time.monotonic() - t_created:.1f} s after the topics were created")
    for svc in gone:
        out = svc.proc.output()
        assert "Kafka brokers not answering" not in out and "Kafka reachable again" not in out

    for svc in gone:
        svc.proc.signal(signal.SIGTERM)
    t_term = time.monotonic()
    for svc in gone:
        try:
            rc = svc.proc.p.wait(15 * SLOW)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, f"the {svc.program} {time.monotonic() - t_term:.0f} s after its " \
            f"SIGTERM: exit status {rc}\n" + svc.proc.output()[-1500:]
        assert '"msg":"stopped"' in svc.proc.output()
    print(f"both exited {time.monotonic() - t_term:.1f} s after SIGTERM")
