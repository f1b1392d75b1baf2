"""The lab's load balancer: health checks of the instances registered in ELB target groups.

Moto keeps the target groups and their registrations; it calls every running instance healthy.
The lab checks each registered instance's application (:meth:`Guest.app_healthy`) every
``HealthCheckIntervalSeconds`` (model seconds, times the lab's time scale) and changes its state
as a load balancer does: unhealthy after ``UnhealthyThresholdCount`` failed checks in a row,
healthy again after ``HealthyThresholdCount`` passed ones. An instance is first checked when
it is first seen registered, and has the state of that check at once (the fleet's instances
have been up, and checked, for a while). Each change is a lab event (balancer-unhealthy,
balancer-healthy) with the target group's name.
"""

import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

__all__ = ["HealthChecker"]

FAILED = ("Target.FailedHealthChecks", "Health checks failed")


@dataclass
class _Target:
    healthy: bool
    next_check: float
    passed: int = 0
    failed: int = 0


class HealthChecker:
    """Each (target group, instance)'s health, from the health checks that fell due."""

    def __init__(self, emit: Callable[[float, str, str, str], None]) -> None:
        self._targets: Dict[Tuple[str, str], _Target] = {}
        self._lock = threading.Lock()
        self._emit = emit

    def check(self, group: Any, guest: Any, scale: float, now: float) -> None:
        """Run ``group``'s (a moto target group) health check on ``guest`` if one is due."""
        interval = float(group.health_check_interval_seconds) * scale
        key = (group.arn, guest.instance_id)
        with self._lock:
            target = self._targets.get(key)
            if target is None:
                self._targets[key] = _Target(guest.app_healthy(), now + interval)
                return
            if now < target.next_check:
                return
            target.next_check = now + interval
            was = target.healthy
            if guest.app_healthy():
                target.passed, target.failed = target.passed + 1, 0
                target.healthy = target.healthy or target.passed >= int(group.healthy_threshold_count)
            else:
                target.passed, target.failed = 0, target.failed + 1
                target.healthy = target.healthy and target.failed < int(group.unhealthy_threshold_count)
            if target.healthy != was:
                kind = "balancer-healthy" if target.healthy else "balancer-unhealthy"
                self._emit(now, guest.instance_id, kind, group.name)

    def rewrite(self, payload: bytes, arn: str) -> bytes:
        """A DescribeTargetHealth answer for target group ``arn`` with the checked instances'
        states put in."""
        root = ET.fromstring(payload)
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        with self._lock:
            healthy = {instance: t.healthy for (group, instance), t in self._targets.items() if group == arn}
        for member in root.iter(f"{ns}member"):
            instance = member.findtext(f"{ns}Target/{ns}Id", "")
            state = member.find(f"{ns}TargetHealth/{ns}State")
            if state is None or state.text != "healthy" or healthy.get(instance, True):
                continue
            state.text = "unhealthy"
            health = member.find(f"{ns}TargetHealth")
            for tag, text in zip(("Reason", "Description"), FAILED, strict=True):
                ET.SubElement(health, f"{ns}{tag}").text = text
        namespace = ns.strip("{}") or None
        return ET.tostring(root, encoding="utf-8", xml_declaration=True, default_namespace=namespace)
