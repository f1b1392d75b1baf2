"""The wire formats boto3 speaks, as far as the lab answers them itself: EC2 query/XML, JSON."""

import json
import re
import uuid
from typing import Any, Dict, List, Mapping
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

__all__ = ["ApiError", "Request", "cbor_error", "ec2_error", "ec2_xml", "json_error", "list_param", "xml"]

EC2_XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"
RPC_V2_PATH = re.compile(r"/service/[^/]+/operation/(\w+)$")  # smithy-rpc-v2-cbor (CloudWatch)
SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")


class ApiError(Exception):
    """An AWS error answer: code, message and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class Request:
    """An AWS request as the lab sees it: service, region, operation and parameters."""

    def __init__(self, environ: Mapping[str, Any], body: bytes):
        scope = SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        self.region, self.service = (scope.group(1), scope.group(2)) if scope else ("", "")
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        self.json: Dict[str, Any] = {}
        self.form: Dict[str, List[str]] = {}
        if target:
            self.operation = target.rsplit(".", 1)[-1]
            self.json = json.loads(body or b"{}")
        elif "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
            self.form = parse_qs(body.decode(), keep_blank_values=True)
            self.operation = self.param("Action")
        else:
            rpc = RPC_V2_PATH.search(environ.get("PATH_INFO", ""))
            self.operation = rpc.group(1) if rpc else ""
        self.cbor = "cbor" in environ.get("CONTENT_TYPE", "")

    def param(self, name: str, default: str = "") -> str:
        return self.form.get(name, [default])[0]

    def flag(self, name: str) -> bool:
        return self.param(name).lower() == "true"


def list_param(form: Mapping[str, List[str]], prefix: str) -> List[str]:
    """The values of ``Prefix.1``, ``Prefix.2``, ... in order."""
    found = []
    for key, values in form.items():
        head, _, index = key.rpartition(".")
        if head == prefix and index.isdigit():
            found.append((int(index), values[0]))
    return [v for _, v in sorted(found)]


def xml(value: Any, tag: str = "") -> str:
    """XML for EC2: dicts become elements, lists become ``<item>`` sequences."""
    if isinstance(value, Mapping):
        inner = "".join(xml(v, k) for k, v in value.items() if v is not None)
    elif isinstance(value, list):
        inner = "".join(xml(v, "item") for v in value)
    elif isinstance(value, bool):
        inner = "true" if value else "false"
    else:
        inner = escape(str(value))
    return f"<{tag}>{inner}</{tag}>" if tag else inner


def ec2_xml(operation: str, body: Mapping[str, Any]) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{operation}Response xmlns="{EC2_XMLNS}">'
        f"<requestId>{uuid.uuid4()}</requestId>{xml(body)}</{operation}Response>"
    ).encode()


def ec2_error(error: ApiError) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{escape(error.code)}'
        f"</Code><Message>{escape(error.message)}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


def json_error(error: ApiError) -> bytes:
    return json.dumps({"__type": error.code, "message": error.message}).encode()


def _cbor_text(text: str) -> bytes:
    data = text.encode()
    if len(data) < 24:
        return bytes([0x60 | len(data)]) + data
    if len(data) < 256:
        return bytes([0x78, len(data)]) + data
    return bytes([0x79]) + len(data).to_bytes(2, "big") + data[:65535]


def cbor_error(error: ApiError) -> bytes:
    """An rpc-v2-cbor error body: a CBOR map of __type and message (text strings only)."""
    return (
        bytes([0xA2])
        + _cbor_text("__type")
        + _cbor_text(error.code)
        + _cbor_text("message")
        + _cbor_text(error.message)
    )
