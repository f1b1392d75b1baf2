"""Recovery, judged from observations: pure functions from what was seen to verdicts.

An instance is back when it runs a new kernel (a new boot id, or, when the boot id before
the NMI is unknown, a kernel booted after the NMI), its EC2 status checks are ok and its
SSM agent is online (and, when one is checked, its application is healthy).

A :class:`Track` collects what was seen of one hit instance; :func:`timeline` turns it into
milestones with UTC times and the durations derived from them. A milestone that was not seen
stays missing, with the reason, and is never estimated.
"""

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Dict, Mapping, Tuple

__all__ = [
    "APP_NOT_FALLEN",
    "APP_NOT_PASSED",
    "MILESTONES",
    "WHY_MISSING",
    "Boot",
    "Observation",
    "Timeline",
    "Track",
    "fleet_summary",
    "guest_boot",
    "is_back",
    "is_up",
    "iso",
    "now_iso",
    "parse_iso",
    "seconds_between",
    "timeline",
]

MILESTONES = (
    "nmi_sent",
    "panic_seen",
    "went_down",
    "kernel_back",
    "status_ok",
    "agent_online",
    "app_healthy",
    "dump_found",
)


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


# Why a milestone is missing from a timeline (app_healthy: when no check is configured).
WHY_MISSING = {
    "panic_seen": "no panic after the NMI on the console",
    "went_down": "every status check looked at was ok",
    "kernel_back": "no answer yet from a kernel started after the NMI",
    "status_ok": "status checks not seen ok in the new boot",
    "agent_online": "the SSM agent has not answered in the new boot",
    "app_healthy": "no application check configured",
    "dump_found": "no crash dump looked for or found",
}
APP_NOT_PASSED = "the application check has not passed in the new boot"
APP_NOT_FALLEN = (
    "the load balancer has not reported the target unhealthy since the NMI, so its healthy may predate"
    " the crash"
)


@dataclass(frozen=True)
class Boot:
    """A guest's own answer on which boot it is in: the boot id, when that kernel started and
    when the answer was written (the agent ran the command), both in UTC."""

    boot_id: str
    booted_at: str
    answered_at: str


def guest_boot(boot_id: str, uptime: float, guest_now: float, sent_at: str, read_at: str) -> Boot:
    """A :class:`Boot` from an identity answer, on the caller's clock.

    The command ran after it was sent (``sent_at``) and before its answer was read
    (``read_at``): a guest clock outside that window is moved into it, and the boot time with it.
    """
    ran = datetime.fromtimestamp(guest_now, UTC)
    ran_on_our_clock = min(max(ran, parse_iso(sent_at)), parse_iso(read_at))
    booted = ran_on_our_clock - timedelta(seconds=uptime)
    return Boot(boot_id, iso(booted), iso(ran_on_our_clock))


@dataclass(frozen=True)
class Track:
    """What was seen of one hit instance since its NMI (immutable; ``with_*`` add a sighting)."""

    instance_id: str
    nmi_sent: str
    boot_id_before: str = ""
    statuses: Tuple[Tuple[str, bool], ...] = ()
    apps: Tuple[Tuple[str, bool], ...] = ()
    boot: Boot | None = None
    panic_seen: str = ""
    dump_found: str = ""
    app_checked: bool = False
    app_lags: bool = False  # the check counts only once it has failed since the NMI (a load balancer)

    def with_status(self, at: str, ok: bool) -> "Track":
        return replace(self, statuses=(*self.statuses, (at, ok)))

    def with_app(self, at: str, ok: bool) -> "Track":
        return replace(self, apps=(*self.apps, (at, ok)), app_checked=True)

    def with_boot(self, boot: Boot) -> "Track":
        """Keep the first answer from a kernel booted after the NMI; others change nothing."""
        return self if self.boot is not None or not self.is_new(boot) else replace(self, boot=boot)

    def is_new(self, boot: Boot) -> bool:
        """Whether ``boot`` is a kernel started after the NMI (a new boot id when the old one
        is known, else a boot time after the NMI)."""
        if self.boot_id_before:
            return bool(boot.boot_id) and boot.boot_id != self.boot_id_before
        return bool(boot.boot_id) and boot.booted_at > self.nmi_sent


