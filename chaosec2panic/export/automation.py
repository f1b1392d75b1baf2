"""Run by the runbooks' aws:executeScript steps (its text is sent, not imported): checks on what the
guest scripts printed (key=value lines), and the selection (the same sampling as
chaosec2panic.targets.choose). Each handler raises to fail its step. Standard library only."""

import math
import random
from typing import Any, Dict


def _facts(text: str) -> Dict[str, str]:
    """The first value of each key of a guest script's report."""
    facts: Dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts.setdefault(key, value)
    return facts


def armed(events: Dict[str, Any], context: Any) -> Dict[str, Any]:
    """Before the NMI: the boot and the guest's clock from kdump_status, and (when required) kdump
    proven armed by the Linux checks of kdump_verdict."""
    f = _facts(events["report"])
    size = f.get("crash_size", "")
    checks = (
        ("complete report", f.get("end") == "ok" and bool(f.get("boot_id")) and bool(f.get("now"))),
        ("crash_kernel_loaded", f.get("crash_loaded") == "1"),
        ("crashkernel_reserved", size.isdigit() and int(size) > 0),
        ("unknown_nmi_panic", f.get("unknown_nmi_panic") == "1"),
        ("kdump_service", f.get("kdump_service") == "operational"),
    )
    failed = [name for name, ok in checks[: None if events["require_armed"] else 1] if not ok]
    if failed:
        raise Exception("kdump is not proven armed, no NMI sent: " + ", ".join(failed))
    return {"boot_id": f["boot_id"], "guest_now": f["now"].split(".")[0]}


def rebooted(events: Dict[str, Any], context: Any) -> Dict[str, Any]:
    """After the NMI: a new boot and (when required) a dump written since the check before it."""
    f = _facts(events["report"])
    if f.get("boot_id", "") in ("", events["boot_id_before"]):
        raise Exception("no new boot after the NMI (boot_id " + repr(f.get("boot_id")) + ")")
    newest = f.get("dump", "").split("|")
    mtime = newest[2] if len(newest) > 2 else ""
    fresh = mtime.isdigit() and int(mtime) >= int(events["guest_now_before"])
    if events["require_dump"] and not fresh:
        raise Exception("back in a new boot, but no crash dump written since the NMI: " + repr(newest[0]))
    return {"boot_id": f["boot_id"], "dump": newest[0]}


def select(events: Dict[str, Any], context: Any) -> Dict[str, Any]:
    """Pick count or percent of the matched ids (seeded like targets.choose); cap at max_instances."""
    ids = sorted(set(events["ids"]))
    count, percent, seed = events["count"], events["percent"], events["seed"]
    if count or percent:
        wanted = count or math.ceil(len(ids) * percent / 100)
        seed = seed if seed >= 0 else random.SystemRandom().randrange(2**31)
        ids = sorted(random.Random(seed).sample(ids, min(max(wanted, 1), len(ids))))
    if len(ids) > events["max_instances"]:
        raise Exception(
            f"the selection holds {len(ids)} instances, more than max_instances={events['max_instances']}"
        )
    return {"ids": ids, "seed": seed}
