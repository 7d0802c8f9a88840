#!/usr/bin/python3
"""Produce -> POST latency for make bench (scripts/bench.sh).

    bench_latency.py DUMP ACCESS_LOG LOG_OFFSET SUBSCRIPTION_ID SINCE_MS [UNTIL_MS]

DUMP is identity.events read back with
    kcat -C -e -o beginning -f '%p %o %T %S\\n%s\\n'
(each message: a header line with its payload length, then the raw payload, so
binary Avro needs no escaping). The payload is an IdentityEvent in Avro
single-object encoding (0xC3 0x01, 8-byte schema fingerprint, then the record);
its first two fields are the strings uuid and published.

Events whose Kafka timestamp is in [SINCE_MS, UNTIL_MS) are the ones the latency
phase produced. For each, the delivery id the dispatcher gives it is derived as
dispatcher/dispatcher.c does with hb_uuid_derive (lib/hb_sign.c):
sha256("delivery\\n" + uuid + "\\n" + subscription id), first 16 bytes, version
nibble 8, RFC 4122 variant, formatted 8-4-4-4-12. ACCESS_LOG lines after byte
LOG_OFFSET are nginx's "$msec $request_method $status $http_webhook_id"; the
latency of an event is $msec of its first 2xx POST minus its `published` time
(set by the producer when it produced the event; both are wall-clock
milliseconds on this machine).

Prints one line: "n missing p50 p90 p99 max mean" (milliseconds, n events
matched, missing = produced in the window but never POSTed), and the same
percentiles measured from the Kafka message timestamp on stderr as a check.
"""
import datetime
import hashlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from hbtest.avro import read_string  # noqa: E402  (the tests' independent Avro reader)


def messages(path):
    """Yields (kafka timestamp ms, payload bytes) from a kcat dump."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        _part, _off, ts, size = data[pos:nl].split()
        size = int(size)
        pos = nl + 1
        if size < 0:
            pos += 1
            continue
        yield int(ts), data[pos:pos + size]
        pos += size + 1


def decode(payload):
    """(uuid, published) of a single-object-encoded IdentityEvent."""
    if payload[:2] != b"\xc3\x01":
        raise ValueError("not Avro single-object encoding")
    uuid, pos = read_string(payload, 10)
    published, _ = read_string(payload, pos)
    return uuid, published


def delivery_id(event_uuid, sub_id):
    md = bytearray(hashlib.sha256(b"delivery\n" + event_uuid.encode() + b"\n" +
                                  sub_id.encode()).digest()[:16])
    md[6] = (md[6] & 0x0F) | 0x80
    md[8] = (md[8] & 0x3F) | 0x80
    h = md.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def rfc3339_ms(s):
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    return datetime.datetime.fromisoformat(s).timestamp() * 1000.0


def percentile(sorted_vals, p):
    """Nearest-rank percentile."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(-(-p * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


def summary(vals):
    vals = sorted(vals)
    mean = sum(vals) / len(vals) if vals else float("nan")
    return [percentile(vals, 50), percentile(vals, 90), percentile(vals, 99),
            vals[-1] if vals else float("nan"), mean]


def main(argv):
    if len(argv) not in (6, 7):
        sys.exit(__doc__)
    dump, access_log, offset, sub_id, since = argv[1:6]
    until = int(argv[6]) if len(argv) == 7 else None
    since = int(since)

    posted = {}
    with open(access_log, "rb") as f:
        f.seek(int(offset))
        for line in f.read().decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) < 4 or parts[1] != "POST" or not parts[2].startswith("2"):
                continue
            posted.setdefault(parts[3], float(parts[0]) * 1000.0)

    lat, lat_kafka, missing, timeline = [], [], 0, []
    for ts, payload in messages(dump):
        if ts < since or (until is not None and ts >= until):
            continue
        uuid, published = decode(payload)
        at = posted.get(delivery_id(uuid, sub_id))
        if at is None:
            missing += 1
            continue
        lat.append(at - rfc3339_ms(published))
        lat_kafka.append(at - ts)
        timeline.append((rfc3339_ms(published), ts, at))
    if not lat:
        sys.exit(f"no delivery matched: {missing} events in the window, {len(posted)} POSTs "
                 "in the log (is the delivery id derivation still hb_uuid_derive's?)")
    if os.environ.get("BENCH_TIMELINE"):  # per event: produced, Kafka timestamp, POSTed (ms)
        with open(os.environ["BENCH_TIMELINE"], "w") as f:
            for row in sorted(timeline):
                f.write("%.1f %d %.1f\n" % row)
    print(len(lat), missing, *(f"{v:.1f}" for v in summary(lat)))
    print("check, from the Kafka message timestamp: p50 %.1f p90 %.1f p99 %.1f max %.1f "
          "mean %.1f ms" % tuple(summary(lat_kafka)), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
