"""What was injected, when, and what came of it: shared by the activities of a run and persisted.

The ledger is a JSON file (``chaosec2panic_ledger_path`` in the configuration, else
``$CHAOSEC2PANIC_LEDGER``, else ``$XDG_STATE_HOME/chaosec2panic/ledger.json``), rewritten
atomically under a lock, so a later process (``chaosec2panic recover``, a rollback in a new
run) finds what was hit. Entries of the current process share one ``RUN_ID``.

The ledger decides whether an instance may be hit, so nothing in it is taken on trust: every
read checks the whole document against the shape of :class:`Injection` and a wrong one is an
error naming the file and the entry (the file is never rewritten over it); the ledger, its lock
(``<stem>.lock``) and its temporary file (``<stem>.tmp``) are opened without following symbolic
links, and every file is created 0600 (the ledger holds console tails), its directory 0700.
"""

import errno
import fcntl
import json
import os
import re
import stat
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Tuple

from chaoslib.types import Configuration

from .errors import Ec2PanicError
from .recovery import MILESTONES, SOURCES
from .settings import settings

__all__ = ["OUTCOMES", "RUN_ID", "Injection", "JsonRecord", "Ledger", "LedgerError", "unrecovered"]

RUN_ID = uuid.uuid4().hex
# pending: written before the request is sent, settled to sent, failed or unknown once it answers.
OUTCOMES = ("pending", "sent", "unknown", "failed", "refused")
HIT_OUTCOMES = frozenset({"pending", "sent", "unknown"})
RESERVED_SUFFIXES = (".lock", ".tmp")  # the names of the files beside a record
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z")
NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # no symlinks; a FIFO does not block the open


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


def _kind(value: Any) -> str:
    """What a JSON value is, as a person says it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    names = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else f"is {_kind(value)}, not a string"


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
    if not isinstance(value, dict) or set(value) != {"at", "source", "uncertainty_s", "upper_bound"}:
        return "is not an object of at, source, uncertainty_s and upper_bound"
    if value["source"] not in SOURCES:
        return f"source is {value['source']!r}, not one of {', '.join(SOURCES)}"
    if not isinstance(value["upper_bound"], bool):
        return "upper_bound is not true/false"
    return _time(value["at"], False) or _number(value["uncertainty_s"])


def _evidence_map(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"is {_kind(value)}, not an object"
    for name, item in value.items():
        if name not in MILESTONES:
            return f"names {name!r}, not a milestone ({', '.join(MILESTONES)})"
        problem = _evidence(item)
        if problem:
            return f"{name} {problem}"
    return None


def _boot_before(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"is {_kind(value)}, not an object"
    if not value:
        return None
    if set(value) != {"booted_at", "uncertainty_s", "skew"}:
        return f"holds {sorted(value)}, not booted_at, uncertainty_s and skew"
    return _time(value["booted_at"], False) or _number(value["uncertainty_s"]) or _text(value["skew"])


def _timeline(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"is {_kind(value)}, not an object"
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
        else f"is {_kind(v)}, not a list of strings"
    ),
    "batch": lambda v: (
        None
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1
        else f"is {v!r}, not a whole number >= 1"
    ),
}
REQUIRED = ("instance_id", "sent_at", "outcome")


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with one ledger entry as read from JSON, or None."""
    if not isinstance(entry, dict):
        return f"is {_kind(entry)}, not an object"
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


def _ledger_problem(document: Dict[str, Any]) -> str | None:
    unknown = sorted(set(document) - {"injections"})
    if unknown:
        return f"has unknown keys {unknown} (a ledger holds only injections)"
    entries = document.get("injections", [])
    if not isinstance(entries, list):
        return f"injections is {_kind(entries)}, not a list"
    for n, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem:
            label = (
                f" ({entry.get('instance_id') or 'no instance'} at {entry.get('sent_at')})"
                if isinstance(entry, dict)
                else ""
            )
            return f"entry {n}{label} {problem}"
    return None