@dataclass(frozen=True)
class Timeline:
    """The milestones of one instance (ISO times or None), why each missing one is missing, and
    the durations in seconds derived from them."""

    instance_id: str
    milestones: Dict[str, str | None]
    missing: Dict[str, str]
    durations: Dict[str, float | None]
    recovered_at: str | None

    @property
    def back(self) -> bool:
        return self.recovered_at is not None

    @property
    def recovery_seconds(self) -> float | None:
        return self.durations["total_recovery"]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "milestones": self.milestones,
            "missing": self.missing,
            "durations": self.durations,
            "recovered_at": self.recovered_at,
        }

    @classmethod
    def from_dict(cls, instance_id: str, data: Mapping[str, Any]) -> "Timeline":
        """A timeline as :meth:`to_dict` wrote it (kept in the ledger once an instance is back)."""
        return cls(
            instance_id,
            dict(data["milestones"]),
            dict(data["missing"]),
            dict(data["durations"]),
            data.get("recovered_at"),
        )

    def with_dump_found(self, at: str) -> "Timeline":
        """This timeline with the time the crash dump was found written (crash_dumps tells)."""
        if not at or self.milestones.get("dump_found"):
            return self
        missing = {k: v for k, v in self.missing.items() if k != "dump_found"}
        return replace(self, milestones={**self.milestones, "dump_found": at}, missing=missing)


def _settled(sightings: Tuple[Tuple[str, bool], ...], since: str) -> str | None:
    """The first look at or after ``since`` from which every later look was good."""
    found = None
    for at, ok in sightings:
        if at < since:
            continue
        if not ok:
            found = None
        elif found is None:
            found = at
    return found


def _span(start: str | None, end: str | None) -> float | None:
    return seconds_between(start, end) if start and end else None


def _app_fell(track: Track) -> str | None:
    """When the application check first failed after the NMI."""
    return next((at for at, ok in track.apps if not ok and at >= track.nmi_sent), None)


def _app_healthy(track: Track, kernel_back: str | None) -> str | None:
    if not (kernel_back and track.app_checked):
        return None
    if not track.app_lags:
        return _settled(track.apps, kernel_back)
    fell = _app_fell(track)
    return _settled(track.apps, max(kernel_back, fell)) if fell else None


def _why_no_app(track: Track) -> str:
    return APP_NOT_FALLEN if track.app_lags and not _app_fell(track) else APP_NOT_PASSED


def timeline(track: Track) -> Timeline:
    """Milestones and durations of ``track``: time to crash (NMI to panic seen), to reboot
    (NMI to the new kernel starting), to healthy (new kernel to the last of status ok, agent
    online and app healthy) and total recovery (NMI to healthy)."""
    boot = track.boot
    kernel_back = boot.booted_at if boot else None
    down = next((at for at, ok in track.statuses if not ok and at >= track.nmi_sent), None)
    seen: Dict[str, str | None] = {
        "nmi_sent": track.nmi_sent,
        "panic_seen": track.panic_seen or None,
        "went_down": down,
        "kernel_back": kernel_back,
        "status_ok": _settled(track.statuses, kernel_back) if kernel_back else None,
        "agent_online": boot.answered_at if boot else None,
        "app_healthy": _app_healthy(track, kernel_back),
        "dump_found": track.dump_found or None,
    }
    why = {**WHY_MISSING, "app_healthy": _why_no_app(track)} if track.app_checked else WHY_MISSING
    missing = {m: why[m] for m in MILESTONES if seen[m] is None}
    needed = ["kernel_back", "status_ok", "agent_online"] + (["app_healthy"] if track.app_checked else [])
    healthy = max(str(seen[m]) for m in needed) if all(seen[m] for m in needed) else None
    durations = {
        "time_to_crash": _span(track.nmi_sent, seen["panic_seen"]),
        "time_to_reboot": _span(track.nmi_sent, kernel_back),
        "time_to_healthy": _span(kernel_back, healthy),
        "total_recovery": _span(track.nmi_sent, healthy),
    }
    return Timeline(track.instance_id, seen, missing, durations, healthy)
