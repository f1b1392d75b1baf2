"""The report of a crash-capture run, as plain data: a journal's checked values
(:mod:`chaosec2panic.journal`) -> the report model that :mod:`chaosec2panic.report_page` draws.

:func:`report_model` is pure. The page stays readable at hundreds of instances: fleet
aggregates and a histogram for all, the timeline for the slowest and for every instance not
back, every instance in one table.
"""

import math
from collections import Counter
from dataclasses import replace
from datetime import datetime
from typing import Any, Dict, Iterable, List, Mapping, Tuple

from .journal import (
    PROBES,
    SLO_SECONDS,
    Dump,
    Injection,
    Journal,
    ReportError,
    Timeline,
    describe,
    left_out,
    read_journal,
)
from .recovery import MILESTONES, fleet_summary, iso, parse_iso
from .recovery import Timeline as KeptTimeline

__all__ = [
    "SLOWEST",
    "BadOption",
    "NoRecoveryData",
    "domain_top",
    "milestone_order",
    "nice_step",
    "report_model",
]

SLOWEST = 25  # timeline rows for the slowest instances that are back
COMPLETE_DUMP_ROWS = 25  # complete dumps listed by name; those with a problem are always listed
HISTOGRAM_BINS = 24
SLO_ZOOM = 3.0  # an SLO beyond 3x the slowest recovery is marked off the axis, not squeezing it


class BadOption(ReportError):
    """An option of the report is out of its range."""

    exit_code = 2


class NoRecoveryData(ReportError):
    """The journal holds no recovery measurement to report."""


# journal's values -> report model ------------------------------------------------------------


def _no_recovery(journal: Journal) -> NoRecoveryData:
    if journal.failed is not None:
        last = journal.failed
        why = " ".join(f"{last.name} ({PROBES}.{last.func}) {last.status}: {last.exception}".split())
    else:
        why = (
            f"no output of {PROBES}.recovery_seconds with any instance in the journal "
            "(the experiment's method must run it after the NMI)"
        )
    also = f"; {left_out(journal.skipped)}" if journal.skipped else ""
    return NoRecoveryData(f"no recovery data: {why}{also}")


def _iso(moment: datetime | None) -> str | None:
    return iso(moment) if moment is not None else None


def _between(start: datetime, end: datetime) -> float:
    return round((end - start).total_seconds(), 3)


def _with_dump_evidence(instance_id: str, timeline: Timeline, dump: Dump | None) -> Timeline:
    """``timeline`` with what the dump dates (``crash_dumps`` runs after the recovery probe),
    chosen and checked as the probes do (``chaosec2panic.recovery.Timeline.refined``).
    A timeline of a journal older than the evidence gets the dump's file time as dump_written."""
    if dump is None:
        return timeline
    dated = {m for m, t in timeline.milestones.items() if t is not None}
    if not dump.evidence or not dated <= set(timeline.evidence):
        if timeline.milestones.get("dump_written") or dump.written_at is None:
            return timeline
        return replace(timeline, milestones={**timeline.milestones, "dump_written": dump.written_at})
    kept = KeptTimeline(
        instance_id,
        {m: _iso(t) for m, t in timeline.milestones.items()},
        timeline.evidence,
        timeline.missing,
        timeline.durations,
        _iso(timeline.recovered_at),
        timeline.conflicts,
    )
    new = kept.refined(dump.evidence)
    if new is kept:
        return timeline
    return replace(
        timeline,
        milestones={m: parse_iso(t) if t else None for m, t in new.milestones.items()},
        evidence=dict(new.evidence),
        missing=dict(new.missing),
        durations=dict(new.durations),
        conflicts=new.conflicts,
    )


def _evidence_row(origin: datetime | None, timeline: Timeline) -> Dict[str, Dict[str, Any]]:
    """Each dated milestone's evidence, its time as seconds after the NMI."""
    return {
        m: {
            "offset": _between(origin, parse_iso(e.at)) if origin else None,
            "source": e.source,
            "uncertainty_s": e.uncertainty_s,
            "upper_bound": e.upper_bound,
            "lower_bound": e.lower_bound,
        }
        for m, e in timeline.evidence.items()
    }


