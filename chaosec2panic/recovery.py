"""Recovery, judged from observations: pure functions from what was seen to verdicts.

An instance is back when it runs a new kernel (a new boot id, or, when the boot id before
the NMI is unknown, a kernel booted after the NMI), its EC2 status checks are ok and its
SSM agent is online (and, when one is checked, its application is healthy).

A :class:`Track` collects what was seen of one hit instance; :func:`timeline` turns it into
milestones, each from the best :class:`Evidence` of it (its UTC time, the source that says so
and its error bar), and the durations derived from them. A milestone with no evidence stays
missing, with the reason, and is never estimated.
"""

import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, Dict, Iterable, List, Mapping, Tuple

__all__ = [
    "APP_NOT_FALLEN",
    "APP_NOT_PASSED",
    "MILESTONES",
    "ORDER",
    "SOURCES",
    "WHY_MISSING",
    "Boot",
    "Evidence",
    "Observation",
    "Timeline",
    "Track",
    "assemble",
    "at_epoch",
    "best",
    "first_seen",
    "fleet_summary",
    "guest_boot",
    "guest_seconds",
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
    "panic",
    "capture_started",
    "dump_written",
    "went_down",
    "kernel_back",
    "status_ok",
    "agent_online",
    "app_healthy",
)
# The crash and its capture in the order they must have happened: evidence that puts one before
# the other beyond both error bars is a conflict (clocks that disagree), said and never reordered.
ORDER = ("nmi_sent", "panic", "capture_started", "dump_written", "kernel_back", "agent_online")
# Where a milestone's time comes from, best first (a lower rank wins; then the narrower bar).
SOURCES = {
    "api-call": 0,
    "console-printk": 1,
    "dump-dmesg": 1,
    "vmcore": 2,
    "boot-time": 3,
    "agent-start": 4,
    "agent-answer": 5,
    "status-check": 6,
    "app-check": 6,
    "first-seen": 7,
}
CLOCK_RESOLUTION = 0.01  # /proc/uptime has hundredths of a second


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds and a Z."""
    return iso(datetime.now(UTC))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_iso(seconds: float) -> str:
    """An epoch time in seconds as :func:`iso` writes it."""
    return iso(datetime.fromtimestamp(seconds, UTC))


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


GUEST_SECONDS = re.compile(r"\d+(?:\.\d+)?(?=(?:\.%N)?$)")


def guest_seconds(text: str) -> float | None:
    """Seconds as a guest printed them ("12.34"; "1700000000.%N" from a ``date`` without %N,
    its whole seconds); None for anything else."""
    found = GUEST_SECONDS.match(text)
    return float(found[0]) if found else None


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
    "panic": "no panic after the NMI in the console or in a dump's log",
    "capture_started": "no capture kernel seen on the console",
    "dump_written": "no crash dump of this NMI seen written (crash_dumps finds it)",
    "went_down": "every status check looked at was ok",
    "kernel_back": "no answer yet from a kernel started after the NMI",
    "status_ok": "status checks not seen ok in the new boot",
    "agent_online": "the SSM agent has not answered in the new boot",
    "app_healthy": "no application check configured",
}
APP_NOT_PASSED = "the application check has not passed in the new boot"
APP_NOT_FALLEN = (
    "the load balancer has not reported the target unhealthy since the NMI, so its healthy may predate"
    " the crash"
)


@dataclass(frozen=True)
class Evidence:
    """When one milestone happened: ``at`` (UTC), the ``source`` that says so, and how far off it
    may be: ``uncertainty_s`` either side; for an ``upper_bound`` (a look that found it done), up
    to ``uncertainty_s`` before ``at`` (since the look before); for a ``lower_bound`` (a start it
    cannot have preceded), up to ``uncertainty_s`` after ``at`` (until it was proven done)."""

    at: str
    source: str
    uncertainty_s: float
    upper_bound: bool = False
    lower_bound: bool = False

    @property
    def earliest(self) -> float:
        return parse_iso(self.at).timestamp() - (0.0 if self.lower_bound else self.uncertainty_s)

    @property
    def latest(self) -> float:
        return parse_iso(self.at).timestamp() + (0.0 if self.upper_bound else self.uncertainty_s)

    @property
    def proven_at(self) -> str:
        """When it was known done: ``at``, or for a lower bound the end of its bar."""
        return epoch_iso(self.latest) if self.lower_bound else self.at

    def widened(self, seconds: float) -> "Evidence":
        return replace(self, uncertainty_s=round(self.uncertainty_s + seconds, 3))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "at": self.at,
            "source": self.source,
            "uncertainty_s": self.uncertainty_s,
            "upper_bound": self.upper_bound,
            "lower_bound": self.lower_bound,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Evidence":
        """Evidence as :meth:`to_dict` wrote it (without ``lower_bound`` before there were any)."""
        return cls(
            data["at"],
            data["source"],
            float(data["uncertainty_s"]),
            bool(data["upper_bound"]),
            bool(data.get("lower_bound", False)),
        )


def at_epoch(seconds: float, source: str, uncertainty: float) -> Evidence:
    """Evidence of a moment given in epoch seconds."""
    return Evidence(epoch_iso(seconds), source, round(uncertainty, 3))


def first_seen(at: str, since: str, source: str = "first-seen") -> Evidence:
    """A look at ``at`` found it done; the look before was at ``since``."""
    return Evidence(at, source, max(0.0, seconds_between(since, at)), upper_bound=True)


def best(candidates: Iterable[Evidence]) -> Evidence | None:
    """The best evidence of one milestone: the best source, then the narrowest bar."""
    return min(candidates, key=lambda e: (SOURCES[e.source], e.uncertainty_s), default=None)


@dataclass(frozen=True)
class Boot:
    """A guest's own answer on which boot it is in: the boot id, when that kernel started and
    when the answer was written (the agent ran the command), both in UTC on the caller's clock,
    how far the boot time may be off, why it was moved (the guest's clock disagreed), and when
    the agent that answered started in this boot (its systemd unit; "" where none says)."""

    boot_id: str
    booted_at: str
    answered_at: str
    uncertainty_s: float = CLOCK_RESOLUTION
    skew: str = ""
    agent_started_at: str = ""


def guest_boot(
    boot_id: str,
    uptime: float,
    guest_now: float,
    sent_at: str,
    read_at: str,
    agent_active_s: float | None = None,
    clock_synced: bool = False,
) -> Boot:
    """A :class:`Boot` from an identity answer, on the caller's clock.

    The command ran after it was sent (``sent_at``) and before its answer was read
    (``read_at``): a guest clock outside that window is moved into it, and the boot time with it;
    the boot time is then known only within the window widened by the skew (a clock that ran slow
    since the boot counted its uptime slow as well), and the skew is said. A clock the guest does
    not say is synchronised is no evidence within the window either: the boot was ``uptime``
    before some moment of it, and its answer was written by ``read_at``. ``agent_active_s``:
    seconds from the boot to the agent's unit becoming active (systemd's monotonic clock, which
    runs with the uptime but for time suspended), dated from the boot as the boot is.
    """
    ran = datetime.fromtimestamp(guest_now, UTC)
    start, end = parse_iso(sent_at), parse_iso(read_at)
    ran_on_our_clock = min(max(ran, start), end)
    booted = ran_on_our_clock - timedelta(seconds=uptime)
    shift = (ran - ran_on_our_clock).total_seconds()
    # /proc/uptime is cut to hundredths: a command taken as its agent starts may read less.
    active = agent_active_s is not None and 0 < agent_active_s <= uptime + CLOCK_RESOLUTION
    started = iso(booted + timedelta(seconds=agent_active_s)) if active and agent_active_s else ""
    answered = iso(ran_on_our_clock if clock_synced else end)
    skew = (
        f"the guest's clock was {abs(shift):.3f}s {'ahead of' if shift > 0 else 'behind'} the window"
        f" its answer came in ({iso(start)} to {iso(end)}): its times are moved into it"
        if shift
        else ""
    )
    if shift:
        window = (end - start).total_seconds() + abs(shift)
    elif not clock_synced:
        window = max(ran_on_our_clock - start, end - ran_on_our_clock).total_seconds()
    else:
        return Boot(boot_id, iso(booted), answered, agent_started_at=started)
    return Boot(boot_id, iso(booted), answered, round(window + CLOCK_RESOLUTION, 3), skew, started)


@dataclass(frozen=True)
class Track:
    """What was seen of one hit instance since its NMI (immutable; ``with_*`` add a sighting).

    ``booted_before`` is the crashed kernel's start (from the check before the NMI): it turns
    that kernel's printk times into UTC. ``found`` holds evidence read elsewhere: a console's,
    a dump's."""

    instance_id: str
    nmi_sent: str
    boot_id_before: str = ""
    booted_before: Boot | None = None
    nmi_answered: str = ""  # when the API answered: the NMI landed between the two
    statuses: Tuple[Tuple[str, bool], ...] = ()
    apps: Tuple[Tuple[str, bool], ...] = ()
    boot: Boot | None = None
    found: Tuple[Tuple[str, Evidence], ...] = ()
    app_checked: bool = False
    app_lags: bool = False  # the check counts only once it has failed since the NMI (a load balancer)

    def with_status(self, at: str, ok: bool) -> "Track":
        return replace(self, statuses=(*self.statuses, (at, ok)))

    def with_app(self, at: str, ok: bool) -> "Track":
        return replace(self, apps=(*self.apps, (at, ok)), app_checked=True)

    def with_boot(self, boot: Boot) -> "Track":
        """Keep the first answer from a kernel booted after the NMI, and date that boot by the
        answer of it with the narrowest error bar (its agent was online by the first)."""
        if not self.is_new(boot):
            return self
        if self.boot is None:
            return replace(self, boot=boot)
        if boot.boot_id != self.boot.boot_id or boot.uncertainty_s >= self.boot.uncertainty_s:
            return self
        return replace(self, boot=replace(boot, answered_at=min(boot.answered_at, self.boot.answered_at)))

    def with_evidence(self, found: Mapping[str, Evidence]) -> "Track":
        return replace(self, found=(*self.found, *found.items()))

    def is_new(self, boot: Boot) -> bool:
        """Whether ``boot`` is a kernel started after the NMI (a new boot id when the old one
        is known, else a boot time after the NMI)."""
        if self.boot_id_before:
            return bool(boot.boot_id) and boot.boot_id != self.boot_id_before
        return bool(boot.boot_id) and boot.booted_at > self.nmi_sent


