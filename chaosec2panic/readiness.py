"""Is an instance ready to take an NMI? Guardrails, agent, kdump, dump space and permission.

One place for the checks that ``send_nmi`` enforces, the ``ready_for_nmi`` probe reports
and ``chaosec2panic preflight`` prints.
"""

from typing import Any, Dict, List, Mapping

from botocore.exceptions import ClientError

from .aws import RetryPolicy, error_code
from .guest import Platform, platform_of
from .guest.parsers import Check, KdumpVerdict, kdump_verdict, parse_report
from .ssm import agent_status, run_script
from .targets import Guardrails, Request, describe, guardrail_checks, instance_types

__all__ = ["COLUMNS", "kdump_verdicts", "permission", "readiness", "table"]

COLUMNS = ("running", "opt_in", "type", "agent_online", "kdump", "dump_space", "permission")


def kdump_verdicts(
    ssm: Any, platforms: Mapping[str, Platform], min_dump_space_ratio: float
) -> Dict[str, KdumpVerdict]:
    """The kdump verdict of each instance; one that cannot be checked is unknown, never armed."""
    answers = run_script(ssm, platforms, "kdump_status", timeout=60)
    return {
        i: kdump_verdict(parse_report(r.stdout, "kdump_status"), min_dump_space_ratio)
        if r.ok
        else KdumpVerdict("unknown", reasons=[f"not checked: {r.status} {r.error}".rstrip()])
        for i, r in answers.items()
    }


def permission(ec2: Any, instance_id: str, retry: RetryPolicy) -> str | None:
    """None when EC2 DryRun says the interrupt would be allowed, else why not."""
    try:
        retry.call(ec2.send_diagnostic_interrupt, InstanceId=instance_id, DryRun=True)
    except ClientError as exc:
        if error_code(exc) == "DryRunOperation":
            return None
        return f"DryRun answered {error_code(exc)}: {exc.response['Error'].get('Message', '')}"
    return "DryRun answered without DryRunOperation; cannot prove permission"


def _kdump_problem(verdict: KdumpVerdict) -> str | None:
    if verdict.verdict == "armed":
        return None
    reasons = [r for r in verdict.reasons if not r.startswith("dump_space")]
    return f"kdump {verdict.verdict}: {'; '.join(reasons)}" if reasons else None


def _space_problem(space: Check | None) -> str | None:
    if space is None:
        return "dump space not checked"
    return None if space.status == "pass" else f"{space.found or 'unknown'}, expected {space.expected}"


def readiness(
    ec2: Any, ssm: Any, request: Request, guard: Guardrails, min_dump_space_ratio: float, retry: RetryPolicy
) -> List[Dict[str, Any]]:
    """One row per matched instance: each check (None when it passes, else why not) and ready."""
    found = describe(ec2, request)
    if not found:
        return []
    types = instance_types(ec2, sorted({i.get("InstanceType", "") for i in found}))
    ids = [i["InstanceId"] for i in found]
    agents = agent_status(ssm, ids)
    verdicts = kdump_verdicts(ssm, {i["InstanceId"]: platform_of(i) for i in found}, min_dump_space_ratio)
    rows = []
    for inst in found:
        i = inst["InstanceId"]
        verdict = verdicts[i]
        space = verdict.checks.get("dump_space")
        checks = {
            **guardrail_checks(inst, types.get(inst.get("InstanceType", "")), guard),
            "agent_online": None if agents[i].online else f"SSM agent {agents[i].ping_status}",
            "kdump": _kdump_problem(verdict),
            "dump_space": _space_problem(space),
            "permission": permission(ec2, i, retry),
        }
        name = next((t["Value"] for t in inst.get("Tags", []) if t["Key"] == "Name"), "")
        rows.append(
            {
                "instance_id": i,
                "name": name,
                "ready": not any(checks.values()),
                "checks": checks,
                "kdump": verdict.to_dict(),
            }
        )
    return rows


def table(rows: List[Dict[str, Any]]) -> str:
    """The rows as a table a person reads: ok or the first words of what is wrong, then details."""
    header = f"{'instance':<21} {'name':<20} " + " ".join(f"{c:<12}" for c in COLUMNS) + " ready"
    lines = [header]
    details = []
    for row in rows:
        cells = " ".join(f"{'ok' if row['checks'][c] is None else 'NO':<12}" for c in COLUMNS)
        lines.append(
            f"{row['instance_id']:<21} {row['name'][:20]:<20} {cells} {'yes' if row['ready'] else 'NO'}"
        )
        details += [f"  {row['instance_id']} {c}: {why}" for c, why in row["checks"].items() if why]
    return "\n".join(lines + details)
