"""The crash lab: an AWS-compatible HTTP endpoint over simulated guests.

The lab answers itself what touches guests (SendDiagnosticInterrupt, DescribeInstanceStatus,
GetConsoleOutput, SSM Run Command and agent status) and passes everything else to moto, so
DescribeInstanceTypes, tags, filters, CloudWatch, STS, IAM and DynamoDB behave as moto implements
them; DescribeInstances is moto's with what AWS adds (:mod:`.responses`). Reboot, stop, start and
terminate are checked against the instance's life cycle (:mod:`.lifecycle`), go to moto and then
to the guest.
Under ``/_lab/`` it serves what it saw (events, calls, fleet) and takes injected faults
(API errors on an operation, an SSM agent cut off).

It trusts no request it cannot prove (:mod:`.auth`): every AWS call must be SigV4-signed with
the credentials the lab issued when it started (the operator's, printed in its ``export``
line, or a guest's own, which its AWS tools use) or an IAM user's, made through the lab's IAM
API, whose policies decide what it may do (:mod:`.iam`); ``/_lab/`` takes the operator's secret as a
bearer token; a request from a web page (an ``Origin`` header) or for another host name (DNS
rebinding) is refused, and moto's own ``/moto-api/`` is closed. Whatever is malformed gets an
AWS error answer in its protocol's shape, from bodies of bounded size.
"""

import base64
import hmac
import io
import json
import logging
import re
import shutil
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend
from moto.ec2.models.instance_types import INSTANCE_TYPES
from moto.elbv2.models import elbv2_backends
from moto.moto_api._internal.models import moto_api_backend
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.utilities.utils import load_resource
from werkzeug.serving import BaseWSGIServer, make_server

from ..targets import INSTANCE_ID, nmi_support
from .auth import AuthError, KeyPair, issue, parse_authorization, verify
from .balancer import HealthChecker
from .debian import DebianImageError, debian_guest
from .fleet import Fleet
from .iam import Keys, authorize
from .kit import Kit, KitError, ensure_kit
from .lifecycle import Lifecycle, LifecycleRefusal
from .protocol import SERVICES, ApiError, Request, ec2_xml, error_body, json_object, list_param, protocol_of
from .qemuguest import QemuError, QemuGuest, choose_accel
from .queries import (
    ENDED,
    STATUS_FILTERS,
    command_status,
    every_page,
    information_filters,
    query_filters,
    refuse_malformed_ids,
)
from .responses import InstanceFacts, aws_ids, instance_fields, product_of
from .sandbox import Sandbox, SandboxError
from .simguest import SimGuest
from .simwindows import WindowsSimGuest
from .throttle import THROTTLED_ANSWERS, Throttle, bucket_class

__all__ = ["Guest", "Lab", "LabError", "LabServer", "lab_control"]

logger = logging.getLogger("chaosec2panic.lab")
DOCUMENTS = {"AWS-RunShellScript": "Linux", "AWS-RunPowerShellScript": "Windows"}
PLUGINS = {"AWS-RunShellScript": "aws:runShellScript", "AWS-RunPowerShellScript": "aws:runPowerShellScript"}
# Moto's bundled AMIs by SSM platform: a Windows AMI makes DescribeInstances say Platform=windows.
AMI_PREFERENCE = {"Windows": "Windows_Server-2016-English-Full-Base"}
PLUGIN_OUTPUT_LIMIT = 2500
DELIVERY_TICK = 0.1  # seconds: how soon a waiting command reaches an agent that came online
LIFECYCLE_CALLS = ("StartInstances", "StopInstances", "TerminateInstances")
GUEST_ACTIONS = {
    "RebootInstances": "reboot",
    "StopInstances": "stop",
    "StartInstances": "start",
    "TerminateInstances": "stop",
}

# Bodies the lab reads at most (a larger one is refused unread): S3 takes dump uploads in parts.
MAX_BODY = {"s3": 64 * 2**20}
MAX_BODY_DEFAULT = 8 * 2**20
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
CORS_HEADERS = "access-control-"
BOOT_TIMEOUT = 180.0
CLOSE_WAIT = 30.0  # seconds the lab waits, when it ends, for its guests' commands to finish
MIN_FREE_BYTES = 1024 * 2**20

StartResponse = Callable[..., Any]
Guest = SimGuest | QemuGuest


class LabError(RuntimeError):
    """The lab cannot start; the message says why and what to do."""


def _ami(platform: str) -> str:
    """An x86_64 AMI of moto's catalogue for ``platform`` (Linux or Windows), the preferred name first."""
    amis = [
        i
        for i in load_resource("ec2/resources/amis.json")
        if (i.get("platform") == "windows") == (platform == "Windows") and i.get("architecture") == "x86_64"
    ]
    if not amis:
        raise LabError(f"moto's AMI catalogue has no x86_64 {platform} image")
    preferred = AMI_PREFERENCE.get(platform, "")
    return next((i for i in amis if preferred in i.get("name", "")), amis[0])["ami_id"]


def _aws_environment(url: str, region: str, keys: KeyPair) -> Dict[str, str]:
    """What makes boto3 and the AWS CLI talk to the lab at ``url`` with ``keys``: for the
    extension, and for the guests' own AWS tools (in place of an instance role)."""
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": keys.access_key,
        "AWS_SECRET_ACCESS_KEY": keys.secret_key,
    }


