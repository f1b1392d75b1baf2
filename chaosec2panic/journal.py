"""Reading a Chaos Toolkit journal for the report: the file, checked to be a journal
(:func:`load_journal`), then each value the report uses, checked against the type it needs
(:func:`read_journal`). One of another type is left out and named by its place in the journal
(:func:`left_out` says it in one line), never a traceback.

The typed records (:class:`Journal` and what it holds) are all that :mod:`chaosec2panic.report`
reads. :class:`ReportError`, the base of the report's errors, is here, where the report begins.
"""

import json
import math
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

from .errors import Ec2PanicError
from .recovery import SOURCES, Evidence, iso, parse_iso

__all__ = [
    "MAX_JOURNAL_BYTES",
    "PROBES",
    "SLO_SECONDS",
    "BadJournal",
    "CrashAccount",
    "Dump",
    "Injection",
    "Journal",
    "Kind",
    "Recovery",
    "ReportError",
    "Result",
    "Timeline",
    "count_of",
    "describe",
    "experiment_slo",
    "left_out",
    "load_journal",
    "read_journal",
]

PROBES = "chaosec2panic.probes"
ACTIONS = "chaosec2panic.actions"
RECOVERY_FUNCS = ("recovery_seconds", "recovery_timeline")
MAX_JOURNAL_BYTES = 256 * 1024 * 1024  # a journal of thousands of instances is a few MB
MAX_SECONDS = 1e9  # about 32 years: a duration beyond it is not a measurement
MAX_COUNT = 2**63
SKIPPED_SHOWN = 3  # values left out, quoted in a one-line message
ACCOUNT_FRAMES = 12  # call-trace frames kept of a crash account: the probe sends up to 12
ACCOUNT_CHARS = 300  # a crash account's text is cut to this: a kernel log line is shorter
JOURNAL_HINT = "pass the journal.json `chaos run` writes"
_ABSENT = object()


class ReportError(Ec2PanicError):
    """The report cannot be made; ``exit_code`` is what the command exits with."""

    exit_code = 1


class BadJournal(ReportError):
    """The input is not a readable Chaos Toolkit journal."""

    exit_code = 2


@dataclass(frozen=True)
class Kind:
    """A type the report needs a journal value to have: ``read`` returns it, or None if it is not."""

    name: str
    read: Callable[[Any], Any]


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")  # a lone surrogate (JSON's "\ud800") cannot be written to the page
    except UnicodeEncodeError:
        return None
    return value


def _line(value: Any) -> str | None:
    """A string of the instance's log, cut to ACCOUNT_CHARS characters."""
    text = _text(value)
    if text is None or len(text) <= ACCOUNT_CHARS:
        return text
    return text[: ACCOUNT_CHARS - 1] + "…"


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if -MAX_SECONDS <= value <= MAX_SECONDS else None  # NaN compares false


def _slo_seconds(value: Any) -> float | None:
    seconds = _seconds(value)
    return seconds if seconds is not None and seconds > 0 else None


def _count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT
    return value if ok else None


def _time(value: Any) -> datetime | None:
    """An ISO 8601 time, in UTC; one without a zone is UTC (as ``chaos run`` writes them)."""
    text = _text(value)
    if text is None:
        return None
    try:
        moment = parse_iso(text)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):  # not ISO 8601; or in year 1 or 9999 with an offset
        return None


def _evidence(value: Any) -> Evidence | None:
    """A milestone's evidence as the probes write it: a time, a known source, an error bar."""
    if not isinstance(value, dict):
        return None
    at, bar, bound = _time(value.get("at")), _seconds(value.get("uncertainty_s")), value.get("upper_bound")
    after = value.get("lower_bound", False)  # journals before lower bounds have none
    source = _text(value.get("source"))
    bounds_ok = isinstance(bound, bool) and isinstance(after, bool) and not (bound and after)
    if at is None or bar is None or bar < 0 or source not in SOURCES or not bounds_ok:
        return None
    return Evidence(iso(at), source, bar, bound, after)


OBJECT = Kind("an object", lambda v: v if isinstance(v, dict) else None)
LIST = Kind("a list", lambda v: v if isinstance(v, list) else None)
TEXT = Kind("a string", _text)
LINE = Kind("a string", _line)
FLAG = Kind("true or false", lambda v: v if isinstance(v, bool) else None)
SECONDS = Kind(f"a number of seconds within ±{MAX_SECONDS:g}", _seconds)
SLO_SECONDS = Kind(f"a positive number of seconds up to {MAX_SECONDS:g}", _slo_seconds)
COUNT = Kind("a whole number, 0 or more", _count)
TIME = Kind("an ISO 8601 time", _time)
EVIDENCE = Kind(
    "evidence: {at: an ISO 8601 time, source: one of " + ", ".join(SOURCES) + ", uncertainty_s: seconds "
    "0 or more, upper_bound: true or false, lower_bound (optional): true or false, not both}",
    _evidence,
)


