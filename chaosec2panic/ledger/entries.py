"""The ledger's entries and the interface every ledger has; the backends are in :mod:`.file` and
:mod:`.dynamodb`, and :meth:`Ledger.of` picks one from the configuration.

The ledger decides whether an instance may be hit, so nothing read from it is taken on trust:
:func:`entry_problem` checks each entry against the shape of :class:`Injection`, whichever
backend it came from, and a wrong one is an error naming where it is.
"""

import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Tuple

from chaoslib.types import Configuration

from ..errors import Ec2PanicError
from ..recovery import MILESTONES, SOURCES
from ..settings import settings

__all__ = [
    "OUTCOMES",
    "RUN_ID",
    "Injection",
    "Ledger",
    "LedgerError",
    "entry_problem",
    "kind",
    "unrecovered",
]

RUN_ID = uuid.uuid4().hex
# pending: written before the request is sent, settled to sent, failed or unknown once it answers.
OUTCOMES = ("pending", "sent", "unknown", "failed", "refused")
HIT_OUTCOMES = frozenset({"pending", "sent", "unknown"})
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z")


class LedgerError(Ec2PanicError):
    """A record beside the run (the ledger, or what arm_kdump changed) cannot be read or written as
    it stands; it was left as it was."""


@dataclass(frozen=True)
class Injection:
    """One NMI request to one instance and what is known of its aftermath.

    A refused request is recorded too (``outcome`` refused, no instance), and so is an NMI that
    failed, so the probes of the run know an injection was wanted and cannot pass vacuously.
    """

    instance_id: str
    sent_at: str
    outcome: str
    answered_at: str = ""  # when the API answered the request (the NMI landed in between)
    run_id: str = RUN_ID
    region: str = ""
    error: str = ""
    boot_id_before: str = ""
    console_anchor: str = ""
    recovered_at: str = ""
    timeline: Dict[str, Any] = field(default_factory=dict)
    dump_found: str = ""
    boot_before: Dict[str, Any] = field(default_factory=dict)
    evidence: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    rollback: List[str] = field(default_factory=list)
    batch: int = 1

    @property
    def hit(self) -> bool:
        """Whether the NMI may have reached the instance: sent, sent with no clear answer, or
        recorded before sending and never settled (its process may have died after the request)."""
        return self.outcome in HIT_OUTCOMES

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def kind(value: Any) -> str:
    """What a JSON value is, as a person says it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    names = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else f"is {kind(value)}, not a string"


def _time(value: Any, empty: bool) -> str | None:
    if isinstance(value, str) and ((empty and not value) or ISO_TIME.fullmatch(value)):
        return None
    return f"is {value!r}, not a UTC time like 2026-01-01T00:00:00.000Z"


def _number(value: Any) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return None
    return f"is {value!r}, not a number >= 0"


def _evidence(value: Any) -> str | None:
    """A milestone's evidence as recovery.Evidence.to_dict writes it."""
    keys = {"at", "source", "uncertainty_s", "upper_bound"}
    if not isinstance(value, dict) or set(value) - {"lower_bound"} != keys:  # entries before it lack it
        return "is not an object of at, source, uncertainty_s, upper_bound and lower_bound"
    if value["source"] not in SOURCES:
        return f"source is {value['source']!r}, not one of {', '.join(SOURCES)}"
    if not isinstance(value["upper_bound"], bool) or not isinstance(value.get("lower_bound", False), bool):
        return "upper_bound or lower_bound is not true/false"
    return _time(value["at"], False) or _number(value["uncertainty_s"])


