"""Avro messages written by an independent implementation: Apache's Python
Avro (Debian's python3-avro) encodes the body; the framing around it (the
single-object header with its CRC-64-AVRO fingerprint, or the Schema Registry
header) is a few bytes written here, from the Avro spec and Confluent's wire
format, not by our C code."""
import copy
import io
import json

import avro.io
import avro.schema

from .avro import SCHEMA_DIR

_EMPTY = 0xC15D213AA4D7A795
_TABLE = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (_EMPTY & -(_fp & 1))
    _TABLE.append(_fp)


def crc64_avro(data: bytes) -> int:
    """The Avro spec's 64-bit Rabin fingerprint."""
    fp = _EMPTY
    for b in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ b) & 0xFF]
    return fp


def event_schema():
    """schema/identity_event.avsc as a dict (the reader schema)."""
    return json.loads((SCHEMA_DIR / "identity_event.avsc").read_text())


def _record(schema, path):
    """The record dict at path ("" = top, "actor" = Actor inside its union)."""
    rec = schema
    for part in filter(None, path.split(".")):
        field = next(f for f in rec["fields"] if f["name"] == part)
        rec = next(t for t in field["type"] if isinstance(t, dict))
    return rec


def evolve(add=(), remove=()):
    """The reader schema with fields added ((record path, field dict)) and
    removed ("record path.field"): what an older or newer producer writes."""
    s = copy.deepcopy(event_schema())
    for path, field in add:
        _record(s, path)["fields"].append(field)
    for dotted in remove:
        path, _, name = dotted.rpartition(".")
        rec = _record(s, path)
        rec["fields"] = [f for f in rec["fields"] if f["name"] != name]
    return s


def body(schema, record) -> bytes:
    parsed = avro.schema.parse(json.dumps(schema))
    buf = io.BytesIO()
    avro.io.DatumWriter(parsed).write(record, avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def fingerprint(schema) -> int:
    canonical = avro.schema.parse(json.dumps(schema)).canonical_form
    return crc64_avro(canonical.encode())


def single_object(schema, record) -> bytes:
    """0xC3 0x01, the writer schema's fingerprint (little-endian), the body."""
    return b"\xc3\x01" + fingerprint(schema).to_bytes(8, "little") + body(schema, record)


def registry_framed(schema, record, schema_id) -> bytes:
    """0x00, the schema id (4 bytes, big-endian), the body."""
    return b"\x00" + schema_id.to_bytes(4, "big") + body(schema, record)
