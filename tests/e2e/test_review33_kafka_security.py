"""Kafka over SASL_SSL, as deploy/k8s/overlays/production sets it, on a real
Apache Kafka node (hbtest/kafka.py, ApacheKafka(sasl_ssl=True): a SASL_SSL
listener with a throwaway CA, SCRAM-SHA-512 and PLAIN users), with only the
documented settings (docs/configuration.md: HOOKBRIDGE_KAFKA_SECURITY_PROTOCOL,
HOOKBRIDGE_KAFKA_SASL_MECHANISM/USERNAME/PASSWORD, HOOKBRIDGE_KAFKA_SSL_CA_LOCATION).

- `hookbridge-migrate topics` creates the topics over SASL_SSL; the producer
  CLI publishes, the dispatcher delivers (signed), a failed delivery goes
  through the delay tier and the retrier delivers it.
- The ingest endpoint (hookbridge-producer --listen) publishes over SASL_SSL.
- A wrong password: the CLI programs fail naming authentication, a service
  and the ingest endpoint stay up but /readyz is 503 naming the brokers and
  the authentication error; restarted with the right
  password it delivers what was produced meanwhile. An untrusted broker
  certificate (no CA setting): a TLS error naming certificate verification,
  not ready.
- The SASL password (right or wrong) never appears in any output, also with
  librdkafka's debug logging turned on through the passthrough.
- SCRAM-SHA-512 (the production overlay's mechanism): librdkafka before 2.6.1
  (Debian 12 has 2.0.2) cannot authenticate with SCRAM to Apache Kafka 4 (its
  nonce defect, confluentinc/librdkafka#4895): the flow above then runs with
  PLAIN, and the SCRAM test checks that the authentication error says so
  rather than leaving an operator to doubt a right password.

Runs only where Apache Kafka runs (java; the jars in the cache or Maven).
"""
import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess

import pytest

from hbtest.ingest import Ingest
from hbtest.kafka import KAFKA_SH, ApacheKafka, Bootstrap
from hbtest.procs import BIN, SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, Retrier
from test_delivery import AUTH_VALUE, SECRET, event, register_verified

pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None, reason="no java: Apache Kafka cannot run"),
    pytest.mark.xdist_group("apache-kafka"),
]


def librdkafka_version():
    lib = ctypes.CDLL(ctypes.util.find_library("rdkafka") or "librdkafka.so.1")
    lib.rd_kafka_version.restype = ctypes.c_int
    return lib.rd_kafka_version()


# librdkafka before 2.6.1 sends a SCRAM client-final nonce Kafka 4 refuses.
SCRAM_WORKS = librdkafka_version() >= 0x020601FF
MECHANISM = "SCRAM-SHA-512" if SCRAM_WORKS else "PLAIN"


