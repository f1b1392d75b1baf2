"""Recovery, judged from observations: pure functions from what was seen to verdicts.

An instance is back when it runs a new kernel (a new boot id, or, when the boot id before
the NMI is unknown, a kernel booted after the NMI), its EC2 status checks are ok and its
SSM agent is online.
"""

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Dict, Mapping

__all__ = [
    "Observation",
    "fleet_summary",
    "is_back",
    "is_up",
    "iso",
    "now_iso",
    "parse_iso",
    "seconds_between",
]


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds and a Z."""
    return iso(datetime.now(UTC))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def seconds_between(start: str, end: str) -> float:
    return round((parse_iso(end) - parse_iso(start)).total_seconds(), 3)


@dataclass(frozen=True)
class Observation:
    """One look at an instance: status checks, agent, and (when reachable) its boot."""

    at: str
    status_ok: bool
    agent_online: bool
    boot_id: str = ""
    uptime: float | None = None
    detail: str = ""


def is_up(seen: Observation) -> bool:
    """Whether the instance serves now: status checks ok, agent online, and its kernel answered."""
    return seen.status_ok and seen.agent_online and bool(seen.boot_id)


def is_back(seen: Observation, sent_at: str, boot_id_before: str) -> bool:
    """Whether ``seen`` shows the instance back, in a new boot, after an NMI sent at ``sent_at``.

    An instance that is up in the same boot survived the NMI (no panic): it is up, not back.
    """
    if not is_up(seen):
        return False
    if boot_id_before:
        return seen.boot_id != boot_id_before
    return seen.uptime is not None and seen.uptime < seconds_between(sent_at, seen.at)


def fleet_summary(seconds: Mapping[str, float | None], slo: float | None = None) -> Dict[str, Any]:
    """Max, p50, p95 and counts over per-instance recovery seconds (None: not back)."""
    back = sorted(s for s in seconds.values() if s is not None)

    def pct(q: float) -> float | None:
        if not back:
            return None
        return back[max(0, math.ceil(q * len(back)) - 1)]

    summary: Dict[str, Any] = {
        "count": len(seconds),
        "recovered": len(back),
        "pending": sorted(i for i, s in seconds.items() if s is None),
        "max": back[-1] if back else None,
        "p50": pct(0.5),
        "p95": pct(0.95),
    }
    if slo is not None:
        summary["slo_seconds"] = slo
        summary["over_slo"] = len(seconds) - sum(1 for s in back if s <= slo)
    return summary