def lab_control(endpoint: str, path: str, secret: str, body: Any = None) -> Any:
    """Ask the lab at ``endpoint`` for ``/_lab/...`` (GET, or POST of ``body`` as JSON) with the
    operator's secret; its JSON answer."""
    request = urllib.request.Request(
        endpoint.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


class Lab:
    """The lab's state and its WSGI application."""

    def __init__(self, fleet: Fleet, workdir: Path, clock: Callable[[], float] = time.time):
        self.fleet = fleet
        self.workdir = workdir
        self.clock = clock
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.guests: Dict[str, Guest] = {}
        self.lifecycles: Dict[str, Lifecycle] = {}
        self.names: Dict[str, str] = {}
        self.events: List[Dict[str, Any]] = []
        self.calls: Counter[str] = Counter()
        self.faults: List[Dict[str, Any]] = []
        self.commands: Dict[str, Dict[str, Any]] = {}
        self._undelivered: set[str] = set()
        self._running: set[threading.Thread] = set()  # guests' commands under way
        self.balancer = HealthChecker(self._emit)
        self._lock = threading.RLock()
        # Guests report events while holding their own lock: a lock of its own for the events,
        # so a guest never waits for the lab's lock while the lab waits for the guest's.
        self._events_lock = threading.Lock()
        # The credentials the lab issues: the operator's (the extension, the CLI, the tests) and
        # the guests' own (their AWS tools); and IAM users', below.
        self.operator, self.guest_keys = issue(), issue("ASIA")
        # IAM users made through the lab's IAM API sign with their own keys (:mod:`.iam`).
        self._secrets = Keys({k.access_key: k.secret_key for k in (self.operator, self.guest_keys)})
        self.sandbox: Sandbox | None = None
        # AWS's request throttling, per account, region and action, on the lab's own clock: from
        # when the fleet is up (the lab's own set-up calls are not throttled).
        self.throttle: Throttle | None = None

    # set-up -----------------------------------------------------------------------------------
    def populate(self, endpoint: str) -> None:
        """Create the fleet's instances in moto (through its API) and a guest for each."""
        ec2 = boto3.client(
            "ec2",
            endpoint_url=endpoint,
            region_name=self.fleet.region,
            aws_access_key_id=self.operator.access_key,
            aws_secret_access_key=self.operator.secret_key,
        )
        amis = {platform: _ami(platform) for platform in DOCUMENTS.values()}
        kit, accel = None, "tcg"
        templates: Dict[str, Path] = {}
        for spec in self.fleet.guests:
            if spec.instance_type not in INSTANCE_TYPES:
                raise LabError(f"instance {spec.name}: unknown instance type {spec.instance_type!r}")
            tags = [{"Key": "Name", "Value": spec.name}] + [
                {"Key": k, "Value": v} for k, v in spec.tags.items()
            ]
            inst = ec2.run_instances(
                ImageId=amis[spec.family.platform],
                MinCount=1,
                MaxCount=1,
                InstanceType=spec.instance_type,
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
            )
            instance_id = inst["Instances"][0]["InstanceId"]
            if spec.state == "stopped":
                ec2.stop_instances(InstanceIds=[instance_id])
            root = self.workdir / "guests" / instance_id
            if spec.kind == "qemu":
                if kit is None:
                    kit, accel = self._real_guests_kit()
                try:
                    guest: Guest = QemuGuest(instance_id, spec, root, kit, accel, self.clock, self._emit)
                except QemuError as exc:
                    raise LabError(f"{spec.name}: {exc}") from exc
            elif spec.kind == "debian":
                try:
                    guest = debian_guest(instance_id, spec, root, self.workdir, self.clock, self._emit)
                except (DebianImageError, QemuError) as exc:
                    raise LabError(f"{spec.name}: {exc}") from exc
            else:
                # Guests alike but for their name start from the same files: copy the first's.
                alike = repr(replace(spec, name=""))
                if alike in templates:
                    shutil.copytree(templates[alike], root, symlinks=True)
                if spec.windows:
                    guest = WindowsSimGuest(
                        instance_id, spec, root, self.fleet.time_scale, self.clock, self._emit
                    )
                else:
                    sandbox = self._guests_sandbox()
                    guest = SimGuest(
                        instance_id, spec, root, self.fleet.time_scale, self.clock, self._emit, sandbox
                    )
                templates.setdefault(alike, root)
                guest.aws_env = _aws_environment(endpoint, self.fleet.region, self.guest_keys)
            self.guests[instance_id] = guest
            self.lifecycles[instance_id] = Lifecycle(spec.state, self.clock())
            self.names[spec.name] = instance_id
        for guest in self.guests.values():
            try:
                ready = not isinstance(guest, QemuGuest) or guest.wait_ready(BOOT_TIMEOUT)
            except QemuError as exc:
                raise LabError(str(exc)) from exc
            if not ready:
                raise LabError(
                    f"{guest.spec.name} did not boot within {BOOT_TIMEOUT}s (accel {accel}); "
                    f"see {guest.console_path}"
                )
        if self.fleet.throttling is not None:
            self.throttle = Throttle(self.fleet.throttling, clock=lambda: self.clock())

    def _guests_sandbox(self) -> Sandbox:
        if self.sandbox is None:
            try:
                self.sandbox = Sandbox()
            except SandboxError as exc:
                raise LabError(str(exc)) from exc
        return self.sandbox

    def _real_guests_kit(self) -> tuple[Kit, str]:
        free = shutil.disk_usage(self.workdir).free
        if free < MIN_FREE_BYTES:
            raise LabError(
                f"only {free // 2**20} MiB free in {self.workdir}; real guests need "
                f"{MIN_FREE_BYTES // 2**20} MiB for their disks and dumps"
            )
        try:
            kit = ensure_kit()
        except KitError as exc:
            raise LabError(str(exc)) from exc
        return kit, choose_accel(kit, self.workdir)

    def close(self) -> None:
        """End every guest (real guests are QEMU processes), then wait for the commands they
        were running, so nothing writes into a guest's files once the lab is gone."""
        for guest in self.guests.values():
            guest.close()
        deadline = time.monotonic() + CLOSE_WAIT
        with self._lock:
            running = list(self._running)
        for thread in running:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.sandbox is not None:
            self.sandbox.close()

    def _emit(self, at: float, instance_id: str, kind: str, detail: str) -> None:
        name = self.guests[instance_id].spec.name if instance_id in self.guests else ""
        with self._events_lock:
            self.events.append(
                {
                    "time": _iso(at),
                    "epoch": at,
                    "instance_id": instance_id,
                    "name": name,
                    "kind": kind,
                    "detail": detail,
                }
            )

    # WSGI -------------------------------------------------------------------------------------
    def __call__(self, environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            return self._serve(environ, start_response)
        except ApiError as error:  # refused before its protocol was known
            return self._error(start_response, _protocol_guess(environ), error)
        except Exception:  # a fault of the lab's own: said as AWS says it, the traceback logged
            logger.exception(
                "the lab failed on %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
            )
            error = ApiError("InternalError", "the lab failed on this request; see its log", 500)
            return self._error(start_response, _protocol_guess(environ), error)

    def _serve(self, environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("HTTP_ORIGIN") is not None:
            raise ApiError(
                "AccessDenied", "the lab answers no web page: requests with an Origin are refused", 403
            )
        host = environ.get("HTTP_HOST", "")
        if not host.startswith(tuple(f"{h}:" for h in LOOPBACK_HOSTS)):
            raise ApiError(
                "AccessDenied", f"the lab answers only for the loopback address, not {host!r}", 403
            )
        if path.startswith("/moto-api"):
            raise ApiError("NotFound", "the lab does not serve moto's own API", 404)
        if path.startswith("/_lab/"):
            body = _body(environ, MAX_BODY_DEFAULT)
            return self._control(environ, path, body, start_response)
        scope = parse_authorization(environ.get("HTTP_AUTHORIZATION", ""))
        if scope is not None and scope.service not in SERVICES:
            raise ApiError(
                "InvalidAction", f"the lab does not serve {scope.service}: it serves {sorted(SERVICES)}"
            )
        body = _body(environ, MAX_BODY.get(scope.service if scope else "", MAX_BODY_DEFAULT))
        try:
            signed = verify(environ, body, self._secrets, self.clock())
        except AuthError as exc:
            raise _refusal(exc, _protocol_guess(environ)) from None
        request = Request(environ, body, signed.service, signed.region)
        with self._lock:
            self.calls[f"{request.service}:{request.operation}"] += 1
        handler = getattr(self, f"_{request.service}_{request.operation}", None)
        try:
            authorize(request, signed.access_key, self._secrets, environ.get("PATH_INFO", ""))
            self._throttled(request)
            refuse_malformed_ids(request)
            self._inject_fault(request)
            if handler is not None:
                with self._lock:  # guests and commands change together: one lab operation at a time
                    result = handler(request)
                return self._answer(start_response, request, result)
        except ApiError as error:
            return self._error(start_response, request.protocol, error)
        body = every_page(request, body)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        if request.service == "elasticloadbalancing" and request.operation == "DescribeTargetHealth":
            arn = request.param("TargetGroupArn")
            return self._moto(
                environ, start_response, request, lambda payload: self._target_health(payload, arn)
            )
        if request.service == "ec2" and request.operation == "DescribeInstances":
            return self._moto(
                environ,
                start_response,
                request,
                lambda payload: instance_fields(payload, self._instance_facts),
            )
        if request.service == "dynamodb":  # serializable, as AWS's: moto checks conditions, then writes
            with self._lock:
                return self._moto(environ, start_response, request)
        act = GUEST_ACTIONS.get(request.operation) if request.service == "ec2" else None
        if act is None:
            return self._moto(environ, start_response, request)
        return self._moto_then_guests(environ, start_response, request, act)

    def _moto(
        self,
        environ: Dict[str, Any],
        start_response: StartResponse,
        request: Request,
        rewrite: Callable[[bytes], bytes] | None = None,
    ) -> List[bytes]:
        """Moto's answer (its body passed through ``rewrite`` when it succeeded), without its CORS
        headers, and without a traceback when it fails."""
        seen: Dict[str, Any] = {}

        def capture(status: str, headers: List[Any], exc_info: Any = None) -> Any:
            seen.update(status=status, headers=headers)
            return lambda data: None

        payload = b"".join(self.moto(environ, capture))
        if int(seen["status"].split()[0]) >= 500:
            logger.error("moto failed on %s: %s", request.operation, payload[:2000])
            error = ApiError("InternalError", f"the lab's AWS model failed on {request.operation}", 500)
            return self._error(start_response, request.protocol, error)
        headers = [
            (k, v)
            for k, v in seen["headers"]
            if not k.lower().startswith(CORS_HEADERS) and k.lower() != "content-length"
        ]
        if request.service == "ec2" and seen["status"].startswith("200"):
            payload, headers = aws_ids(payload, headers)
        if rewrite is not None and seen["status"].startswith("200"):
            payload = rewrite(payload)
        start_response(seen["status"], [*headers, ("Content-Length", str(len(payload)))])
        return [payload]

    def _moto_then_guests(
        self,
        environ: Dict[str, Any],
        start_response: StartResponse,
        request: Request,
        act: str,
    ) -> List[bytes]:
        """Let moto change the EC2 state, then do the same to the guests if it succeeded (a start,
        stop or terminate AWS would refuse in the instance's state is refused first)."""
        ids = [i for i in list_param(request.form, "InstanceId") if i in self.guests]
        changed: Dict[str, Lifecycle] = {}
        if request.operation in LIFECYCLE_CALLS and not request.flag("DryRun"):
            now = self.clock()
            try:
                with self._lock:
                    changed = {
                        i: self.lifecycles[i].call(request.operation, now, self.fleet.time_scale, i)
                        for i in ids
                    }
            except LifecycleRefusal as exc:
                return self._error(
                    start_response, request.protocol, ApiError("IncorrectInstanceState", str(exc))
                )
        seen: Dict[str, str] = {}

        def capture(status: str, headers: List[Any], exc_info: Any = None) -> Any:
            seen["status"] = status
            return start_response(status, headers, exc_info)

        payload = b"".join(self._moto(environ, capture, request))
        if seen.get("status", "").startswith("200") and not request.flag("DryRun"):
            with self._lock:
                self.lifecycles.update(changed)
            for instance_id in ids:
                if instance_id in self.guests:
                    getattr(self.guests[instance_id], act)()
        return [payload]

    def lifecycle(self, instance_id: str) -> Lifecycle:
        """The instance's EC2 state now (see :mod:`.lifecycle`)."""
        with self._lock:
            self.lifecycles[instance_id] = self.lifecycles[instance_id].at(self.clock())
            return self.lifecycles[instance_id]

    def _instance_facts(self, instance_id: str) -> InstanceFacts | None:
        """What DescribeInstances says of a lab instance beyond moto (see :mod:`.responses`)."""
        guest = self.guests.get(instance_id)
        if guest is None:
            return None
        details, operation = product_of(guest.spec.os)
        zone = f"{self.fleet.region}a"
        zone_id = next(
            (z.zone_id for z in RegionsAndZonesBackend.zones.get(self.fleet.region, []) if z.name == zone), ""
        )
        cpu = INSTANCE_TYPES.get(guest.spec.instance_type, {}).get("VCpuInfo", {})
        state = self.lifecycle(instance_id)
        return InstanceFacts(
            details,
            operation,
            zone_id,
            cpu.get("DefaultCores", 1),
            cpu.get("DefaultThreadsPerCore", 1),
            state.name,
            state.code,
            _iso(float(int(state.launched_at))),
        )

    def _target_health(self, payload: bytes, arn: str) -> bytes:
        """Moto's answer on which targets are registered, with each lab instance's health as the
        lab's load balancer sees it (moto calls every running instance healthy)."""
        self.check_targets()
        return self.balancer.rewrite(payload, arn)

    def check_targets(self) -> None:
        """Let the lab's load balancer run the health checks that are due."""
        groups = elbv2_backends[DEFAULT_ACCOUNT_ID][self.fleet.region].target_groups
        with self._lock:
            for group in list(groups.values()):
                for target in list(group.targets.values()):
                    guest = self.guests.get(target["Id"])
                    if guest is not None:
                        self.balancer.check(group, guest, self.fleet.time_scale, self.clock())

    def _answer(self, start_response: StartResponse, request: Request, result: Any) -> List[bytes]:
        request_id = str(uuid.uuid4())  # one per answer: in its header, and in an XML body
        if request.service == "ec2":
            payload = ec2_xml(request.operation, result, request_id)
            return self._send(start_response, 200, payload, "text/xml", request_id)
        payload = json.dumps(result).encode()
        return self._send(start_response, 200, payload, "application/x-amz-json-1.1", request_id)

    def _error(self, start_response: StartResponse, protocol: str, error: ApiError) -> List[bytes]:
        request_id = str(uuid.uuid4())
        payload, content_type = error_body(protocol, error, request_id)
        extra = [("smithy-protocol", "rpc-v2-cbor")] if protocol == "cbor" else []
        if protocol == "json":
            extra = [("x-amzn-ErrorType", error.code)]
        return self._send(start_response, error.status, payload, content_type, request_id, extra)

    @staticmethod
    def _send(
        start_response: StartResponse,
        status: int,
        payload: bytes,
        content_type: str,
        request_id: str,
        extra: List[tuple[str, str]] | None = None,
    ) -> List[bytes]:
        start_response(
            f"{status} {'OK' if status == 200 else 'Error'}",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(payload))),
                ("x-amzn-RequestId", request_id),
                *(extra or []),
            ],
        )
        return [payload]

    def _throttled(self, request: Request) -> None:
        """Refuse the call as AWS does when its bucket is empty (DryRun calls take a token too)."""
        if self.throttle is None:
            return
        kind = bucket_class(request.service, request.operation, request.form or request.json)
        if kind is not None and not self.throttle.take(
            DEFAULT_ACCOUNT_ID, request.region, request.operation, kind
        ):
            code, message, status = THROTTLED_ANSWERS[request.service]
            raise ApiError(code, message, status)

    def _inject_fault(self, request: Request) -> None:
        with self._lock:
            for fault in self.faults:
                if fault["operation"] == request.operation and fault["count"] > 0:
                    if fault.get("dry_run") is not None and fault["dry_run"] != request.flag("DryRun"):
                        continue
                    fault["count"] -= 1
                    raise ApiError(
                        fault["code"],
                        fault.get("message", "injected by the lab"),
                        int(fault.get("status", 400)),
                    )

    def _control(
        self, environ: Dict[str, Any], path: str, body: bytes, start_response: StartResponse
    ) -> List[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if path.startswith("/_lab/app/") and method == "GET":
            # A stand-in for each guest's application health endpoint, for app checks: what a
            # real application tells anyone who asks, so it takes no secret.
            key = path.removeprefix("/_lab/app/")
            guest = self.guests.get(self.names.get(key, key))
            healthy = guest is not None and guest.app_healthy()
            status = "200 OK" if healthy else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps({"healthy": healthy}).encode()]
        given = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), self.operator.secret_key.encode()):
            raise ApiError(
                "AccessDenied",
                "the lab's controls take its secret: Authorization: Bearer $AWS_SECRET_ACCESS_KEY",
                403,
            )
        with self._lock:
            if path == "/_lab/faults" and method == "POST":
                self.faults.append(_fault(json_object(body)))
                answer: Any = {"faults": self.faults}
            elif path == "/_lab/agent" and method == "POST":
                change = json_object(body)
                key = change.get("name") or change.get("instance_id")
                if not isinstance(change.get("online"), bool) or not isinstance(key, str):
                    raise ApiError(
                        "ValidationException", "an agent change takes name (or instance_id) and online"
                    )
                guest = self.guests.get(self.names.get(key, key))
                if guest is None:
                    raise ApiError("NotFound", f"no guest {key!r} in this lab", 404)
                guest.agent_outage = not change["online"]
                answer = {"instance_id": guest.instance_id, "agent_outage": guest.agent_outage}
            elif path == "/_lab/events":
                for guest in self.guests.values():
                    guest.advance()
                with self._events_lock:
                    answer = sorted(self.events, key=lambda e: e["epoch"])
            elif path == "/_lab/calls":
                answer = dict(self.calls)
            elif path == "/_lab/throttling":
                answer = None if self.throttle is None else self.throttle.counts()
            elif path == "/_lab/fleet":
                answer = [
                    {
                        "name": g.spec.name,
                        "instance_id": i,
                        "phase": g.phase,
                        "boot_id": g.boot_id,
                        "os": g.spec.os,
                        "kind": g.spec.kind,
                    }
                    for i, g in self.guests.items()
                ]
            else:
                raise ApiError("NotFound", f"no lab control at {method} {path}", 404)
        payload = json.dumps(answer).encode()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        )
        return [payload]

    # EC2 --------------------------------------------------------------------------------------
    def _guest(self, instance_id: str) -> Guest:
        if not instance_id:
            raise ApiError("MissingParameter", "The request must contain the parameter InstanceId")
        if not INSTANCE_ID.match(instance_id):
            raise ApiError("InvalidInstanceID.Malformed", f'Invalid id: "{instance_id}"')
        if instance_id not in self.guests:
            raise ApiError("InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist")
        return self.guests[instance_id]

    def _ec2_SendDiagnosticInterrupt(self, request: Request) -> Dict[str, Any]:
        guest = self._guest(request.param("InstanceId"))
        itype = guest.spec.instance_type
        why = nmi_support({"InstanceType": itype, "Architecture": "x86_64"}, INSTANCE_TYPES.get(itype))
        if why:
            raise ApiError("UnsupportedOperation", f"The instance '{guest.instance_id}': {why}")
        if request.flag("DryRun"):
            raise ApiError("DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412)
        if self.lifecycle(guest.instance_id).name != "running" or guest.state != "running":
            raise ApiError(
                "IncorrectInstanceState", f"The instance '{guest.instance_id}' is not in the 'running' state."
            )
        guest.nmi()
        return {"return": True}

    def _ec2_DescribeInstanceStatus(self, request: Request) -> Dict[str, Any]:
        ids = list_param(request.form, "InstanceId")
        if ids and "MaxResults" in request.form:
            raise ApiError(
                "InvalidParameterCombination",
                "The parameter instancesSet cannot be used with the parameter maxResults",
            )
        wanted = query_filters(request.form, STATUS_FILTERS)
        guests = [self._guest(i) for i in ids] if ids else list(self.guests.values())
        include_all = request.flag("IncludeAllInstances")
        items = []
        for g in guests:
            status = g.status()
            state = self.lifecycle(g.instance_id)
            if state.name != "running" and not include_all:
                continue
            if state.name != "running":
                status = "not-applicable"
            system = "ok" if state.name == "running" else "not-applicable"
            check = {"passed": "ok", "initializing": "initializing"}
            reachability = next((k for k, v in check.items() if v == status), "failed")
            since = {"impairedSince": _iso(g.impaired_since())} if status == "impaired" else {}
            seen = {
                "instance-state-name": state.name,
                "instance-state-code": str(state.code),
                "availability-zone": f"{self.fleet.region}a",
                "instance-status.status": status,
                "instance-status.reachability": reachability,
                "system-status.status": system,
                "system-status.reachability": "passed" if system == "ok" else system,
            }
            if any(seen[name] not in values for name, values in wanted.items()):
                continue
            items.append(
                {
                    "instanceId": g.instance_id,
                    "availabilityZone": f"{self.fleet.region}a",
                    "instanceState": {"code": state.code, "name": state.name},
                    "systemStatus": {
                        "status": system,
                        "details": [
                            {"name": "reachability", "status": "passed" if system == "ok" else system}
                        ],
                    },
                    "instanceStatus": {
                        "status": status,
                        "details": [{"name": "reachability", "status": reachability, **since}],
                    },
                }
            )
        start = _page_start(request.param("NextToken"), "InvalidParameterValue")
        size = request.integer("MaxResults", 1000, 5, 1000)
        page = items[start : start + size]
        more = start + size < len(items)
        return {"instanceStatusSet": page, "nextToken": str(start + size) if more else None}

    def _ec2_GetConsoleOutput(self, request: Request) -> Dict[str, Any]:
        guest = self._guest(request.param("InstanceId"))
        text = guest.console_output()
        return {
            "instanceId": guest.instance_id,
            "timestamp": _iso(self.clock()),
            "output": base64.b64encode(text.encode()).decode(),
        }

    # SSM --------------------------------------------------------------------------------------
    def deliver_pending(self) -> None:
        """What SSM does on its own: hand each waiting command to its agent once it is online."""
        with self._lock:
            for command_id in sorted(self._undelivered):
                self._deliver(self.commands[command_id])

    def _deliver(self, command: Dict[str, Any]) -> None:
        """Start each pending invocation whose agent is online, as the SSM agent picks it up."""
        now = self.clock()
        self._undelivered.discard(command["id"])
        for instance_id, inv in command["invocations"].items():
            if inv["Status"] not in ("Pending", "Delayed"):
                continue
            guest = self.guests[instance_id]
            if now > command["requested"] + command["timeout"]:
                inv.update(Status="TimedOut", StatusDetails="DeliveryTimedOut")
            elif not guest.agent_online():
                self._undelivered.add(command["id"])
            else:
                platform = guest.spec.family.platform
                if DOCUMENTS[command["document"]] != platform:
                    inv.update(
                        Status="Failed",
                        StatusDetails="Failed",
                        ResponseCode=1,
                        stderr=f"{PLUGINS[command['document']]} does not run on {platform}: "
                        f"send {next(d for d, p in DOCUMENTS.items() if p == platform)}",
                    )
                    continue
                inv.update(Status="InProgress", StatusDetails="InProgress")
                # A real agent takes a waiting command the moment it comes online (read after
                # asking whether it is: it may have come online since ``now``).
                taken = min(self.clock(), max(command["requested"], guest.agent_since()))
                thread = threading.Thread(
                    target=self._execute, args=(guest, command, inv, taken), daemon=True
                )
                self._running.add(thread)
                thread.start()

    def _execute(self, guest: Guest, command: Dict[str, Any], inv: Dict[str, Any], delivered: float) -> None:
        try:
            outcome = guest.run_command(command["script"], command["execution_timeout"], delivered)
            with self._lock:
                inv.update(
                    Status=outcome.status,
                    StatusDetails=outcome.status,
                    ResponseCode=outcome.code,
                    stdout=outcome.stdout,
                    stderr=outcome.stderr,
                    started=outcome.started,
                    ended=outcome.ended,
                )
        finally:
            with self._lock:
                self._running.discard(threading.current_thread())

    def _ssm_SendCommand(self, request: Request) -> Dict[str, Any]:
        params = request.json
        document = params.get("DocumentName", "")
        if document not in DOCUMENTS:
            raise ApiError("InvalidDocument", f"document {document!r}: the lab runs {sorted(DOCUMENTS)}")
        ids = params.get("InstanceIds") or []
        if not ids or len(ids) > 50:
            raise ApiError(
                "ValidationException", "InstanceIds: between 1 and 50 ids (the lab takes no Targets)"
            )
        unknown = [i for i in ids if i not in self.guests]
        if unknown:
            raise ApiError("InvalidInstanceId", f"Instances {unknown} not in a valid state for account")
        command_id = str(uuid.uuid4())
        commands = params.get("Parameters", {}).get("commands", [])
        raw_timeout = (params.get("Parameters", {}).get("executionTimeout") or ["3600"])[0]
        if not raw_timeout.isdigit() or not 1 <= int(raw_timeout) <= 172800:
            raise ApiError(
                "InvalidParameters", f"executionTimeout {raw_timeout[:40]!r}: whole seconds, 1 to 172800"
            )
        execution_timeout = float(raw_timeout)
        now = self.clock()
        command = {
            "id": command_id,
            "document": document,
            "script": "\n".join(commands),
            "requested": now,
            "timeout": float(params.get("TimeoutSeconds", 3600)),
            "execution_timeout": execution_timeout,
            "comment": params.get("Comment", ""),
            "invocations": {i: {"Status": "Pending", "StatusDetails": "Pending"} for i in ids},
        }
        self.commands[command_id] = command
        self._deliver(command)
        return {
            "Command": {
                "CommandId": command_id,
                "DocumentName": document,
                "InstanceIds": ids,
                "Status": "Pending",
                "RequestedDateTime": now,
                "Comment": command["comment"],
                "Parameters": params.get("Parameters", {}),
                "TargetCount": len(ids),
            }
        }

    def _command(self, command_id: str) -> Dict[str, Any]:
        if command_id not in self.commands:
            raise ApiError("InvalidCommandId", f"command {command_id} does not exist")
        command = self.commands[command_id]
        self._deliver(command)
        return command

    def _ssm_ListCommandInvocations(self, request: Request) -> Dict[str, Any]:
        command = self._command(request.json.get("CommandId", ""))
        only = request.json.get("InstanceId")
        items = []
        for instance_id, inv in command["invocations"].items():
            if only and only != instance_id:
                continue
            item = {
                "CommandId": command["id"],
                "InstanceId": instance_id,
                "DocumentName": command["document"],
                "RequestedDateTime": command["requested"],
                "Status": inv["Status"],
                "StatusDetails": inv["StatusDetails"],
                "Comment": command["comment"],
            }
            if request.json.get("Details"):
                item["CommandPlugins"] = [
                    {
                        "Name": PLUGINS[command["document"]],
                        "Status": inv["Status"],
                        "ResponseCode": inv.get("ResponseCode", -1),
                        "Output": inv.get("stdout", "")[:PLUGIN_OUTPUT_LIMIT],
                    }
                ]
            items.append(item)
        return {"CommandInvocations": items}

    def _ssm_ListCommands(self, request: Request) -> Dict[str, Any]:
        after = 0.0
        for f in request.json.get("Filters", []):
            if f.get("key") == "InvokedAfter":
                after = datetime.fromisoformat(f["value"].replace("Z", "+00:00")).timestamp()
        wanted = request.json.get("CommandId")
        items = []
        for command in sorted(self.commands.values(), key=lambda c: -c["requested"]):
            if (wanted and command["id"] != wanted) or command["requested"] <= after:
                continue
            self._deliver(command)
            statuses = [inv["Status"] for inv in command["invocations"].values()]
            ended = [s for s in statuses if s in ENDED]
            items.append(
                {
                    "CommandId": command["id"],
                    "DocumentName": command["document"],
                    "Comment": command["comment"],
                    "RequestedDateTime": command["requested"],
                    "Status": command_status(statuses),
                    "TargetCount": len(statuses),
                    "CompletedCount": len(ended),
                    "ErrorCount": sum(1 for s in ended if s != "Success"),
                }
            )
        start = _page_start(request.json.get("NextToken"), "InvalidNextToken")
        size = request.integer("MaxResults", 50, 1, 50)
        answer: Dict[str, Any] = {"Commands": items[start : start + size]}
        if start + size < len(items):
            answer["NextToken"] = str(start + size)
        return answer

    def _ssm_GetCommandInvocation(self, request: Request) -> Dict[str, Any]:
        command_id, instance_id = request.json.get("CommandId", ""), request.json.get("InstanceId", "")
        if command_id not in self.commands or instance_id not in self.commands[command_id]["invocations"]:
            raise ApiError("InvocationDoesNotExist", "An error occurred (InvocationDoesNotExist)")
        command = self._command(command_id)
        inv = command["invocations"][instance_id]
        return {
            "CommandId": command_id,
            "InstanceId": instance_id,
            "DocumentName": command["document"],
            "Comment": command["comment"],
            "Status": inv["Status"],
            "StatusDetails": inv["StatusDetails"],
            "ResponseCode": inv.get("ResponseCode", -1),
            "ExecutionStartDateTime": _iso(inv["started"]) if "started" in inv else "",
            "ExecutionEndDateTime": _iso(inv["ended"]) if "ended" in inv else "",
            "StandardOutputContent": inv.get("stdout", ""),
            "StandardErrorContent": inv.get("stderr", ""),
        }

    def _ssm_DescribeInstanceInformation(self, request: Request) -> Dict[str, Any]:
        filters = information_filters(request.json)
        items = []
        for g in self.guests.values():
            if not g.spec.agent:  # no agent ever registered it: SSM does not know the instance
                continue
            family = g.spec.family
            ping = "Online" if g.agent_online() else "ConnectionLost"
            seen = {
                "InstanceIds": [g.instance_id],
                "PingStatus": [ping],
                "PlatformTypes": [family.platform],
                "ResourceType": ["EC2Instance"],
                "AgentVersion": [AGENT_VERSION],
                "tag-key": list(g.spec.tags),
                **{f"tag:{k}": [v] for k, v in g.spec.tags.items()},
            }
            if not all(set(seen.get(key, [])) & values for key, values in filters.items()):
                continue
            items.append(
                {
                    "InstanceId": g.instance_id,
                    "PingStatus": ping,
                    "LastPingDateTime": g.last_ping(),
                    "AgentVersion": AGENT_VERSION,
                    "IsLatestVersion": True,
                    "PlatformType": family.platform,
                    "PlatformName": family.pretty,
                    "PlatformVersion": family.version,
                    "ResourceType": "EC2Instance",
                    "ComputerName": g.spec.name,
                }
            )
        start = _page_start(request.json.get("NextToken"), "InvalidNextToken")
        size = request.integer("MaxResults", 50, 5, 50)
        more = start + size < len(items)
        answer: Dict[str, Any] = {"InstanceInformationList": items[start : start + size]}
        if more:
            answer["NextToken"] = str(start + size)
        return answer


FAULT_FIELDS = {"operation": str, "code": str, "message": str, "status": int, "count": int, "dry_run": bool}
AGENT_VERSION = "3.3.1142.0"
ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9.]{0,99}")