def describe(value: Any) -> str:
    """What a value is, on one line and short enough for a message (the "found" of a value left out,
    or of an option out of its range)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, dict):
        return f"an object of {count_of(len(value), 'key')}"
    if isinstance(value, list):
        return f"a list of {count_of(len(value), 'item')}"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        digits = int(value.bit_length() * math.log10(2)) + 1
        return str(value) if value.bit_length() <= 128 else f"a number of about {digits} digits"
    return repr(_short(str(value)))


def _short(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters, a lone surrogate written as its escape."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _key(name: str) -> str:
    """A name from the journal (an instance id, a milestone) as a step of a path in a message."""
    return name if name.isprintable() and len(name) <= 60 else repr(_short(name, 60))


def count_of(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: "1 value", "3 values"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class _Reader:
    """Reads journal values as the types the report needs. A value of another type is left out,
    and named in ``skipped`` (where in the journal, what was expected, what was found)."""

    def __init__(self) -> None:
        self.skipped: List[str] = []

    def skip(self, where: str, expected: str, found: str) -> None:
        self.skipped.append(f"{where}: {expected} expected, found {found}")

    def check(self, value: Any, where: str, kind: Kind, null: bool = False, required: bool = False) -> Any:
        """``value`` as ``kind``, or None (absent, null where ``null`` allows it, or named here)."""
        if value is _ABSENT:
            if required:
                self.skip(where, kind.name, "nothing")
            return None
        if value is None:
            if not null:
                self.skip(where, kind.name, "null")
            return None
        read = kind.read(value)
        if read is None:
            self.skip(where, kind.name, describe(value))
        return read

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        where: str,
        kind: Kind,
        null: bool = False,
        required: bool = False,
    ) -> Any:
        """``data[key]`` as ``kind`` (see :meth:`check`)."""
        return self.check(data.get(key, _ABSENT), f"{where}.{key}" if where else key, kind, null, required)

    def entries(
        self, data: Mapping[str, Any] | None, where: str, kind: Kind, null: bool = False
    ) -> Dict[str, Any]:
        """The entries of an object keyed by name (instance ids, milestones) whose value is ``kind``."""
        entries: Dict[str, Any] = {}
        for key, value in (data or {}).items():
            name = _text(key)
            if name is None:
                self.skip(f"{where}.{describe(key)}", "a name in UTF-8", "a lone surrogate")
                continue
            read = self.check(value, f"{where}.{_key(name)}", kind, null)
            if read is not None or (value is None and null):
                entries[name] = read
        return entries

    def items(self, data: Sequence[Any] | None, where: str, kind: Kind) -> List[Any]:
        """The items of a list that are ``kind``."""
        read = (self.check(v, f"{where}[{n}]", kind) for n, v in enumerate(data or []))
        return [v for v in read if v is not None]


@dataclass(frozen=True)
class Result:
    """One result of this extension's activities that the report reads."""

    where: str
    func: str
    name: str
    status: str
    output: Dict[str, Any] | None  # as journaled; read by the reader of ``func``
    end: datetime | None
    exception: str


@dataclass(frozen=True)
class Timeline:
    """One instance's timeline: each milestone's time, the evidence that dates it (journals
    older than the evidence have none), why the others are missing, the durations, when the
    instance was healthy, and the contradictions its evidence showed."""

    milestones: Dict[str, datetime | None]
    evidence: Dict[str, Evidence]
    missing: Dict[str, str]
    durations: Dict[str, float | None]
    recovered_at: datetime | None
    conflicts: Tuple[str, ...]


@dataclass(frozen=True)
class Recovery:
    """One output of a recovery probe that measured something."""

    seconds: Dict[str, float | None]
    timelines: Dict[str, Timeline]
    slo: float | None
    end: datetime | None  # when the probe ended: the last look at the instances not back


@dataclass(frozen=True)
class Injection:
    instance_id: str
    batch: int | None
    sent_at: datetime | None
    outcome: str | None
    error: str


