"""Look at instances: EC2 status checks, SSM agents, and which boot each one is in."""

import logging
import time
from typing import Any, Dict, List, Mapping

from . import guest
from .aws import DESCRIBE_STATUS_CHUNK, chunks, paginate
from .guest.parsers import parse_report
from .ledger import Injection, Ledger
from .polling import Poll, poll
from .recovery import Observation, is_back, now_iso, seconds_between
from .ssm import agent_status, run_script

__all__ = ["instance_status", "observe", "wait_for_recovery"]

logger = logging.getLogger("chaostoolkit")


def instance_status(ec2: Any, instance_ids: List[str]) -> Dict[str, Dict[str, str]]:
    """State and status checks of each instance, 100 ids per DescribeInstanceStatus call."""
    found: Dict[str, Dict[str, str]] = {}
    for batch in chunks(instance_ids, DESCRIBE_STATUS_CHUNK):
        for s in paginate(
            ec2, "describe_instance_status", "InstanceStatuses", InstanceIds=batch, IncludeAllInstances=True
        ):
            found[s["InstanceId"]] = {
                "state": s.get("InstanceState", {}).get("Name", "unknown"),
                "instance_status": s.get("InstanceStatus", {}).get("Status", "unknown"),
                "system_status": s.get("SystemStatus", {}).get("Status", "unknown"),
            }
    missing = {"state": "unknown", "instance_status": "unknown", "system_status": "unknown"}
    return {i: found.get(i, missing) for i in instance_ids}


def _status_ok(status: Mapping[str, str]) -> bool:
    return (
        status["state"] == "running" and status["instance_status"] == "ok" and status["system_status"] == "ok"
    )


def observe(
    ec2: Any, ssm: Any, platforms: Mapping[str, guest.Platform], read_boot: bool = True, timeout: int = 10
) -> Dict[str, Observation]:
    """One observation per instance; the boot is read (through SSM) only where it can answer."""
    ids = list(platforms)
    statuses = instance_status(ec2, ids)
    agents = agent_status(ssm, ids)
    reachable = {i: platforms[i] for i in ids if _status_ok(statuses[i]) and agents[i].online}
    boots = run_script(ssm, reachable, "identity", timeout=timeout) if read_boot and reachable else {}
    seen: Dict[str, Observation] = {}
    for i in ids:
        at = now_iso()
        detail = (
            f"state {statuses[i]['state']}, instance status {statuses[i]['instance_status']}, "
            f"system status {statuses[i]['system_status']}, agent {agents[i].ping_status}"
        )
        boot_id, uptime = "", None
        answer = boots.get(i)
        if answer is not None:
            report = parse_report(answer.stdout, "identity")
            if answer.ok and report.complete:
                boot_id = report.get("boot_id")
                try:
                    uptime = float(report.get("uptime"))
                except ValueError:
                    uptime = None
            else:
                detail += f", boot not read ({answer.status} {answer.error})".rstrip()
        seen[i] = Observation(at, _status_ok(statuses[i]), agents[i].online, boot_id, uptime, detail)
    return seen


def wait_for_recovery(
    ec2: Any,
    ssm: Any,
    ledger: Ledger,
    hits: Mapping[str, Injection],
    platforms: Mapping[str, guest.Platform],
    deadline: float,
    interval: float,
) -> Dict[str, float | None]:
    """Seconds from each NMI to its instance being back (None if not back by ``deadline``,
    a ``time.monotonic()`` value); each recovery seen is written to the ledger."""
    back: Dict[str, float | None] = {
        i: seconds_between(e.sent_at, e.recovered_at) if e.recovered_at else None for i, e in hits.items()
    }

    def look() -> Dict[str, float | None]:
        pending = {i: platforms[i] for i, s in back.items() if s is None}
        for i, seen in observe(ec2, ssm, pending).items():
            e = hits[i]
            if is_back(seen, e.sent_at, e.boot_id_before):
                back[i] = seconds_between(e.sent_at, seen.at)
                ledger.update(i, e.sent_at, recovered_at=seen.at)
                logger.info("%s back %.1fs after its NMI", i, back[i])
        return back

    poll(
        Poll(
            look,
            lambda b: all(s is not None for s in b.values()),
            timeout=max(0.0, deadline - time.monotonic()),
            interval=interval,
        )
    )
    return back
