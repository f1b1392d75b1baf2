"""makedumpfile's formats: kdump-compressed, and flattened (its -F stream)."""

import bisect
import heapq
import struct
from array import array
from dataclasses import replace
from typing import Dict, List, Tuple

from .source import (
    Inspection,
    NotHeld,
    Source,
    ceil_div,
    crash_time,
    cstr,
    held,
    parse_vmcoreinfo,
    problem,
    unpack,
    utc_iso,
)

KDUMP_SIGNATURE = b"KDUMP   "
FLAT_SIGNATURE = b"makedumpfile"
FLAT_END_RECORD = b"\xff" * 16
KDUMP_STATUS_INCOMPLETE = 0x8
KDUMP_COMPRESSION = {0x1: "zlib", 0x2: "lzo", 0x4: "snappy", 0x20: "zstd"}
UTS_FIELD = 65


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
    head = held(src, 0, KDUMP_HEADER_SIZE, "header", unchecked)
    fields = None if head is None else unpack("<8si390s6xqqIiiIIIIIIi", head, 0)
    if fields is None:
        if head is not None:
            problems.append(problem("header", len(head), f"{KDUMP_HEADER_SIZE} bytes", "end of file"))
        return Inspection("", "vmcore", name, None, problems=tuple(problems), unchecked=tuple(unchecked))
    _sig, version, uts, seconds, _usec, status, block, sub_blocks, bitmap_blocks, max_mapnr = fields[:10]
    release = cstr(uts, 2 * UTS_FIELD, UTS_FIELD)
    machine = cstr(uts, 4 * UTS_FIELD, UTS_FIELD)
    compression = ",".join(n for bit, n in KDUMP_COMPRESSION.items() if status & bit) or "none"
    details: Dict[str, object] = {"header_version": version, "compression": compression}
    complete: bool | None = True
    if status & KDUMP_STATUS_INCOMPLETE:
        problems.append(problem("status", 424, "incomplete flag 0x8 clear", f"0x{status:x}"))
        complete = False
    header_time = utc_iso(seconds)
    if not header_time:
        problems.append(problem("timestamp", 408, "seconds since 1970", seconds))

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
            crash_time=crash_time(info, header_time),
            problems=tuple(problems),
            details=details,
            unchecked=tuple(unchecked),
        )

    if block < 512 or block > 1 << 20 or block & (block - 1):
        problems.append(problem("block_size", 428, "a power of two from 512 to 1 MiB", block))
        return result(None)
    if sub_blocks < 0 or bitmap_blocks == 0 or bitmap_blocks % 2:
        problems.append(
            problem(
                "sub_hdr_size, bitmap_blocks", 432, ">= 0 and an even count > 0", (sub_blocks, bitmap_blocks)
            )
        )
        return result(None)

    sub = held(src, block, KDUMP_SUB_HEADER_SIZE, "sub-header", unchecked) if sub_blocks else b""
    info: Dict[str, str] = {}
    erase_end = 0
    if version >= 3 and sub_blocks and sub is not None:
        where = unpack("<qQ", sub, KDUMP_SUB_VMCOREINFO)
        if where is None:
            problems.append(
                problem("sub-header", block + len(sub), "offset_vmcoreinfo and size", "end of file")
            )
            return result(False)
        vi_offset, vi_size = where
        if vi_size and (vi_offset < block or vi_size > VMCOREINFO_MAX or vi_offset + vi_size > src.size):
            problems.append(
                problem(
                    "offset_vmcoreinfo, size_vmcoreinfo",
                    block + KDUMP_SUB_VMCOREINFO,
                    f"a range inside the file (size {src.size})",
                    (vi_offset, vi_size),
                )
            )
        elif vi_size:
            text = held(src, vi_offset, vi_size, "VMCOREINFO", unchecked)
            info = parse_vmcoreinfo(text) if text is not None else {}
            details["dump_level"] = (unpack("<i", sub, 8) or (None,))[0]
    if version >= 5 and sub:
        erase = unpack("<qQ", sub, KDUMP_SUB_ERASEINFO)
        if erase and erase[1] and erase[0] > 0:
            erase_end = erase[0] + erase[1]
    wide = unpack("<Q", sub, KDUMP_SUB_MAX_MAPNR) if version >= 6 and sub else None
    pages, pages_field = (wide[0], "max_mapnr_64") if wide and wide[0] else (max_mapnr, "max_mapnr")
    if pages == 0:
        problems.append(problem("max_mapnr", KDUMP_MAX_MAPNR_AT, "a page count > 0", 0))
        return result(False, info)
    # makedumpfile prepare_bitmap2_buffer(), QEMU create_header64(): each bitmap is one bit a page
    # frame, in whole blocks.
    expected_blocks = 2 * ceil_div(ceil_div(pages, 8), block)
    if bitmap_blocks != expected_blocks:
        problems.append(
            problem(
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
            problem(
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
            problem(
                "second bitmap",
                bitmap2,
                f"a dumpable page (a set bit in {half} bytes)",
                "none: the dump holds no memory",
            )
        )
        return result(False, info)
    if data_start > src.size:
        problems.append(
            problem(
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
                        problem(
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
            problem(
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
    head = held(src, 0, 32, "signature", unchecked)
    fields = None if head is None else unpack(">16sqq", head, 0)
    if fields is None or not fields[0].startswith(FLAT_SIGNATURE):
        if head is not None:
            found = "end of file" if fields is None else fields[0].hex()
            problems.append(problem("signature", 0, "makedumpfile", found))
        return Inspection("", "vmcore", name, None, problems=tuple(problems), unchecked=tuple(unchecked))
    if (fields[1], fields[2]) != (FLAT_TYPE, FLAT_VERSION):
        problems.append(problem("type, version", 16, (FLAT_TYPE, FLAT_VERSION), (fields[1], fields[2])))
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
                problem("record header", at, "16 bytes, or the end record (offset = size = -1)", found)
            )
            break
        offset, size = struct.unpack(">qq", raw)
        if offset == -1 and size == -1:
            ended = True
            break
        if offset < 0 or size < 0:
            problems.append(problem("record header", at, "offset and size >= 0", f"{offset}, {size}"))
            break
        if count == limit:
            problems.append(
                problem(
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
                problem(
                    f"record {count} data",
                    at + 16,
                    f"{size} bytes up to {at + 16 + size}",
                    f"end of file at {src.size}",
                )
            )
            break
        if offset > INT64_MAX - size:
            problems.append(problem("record header", at, "offset + size < 2**63", f"{offset}, {size}"))
            break
        if size:
            records.add(at, offset, size)
            furthest = max(furthest, (offset + size, count, at, offset, size))
        count += 1
        at += 16 + size
    if ended and furthest[0] > src.size:  # else the holes it leaves would read as zeros, any number
        _end, n, n_at, n_offset, n_size = furthest
        problems.append(
            problem(
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
    signature = held(inner, 0, 8, "rebuilt file signature", unchecked)
    if signature is None or not signature.startswith(KDUMP_SIGNATURE):
        if signature is not None:
            found = signature.hex() or "no record at offset 0"
            problems.append(problem("rebuilt file signature", 0, "KDUMP   ", found))
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
    tail = held(src, at, 16, "end record", unchecked)
    if tail is None:
        return None
    if tail != FLAT_END_RECORD:
        problems.append(problem("end record", at, "16 bytes of 0xff at the end of the file", tail.hex()))
    return tail == FLAT_END_RECORD
