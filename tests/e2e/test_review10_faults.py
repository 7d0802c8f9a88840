"""Review 10: the event source side, the Schema Registry client and the
consumer group, as an operator meets them.

- HOOKBRIDGE_SCHEMA_REGISTRY_CA_FILE is checked at start like every other CA
  file (docs/design.md, Configuration principles: a file the program cannot
  use stops it with one line and exit status 1). It was not: a path with a
  typo, or a file that is not PEM, started a dispatcher that was ready, and
  the first event in the registry's framing waited for ever behind curl's
  "error setting certificate file". A usable private CA reads the registry
  over HTTPS (nothing tested that before).
- A password in HOOKBRIDGE_SCHEMA_REGISTRY_URL holding an unencoded '/'
  (API secrets often do) was shown whole in the start line, in every fetch
  error and in /readyz's body.
"""
from hbtest.procs import wait_until
from hbtest.pyavro import registry_framed
from hbtest.registry import StandInRegistry
from hbtest.stack import Dispatcher
from hbtest.tls import Pki
from test_schema_evolution import NEWER, an_event, delivered, send, start


def test_a_registry_ca_file_is_checked_at_start_and_a_private_ca_reads_the_registry(
        db_url, broker, procs, workdir):
    pki = Pki(workdir)
    registry = StandInRegistry(tls=pki.server("registry"))
    try:
        registry.add(11, NEWER)
        env = {"HOOKBRIDGE_SCHEMA_REGISTRY_URL": registry.url,
               "HOOKBRIDGE_SCHEMA_REGISTRY_USER_INFO": registry.user_info}
        not_pem = workdir / "not-a-bundle.pem"
        not_pem.write_text("this is not a certificate\n")
        for path, why in ((workdir / "no-such-ca.pem", "cannot read: No such file or directory"),
                          (not_pem, "no usable PEM certificates: ")):
            d = Dispatcher(procs, db_url, broker.bootstrap, name=f"dispatcher-{path.stem}",
                           extra_env={**env, "HOOKBRIDGE_SCHEMA_REGISTRY_CA_FILE": str(path)})
            wait_until(lambda: not d.proc.alive(), 20, "the dispatcher to refuse to start")
            assert d.proc.p.returncode == 1, d.proc.output()[-2000:]
            assert f"cannot start: HOOKBRIDGE_SCHEMA_REGISTRY_CA_FILE={path}: {why}" in \
                d.proc.output()

        # A password with a '/' not percent-encoded in the URL: never shown.
        # (curl cannot use such a URL; the dispatcher starts all the same and
        # says why on /readyz once events in the registry's framing come.)
        leaky = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-leaky", extra_env={
            "HOOKBRIDGE_SCHEMA_REGISTRY_URL": f"https://key:Zm9v/YmFy@127.0.0.1:{registry.port}"})
        wait_until(lambda: "Schema Registry framing read" in leaky.proc.output(), 20,
                   "the dispatcher to name its registry")
        assert f"from https://127.0.0.1:{registry.port}" in leaky.proc.output()
        assert "Zm9v/YmFy" not in leaky.proc.output()
        leaky.proc.stop()

        receiver, d = start(procs, workdir, db_url, broker,
                            {**env, "HOOKBRIDGE_SCHEMA_REGISTRY_CA_FILE": str(pki.ca)})
        ev = an_event(riskScore=7)
        send(broker, registry_framed(NEWER, ev, 11))
        wait_until(lambda: ev["uuid"] in delivered(receiver), 30,
                   "the event whose writer schema came from the registry over HTTPS")
        assert registry.served() == [("GET", "/schemas/ids/11", 200)]
    finally:
        registry.stop()