@dataclass(frozen=True)
class Timeline:
    """The milestones of one instance (ISO times or None), the evidence of each (its source and
    error bar), why each missing one is missing, the durations in seconds derived from them,
    and what the evidence disagreed on."""

    instance_id: str
    milestones: Dict[str, str | None]
    evidence: Dict[str, Evidence]
    missing: Dict[str, str]
    durations: Dict[str, float | None]
    recovered_at: str | None
    conflicts: Tuple[str, ...] = ()

    @property
    def back(self) -> bool:
        return self.recovered_at is not None

    @property
    def recovery_seconds(self) -> float | None:
        return self.durations["total_recovery"]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "milestones": self.milestones,
            "evidence": {m: e.to_dict() for m, e in self.evidence.items()},
            "missing": self.missing,
            "durations": self.durations,
            "recovered_at": self.recovered_at,
            "conflicts": list(self.conflicts),
        }

    @classmethod
    def from_dict(cls, instance_id: str, data: Mapping[str, Any]) -> "Timeline":
        """A timeline as :meth:`to_dict` wrote it (kept in the ledger once an instance is back)."""
        return cls(
            instance_id,
            dict(data["milestones"]),
            {m: Evidence.from_dict(e) for m, e in data["evidence"].items()},
            dict(data["missing"]),
            dict(data["durations"]),
            data.get("recovered_at"),
            tuple(data.get("conflicts", ())),
        )

    def refined(self, found: Mapping[str, Evidence]) -> "Timeline":
        """This timeline with better evidence read since (a dump's log, its file time)."""
        chosen = {m: best([e, *([self.evidence[m]] if m in self.evidence else [])]) for m, e in found.items()}
        merged = {**self.evidence, **{m: e for m, e in chosen.items() if e is not None}}
        if merged == self.evidence:
            return self
        return assemble(self.instance_id, merged, self.missing, self.recovered_at, self.conflicts)


