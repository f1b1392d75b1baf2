"""What the export takes from an experiment: its one send_nmi, resolved against the experiment's
configuration, and the stop alarms; or why it cannot be exported (ExportRefused)."""

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence

from ..errors import InvalidRequest
from ..settings import settings
from ..targets import Request

__all__ = ["ExportRefused", "Plan", "plan"]

SEND_NMI = ("chaosec2panic.actions", "send_nmi")
ALARMS_CONTROL = "chaosec2panic.controls.alarms"
REFERENCE = re.compile(r"\$\{(\w+)\}")
# Arguments of send_nmi the export keeps; any other is refused (see _refusals).
KEPT = {
    "instance_ids",
    "filters",
    "tags",
    "count",
    "percent",
    "seed",
    "max_instances",
    "batch_size",
    "batch_percent",
    "batch_slo",
    "force",
    "allow_unarmed",
    "max_concurrency",
}


class ExportRefused(ValueError):
    """The experiment cannot be exported as it is: the message says what and why."""


@dataclass(frozen=True)
class Plan:
    """What the export needs from the experiment's send_nmi and configuration."""

    slug: str
    title: str
    request: Request
    opt_in: tuple[str, str]
    max_instances: int
    concurrency: str
    batch_slo: int
    alarms: Dict[str, str]  # stop alarm name -> its ARN when given ("" when only named)
    insufficient_data_ok: tuple[str, ...]
    require_armed: bool  # False with allow_unarmed: no kdump check, no dump required

    def name(self, part: str) -> str:
        return f"chaosec2panic-{self.slug}-{part}"


def _value(configuration: Mapping[str, Any], name: str) -> Any:
    if name not in configuration:
        raise ExportRefused(f"${{{name}}} is not in the experiment's configuration")
    entry = configuration[name]
    if isinstance(entry, Mapping) and entry.get("type") == "env":
        if "default" not in entry:
            raise ExportRefused(
                f"configuration {name} has no default; the export has no environment to read it from"
            )
        return entry["default"]
    return entry


def _resolved(value: Any, configuration: Mapping[str, Any]) -> Any:
    """``value`` with each ``${name}`` replaced by the configuration's value (an env entry's default)."""
    if isinstance(value, str):
        return REFERENCE.sub(lambda m: str(_value(configuration, m.group(1))), value)
    if isinstance(value, Mapping):
        return {k: _resolved(v, configuration) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v, configuration) for v in value]
    return value


def _send_nmi(experiment: Mapping[str, Any]) -> Dict[str, Any]:
    found = [
        a
        for a in experiment.get("method") or []
        if (a.get("provider") or {}).get("module") == SEND_NMI[0] and a["provider"].get("func") == SEND_NMI[1]
    ]
    if not found:
        raise ExportRefused("the experiment's method sends no NMI (no chaosec2panic.actions.send_nmi)")
    if len(found) > 1:
        raise ExportRefused(
            f"the method has {len(found)} send_nmi actions; the export makes one FIS action: split it"
        )
    return dict(found[0]["provider"].get("arguments") or {})


def _refusals(args: Mapping[str, Any]) -> List[str]:
    why = [
        f"{k}: not a send_nmi argument the export knows" for k in sorted(set(args) - KEPT - {"batch_pause"})
    ]
    if args.get("batch_pause") is not None:
        why.append(
            "batch_pause: Automation's rate control starts the next instance when one ends, "
            "never after a pause"
        )
    if args.get("batch_size") is not None and args.get("batch_percent") is not None:
        why.append("give batch_size or batch_percent, not both")
    return why


def _alarms(
    experiment: Mapping[str, Any], configuration: Mapping[str, Any], arns: Sequence[str]
) -> Dict[str, str]:
    specs = [configuration.get("chaosec2panic_stop_alarms")]
    specs += [
        {
            k: v
            for k, v in (c.get("provider") or {}).get("arguments", {}).items()
            if k in ("names", "arns", "tags")
        }
        for c in experiment.get("controls") or []
        if (c.get("provider") or {}).get("module") == ALARMS_CONTROL
    ]
    found: Dict[str, str] = {}
    for spec in filter(None, specs):
        found.update({n: found.get(n, "") for n in spec.get("names") or []})
        arns = [*arns, *(spec.get("arns") or [])]
        if spec.get("tags") and not arns:
            raise ExportRefused(
                f"the stop alarms are found by their tags {spec['tags']}: FIS stop conditions and the "
                "runbook's alarm checks name alarms; pass each one's ARN (--stop-alarm-arn)"
            )
    bad = [a for a in arns if ":alarm:" not in a]
    if bad:
        raise ExportRefused(f"not CloudWatch alarm ARNs: {bad}")
    found.update({a.split(":alarm:", 1)[-1]: a for a in arns})
    return dict(sorted(found.items()))


def plan(experiment: Mapping[str, Any], slug: str, stop_alarm_arns: Sequence[str] = ()) -> Plan:
    """What to export of ``experiment`` (its file's stem is ``slug``), or ExportRefused saying why not."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,29}", slug):
        raise ExportRefused(f"name {slug!r}: expected up to 30 lowercase letters, digits and -")
    configuration = experiment.get("configuration") or {}
    raw = _send_nmi(experiment)
    problems = _refusals(raw)
    if "windows" in (experiment.get("tags") or []):
        problems.append("the experiment targets Windows: the runbook runs the Linux guest scripts only")
    args = _resolved(raw, configuration)
    conf = {
        k: _resolved(_value(configuration, k), configuration)
        for k in configuration
        if k.startswith("chaosec2panic_")
    }
    try:
        found = settings(conf)
    except InvalidRequest as exc:
        raise ExportRefused(str(exc)) from exc
    request = Request(
        args.get("instance_ids") or (),
        args.get("filters") or (),
        args.get("tags") or {},
        args.get("count"),
        args.get("percent"),
        args.get("seed"),
    )
    problems += request.problems()
    max_instances = args.get("max_instances", 1)
    if isinstance(max_instances, bool) or not isinstance(max_instances, int) or max_instances < 1:
        problems.append(f"max_instances must be a whole number >= 1, got {max_instances!r}")
    size, percent = args.get("batch_size"), args.get("batch_percent")
    concurrency = f"{percent:g}%" if percent is not None else str(size or max_instances)
    if problems:
        raise ExportRefused("cannot export this send_nmi: " + "; ".join(problems))
    return Plan(
        slug,
        str(experiment.get("title", slug)),
        request,
        (found.opt_in_key, found.opt_in_value),
        max_instances,
        concurrency,
        int(args.get("batch_slo", 600)),
        _alarms(experiment, conf, stop_alarm_arns),
        found.insufficient_data_ok,
        not args.get("allow_unarmed", False),
    )
