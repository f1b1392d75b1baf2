"""The crash lab: an AWS-compatible HTTP endpoint over simulated guests.

The lab answers itself what touches guests (SendDiagnosticInterrupt, DescribeInstanceStatus,
GetConsoleOutput, SSM Run Command and agent status) and passes everything else to moto, so
DescribeInstances, DescribeInstanceTypes, tags, filters, CloudWatch and STS behave as moto
implements them. Reboot, stop, start and terminate go to moto and then to the guest.
Under ``/_lab/`` it serves what it saw (events, calls, fleet) and takes injected faults
(API errors on an operation, an SSM agent cut off).
"""

import base64
import io
import json
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
from urllib.parse import parse_qs

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models.instance_types import INSTANCE_TYPES
from moto.elbv2.models import elbv2_backends
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.utilities.utils import load_resource
from werkzeug.serving import BaseWSGIServer, make_server

from ..targets import INSTANCE_ID, nmi_support
from .balancer import HealthChecker
from .fleet import Fleet
from .kit import Kit, KitError, ensure_kit
from .protocol import ApiError, Request, cbor_error, ec2_error, ec2_xml, json_error, list_param
from .qemuguest import QemuError, QemuGuest, choose_accel
from .simguest import SimGuest, WindowsSimGuest

__all__ = ["LAB_CREDENTIALS", "Guest", "Lab", "LabError", "LabServer"]

LAB_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "lab", "AWS_SECRET_ACCESS_KEY": "lab"}
STATE_CODES = {"running": 16, "stopped": 80}
DOCUMENTS = {"AWS-RunShellScript": "Linux", "AWS-RunPowerShellScript": "Windows"}
PLUGINS = {"AWS-RunShellScript": "aws:runShellScript", "AWS-RunPowerShellScript": "aws:runPowerShellScript"}
# Moto's bundled AMIs by SSM platform: a Windows AMI makes DescribeInstances say Platform=windows.
AMI_PREFERENCE = {"Windows": "Windows_Server-2016-English-Full-Base"}
PLUGIN_OUTPUT_LIMIT = 2500
ENDED = frozenset({"Success", "Failed", "TimedOut", "Cancelled"})
DELIVERY_TICK = 0.1  # seconds: how soon a waiting command reaches an agent that came online
GUEST_ACTIONS = {
    "RebootInstances": "reboot",
    "StopInstances": "stop",
    "StartInstances": "start",
    "TerminateInstances": "stop",
}

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


def _aws_environment(url: str, region: str) -> Dict[str, str]:
    """What makes boto3 and the AWS CLI talk to the lab at ``url``: for the extension, and for
    the guests' own AWS tools (in place of an instance role and its metadata)."""
    return {"AWS_ENDPOINT_URL": url, "AWS_REGION": region, "AWS_DEFAULT_REGION": region, **LAB_CREDENTIALS}


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


