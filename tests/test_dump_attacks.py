"""Attacks on ``inspect`` and the dump readers (issue 18, item 5), each from the real fixtures.

A FIFO or device given as a dump, a header that declares a huge bitmap in a sparse file, a stream
of a million 1-byte records, a program header count of four billion: each must end at once in a
named problem, reading a bounded number of bytes into bounded memory. A dump that holds no memory
(no dumpable page, no PT_LOAD with bytes) is not complete.
"""

import json
import os
import struct
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Callable

import pytest
from test_dumps import fixture_extents, materialise, span

from chaosec2panic.dumps import (
    FileSource,
    Inspection,
    Source,
    SparseSource,
    inspect_path,
    inspect_source,
)
from chaosec2panic.inspect_cmd import run

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


class Budget:
    """A source that counts what the readers take, and fails the test the moment they ask for
    more than it allows (so that an unbounded read fails fast instead of running for minutes)."""

    def __init__(self, src: Source, total: int = 4 << 20):
        self.src, self.total, self.taken, self.reads = src, total, 0, 0

    @property
    def size(self) -> int:
        return self.src.size

    def read(self, offset: int, size: int) -> bytes:
        assert self.taken + size <= self.total, f"a reader asked for {size} bytes at {offset}"
        data = self.src.read(offset, size)
        self.taken += len(data)
        self.reads += 1
        return data


def patched(name: str, directory: Path, patches: dict[int, bytes], size: int | None = None) -> Path:
    """A fixture written as its file, with bytes replaced at their offsets and, if given, a new
    (sparse) size."""
    path = materialise(name, directory)
    with open(path, "r+b") as f:
        if size is not None:
            f.truncate(size)
        for at, data in patches.items():
            f.seek(at)
            f.write(data)
    return path


def judged(path: Path, budget: int = 4 << 20) -> tuple[Inspection, Budget]:
    with open(path, "rb") as f:
        counting = Budget(FileSource(f), budget)
        return inspect_source(counting, str(path)), counting


# --- Not a regular file: refused at once, without waiting for a writer --------------------------