def _look_lag(sightings: Tuple[Tuple[str, bool], ...], index: int, since: str) -> str:
    """When the look before ``sightings[index]`` was made (``since`` if none was made after it)."""
    before = sightings[index - 1][0] if index else since
    return max(before, since)


def _settled(sightings: Tuple[Tuple[str, bool], ...], since: str, source: str) -> Evidence | None:
    """The first look at or after ``since`` from which every later look was good."""
    found = None
    for n, (at, ok) in enumerate(sightings):
        if at < since:
            continue
        if not ok:
            found = None
        elif found is None:
            found = first_seen(at, _look_lag(sightings, n, since), source)
    return found


def _fell(sightings: Tuple[Tuple[str, bool], ...], since: str, source: str) -> Evidence | None:
    """The first bad look at or after ``since``."""
    return next(
        (
            first_seen(at, _look_lag(sightings, n, since), source)
            for n, (at, ok) in enumerate(sightings)
            if not ok and at >= since
        ),
        None,
    )


def _app_healthy(track: Track, kernel_back: str | None) -> Evidence | None:
    if not (kernel_back and track.app_checked):
        return None
    if not track.app_lags:
        return _settled(track.apps, kernel_back, "app-check")
    fell = _fell(track.apps, track.nmi_sent, "app-check")
    return _settled(track.apps, max(kernel_back, fell.at), "app-check") if fell else None