def _evidence_map(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"is {kind(value)}, not an object"
    for name, item in value.items():
        if name not in MILESTONES:
            return f"names {name!r}, not a milestone ({', '.join(MILESTONES)})"
        problem = _evidence(item)
        if problem:
            return f"{name} {problem}"
    return None


def _boot_before(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"is {kind(value)}, not an object"
    if not value:
        return None
    if set(value) != {"booted_at", "uncertainty_s", "skew"}:
        return f"holds {sorted(value)}, not booted_at, uncertainty_s and skew"
    return _time(value["booted_at"], False) or _number(value["uncertainty_s"]) or _text(value["skew"])


def _timeline(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"is {kind(value)}, not an object"
    if not value:
        return None
    parts = {"milestones": (str, type(None)), "missing": (str,), "durations": (int, float, type(None))}
    optional = {"recovered_at", "evidence", "conflicts"}
    unknown = sorted(set(value) - {*parts, *optional})
    if unknown or set(parts) - set(value):
        return f"holds {sorted(value)}, not milestones, missing, durations, recovered_at, evidence, conflicts"
    if "evidence" in value and _evidence_map(value["evidence"]):
        return f"evidence {_evidence_map(value['evidence'])}"
    conflicts = value.get("conflicts", [])
    if not isinstance(conflicts, list) or not all(isinstance(c, str) for c in conflicts):
        return "conflicts is not a list of strings"
    for name, types in parts.items():
        part = value[name]
        if not isinstance(part, dict) or any(
            isinstance(v, bool) or not isinstance(v, types) for v in part.values()
        ):
            return f"{name} is not an object of {' or '.join(t.__name__ for t in types)}"
    if value.get("recovered_at") is not None and _time(value["recovered_at"], False):
        return f"recovered_at {_time(value['recovered_at'], False)}"
    return None


FIELD_CHECKS: Dict[str, Callable[[Any], str | None]] = {
    "instance_id": _text,
    "sent_at": lambda v: _time(v, False),
    "answered_at": lambda v: _time(v, True),
    "outcome": lambda v: None if v in OUTCOMES else f"is {v!r}, not one of {', '.join(OUTCOMES)}",
    "run_id": _text,
    "region": _text,
    "error": _text,
    "boot_id_before": _text,
    "console_anchor": _text,
    "recovered_at": lambda v: _time(v, True),
    "timeline": _timeline,
    "dump_found": _text,
    "boot_before": _boot_before,
    "evidence": _evidence_map,
    "rollback": lambda v: (
        None
        if isinstance(v, list) and all(isinstance(a, str) for a in v)
        else f"is {kind(v)}, not a list of strings"
    ),
    "batch": lambda v: (
        None
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1
        else f"is {v!r}, not a whole number >= 1"
    ),
}
REQUIRED = ("instance_id", "sent_at", "outcome")


def entry_problem(entry: Any) -> str | None:
    """What is wrong with one ledger entry as read from JSON, or None."""
    if not isinstance(entry, dict):
        return f"is {kind(entry)}, not an object"
    unknown = sorted(set(entry) - set(FIELD_CHECKS))
    if unknown:
        return f"has unknown keys {unknown} (written by another version of chaosec2panic?)"
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        return f"lacks {missing}"
    for name, value in entry.items():
        problem = FIELD_CHECKS[name](value)
        if problem:
            return f"{name} {problem}"
    if entry["outcome"] != "refused" and not entry["instance_id"]:
        return f"instance_id is empty, and an NMI {entry['outcome']} names its instance"
    return None


def unrecovered(entries: Iterable[Injection]) -> Dict[str, Injection]:
    """Instances whose latest hit among ``entries`` has no recovery recorded."""
    latest: Dict[str, Injection] = {}
    for e in entries:
        if e.hit:
            latest[e.instance_id] = e
    return {i: e for i, e in latest.items() if not e.recovered_at}


class Ledger(ABC):
    """The injections recorded so far, and the one way to add to them: :meth:`admit`.

    ``Ledger(path)`` is the file ledger at ``path``; :meth:`of` is the ledger a configuration names.
    """

    where: str  # what and where the ledger is, as a person names it: a file, or a table and its region

    def __new__(cls, *args: Any, **kwargs: Any) -> "Ledger":
        from .file import FileLedger

        return super().__new__(FileLedger if cls is Ledger else cls)

    @classmethod
    def of(cls, configuration: Configuration | None) -> "Ledger":
        """The shared DynamoDB ledger when ``chaosec2panic_ledger_table`` (or
        ``$CHAOSEC2PANIC_LEDGER_TABLE``) names a table, else the ledger file."""
        chosen = settings(configuration)
        if chosen.ledger_table:
            from .dynamodb import DynamoDbLedger

            return DynamoDbLedger.of(chosen.ledger_table, configuration or {}, chosen.ledger_ttl_days)
        from .file import FileLedger

        return FileLedger(chosen.ledger_path)

    @abstractmethod
    def entries(self) -> List[Injection]:
        """Every entry, in the order they were added."""

    @abstractmethod
    def admit(self, decide: Callable[[List[Injection]], List[Injection]]) -> List[Injection]:
        """``decide`` reads every entry and returns those to append (or raises, and nothing is
        written); they are in the ledger before any other process can decide on what it holds."""

    @abstractmethod
    def update(self, changes: Mapping[Tuple[str, str], Mapping[str, Any]]) -> None:
        """Change the entries keyed ``(instance_id, sent_at)``."""

    def record(self, injections: List[Injection]) -> None:
        """Append ``injections``."""
        self.admit(lambda entries: list(injections))

    def latest(self, run_id: str | None = None) -> Dict[str, Injection]:
        """The latest injection that may have hit each instance (of one run, or of all runs)."""
        found: Dict[str, Injection] = {}
        for e in self.entries():
            if e.hit and (run_id is None or e.run_id == run_id):
                found[e.instance_id] = e
        return found

    def misses(self, run_id: str) -> List[Injection]:
        """The NMI requests of one run that hit nothing: refused, or failed on every instance."""
        return [e for e in self.entries() if e.run_id == run_id and not e.hit]

    def unrecovered(self) -> Dict[str, Injection]:
        """Instances whose latest hit has no recovery recorded, across all runs."""
        return unrecovered(self.entries())
