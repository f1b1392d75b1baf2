"""The wire formats boto3 speaks, as far as the lab reads and answers them itself.

Requests are parsed strictly: a body that is not what its protocol says, an operation the
service's botocore model does not have, or a parameter of the wrong type is an AWS-shaped 400,
never a traceback. Answers: EC2 query/XML, AWS query XML, S3 XML, JSON and rpc-v2-cbor errors.
"""

import json
import re
from functools import cache
from typing import Any, Dict, List, Mapping
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape
from botocore.validate import ParamValidator

__all__ = [
    "SERVICES",
    "ApiError",
    "Request",
    "cbor_error",
    "ec2_error",
    "ec2_xml",
    "error_body",
    "json_error",
    "json_object",
    "list_param",
    "protocol_of",
    "query_error",
    "s3_error",
    "xml",
]

EC2_XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"
RPC_V2_PATH = re.compile(r"/service/[^/]+/operation/(\w+)$")  # smithy-rpc-v2-cbor (CloudWatch)
# The services the lab serves, by the name requests are signed for: their botocore models.
SERVICES = {
    "ec2": ("ec2",),
    "ssm": ("ssm",),
    "monitoring": ("cloudwatch",),
    "sts": ("sts",),
    "s3": ("s3",),
    "elasticloadbalancing": ("elbv2", "elb"),
    "iam": ("iam",),
    "dynamodb": ("dynamodb",),
}
INTEGER = re.compile(r"-?\d{1,19}")