def _page_start(token: Any, code: str) -> int:
    """Where the page a NextToken of the lab's asks for starts."""
    if token in (None, ""):
        return 0
    if not isinstance(token, str) or not token.isdigit() or len(token) > 9:
        raise ApiError(code, f"NextToken {str(token)[:40]!r} is not a token this lab gave")
    return int(token)


def _fault(spec: Dict[str, Any]) -> Dict[str, Any]:
    """A fault to inject, checked: an operation, an error code, and optionally its message, HTTP
    status (400-599), how many calls it hits (from 1) and whether only DryRun calls (or only
    others) get it."""
    unknown = set(spec) - set(FAULT_FIELDS)
    wrong = [
        k
        for k, kind in FAULT_FIELDS.items()
        if k in spec
        and spec[k] is not None
        and (not isinstance(spec[k], kind) or (kind is int and isinstance(spec[k], bool)))
    ]
    if unknown or wrong or not spec.get("operation") or not ERROR_CODE.fullmatch(str(spec.get("code", ""))):
        raise ApiError(
            "ValidationException",
            f"a fault takes operation and code (an error code), and may take {sorted(FAULT_FIELDS)}; "
            f"unknown {sorted(unknown)}, wrong type {wrong}, code {spec.get('code')!r}",
        )
    if not 400 <= spec.get("status", 400) <= 599 or spec.get("count", 1) < 1:
        raise ApiError("ValidationException", "a fault's status is 400 to 599 and its count at least 1")
    return {"count": 1, **spec}


