"""Where a dump is read from (a file, bytes, the parts a guest sent), and what a reader says of it."""

import os
import stat
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO, Dict, Iterable, List, Protocol, Tuple


def cstr(data: bytes, offset: int, size: int) -> str:
    return data[offset : offset + size].split(b"\0", 1)[0].decode("ascii", "replace")


class Source(Protocol):
    """Random access to a dump: ``read`` returns at most ``size`` bytes, fewer at end of file.

    A source that holds only parts of a file raises ``NotHeld`` for a read of any other byte
    before the end of the file; every reader catches it.
    """

    @property
    def size(self) -> int: ...

    def read(self, offset: int, size: int) -> bytes: ...


class NotHeld(Exception):
    """A read of bytes a source does not hold (not sent by the guest; in no flattened record
    read): what depends on them cannot be judged, and a reader says so in its ``unchecked``."""

    def __init__(self, offset: int, size: int, why: str):
        super().__init__(f"{size} bytes at offset {offset}: {why}")
        self.offset, self.size, self.why = offset, size, why

    def problem(self, name: str, consequence: str = "") -> str:
        found = problem(name, self.offset, f"{self.size} bytes", self.why)
        return f"{found}: {consequence}" if consequence else found


class SparseSource:
    """Parts of a file at their offsets, and the file's real size: what ``crash_dumps`` sends
    of a dump (its first blocks and its last bytes). A read of any other byte raises
    ``NotHeld``: what was not sent never reads as zeros."""

    def __init__(self, size: int, parts: Iterable[Tuple[int, bytes]]):
        self._size = size
        merged: List[Tuple[int, bytes]] = []
        for offset, data in sorted((o, d[: max(0, size - o)]) for o, d in parts if o >= 0):
            if merged and offset <= merged[-1][0] + len(merged[-1][1]):
                start, held = merged[-1]
                merged[-1] = (start, held + data[start + len(held) - offset :])
            elif data:
                merged.append((offset, data))
        self._parts = merged

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size <= 0 or offset >= self._size:
            return b""
        end = min(offset + size, self._size)
        for start, data in self._parts:
            if start <= offset and end <= start + len(data):
                return data[offset - start : end - start]
        raise NotHeld(offset, end - offset, "not sent by the guest")


def held(src: Source, offset: int, size: int, name: str, unchecked: List[str]) -> bytes | None:
    """``src.read``, or None and a note in ``unchecked`` when the source does not hold those bytes."""
    try:
        return src.read(offset, size)
    except NotHeld as e:
        unchecked.append(e.problem(name))
        return None


@dataclass(frozen=True)
class BytesSource:
    """A dump held in memory (tests, fuzzing, small files)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size <= 0:
            return b""
        return self.data[offset : offset + size]


NOT_REGULAR = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def not_regular(mode: int) -> str:
    """What a ``st_mode`` is when it is not a regular file ("" for a regular file)."""
    kind = stat.S_IFMT(mode)
    return "" if kind == stat.S_IFREG else NOT_REGULAR.get(kind, f"file type 0o{kind:o}")


class NotRegularFile(ValueError):
    """A FIFO, a device, a directory or a socket where a dump file was expected."""

    def __init__(self, kind: str):
        super().__init__(f"{kind}, not a regular file")
        self.kind = kind


class FileSource:
    """A dump on disk, read by seek and read: a multi-GB file is never loaded whole.

    Only a regular file: a FIFO or a device has no size to check a header against, and reading
    one may wait forever or never end. Anything else raises ``NotRegularFile``.
    """

    def __init__(self, file: BinaryIO):
        st = os.fstat(file.fileno())
        kind = not_regular(st.st_mode)
        if kind:
            raise NotRegularFile(kind)
        self._file = file
        self._size = st.st_size

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size <= 0 or offset >= self._size:
            return b""
        self._file.seek(offset)
        return self._file.read(min(size, self._size - offset))


@dataclass(frozen=True)
class Inspection:
    """What one file is and whether it is whole. ``to_dict`` gives the ``inspect --json`` shape.

    ``problems`` are what is wrong with the bytes read; ``unchecked`` what could not be verified
    from the bytes at hand (parts a guest did not send, text past the read limit). Only
    ``complete`` is a verdict.
    """

    path: str
    kind: str  # vmcore | dmesg | console | windows-dump | unknown
    format: str  # kdump-compressed | flattened | elf | windows-full | windows-kernel | text | unknown
    complete: bool | None
    kernel_release: str = ""
    machine: str = ""
    crash_time: str = ""
    nmi_panic: bool | None = None
    panic_message: str = ""
    problems: Tuple[str, ...] = ()
    details: Dict[str, object] = field(default_factory=dict)
    unchecked: Tuple[str, ...] = ()

    def to_dict(self) -> Dict[str, object]:
        return {
            "path": self.path,
            "kind": self.kind,
            "format": self.format,
            "complete": self.complete,
            "kernel_release": self.kernel_release or None,
            "machine": self.machine or None,
            "crash_time": self.crash_time or None,
            "nmi_panic": self.nmi_panic,
            "panic_message": self.panic_message or None,
            "problems": list(self.problems),
            "unchecked": list(self.unchecked),
        }


def problem(name: str, offset: int, expected: object, found: object) -> str:
    return f"{name} at offset {offset}: expected {expected}, found {found}"


def unpack(fmt: str, data: bytes, offset: int) -> tuple | None:
    """``struct.unpack_from`` that answers None instead of raising when ``data`` is too short."""
    if offset < 0 or offset + struct.calcsize(fmt) > len(data):
        return None
    return struct.unpack_from(fmt, data, offset)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def utc_iso(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return ""


def parse_vmcoreinfo(text: bytes) -> Dict[str, str]:
    """``KEY=value`` lines of a VMCOREINFO note (OSRELEASE, CRASHTIME, PAGESIZE, SYMBOL(...), ...)."""
    found: Dict[str, str] = {}
    for line in text.split(b"\0", 1)[0].decode("ascii", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found.setdefault(key, value)
    return found


def crash_time(info: Dict[str, str], fallback: str) -> str:
    seconds = info.get("CRASHTIME", "")
    return (utc_iso(int(seconds)) if seconds.isdigit() else "") or fallback


# O_NONBLOCK: a FIFO put in the file's place after the stat opens without waiting for a writer
# (the fstat then refuses it); on a regular file it changes nothing.
OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
)