def _row(
    instance_id: str,
    seconds: Mapping[str, float | None],
    timelines: Mapping[str, Timeline],
    injection: Injection | None,
    dump: Dump | None,
    slo: float | None,
    last_look: datetime | None,
) -> Dict[str, Any]:
    timeline = timelines.get(instance_id)
    if timeline is not None:
        timeline = _with_dump_evidence(instance_id, timeline, dump)
    durations = dict(timeline.durations) if timeline else {}
    recovery_s = seconds.get(instance_id, durations.get("total_recovery"))
    milestones = dict(timeline.milestones) if timeline else {}
    origin = milestones.get("nmi_sent") or (injection.sent_at if injection else None)
    measured = instance_id in seconds or timeline is not None
    return {
        "instance_id": instance_id,
        "measured": measured,
        "batch": injection.batch if injection else None,
        "sent_at": _iso(origin),
        "outcome": injection.outcome if injection else None,
        "error": injection.error if injection else "",
        "recovery": recovery_s,
        "over_slo": None if slo is None or not measured else recovery_s is None or recovery_s > slo,
        "offsets": {m: _between(origin, t) if origin and t else None for m, t in milestones.items()}
        if timeline is not None
        else None,
        "evidence": _evidence_row(origin, timeline) if timeline is not None else {},
        "conflicts": list(timeline.conflicts) if timeline is not None else [],
        "missing": {m: timeline.missing.get(m, "not recorded") for m, t in milestones.items() if t is None}
        if timeline
        else {},
        "durations": durations,
        "observed": _between(origin, last_look)
        if measured and recovery_s is None and origin and last_look
        else None,
        "dump": None
        if dump is None
        else {
            **{k: v for k, v in vars(dump).items() if k != "evidence"},
            "problems": list(dump.problems),
            "crash_account": None
            if dump.crash_account is None
            else {**vars(dump.crash_account), "call_trace": list(dump.crash_account.call_trace)},
            "written_at": _iso(dump.written_at),
            "written_after": _between(origin, dump.written_at) if origin and dump.written_at else None,
        },
    }


def _sources(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per milestone, fleet-wide: how many instances each source dated, and the widest error bar."""
    found: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        for m, e in row["evidence"].items():
            entry = found.setdefault(
                m, {"sources": Counter(), "widest_s": 0.0, "upper_bounds": 0, "lower_bounds": 0}
            )
            entry["sources"][e["source"]] += 1
            entry["widest_s"] = max(entry["widest_s"], e["uncertainty_s"])
            entry["upper_bounds"] += e["upper_bound"]
            entry["lower_bounds"] += e["lower_bound"]
    return {
        m: {**found[m], "sources": dict(found[m]["sources"].most_common())}
        for m in sorted(found, key=milestone_order)
    }


def nice_step(span: float, target: int) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) cutting ``span`` in about ``target`` parts."""
    raw = max(span, 1e-9) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * 0.999)


def domain_top(values: Iterable[float], slo: float | None) -> float:
    """The largest value to show: the data, and the SLO unless it is far beyond the data."""
    top = max(values, default=0.0)
    if slo is not None and (top <= 0 or slo <= SLO_ZOOM * top):
        top = max(top, slo * 1.05)  # room right of the SLO line
    return top if top > 0 else 1.0


