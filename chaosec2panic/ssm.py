"""Run the guest scripts through SSM Run Command, in batches, and read the agents' status."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, Mapping

from . import guest
from .aws import SSM_CHUNK, RetryPolicy, chunks, error_code, paginate
from .polling import Poll, poll

__all__ = [
    "AgentStatus",
    "CommandResult",
    "agent_status",
    "completed_counts",
    "read_commands",
    "run_script",
    "send_script",
]

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


def send_script(
    ssm: Any,
    platforms: Mapping[str, guest.Platform],
    name: str,
    variables: Mapping[str, str] | None = None,
    timeout: int = 120,
    retry: RetryPolicy | None = None,
    delivery_timeout: int | None = None,
) -> tuple[Dict[str, str], Dict[str, CommandResult]]:
    """Send guest script ``name`` to each instance, 50 per SendCommand, without waiting.

    Returns the command id per instance sent to, and ``NotSent`` results for the others. A
    command waits for an offline agent up to ``delivery_timeout`` seconds (default ``timeout``).
    """
    retry = retry or RetryPolicy()
    sent: Dict[str, str] = {}
    failed: Dict[str, CommandResult] = {}
    for platform in guest.PLATFORMS.values():
        ids = [i for i, p in platforms.items() if p == platform]
        text = guest.script(platform, name, variables) if ids else ""
        for batch in chunks(ids, SSM_CHUNK):
            try:
                answer = retry.call(
                    ssm.send_command,
                    DocumentName=platform.document,
                    InstanceIds=batch,
                    Parameters={"commands": [text], "executionTimeout": [str(timeout)]},
                    TimeoutSeconds=max(MIN_DELIVERY_TIMEOUT, delivery_timeout or timeout),
                    Comment=f"chaosec2panic {name}",
                )
            except Exception as exc:  # one failed batch must not hide the others' answers
                failed.update({i: CommandResult("NotSent", error=f"{error_code(exc)}: {exc}") for i in batch})
                continue
            sent.update({i: answer["Command"]["CommandId"] for i in batch})
    return sent, failed


def completed_counts(ssm: Any, since: str) -> Dict[str, int]:
    """How many invocations of each command sent since ``since`` (ISO) have ended, from
    ListCommands: one call for up to 50 commands, to learn which ones are worth reading."""
    filters = [{"key": "InvokedAfter", "value": since[:19] + "Z"}]  # whole seconds, as SSM takes
    return {
        c["CommandId"]: int(c.get("CompletedCount", 0))
        for c in paginate(ssm, "list_commands", "Commands", Filters=filters)
    }


def read_commands(ssm: Any, sent: Mapping[str, str]) -> Dict[str, CommandResult]:
    """The current answer of each instance (id -> command id): one ListCommandInvocations
    per command."""
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
    online = {i: p for i, p in platforms.items() if i not in results}
    sent, not_sent = send_script(ssm, online, name, variables, timeout, retry)
    results.update(not_sent)
    if not sent:
        return results
    outcome = poll(
        Poll(
            lambda: read_commands(ssm, sent),
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
