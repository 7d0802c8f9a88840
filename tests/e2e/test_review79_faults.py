"""Review 79: review 78's "out of open files" on a dispatcher, for an
endpoint named by a host name (as production endpoints are) rather than by
an address. Real parts on loopback: PostgreSQL, the devbroker, the
dispatcher, the retrier, a receiver reached through a name /etc/hosts maps
to 127.0.0.1 (this machine's own)."""
import socket
import time

import pytest

from hbtest.procs import wait_until
from hbtest.stack import Receiver, produce
from test_delivery import event, sql
from test_review78_faults import delivered_after, out_of_files, services_at_info


def loopback_name():
    """A host name other than localhost (curl answers that one itself,
    with no lookup) that resolves to 127.0.0.1."""
    name = socket.gethostname()
    try:
        if name and name != "localhost" and socket.gethostbyname(name) == "127.0.0.1":
            return name
    except OSError:
        pass
    pytest.skip("this machine's host name does not resolve to 127.0.0.1")


def test_out_of_open_files_a_host_name_not_resolved_is_no_attempt_and_opens_no_circuit(
        db_url, broker, procs, workdir):
    """Review 78 made a socket the dispatcher could not open (EMFILE) an
    attempt not made, but only where curl opens it: an endpoint named by a
    host name, its name not in curl's cache (new, or past its 60 s there),
    needs a lookup first, and out of open files that failed. Each of its
    deliveries was then "attempt 1 failed (could not resolve host NAME)",
    the endpoint's failure: 20 of them opened its circuit ("circuit open
    after 20 consecutive failures ... endpoint http://NAME:PORT"), and a
    healthy endpoint got nothing for a minute for a fault that was the
    dispatcher's, the log never saying "out of open files". Now such a
    lookup is an attempt not made too, said at warn ("not sent: this
    process is out of open files ..."), no circuit opens, and every
    delivery arrives once the descriptors are back."""
    name = loopback_name()
    rec = Receiver(procs, workdir)
    sql(db_url, "SELECT hookbridge.register('r79a', %s, ARRAY['user.session.start'], '{}')",
        rec.url)
    for i in range(3):
        sql(db_url, "SELECT hookbridge.register('r79', %s, ARRAY['user.session.end'], '{}')",
            rec.url.replace("127.0.0.1", name) + f"?s={i}")
    sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
                "status = 'active'")
    d = services_at_info(db_url, broker, procs)
    # the dispatcher is running and delivering (to the address)
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: len(rec.posts()) >= 1, 10, "the first event's delivery")
    with out_of_files(d):
        evs = [event("user.session.end") for _ in range(10)]
        produce(broker.bootstrap, evs)
        wait_until(lambda: "attempt 1 " in d.proc.output(), 10, "the 30 deliveries' attempts")
        time.sleep(1)
    out = d.proc.output()
    assert "could not resolve host" not in out, out[-3000:]
    assert "circuit open" not in out, out[-3000:]
    assert '"level":"warn","component":"dispatcher","msg":"not sent: this process is out of ' \
           'open files (Too many open files; ulimit -n ' in out, out[-3000:]
    delivered_after(d, rec, evs, 30)
