"""The ledger as a JSON file on one machine, and :class:`JsonRecord`, the JSON file under a lock.

The ledger is a JSON file (``chaosec2panic_ledger_path`` in the configuration, else
``$CHAOSEC2PANIC_LEDGER``, else ``$XDG_STATE_HOME/chaosec2panic/ledger.json``), rewritten
atomically under a lock, so a later process (``chaosec2panic recover``, a rollback in a new
run) finds what was hit. The lock is ``flock``: it makes processes of one machine decide in turn,
not processes of two (that is the DynamoDB ledger's job).

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
import stat
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Tuple

from .entries import Injection, Ledger, LedgerError, entry_problem, kind

__all__ = ["FileLedger", "JsonRecord"]

RESERVED_SUFFIXES = (".lock", ".tmp")  # the names of the files beside a record
NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # no symlinks; a FIFO does not block the open


def _ledger_problem(document: Dict[str, Any]) -> str | None:
    unknown = sorted(set(document) - {"injections"})
    if unknown:
        return f"has unknown keys {unknown} (a ledger holds only injections)"
    entries = document.get("injections", [])
    if not isinstance(entries, list):
        return f"injections is {kind(entries)}, not a list"
    for n, entry in enumerate(entries):
        problem = entry_problem(entry)
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
            raise self._error(self.path, "is of the wrong shape", f"it is {kind(document)}, not an object")
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


class FileLedger(Ledger):
    """The injections recorded in one ledger file."""

    def __init__(self, path: Path):
        self.path = path
        self.where = str(path)
        self._file = JsonRecord(path, "which instances were hit", _ledger_problem)

    def entries(self) -> List[Injection]:
        return _injections(self._file.read())

    @contextmanager
    def _locked(self) -> Iterator[List[Injection]]:
        with self._file.locked() as document:
            entries = _injections(document)
            yield entries
            document["injections"] = [e.to_dict() for e in entries]

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
