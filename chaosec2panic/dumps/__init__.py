"""Crash dumps, dmesg and console text: detect, parse, judge, without the ``crash`` tool.

``inspect_source`` / ``inspect_path`` read a dump file the way its producer laid it out, but only
the parts that say whether it is whole: headers, the makedumpfile bitmaps and page descriptors,
the flattened record headers, ELF program headers and notes, the Windows header; page data is
never read. The same readers judge the first blocks and last bytes of a dump that the
``crash_dumps`` guest script sends, held at their offsets in a ``SparseSource``: what a reader
needs and was not sent is never read as zeros; it is named in ``unchecked`` (what could not be
verified from the bytes at hand), apart from ``problems`` (what is wrong with the bytes read).

A dump's header is not trusted for sizes: what it declares is checked against its own limits
(the bitmaps against ``max_mapnr``, every record and segment against the file) before anything
is read, reads are chunked, and memory stays bounded whatever the counts say. A dump is
complete only if it holds memory: a dumpable page, a PT_LOAD with bytes in the file.

Parsers never raise on bad input; they return what they could read, a list of problems, each
naming the field, the offset, what was expected and what was found, and a list of what they
could not check. A note in ``unchecked`` never changes a verdict: ``complete`` says it.

One module per what is read: ``source`` (where the bytes come from, and what a reader says),
``kdump`` (makedumpfile's kdump-compressed and flattened formats), ``elf``, ``windows`` and
``text`` (consoles and dmesg); this package picks the reader by the file's magic.
"""

import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Callable, List, Tuple

from .elf import ELF_MAGIC, read_elf
from .kdump import FLAT_SIGNATURE, KDUMP_SIGNATURE, read_flattened, read_kdump
from .source import (
    NOT_REGULAR,
    OPEN_FLAGS,
    BytesSource,
    FileSource,
    Inspection,
    NotHeld,
    NotRegularFile,
    Source,
    SparseSource,
    held,
    not_regular,
    parse_vmcoreinfo,
    problem,
)
from .text import TEXT_LIMIT, ConsoleFindings, console_findings, looks_like_text, read_text
from .windows import WINDOWS_SIGNATURE, read_windows

__all__ = [
    "BytesSource",
    "ConsoleFindings",
    "FileSource",
    "Inspection",
    "NotHeld",
    "NotRegularFile",
    "Source",
    "SparseSource",
    "console_findings",
    "inspect_path",
    "inspect_source",
    "parse_vmcoreinfo",
    "read_elf",
    "read_flattened",
    "read_kdump",
    "read_text",
    "read_windows",
]

WRITING_NAMES = frozenset({"vmcore-incomplete", "dump-incomplete"})


READERS: List[Tuple[bytes, Callable[[Source], Inspection]]] = [
    (KDUMP_SIGNATURE, read_kdump),
    (FLAT_SIGNATURE, read_flattened),
    (ELF_MAGIC, read_elf),
    (WINDOWS_SIGNATURE, read_windows),
]


def inspect_source(src: Source, name: str = "") -> Inspection:
    """Identify a file by its magic (else as kernel text) and judge it with the matching reader."""
    found = _judge(src, name)
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if found.kind == "vmcore" and base in WRITING_NAMES:
        found = replace(
            found, complete=False, problems=(*found.problems, f"name: {base} (makedumpfile did not finish)")
        )
    return replace(found, path=name)


def _judge(src: Source, name: str) -> Inspection:
    """The reader of the file's magic, else kernel text, else unknown."""
    unchecked: List[str] = []
    head = held(src, 0, 4096, "signature", unchecked)
    if head is None:
        return Inspection("", "unknown", "unknown", None, unchecked=tuple(unchecked))
    for magic, reader in READERS:
        if head.startswith(magic):
            return reader(src)
    if not looks_like_text(head):
        seen = head[:16].hex() or "an empty file"
        return Inspection(
            "",
            "unknown",
            "unknown",
            None,
            problems=(problem("signature", 0, "a dump magic or kernel text", seen),),
        )
    raw = held(src, 0, TEXT_LIMIT, "text", unchecked)
    if raw is None:
        return Inspection("", "unknown", "text", None, unchecked=tuple(unchecked))
    found = read_text(raw.decode("utf-8", "replace"), name)
    if src.size > TEXT_LIMIT:
        found = replace(
            found, unchecked=(*found.unchecked, f"text: only the first {TEXT_LIMIT} bytes were read")
        )
    return found


def inspect_path(path: Path) -> Inspection:
    """Inspect one regular file on disk (symlinks followed), reading only the parts its format
    needs. Never raises: a missing or unreadable path, or one that is not a regular file (a FIFO,
    a device, a directory), is a problem of that path.

    What the path names is checked twice: by ``stat`` before opening, so that no FIFO or device is
    ever opened (opening one can act: a FIFO's writer is let through, a tape rewinds), and by
    ``fstat`` on the opened file, so that what is read is what was checked.
    """
    try:
        kind = not_regular(os.stat(path).st_mode)
        if not kind:
            with os.fdopen(os.open(path, OPEN_FLAGS), "rb") as f:
                try:
                    source = FileSource(f)
                except NotRegularFile as e:
                    kind = e.kind
                else:
                    return inspect_source(source, str(path))
    except OSError as e:
        return Inspection(
            str(path), "unknown", "unknown", None, problems=(f"path: cannot read: {e.strerror or e}",)
        )
    what = "name a dump file in it" if kind == NOT_REGULAR[stat.S_IFDIR] else "copy what it holds to a file"
    return Inspection(
        str(path),
        "unknown",
        "unknown",
        None,
        problems=(f"path: {kind}, not a regular file: only dump files are read ({what})",),
    )
