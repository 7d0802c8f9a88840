"""Outbound security end to end: webhooks over HTTPS to a receiver whose
certificate comes from a CA the test makes (trusted through
HOOKBRIDGE_CA_FILE), refusals of certificates nobody vouches for, client
certificates (mTLS), and private addresses let through by
HOOKBRIDGE_ALLOWED_CIDRS. What each test checks is what an operator sees:
deliveries arriving, or a readable reason in verification_error, the
delivery log or the dispatcher's exit message."""
import json
import subprocess

import pytest

from hbtest.procs import BIN, SECRET_KEY, SLOW, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from hbtest.tls import Pki, TlsReceiver
from hbtest.webhooks import signature_valid
from test_delivery import AUTH_VALUE, SECRET, event, register_verified, sql, verify_once

AUTH = f"Authorization: {AUTH_VALUE}"


def attempts(db_url, sub):
    return sql(db_url, "SELECT a.outcome, a.http_status, a.error "
               "FROM hookbridge.delivery_attempts a JOIN hookbridge.deliveries d "
               "USING (delivery_id) WHERE d.subscription_id=%s ORDER BY a.id", sub)


def https_dispatcher(procs, db_url, broker, pki, name="dispatcher", **env):
    """A dispatcher that refuses http:// and trusts only the test's CA."""
    extra = {"HOOKBRIDGE_ALLOW_HTTP": "0", "HOOKBRIDGE_CA_FILE": str(pki.ca)}
    extra.update(env)
    d = Dispatcher(procs, db_url, broker.bootstrap, extra_env=extra, name=name)
    d.wait_ready()
    return d


def test_https_delivery_to_a_receiver_with_our_own_ca(db_url, broker, procs, workdir):
    pki = Pki(workdir)
    cert, key = pki.server()
    receiver = TlsReceiver(procs, workdir, cert, key, secret=SECRET, auth=AUTH)
    https_dispatcher(procs, db_url, broker, pki)

    # The certificate names 127.0.0.1 and localhost: both verify.
    sub = register_verified(db_url, receiver.url, ["user.session.start"])
    _, state, why = verify_once(db_url, f"https://localhost:{receiver.port}/hook")
    assert (state, why) == ("verified", None)

    sent = [event("user.session.start") for _ in range(3)]
    produce(broker.bootstrap, sent)
    wait_until(lambda: len(receiver.events()) >= 3, 30, "3 deliveries over HTTPS")
    got = receiver.events()
    assert sorted(e["uuid"] for _, e in got) == sorted(e["uuid"] for e in sent)
    for req, _ in got:
        assert signature_valid(SECRET, req)
        assert req["verified"] is True
    wait_until(lambda: [a[0] for a in attempts(db_url, sub)] == ["delivered"] * 3 or None, 10,
               "3 delivered attempts in the delivery log")


def test_certificate_for_another_name_is_refused(db_url, broker, procs, workdir):
    pki = Pki(workdir)
    cert, key = pki.server("other", san="DNS:other.example")  # our CA, wrong name
    receiver = TlsReceiver(procs, workdir, cert, key)
    https_dispatcher(procs, db_url, broker, pki)
    _, state, why = verify_once(db_url, receiver.url)
    assert state == "failed"
    assert why.startswith("TLS error: ") and "name" in why, why
    assert receiver.requests() == []  # no request got past the handshake


def test_untrusted_self_signed_certificate_is_refused(db_url, broker, procs, workdir):
    pki = Pki(workdir)
    cert, key = pki.server()
    trusted = TlsReceiver(procs, workdir, cert, key, secret=SECRET, auth=AUTH, name="trusted")
    bad_cert, bad_key = pki.untrusted_server()
    untrusted = TlsReceiver(procs, workdir, bad_cert, bad_key, name="untrusted")
    d = https_dispatcher(procs, db_url, broker, pki)

    # Verification of the self-signed endpoint fails with the TLS reason.
    _, state, why = verify_once(db_url, untrusted.url)
    assert state == "failed"
    assert why.startswith("TLS error: ") and "self-signed certificate" in why, why

    # A verified subscription whose endpoint later presents an untrusted
    # certificate (the server behind the URL was replaced): its deliveries
    # fail with the same reason in the delivery log, and nothing is sent.
    sub = register_verified(db_url, trusted.url, ["user.session.start"])
    trusted.proc.stop()
    impostor = TlsReceiver(procs, workdir, bad_cert, bad_key, name="impostor", port=trusted.port)
    produce(broker.bootstrap, [event("user.session.start")])

    def tls_failure():
        return [a for a in attempts(db_url, sub) if a[2] and a[2].startswith("TLS error: ")]

    failed = wait_until(tls_failure, 30, "a delivery attempt failing with a TLS error")
    outcome, status, error = failed[0]
    assert outcome in ("retry", "failed") and status is None
    assert "self-signed certificate" in error
    assert impostor.requests() == [] and untrusted.requests() == []
    assert "self-signed certificate" in d.proc.output()