def _s3_operation(environ: Dict[str, Any]) -> str:
    """The operation of a path-style S3 request (S3 names it nowhere in the request), so that the
    lab records S3 calls and takes faults on them by name; "" for what it does not name."""
    method = environ.get("REQUEST_METHOD", "GET")
    bucket, _, key = environ.get("PATH_INFO", "").lstrip("/").partition("/")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
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

    # set-up -----------------------------------------------------------------------------------
    def populate(self, endpoint: str) -> None:
        """Create the fleet's instances in moto (through its API) and a guest for each."""
        ec2 = boto3.client(
            "ec2",
            endpoint_url=endpoint,
            region_name=self.fleet.region,
            aws_access_key_id="lab",
            aws_secret_access_key="lab",
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
            else:
                # Guests alike but for their name start from the same files: copy the first's.
                alike = repr(replace(spec, name=""))
                if alike in templates:
                    shutil.copytree(templates[alike], root, symlinks=True)
                kind = WindowsSimGuest if spec.windows else SimGuest
                guest = kind(instance_id, spec, root, self.fleet.time_scale, self.clock, self._emit)
                templates.setdefault(alike, root)
                guest.aws_env = _aws_environment(endpoint, self.fleet.region)
            self.guests[instance_id] = guest
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
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_lab/"):
            return self._control(path, environ.get("REQUEST_METHOD", "GET"), body, start_response)
        request = Request(environ, body)
        if request.service == "s3" and not request.operation:
            request.operation = _s3_operation(environ)
        with self._lock:
            self.calls[f"{request.service}:{request.operation}"] += 1
        handler = getattr(self, f"_{request.service}_{request.operation}", None)
        try:
            self._inject_fault(request)
            if handler is not None:
                with self._lock:  # guests and commands change together: one lab operation at a time
                    result = handler(request)
                return self._answer(start_response, 200, request, result)
        except ApiError as error:
            return self._answer(start_response, error.status, request, error)
        environ["wsgi.input"] = io.BytesIO(body)
        if request.service == "elasticloadbalancing" and request.operation == "DescribeTargetHealth":
            return self._target_health(environ, start_response, request.param("TargetGroupArn"))
        act = GUEST_ACTIONS.get(request.operation) if request.service == "ec2" else None
        if act is None:
            return self.moto(environ, start_response)
        return self._moto_then_guests(environ, start_response, request, act)

    def _moto_then_guests(
        self,
        environ: Dict[str, Any],
        start_response: StartResponse,
        request: Request,
        act: str,
    ) -> List[bytes]:
        """Let moto change the EC2 state, then do the same to the guests if it succeeded."""
        seen: Dict[str, str] = {}

        def capture(status: str, headers: List[Any], exc_info: Any = None) -> Any:
            seen["status"] = status
            return start_response(status, headers, exc_info)

        payload = b"".join(self.moto(environ, capture))
        if seen.get("status", "").startswith("200") and not request.flag("DryRun"):
            for instance_id in list_param(request.form, "InstanceId"):
                if instance_id in self.guests:
                    getattr(self.guests[instance_id], act)()
        return [payload]

    def _target_health(self, environ: Dict[str, Any], start_response: StartResponse, arn: str) -> List[bytes]:
        """Moto's answer on which targets are registered, with each lab instance's health as the
        lab's load balancer sees it (moto calls every running instance healthy)."""
        seen: Dict[str, Any] = {}

        def capture(status: str, headers: List[Any], exc_info: Any = None) -> Any:
            seen.update(status=status, headers=headers)
            return lambda data: None

        payload = b"".join(self.moto(environ, capture))
        if seen["status"].startswith("200"):
            self.check_targets()
            payload = self.balancer.rewrite(payload, arn)
        headers = [(k, v) for k, v in seen["headers"] if k.lower() != "content-length"]
        start_response(seen["status"], [*headers, ("Content-Length", str(len(payload)))])
        return [payload]

    def check_targets(self) -> None:
        """Let the lab's load balancer run the health checks that are due."""
        groups = elbv2_backends[DEFAULT_ACCOUNT_ID][self.fleet.region].target_groups
        with self._lock:
            for group in list(groups.values()):
                for target in list(group.targets.values()):
                    guest = self.guests.get(target["Id"])
                    if guest is not None:
                        self.balancer.check(group, guest, self.fleet.time_scale, self.clock())

    def _answer(
        self, start_response: StartResponse, status: int, request: Request, result: Any
    ) -> List[bytes]:
        headers = []
        if request.service == "ec2":
            payload = (
                ec2_error(result) if isinstance(result, ApiError) else ec2_xml(request.operation, result)
            )
            ctype = "text/xml"
        elif request.cbor:  # the lab itself answers rpc-v2-cbor only with injected errors
            payload, ctype = cbor_error(result), "application/cbor"
            headers = [("smithy-protocol", "rpc-v2-cbor")]
        else:
            payload = json_error(result) if isinstance(result, ApiError) else json.dumps(result).encode()
            ctype = "application/x-amz-json-1.1"
        start_response(
            f"{status} {'OK' if status == 200 else 'Error'}",
            [
                ("Content-Type", ctype),
                ("Content-Length", str(len(payload))),
                ("x-amzn-RequestId", str(uuid.uuid4())),
                *headers,
            ],
        )
        return [payload]

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

    def _control(self, path: str, method: str, body: bytes, start_response: StartResponse) -> List[bytes]:
        with self._lock:
            if path == "/_lab/faults" and method == "POST":
                fault = json.loads(body)
                fault.setdefault("count", 1)
                self.faults.append(fault)
                answer: Any = {"faults": self.faults}
            elif path == "/_lab/agent" and method == "POST":
                change = json.loads(body)
                guest = self.guests[self.names.get(change.get("name", ""), change.get("instance_id", ""))]
                guest.agent_outage = not change["online"]
                answer = {"instance_id": guest.instance_id, "agent_outage": guest.agent_outage}
            elif path == "/_lab/events":
                for guest in self.guests.values():
                    guest.advance()
                with self._events_lock:
                    answer = sorted(self.events, key=lambda e: e["epoch"])
            elif path.startswith("/_lab/app/"):
                # A stand-in for each guest's application health endpoint, for app checks.
                key = path.removeprefix("/_lab/app/")
                guest = self.guests.get(self.names.get(key, key))
                healthy = guest is not None and guest.app_healthy()
                status = "200 OK" if healthy else "503 Service Unavailable"
                start_response(status, [("Content-Type", "application/json")])
                return [json.dumps({"healthy": healthy}).encode()]
            elif path == "/_lab/calls":
                answer = dict(self.calls)
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
                start_response("404 Not Found", [("Content-Type", "application/json")])
                return [json.dumps({"error": f"no lab control at {path}"}).encode()]
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
        if guest.state != "running":
            raise ApiError(
                "IncorrectInstanceState", f"The instance '{guest.instance_id}' is not in the 'running' state."
            )
        guest.nmi()
        return {"return": True}

    def _ec2_DescribeInstanceStatus(self, request: Request) -> Dict[str, Any]:
        ids = list_param(request.form, "InstanceId")
        guests = [self._guest(i) for i in ids] if ids else list(self.guests.values())
        include_all = request.flag("IncludeAllInstances")
        items = []
        for g in guests:
            status = g.status()
            if g.state != "running" and not include_all:
                continue
            system = "ok" if g.state == "running" else "not-applicable"
            check = {"passed": "ok", "initializing": "initializing"}
            items.append(
                {
                    "instanceId": g.instance_id,
                    "availabilityZone": f"{self.fleet.region}a",
                    "instanceState": {"code": STATE_CODES[g.state], "name": g.state},
                    "systemStatus": {
                        "status": system,
                        "details": [
                            {"name": "reachability", "status": "passed" if system == "ok" else system}
                        ],
                    },
                    "instanceStatus": {
                        "status": status,
                        "details": [
                            {
                                "name": "reachability",
                                "status": next((k for k, v in check.items() if v == status), "failed"),
                            }
                        ],
                    },
                }
            )
        start = int(request.param("NextToken") or 0)
        size = int(request.param("MaxResults") or 1000)
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
                # A real agent takes a waiting command the moment it comes online.
                taken = min(now, max(command["requested"], guest.agent_since()))
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
        execution_timeout = float((params.get("Parameters", {}).get("executionTimeout") or ["3600"])[0])
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
                    "Status": "Success" if len(ended) == len(statuses) else "InProgress",
                    "TargetCount": len(statuses),
                    "CompletedCount": len(ended),
                    "ErrorCount": sum(1 for s in ended if s != "Success"),
                }
            )
        start = int(request.json.get("NextToken") or 0)
        size = int(request.json.get("MaxResults") or 50)
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
        wanted: List[str] = []
        for f in request.json.get("Filters", []) + request.json.get("InstanceInformationFilterList", []):
            if f.get("Key") in ("InstanceIds", "instanceIds"):
                wanted += f.get("Values") or f.get("valueSet") or []
        guests = (
            [self.guests[i] for i in wanted if i in self.guests] if wanted else list(self.guests.values())
        )
        items = []
        for g in guests:
            family = g.spec.family
            items.append(
                {
                    "InstanceId": g.instance_id,
                    "PingStatus": "Online" if g.agent_online() else "ConnectionLost",
                    "LastPingDateTime": g.last_ping(),
                    "AgentVersion": "3.3.1142.0",
                    "IsLatestVersion": True,
                    "PlatformType": family.platform,
                    "PlatformName": family.pretty,
                    "PlatformVersion": family.version,
                    "ResourceType": "EC2Instance",
                    "ComputerName": g.spec.name,
                }
            )
        start = int(request.json.get("NextToken") or 0)
        size = int(request.json.get("MaxResults") or 50)
        more = start + size < len(items)
        answer: Dict[str, Any] = {"InstanceInformationList": items[start : start + size]}
        if more:
            answer["NextToken"] = str(start + size)
        return answer


class QuietHandler(MotoRequestHandler):
    """Moto's request handler without a log line per request."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        return None


class LabServer:
    """The lab served over HTTP on 127.0.0.1 in a background thread."""

    def __init__(self, fleet: Fleet, port: int = 0, workdir: Path | None = None):
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="chaosec2panic-lab-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.lab = Lab(fleet, self.workdir)
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
        return _aws_environment(self.url, self.lab.fleet.region)

    def start(self) -> "LabServer":
        """Serve, with moto's (process-wide) state reset: one lab per process at a time."""
        self._thread.start()
        self._courier.start()
        urllib.request.urlopen(
            urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=30
        )
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
