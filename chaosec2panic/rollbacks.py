"""Rollbacks: bring back instances that an NMI left down; undo what arm_kdump changed."""

import logging
from typing import Any, Dict, List, Mapping

from chaoslib.types import Configuration, Secrets

from .actions import ArmedSettings, reboot_and_wait, run_kdump_settings
from .aws import client, paginate
from .errors import Ec2PanicError, InvalidRequest, Refused
from .guest import PLATFORMS, platform_of
from .guest.parsers import LINUX_SETTINGS, RESTORABLE_VALUES, WINDOWS_SETTINGS
from .health import observe, take_over
from .iam import OBSERVE, RESOLVE, RUN_SCRIPT, requires
from .ledger import RUN_ID, Injection, Ledger
from .polling import Poll, poll
from .recovery import is_back, is_up, now_iso, seconds_between
from .settings import settings
from .targets import INSTANCE_ID

__all__ = ["recover_instances", "restore_kdump_settings"]

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
    others_after: float = 3600,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Bring back every hit instance that does not serve (status checks ok, SSM agent online,
    a kernel that answers): reboot it, and if it still does not serve within ``timeout``
    seconds, stop and start it. An instance that survived its NMI without a panic is left
    alone. Acts on the named instances' latest NMI, or on every NMI in the ledger not followed
    by a recovery: this run's, and another run's once sent ``others_after`` seconds ago or more
    (until then its own runner may be watching its capture kernel write the dump, which a reboot
    would destroy; those are listed under ``left_to_their_runs``). Safe to run twice. Returns
    what was done to each instance and whether it serves now.
    """
    ec2, ssm = client("ec2", configuration, secrets), client("ssm", configuration, secrets)
    take_over()  # a watch send_nmi left running: what it saw is in the ledger, and it looks no more
    ledger = Ledger.of(configuration)
    latest = ledger.latest()
    young: Dict[str, Injection] = {}
    if instance_ids:
        unknown = [i for i in instance_ids if i not in latest]
        if unknown:
            raise InvalidRequest(f"no NMI recorded for {unknown} in the ledger {ledger.where}")
        hits = {i: latest[i] for i in instance_ids}
    else:
        hits, young = _ours_or_old(ledger.unrecovered(), float(others_after))
    left = {i: {"run_id": e.run_id, "sent_at": e.sent_at} for i, e in sorted(young.items())}
    if left:
        logger.warning("left to the runs that hit them, sent under %ss ago: %s", others_after, sorted(left))
    if not hits:
        return {"instances": {}, **({"left_to_their_runs": left} if left else {})}
    platforms = {i: platform_of(inst) for i, inst in _describe(ec2, sorted(hits)).items()}
    done: Dict[str, List[str]] = {i: [] for i in hits}
    found = settings(configuration)
    retry, interval = found.retry(), found.poll_interval

    def down(entries: Dict[str, Injection]) -> List[str]:
        """The instances that do not serve; those back in a new boot are marked recovered."""
        seen = observe(ec2, ssm, {i: platforms[i] for i in entries})
        ledger.update(
            {
                (i, e.sent_at): {"recovered_at": seen[i].at, "rollback": done[i]}
                for i, e in entries.items()
                if is_back(seen[i], e.sent_at, e.boot_id_before)
            }
        )
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
    result: Dict[str, Any] = {
        "instances": {i: {"actions": done[i], "recovered": i not in pending} for i in hits}
    }
    return {**result, "left_to_their_runs": left} if left else result


def _ours_or_old(
    unrecovered: Dict[str, Injection], others_after: float
) -> tuple[Dict[str, Injection], Dict[str, Injection]]:
    """``unrecovered`` split into what this run may act on (its own hits, and other runs' sent
    ``others_after`` seconds ago or more) and other runs' younger hits."""
    now = now_iso()
    young = {
        i: e
        for i, e in unrecovered.items()
        if e.run_id != RUN_ID and seconds_between(e.sent_at, now) < others_after
    }
    return {i: e for i, e in unrecovered.items() if i not in young}, young


def _record_problems(instance_id: Any, entry: Any) -> List[str]:
    """Why the record of one instance must not be sent back to it: the record is a file on this
    machine, and each before-value ends up in a root shell's grub file, sed program or sysctl
    call on the instance. Each problem names the setting and the value found."""
    if not isinstance(instance_id, str) or not INSTANCE_ID.fullmatch(instance_id):
        return [f"{instance_id!r} is not an instance id"]
    platform = entry.get("platform") if isinstance(entry, Mapping) else None
    if platform not in PLATFORMS or not isinstance(entry.get("settings"), Mapping):
        return [f"not a record of arm_kdump: expected platform ({' or '.join(PLATFORMS)}) and settings"]
    known = WINDOWS_SETTINGS if platform == "windows" else LINUX_SETTINGS
    problems = []
    for name, values in entry["settings"].items():
        if name not in known:
            problems.append(f"unknown setting {name!r} (known on {platform}: {', '.join(known)})")
            continue
        found = values if isinstance(values, Mapping) else {}
        if name == "packages":
            if not all(isinstance(found.get(k), str) for k in ("before", "armed")):
                problems.append("packages: before and armed must be text (package names)")
        elif not RESTORABLE_VALUES[name].fits(found.get("before")):
            problems.append(f"{name}: before {found.get('before')!r} is not {RESTORABLE_VALUES[name].what}")
    return problems


