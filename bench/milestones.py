"""Each timeline milestone the extension measured against the lab's own record of it.

The lab records, per guest, when each step of the crash happened (its events: the NMI, the
panic, the capture kernel's start, the dump written, the new boot, the agent online). The
extension's timelines (``recovery_seconds``, refined by ``crash_dumps`` as the report refines
them) say when it believes each happened, from the instance's evidence. Here the two meet.
"""

from statistics import mean
from typing import Any, Dict, List, Mapping

from chaosec2panic.recovery import Evidence, Timeline, parse_iso

__all__ = ["MILESTONE_EVENTS", "TARGET", "errors", "summary", "table", "truth_of"]

# A milestone and the lab event that is its truth (the first of that kind after the NMI).
MILESTONE_EVENTS = {
    "nmi_sent": "nmi",
    "panic": "panic",
    "capture_started": "capture-start",
    "dump_written": "dump-written",
    "kernel_back": "boot",
    "agent_online": "agent-online",
}
TARGET = 0.1  # seconds: every milestone the lab records, at N = 500


def truth_of(events: List[Mapping[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Per instance, the epoch of each milestone's event after its last NMI (events in time order)."""
    found: Dict[str, Dict[str, float]] = {}
    for event in events:
        kind, instance = event["kind"], event["instance_id"]
        if kind == "nmi":
            found[instance] = {"nmi_sent": event["epoch"]}
            continue
        seen = found.get(instance)
        milestone = next((m for m, k in MILESTONE_EVENTS.items() if k == kind), None)
        if seen is not None and milestone is not None:
            seen.setdefault(milestone, event["epoch"])
    return found


def errors(
    timelines: Mapping[str, Mapping[str, Any]],
    dumps: Mapping[str, Mapping[str, Any]],
    truth: Mapping[str, Mapping[str, float]],
) -> Dict[str, Dict[str, Any]]:
    """Per milestone: each instance's signed error (measured minus the lab's time, seconds) and the
    sources the measurements came from. ``dumps`` is ``crash_dumps``' per-instance output, whose
    evidence refines the timeline as the report does."""
    out: Dict[str, Dict[str, Any]] = {m: {"errors": {}, "sources": {}, "bars": {}} for m in MILESTONE_EVENTS}
    for instance, data in timelines.items():
        found = (dumps.get(instance) or {}).get("evidence") or {}
        line = Timeline.from_dict(instance, data).refined(
            {m: Evidence.from_dict(e) for m, e in found.items()}
        )
        for milestone in MILESTONE_EVENTS:
            at, real = line.milestones.get(milestone), truth.get(instance, {}).get(milestone)
            if at is None or real is None:
                continue
            error = round(parse_iso(at).timestamp() - real, 3)
            bar = line.evidence[milestone]
            out[milestone]["errors"][instance] = error
            # The truth within the bar (one-sided for a bound); times are to the millisecond.
            out[milestone]["bars"][instance] = bar.earliest - 0.001 <= real <= bar.latest + 0.001
            source = bar.source
            out[milestone]["sources"][source] = out[milestone]["sources"].get(source, 0) + 1
    return out


def summary(found: Mapping[str, Mapping[str, Any]], n: int) -> Dict[str, Dict[str, Any]]:
    """Per milestone: instances measured of ``n``, max and mean absolute error, and its sources."""
    rows = {}
    for milestone, data in found.items():
        absolute = [abs(e) for e in data["errors"].values()]
        rows[milestone] = {
            "measured": len(absolute),
            "of": n,
            "error_max_s": round(max(absolute), 3) if absolute else None,
            "error_mean_s": round(mean(absolute), 3) if absolute else None,
            "within_bar": sum(data["bars"].values()),
            "sources": dict(sorted(data["sources"].items())),
        }
    return rows


def table(rows: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """The markdown table of :func:`summary`."""
    lines = [
        "| milestone | lab event (truth) | measured | source | error max abs (s) | error mean abs (s) "
        "| truth within the stated error bar |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for milestone, r in rows.items():
        sources = ", ".join(f"{s} ({c})" for s, c in r["sources"].items()) or "-"
        worst = "-" if r["error_max_s"] is None else f"{r['error_max_s']:.3f}"
        average = "-" if r["error_mean_s"] is None else f"{r['error_mean_s']:.3f}"
        event = MILESTONE_EVENTS[milestone]
        lines.append(
            f"| `{milestone}` | `{event}` | {r['measured']} / {r['of']} | {sources} | {worst} | {average} "
            f"| {r['within_bar']} / {r['measured']} |"
        )
    return lines