@dataclass(frozen=True)
class CrashAccount:
    """What the crashed kernel's own log said of the crash, as ``crash_dumps`` read it on the
    instance (``source``: the dmesg file beside the dump, or the log read out of the dump;
    ``file``: which): the panic, the crashing task, the RIP's function and the top of the call
    trace (frames as printed, at most ACCOUNT_FRAMES; every text at most ACCOUNT_CHARS)."""

    source: str | None
    file: str | None
    panic_message: str | None
    nmi_panic: bool | None
    cpu: int | None
    pid: int | None
    comm: str | None
    rip_function: str | None
    call_trace: Tuple[str, ...]


@dataclass(frozen=True)
class Dump:
    verdict: str
    nmi_panic: bool | None
    panic_message: str | None  # None: none read ("" or absent in the journal)
    path: str | None
    size: int | None
    format: str | None
    kernel_release: str | None
    written_at: datetime | None
    problems: Tuple[str, ...]
    evidence: Dict[str, Evidence]  # what the dump dates: the panic (its log), the dump written
    crash_account: CrashAccount | None  # None in journals older than the account


@dataclass(frozen=True)
class Journal:
    """What the report reads of a journal, every value of the type it needs; what did not fit
    is named in ``skipped``."""

    title: str | None
    status: str | None
    deviated: bool | None
    start: datetime | None
    end: datetime | None
    slo: float | None  # the experiment's recovered_within
    recoveries: List[Recovery]
    failed: Result | None  # the last recovery probe that did not succeed
    injections: Dict[str, Injection]
    halted: str | None
    dumps: Dict[str, Dump]
    skipped: List[str]


READ_ACTIVITIES = {*((PROBES, f) for f in RECOVERY_FUNCS), (ACTIONS, "send_nmi"), (PROBES, "crash_dumps")}


def _provider(read: _Reader, activity: Mapping[str, Any], where: str) -> Tuple[str | None, str | None]:
    at = f"{where}.provider"
    provider = read.get(activity, "provider", where, OBJECT) or {}
    return read.get(provider, "module", at, TEXT), read.get(provider, "func", at, TEXT)


def _result(read: _Reader, value: Any, where: str) -> Result | None:
    """The result at ``where`` if it is one of this extension's that the report reads."""
    item = read.check(value, where, OBJECT)
    activity = read.get(item, "activity", where, OBJECT, required=True) if item is not None else None
    if activity is None:
        return None
    module, func = _provider(read, activity, f"{where}.activity")
    if (module, func) not in READ_ACTIVITIES:
        return None
    status = read.get(item, "status", where, TEXT, required=True)
    if status is None:
        return None
    succeeded = status == "succeeded"
    exception = read.get(item, "exception", where, LIST) or []
    last = read.check(exception[-1], f"{where}.exception[{len(exception) - 1}]", TEXT) if exception else None
    return Result(
        where=where,
        func=func or "",
        name=read.get(activity, "name", f"{where}.activity", TEXT) or "(unnamed)",
        status=status,
        output=read.get(item, "output", where, OBJECT, required=succeeded) if succeeded else None,
        end=read.get(item, "end", where, TIME),
        exception=(last or "no exception recorded").strip(),
    )


def _timeline(read: _Reader, value: Mapping[str, Any], where: str) -> Timeline:
    return Timeline(
        milestones=read.entries(
            read.get(value, "milestones", where, OBJECT), f"{where}.milestones", TIME, True
        ),
        evidence=read.entries(read.get(value, "evidence", where, OBJECT), f"{where}.evidence", EVIDENCE),
        missing=read.entries(read.get(value, "missing", where, OBJECT), f"{where}.missing", TEXT),
        durations=read.entries(
            read.get(value, "durations", where, OBJECT), f"{where}.durations", SECONDS, True
        ),
        recovered_at=read.get(value, "recovered_at", where, TIME, null=True),
        conflicts=tuple(read.items(read.get(value, "conflicts", where, LIST), f"{where}.conflicts", TEXT)),
    )


def _recovery(read: _Reader, result: Result) -> Recovery:
    output, where = result.output or {}, f"{result.where}.output"
    lines = read.entries(read.get(output, "timelines", where, OBJECT), f"{where}.timelines", OBJECT)
    return Recovery(
        seconds=read.entries(
            read.get(output, "instances", where, OBJECT), f"{where}.instances", SECONDS, True
        ),
        timelines={i: _timeline(read, t, f"{where}.timelines.{_key(i)}") for i, t in lines.items()},
        slo=read.get(output, "slo_seconds", where, SLO_SECONDS, null=True),
        end=result.end,
    )