def _body(environ: Dict[str, Any], limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (a larger or malformed length is refused unread)."""
    raw = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if raw:
        if not raw.isdigit():
            raise ApiError("InvalidArgument", f"Content-Length {raw[:40]!r} is not a length")
        length = int(raw)
        if length > limit:
            raise ApiError(
                "RequestEntityTooLarge", f"the body of {length} bytes is over the lab's {limit}", 413
            )
        body = stream.read(length) if length else b""
        if len(body) != length:
            raise ApiError("IncompleteBody", f"the body ended after {len(body)} of {length} bytes")
        return body
    if environ.get("wsgi.input_terminated"):  # chunked: read up to the limit
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise ApiError("RequestEntityTooLarge", f"the body is over the lab's {limit} bytes", 413)
        return body
    return b""


def _protocol_guess(environ: Dict[str, Any]) -> str:
    """The protocol to answer a request in before it is parsed: by its signed service and headers."""
    if environ.get("PATH_INFO", "").startswith("/_lab/"):
        return "json"
    scope = parse_authorization(environ.get("HTTP_AUTHORIZATION", ""))
    return protocol_of(environ, scope.service if scope else "")


# How AWS words each refusal of a signature, by protocol.
REFUSALS = {
    "key": {"ec2": "AuthFailure", "s3": "InvalidAccessKeyId", "json": "UnrecognizedClientException"},
    "signature": {"ec2": "AuthFailure", "json": "InvalidSignatureException"},
    "expired": {"ec2": "RequestExpired", "s3": "RequestTimeTooSkewed", "json": "InvalidSignatureException"},
    "missing": {"ec2": "AuthFailure", "s3": "AccessDenied", "json": "MissingAuthenticationTokenException"},
}
REFUSAL_DEFAULT = {
    "key": "InvalidClientTokenId",
    "signature": "SignatureDoesNotMatch",
    "expired": "RequestExpired",
    "missing": "MissingAuthenticationToken",
}


def _refusal(exc: AuthError, protocol: str) -> ApiError:
    code = REFUSALS[exc.kind].get("json" if protocol == "cbor" else protocol, REFUSAL_DEFAULT[exc.kind])
    return ApiError(code, exc.message, 403)


class QuietHandler(MotoRequestHandler):
    """Moto's request handler without a log line per request."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        return None


class LabServer:
    """The lab served over HTTP on 127.0.0.1 in a background thread."""

    def __init__(
        self,
        fleet: Fleet,
        port: int = 0,
        workdir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="chaosec2panic-lab-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.lab = Lab(fleet, self.workdir, clock)
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", port, self.lab, threaded=True, request_handler=QuietHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._stopping = threading.Event()
        self._courier = threading.Thread(target=self._deliver_until_stopped, daemon=True)

    def _deliver_until_stopped(self) -> None:
        while not self._stopping.wait(DELIVERY_TICK):
            self.lab.deliver_pending()
            self.lab.check_targets()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def environment(self) -> Dict[str, str]:
        """What to export so boto3 (and so the extension) talks to the lab."""
        return _aws_environment(self.url, self.lab.fleet.region, self.lab.operator)

    def start(self) -> "LabServer":
        """Serve, with moto's (process-wide) state reset: one lab per process at a time."""
        moto_api_backend.reset()
        self._thread.start()
        self._courier.start()
        try:
            self.lab.populate(self.url)
        except BaseException:
            self.stop()  # no half-started lab: its guests end with it
            raise
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._courier.is_alive():
            self._courier.join(timeout=10)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self.lab.close()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> "LabServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