def _why_no_app(track: Track) -> str:
    lagging = track.app_lags and not _fell(track.apps, track.nmi_sent, "app-check")
    return APP_NOT_FALLEN if lagging else APP_NOT_PASSED


def _agent_online(track: Track) -> List[Evidence]:
    """The new boot's agent answered at ``answered_at``: it came online after its kernel (and
    its own unit, where systemd says when) started and at the latest then. Not after the command
    was sent: an agent already online when it was sent answers at once (an instance back before
    the watch began). Its unit's start, less the boot time's error bar, is the earliest it can
    have been online."""
    boot = track.boot
    if boot is None:
        return []
    if not boot.agent_started_at:
        return [first_seen(boot.answered_at, boot.booted_at, "agent-answer")]
    earliest = iso(parse_iso(boot.agent_started_at) - timedelta(seconds=boot.uncertainty_s))
    return [
        first_seen(boot.answered_at, earliest, "agent-answer"),
        Evidence(earliest, "agent-start", seconds_between(earliest, boot.answered_at), lower_bound=True),
    ]


def _nmi(sent: str, answered: str) -> Evidence:
    """The NMI landed while its request was in flight: mid-way, ± half the round trip."""
    if not answered or answered < sent:
        return Evidence(sent, "api-call", 0.0)
    half = seconds_between(sent, answered) / 2
    return at_epoch(parse_iso(sent).timestamp() + half, "api-call", half)