def _injections(read: _Reader, result: Result) -> List[Injection]:
    output, where = result.output or {}, f"{result.where}.output"
    found = []
    for n, value in enumerate(read.get(output, "injections", where, LIST) or []):
        at = f"{where}.injections[{n}]"
        entry = read.check(value, at, OBJECT)
        instance_id = read.get(entry, "instance_id", at, TEXT, required=True) if entry is not None else None
        if entry is None or not instance_id:
            continue
        never_sent = entry.get("sent_at") == ""  # an instance the rollout skipped
        found.append(
            Injection(
                instance_id=instance_id,
                batch=read.get(entry, "batch", at, COUNT, null=True),
                sent_at=None if never_sent else read.get(entry, "sent_at", at, TIME, null=True),
                outcome=read.get(entry, "outcome", at, TEXT, null=True),
                error=read.get(entry, "error", at, TEXT, null=True) or "",
            )
        )
    return found


def _crash_account(read: _Reader, dump: Mapping[str, Any], where: str) -> CrashAccount | None:
    account = read.get(dump, "crash_account", where, OBJECT, null=True)
    if account is None:
        return None
    at = f"{where}.crash_account"
    frames = read.get(account, "call_trace", at, LIST, null=True) or []
    return CrashAccount(
        source=read.get(account, "source", at, LINE, null=True),
        file=read.get(account, "file", at, LINE, null=True),
        panic_message=read.get(account, "panic_message", at, LINE, null=True),
        nmi_panic=read.get(account, "nmi_panic", at, FLAG, null=True),
        cpu=read.get(account, "cpu", at, COUNT, null=True),
        pid=read.get(account, "pid", at, COUNT, null=True),
        comm=read.get(account, "comm", at, LINE, null=True),
        rip_function=read.get(account, "rip_function", at, LINE, null=True),
        call_trace=tuple(read.items(frames[:ACCOUNT_FRAMES], f"{at}.call_trace", LINE)),
    )


def _dumps(read: _Reader, result: Result) -> Dict[str, Dump]:
    where = f"{result.where}.output.instances"
    entries = read.entries(
        read.get(result.output or {}, "instances", f"{result.where}.output", OBJECT), where, OBJECT
    )
    dumps = {}
    for i, d in entries.items():
        at = f"{where}.{_key(i)}"
        dumps[i] = Dump(
            verdict=read.get(d, "verdict", at, TEXT) or "unknown",
            nmi_panic=read.get(d, "nmi_panic", at, FLAG, null=True),
            panic_message=read.get(d, "panic_message", at, LINE, null=True) or None,
            path=read.get(d, "path", at, TEXT, null=True),
            size=read.get(d, "size", at, COUNT, null=True),
            format=read.get(d, "format", at, TEXT, null=True),
            kernel_release=read.get(d, "kernel_release", at, TEXT, null=True),
            written_at=read.get(d, "written_at", at, TIME, null=True),
            problems=tuple(read.items(read.get(d, "problems", at, LIST, null=True), f"{at}.problems", TEXT)),
            evidence=read.entries(read.get(d, "evidence", at, OBJECT), f"{at}.evidence", EVIDENCE),
            crash_account=_crash_account(read, d, at),
        )
    return dumps


def _experiment_slo(read: _Reader, experiment: Mapping[str, Any], where: str) -> float | None:
    hypothesis = read.get(experiment, "steady-state-hypothesis", where, OBJECT, null=True) or {}
    lists = [
        (
            f"{where}.steady-state-hypothesis.probes",
            read.get(hypothesis, "probes", f"{where}.steady-state-hypothesis", LIST),
        ),
        (f"{where}.method", read.get(experiment, "method", where, LIST)),
    ]
    for at, activities in lists:
        for n, item in enumerate(activities or []):
            here = f"{at}[{n}]"
            activity = read.check(item, here, OBJECT)
            if activity is None or _provider(read, activity, here) != (PROBES, "recovered_within"):
                continue
            arguments = read.get(activity["provider"], "arguments", f"{here}.provider", OBJECT) or {}
            seconds = arguments.get("seconds", _ABSENT)
            if isinstance(seconds, str) and seconds.startswith("${"):
                continue  # a configuration reference, resolved only when the run started
            slo = read.check(seconds, f"{here}.provider.arguments.seconds", SLO_SECONDS)
            if slo is not None:
                return slo
    return None


