"""Application health checks: is the service on an instance answering again after its reboot.

A check is an HTTP(S) URL or a TCP ``host:port``, with placeholders filled per instance from
DescribeInstances: ``{instance_id}``, ``{private_ip}``, ``{public_ip}``, ``{private_dns}``; or
an ELB target group, whose target health the load balancer reports for every instance at once.
"""

import re
import socket
import string
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping

from botocore.exceptions import ClientError

from .errors import InvalidRequest

__all__ = ["AppCheck", "AppWatch", "parse_app_check", "target_health"]

PLACEHOLDERS = {
    "instance_id": "InstanceId",
    "private_ip": "PrivateIpAddress",
    "public_ip": "PublicIpAddress",
    "private_dns": "PrivateDnsName",
}
KEYS = {"url", "tcp", "target_group", "expect_status", "timeout"}
TARGET_GROUP_ARN = re.compile(
    r"\Aarn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:[0-9]{12}:targetgroup/[A-Za-z0-9_-]+/[0-9a-f]+\Z"
)
CHECKERS = 16  # checks in flight at once


@dataclass(frozen=True)
class AppCheck:
    """One application check: an HTTP URL answering ``expect_status``, a TCP port accepting, or
    an ELB target group reporting the instance healthy."""

    url: str = ""
    tcp: str = ""
    target_group: str = ""
    expect_status: int = 200
    timeout: float = 2.0

    def target(self, instance: Mapping[str, Any]) -> str:
        """The URL or host:port of this check for ``instance`` (a DescribeInstances item); for a
        target group, the instance id."""
        if self.target_group:
            return str(instance["InstanceId"])
        values = {name: str(instance.get(field) or "") for name, field in PLACEHOLDERS.items()}
        return (self.url or self.tcp).format(**values)

    def passes(self, target: str) -> bool:
        """One attempt: the expected HTTP status, or a TCP connection accepted, within the timeout."""
        if self.url:
            try:
                with urllib.request.urlopen(target, timeout=self.timeout) as answer:
                    return int(answer.status) == self.expect_status
            except urllib.error.HTTPError as exc:
                return exc.code == self.expect_status
            except (OSError, ValueError):
                return False
        host, _, port = target.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout):
                return True
        except (OSError, ValueError):
            return False

    def run(self, targets: Mapping[str, str]) -> Dict[str, bool]:
        """Each instance's check (id -> target), side by side."""
        if not targets:
            return {}
        with ThreadPoolExecutor(max_workers=min(CHECKERS, len(targets))) as pool:
            return dict(zip(targets, pool.map(self.passes, targets.values()), strict=True))


def target_health(elbv2: Any, arn: str, instance_ids: Iterable[str]) -> Dict[str, List[str]]:
    """The states the load balancer reports for each instance's registrations in target group
    ``arn`` (one DescribeTargetHealth for the whole group; no registration: an empty list)."""
    try:
        found = elbv2.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "TargetGroupNotFound":
            raise InvalidRequest(
                f"app_check target group {arn} not found: give the ARN of a target group in this region"
            ) from exc
        raise
    states: Dict[str, List[str]] = {i: [] for i in instance_ids}
    for entry in found:
        if entry["Target"]["Id"] in states:
            states[entry["Target"]["Id"]].append(entry["TargetHealth"]["State"])
    return states


@dataclass(frozen=True)
class AppWatch:
    """An application check bound to the watched instances: each one's target and, for a target
    group, the elbv2 client that reads it."""

    check: AppCheck
    targets: Mapping[str, str]
    elbv2: Any = field(default=None, compare=False)

    @property
    def lags(self) -> bool:
        """Whether the check may still report an instance healthy after it crashed: a load
        balancer marks a target unhealthy only after its unhealthy threshold of failed checks,
        so its healthy counts only once it has seen the instance fail."""
        return bool(self.check.target_group)

    def run(self, instance_ids: Iterable[str]) -> Dict[str, bool]:
        """Whether each instance passes now: every registration healthy in the target group,
        or its URL or port answering."""
        ids = list(instance_ids)
        if self.check.target_group:
            states = target_health(self.elbv2, self.check.target_group, ids)
            return {i: bool(s) and all(state == "healthy" for state in s) for i, s in states.items()}
        return self.check.run({i: self.targets[i] for i in ids})

    def unregistered(self) -> List[str]:
        """The watched instances the target group does not hold (none for a URL or port)."""
        if not self.check.target_group:
            return []
        return sorted(
            i for i, s in target_health(self.elbv2, self.check.target_group, self.targets).items() if not s
        )


def parse_app_check(spec: Mapping[str, Any] | None) -> AppCheck | None:
    """An :class:`AppCheck` from an activity argument, or an error that says what to fix."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or set(spec) - KEYS:
        raise InvalidRequest(
            "app_check must be a mapping with url or tcp (and expect_status, timeout) or target_group, "
            f"got {spec!r}"
        )
    url, tcp = str(spec.get("url") or ""), str(spec.get("tcp") or "")
    group = str(spec.get("target_group") or "")
    if sum(map(bool, (url, tcp, group))) != 1:
        raise InvalidRequest(
            "app_check takes exactly one of url (http://...), tcp (host:port) or target_group (an ARN)"
        )
    if group:
        if not TARGET_GROUP_ARN.fullmatch(group):
            raise InvalidRequest(
                f"app_check target_group must be a target group ARN "
                f"(arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID), got {group!r}"
            )
        if set(spec) - {"target_group"}:
            raise InvalidRequest(
                "app_check target_group takes no expect_status or timeout: the group has its own"
            )
        return AppCheck(target_group=group)
    if url and not url.startswith(("http://", "https://")):
        raise InvalidRequest(f"app_check url must start with http:// or https://, got {url!r}")
    host, _, port = tcp.rpartition(":")
    if tcp and not (host and port.isdigit()):
        raise InvalidRequest(f"app_check tcp must be host:port, got {tcp!r}")
    names = {name for _, name, _, _ in string.Formatter().parse(url or tcp) if name}
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        raise InvalidRequest(f"app_check placeholders {unknown} are unknown; use {sorted(PLACEHOLDERS)}")
    status, timeout = spec.get("expect_status", 200), spec.get("timeout", 2.0)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise InvalidRequest(f"app_check expect_status must be an HTTP status code, got {status!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidRequest(f"app_check timeout must be seconds > 0, got {timeout!r}")
    return AppCheck(url, tcp, expect_status=status, timeout=float(timeout))
