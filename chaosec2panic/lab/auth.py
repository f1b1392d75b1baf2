"""Who may call the lab: credentials it issues when it starts, and SigV4 checked as AWS checks it.

The lab's endpoint drives guests, so it trusts nothing about a request but its signature: the
access key must be one the lab issued, the signature must be the one botocore computes for the
request's own method, path, query, signed headers and body with that key's secret, and the
request must be recent. The service a request is for is taken from its signed credential scope.
"""

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Mapping
from urllib.parse import quote

from botocore.auth import (
    EMPTY_SHA256_HASH,
    STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    UNSIGNED_PAYLOAD,
    S3SigV4Auth,
    SigV4Auth,
)
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

__all__ = ["MAX_SKEW", "AuthError", "KeyPair", "Signed", "issue", "parse_authorization", "verify"]

MAX_SKEW = 900  # seconds: AWS refuses a request signed more than 15 minutes away from its clock
AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[A-Za-z0-9]{1,128})/(?P<date>\d{8})/(?P<region>[a-z0-9-]{1,32})/"
    r"(?P<service>[a-z0-9-]{1,64})/aws4_request, ?SignedHeaders=(?P<headers>[a-z0-9;-]{1,2048}), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
# What a client may put where the body's hash goes (botocore.auth): the hash itself, or one of these.
PAYLOAD_MARKERS = frozenset({UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_PAYLOAD_TRAILER})
KEY_ALPHABET = string.ascii_uppercase + "234567"


class AuthError(Exception):
    """A request the lab refuses before reading it further: why, and which kind of refusal
    (``key``: an access key the lab did not issue; ``signature``: a wrong signature;
    ``expired``: signed too long ago; ``missing``: no SigV4 signature at all)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


@dataclass(frozen=True)
class KeyPair:
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class Signed:
    """What a valid signature vouches for."""

    access_key: str
    region: str
    service: str


def issue(prefix: str = "AKIA") -> KeyPair:
    """A new random key pair shaped as AWS shapes them (20-character key id, 40-character secret)."""
    key = prefix + "".join(secrets.choice(KEY_ALPHABET) for _ in range(16))
    return KeyPair(key, secrets.token_urlsafe(30))


def parse_authorization(header: str) -> Signed | None:
    """The key, region and service named by a SigV4 ``Authorization`` header, or None."""
    found = AUTHORIZATION.fullmatch(header.strip())
    return Signed(found["key"], found["region"], found["service"]) if found else None


def _header(environ: Mapping[str, Any], name: str) -> str | None:
    if name == "content-type":
        return environ.get("CONTENT_TYPE")
    if name == "content-length":
        return environ.get("CONTENT_LENGTH")
    return environ.get("HTTP_" + name.upper().replace("-", "_"))


def _raw_path(environ: Mapping[str, Any]) -> tuple[str, str]:
    """The path and query exactly as the client sent them (the signature covers those bytes)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        path, _, query = raw.partition("?")
        return path, query
    return quote(environ.get("PATH_INFO", ""), safe="/~%"), environ.get("QUERY_STRING", "")


def verify(environ: Mapping[str, Any], body: bytes, secrets_by_key: Mapping[str, str], now: float) -> Signed:
    """Check the SigV4 signature of a WSGI request against the lab's keys; what it vouches for.

    Raises :class:`AuthError` for a missing or malformed signature, a key the lab did not
    issue, a request signed more than :data:`MAX_SKEW` seconds from ``now``, a body that is
    not the one signed, or a signature that is not the one the key's secret makes.
    """
    header = environ.get("HTTP_AUTHORIZATION", "")
    if not header:
        raise AuthError("missing", "the request is not signed: the lab takes only SigV4-signed requests")
    found = AUTHORIZATION.fullmatch(header.strip())
    if not found:
        raise AuthError("missing", "the Authorization header is not a SigV4 signature")
    secret = secrets_by_key.get(found["key"])
    if secret is None:
        raise AuthError("key", f"the access key {found['key']} is not one this lab issued")
    stamp = _header(environ, "x-amz-date") or ""
    if not AMZ_DATE.fullmatch(stamp) or not stamp.startswith(found["date"]):
        raise AuthError("signature", "X-Amz-Date is missing or does not match the credential scope")
    signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    if abs(now - signed_at) > MAX_SKEW:
        raise AuthError("expired", f"the request was signed at {stamp}, more than {MAX_SKEW}s from now")
    names = found["headers"].split(";")
    if "host" not in names or names != sorted(set(names)):
        raise AuthError("signature", "SignedHeaders must be sorted, unique and include host")
    headers = {}
    for name in names:
        value = _header(environ, name)
        if value is None:
            raise AuthError("signature", f"the signed header {name} is not in the request")
        headers[name] = value
    claimed = headers.get("x-amz-content-sha256")
    if claimed is not None and claimed not in PAYLOAD_MARKERS and claimed != _sha256(body):
        raise AuthError("signature", "the body is not the one whose hash was signed")
    path, query = _raw_path(environ)
    request = AWSRequest(method=environ.get("REQUEST_METHOD", "GET"), url=f"http://h{path}", data=body)
    request.url = f"http://{headers['host']}{path}" + (f"?{query}" if query else "")
    for name, value in headers.items():
        request.headers[name] = value
    request.context["timestamp"] = stamp
    signer_class = S3SigV4Auth if found["service"] == "s3" else SigV4Auth
    signer = signer_class(Credentials(found["key"], secret), found["service"], found["region"])
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, found["signature"]):
        raise AuthError("signature", "the request signature does not match the one its key computes")
    return Signed(found["key"], found["region"], found["service"])


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256_HASH
