"""Dump files as makedumpfile and Windows write them: the headers real tools read, the rest sparse."""

import os
import struct
from pathlib import Path

__all__ = [
    "WINDOWS_DUMP_TYPES",
    "kdump_header",
    "windows_dump_header",
    "write_flattened",
    "write_kdump_compressed",
    "write_windows_dump",
]

BLOCK = 4096
KDUMP_LZO = 0x2
KDUMP_INCOMPLETE = 0x8


def kdump_header(
    release: str, machine: str, nodename: str, crash_time: float, pages: int, incomplete: bool = False
) -> bytes:
    """The first block of a kdump-compressed file (header version 6)."""
    uts = b"".join(
        s.encode()[:64].ljust(65, b"\0")
        for s in ("Linux", nodename, release, "#1 SMP PREEMPT_DYNAMIC", machine, "(none)")
    )
    head = bytearray(BLOCK)
    head[0:8] = b"KDUMP   "
    struct.pack_into("<i", head, 8, 6)
    head[12 : 12 + len(uts)] = uts
    status = KDUMP_LZO | (KDUMP_INCOMPLETE if incomplete else 0)
    bitmap_blocks = max(2, 2 * -(-pages // (BLOCK * 8)))
    struct.pack_into(
        "<qqIiiIIIIIii",
        head,
        408,
        int(crash_time),
        int(crash_time % 1 * 1e6),
        status,
        BLOCK,
        1,
        bitmap_blocks,
        pages,
        pages,
        0,
        pages // 2,
        0,
        2,
    )
    return bytes(head)


def _sparse(path: Path, head: bytes, size: int, tail: bytes, mtime: float) -> None:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(max(size, len(head) + len(tail)))
        if tail:
            f.seek(-len(tail), os.SEEK_END)
            f.write(tail)
    os.utime(path, (mtime, mtime))


def write_kdump_compressed(path: Path, header: bytes, size: int, mtime: float) -> None:
    """A kdump-compressed dump of ``size`` bytes (sparse after the header)."""
    _sparse(path, header, size, b"", mtime)


def write_flattened(path: Path, header: bytes, size: int, mtime: float, complete: bool = True) -> None:
    """A makedumpfile flattened dump: signature block, records, and the end record when complete."""
    signature = bytearray(BLOCK)
    signature[0:12] = b"makedumpfile"
    struct.pack_into(">qq", signature, 16, 1, 1)
    record = struct.pack(">qq", 0, len(header)) + header
    _sparse(path, bytes(signature) + record, size, b"\xff" * 16 if complete else b"", mtime)


# Windows 64-bit dump header (DUMP_HEADER64, 0x2000 bytes; WinDbg's and kdmp-parser's layout):
# "PAGE" "DU64" at 0, MajorVersion 0xf (free build) and MinorVersion (the build) at 8 and 0xc,
# MachineImageType at 0x30 (0x8664), NumberProcessors at 0x34, BugCheckCode at 0x38, four u64
# parameters from 0x40, DumpType at 0xf98, RequiredDumpSpace at 0xfa0, SystemTime (FILETIME)
# at 0xfa8. Fields Windows does not set keep the "PAGE" fill. Since Windows 8 a complete or
# kernel dump is a bitmap dump (DumpType 5 or 6) whose own header at 0x2000 starts
# "FDMP"/"SDMP" "DUMP", then FirstPage at +0x20 and TotalPresentPages/Pages at +0x28/+0x30.
WINDOWS_HEADER = 0x2000
WINDOWS_BITMAP_HEADER = 0x38
WINDOWS_DUMP_TYPES = {"complete": (5, b"FDMP"), "kernel": (6, b"SDMP")}
FILETIME_UNIX = 116444736000000000  # 100 ns ticks from 1601 to 1970
PAGE = 4096


def windows_dump_header(
    dump_type: str,
    build: int,
    processors: int,
    bugcheck: int,
    parameters: tuple[int, int, int, int],
    crash_time: float,
    pages: int,
    present: int,
) -> bytes:
    """The DUMP_HEADER64 and bitmap header of a ``complete`` or ``kernel`` memory dump whose bitmap
    covers ``pages`` pages of which ``present`` are in the file; RequiredDumpSpace is the size
    of that file: the headers and bitmap rounded up to a page, then the pages."""
    if dump_type not in WINDOWS_DUMP_TYPES:
        raise ValueError(f"dump type {dump_type!r}: valid {sorted(WINDOWS_DUMP_TYPES)}")
    code, signature = WINDOWS_DUMP_TYPES[dump_type]
    head = bytearray(b"PAGE" * (WINDOWS_HEADER // 4)) + bytearray(WINDOWS_BITMAP_HEADER)
    head[0:8] = b"PAGEDU64"
    struct.pack_into("<II", head, 0x08, 0xF, build)
    struct.pack_into("<II", head, 0x30, 0x8664, processors)
    struct.pack_into("<II4Q", head, 0x38, bugcheck, 0, *parameters)
    first_page = -(-(len(head) + -(-pages // 8)) // PAGE) * PAGE
    required = first_page + present * PAGE
    filetime = int(crash_time * 1e7) + FILETIME_UNIX
    struct.pack_into("<IIqq", head, 0xF98, code, 0, required, filetime)
    struct.pack_into("<4s4s", head, WINDOWS_HEADER, signature, b"DUMP")
    struct.pack_into("<qqq", head, WINDOWS_HEADER + 0x20, first_page, present, pages)
    return bytes(head)


def write_windows_dump(path: Path, header: bytes, mtime: float) -> int:
    """MEMORY.DMP as ``header`` sizes it (RequiredDumpSpace): the headers, then sparse pages.
    Returns the size."""
    (size,) = struct.unpack_from("<q", header, 0xFA0)
    _sparse(path, header, size, b"", mtime)
    return size
