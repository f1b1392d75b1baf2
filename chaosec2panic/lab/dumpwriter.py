"""Dump files as makedumpfile writes them: the headers real tools read, the rest sparse."""

import os
import struct
from pathlib import Path

__all__ = ["kdump_header", "write_flattened", "write_kdump_compressed"]

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
