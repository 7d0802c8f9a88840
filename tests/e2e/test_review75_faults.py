"""Review 75: an adversarial look at review 73's resend (lib/hb_http.c,
hb_http_resend; docs/design.md below the classification table): a request
whose kept-alive connection the endpoint dropped as it arrived is sent once
more on a fresh connection within what is left of its timeout.

Name resolution is moved with test_review57_faults.py's getaddrinfo shim."""
import time

from hbtest.lifecycle import wait_taken
from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, produce
from test_delivery import event
from test_review57_faults import DnsMap, dispatcher, shim, subscribe  # noqa: F401 (shim: a fixture)
from test_review73_faults import ETYPE, H200, Raw, attempts, read_request, rst


def webhook_id(head):
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "webhook-id":
            return v.strip()
    return None


def test_the_resend_is_one_fresh_connection_whose_address_is_checked_again(
        db_url, procs, workdir, shim, tmp_path):  # noqa: F811
    """A pin (it passes on main; review 73 left it untested): an endpoint's
    name moved to a refused address (DNS rebinding: 127.0.0.3, loopback,
    outside HOOKBRIDGE_ALLOWED_CIDRS) while the dispatcher still held young
    kept connections to the old one, whose endpoint then reads every
    request and resets the connection without answering. The request walks
    the kept connections (curl's own retry, at most 6 sends, one
    `webhook-id`), then review 73's resend opens one fresh connection: its
    lookup gives the new address, the address check refuses it, and the
    attempt is logged once as refused by policy (failed, not retried), no
    connection made to either address. A resend that skipped the check
    would have connected to 127.0.0.3; one that looped would have sent the
    request again and again until its timeout. Before review 73 the attempt
    ended on the sixth kept connection, `connection error: Recv failure:
    Connection reset by peer`, and its retry would have been refused."""
    dns = DnsMap(str(tmp_path / "dns"))
    dark = []

    def behave(conn, raw):
        while True:
            head = read_request(conn)
            if head is None:
                return
            raw.heads.append(head)
            if dark:
                rst(conn)
                return
            time.sleep(0.3)  # the requests overlap: a connection each
            conn.sendall(H200)  # keep-alive

    raw = Raw(behave)
    try:
        port = raw.url.split(":")[2].split("/")[0]
        dns.set("svc.hbmove", "127.0.0.1")
        broker = Broker(procs, workdir, retry_schedule="1h")
        # connections and the name's cached answer live 4 s
        d = dispatcher(procs, db_url, broker, shim, dns, HOOKBRIDGE_CONNECTION_MAX_AGE="4s",
                       HOOKBRIDGE_ALLOWED_CIDRS="127.0.0.1/32", HOOKBRIDGE_CIRCUIT_FAILURES="100",
                       HOOKBRIDGE_LOG_LEVEL="debug")
        sub = subscribe(db_url, f"http://svc.hbmove:{port}/hook", ETYPE)
        wait_taken(d, [sub])
        produce(broker.bootstrap, [event(ETYPE)])  # the name is looked up
        wait_until(lambda: len(attempts(db_url, sub)) >= 1 or None, 20 * SLOW, "the first")
        looked_up = time.monotonic()
        dns.set("svc.hbmove", "127.0.0.3")
        time.sleep(1)
        # new connections to the cached old address, young when it expires
        produce(broker.bootstrap, [event(ETYPE) for _ in range(11)])
        wait_until(lambda: len(attempts(db_url, sub)) >= 12 or None, 20 * SLOW, "11 more")
        kept = raw.conns
        assert kept >= 8, kept  # young ones: more than curl's own retries walk
        time.sleep(max(0.0, looked_up + 4.3 - time.monotonic()))  # the cached answer expired
        dark.append(1)
        produce(broker.bootstrap, [event(ETYPE)])
        wait_until(lambda: len(attempts(db_url, sub)) >= 13 or None, 20 * SLOW, "the 13th")
        time.sleep(0.3)  # a copy sent in a loop would arrive meanwhile
        got = attempts(db_url, sub)
        assert [a[1:4] for a in got[:12]] == [("delivered", 200, "")] * 12, got
        assert got[12][:4] == (1, "failed", None, (
            "address 127.0.0.3 is loopback (refused; allow it with HOOKBRIDGE_ALLOWED_CIDRS="
            "127.0.0.3/32 or HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS=1)")), got
        ids = [webhook_id(h) for h in raw.heads[12:]]
        assert 1 <= len(ids) <= 6 and len(set(ids)) == 1, (kept, ids)
        assert raw.conns == kept, (kept, raw.conns)  # no new connection to the old address
        assert d.proc.output().count("sent again on a fresh connection") == 1  # review 73's
    finally:
        raw.close()