def _histogram(values: List[float], not_back: int, slo: float | None) -> Dict[str, Any]:
    width = nice_step(domain_top(values, slo), HISTOGRAM_BINS)
    count = max(1, math.ceil(domain_top(values, slo) / width - 1e-9))
    counts = [0] * count
    for v in values:
        counts[min(max(int(v // width), 0), count - 1)] += 1
    bins = [[round(i * width, 9), round((i + 1) * width, 9), c] for i, c in enumerate(counts)]
    return {"bins": bins, "not_back": not_back}


def _missing_everywhere(rows: List[Dict[str, Any]]) -> Dict[str, str]:
    """Milestones missing on every instance with a timeline, and why (one reason, or "reasons vary")."""
    lines = [r for r in rows if r["offsets"] is not None]
    if not lines:
        return {}
    names = set.intersection(*(set(r["missing"]) for r in lines))
    return {
        m: reasons.pop() if len(reasons := {r["missing"][m] for r in lines}) == 1 else "reasons vary"
        for m in sorted(names, key=milestone_order)
    }


def milestone_order(name: str) -> Tuple[int, str]:
    """Sort key: the crash chain's milestones in their order, then any other by name."""
    return (MILESTONES.index(name) if name in MILESTONES else len(MILESTONES), name)


def report_model(journal: Any, slo: float | None = None, slowest: int = SLOWEST) -> Dict[str, Any]:
    """What the report shows, as plain data, from a journal of ``chaos run`` (parsed; its values
    read by :func:`~chaosec2panic.journal.read_journal`).

    Per instance (``instances``, not back first, then slowest first): batch, NMI time, recovery
    seconds, milestone offsets in seconds from the NMI (``None`` without timelines), each
    milestone's evidence (offset, source, error bar; a dump's evidence chosen in as the probes
    choose), the contradictions found, missing milestones with the reason, the crash dump's
    verdict with what the instance's log said of the crash (``panic_message``, and
    ``crash_account``: the panic, task, RIP function and call trace, or None). Also per
    milestone the sources that dated it fleet-wide, the fleet aggregates, the histogram, the
    ids drawn in the timeline, the dumps table, the SLO with where it came
    from (``slo`` given here, else the experiment's ``recovered_within``, else the recovery
    output's ``slo_seconds``), and ``skipped``: each value of the journal left out, as not of
    the type the report needs. Raises :class:`BadJournal` for no journal, :class:`BadOption`
    for an ``slo`` that is no SLO, :class:`NoRecoveryData` when no recovery was measured.
    """
    if slo is not None and SLO_SECONDS.read(slo) is None:
        raise BadOption(f"the SLO must be {SLO_SECONDS.name}, not {describe(slo)}")
    data = read_journal(journal)
    if not data.recoveries:
        raise _no_recovery(data)
    seconds: Dict[str, float | None] = {}
    timelines: Dict[str, Timeline] = {}
    for recovery in data.recoveries:
        seconds.update(recovery.seconds)
        timelines.update(recovery.timelines)
    last = data.recoveries[-1]
    slo_sources = [
        (slo, "the command line"),
        (data.slo, "recovered_within in the experiment"),
        (last.slo, "slo_seconds in the recovery output"),
    ]
    slo, slo_source = next(((s, src) for s, src in slo_sources if s is not None), (None, None))
    injections, dumps = data.injections, data.dumps
    ids = sorted({*seconds, *timelines, *injections, *dumps})
    rows = [_row(i, seconds, timelines, injections.get(i), dumps.get(i), slo, last.end) for i in ids]
    rows.sort(
        key=lambda r: (not r["measured"], r["recovery"] is not None, -(r["recovery"] or 0), r["instance_id"])
    )
    measured = {r["instance_id"]: r["recovery"] for r in rows if r["measured"]}
    not_back = [r for r in rows if r["measured"] and r["recovery"] is None]
    back = [r for r in rows if r["measured"] and r["recovery"] is not None]
    shown = not_back + back[: max(0, slowest)]
    outcomes = [e.outcome for e in injections.values()]
    dump_rows = [r for r in rows if r["dump"] is not None]
    attention = [r for r in dump_rows if _dump_needs_attention(r["dump"])]
    fine = [r for r in dump_rows if not _dump_needs_attention(r["dump"])]
    verdicts = Counter(r["dump"]["verdict"] for r in dump_rows)
    extra = sorted({m for r in rows for m in (r["offsets"] or {}) if m not in MILESTONES})
    return {
        "title": data.title or "(untitled experiment)",
        "status": data.status,
        "deviated": data.deviated,
        "start": _iso(data.start),
        "end": _iso(data.end),
        "source": "timelines" if timelines else "seconds",
        "slo": slo,
        "slo_source": slo_source,
        "milestones": [*MILESTONES, *extra] if timelines else [],
        "missing_everywhere": _missing_everywhere(rows),
        "evidence_sources": _sources(rows),
        "conflicts": {r["instance_id"]: r["conflicts"] for r in rows if r["conflicts"]},
        "fleet": {
            **fleet_summary(measured, slo),
            "not_sent": len(outcomes) - outcomes.count("sent"),
            "halted": data.halted,
        },
        "histogram": _histogram([r["recovery"] for r in back], len(not_back), slo),
        "timeline": [r["instance_id"] for r in shown],
        "instances": rows,
        "dumps": {
            "verdicts": dict(verdicts),
            "rows": [r["instance_id"] for r in attention + fine[:COMPLETE_DUMP_ROWS]],
            "more": max(0, len(fine) - COMPLETE_DUMP_ROWS),
        },
        "skipped": list(data.skipped),
    }


def _dump_needs_attention(dump: Mapping[str, Any]) -> bool:
    return dump["verdict"] != "complete-dump" or dump["nmi_panic"] is not True or bool(dump["problems"])