def _restore_variables(entry: Dict[str, Any]) -> Dict[str, str]:
    """kdump_settings' variables to put back the recorded settings, in the order they are undone
    (the service before its files). Packages stay installed: removing them could take others."""
    order = WINDOWS_SETTINGS if entry.get("platform") == "windows" else LINUX_SETTINGS
    names = [n for n in order if n in entry["settings"] and n != "packages"]
    return {
        "ACTION": "restore",
        "RESTORE": " ".join(names),
        **{f"BEFORE_{n}": entry["settings"][n]["before"] for n in names},
    }


@requires(*RESOLVE, *RUN_SCRIPT, "ec2:RebootInstances")
def restore_kdump_settings(
    instance_ids: List[str] = None,
    reboot: bool = True,
    timeout: float = 600,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Undo exactly what arm_kdump changed, through SSM: the crashkernel= reservation, the
    kernel.unknown_nmi_panic value and its sysctl file, USE_KDUMP, the kdump service's enabled and
    running state (Windows: the CrashControl values, removed when they were absent). Packages
    arm_kdump installed stay installed (removing them could take other packages with them; with
    the service off they do nothing, but kdump-tools' grub.d file keeps its crashkernel=: on
    Debian and Ubuntu the next boot reserves the package's default). Acts on the named
    instances, or on every instance arm_kdump recorded (in this run or an earlier one). An
    instance whose reservation changed is rebooted (unless ``reboot`` is false) and waited for up
    to ``timeout`` seconds. Safe to run twice: what was restored is forgotten. Every recorded
    value is checked against its setting's format before anything is sent (the instance checks
    again): a record that holds anything else is refused, naming the instance and the setting.
    Returns, per instance, each setting's before, after and changed, the packages left installed
    and the reboot.
    """
    malformed = [i for i in instance_ids or () if not isinstance(i, str) or not INSTANCE_ID.fullmatch(i)]
    if malformed:
        raise InvalidRequest(f"malformed instance ids {malformed}: expected i- and 8 or 17 hex digits")
    record = ArmedSettings.of(configuration)
    recorded = record.instances()
    wanted = sorted(recorded) if not instance_ids else sorted(set(instance_ids))
    todo = {i: recorded[i] for i in wanted if i in recorded}
    unfit = {i: "; ".join(found) for i, entry in todo.items() if (found := _record_problems(i, entry))}
    if unfit:
        raise Refused(
            f"the record {record.path} holds what restore_kdump_settings will not send to an "
            "instance (was it edited?): fix or remove these entries and check those instances' "
            "settings by hand; the other instances can be restored by naming them in instance_ids",
            unfit,
        )
    result: Dict[str, Any] = {
        i: {"changed": False, "settings": {}, "error": "", "note": "nothing recorded by arm_kdump"}
        for i in wanted
        if i not in recorded
    }
    if not todo:
        return {"instances": result, "record": str(record.path)}
    ec2, ssm = client("ec2", configuration, secrets), client("ssm", configuration, secrets)
    platforms = {i: platform_of(inst) for i, inst in _describe(ec2, sorted(todo)).items()}
    missing = sorted(set(todo) - set(platforms))
    for i in missing:
        result[i] = {"changed": False, "settings": {}, "error": "instance not found; its record is kept"}
    for i in [i for i, p in platforms.items() if p.name != todo[i]["platform"]]:
        why = f"recorded as {todo[i]['platform']} but the instance is {platforms[i].name}"
        result[i] = {
            "changed": False,
            "settings": {},
            "error": f"{why}: nothing was sent, its record is kept",
        }
        del platforms[i]
    groups: Dict[tuple, Dict[str, Any]] = {}
    for i in platforms:
        variables = _restore_variables(todo[i])
        groups.setdefault(tuple(sorted(variables.items())), {})[i] = platforms[i]
    changes = {}
    for key, members in groups.items():
        changes.update(run_kdump_settings(ssm, members, dict(key)))
    for i, change in changes.items():
        if not change.error:
            record.forget(i)
    answering = {i: platforms[i] for i, c in changes.items() if not c.error}
    rebooted, verdicts = reboot_and_wait(
        ec2, ssm, answering, {i: changes[i] for i in answering}, reboot, False, float(timeout), configuration
    )
    for i, change in changes.items():
        packages = todo[i]["settings"].get("packages") or {"before": "", "armed": ""}
        added = sorted(set(packages["armed"].split()) - set(packages["before"].split()))
        reasons = verdicts[i].reasons if i in verdicts else []
        result[i] = {
            "changed": bool(change.changed),
            "settings": change.settings,
            "error": change.error,
            "packages_left_installed": added,
            "reboot": change.reboot,
            "rebooted": i in rebooted,
            "back": not any(r.startswith("not back from the reboot") for r in reasons),
        }
    failed = {i: r["error"] for i, r in result.items() if r["error"]}
    if failed:
        raise Ec2PanicError(
            f"kdump settings could not be restored everywhere (kept in {record.path} to retry):\n"
            + "\n".join(f"  {i}: {why}" for i, why in sorted(failed.items()))
        )
    return {"instances": result, "record": str(record.path)}