def in_time(call: Callable[[], Inspection], fifo: Path | None, seconds: float = 10) -> Inspection:
    """``call()`` in a thread; if it is still blocked after ``seconds`` (opening a FIFO that has no
    writer), the FIFO is opened for writing to let it go, and the test fails."""
    done: list[Inspection] = []
    worker = threading.Thread(target=lambda: done.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(seconds)
        pytest.fail(f"still blocked after {seconds} s")
    return done[0]


def refusal(kind: str, what: str = "copy what it holds to a file") -> tuple[str, ...]:
    return (f"path: {kind}, not a regular file: only dump files are read ({what})",)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "vmcore"
    os.mkfifo(path)
    return path


def test_a_fifo_is_refused_at_once_not_waited_on(fifo):
    found = in_time(lambda: inspect_path(fifo), fifo)
    assert (found.kind, found.format, found.complete, found.problems) == (
        "unknown",
        "unknown",
        None,
        refusal("a FIFO"),
    )


def test_a_symlink_to_a_fifo_is_refused_as_the_fifo(fifo, tmp_path):
    link = tmp_path / "vmcore-latest"
    link.symlink_to(fifo)
    found = in_time(lambda: inspect_path(link), fifo)
    assert (found.path, found.complete, found.problems) == (str(link), None, refusal("a FIFO"))


@pytest.mark.parametrize(
    ("path", "problems"),
    [
        ("/dev/null", refusal("a character device")),
        ("/dev/zero", refusal("a character device")),
        (".", refusal("a directory", "name a dump file in it")),
    ],
)
def test_a_device_or_a_directory_is_refused(tmp_path, path, problems):
    target = tmp_path if path == "." else Path(path)
    found = in_time(lambda: inspect_path(target), None)
    assert (found.kind, found.complete, found.problems) == ("unknown", None, problems)


def test_a_file_source_refuses_an_open_fifo(fifo):
    from chaosec2panic.dumps import NotRegularFile

    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f, pytest.raises(NotRegularFile, match="a FIFO, not a regular file"):
        FileSource(f)


def test_the_inspect_command_on_a_fifo_exits_1_at_once(fifo, tmp_path):
    """The CLI as a user runs it, from this tree, in a process that the timeout can end."""
    whole = materialise("elf", tmp_path)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "chaosec2panic", "inspect", "--json", str(fifo), str(whole)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("chaosec2panic inspect still waiting on the FIFO after 30 s")
    assert done.returncode == 1, done.stderr
    fifo_found, elf_found = json.loads(done.stdout)
    assert (fifo_found["complete"], fifo_found["problems"]) == (None, list(refusal("a FIFO")))
    assert (elf_found["complete"], elf_found["problems"]) == (True, [])


# --- Sizes the header declares, checked against its own limits before they are read ------------

KDUMP_BITMAP_BLOCKS = 436  # the real dump: 6 (two bitmaps of 98269 bits in 4096-byte blocks)


def test_a_29_gib_bitmap_in_a_sparse_file_is_a_named_problem_not_a_29_gib_read(tmp_path):
    """The real header, its bitmap_blocks raised to 29 GiB, in a sparse file big enough to hold
    it: the bitmaps must be the two of max_mapnr bits, so nothing past the header is read."""
    declared = 29 * GIB // 4096
    path = patched(
        "kdump-compressed", tmp_path, {KDUMP_BITMAP_BLOCKS: struct.pack("<I", declared)}, size=30 * GIB
    )
    found, budget = judged(path)
    assert (found.format, found.complete) == ("kdump-compressed", None)
    assert found.problems == (
        f"bitmap_blocks at offset 436: expected 6 (two bitmaps of max_mapnr_64 98269 bits, each in "
        f"4096-byte blocks), found {declared}",
    )
    assert found.kernel_release == "6.1.0-57-amd64"  # the header and VMCOREINFO are still read
    assert budget.taken < 16 << 10
    assert run([str(path)], as_json=True)[0] == 1


@pytest.mark.parametrize(
    ("patch", "problem"),
    [
        (
            {KDUMP_BITMAP_BLOCKS: struct.pack("<I", 8)},
            "bitmap_blocks at offset 436: expected 6 (two bitmaps of max_mapnr_64 98269 bits, each in "
            "4096-byte blocks), found 8",
        ),
        (
            {4096 + 96: struct.pack("<Q", 10**9)},  # max_mapnr_64, as the sub-header of version 6 says
            "bitmap_blocks at offset 436: expected 61036 (two bitmaps of max_mapnr_64 1000000000 bits, "
            "each in 4096-byte blocks), found 6",
        ),
        (
            {440: struct.pack("<I", 0), 4096 + 96: struct.pack("<Q", 0)},
            "max_mapnr at offset 440: expected a page count > 0, found 0",
        ),
    ],
)
def test_bitmap_blocks_and_max_mapnr_must_agree(tmp_path, patch, problem):
    found, _ = judged(patched("kdump-compressed", tmp_path, patch))
    assert found.complete is not True and found.problems == (problem,)


def test_the_first_blocks_a_guest_sends_show_a_bitmap_that_disagrees(tmp_path):
    """The crash_dumps probe judges the same header from the first blocks: the same problem."""
    parts, _ = fixture_extents("kdump-compressed")
    head = bytearray(span(parts, 0, 65536))
    struct.pack_into("<I", head, KDUMP_BITMAP_BLOCKS, 29 * GIB // 4096)
    found = inspect_source(SparseSource(40 * GIB, [(0, bytes(head))]), "/var/crash/x/vmcore")
    assert found.complete is None and found.problems[0].startswith("bitmap_blocks at offset 436: expected 6")


# --- A flattened stream: records against the file, memory bounded whatever their count ----------


def one_byte_records() -> bytes:
    """The real flattened stream with the data of every record it holds (header, VMCOREINFO,
    bitmaps, page descriptors: 527,824 bytes) written again as 1-byte records."""
    parts, _ = fixture_extents("flattened")
    out = bytearray(span(parts, 0, 4096))
    at = 4096
    while True:
        offset, size = struct.unpack(">qq", span(parts, at, at + 16))
        if offset == -1:
            break
        if offset + size <= 531776:  # the records whose data the fixture holds
            data = span(parts, at + 16, at + 16 + size)
            out += b"".join(struct.pack(">qq", offset + k, 1) + data[k : k + 1] for k in range(size))
        at += 16 + size
    return bytes(out + b"\xff" * 16)


def test_a_million_1_byte_records_cost_a_bounded_memory(tmp_path):
    stream = one_byte_records()
    path = tmp_path / "vmcore.flat"
    path.write_bytes(stream)
    tracemalloc.start()
    try:
        found, budget = judged(path, budget=4 * len(stream))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(stream) // 2, f"peak {peak} bytes for a file of {len(stream)}"
    limit = len(stream) // 1024
    assert (found.format, found.complete) == ("flattened", False)
    assert found.problems[0] == (
        f"record header at offset {4096 + 17 * limit}: expected at most {limit} records (one per 1024 "
        f"bytes of the file, as makedumpfile writes them) before the end record, found record {limit}: "
        "the records from there on are not read"
    )
    assert budget.reads < 3 * limit


def test_a_record_past_the_end_of_what_the_stream_carries_is_a_problem(tmp_path):
    """A whole stream with one stray 1-byte record at 1 TiB: its rebuilt file would have a hole
    of 1 TiB, which would read as zeros, as many as a header asks for."""
    _, size = fixture_extents("flattened")
    end = size - 16
    stray = struct.pack(">qq", 1 << 40, 1) + b"\0" + b"\xff" * 16
    path = patched("flattened", tmp_path, {end: stray}, size=end + len(stray))
    found, _ = judged(path)
    assert found.complete is False
    assert found.problems == (
        f"record 714 at offset {end}: expected a range of the rebuilt file inside the stream's "
        f"{end + len(stray)} bytes (a stream carries every byte of the file it rebuilds), "
        f"found offset {1 << 40} size 1",
    )


def test_a_later_record_still_wins_over_an_earlier_one(tmp_path):
    """makedumpfile may write its header again at the end: that one is the header read."""
    _, size = fixture_extents("flattened")
    end = size - 16
    rewrite = struct.pack(">qq", 424, 4) + struct.pack("<I", 0xA) + b"\xff" * 16  # status: lzo | incomplete
    found, _ = judged(patched("flattened", tmp_path, {end: rewrite}, size=end + len(rewrite)))
    assert found.complete is False
    assert found.problems == (
        "rebuilt file: status at offset 424: expected incomplete flag 0x8 clear, found 0xa",
    )
    assert found.details["records"] == 715 and found.kernel_release == "6.1.0-57-amd64"


# --- Complete only for a dump that holds memory --------------------------------------------------

NO_PAGE = (
    "second bitmap at offset 20480: expected a dumpable page (a set bit in 12288 bytes), "
    "found none: the dump holds no memory"
)


def test_a_kdump_whose_bitmap_marks_no_page_is_not_complete(tmp_path):
    path = patched("kdump-compressed", tmp_path, {20480: bytes(12288)})
    found = inspect_path(path)
    assert (found.complete, found.problems) == (False, (NO_PAGE,))
    assert found.details["dumpable_pages"] == 0
    code, out = run([str(path)], as_json=False)
    assert code == 1 and "  vmcore (kdump-compressed): INCOMPLETE" in out.splitlines()


def test_the_first_blocks_of_a_kdump_with_no_page_are_not_complete():
    """As the crash_dumps probe judges it, from the first 64 KiB the guest sends."""
    parts, size = fixture_extents("kdump-compressed")
    head = bytearray(span(parts, 0, 65536))
    head[20480:32768] = bytes(12288)
    found = inspect_source(SparseSource(size, [(0, bytes(head))]), "/var/crash/x/vmcore")
    assert (found.complete, found.problems) == (False, (NO_PAGE,))


def test_a_flattened_stream_whose_bitmap_marks_no_page_is_not_complete(tmp_path):
    """The real stream's second bitmap record (rebuilt offset 20480, 12284 bytes) zeroed."""
    parts, _ = fixture_extents("flattened")
    at = 4096
    while struct.unpack(">q", span(parts, at, at + 8))[0] != 20480:
        at += 16 + struct.unpack(">q", span(parts, at + 8, at + 16))[0]
    found = inspect_path(patched("flattened", tmp_path, {at + 16: bytes(12284)}))
    assert (found.complete, found.problems) == (False, (f"rebuilt file: {NO_PAGE}",))


NO_LOAD = (
    "program headers at offset 64: expected a PT_LOAD segment with bytes in the file (p_filesz > 0), "
    "found none of {} segments: the core holds no memory"
)


@pytest.mark.parametrize(
    ("patch", "phnum"),
    [
        ({56: struct.pack("<H", 1)}, 1),  # e_phnum 1: the PT_NOTE alone
        ({64 + 56 + 32: struct.pack("<Q", 0)}, 2),  # the PT_LOAD's p_filesz 0
        ({64 + 56: struct.pack("<I", 0)}, 2),  # the PT_LOAD made PT_NULL
    ],
)
def test_an_elf_core_with_no_memory_segment_is_not_complete(tmp_path, patch, phnum):
    path = patched("elf", tmp_path, patch)
    found = inspect_path(path)
    assert (found.complete, found.problems) == (False, (NO_LOAD.format(phnum),))
    assert found.kernel_release == "6.1.0-57-amd64"
    assert run([str(path)], as_json=True)[0] == 1
    # As the crash_dumps probe judges it, from the first 64 KiB the guest sends.
    with open(path, "rb") as f:
        first_blocks = SparseSource(path.stat().st_size, [(0, f.read(65536))])
    assert (inspect_source(first_blocks).complete, inspect_source(first_blocks).problems) == (
        False,
        (NO_LOAD.format(phnum),),
    )


def test_an_elf_program_header_count_of_4_billion_is_checked_before_it_is_read(tmp_path):
    """e_phnum PN_XNUM, section header 0's sh_info 0xffffffff, in a sparse 1 GiB file: the table
    it declares (240 GB) does not fit, and no read asks for it."""
    shoff = 8192
    path = patched(
        "elf",
        tmp_path,
        {
            56: struct.pack("<H", 0xFFFF),
            40: struct.pack("<Q", shoff),
            shoff + 44: struct.pack("<I", 0xFFFFFFFF),
        },
        size=GIB,
    )
    found, budget = judged(path)
    assert (found.complete, found.problems) == (
        False,
        ("program headers at offset 1073741824: expected 4294967295 of 56 bytes, found end of file",),
    )
    assert budget.taken < 16 << 10