@pytest.fixture(scope="module")
def secure_kafka():
    r = subprocess.run([str(KAFKA_SH), "fetch"], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.skip(f"Apache Kafka is not available here: {r.stderr.strip()[-300:]}")
    k = ApacheKafka(nodes=1, sasl_ssl=True)
    yield k
    k.stop()


def run(argv, env, input=None):
    return subprocess.run([str(a) for a in argv], env={**os.environ, **env}, input=input,
                          capture_output=True, text=True, timeout=90 * SLOW)


def produce_over(space, kafka, lines, timeout_ms=None, **client):
    env = {**space.env(), **kafka.client_env(mechanism=MECHANISM, **client)}
    if timeout_ms:
        env["HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS"] = str(timeout_ms)
    data = "".join(json.dumps(l) + "\n" for l in lines)
    return run([BIN / "hookbridge-producer", "-"], env, input=data)


def test_services_over_sasl_ssl_deliver_retry_and_recover_from_a_wrong_password(
        secure_kafka, db_url, procs, workdir):
    k = secure_kafka
    wrong = "kpw-wrong-" + os.urandom(6).hex()
    space = k.space(create=False)
    bootstrap = Bootstrap(k.sasl_ssl_bootstrap, space)
    sched = {"HOOKBRIDGE_RETRY_SCHEDULE": "1s", "HOOKBRIDGE_RETRY_JITTER": "0"}
    outputs = []

    # The topics, created over SASL_SSL (the harness's plaintext listener unused).
    r = run([BIN / "hookbridge-migrate", "topics"],
            {**space.env("1s"), **k.client_env(mechanism=MECHANISM)})
    outputs.append(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    # events, the 1s tier, the default hop tiers (20s, 1m), the dead letters
    assert len([l for l in r.stdout.splitlines() if l.startswith("created")]) == 5, r.stdout

    # A wrong password: migrate fails naming authentication, debug logging on.
    r = run([BIN / "hookbridge-migrate", "topics"],
            {**space.env("1s"), **k.client_env(mechanism=MECHANISM, password=wrong),
             "HOOKBRIDGE_KAFKA_DEBUG": "security,broker,conf", "HOOKBRIDGE_LOG_LEVEL": "debug"})
    outputs.append(r.stdout + r.stderr)
    assert r.returncode != 0
    err = r.stderr.splitlines()[-1]
    assert err.startswith("hookbridge-migrate: error: cannot read the cluster's metadata: "
                          "sasl_ssl://127.0.0.1:"), r.stderr
    assert "SASL authentication error: Authentication failed" in err, err

    # No CA setting: the broker's certificate is not trusted, said so.
    r = run([BIN / "hookbridge-migrate", "topics"],
            {**space.env("1s"), **k.client_env(mechanism=MECHANISM, ca=False)})
    outputs.append(r.stdout + r.stderr)
    assert r.returncode != 0
    err = r.stderr.splitlines()[-1]
    assert "cannot read the cluster's metadata" in err and "certificate verify failed" in err, err

    # Deliver, signed, through the delay tier: the first attempt fails.
    receiver = Receiver(procs, workdir, secret=SECRET, auth=f"Authorization: {AUTH_VALUE}",
                        fail_first=1)
    good = {**sched, **k.client_env(mechanism=MECHANISM)}
    d = Dispatcher(procs, db_url, bootstrap, extra_env=good)
    rt = Retrier(procs, db_url, bootstrap, extra_env=good)
    d.wait_ready(60)
    rt.wait_ready(60)
    register_verified(db_url, receiver.url, ["user.session.start"])
    r = produce_over(space, k, [event("user.session.start")])
    outputs.append(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: len(receiver.events()) == 1, 40, "the event, after one retry")
    assert [p["status"] for p in receiver.posts()] == [503, 204]

    # The ingest endpoint (hookbridge-producer --listen) publishes over SASL_SSL too.
    ing_env = {"HOOKBRIDGE_EVENTS_TOPIC": space.events_topic,
               "HOOKBRIDGE_DLQ_TOPIC": space.dlq_topic}
    ing = Ingest(procs, k.sasl_ssl_bootstrap,
                 extra_env={**ing_env, **k.client_env(mechanism=MECHANISM)})
    ing.wait_ready(40)
    status, _, body = ing.post([event("user.session.start")])
    assert status == 200 and body == {"produced": 1}, body
    # ... and an event it refuses to the dead-letter topic, acknowledged there
    status, _, body = ing.post([{"uuid": "no-type"}])
    assert status == 200 and (body["produced"], body["dead_lettered"]) == (0, 1), body
    wait_until(lambda: len(receiver.events()) == 2, 40, "the ingested event, after one retry")
    assert all(req["verified"] for req, _ in receiver.events())

    # The producer CLI with a wrong password: fails, naming authentication.
    r = produce_over(space, k, [event("user.session.start")], password=wrong,
                     timeout_ms=3000)
    outputs.append(r.stdout + r.stderr)
    assert r.returncode != 0
    err = next((l for l in r.stderr.splitlines() if "not delivered" in l), r.stderr)
    assert "1 line not delivered" in err and "did not let this producer in" in err, r.stderr
    assert "SASL authentication error" in err, err

    # The dispatcher restarted with a wrong password, the retrier without the
    # CA: both up, not ready, naming the brokers; an event produced meanwhile
    # waits for them.
    d.proc.kill()
    rt.proc.kill()
    bad_d = Dispatcher(procs, db_url, bootstrap, name="dispatcher-wrong-password",
                       extra_env={**sched, **k.client_env(mechanism=MECHANISM, password=wrong)})
    bad_r = Retrier(procs, db_url, bootstrap, name="retrier-no-ca",
                    extra_env={**sched, **k.client_env(mechanism=MECHANISM, ca=False)})
    bad_ing = Ingest(procs, k.sasl_ssl_bootstrap, name="ingest-wrong-password",
                     extra_env={**ing_env, **k.client_env(mechanism=MECHANISM, password=wrong)})
    r = produce_over(space, k, [event("user.session.start")])
    outputs.append(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr

    seen = {}

    def not_ready_saying(svc, reason):
        status, body = seen[svc.name] = svc.get("/readyz")
        return (status == 503 and "Kafka broker" in body and k.sasl_ssl_bootstrap in body
                and reason in body and body)
    for svc, reason in ((bad_d, "SASL authentication error: Authentication failed"),
                        (bad_r, "certificate verify failed")):
        try:
            body = wait_until(lambda: not_ready_saying(svc, reason), 40,
                              f"{svc.name} not ready, naming the brokers and why")
        except AssertionError as e:
            raise AssertionError(f"{e}; /readyz said {seen[svc.name]}") from None
        assert svc.proc.alive() and svc.get("/healthz")[0] == 200, body
        assert reason in svc.proc.output()
    status, body = wait_until(lambda: (st := bad_ing.ops("/readyz"))[0] == 503 and st, 40,
                              "the ingest endpoint with a wrong password not ready")
    assert "SASL authentication error" in body, body
    assert len(receiver.events()) == 2

    # Restarted with the right settings: the event produced meanwhile arrives.
    bad_d.proc.kill()
    bad_r.proc.kill()
    d2 = Dispatcher(procs, db_url, bootstrap, name="dispatcher-fixed", extra_env=good)
    r2 = Retrier(procs, db_url, bootstrap, name="retrier-fixed", extra_env=good)
    d2.wait_ready(60)
    r2.wait_ready(60)
    # (the receiver fails each event's first attempt: the retrier delivers it)
    wait_until(lambda: len(receiver.events()) == 3, 40, "the event produced while it was down")
    assert [p["status"] for p in receiver.posts()] == [503, 204] * 3
    assert all(req["verified"] for req, _ in receiver.events())

    outputs += [p.output() for p in procs.procs]
    for out in outputs:
        assert k.sasl_password not in out and wrong not in out
        # the CLI runs too, under the sanitizer build (the procs fixture checks the services)
        assert "ERROR: AddressSanitizer" not in out and "runtime error:" not in out, out[-4000:]


def test_scram_sha_512_as_the_production_overlay_sets_it(secure_kafka, procs):
    """The right SCRAM-SHA-512 password: works with a librdkafka that can
    (2.6.1 and later); with an older one the error says why the broker
    refuses a right password, and still never shows it."""
    k = secure_kafka
    space = k.space(create=False)
    r = run([BIN / "hookbridge-migrate", "topics"],
            {**space.env(), **k.client_env(mechanism="SCRAM-SHA-512")})
    out = r.stdout + r.stderr
    assert k.sasl_password not in out
    assert "ERROR: AddressSanitizer" not in out and "runtime error:" not in out, out[-4000:]
    if SCRAM_WORKS:
        assert r.returncode == 0, out
        return
    assert r.returncode != 0
    assert "SASL authentication error" in r.stderr
    assert "cannot authenticate with SCRAM to Apache Kafka 4" in r.stderr, r.stderr[-2000:]
    assert "2.6.1" in r.stderr