class ApiError(Exception):
    """An AWS error answer: code, message and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@cache
def _model(name: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(name)


def _service_model(service: str, version: str) -> ServiceModel:
    """The botocore model of a signed-for service (the API version tells ELB from ELBv2)."""
    names = SERVICES[service]
    return next((_model(n) for n in names if _model(n).api_version == version), _model(names[0]))


S3_BUCKET_OPERATIONS = {
    "GET": "ListObjects",
    "PUT": "CreateBucket",
    "HEAD": "HeadBucket",
    "DELETE": "DeleteBucket",
}
S3_OBJECT_OPERATIONS = {
    "GET": "GetObject",
    "HEAD": "HeadObject",
    "PUT": "PutObject",
    "DELETE": "DeleteObject",
}
S3_PART_OPERATIONS = {
    "GET": "ListParts",
    "PUT": "UploadPart",
    "POST": "CompleteMultipartUpload",
    "DELETE": "AbortMultipartUpload",
}


def s3_operation(method: str, path: str, query_string: str) -> str:
    """The operation of a path-style S3 request (S3 names it nowhere in the request), so that the
    lab records S3 calls and takes faults on them by name; "" for what it does not name."""
    bucket, _, key = path.lstrip("/").partition("/")
    query = parse_qs(query_string, keep_blank_values=True)
    if not bucket:
        return "ListBuckets" if method == "GET" and not query else ""
    if not key:
        if query.get("list-type") == ["2"] and method == "GET":
            return "ListObjectsV2"
        return "" if query else S3_BUCKET_OPERATIONS.get(method, "")
    if "uploadId" in query:
        return S3_PART_OPERATIONS.get(method, "")
    if "uploads" in query:
        return "CreateMultipartUpload" if method == "POST" else ""
    return "" if query else S3_OBJECT_OPERATIONS.get(method, "")


class Request:
    """An AWS request as the lab sees it, parsed and checked against its service's botocore model:
    service (as signed), region, protocol, operation and parameters."""

    def __init__(self, environ: Mapping[str, Any], body: bytes, service: str, region: str):
        self.service, self.region = service, region
        self.json: Dict[str, Any] = {}
        self.form: Dict[str, List[str]] = {}
        self.protocol = protocol_of(environ, service)
        if self.protocol == "s3":
            self.operation = s3_operation(
                environ.get("REQUEST_METHOD", "GET"),
                environ.get("PATH_INFO", ""),
                environ.get("QUERY_STRING", ""),
            )
        elif self.protocol == "json":
            self.operation = environ.get("HTTP_X_AMZ_TARGET", "").rsplit(".", 1)[-1]
            self.json = json_object(body)
        elif self.protocol == "cbor":
            rpc = RPC_V2_PATH.search(environ.get("PATH_INFO", ""))
            self.operation = rpc.group(1) if rpc else ""
        else:
            self.form = _form(body or environ.get("QUERY_STRING", "").encode())
            self.operation = self.param("Action")
        if self.protocol != "s3":
            self._check(_service_model(service, self.param("Version")))

    def _check(self, model: ServiceModel) -> None:
        if self.operation not in model.operation_names:
            code = "UnknownOperationException" if self.protocol in ("json", "cbor") else "InvalidAction"
            raise ApiError(code, f"{self.operation or 'no operation'} is not an operation of {self.service}")
        if self.protocol == "cbor":
            return  # the lab passes rpc-v2-cbor bodies to moto whole
        operation = model.operation_model(self.operation)
        params = self.json if self.protocol == "json" else _decode_query(self.form, operation, self.protocol)
        if operation.input_shape is None:
            return
        report = ParamValidator().validate(params, operation.input_shape)
        if report.has_errors():
            text = report.generate_report()
            raise ApiError(_validation_code(self.protocol, text), text.replace("\n", "; "))

    def param(self, name: str, default: str = "") -> str:
        return self.form.get(name, [default])[0]

    def flag(self, name: str) -> bool:
        return self.param(name).lower() == "true"

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        """A whole-number parameter (query or JSON) within [low, high], else InvalidParameterValue."""
        raw = self.json.get(name, default) if self.protocol == "json" else self.param(name, str(default))
        if isinstance(raw, bool) or not (isinstance(raw, int) or INTEGER.fullmatch(str(raw))):
            raise ApiError("InvalidParameterValue", f"{name} must be a whole number, got {raw!r}")
        value = int(raw)
        if not low <= value <= high:
            raise ApiError("InvalidParameterValue", f"{name} must be between {low} and {high}, got {value}")
        return value


def protocol_of(environ: Mapping[str, Any], service: str) -> str:
    """The protocol a request for ``service`` speaks (s3, json, cbor, ec2 or query), from its headers."""
    if service == "s3":
        return "s3"
    if environ.get("HTTP_X_AMZ_TARGET"):
        return "json"
    if RPC_V2_PATH.search(environ.get("PATH_INFO", "")) or "cbor" in environ.get("CONTENT_TYPE", ""):
        return "cbor"
    return "ec2" if service == "ec2" else "query"


def json_object(body: bytes) -> Dict[str, Any]:
    """A JSON request body, which must be an object (an empty body is an empty one)."""
    try:
        value = json.loads(body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError("SerializationException", f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(
            "SerializationException", f"the body must be a JSON object, got {type(value).__name__}"
        )
    return value


def _form(body: bytes) -> Dict[str, List[str]]:
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError("MalformedQueryString", f"the query string cannot be parsed: {exc}") from None


def _validation_code(protocol: str, report: str) -> str:
    if protocol == "json":
        return "ValidationException"
    if protocol == "ec2":
        first = report.splitlines()[-1] if report else ""
        if first.startswith("Missing required parameter"):
            return "MissingParameter"
        return "UnknownParameter" if first.startswith("Unknown parameter") else "InvalidParameterValue"
    return "ValidationError"


class _BadValue(ValueError):
    """A parameter the operation has, with a value its type does not take."""


class _Items(dict):
    """List items by their 1-based number in the query string, until they become a list."""


class _Entries(_Items):
    """Map entries by their number, until they become a dict."""


def _query_name(name: str, shape: Shape, ec2: bool) -> str:
    """How a structure member is named in a query string (botocore.serialize's rules)."""
    serialization = shape.serialization
    if ec2:
        if serialization.get("queryName"):
            return serialization["queryName"]
        located = serialization.get("name")
        return located[0].upper() + located[1:] if located else name
    return serialization.get("name", name)


def _decode_query(form: Mapping[str, List[str]], operation: OperationModel, protocol: str) -> Dict[str, Any]:
    """The parameters of a query-string request, as botocore would have been given them."""
    params: Dict[str, Any] = {}
    shape = operation.input_shape
    for key, values in form.items():
        if key in ("Action", "Version"):
            continue
        if shape is None:
            raise ApiError("UnknownParameter", f"{operation.name} takes no parameter, got {key}")
        try:
            _place(params, shape, key.split("."), values[-1], protocol == "ec2")
        except _BadValue as exc:
            code = "InvalidParameterValue" if protocol == "ec2" else "ValidationError"
            raise ApiError(code, f"parameter {key}: {exc}") from None
        except ValueError as exc:
            code = "UnknownParameter" if protocol == "ec2" else "ValidationError"
            raise ApiError(code, f"parameter {key}: {exc}") from None
    return _lists(params)


def _place(node: Dict[str, Any], shape: Shape, parts: List[str], value: str, ec2: bool) -> None:
    members = {_query_name(n, m, ec2): n for n, m in shape.members.items()}
    name = members.get(parts[0])
    if name is None:
        raise ValueError(f"{parts[0]} is not a member of {shape.name}")
    node[name] = _into(node.get(name), shape.members[name], parts[1:], value, ec2)


def _into(current: Any, shape: Shape, parts: List[str], value: str, ec2: bool) -> Any:
    kind = shape.type_name
    if kind == "structure":
        if not parts:
            raise ValueError(f"{shape.name} is a structure: name its members")
        node = current if isinstance(current, dict) and not isinstance(current, _Items) else {}
        _place(node, shape, parts, value, ec2)
        return node
    if kind == "list":
        if not parts and value == "":
            return _Items()  # an empty list
        if not ec2 and not shape.serialization.get("flattened"):
            if parts[:1] != [shape.member.serialization.get("name", "member")]:
                raise ValueError(
                    f"{shape.name} items are named {shape.member.serialization.get('name', 'member')}"
                )
            parts = parts[1:]
        if not parts or not parts[0].isdigit() or int(parts[0]) < 1:
            raise ValueError(f"{shape.name} items are numbered from 1")
        items = current if isinstance(current, _Items) else _Items()
        index = int(parts[0])
        items[index] = _into(items.get(index), shape.member, parts[1:], value, ec2)
        return items
    if kind == "map":
        if not shape.serialization.get("flattened"):
            if parts[:1] != ["entry"]:
                raise ValueError(f"{shape.name} entries are named entry")
            parts = parts[1:]
        names = {
            shape.key.serialization.get("name", "key"): "key",
            shape.value.serialization.get("name", "value"): "value",
        }
        if len(parts) < 2 or not parts[0].isdigit() or parts[1] not in names:
            raise ValueError(f"{shape.name} entries are N.key and N.value")
        entries = current if isinstance(current, _Entries) else _Entries()
        entry = entries.setdefault(int(parts[0]), {})
        part = names[parts[1]]
        entry[part] = _into(
            entry.get(part), shape.key if part == "key" else shape.value, parts[2:], value, ec2
        )
        return entries
    if parts:
        raise ValueError(f"{shape.name} is a {kind}, not a structure")
    return _scalar(shape, value)


def _scalar(shape: Shape, value: str) -> Any:
    kind = shape.type_name
    if kind in ("integer", "long"):
        if not INTEGER.fullmatch(value):
            raise _BadValue(f"{value!r} is not a whole number")
        return int(value)
    if kind == "boolean":
        if value.lower() not in ("true", "false"):
            raise _BadValue(f"{value!r} is not true or false")
        return value.lower() == "true"
    if kind in ("float", "double"):
        try:
            return float(value)
        except ValueError:
            raise _BadValue(f"{value!r} is not a number") from None
    return value


def _lists(value: Any) -> Any:
    """Numbered items in their order, maps as dicts, all the way down."""
    if isinstance(value, _Items):
        items = [_lists(value[k]) for k in sorted(value)]
        if isinstance(value, _Entries):
            return {e.get("key"): e.get("value") for e in items}
        return items
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


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


def ec2_xml(operation: str, body: Mapping[str, Any], request_id: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{operation}Response xmlns="{EC2_XMLNS}">'
        f"<requestId>{request_id}</requestId>{xml(body)}</{operation}Response>"
    ).encode()


def ec2_error(error: ApiError, request_id: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{escape(error.code)}'
        f"</Code><Message>{escape(error.message)}</Message></Error></Errors>"
        f"<RequestID>{request_id}</RequestID></Response>"
    ).encode()


def query_error(error: ApiError, request_id: str) -> bytes:
    """The AWS query protocol's error document (STS, ELB, IAM, CloudWatch's query form)."""
    kind = "Receiver" if error.status >= 500 else "Sender"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse><Error><Type>{kind}</Type>'
        f"<Code>{escape(error.code)}</Code><Message>{escape(error.message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()


def s3_error(error: ApiError, request_id: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(error.code)}</Code>'
        f"<Message>{escape(error.message)}</Message><RequestId>{request_id}</RequestId></Error>"
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


def error_body(protocol: str, error: ApiError, request_id: str) -> tuple[bytes, str]:
    """An error answer's body and content type in ``protocol`` (ec2, query, s3, json, cbor); the
    XML ones name ``request_id``, as the answer's header does."""
    if protocol == "ec2":
        return ec2_error(error, request_id), "text/xml"
    if protocol == "query":
        return query_error(error, request_id), "text/xml"
    if protocol == "s3":
        return s3_error(error, request_id), "application/xml"
    if protocol == "cbor":
        return cbor_error(error), "application/cbor"
    return json_error(error), "application/x-amz-json-1.1"
