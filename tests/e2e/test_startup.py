"""Start-up troubles an operator meets: each is one clear line, and a bad
setting stops the program before it does anything.

(A missing topic is reported once and keeps /readyz at 503 until the topic
exists; that path is not tested here because the embedded broker, like a
Kafka cluster with auto.create.topics.enable, creates any topic asked for.)"""
from hbtest.procs import BIN, SLOW, wait_until


def start(procs, db_url, broker, env):
    base = {"HOOKBRIDGE_DATABASE_URL": db_url, "HOOKBRIDGE_KAFKA_BROKERS": broker.bootstrap,
            "HOOKBRIDGE_HTTP_LISTEN": "127.0.0.1:0"}
    base.update(env)
    return procs.start("retrier", [BIN / "hookbridge-retrier"], base)


def test_a_bad_retry_schedule_names_the_bad_delay_and_exits_2(db_url, broker, procs):
    r = start(procs, db_url, broker, {"HOOKBRIDGE_RETRY_SCHEDULE": "5s,soon"})
    wait_until(lambda: not r.alive(), 10 * SLOW, "the retrier to exit")
    out = r.output()
    assert r.p.returncode == 2
    assert out.count("\n") == 1, "one line"
    assert 'HOOKBRIDGE_RETRY_SCHEDULE: retry schedule: "soon" is not a delay' in out


def test_a_bad_number_names_the_variable_and_exits_2(db_url, broker, procs):
    r = start(procs, db_url, broker, {"HOOKBRIDGE_RETRY_JITTER": "150"})
    wait_until(lambda: not r.alive(), 10 * SLOW, "the retrier to exit")
    assert r.p.returncode == 2
    assert "HOOKBRIDGE_RETRY_JITTER" in r.output()


def test_a_listen_address_that_is_not_one_exits_2_one_in_use_exits_1(db_url, broker, procs):
    """A listen address the program cannot parse is a configuration mistake
    (exit 2, one line naming the setting); a valid one it cannot bind (the
    port taken) is not (exit 1), as operations.md tells them apart. Before,
    both exited 1, after the service had begun starting."""
    import socket
    for i, (value, why) in enumerate((("8080", "not host:port"), ("127.0.0.1:99999", "bad port"),
                                      ("[::1]:http", "bad port"))):
        for program in ("dispatcher", "retrier"):
            p = procs.start(f"{program}-{i}", [BIN / f"hookbridge-{program}"],
                            {"HOOKBRIDGE_DATABASE_URL": db_url,
                             "HOOKBRIDGE_KAFKA_BROKERS": broker.bootstrap,
                             "HOOKBRIDGE_HTTP_LISTEN": value})
            wait_until(lambda: not p.alive(), 10 * SLOW, f"the {program} to exit")
            out = p.output()
            assert p.p.returncode == 2, (program, value, out)
            assert out.count("\n") == 1 and "HOOKBRIDGE_HTTP_LISTEN" in out and why in out, out
        ing = procs.start(f"ingest-{i}", [BIN / "hookbridge-producer", "--listen", value],
                          {"HOOKBRIDGE_KAFKA_BROKERS": broker.bootstrap,
                           "HOOKBRIDGE_INGEST_AUTH_VALUE": "s3cret-value"})
        wait_until(lambda: not ing.alive(), 10 * SLOW, "the ingest endpoint to exit")
        assert ing.p.returncode == 2 and "--listen" in ing.output() and why in ing.output()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        r = start(procs, db_url, broker, {
            "HOOKBRIDGE_HTTP_LISTEN": f"127.0.0.1:{taken.getsockname()[1]}"})
        wait_until(lambda: not r.alive(), 10 * SLOW, "the retrier to exit")
        assert r.p.returncode == 1, r.output()
        assert "cannot listen on" in r.output()
    finally:
        taken.close()


def test_readyz_follows_the_kafka_brokers(db_url, broker, procs):
    """All brokers down: /readyz turns 503 with the reason (the process stays
    alive, /healthz 200); brokers back: ready again by itself."""
    import signal
    from hbtest.stack import Dispatcher
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    broker.proc.signal(signal.SIGUSR1)  # the devbroker takes every broker down
    wait_until(lambda: d.get("/readyz")[0] == 503, 40 * SLOW, "not ready without brokers")
    assert "no Kafka broker reachable" in d.get("/readyz")[1]
    assert d.get("/healthz")[0] == 200 and d.proc.alive()
    broker.proc.signal(signal.SIGUSR2)
    wait_until(lambda: d.get("/readyz")[0] == 200, 40 * SLOW, "ready again")
    assert "Kafka reachable again" in d.proc.output()


def test_a_healthy_start_with_consumer_settings_warns_of_nothing(db_url, broker, procs, workdir):
    """`make run` and a healthy cluster: the start of both services says
    nothing at warn or above. A consumer setting given through the
    HOOKBRIDGE_KAFKA_* passthrough (which reaches every client, the producer
    too) and the embedded broker's silence about its Metadata versions each
    made librdkafka warn at every start, so operators learnt to ignore the
    warnings."""
    from hbtest.stack import Dispatcher, Retrier
    env = {"HOOKBRIDGE_KAFKA_SESSION_TIMEOUT_MS": "6000",
           "HOOKBRIDGE_KAFKA_MAX_POLL_INTERVAL_MS": "300000"}
    services = [Dispatcher(procs, db_url, broker.bootstrap, extra_env=env),
                Retrier(procs, db_url, broker.bootstrap, extra_env=env)]
    for svc in services:
        svc.wait_ready()
        wait_until(lambda: "hookbridge_consumer_lag{" in svc.get("/metrics")[1], 30,
                   f"the {svc.program}'s partitions")
    for svc in services:
        loud = [line for line in svc.proc.output().splitlines()
                if '"level":"warn"' in line or '"level":"error"' in line]
        assert not loud, "\n".join(loud)
