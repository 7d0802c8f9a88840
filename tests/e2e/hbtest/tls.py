"""TLS for end-to-end tests: a throwaway PKI made with the openssl CLI, and the
example receiver serving HTTPS (optionally requiring client certificates)."""
import socket
import subprocess
from pathlib import Path

from .procs import BIN, free_port, wait_until
from .stack import Receiver


def _openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=60)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr.decode()}"


class Pki:
    """A CA and certificates it issues, in workdir/pki. Keys are EC P-256
    (fast to make) and unencrypted; server certificates carry their names in
    subjectAltName, which is what hostname verification reads."""

    def __init__(self, workdir):
        self.dir = Path(workdir) / "pki"
        self.dir.mkdir(exist_ok=True)
        self.ca, self.ca_key = self._self_signed("ca", "hookbridge test CA",
                                                 "basicConstraints=critical,CA:TRUE\n"
                                                 "keyUsage=critical,keyCertSign,cRLSign\n")

    def _key(self, name):
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", f"{name}.key", cwd=self.dir)
        return self.dir / f"{name}.key"

    def _self_signed(self, name, cn, ext):
        key = self._key(name)
        (self.dir / f"{name}.ext").write_text(ext)
        _openssl("req", "-x509", "-new", "-key", key, "-out", f"{name}.pem", "-days", "2",
                 "-subj", f"/CN={cn}", "-addext", ext.splitlines()[0],
                 *sum((["-addext", line] for line in ext.splitlines()[1:]), []), cwd=self.dir)
        return self.dir / f"{name}.pem", key

    def issue(self, name, cn, ext):
        """A certificate for `name` signed by the CA: (cert path, key path)."""
        key = self._key(name)
        (self.dir / f"{name}.ext").write_text(ext)
        _openssl("req", "-new", "-key", key, "-out", f"{name}.csr", "-subj", f"/CN={cn}",
                 cwd=self.dir)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", self.ca, "-CAkey", self.ca_key,
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile",
                 f"{name}.ext", cwd=self.dir)
        return self.dir / f"{name}.pem", key

    def server(self, name="server", san="DNS:localhost,IP:127.0.0.1"):
        return self.issue(name, "localhost", f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                          "extendedKeyUsage=serverAuth\n")

    def client(self, name="client"):
        return self.issue(name, "hookbridge-dispatcher",
                          "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")

    def untrusted_server(self, name="selfsigned"):
        """A self-signed server certificate for 127.0.0.1/localhost that no CA vouches for."""
        return self._self_signed(name, "localhost",
                                 "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                 "basicConstraints=CA:FALSE\n")


class TlsReceiver(Receiver):
    """hookbridge-receiver serving HTTPS with cert/key; with client_ca it
    requires a client certificate issued by that CA. Records like Receiver."""

    def __init__(self, group, workdir, cert, key, client_ca=None, secret=None, auth=None,
                 name="tls-receiver", port=None):
        self.port = port or free_port()
        self.record = Path(workdir) / f"{name}.jsonl"
        argv = [BIN / "hookbridge-receiver", "--listen", f"127.0.0.1:{self.port}",
                "--record", self.record, "--tls-cert", cert, "--tls-key", key]
        if client_ca:
            argv += ["--tls-client-ca", client_ca]
        if secret:
            argv += ["--secret", secret]
        if auth:
            argv += ["--auth", auth]
        self.name = name
        self.argv = argv
        self.group = group
        self.proc = group.start(name, argv)
        self.url = f"https://127.0.0.1:{self.port}/hook"
        wait_until(self._up, 10, "the TLS receiver to listen")

    def _up(self):
        # A plain HTTP probe cannot talk to a TLS server: the port accepting
        # connections is the sign it listens (or its exit, reported below).
        assert self.proc.alive(), f"{self.name} exited:\n{self.proc.output()[-2000:]}"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False
