"""Application health checks: is the service on an instance answering again after its reboot.

A check is an HTTP(S) URL or a TCP ``host:port``, with placeholders filled per instance from
DescribeInstances: ``{instance_id}``, ``{private_ip}``, ``{public_ip}``, ``{private_dns}``.
"""

import socket
import string
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Mapping

from .errors import InvalidRequest

__all__ = ["AppCheck", "parse_app_check"]

PLACEHOLDERS = {
    "instance_id": "InstanceId",
    "private_ip": "PrivateIpAddress",
    "public_ip": "PublicIpAddress",
    "private_dns": "PrivateDnsName",
}
KEYS = {"url", "tcp", "expect_status", "timeout"}
CHECKERS = 16  # checks in flight at once


@dataclass(frozen=True)
class AppCheck:
    """One application check: an HTTP URL answering ``expect_status``, or a TCP port accepting."""

    url: str = ""
    tcp: str = ""
    expect_status: int = 200
    timeout: float = 2.0

    def target(self, instance: Mapping[str, Any]) -> str:
        """The URL or host:port of this check for ``instance`` (a DescribeInstances item)."""
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


def parse_app_check(spec: Mapping[str, Any] | None) -> AppCheck | None:
    """An :class:`AppCheck` from an activity argument, or an error that says what to fix."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or set(spec) - KEYS:
        raise InvalidRequest(
            f"app_check must be a mapping with url or tcp (and expect_status, timeout), got {spec!r}"
        )
    url, tcp = str(spec.get("url") or ""), str(spec.get("tcp") or "")
    if bool(url) == bool(tcp):
        raise InvalidRequest("app_check takes exactly one of url (http://...) or tcp (host:port)")
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
    return AppCheck(url, tcp, status, float(timeout))