def test_mtls_receiver_refuses_a_dispatcher_without_a_client_certificate(db_url, broker, procs,
                                                                          workdir):
    pki = Pki(workdir)
    cert, key = pki.server()
    client_cert, client_key = pki.client()
    receiver = TlsReceiver(procs, workdir, cert, key, client_ca=pki.ca, secret=SECRET, auth=AUTH)

    # Without a client certificate the TLS handshake is refused: the
    # endpoint never sees a request and verification fails.
    d = https_dispatcher(procs, db_url, broker, pki, name="no-client-cert")
    _, state, why = verify_once(db_url, receiver.url, name="no-cert")
    assert state == "failed"
    # TLS 1.3: curl either reads the server's "certificate required" alert or
    # finds the connection closed after the handshake (then our reason asks
    # whether the endpoint requires a client certificate); both say why.
    assert why.startswith("TLS error: "), why
    assert "client certificate" in why or "certificate required" in why, why
    assert receiver.requests() == []
    assert "TLS handshake refused: the client sent no certificate" in receiver.proc.output()
    d.proc.stop()

    # With HOOKBRIDGE_TLS_CLIENT_CERT/KEY it is verified and delivered to.
    # (In a consumer group of its own: joined in 3 s, not the 5 s of the group
    # the first one just left; no event was produced before.)
    https_dispatcher(procs, db_url, broker, pki, name="client-cert",
                     HOOKBRIDGE_CONSUMER_GROUP="hookbridge-dispatcher-client-cert",
                     HOOKBRIDGE_TLS_CLIENT_CERT=str(client_cert),
                     HOOKBRIDGE_TLS_CLIENT_KEY=str(client_key))
    register_verified(db_url, receiver.url, ["user.session.start"])
    sent = event("user.session.start")
    produce(broker.bootstrap, [sent])
    wait_until(lambda: len(receiver.events()) == 1, 30, "the delivery over mTLS")
    assert receiver.events()[0][1]["uuid"] == sent["uuid"]


def test_allowed_cidrs_let_a_private_endpoint_through(db_url, broker, procs, workdir):
    receiver = Receiver(procs, workdir, secret=SECRET, auth=AUTH)  # on 127.0.0.1

    # Private networks refused: loopback is refused, and the reason says
    # which address it was and what would allow it.
    d = Dispatcher(procs, db_url, broker.bootstrap, name="no-private",
                   extra_env={"HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS": "0"})
    d.wait_ready()
    _, state, why = verify_once(db_url, receiver.url, name="refused")
    assert state == "failed"
    assert why == ("address 127.0.0.1 is loopback (refused; allow it with "
                   "HOOKBRIDGE_ALLOWED_CIDRS=127.0.0.1/32 or "
                   "HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS=1)")
    # never connected (the one request is the test's own readiness probe of /)
    assert [r for r in receiver.requests() if r["path"] != "/"] == []
    assert "address 127.0.0.1 is loopback" in d.proc.output()
    d.proc.stop()

    # The same endpoint inside HOOKBRIDGE_ALLOWED_CIDRS: verified and delivered.
    # (In a consumer group of its own, joined in 3 s, not the 5 s of the group
    # the first one just left; no event was produced before.)
    d = Dispatcher(procs, db_url, broker.bootstrap, name="allowlist",
                   group_id="hookbridge-dispatcher-allowlist",
                   extra_env={"HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS": "0",
                              "HOOKBRIDGE_ALLOWED_CIDRS": "10.20.0.0/16, 127.0.0.0/8"})
    d.wait_ready()
    register_verified(db_url, receiver.url, ["user.session.start"])
    sent = event("user.session.start")
    produce(broker.bootstrap, [sent])
    wait_until(lambda: len(receiver.events()) == 1, 30, "the delivery to the allowed address")
    assert receiver.events()[0][1]["uuid"] == sent["uuid"]


def _start_fails(db_url, env):
    full = {"HOOKBRIDGE_DATABASE_URL": db_url, "HOOKBRIDGE_KAFKA_BROKERS": "127.0.0.1:1",
            "HOOKBRIDGE_HTTP_LISTEN": "127.0.0.1:0", "PATH": "/usr/bin:/bin",
            "HOOKBRIDGE_SECRET_KEY": SECRET_KEY}
    full.update(env)
    r = subprocess.run([str(BIN / "hookbridge-dispatcher")], env=full, capture_output=True,
                       timeout=30 * SLOW)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode != 0, out
    # The log is JSON lines: compare with the messages as an operator reads them.
    msgs = []
    for line in out.splitlines():
        try:
            msgs.append(json.loads(line)["msg"])
        except (ValueError, KeyError, TypeError):
            msgs.append(line)
    return "\n".join(msgs)