def experiment_slo(experiment: Any) -> float | None:
    """``seconds`` of the experiment's ``recovered_within`` (a number, not a ``${...}`` reference)."""
    return _experiment_slo(_Reader(), experiment, "experiment") if isinstance(experiment, dict) else None


def read_journal(data: Any, source: str = "the journal") -> Journal:
    """What the report reads of ``data`` (a parsed journal), checked value by value: one of
    another type is left out and named in ``skipped``. Raises :class:`BadJournal` only when
    ``data`` is no journal at all (not an object, no ``run`` list)."""
    if not isinstance(data, dict) or not isinstance(data.get("run"), list):
        raise BadJournal(f"{source} is not a Chaos Toolkit journal (no 'run' list): {JOURNAL_HINT}")
    read = _Reader()
    states = read.get(data, "steady_states", "", OBJECT, null=True) or {}

    def probes(phase: str) -> Tuple[str, List[Any] | None]:
        state = read.get(states, phase, "steady_states", OBJECT, null=True) or {}
        return f"steady_states.{phase}.probes", read.get(
            state, "probes", f"steady_states.{phase}", LIST, null=True
        )

    phases = [probes("before"), ("run", data["run"]), probes("after")]  # in the order they ran
    results = [
        r
        for at, items in phases
        for n, value in enumerate(items or [])
        if (r := _result(read, value, f"{at}[{n}]"))
    ]
    recoveries: List[Recovery] = []
    failed: Result | None = None
    injections: Dict[str, Injection] = {}
    halted: str | None = None
    dumps: Dict[str, Dump] = {}
    for r in results:
        if r.func in RECOVERY_FUNCS and r.status != "succeeded":
            failed = r
        elif r.func in RECOVERY_FUNCS and r.output is not None:
            recovery = _recovery(read, r)
            if recovery.seconds or recovery.timelines:
                recoveries.append(recovery)
        elif r.func == "send_nmi" and r.output is not None:
            injections.update({e.instance_id: e for e in _injections(read, r)})
            halt = read.get(r.output, "halted", f"{r.where}.output", TEXT, null=True)
            halted = halted or halt or None
        elif r.func == "crash_dumps" and r.output is not None:
            dumps.update(_dumps(read, r))
    experiment = read.get(data, "experiment", "", OBJECT) or {}
    return Journal(
        title=read.get(experiment, "title", "experiment", TEXT),
        status=read.get(data, "status", "", TEXT),
        deviated=read.get(data, "deviated", "", FLAG),
        start=read.get(data, "start", "", TIME),
        end=read.get(data, "end", "", TIME),
        slo=_experiment_slo(read, experiment, "experiment"),
        recoveries=recoveries,
        failed=failed,
        injections=injections,
        halted=halted,
        dumps=dumps,
        skipped=read.skipped,
    )


def load_journal(path: Path) -> Dict[str, Any]:
    """The parsed journal at ``path``, checked to be one (:class:`BadJournal` says why not).

    A regular file of at most MAX_JOURNAL_BYTES, UTF-8 JSON, an object with a ``run`` list."""
    try:
        info = path.stat()
    except OSError as exc:
        raise BadJournal(f"cannot read the journal {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):  # a FIFO would wait for a writer, a device never end
        raise BadJournal(f"{path} is not a regular file: {JOURNAL_HINT}")
    if info.st_size > MAX_JOURNAL_BYTES:
        raise BadJournal(
            f"{path} is {info.st_size} bytes, more than any journal ({MAX_JOURNAL_BYTES}): {JOURNAL_HINT}"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadJournal(f"cannot read the journal {path}: {exc.strerror or exc}") from exc
    if not raw.strip():
        raise BadJournal(f"{path} is empty: {JOURNAL_HINT}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadJournal(
            f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): {JOURNAL_HINT}"
        ) from exc
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise BadJournal(f"{path} nests lists or objects too deep to be a journal: {JOURNAL_HINT}") from exc
    except ValueError as exc:  # JSONDecodeError; also an integer of more digits than Python converts
        raise BadJournal(f"{path} is not JSON ({exc}): {JOURNAL_HINT}") from exc
    read_journal(data, str(path))
    return data


def left_out(skipped: Sequence[str]) -> str:
    """One line naming the values of a journal left out (the first few; "" if none)."""
    if not skipped:
        return ""
    more = f"; and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
    return (
        f"{count_of(len(skipped), 'value')} of the journal left out, as not in the shape `chaos run` "
        f"writes: {'; '.join(skipped[:SKIPPED_SHOWN])}{more}"
    )
