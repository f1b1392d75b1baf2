"""Look at instances: EC2 status checks, SSM agents, and which boot each one is in."""

from typing import Any, Dict, List, Mapping

from . import guest
from .aws import DESCRIBE_STATUS_CHUNK, chunks, paginate
from .guest.parsers import parse_report
from .recovery import Observation, now_iso
from .ssm import agent_status, run_script

__all__ = ["instance_status", "observe"]


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