def timeline(track: Track) -> Timeline:
    """Milestones from the best evidence seen (see :data:`SOURCES`), their order checked, and
    the durations (see :func:`assemble`)."""
    boot = track.boot
    kernel_back = Evidence(boot.booted_at, "boot-time", boot.uncertainty_s) if boot else None
    seen: Dict[str, List[Evidence]] = {m: [] for m in MILESTONES}
    seen["nmi_sent"].append(_nmi(track.nmi_sent, track.nmi_answered))
    for m, e in track.found:
        seen[m].append(e)
    derived = {
        "went_down": _fell(track.statuses, track.nmi_sent, "status-check"),
        "kernel_back": kernel_back,
        "status_ok": _settled(track.statuses, kernel_back.at, "status-check") if kernel_back else None,
        "app_healthy": _app_healthy(track, kernel_back.at if kernel_back else None),
    }
    for m, e in derived.items():
        if e is not None:
            seen[m].append(e)
    seen["agent_online"].extend(_agent_online(track))
    chosen = {m: e for m in MILESTONES if (e := best(seen[m])) is not None}
    why = {**WHY_MISSING, "app_healthy": _why_no_app(track)} if track.app_checked else WHY_MISSING
    needed = ["kernel_back", "status_ok", "agent_online"] + (["app_healthy"] if track.app_checked else [])
    # Healthy once all of it was known done: a lower bound counts only from its proof.
    healthy = max(chosen[m].proven_at for m in needed) if all(m in chosen for m in needed) else None
    skews = tuple(b.skew for b in (track.booted_before, boot) if b is not None and b.skew)
    return assemble(track.instance_id, chosen, why, healthy, skews)


def _in_order(chosen: Dict[str, Evidence]) -> Tuple[Dict[str, Evidence], Tuple[str, ...]]:
    """``chosen`` with each pair of :data:`ORDER` that the evidence puts the wrong way round
    beyond both error bars said, and the weaker evidence's bar widened to meet the other."""
    fixed = dict(chosen)
    conflicts = []
    present = [m for m in ORDER if m in fixed]
    for before, after in pairwise(present):
        gap = round(fixed[before].earliest - fixed[after].latest, 3)
        if gap <= 0:
            continue
        weaker = max((before, after), key=lambda m: (SOURCES[fixed[m].source], ORDER.index(m)))
        fixed[weaker] = fixed[weaker].widened(gap)
        conflicts.append(
            f"{after} ({fixed[after].source}) is {gap:.3f}s before {before} ({fixed[before].source})"
            f" beyond both error bars: clocks disagree; {weaker}'s error bar is widened to meet it"
        )
    return fixed, tuple(conflicts)


def _ms(text: str | None) -> int | None:
    return round(parse_iso(text).timestamp() * 1000) if text else None


def _span(start: str | None, end: str | None) -> float | None:
    a, b = _ms(start), _ms(end)
    return (b - a) / 1000 if a is not None and b is not None else None


def assemble(
    instance_id: str,
    chosen: Mapping[str, Evidence],
    why_missing: Mapping[str, str],
    healthy: str | None,
    conflicts: Tuple[str, ...] = (),
) -> Timeline:
    """A :class:`Timeline` from the chosen evidence of each milestone and the moment the
    instance was healthy (the last of what back needs). Durations, from the milestones' times:
    time to crash (NMI to panic), to capture (NMI to dump written), reboot after capture (dump
    written to the new kernel), to reboot (NMI to the new kernel), to healthy (new kernel to
    healthy) and total recovery (NMI to healthy); time to reboot and time to healthy add up to
    the total."""
    fixed, disorder = _in_order(dict(chosen))
    said = tuple(dict.fromkeys((*conflicts, *disorder)))
    milestones = {m: (fixed[m].at if m in fixed else None) for m in MILESTONES}
    at = milestones.get
    durations = {
        "time_to_crash": _span(at("nmi_sent"), at("panic")),
        "time_to_capture": _span(at("nmi_sent"), at("dump_written")),
        "reboot_after_capture": _span(at("dump_written"), at("kernel_back")),
        "time_to_reboot": _span(at("nmi_sent"), at("kernel_back")),
        "time_to_healthy": _span(at("kernel_back"), healthy),
        "total_recovery": _span(at("nmi_sent"), healthy),
    }
    missing = {m: why_missing[m] for m in MILESTONES if milestones[m] is None}
    evidence = {m: fixed[m] for m in MILESTONES if m in fixed}
    return Timeline(instance_id, milestones, evidence, missing, durations, healthy, said)