@pytest.mark.parametrize("case", ["cidr", "ca-missing", "ca-not-pem", "key-mismatch",
                                  "key-encrypted", "key-without-cert"])
def test_bad_security_settings_stop_startup_with_a_clear_message(db_url, workdir, case):
    pki = Pki(workdir)
    client_cert, client_key = pki.client()
    _, other_key = pki.client("other-client")
    encrypted = pki.dir / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", client_key, "-out", encrypted, "-aes256",
                    "-passout", "pass:hunter2"], check=True, capture_output=True)
    env, want = {
        "cidr": ({"HOOKBRIDGE_ALLOWED_CIDRS": "10.0.0.0/8,10.20.1.0/16"},
                 'HOOKBRIDGE_ALLOWED_CIDRS: "10.20.1.0/16" has bits set after the prefix '
                 "(did you mean 10.20.0.0/16?)"),
        "ca-missing": ({"HOOKBRIDGE_CA_FILE": str(pki.dir / "nope.pem")},
                       f"HOOKBRIDGE_CA_FILE={pki.dir / 'nope.pem'}: cannot read: "
                       "No such file or directory"),
        "ca-not-pem": ({"HOOKBRIDGE_CA_FILE": str(pki.dir / "ca.ext")},
                       f"HOOKBRIDGE_CA_FILE={pki.dir / 'ca.ext'}: no usable PEM certificates"),
        "key-mismatch": ({"HOOKBRIDGE_TLS_CLIENT_CERT": str(client_cert),
                          "HOOKBRIDGE_TLS_CLIENT_KEY": str(other_key)},
                         f"HOOKBRIDGE_TLS_CLIENT_KEY={other_key}: the private key does not "
                         "match the certificate"),
        "key-encrypted": ({"HOOKBRIDGE_TLS_CLIENT_CERT": str(client_cert),
                           "HOOKBRIDGE_TLS_CLIENT_KEY": str(encrypted)},
                          f"HOOKBRIDGE_TLS_CLIENT_KEY={encrypted}: the private key is encrypted"),
        "key-without-cert": ({"HOOKBRIDGE_TLS_CLIENT_KEY": str(client_key)},
                             "HOOKBRIDGE_TLS_CLIENT_KEY is set without "
                             "HOOKBRIDGE_TLS_CLIENT_CERT"),
    }[case]
    out = _start_fails(db_url, env)
    assert want in out, out
    # The key's content never reaches the output, only its path.
    for key in (client_key, other_key, encrypted):
        body = [line for line in key.read_text().splitlines() if "-----" not in line]
        assert not any(line in out for line in body)
    assert "PRIVATE KEY" not in out


class ResumptionReceiver:
    """An HTTPS receiver (Python's ssl) that closes every connection after one
    answer, so each request needs a new TLS handshake, and records for each
    POST whether that handshake resumed an earlier session. Answers the
    verification challenge and 204 to deliveries."""

    def __init__(self, cert, key):
        import http.server
        import ssl
        import threading

        self.resumed = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, code, body=b""):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def do_GET(self):
                challenge = self.headers.get("X-Okta-Verification-Challenge", "")
                self._answer(200, json.dumps({"verification": challenge}).encode())

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.resumed.append(self.connection.session_reused)
                self._answer(204)

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_new_connections_resume_the_tls_session_of_earlier_ones(db_url, broker, procs, workdir):
    """An endpoint that closes its connections (or a keep-alive that timed
    out) costs a full handshake per new connection unless the session is
    resumed. The dispatcher keeps the TLS sessions of all its connections,
    whichever pooled curl handle makes the next one, and of many hosts.
    Twenty-four endpoints (hosts) that close every connection each get one
    delivery per event, at the same time, round after round: after the first
    round every connection resumes its host's session. Before, each pooled
    curl handle kept its own cache, and a handle meeting a host it had not
    served before made a full handshake; then one cache for all handles kept
    only curl's 8 sessions, so with 24 hosts each round evicted the sessions
    the next round needed."""
    pki = Pki(workdir)
    cert, key = pki.server()
    hosts = 24
    receivers = [ResumptionReceiver(cert, key) for _ in range(hosts)]
    try:
        https_dispatcher(procs, db_url, broker, pki)
        subs = [register_verified(db_url, r.url, ["user.session.start"]) for r in receivers]

        def logged():
            return sum(1 for s in subs for a in attempts(db_url, s) if a[0] == "delivered")

        rounds = 4
        for i in range(1, rounds + 1):
            produce(broker.bootstrap, [event("user.session.start")])
            wait_until(lambda: logged() >= hosts * i or None, 30, f"round {i} delivered and logged")
        later = [r.resumed[1:] for r in receivers]
        fresh = sum(x.count(False) for x in later)
        assert all(len(x) == rounds - 1 for x in later), later
        assert fresh == 0, f"{fresh} of {hosts * (rounds - 1)} connections made a full TLS handshake"
    finally:
        for r in receivers:
            r.stop()
