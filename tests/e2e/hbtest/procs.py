"""Starting and stopping the programs under test.

Every process a test starts is registered with a ProcessGroup that stops it
(SIGTERM, then SIGKILL after a grace period) when the test ends, also when the
test fails. Output goes to a log file per process, printed when a test fails.
"""
import base64
import importlib.util
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("HOOKBRIDGE_BIN", REPO / "bin"))
# Sanitizer builds are slower: stretch every timeout.
SLOW = float(os.environ.get("HOOKBRIDGE_TEST_SLOW", "1"))


# The key that seals subscription secrets (HOOKBRIDGE_SECRET_KEY): one per test
# run, in the environment, so that every service a test starts (also with an
# environment built from os.environ) opens what another one sealed.
SECRET_KEY = os.environ.setdefault("HOOKBRIDGE_SECRET_KEY",
                                   base64.b64encode(os.urandom(32)).decode())


def http_get(port, path):
    """GET http://127.0.0.1:port/path: (status, body); (None, "") when nothing answers
    (in 2 s, stretched by SLOW: a service's HTTP thread slowed down by the
    sanitizers on a loaded machine is not a service that does not answer,
    and a metric read as its default then is a wrong value)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2 * SLOW) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def _port_picker():
    spec = importlib.util.spec_from_file_location(
        "free_ports", REPO / "deploy" / "local" / "free_ports.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# Each pytest-xdist worker chooses ports of its own residue class (see
# deploy/local/free_ports.py), and so do the scripts it runs (kafka.sh,
# make run): two workers never choose one port.
if os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
    os.environ.setdefault(
        "HOOKBRIDGE_PORT_SLOT", f"{os.environ['PYTEST_XDIST_WORKER'][2:]}/"
        f"{os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1')}")
_PORTS = _port_picker()
port_slot, port_range = _PORTS.port_slot, _PORTS.port_range
# The ports this process handed out last, oldest first (dict: ordered set).
_PORTS_GIVEN = {}
# How many it remembers: far more than one test starts servers on, far fewer
# than a worker's class holds (about 2,800 ports with 8 workers). Remembering
# every port ever given exhausted the class in a long run, and choose() then
# spun forever: the worker hung, and its tests never started.
PORTS_REMEMBERED = 1000
# Ports never handed out while this process lives (reserve_ports).
_PORTS_RESERVED = set()


def reserve_ports(ports):
    """Keeps free_port() from ever handing out these (the listeners of an
    Apache Kafka node that a test stops and starts again)."""
    _PORTS_RESERVED.update(ports)


def free_port():
    """A loopback port nothing listens on, none of the last PORTS_REMEMBERED
    this process handed out: a server started in the background may not
    listen yet when the next port is chosen, and the kernel can give the same
    free port twice in a row (CI once had a dispatcher and its receiver on
    one port)."""
    port = _PORTS.choose(1, _PORTS_RESERVED.union(_PORTS_GIVEN))[0]
    _PORTS_GIVEN[port] = None
    if len(_PORTS_GIVEN) > PORTS_REMEMBERED:
        del _PORTS_GIVEN[next(iter(_PORTS_GIVEN))]
    return port


def wait_until(pred, timeout, what, interval=0.05):
    """Polls pred() until it returns a truthy value; fails naming `what`."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * SLOW:.0f}s waiting for {what}")
        time.sleep(interval)


class Proc:
    def __init__(self, name, argv, env, log_path):
        self.name = name
        self.argv = argv
        # How long stop() waits after SIGTERM before SIGKILL; a program known
        # not to exit meanwhile (a receiver asleep in its handlers) sets less.
        self.stop_timeout = 15
        # stop_all kills it instead: a throwaway server whose clean stop no
        # test is about (the devbroker: librdkafka's mock cluster takes up to
        # 1 s to join its threads; ~70 tests a pass paid it)
        self.kill_at_teardown = False
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "ab")
        self.p = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def output(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig):
        if self.alive():
            self.p.send_signal(sig)

    def stop(self, timeout=None):
        """SIGTERM and wait; SIGKILL if it does not exit. Returns the exit code."""
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait((self.stop_timeout if timeout is None else timeout) * SLOW)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()
        return self.p.returncode

    def kill(self):
        if self.alive():
            self.p.kill()
        self.p.wait()
        self.log.close()


class ProcessGroup:
    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.procs = []

    def start(self, name, argv, env=None, **kw):
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = Proc(name, [str(a) for a in argv], full_env, self.workdir / f"{name}.log")
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            if p.kill_at_teardown:
                p.kill()
            elif p.alive():
                p.stop()

    def dump(self):
        out = []
        for p in self.procs:
            out.append(f"----- {p.name} ({' '.join(p.argv[:1])}) -----\n{p.output()[-6000:]}")
        return "\n".join(out)
