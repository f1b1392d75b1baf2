"""What was injected, when, and what came of it: shared by the activities of a run and persisted.

The ledger is a JSON file (``chaosec2panic_ledger_path`` in the configuration, else
``$CHAOSEC2PANIC_LEDGER``, else ``$XDG_STATE_HOME/chaosec2panic/ledger.json``), rewritten
atomically under a lock, so a later process (``chaosec2panic recover``, a rollback in a new
run) finds what was hit. Entries of the current process share one ``RUN_ID``.
"""

import fcntl
import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Tuple

from chaoslib.types import Configuration

from .settings import settings

__all__ = ["RUN_ID", "Injection", "JsonRecord", "Ledger"]

RUN_ID = uuid.uuid4().hex


@dataclass(frozen=True)
class Injection:
    """One NMI request to one instance and what is known of its aftermath.

    A refused request is recorded too (``outcome`` refused, no instance), and so is an NMI that
    failed, so the probes of the run know an injection was wanted and cannot pass vacuously.
    """

    instance_id: str
    sent_at: str
    outcome: str
    run_id: str = RUN_ID
    region: str = ""
    error: str = ""
    boot_id_before: str = ""
    console_anchor: str = ""
    recovered_at: str = ""
    timeline: Dict[str, Any] = field(default_factory=dict)
    dump_found: str = ""
    rollback: List[str] = field(default_factory=list)
    batch: int = 1

    @property
    def hit(self) -> bool:
        """Whether the NMI may have reached the instance (sent, or sent with no clear answer)."""
        return self.outcome in ("sent", "unknown")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class JsonRecord:
    """A JSON document on disk, read as a whole and rewritten atomically under a file lock."""

    def __init__(self, path: Path, holds: str):
        self.path = path
        self.holds = holds

    def read(self) -> Dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise OSError(
                f"{self.path} cannot be read ({exc}); fix or move it, it holds {self.holds}"
            ) from exc

    @contextmanager
    def locked(self) -> Iterator[Dict[str, Any]]:
        """The document, to change in place; written back when the block ends."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            document = self.read()
            yield document
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(document, indent=1, sort_keys=True))
            os.replace(tmp, self.path)


class Ledger:
    """The injections recorded in one ledger file."""

    def __init__(self, path: Path):
        self.path = path
        self._file = JsonRecord(path, "which instances were hit")

    @classmethod
    def of(cls, configuration: Configuration | None) -> "Ledger":
        return cls(settings(configuration).ledger_path)

    def entries(self) -> List[Injection]:
        return [Injection(**e) for e in self._file.read().get("injections", [])]

    @contextmanager
    def _locked(self) -> Iterator[List[Injection]]:
        with self._file.locked() as document:
            entries = [Injection(**e) for e in document.get("injections", [])]
            yield entries
            document["injections"] = [e.to_dict() for e in entries]

    def record(self, injections: List[Injection]) -> None:
        """Append ``injections``."""
        with self._locked() as entries:
            entries.extend(injections)

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
        return {i: e for i, e in self.latest().items() if not e.recovered_at}
