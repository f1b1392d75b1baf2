"""Rollbacks: bring back instances that an NMI left down."""

import logging
from typing import Any, Dict, List

from chaoslib.types import Configuration, Secrets

from .aws import client, paginate
from .errors import InvalidRequest
from .guest import platform_of
from .health import observe
from .iam import OBSERVE, RESOLVE, requires
from .ledger import Injection, Ledger
from .polling import Poll, poll
from .recovery import is_back, is_up
from .settings import settings

__all__ = ["recover_instances"]

logger = logging.getLogger("chaostoolkit")


def _describe(ec2: Any, ids: List[str]) -> Dict[str, Dict[str, Any]]:
    return {
        i["InstanceId"]: i
        for r in paginate(ec2, "describe_instances", "Reservations", InstanceIds=ids)
        for i in r.get("Instances", [])
    }


@requires(*RESOLVE, *OBSERVE, "ec2:RebootInstances", "ec2:StopInstances", "ec2:StartInstances")
def recover_instances(
    instance_ids: List[str] = None,
    timeout: float = 300,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Bring back every hit instance that does not serve (status checks ok, SSM agent online,
    a kernel that answers): reboot it, and if it still does not serve within ``timeout``
    seconds, stop and start it. An instance that survived its NMI without a panic is left
    alone. Acts on the named instances' latest NMI, or on every NMI in the ledger not followed
    by a recovery (from this run or an earlier one). Safe to run twice. Returns what was done
    to each instance and whether it serves now.
    """
    ec2, ssm = client("ec2", configuration, secrets), client("ssm", configuration, secrets)
    ledger = Ledger.of(configuration)
    latest = ledger.latest()
    if instance_ids:
        unknown = [i for i in instance_ids if i not in latest]
        if unknown:
            raise InvalidRequest(f"no NMI recorded for {unknown} in the ledger {ledger.path}")
        hits = {i: latest[i] for i in instance_ids}
    else:
        hits = ledger.unrecovered()
    if not hits:
        return {"instances": {}}
    platforms = {i: platform_of(inst) for i, inst in _describe(ec2, sorted(hits)).items()}
    done: Dict[str, List[str]] = {i: [] for i in hits}
    found = settings(configuration)
    retry, interval = found.retry(), found.poll_interval

    def down(entries: Dict[str, Injection]) -> List[str]:
        """The instances that do not serve; those back in a new boot are marked recovered."""
        seen = observe(ec2, ssm, {i: platforms[i] for i in entries})
        for i, e in entries.items():
            if is_back(seen[i], e.sent_at, e.boot_id_before):
                ledger.update(i, e.sent_at, recovered_at=seen[i].at, rollback=done[i])
        return [i for i in entries if not is_up(seen[i])]

    def wait_back(ids: List[str]) -> List[str]:
        outcome = poll(
            Poll(
                lambda: down({i: hits[i] for i in ids}),
                lambda left: not left,
                timeout=float(timeout),
                interval=interval,
            )
        )
        return outcome.last

    pending = down(hits)
    if pending:
        retry.call(ec2.reboot_instances, InstanceIds=pending)
        for i in pending:
            done[i].append("reboot")
        pending = wait_back(pending)
    if pending:
        running = [
            i
            for i, inst in _describe(ec2, pending).items()
            if inst["State"]["Name"] not in ("stopped", "stopping")
        ]
        if running:
            retry.call(ec2.stop_instances, InstanceIds=running)
            for i in running:
                done[i].append("stop")
        ec2.get_waiter("instance_stopped").wait(
            InstanceIds=pending,
            WaiterConfig={
                "Delay": max(1, int(interval)),
                "MaxAttempts": max(1, int(timeout / max(1, interval))),
            },
        )
        retry.call(ec2.start_instances, InstanceIds=pending)
        for i in pending:
            done[i].append("start")
        pending = wait_back(pending)
    for i in pending:
        logger.warning("%s is still not back after %s", i, ", ".join(done[i]))
    return {"instances": {i: {"actions": done[i], "recovered": i not in pending} for i in hits}}
