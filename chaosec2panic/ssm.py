"""Run the guest scripts through SSM Run Command, in batches, and read the agents' status."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, Mapping

from . import guest
from .aws import SSM_CHUNK, RetryPolicy, chunks, error_code, paginate
from .polling import Poll, poll

__all__ = ["AgentStatus", "CommandResult", "agent_status", "run_script"]

TERMINAL = frozenset({"Success", "Cancelled", "TimedOut", "Failed", "Undeliverable", "Terminated"})
PLUGIN_OUTPUT_LIMIT = 2500
MIN_DELIVERY_TIMEOUT = 30


@dataclass(frozen=True)
class AgentStatus:
    """An SSM agent as DescribeInstanceInformation sees it; ``NotRegistered`` when absent."""

    ping_status: str
    last_ping: str
    platform: str

    @property
    def online(self) -> bool:
        return self.ping_status == "Online"


@dataclass(frozen=True)
class CommandResult:
    """One instance's answer to one command: SSM's status, its output, and why it failed."""

    status: str
    stdout: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "Success"


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value or "")


def agent_status(ssm: Any, instance_ids: List[str]) -> Dict[str, AgentStatus]:
    """The agent of each instance, read in batches of 50."""
    found: Dict[str, AgentStatus] = {}
    for batch in chunks(instance_ids, SSM_CHUNK):
        filters = [{"Key": "InstanceIds", "Values": batch}]
        for info in paginate(
            ssm, "describe_instance_information", "InstanceInformationList", Filters=filters
        ):
            found[info["InstanceId"]] = AgentStatus(
                info.get("PingStatus", ""), _iso(info.get("LastPingDateTime")), info.get("PlatformType", "")
            )
    return {i: found.get(i, AgentStatus("NotRegistered", "", "")) for i in instance_ids}


def _send(
    ssm: Any, platform: guest.Platform, ids: List[str], text: str, timeout: int, retry: RetryPolicy
) -> tuple[Dict[str, str], Dict[str, CommandResult]]:
    sent: Dict[str, str] = {}
    failed: Dict[str, CommandResult] = {}
    for batch in chunks(ids, SSM_CHUNK):
        try:
            answer = retry.call(
                ssm.send_command,
                DocumentName=platform.document,
                InstanceIds=batch,
                Parameters={"commands": [text], "executionTimeout": [str(timeout)]},
                TimeoutSeconds=max(MIN_DELIVERY_TIMEOUT, timeout),
                Comment="chaosec2panic guest script",
            )
        except Exception as exc:  # one failed batch must not hide the others' answers
            failed.update({i: CommandResult("NotSent", error=f"{error_code(exc)}: {exc}") for i in batch})
            continue
        sent.update({i: answer["Command"]["CommandId"] for i in batch})
    return sent, failed


def _collect(ssm: Any, sent: Mapping[str, str]) -> Dict[str, CommandResult]:
    results: Dict[str, CommandResult] = {}
    for command_id in sorted(set(sent.values())):
        for inv in paginate(
            ssm, "list_command_invocations", "CommandInvocations", CommandId=command_id, Details=True
        ):
            plugins = inv.get("CommandPlugins") or [{}]
            status = inv.get("Status", "Pending")
            details = "" if status == "Success" else inv.get("StatusDetails", "")
            results[inv["InstanceId"]] = CommandResult(status, plugins[0].get("Output", ""), details)
    return {i: results.get(i, CommandResult("Pending")) for i in sent}


def _full_output(ssm: Any, command_id: str, instance_id: str, retry: RetryPolicy) -> str:
    answer = retry.call(ssm.get_command_invocation, CommandId=command_id, InstanceId=instance_id)
    return answer.get("StandardOutputContent", "")


def run_script(
    ssm: Any,
    platforms: Mapping[str, guest.Platform],
    name: str,
    variables: Mapping[str, str] | None = None,
    timeout: int = 120,
    interval: float = 0.25,
    retry: RetryPolicy | None = None,
) -> Dict[str, CommandResult]:
    """Run guest script ``name`` on each instance (id -> platform) whose agent is online.

    Instances whose agent is offline get ``AgentOffline``; commands with no final answer
    within ``timeout`` seconds keep their last status and say so in ``error``.
    """
    retry = retry or RetryPolicy()
    ids = list(platforms)
    agents = agent_status(ssm, ids)
    results: Dict[str, CommandResult] = {
        i: CommandResult("AgentOffline", error=f"SSM agent {a.ping_status}")
        for i, a in agents.items()
        if not a.online
    }
    sent: Dict[str, str] = {}
    for platform in guest.PLATFORMS.values():
        targets = [i for i in ids if platforms[i] == platform and i not in results]
        if targets:
            more_sent, not_sent = _send(
                ssm, platform, targets, guest.script(platform, name, variables), timeout, retry
            )
            sent.update(more_sent)
            results.update(not_sent)
    if not sent:
        return results
    outcome = poll(
        Poll(
            lambda: _collect(ssm, sent),
            lambda r: all(c.status in TERMINAL for c in r.values()),
            timeout=timeout + 5,
            interval=interval,
            backoff=1.5,
            max_interval=5.0,
        )
    )
    for instance_id, found in outcome.last.items():
        if found.ok and len(found.stdout) >= PLUGIN_OUTPUT_LIMIT:
            found = CommandResult(found.status, _full_output(ssm, sent[instance_id], instance_id, retry))
        elif found.status not in TERMINAL:
            found = CommandResult(found.status, error=f"no final answer within {timeout}s")
        results[instance_id] = found
    return results
