"""A small, independent Avro single-object decoder for the message schemas we
put on Kafka (records of string, int, long, arrays of strings and unions of
those with null), so tests
check what is on the topic without using our own C codec."""
import json
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schema"


def read_varint(buf, pos):
    """A zigzag varint (Avro int/long) at pos: (value, next pos)."""
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    return (result >> 1) ^ -(result & 1), pos


def read_string(buf, pos):
    """An Avro string at pos: (text, next pos)."""
    n, pos = read_varint(buf, pos)
    return buf[pos:pos + n].decode(), pos + n


def _read(buf, pos, typ):
    if typ == "null":
        return None, pos
    if isinstance(typ, list):  # a union: the branch index, then its value
        branch, pos = read_varint(buf, pos)
        return _read(buf, pos, typ[branch])
    if typ in ("int", "long"):
        return read_varint(buf, pos)
    if typ == "string":
        return read_string(buf, pos)
    if isinstance(typ, dict) and typ["type"] == "array":
        out = []
        while True:
            n, pos = read_varint(buf, pos)
            if n == 0:
                return out, pos
            if n < 0:
                n = -n
                _, pos = read_varint(buf, pos)  # block size in bytes
            for _ in range(n):
                v, pos = _read(buf, pos, typ["items"])
                out.append(v)
    raise ValueError(f"type {typ} not supported by the test decoder")


def decode(schema_name, data):
    """Decodes one single-object-encoded message with schema/<schema_name>.avsc."""
    assert data[:2] == b"\xc3\x01", "not Avro single-object encoded"
    schema = json.loads((SCHEMA_DIR / f"{schema_name}.avsc").read_text())
    pos, out = 10, {}
    for f in schema["fields"]:
        if pos == len(data) and "default" in f:
            # written with an earlier version, before this field was added
            # (hookbridge writes DeliveryRetry v1 when after_delivery_id is null)
            out[f["name"]] = f["default"]
            continue
        out[f["name"]], pos = _read(data, pos, f["type"])
    assert pos == len(data), f"{len(data) - pos} trailing bytes"
    return out
