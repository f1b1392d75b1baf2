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
"""

import bisect
import heapq
import os
import re
import stat
import struct
from array import array
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterable, List, Protocol, Tuple

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

KDUMP_SIGNATURE = b"KDUMP   "
FLAT_SIGNATURE = b"makedumpfile"
FLAT_END_RECORD = b"\xff" * 16
ELF_MAGIC = b"\x7fELF"
WINDOWS_SIGNATURE = b"PAGEDU64"
KDUMP_STATUS_INCOMPLETE = 0x8
KDUMP_COMPRESSION = {0x1: "zlib", 0x2: "lzo", 0x4: "snappy", 0x20: "zstd"}
UTS_FIELD = 65
ET_CORE = 4
ELF_FLAG_INCOMPLETE = 0x1
WINDOWS_BUGCHECK_OFFSET = 0x38
NMI_BUGCHECK = 0x80
WRITING_NAMES = frozenset({"vmcore-incomplete", "dump-incomplete"})


def _cstr(data: bytes, offset: int, size: int) -> str:
    return data[offset : offset + size].split(b"\0", 1)[0].decode("ascii", "replace")


NMI_RECEIVED = re.compile(r"NMI received for unknown reason \w+ on CPU \d+")
PANIC = re.compile(r"Kernel panic - not syncing: (.*)")
DAZED = "Dazed and confused, but trying to continue"
# kexec-tools appends elfcorehdr= to the capture kernel's command line, which it prints at boot.
CAPTURE_KERNEL = re.compile(r"Command line: .*\belfcorehdr=")
NO_KDUMP_MARKERS = ("Rebooting in ", "---[ end Kernel panic")


@dataclass(frozen=True)
class ConsoleFindings:
    """What a console log says happened: NMI, panic (and whether the NMI caused it), capture."""

    nmi_received: bool
    panic_message: str
    nmi_panic: bool
    dazed: bool
    capture_started: bool
    kdump_skipped: bool

    @property
    def panicked_on_nmi(self) -> bool:
        """The NMI panic message, or a capture kernel booting (only a panic starts one).

        With kdump armed, recent kernels keep an NMI-context panic in the log buffer only:
        the capture kernel starts before the console is flushed.
        """
        return self.nmi_panic or (self.capture_started and not self.dazed)

    def to_dict(self) -> Dict[str, object]:
        return {**self.__dict__, "panicked_on_nmi": self.panicked_on_nmi}


def console_findings(text: str) -> ConsoleFindings:
    """Read kernel messages from console text (any timestamps or prefixes around them)."""
    panic = PANIC.search(text)
    message = panic.group(1).strip() if panic else ""
    capture = CAPTURE_KERNEL.search(text)
    return ConsoleFindings(
        nmi_received=bool(NMI_RECEIVED.search(text)),
        panic_message=message,
        nmi_panic=message.startswith("NMI"),
        dazed=DAZED in text,
        capture_started=bool(capture),
        kdump_skipped=not capture and any(m in text for m in NO_KDUMP_MARKERS),
    )


# ---------------------------------------------------------------------------------------------
# Whole files: where to read, and the parsers that judge a dump from its own layout.
# ---------------------------------------------------------------------------------------------


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
        found = _problem(name, self.offset, f"{self.size} bytes", self.why)
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


def _held(src: Source, offset: int, size: int, name: str, unchecked: List[str]) -> bytes | None:
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


def _not_regular(mode: int) -> str:
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
        kind = _not_regular(st.st_mode)
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


def _problem(name: str, offset: int, expected: object, found: object) -> str:
    return f"{name} at offset {offset}: expected {expected}, found {found}"


def _unpack(fmt: str, data: bytes, offset: int) -> tuple | None:
    """``struct.unpack_from`` that answers None instead of raising when ``data`` is too short."""
    if offset < 0 or offset + struct.calcsize(fmt) > len(data):
        return None
    return struct.unpack_from(fmt, data, offset)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _iso(seconds: float) -> str:
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


def _crash_time(info: Dict[str, str], fallback: str) -> str:
    seconds = info.get("CRASHTIME", "")
    return (_iso(int(seconds)) if seconds.isdigit() else "") or fallback


# kdump-compressed (makedumpfile diskdump_data.h). struct disk_dump_header as in DESIGN.md, 464
# bytes up to nr_cpus; struct kdump_sub_header at block_size (64-bit): phys_base u64 +0,
# dump_level i32 +8, split i32 +12, start_pfn +16, end_pfn +24, offset_vmcoreinfo +32,
# size_vmcoreinfo +40, offset_note +48, size_note +56, offset_eraseinfo +64, size_eraseinfo
# +72, start_pfn_64 +80, end_pfn_64 +88, max_mapnr_64 +96. Checked against the real Debian
# 6.1 dump in tests/fixtures/real: dump_level 31, vmcoreinfo 4580/3300 inside the note at
# 4200/3680, max_mapnr_64 98269 = max_mapnr at 440.
KDUMP_HEADER_SIZE = 464
KDUMP_SUB_HEADER_SIZE = 104
KDUMP_SUB_VMCOREINFO = 32
KDUMP_SUB_ERASEINFO = 64
KDUMP_SUB_MAX_MAPNR = 96  # max_mapnr_64 (header version 6): the header's own is cut to 32 bits
KDUMP_MAX_MAPNR_AT = 440
KDUMP_BITMAP_BLOCKS_AT = 436
PAGE_DESC = struct.Struct("<qIIQ")  # offset, size, flags, page_flags: 24 bytes
PAGE_DESC_CHUNK = 1 << 16  # descriptors per read: 1.5 MiB
BITMAP_CHUNK = 1 << 20
VMCOREINFO_MAX = 1 << 20
MAX_LISTED = 3  # bad descriptors named one by one; the rest are counted
UNCHECKED_PAGES = "whether page data is missing is not checked"


def read_kdump(src: Source, check_pages: bool = True) -> Inspection:
    """A kdump-compressed dump: header, VMCOREINFO, and whether the file holds all its pages.

    The header's sizes are checked against each other before anything they size is read: the
    bitmaps must be the two of ``max_mapnr`` bits that makedumpfile and QEMU write (each rounded
    up to whole blocks), so an absurd ``bitmap_blocks`` is a problem, not a long read. A dump
    whose second bitmap marks no page holds no memory, and is not complete.

    Truncation is judged from the page descriptors: page data must reach max(offset + size)
    over the descriptors of the dumpable pages (the set bits of the second bitmap). All
    descriptors are read, in chunks, rather than the last few: makedumpfile points every
    zero-filled page at one shared copy written first, so the last descriptors of a real dump
    (those of the Debian fixture included) often point back at the start of the page data.
    From a source that does not hold the bitmap or the descriptors (the first blocks a guest
    sends), the file is judged by its flag and by the size its header implies, and ``unchecked``
    says that missing page data was not checked.
    """
    name = "kdump-compressed"
    problems: List[str] = []
    unchecked: List[str] = []
    head = _held(src, 0, KDUMP_HEADER_SIZE, "header", unchecked)
    fields = None if head is None else _unpack("<8si390s6xqqIiiIIIIIIi", head, 0)
    if fields is None:
        if head is not None:
            problems.append(_problem("header", len(head), f"{KDUMP_HEADER_SIZE} bytes", "end of file"))
        return Inspection("", "vmcore", name, None, problems=tuple(problems), unchecked=tuple(unchecked))
    _sig, version, uts, seconds, _usec, status, block, sub_blocks, bitmap_blocks, max_mapnr = fields[:10]
    release = _cstr(uts, 2 * UTS_FIELD, UTS_FIELD)
    machine = _cstr(uts, 4 * UTS_FIELD, UTS_FIELD)
    compression = ",".join(n for bit, n in KDUMP_COMPRESSION.items() if status & bit) or "none"
    details: Dict[str, object] = {"header_version": version, "compression": compression}
    complete: bool | None = True
    if status & KDUMP_STATUS_INCOMPLETE:
        problems.append(_problem("status", 424, "incomplete flag 0x8 clear", f"0x{status:x}"))
        complete = False
    header_time = _iso(seconds)
    if not header_time:
        problems.append(_problem("timestamp", 408, "seconds since 1970", seconds))

    def result(verdict: bool | None, info: Dict[str, str] | None = None) -> Inspection:
        info = info or {}
        osrelease = info.get("OSRELEASE", "")
        if osrelease and osrelease != release:
            problems.append(
                f"VMCOREINFO OSRELEASE: expected {release!r} as in the header, found {osrelease!r}"
            )
        return Inspection(
            "",
            "vmcore",
            name,
            verdict,
            kernel_release=release or osrelease,
            machine=machine,
            crash_time=_crash_time(info, header_time),
            problems=tuple(problems),
            details=details,
            unchecked=tuple(unchecked),
        )

    if block < 512 or block > 1 << 20 or block & (block - 1):
        problems.append(_problem("block_size", 428, "a power of two from 512 to 1 MiB", block))
        return result(None)
    if sub_blocks < 0 or bitmap_blocks == 0 or bitmap_blocks % 2:
        problems.append(
            _problem(
                "sub_hdr_size, bitmap_blocks", 432, ">= 0 and an even count > 0", (sub_blocks, bitmap_blocks)
            )
        )
        return result(None)

    sub = _held(src, block, KDUMP_SUB_HEADER_SIZE, "sub-header", unchecked) if sub_blocks else b""
    info: Dict[str, str] = {}
    erase_end = 0
    if version >= 3 and sub_blocks and sub is not None:
        where = _unpack("<qQ", sub, KDUMP_SUB_VMCOREINFO)
        if where is None:
            problems.append(
                _problem("sub-header", block + len(sub), "offset_vmcoreinfo and size", "end of file")
            )
            return result(False)
        vi_offset, vi_size = where
        if vi_size and (vi_offset < block or vi_size > VMCOREINFO_MAX or vi_offset + vi_size > src.size):
            problems.append(
                _problem(
                    "offset_vmcoreinfo, size_vmcoreinfo",
                    block + KDUMP_SUB_VMCOREINFO,
                    f"a range inside the file (size {src.size})",
                    (vi_offset, vi_size),
                )
            )
        elif vi_size:
            text = _held(src, vi_offset, vi_size, "VMCOREINFO", unchecked)
            info = parse_vmcoreinfo(text) if text is not None else {}
            details["dump_level"] = (_unpack("<i", sub, 8) or (None,))[0]
    if version >= 5 and sub:
        erase = _unpack("<qQ", sub, KDUMP_SUB_ERASEINFO)
        if erase and erase[1] and erase[0] > 0:
            erase_end = erase[0] + erase[1]
    wide = _unpack("<Q", sub, KDUMP_SUB_MAX_MAPNR) if version >= 6 and sub else None
    pages, pages_field = (wide[0], "max_mapnr_64") if wide and wide[0] else (max_mapnr, "max_mapnr")
    if pages == 0:
        problems.append(_problem("max_mapnr", KDUMP_MAX_MAPNR_AT, "a page count > 0", 0))
        return result(False, info)
    # makedumpfile prepare_bitmap2_buffer(), QEMU create_header64(): each bitmap is one bit a page
    # frame, in whole blocks.
    expected_blocks = 2 * _ceil_div(_ceil_div(pages, 8), block)
    if bitmap_blocks != expected_blocks:
        problems.append(
            _problem(
                "bitmap_blocks",
                KDUMP_BITMAP_BLOCKS_AT,
                f"{expected_blocks} (two bitmaps of {pages_field} {pages} bits, each in {block}-byte blocks)",
                bitmap_blocks,
            )
        )
        return result(False if complete is False else None, info)
    if not check_pages:
        return result(complete, info)

    half = bitmap_blocks // 2 * block
    bitmap2 = (1 + sub_blocks) * block + half
    if bitmap2 + half > src.size:
        problems.append(
            _problem(
                "second bitmap", src.size, f"{half} bytes from {bitmap2} to {bitmap2 + half}", "end of file"
            )
        )
        return result(False, info)
    dumpable = 0
    try:
        for at in range(bitmap2, bitmap2 + half, BITMAP_CHUNK):
            chunk = src.read(at, min(BITMAP_CHUNK, bitmap2 + half - at))
            dumpable += int.from_bytes(chunk, "little").bit_count()
    except NotHeld as e:
        unchecked.append(e.problem("second bitmap", UNCHECKED_PAGES))
        return result(complete, info)
    table = bitmap2 + half
    data_start = table + dumpable * PAGE_DESC.size
    details.update(dumpable_pages=dumpable, max_mapnr=pages, page_data_offset=data_start)
    if not dumpable:
        problems.append(
            _problem(
                "second bitmap",
                bitmap2,
                f"a dumpable page (a set bit in {half} bytes)",
                "none: the dump holds no memory",
            )
        )
        return result(False, info)
    if data_start > src.size:
        problems.append(
            _problem(
                "page descriptors",
                src.size,
                f"{dumpable} descriptors of 24 bytes from {table} to {data_start}",
                "end of file",
            )
        )
        return result(False, info)

    data_end, bad = data_start, 0
    for first in range(0, dumpable, PAGE_DESC_CHUNK):
        count = min(PAGE_DESC_CHUNK, dumpable - first)
        try:
            chunk = src.read(table + first * PAGE_DESC.size, count * PAGE_DESC.size)
        except NotHeld as e:
            unchecked.append(e.problem("page descriptors", UNCHECKED_PAGES))
            return result(complete, info)
        for n, (offset, size, _flags, _pflags) in enumerate(PAGE_DESC.iter_unpack(chunk), first):
            if offset < data_start or not 0 < size <= block:
                bad += 1
                if bad <= MAX_LISTED:
                    problems.append(
                        _problem(
                            f"page descriptor {n}",
                            table + n * PAGE_DESC.size,
                            f"data at or after {data_start} of 1 to {block} bytes",
                            f"offset {offset} size {size}",
                        )
                    )
                continue
            data_end = max(data_end, offset + size)
    if bad > MAX_LISTED:
        problems.append(f"page descriptors: {bad - MAX_LISTED} more bad descriptors")
    expected = max(data_end, erase_end)
    details["expected_size"] = expected
    if src.size < expected:
        problems.append(
            _problem(
                "page data",
                src.size,
                f"a file of {expected} bytes (the end of the last page)",
                f"end of file, {expected - src.size} bytes missing",
            )
        )
        complete = False
    elif bad:
        complete = False
    return result(complete, info)


FLAT_RECORDS_AT = 4096  # MAX_SIZE_MDF_HEADER: the signature block, then the records
FLAT_TYPE = 1  # TYPE_FLAT_HEADER
FLAT_VERSION = 1  # VERSION_FLAT_HEADER


# makedumpfile writes one record per buffer it flushes: 714 in the 23 MB Debian fixture, one per
# 32 KiB. A stream of more than one per KiB of its file (and more than 4096) is not one it wrote;
# the walk stops there, so the records kept (24 bytes each) stay under 3% of the file.
FLAT_RECORDS_MIN = 4096
FLAT_BYTES_PER_RECORD = 1024
INT64_MAX = (1 << 63) - 1


class FlatRecords:
    """The records of a flattened stream that carry data, in stream order, in arrays of int64:
    24 bytes a record (a Python object a record cost 16 times the file's own bytes)."""

    def __init__(self) -> None:
        self.at = array("q")  # where its 16-byte header sits in the stream
        self.offset = array("q")  # where its data goes in the rebuilt file
        self.size = array("q")

    def __len__(self) -> int:
        return len(self.at)

    def add(self, at: int, offset: int, size: int) -> None:
        self.at.append(at)
        self.offset.append(offset)
        self.size.append(size)


def _visible(records: FlatRecords) -> Tuple[array, array, array]:
    """The rebuilt file as disjoint ranges in offset order (starts, ends, and where each range's
    first byte sits in the stream), each from the last record written over it.

    A sweep over the records by offset, with a heap of the records covering the sweep point,
    the latest on top: n log n for any overlap, where a search per read could cost every record.
    """
    offset, size, at = records.offset, records.size, records.at
    order = sorted(range(len(records)), key=offset.__getitem__)
    starts, ends, data = array("q"), array("q"), array("q")
    covering: List[Tuple[int, int]] = []  # (-record, its end)
    i = x = 0
    while i < len(order) or covering:
        if not covering:
            x = offset[order[i]]
        while i < len(order) and offset[order[i]] <= x:
            k = order[i]
            heapq.heappush(covering, (-k, offset[k] + size[k]))
            i += 1
        while covering and covering[0][1] <= x:
            heapq.heappop(covering)
        if not covering:
            continue
        k, stop = -covering[0][0], covering[0][1]
        if i < len(order):
            stop = min(stop, offset[order[i]])
        where = at[k] + 16 + x - offset[k]
        if ends and ends[-1] == x and data[-1] + x - starts[-1] == where:
            ends[-1] = stop
        else:
            starts.append(x)
            ends.append(stop)
            data.append(where)
        x = stop
    return starts, ends, data


class FlattenedSource:
    """The kdump-compressed file a flattened stream rebuilds to (``makedumpfile -R``), read in place.

    Later records win where they overlap, as when makedumpfile rewrites its header at the end.
    When the stream was read to its end record (``whole``), ranges no record covers read as
    zeros, like the holes ``-R`` leaves; otherwise a record not read may hold them, and
    reading them raises ``NotHeld``.
    """

    def __init__(self, src: Source, records: FlatRecords, whole: bool):
        self._src = src
        self._whole = whole
        self._starts, self._ends, self._data = _visible(records)
        self._size = self._ends[-1] if self._ends else 0

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size <= 0 or (self._whole and offset >= self._size):
            return b""
        end = min(offset + size, self._size) if self._whole else offset + size
        out = bytearray(end - offset)
        reach = offset
        at = bisect.bisect_right(self._ends, offset)  # the first range that ends after offset
        while at < len(self._starts) and self._starts[at] < end:
            a, b = max(offset, self._starts[at]), min(end, self._ends[at])
            if a > reach and not self._whole:
                break
            try:
                data = self._src.read(self._data[at] + a - self._starts[at], b - a)
            except NotHeld as e:  # said at its place in the rebuilt file
                raise NotHeld(a, b - a, e.why) from e
            out[a - offset : a - offset + len(data)] = data
            reach = b
            at += 1
        if reach < end and not self._whole:
            raise NotHeld(reach, end - reach, "in none of the records read")
        return bytes(out)


def read_flattened(src: Source) -> Inspection:
    """A makedumpfile flattened stream: every record inside the file, then the end record.

    Record headers are read one by one and their data skipped; each record must lie inside the
    file, and in a whole stream the file the records rebuild must fit in the stream (which
    carries every byte of it), so that no hole in it reads as gigabytes of zeros. Memory is
    bounded by ``FLAT_BYTES_PER_RECORD``: a stream of more records than makedumpfile writes is
    a problem. The kdump-compressed file the records rebuild is then read through
    ``FlattenedSource`` for its header and VMCOREINFO, and, when the stream is whole, for its
    bitmap and page descriptors too. When the source holds only
    the first records (the first blocks a guest sends), the stream is judged by the end
    record in its last 16 bytes: makedumpfile writes it after every other record.
    """
    name = "flattened"
    problems: List[str] = []
    unchecked: List[str] = []
    head = _held(src, 0, 32, "signature", unchecked)
    fields = None if head is None else _unpack(">16sqq", head, 0)
    if fields is None or not fields[0].startswith(FLAT_SIGNATURE):
        if head is not None:
            found = "end of file" if fields is None else fields[0].hex()
            problems.append(_problem("signature", 0, "makedumpfile", found))
        return Inspection("", "vmcore", name, None, problems=tuple(problems), unchecked=tuple(unchecked))
    if (fields[1], fields[2]) != (FLAT_TYPE, FLAT_VERSION):
        problems.append(_problem("type, version", 16, (FLAT_TYPE, FLAT_VERSION), (fields[1], fields[2])))
    records = FlatRecords()
    room = min(src.size, INT64_MAX)
    limit = max(FLAT_RECORDS_MIN, src.size // FLAT_BYTES_PER_RECORD)
    at, ended, unread, count = FLAT_RECORDS_AT, False, None, 0
    furthest = (0, 0, 0, 0, 0)  # the end in the rebuilt file, and the record (number, at, offset, size)
    while True:
        try:
            raw = src.read(at, 16)
        except NotHeld as e:
            unread = e
            break
        if len(raw) < 16:
            found = "end of file" if not raw else f"{len(raw)} bytes then end of file"
            problems.append(
                _problem("record header", at, "16 bytes, or the end record (offset = size = -1)", found)
            )
            break
        offset, size = struct.unpack(">qq", raw)
        if offset == -1 and size == -1:
            ended = True
            break
        if offset < 0 or size < 0:
            problems.append(_problem("record header", at, "offset and size >= 0", f"{offset}, {size}"))
            break
        if count == limit:
            problems.append(
                _problem(
                    "record header",
                    at,
                    f"at most {limit} records (one per {FLAT_BYTES_PER_RECORD} bytes of the file, "
                    "as makedumpfile writes them) before the end record",
                    f"record {count}: the records from there on are not read",
                )
            )
            break
        if at + 16 + size > room:
            problems.append(
                _problem(
                    f"record {count} data",
                    at + 16,
                    f"{size} bytes up to {at + 16 + size}",
                    f"end of file at {src.size}",
                )
            )
            break
        if offset > INT64_MAX - size:
            problems.append(_problem("record header", at, "offset + size < 2**63", f"{offset}, {size}"))
            break
        if size:
            records.add(at, offset, size)
            furthest = max(furthest, (offset + size, count, at, offset, size))
        count += 1
        at += 16 + size
    if ended and furthest[0] > src.size:  # else the holes it leaves would read as zeros, any number
        _end, n, n_at, n_offset, n_size = furthest
        problems.append(
            _problem(
                f"record {n}",
                n_at,
                f"a range of the rebuilt file inside the stream's {src.size} bytes (a stream carries "
                "every byte of the file it rebuilds)",
                f"offset {n_offset} size {n_size}",
            )
        )
    defects = bool(problems)
    whole = ended and not defects
    end_record: bool | None = ended
    if unread is not None:
        unchecked.append(unread.problem("record header", "the records from there on are not checked"))
        end_record = _end_record(src, problems, unchecked)
    inner = FlattenedSource(src, records, whole)
    details: Dict[str, object] = {
        "records": count,
        "end_record": end_record,
        "rebuilt_size": inner.size,
    }
    signature = _held(inner, 0, 8, "rebuilt file signature", unchecked)
    if signature is None or not signature.startswith(KDUMP_SIGNATURE):
        if signature is not None:
            found = signature.hex() or "no record at offset 0"
            problems.append(_problem("rebuilt file signature", 0, "KDUMP   ", found))
        return Inspection(
            "",
            "vmcore",
            name,
            False if end_record is False else None,
            problems=tuple(problems),
            unchecked=tuple(unchecked),
        )
    rebuilt = read_kdump(inner, check_pages=whole)
    problems.extend(f"rebuilt file: {p}" for p in rebuilt.problems)
    unchecked.extend(f"rebuilt file: {u}" for u in rebuilt.unchecked)
    complete = False if defects or end_record is False else (rebuilt.complete if end_record else None)
    return replace(
        rebuilt,
        format=name,
        complete=complete,
        problems=tuple(problems),
        details={**rebuilt.details, **details},
        unchecked=tuple(unchecked),
    )


def _end_record(src: Source, problems: List[str], unchecked: List[str]) -> bool | None:
    """Whether the last 16 bytes are the end record (None when the source does not hold them)."""
    at = max(0, src.size - 16)
    tail = _held(src, at, 16, "end record", unchecked)
    if tail is None:
        return None
    if tail != FLAT_END_RECORD:
        problems.append(_problem("end record", at, "16 bytes of 0xff at the end of the file", tail.hex()))
    return tail == FLAT_END_RECORD


# ELF core (the System V gABI): /proc/vmcore as the kernel shows it, or makedumpfile -E.
PT_LOAD = 1
PT_NOTE = 4
PN_XNUM = 0xFFFF
EM_NAMES = {3: "i386", 62: "x86_64", 183: "aarch64", 40: "arm", 21: "ppc64", 22: "s390x", 243: "riscv64"}
NOTE_MAX = 1 << 24
PHDR_CHUNK = 1 << 14  # program headers per read: under 1 MiB


@dataclass(frozen=True)
class ElfLayout:
    """Where an ELF class keeps what the reader needs (offsets into the header and a phdr)."""

    phoff: str
    phoff_at: int
    flags_at: int
    phentsize_at: int
    phnum_at: int
    shoff_at: int
    sh_info_at: int
    phdr: str  # p_type, p_offset, p_filesz in that order once reordered by ``phdr_fields``
    phdr_fields: Tuple[int, int, int]
    header_size: int


ELF_LAYOUTS = {
    1: ElfLayout("I", 28, 36, 42, 44, 32, 28, "IIIIIIII", (0, 1, 4), 52),
    2: ElfLayout("Q", 32, 48, 54, 56, 40, 44, "IIQQQQQQ", (0, 2, 5), 64),
}


def read_elf(src: Source) -> Inspection:
    """An ELF core: ET_CORE, the incomplete flag, every segment inside the file, VMCOREINFO.

    A core is complete only if it holds memory: a PT_LOAD segment with bytes in the file. The
    program header table must fit in the file before it is read, and is read in chunks.
    """
    name = "elf"
    problems: List[str] = []
    unchecked: List[str] = []
    head = _held(src, 0, 64, "ELF header", unchecked)
    if head is None or len(head) < 52:
        if head is not None:
            problems.append(_problem("ELF header", len(head), "52 bytes", "end of file"))
        return Inspection("", "vmcore", name, None, problems=tuple(problems), unchecked=tuple(unchecked))
    layout = ELF_LAYOUTS.get(head[4])
    if head[5] not in (1, 2) or layout is None or len(head) < layout.header_size:
        return Inspection(
            "",
            "unknown",
            name,
            None,
            problems=(_problem("e_ident", 4, "class 1 or 2, data 1 or 2", head[4:6].hex()),),
        )
    end = "<" if head[5] == 1 else ">"
    e_type, e_machine = struct.unpack_from(end + "HH", head, 16)
    machine = EM_NAMES.get(e_machine, str(e_machine))
    if e_type != ET_CORE:
        return Inspection(
            "",
            "unknown",
            name,
            None,
            machine=machine,
            problems=(_problem("e_type", 16, "4 (ET_CORE)", e_type),),
        )
    (phoff,) = struct.unpack_from(end + layout.phoff, head, layout.phoff_at)
    (flags,) = struct.unpack_from(end + "I", head, layout.flags_at)
    phentsize, phnum = struct.unpack_from(end + "HH", head, layout.phentsize_at)
    complete: bool | None = True
    if flags & ELF_FLAG_INCOMPLETE:
        problems.append(_problem("e_flags", layout.flags_at, "incomplete flag 0x1 clear", f"0x{flags:x}"))
        complete = False
    if phnum == PN_XNUM:  # the real count is in section header 0's sh_info
        (shoff,) = struct.unpack_from(end + layout.phoff, head, layout.shoff_at)
        sh_info = _held(src, shoff + layout.sh_info_at, 4, "section header 0 sh_info", unchecked)
        got = None if sh_info is None else _unpack(end + "I", sh_info, 0)
        if got is None:
            if sh_info is not None:
                problems.append(
                    _problem("section header 0 sh_info", shoff + layout.sh_info_at, "e_phnum", "end of file")
                )
            return Inspection(
                "",
                "vmcore",
                name,
                None,
                machine=machine,
                problems=tuple(problems),
                unchecked=tuple(unchecked),
            )
        (phnum,) = got
    entry = struct.calcsize(end + layout.phdr)
    if phentsize != entry:
        problems.append(_problem("e_phentsize", layout.phentsize_at, entry, phentsize))
        return Inspection(
            "", "vmcore", name, None, machine=machine, problems=tuple(problems), unchecked=tuple(unchecked)
        )
    if phoff + phnum * entry > src.size:  # checked before reading: sh_info may say 4 billion
        problems.append(
            _problem("program headers", max(phoff, src.size), f"{phnum} of {entry} bytes", "end of file")
        )
        return Inspection(
            "", "vmcore", name, False, machine=machine, problems=tuple(problems), unchecked=tuple(unchecked)
        )
    info: Dict[str, str] = {}
    notes_held = True
    expected = loads = 0
    phdr = struct.Struct(end + layout.phdr)
    for first in range(0, phnum, PHDR_CHUNK):
        count = min(PHDR_CHUNK, phnum - first)
        table = _held(src, phoff + first * entry, count * entry, "program headers", unchecked)
        if table is None:
            return Inspection(
                "",
                "vmcore",
                name,
                None if complete else False,
                machine=machine,
                problems=tuple(problems),
                unchecked=tuple(unchecked),
            )
        for values in phdr.iter_unpack(table):
            p_type, p_offset, p_filesz = (values[i] for i in layout.phdr_fields)
            expected = max(expected, p_offset + p_filesz)
            if p_type == PT_LOAD and p_filesz > 0:
                loads += 1
            if p_type == PT_NOTE and not info and p_offset + p_filesz <= src.size and p_filesz <= NOTE_MAX:
                notes = _held(src, p_offset, p_filesz, "PT_NOTE", unchecked)
                notes_held = notes is not None
                if notes is not None:
                    info, note_problems = _elf_notes(notes, p_offset, end)
                    problems.extend(note_problems)
    details: Dict[str, object] = {"segments": phnum, "memory_segments": loads, "expected_size": expected}
    if not loads:
        problems.append(
            _problem(
                "program headers",
                phoff,
                "a PT_LOAD segment with bytes in the file (p_filesz > 0)",
                f"none of {phnum} segments: the core holds no memory",
            )
        )
        complete = False
    if src.size < expected:
        problems.append(
            _problem(
                "segments",
                src.size,
                f"a file of {expected} bytes (the end of the last segment)",
                f"end of file, {expected - src.size} bytes missing",
            )
        )
        complete = False
    if not info and notes_held:
        problems.append("PT_NOTE: no VMCOREINFO note")
    return Inspection(
        "",
        "vmcore",
        name,
        complete,
        kernel_release=info.get("OSRELEASE", ""),
        machine=machine,
        crash_time=_crash_time(info, ""),
        problems=tuple(problems),
        details=details,
        unchecked=tuple(unchecked),
    )


def _elf_notes(data: bytes, base: int, end: str) -> Tuple[Dict[str, str], List[str]]:
    """Walk one PT_NOTE segment (4-byte aligned, as Linux writes them) for VMCOREINFO."""
    at = 0
    while at + 12 <= len(data):
        namesz, descsz, _type = struct.unpack_from(end + "III", data, at)
        name_at = at + 12
        desc_at = name_at + (namesz + 3) // 4 * 4
        next_at = desc_at + (descsz + 3) // 4 * 4
        if desc_at + descsz > len(data):
            return {}, [
                _problem(
                    "note",
                    base + at,
                    f"name and desc within the segment ({len(data)} bytes)",
                    f"{namesz}+{descsz}",
                )
            ]
        if data[name_at : name_at + namesz].rstrip(b"\0") == b"VMCOREINFO":
            return parse_vmcoreinfo(data[desc_at : desc_at + descsz]), []
        if namesz == 0 and descsz == 0:
            break
        at = next_at
    return {}, []


# Windows 64-bit kernel dump header (DUMP_HEADER64, 0x2000 bytes), as laid out by rizin's
# librz/bin/format/dmp/dmp_specs.h and 0vercl0k's kdmp-parser: BugCheckCode u32 at 0x38, its
# four u64 parameters from 0x40, DumpType u32 at 0xf98, RequiredDumpSpace i64 at 0xfa0,
# SystemTime FILETIME at 0xfa8. DumpType: 1 full, 2 summary (kernel), 3 header, 4 triage,
# 5 bitmap full, 6 bitmap kernel; a bitmap dump names itself at 0x2000 ("FDMP"/"SDMP" +
# "DUMP"). No Windows producer runs here: the tests use headers built from this layout.
WINDOWS_HEADER_SIZE = 0x2000
WINDOWS_DUMPTYPE_OFFSET = 0xF98
WINDOWS_REQUIRED_OFFSET = 0xFA0
WINDOWS_TIME_OFFSET = 0xFA8
WINDOWS_DUMP_TYPES = {1: "windows-full", 2: "windows-kernel", 5: "windows-full", 6: "windows-kernel"}
WINDOWS_BITMAP_SIGNATURES = {b"FDMPDUMP": "windows-full", b"SDMPDUMP": "windows-kernel"}
FILETIME_UNIX = 116444736000000000  # 100 ns ticks from 1601 to 1970
BUGCHECK_NAMES = {0x80: "NMI_HARDWARE_FAILURE"}


def read_windows(src: Source) -> Inspection:
    """A Windows 64-bit kernel/full dump: bugcheck, dump type, time, and size against RequiredDumpSpace."""
    problems: List[str] = []
    unchecked: List[str] = []
    head = _held(src, 0, WINDOWS_HEADER_SIZE + 8, "DUMP_HEADER64", unchecked)
    if head is None or len(head) < WINDOWS_TIME_OFFSET + 8:
        if head is not None:
            problems.append(
                _problem("DUMP_HEADER64", len(head), f"{WINDOWS_HEADER_SIZE} bytes", "end of file")
            )
        return Inspection(
            "", "windows-dump", "unknown", None, problems=tuple(problems), unchecked=tuple(unchecked)
        )
    (code,) = struct.unpack_from("<I", head, WINDOWS_BUGCHECK_OFFSET)
    params = struct.unpack_from("<4Q", head, 0x40)
    (dump_type,) = struct.unpack_from("<I", head, WINDOWS_DUMPTYPE_OFFSET)
    (required,) = struct.unpack_from("<q", head, WINDOWS_REQUIRED_OFFSET)
    (filetime,) = struct.unpack_from("<q", head, WINDOWS_TIME_OFFSET)
    fmt = WINDOWS_DUMP_TYPES.get(dump_type, "unknown")
    if fmt == "unknown":
        problems.append(_problem("DumpType", WINDOWS_DUMPTYPE_OFFSET, "1, 2, 5 or 6", dump_type))
    elif dump_type in (5, 6):
        signature = head[WINDOWS_HEADER_SIZE : WINDOWS_HEADER_SIZE + 8]
        fmt = WINDOWS_BITMAP_SIGNATURES.get(signature, fmt)
        if signature not in WINDOWS_BITMAP_SIGNATURES:
            problems.append(
                _problem(
                    "bitmap header",
                    WINDOWS_HEADER_SIZE,
                    "FDMPDUMP or SDMPDUMP",
                    signature.hex() or "end of file",
                )
            )
    complete: bool | None = None if fmt == "unknown" else True
    if required <= 0:
        problems.append(_problem("RequiredDumpSpace", WINDOWS_REQUIRED_OFFSET, "a size > 0", required))
        complete = None
    elif src.size < required and complete is not None:
        problems.append(
            _problem(
                "dump data",
                src.size,
                f"a file of {required} bytes (RequiredDumpSpace)",
                f"end of file, {required - src.size} bytes missing",
            )
        )
        complete = False
    name = BUGCHECK_NAMES.get(code, "")
    return Inspection(
        "",
        "windows-dump",
        fmt,
        complete,
        machine="x86_64" if head[0x30:0x32] == b"\x64\x86" else "",
        crash_time=_iso((filetime - FILETIME_UNIX) / 1e7) if filetime > FILETIME_UNIX else "",
        nmi_panic=code == NMI_BUGCHECK,
        panic_message=f"bugcheck 0x{code:08x}"
        + (f" ({name})" if name else "")
        + " ("
        + ", ".join(f"0x{p:x}" for p in params)
        + ")",
        problems=tuple(problems),
        details={"bugcheck": code, "dump_type": dump_type, "required_size": required},
    )


# Text: vmcore-dmesg.txt / dmesg.* as makedumpfile --dump-dmesg writes them, and serial consoles.
KMSG_LINE = re.compile(r"^\[\s*\d+\.\d+\] ", re.M)
LINUX_VERSION = re.compile(r"Linux version (\S+)")
NORMAL_BOOT = re.compile(r"^(?:\[\s*\d+\.\d+\] )?Command line: (?!.*\belfcorehdr=).*$", re.M)
CAPTURE_SAVED = re.compile(r"saving vmcore complete|makedumpfile Completed\.|kdump-tools: saved vmcore")
CAPTURE_FAILED = re.compile(r"saving vmcore failed|makedumpfile Failed|failed to save vmcore")
TEXT_LIMIT = 32 << 20


def _line(text: str, at: int) -> int:
    return text.count("\n", 0, at) + 1


def read_text(text: str, name: str = "") -> Inspection:
    """Kernel messages: a dmesg of the crashed kernel (``kind`` dmesg) or a console log.

    A dmesg is whole when it reaches the panic. A console is judged on the capture: the
    capture kernel booting (``elfcorehdr=``) then "saving vmcore complete" (or makedumpfile
    "Completed.") is complete; a capture failure, the capture kernel's own panic, or a panic
    with no capture kernel after it (kdump did not take over) is not.
    """
    release = LINUX_VERSION.search(text)
    release_text = release.group(1) if release else ""
    kernel_lines = KMSG_LINE.findall(text)
    if not kernel_lines and not PANIC.search(text):
        return Inspection("", "unknown", "text", None, problems=("text: no kernel messages found",))
    lines = [line for line in text.splitlines() if line.strip()]
    base = name.replace("\\", "/").rsplit("/", 1)[-1].lower()
    if "dmesg" in base or len(kernel_lines) == len(lines):
        found = console_findings(text)
        problems = (
            ()
            if found.panic_message
            else ("panic: expected a 'Kernel panic - not syncing' line, found none",)
        )
        return Inspection(
            "",
            "dmesg",
            "text",
            bool(found.panic_message),
            kernel_release=release_text,
            nmi_panic=found.nmi_panic,
            panic_message=found.panic_message,
            problems=problems,
        )
    return _console(text, release_text)


def _console(text: str, release: str) -> Inspection:
    capture = CAPTURE_KERNEL.search(text)
    before = console_findings(text[: capture.start()] if capture else text)
    whole = console_findings(text)
    problems: List[str] = []
    complete: bool | None
    if capture:
        after = NORMAL_BOOT.search(text, capture.end())
        segment_end = after.start() if after else len(text)
        segment = text[capture.start() : segment_end]
        saved, failed, panic = (r.search(segment) for r in (CAPTURE_SAVED, CAPTURE_FAILED, PANIC))
        where = _line(text, capture.start())
        if failed:
            problems.append(
                f"console line {_line(text, capture.start() + failed.start())}: "
                f"capture failed: {failed.group(0)}"
            )
            complete = False
        elif panic:
            problems.append(
                f"console line {_line(text, capture.start() + panic.start())}: the capture kernel panicked: "
                f"{panic.group(1).strip()}"
            )
            complete = False
        elif saved:
            complete = True
        else:
            problems.append(
                f"console line {where}: the capture kernel started, but neither "
                "'saving vmcore complete' nor a failure follows"
            )
            complete = None
    elif before.panic_message or before.nmi_panic:
        panic = PANIC.search(text)
        at = _line(text, panic.start()) if panic else 0
        after = panic.end() if panic else 0
        if NORMAL_BOOT.search(text, after):
            reboot = "a new boot"
        elif "Rebooting in " in text[after:]:
            reboot = "'Rebooting in'"
        else:
            reboot = "nothing"
        problems.append(
            f"console line {at}: panic, then {reboot}: no capture kernel started (kdump did not take over)"
        )
        complete = False
    elif before.dazed:
        problems.append("console: NMI received but the kernel continued ('Dazed and confused'): no panic")
        complete = None
    else:
        problems.append("console: no panic and no capture kernel")
        complete = None
    return Inspection(
        "",
        "console",
        "text",
        complete,
        kernel_release=release,
        nmi_panic=whole.panicked_on_nmi if (capture or whole.panic_message or whole.nmi_received) else None,
        panic_message=before.panic_message,
        problems=tuple(problems),
    )


READERS: List[Tuple[bytes, Callable[[Source], Inspection]]] = [
    (KDUMP_SIGNATURE, read_kdump),
    (FLAT_SIGNATURE, read_flattened),
    (ELF_MAGIC, read_elf),
    (WINDOWS_SIGNATURE, read_windows),
]


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\0" in head:
        return False
    printable = sum(32 <= b < 127 or b in b"\t\n\r\x1b" or b >= 0x80 for b in head)
    return printable >= 0.95 * len(head)


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
    head = _held(src, 0, 4096, "signature", unchecked)
    if head is None:
        return Inspection("", "unknown", "unknown", None, unchecked=tuple(unchecked))
    for magic, reader in READERS:
        if head.startswith(magic):
            return reader(src)
    if not _looks_like_text(head):
        seen = head[:16].hex() or "an empty file"
        return Inspection(
            "",
            "unknown",
            "unknown",
            None,
            problems=(_problem("signature", 0, "a dump magic or kernel text", seen),),
        )
    raw = _held(src, 0, TEXT_LIMIT, "text", unchecked)
    if raw is None:
        return Inspection("", "unknown", "text", None, unchecked=tuple(unchecked))
    found = read_text(raw.decode("utf-8", "replace"), name)
    if src.size > TEXT_LIMIT:
        found = replace(
            found, unchecked=(*found.unchecked, f"text: only the first {TEXT_LIMIT} bytes were read")
        )
    return found


# O_NONBLOCK: a FIFO put in the file's place after the stat opens without waiting for a writer
# (the fstat then refuses it); on a regular file it changes nothing.
OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
)


def inspect_path(path: Path) -> Inspection:
    """Inspect one regular file on disk (symlinks followed), reading only the parts its format
    needs. Never raises: a missing or unreadable path, or one that is not a regular file (a FIFO,
    a device, a directory), is a problem of that path.

    What the path names is checked twice: by ``stat`` before opening, so that no FIFO or device is
    ever opened (opening one can act: a FIFO's writer is let through, a tape rewinds), and by
    ``fstat`` on the opened file, so that what is read is what was checked.
    """
    try:
        kind = _not_regular(os.stat(path).st_mode)
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
