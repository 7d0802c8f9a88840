"""Independent checks of what a subscriber receives (Standard Webhooks),
written from the specification, not from our C code."""
import base64
import hashlib
import hmac


def expected_signature(secret, msg_id, timestamp, body):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body.encode(), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signature_valid(secret, request):
    h = request["headers"]
    want = expected_signature(secret, h["webhook-id"], h["webhook-timestamp"], request["body"])
    return want in h["webhook-signature"].split(" ")