class JsonRecord:
    """A JSON object on disk, read as a whole and checked, rewritten atomically under a file lock.

    ``check`` says what is wrong with a document read (None when nothing is): a wrong one is a
    :class:`LedgerError` and is never written over. The lock and temporary files beside it are
    ``<stem>.lock`` and ``<stem>.tmp``, so a record's own name may not end in either.
    """

    def __init__(self, path: Path, holds: str, check: Callable[[Dict[str, Any]], str | None] | None = None):
        if path.suffix in RESERVED_SUFFIXES:
            raise LedgerError(
                f"{path}: a record's name may not end in {path.suffix}, the name of a file kept beside "
                "it; give a path ending in .json"
            )
        self.path = path
        self.holds = holds
        self._check = check
        self.lock_path = path.with_suffix(".lock")
        self.tmp_path = path.with_suffix(".tmp")

    def _error(self, path: Path, what: str, why: OSError | str) -> LedgerError:
        if isinstance(why, OSError):
            why = (
                "it is a symbolic link, and chaosec2panic follows none there"
                if why.errno == errno.ELOOP
                else why.strerror or str(why)
            )
        where = "That file" if path == self.path else f"It is kept for {self.path}, which"
        return LedgerError(
            f"{path} {what}: {why}. {where} holds {self.holds}: fix or move it, or give another "
            "path. Nothing was changed."
        )

    def _open(self, path: Path, flags: int, what: str) -> int:
        """A descriptor of ``path``, which must be a regular file and no symbolic link (a missing
        one raises FileNotFoundError)."""
        try:
            fd = os.open(path, flags | NOFOLLOW, 0o600)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._error(path, f"cannot be {what}", exc) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._error(path, f"cannot be {what}", "it is not a regular file")
        return fd

    def read(self) -> Dict[str, Any]:
        """The document, {} while the file does not exist."""
        try:
            fd = self._open(self.path, os.O_RDONLY, "read")
        except FileNotFoundError:
            return {}
        with os.fdopen(fd, "rb") as file:
            data = file.read()
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise self._error(self.path, "is not readable JSON", f"{type(exc).__name__}: {exc}") from None
        if not isinstance(document, dict):
            raise self._error(self.path, "is of the wrong shape", f"it is {_kind(document)}, not an object")
        problem = self._check(document) if self._check else None
        if problem:
            raise self._error(self.path, "is of the wrong shape", problem)
        return document

    def _write(self, document: Dict[str, Any]) -> None:
        """Write ``document`` to a new temporary file (never into one that exists), then put it in
        place of the record."""
        data = json.dumps(document, indent=1, sort_keys=True).encode()
        try:
            try:
                left = os.lstat(self.tmp_path)
            except FileNotFoundError:
                left = None
            if left is not None and not stat.S_ISREG(left.st_mode):
                raise self._error(
                    self.tmp_path, "is in the way", "it is no temporary file chaosec2panic left"
                )
            if left is not None:
                os.unlink(self.tmp_path)  # left by a writer that died: the name goes, not what it names
            fd = self._open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "written")
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(self.tmp_path, self.path)
        except OSError as exc:
            raise self._error(self.path, "cannot be written", exc) from exc

    @contextmanager
    def locked(self) -> Iterator[Dict[str, Any]]:
        """The document, to change in place; written back when the block ends without an error."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(self.path.parent, "cannot be made", exc) from exc
        try:
            lock = self._open(self.lock_path, os.O_RDWR | os.O_CREAT, "locked")
        except OSError as exc:
            raise self._error(self.lock_path, "cannot be locked", exc) from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            document = self.read()
            yield document
            self._write(document)
        finally:
            os.close(lock)


def _injections(document: Mapping[str, Any]) -> List[Injection]:
    return [Injection(**e) for e in document.get("injections", [])]


def unrecovered(entries: Iterable[Injection]) -> Dict[str, Injection]:
    """Instances whose latest hit among ``entries`` has no recovery recorded."""
    latest: Dict[str, Injection] = {}
    for e in entries:
        if e.hit:
            latest[e.instance_id] = e
    return {i: e for i, e in latest.items() if not e.recovered_at}


class Ledger:
    """The injections recorded in one ledger file."""

    def __init__(self, path: Path):
        self.path = path
        self._file = JsonRecord(path, "which instances were hit", _ledger_problem)

    @classmethod
    def of(cls, configuration: Configuration | None) -> "Ledger":
        return cls(settings(configuration).ledger_path)

    def entries(self) -> List[Injection]:
        return _injections(self._file.read())

    @contextmanager
    def _locked(self) -> Iterator[List[Injection]]:
        with self._file.locked() as document:
            entries = _injections(document)
            yield entries
            document["injections"] = [e.to_dict() for e in entries]

    def record(self, injections: List[Injection]) -> None:
        """Append ``injections``."""
        with self._locked() as entries:
            entries.extend(injections)

    def admit(self, decide: Callable[[List[Injection]], List[Injection]]) -> List[Injection]:
        """Under the lock, ``decide`` reads every entry and returns those to append (or raises, and
        nothing is written); they are on disk before any other process can read the ledger."""
        with self._locked() as entries:
            added = decide(list(entries))
            entries.extend(added)
        return added

    def update(self, changes: Mapping[Tuple[str, str], Mapping[str, Any]]) -> None:
        """Change the entries keyed ``(instance_id, sent_at)``, all in one rewrite."""
        if not changes:
            return
        with self._locked() as entries:
            for n, e in enumerate(entries):
                change = changes.get((e.instance_id, e.sent_at))
                if change:
                    entries[n] = replace(e, **change)

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
