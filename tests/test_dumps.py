"""Dump headers and console text, from bytes laid out as the producers write them."""

import gzip
import json
import random
import struct
from pathlib import Path

import pytest

from chaosec2panic.dumps import (
    BytesSource,
    FileSource,
    NotHeld,
    SparseSource,
    console_findings,
    inspect_path,
    inspect_source,
    read_elf,
    read_flattened,
    read_kdump,
    read_text,
    read_windows,
)
from chaosec2panic.dumps.text import TEXT_LIMIT
from chaosec2panic.lab.dumpwriter import kdump_header

PANIC_CONSOLE = """[ 3600.216325] Uhhuh. NMI received for unknown reason 3d on CPU 0.
[ 3600.216325] Do you have a strange power saving mode enabled?
[ 3600.216325] Kernel panic - not syncing: NMI: Not continuing
[ 3600.216325] Starting crashdump kernel...
[    0.000000] Command line: console=ttyS0 irqpoll nr_cpus=1 reset_devices elfcorehdr=179572K
"""


def test_console_nmi_panic_and_capture():
    found = console_findings(PANIC_CONSOLE)
    assert found.nmi_received and found.nmi_panic and found.capture_started
    assert found.panic_message == "NMI: Not continuing" and not found.kdump_skipped


def test_console_dazed_is_no_panic():
    found = console_findings(
        "Uhhuh. NMI received for unknown reason 3d on CPU 0.\nDazed and confused, but trying to continue\n"
    )
    assert found.nmi_received and found.dazed and not found.nmi_panic and found.panic_message == ""


def test_console_other_panic_is_not_the_nmi():
    found = console_findings("Kernel panic - not syncing: Fatal exception\nRebooting in 10 seconds..\n")
    assert not found.nmi_panic and found.panic_message == "Fatal exception" and found.kdump_skipped


REAL = Path(__file__).parent / "fixtures" / "real"


def real(name: str) -> bytes:
    return (REAL / name).read_bytes()


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        (
            "console-kdump.log",
            {
                "nmi_received": False,
                "nmi_panic": False,
                "capture_started": True,
                "dazed": False,
                "kdump_skipped": False,
                "panicked_on_nmi": True,
            },
        ),
        (
            "console-nmi-ignored.log",
            {
                "nmi_received": True,
                "nmi_panic": False,
                "capture_started": False,
                "dazed": True,
                "kdump_skipped": False,
                "panicked_on_nmi": False,
            },
        ),
        (
            "console-hang.log",
            {
                "nmi_received": True,
                "nmi_panic": True,
                "capture_started": False,
                "dazed": False,
                "kdump_skipped": True,
                "panicked_on_nmi": True,
            },
        ),
        (
            "console-small-crashkernel-64M.log",
            {
                "nmi_received": True,
                "nmi_panic": True,
                "capture_started": False,
                "dazed": False,
                "panicked_on_nmi": True,
            },
        ),
        (
            "console-small-crashkernel-80M.log",
            {"capture_started": True, "nmi_panic": False, "panicked_on_nmi": True},
        ),
    ],
)
def test_real_consoles(log, expected):
    found = console_findings((REAL / log).read_text(errors="replace")).to_dict()
    assert {k: found[k] for k in expected} == expected


def test_real_capture_kernel_out_of_memory_panic_is_not_the_nmi():
    found = console_findings((REAL / "console-small-crashkernel-80M.log").read_text(errors="replace"))
    assert found.panic_message == "System is deadlocked on memory"


def test_real_vmcore_dmesg_shows_the_nmi_panic():
    found = console_findings((REAL / "vmcore-dmesg.txt").read_text())
    assert found.nmi_received and found.nmi_panic and found.panic_message == "NMI: Not continuing"


# --- Whole files: the file-level readers, on real bytes rebuilt as sparse files ---------------

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "dumps.json").read_text())
KDUMP_SIZE, FLAT_SIZE = 23283460, 23246830


def fixture_extents(name: str) -> tuple[list[tuple[int, bytes]], int]:
    """The stored (offset, bytes) extents of a fixture and its size, variants applied."""
    spec = MANIFEST[name]
    if "from" in spec:
        parts, size = fixture_extents(spec["from"])
    else:
        raw = gzip.decompress((FIXTURES / spec["extents"]).read_bytes())
        parts, at = [], 0
        while at < len(raw):
            offset, length = struct.unpack_from("<QQ", raw, at)
            parts.append((offset, raw[at + 16 : at + 16 + length]))
            at += 16 + length
        size = spec["size"]
    size = spec.get("size", size)
    for where, hexbytes in spec.get("patch", {}).items():
        at, new = int(where), bytes.fromhex(hexbytes)
        parts = [
            (o, d[: at - o] + new + d[at - o + len(new) :]) if o <= at < o + len(d) else (o, d)
            for o, d in parts
        ]
    return parts, size


def materialise(name: str, directory: Path) -> Path:
    """Write a fixture as the file it came from: its real bytes at their offsets, holes elsewhere."""
    parts, size = fixture_extents(name)
    path = directory / name
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in parts:
            if offset < size:
                f.seek(offset)
                f.write(data[: size - offset])
    return path


def head_bytes(name: str) -> bytes:
    """The first extent of a fixture, cut to its size: what an in-memory parser sees."""
    parts, size = fixture_extents(name)
    return parts[0][1][:size]


def test_real_kdump_compressed_file_is_whole(tmp_path):
    found = inspect_path(materialise("kdump-compressed", tmp_path))
    assert (found.kind, found.format, found.complete, found.problems) == (
        "vmcore",
        "kdump-compressed",
        True,
        (),
    )
    assert (found.kernel_release, found.machine, found.crash_time) == (
        "6.1.0-57-amd64",
        "x86_64",
        "2026-11-29T12:09:10Z",
    )
    assert found.details["dumpable_pages"] == 20821 and found.details["page_data_offset"] == 532472
    assert found.details["expected_size"] == KDUMP_SIZE and found.details["dump_level"] == 31


@pytest.mark.parametrize(
    ("name", "problems"),
    [
        (
            "kdump-compressed-cut-in-page-data",
            [
                "page data at offset 20000000: expected a file of 23283460 bytes (the end of the last page), "
                "found end of file, 3283460 bytes missing"
            ],
        ),
        (
            "kdump-compressed-cut-in-descriptors",
            [
                "page descriptors at offset 100000: expected 20821 descriptors of 24 bytes from 32768 to "
                "532472, found end of file"
            ],
        ),
        (
            "kdump-compressed-incomplete-flag",
            ["status at offset 424: expected incomplete flag 0x8 clear, found 0xa"],
        ),
    ],
)
def test_real_kdump_compressed_cut_or_flagged(tmp_path, name, problems):
    found = inspect_path(materialise(name, tmp_path))
    assert found.complete is False and list(found.problems) == problems
    assert found.kernel_release == "6.1.0-57-amd64"


def test_kdump_cut_in_the_second_bitmap(tmp_path):
    found = read_kdump(BytesSource(head_bytes("kdump-compressed")[:20000]))
    assert found.complete is False
    assert found.problems == (
        "second bitmap at offset 20000: expected 12288 bytes from 20480 to 32768, found end of file",
    )


def test_kdump_bad_page_descriptor_named_by_index_and_offset(tmp_path):
    path = materialise("kdump-compressed", tmp_path)
    with open(path, "r+b") as f:
        f.seek(32768 + 24 * 7)
        f.write(struct.pack("<qI", 5, 4096))
    found = inspect_path(path)
    assert found.complete is False
    assert found.problems == (
        "page descriptor 7 at offset 32936: expected data at or after 532472 of 1 to 4096 bytes, "
        "found offset 5 size 4096",
    )


def test_kdump_bad_block_size_and_vmcoreinfo_range():
    head = bytearray(head_bytes("kdump-compressed"))
    struct.pack_into("<i", head, 428, 1000)
    assert read_kdump(BytesSource(bytes(head))).problems == (
        "block_size at offset 428: expected a power of two from 512 to 1 MiB, found 1000",
    )
    head = bytearray(head_bytes("kdump-compressed"))
    struct.pack_into("<q", head, 4096 + 32, 10**12)
    found = read_kdump(BytesSource(bytes(head)))
    assert found.problems[0] == (
        "offset_vmcoreinfo, size_vmcoreinfo at offset 4128: expected a range inside the file (size 532472), "
        "found (1000000000000, 3300)"
    )


def test_reading_a_23_mb_dump_reads_under_a_megabyte(tmp_path):
    class Counting:
        def __init__(self, src):
            self.src, self.read_bytes = src, 0

        @property
        def size(self):
            return self.src.size

        def read(self, offset, size):
            data = self.src.read(offset, size)
            self.read_bytes += len(data)
            return data

    for name in ("kdump-compressed", "flattened"):
        with open(materialise(name, tmp_path), "rb") as f:
            counting = Counting(FileSource(f))
            assert inspect_source(counting, name).complete is True
            assert counting.read_bytes < 1 << 20


def test_real_flattened_stream_is_whole(tmp_path):
    found = inspect_path(materialise("flattened", tmp_path))
    assert (found.kind, found.format, found.complete, found.problems) == ("vmcore", "flattened", True, ())
    assert (found.kernel_release, found.machine, found.crash_time) == (
        "6.1.0-57-amd64",
        "x86_64",
        "2026-11-29T12:09:27Z",
    )
    assert found.details["records"] == 714 and found.details["rebuilt_size"] == 23235246


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (
            "flattened-cut-in-records",
            "record 617 data at offset 19999224: expected 888 bytes up to 20000112, "
            "found end of file at 20000000",
        ),
        (
            "flattened-no-end-record",
            "record header at offset 23246814: expected 16 bytes, or the end record (offset = size = -1), "
            "found end of file",
        ),
    ],
)
def test_real_flattened_cut(tmp_path, name, problem):
    found = inspect_path(materialise(name, tmp_path))
    assert found.complete is False and found.problems == (problem,)
    assert found.kernel_release == "6.1.0-57-amd64"


def test_flattened_negative_record_size():
    data = bytearray(head_bytes("flattened")[:8192])
    struct.pack_into(">qq", data, 4096, 0, -5)
    found = read_flattened(BytesSource(bytes(data)))
    assert found.complete is False
    assert found.problems[0] == "record header at offset 4096: expected offset and size >= 0, found 0, -5"


def test_elf_core_with_the_real_notes(tmp_path):
    found = inspect_path(materialise("elf", tmp_path))
    assert (found.kind, found.format, found.complete, found.problems) == ("vmcore", "elf", True, ())
    assert (found.kernel_release, found.machine, found.crash_time) == (
        "6.1.0-57-amd64",
        "x86_64",
        "2026-11-29T12:09:10Z",
    )


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("elf-incomplete-flag", "e_flags at offset 48: expected incomplete flag 0x1 clear, found 0x1"),
        (
            "elf-cut-in-load",
            "segments at offset 40000: expected a file of 69632 bytes (the end of the last segment), "
            "found end of file, 29632 bytes missing",
        ),
    ],
)
def test_elf_incomplete(tmp_path, name, problem):
    found = inspect_path(materialise(name, tmp_path))
    assert found.complete is False and found.problems == (problem,)


def test_elf_program_headers_past_the_end():
    data = bytearray(head_bytes("elf")[:200])
    struct.pack_into("<H", data, 56, 50)
    assert read_elf(BytesSource(bytes(data))).problems == (
        "program headers at offset 200: expected 50 of 56 bytes, found end of file",
    )


@pytest.mark.parametrize(
    ("name", "fmt"), [("windows-full", "windows-full"), ("windows-kernel", "windows-kernel")]
)
def test_handbuilt_windows_dumps(tmp_path, name, fmt):
    found = inspect_path(materialise(name, tmp_path))
    assert (found.kind, found.format, found.complete, found.problems) == ("windows-dump", fmt, True, ())
    assert found.nmi_panic is True and found.panic_message.startswith(
        "bugcheck 0x00000080 (NMI_HARDWARE_FAILURE)"
    )
    assert (found.machine, found.crash_time) == ("x86_64", "2026-11-29T12:09:10Z")


def test_windows_dump_cut_short_and_unknown_type(tmp_path):
    found = inspect_path(materialise("windows-full-cut", tmp_path))
    assert found.complete is False and found.problems == (
        "dump data at offset 12288: expected a file of 73728 bytes (RequiredDumpSpace), "
        "found end of file, 61440 bytes missing",
    )
    head = bytearray(head_bytes("windows-full"))
    struct.pack_into("<I", head, 0xF98, 3)
    found = read_windows(BytesSource(bytes(head)))
    assert found.format == "unknown" and found.complete is None
    assert found.problems[0] == "DumpType at offset 3992: expected 1, 2, 5 or 6, found 3"


def test_windows_header_cut_short():
    found = read_windows(BytesSource(b"PAGEDU64" + bytes(100)))
    assert found.problems == ("DUMP_HEADER64 at offset 108: expected 8192 bytes, found end of file",)


# --- The first blocks a guest sends: the same readers over a SparseSource -----------------------

UNCHECKED_KDUMP_PAGES = (
    "page descriptors at offset 32768: expected 499704 bytes, found not sent by the guest: "
    "whether page data is missing is not checked"
)


def span(parts: list[tuple[int, bytes]], start: int, end: int) -> bytes:
    """Bytes ``start`` to ``end`` of a fixture as its file holds them (zeros in the holes)."""
    out = bytearray(max(0, end - start))
    for offset, data in parts:
        a, b = max(start, offset), min(end, offset + len(data))
        if a < b:
            out[a - start : b - start] = data[a - offset : b - offset]
    return bytes(out)


def sent(name: str, first: int = 65536, last: int = 16) -> SparseSource:
    """What ``crash_dumps`` sends of a fixture: its first ``first`` bytes and its last ``last``."""
    parts, size = fixture_extents(name)
    tail_at = max(0, size - last)
    return SparseSource(size, [(0, span(parts, 0, min(first, size))), (tail_at, span(parts, tail_at, size))])


def test_a_sparse_source_reads_what_was_sent_and_nothing_else():
    src = SparseSource(100, [(0, b"abcd"), (4, b"efgh"), (2, b"cd"), (96, b"wxyz!"), (300, b"far")])
    assert src.size == 100 and src.read(2, 4) == b"cdef"  # adjacent and overlapping parts merge
    assert src.read(96, 10) == b"wxyz" and src.read(100, 5) == b"" and src.read(-1, 5) == b""
    with pytest.raises(NotHeld) as refused:
        src.read(6, 4)
    assert (refused.value.offset, refused.value.size) == (6, 4)
    assert refused.value.problem("x") == "x at offset 6: expected 4 bytes, found not sent by the guest"
    with pytest.raises(NotHeld):
        src.read(90, 8)  # never zeros for what was not sent
    assert SparseSource(10, []).size == 10


def test_the_first_blocks_of_a_real_kdump_give_its_header_and_vmcoreinfo():
    found = inspect_source(sent("kdump-compressed"), "/var/crash/127.0.0.1-x/vmcore")
    assert (found.kind, found.format, found.complete) == ("vmcore", "kdump-compressed", True)
    assert (found.kernel_release, found.machine, found.crash_time) == (
        "6.1.0-57-amd64",
        "x86_64",
        "2026-11-29T12:09:10Z",
    )
    assert found.details["compression"] == "lzo" and found.details["dump_level"] == 31
    assert found.details["dumpable_pages"] == 20821  # the second bitmap was sent
    # Nothing is wrong with it; what its first blocks cannot show is said apart.
    assert (found.problems, found.unchecked) == ((), (UNCHECKED_KDUMP_PAGES,))
    assert found.to_dict()["problems"] == [] and found.to_dict()["unchecked"] == [UNCHECKED_KDUMP_PAGES]


def test_the_first_blocks_show_the_incomplete_flag_and_a_file_cut_in_its_descriptors():
    flagged = inspect_source(sent("kdump-compressed-incomplete-flag"))
    assert flagged.complete is False
    assert flagged.problems == ("status at offset 424: expected incomplete flag 0x8 clear, found 0xa",)
    assert flagged.unchecked == (UNCHECKED_KDUMP_PAGES,)
    cut = inspect_source(sent("kdump-compressed-cut-in-descriptors"))
    assert cut.complete is False and cut.problems == (
        "page descriptors at offset 100000: expected 20821 descriptors of 24 bytes from 32768 to "
        "532472, found end of file",
    )
    assert cut.unchecked == ()


@pytest.mark.parametrize("cut", [8, 100, 300, 463])
def test_a_kdump_header_cut_short_or_not_sent_is_a_problem_not_an_error(cut):
    head = head_bytes("kdump-compressed")[:cut]
    short = read_kdump(BytesSource(head))
    assert (short.format, short.complete) == ("kdump-compressed", None)
    assert short.problems == (f"header at offset {cut}: expected 464 bytes, found end of file",)
    assert short.unchecked == ()
    unsent = read_kdump(SparseSource(KDUMP_SIZE, [(0, head)]))
    assert (unsent.complete, unsent.problems) == (None, ())
    assert unsent.unchecked == ("header at offset 0: expected 464 bytes, found not sent by the guest",)


def test_lab_writer_and_reader_agree():
    head = kdump_header("5.14.0-427.el9.x86_64", "x86_64", "web-1", 1767225600.5, 2048)
    found = read_kdump(SparseSource(50 << 20, [(0, head)]))
    assert (found.kernel_release, found.crash_time, found.complete) == (
        "5.14.0-427.el9.x86_64",
        "2026-01-01T00:00:00Z",
        True,
    )
    assert found.problems == ()
    assert found.unchecked == (
        "sub-header at offset 4096: expected 104 bytes, found not sent by the guest",
        "second bitmap at offset 12288: expected 4096 bytes, found not sent by the guest: "
        "whether page data is missing is not checked",
    )


def test_a_flattened_stream_sent_in_part_is_judged_by_its_end_record():
    unread = (
        "record header at offset 104854: expected 16 bytes, found not sent by the guest: "
        "the records from there on are not checked"
    )
    found = inspect_source(sent("flattened"))
    assert (found.format, found.complete, found.problems, found.unchecked) == (
        "flattened",
        True,
        (),
        (unread,),
    )
    assert (found.kernel_release, found.crash_time) == ("6.1.0-57-amd64", "2026-11-29T12:09:27Z")
    assert found.details["end_record"] is True
    parts, size = fixture_extents("flattened")
    zeros = SparseSource(size, [(0, span(parts, 0, 65536)), (size - 16, bytes(16))])
    assert read_flattened(zeros).complete is False
    assert read_flattened(zeros).problems == (
        "end record at offset 23246814: expected 16 bytes of 0xff at the end of the file, found " + "00" * 16,
    )
    no_tail = read_flattened(sent("flattened", last=0))
    assert (no_tail.complete, no_tail.problems) == (None, ())
    assert no_tail.unchecked == (
        unread,
        "end record at offset 23246814: expected 16 bytes, found not sent by the guest",
    )


def test_a_record_the_walk_did_not_reach_is_never_read_as_zeros():
    parts, size = fixture_extents("flattened")
    # Only the signature block and the first record (the kdump header): the sub-header's and
    # VMCOREINFO's records are not sent.
    found = read_flattened(SparseSource(size, [(0, span(parts, 0, 4576)), (size - 16, b"\xff" * 16)]))
    assert found.complete is True and found.kernel_release == "6.1.0-57-amd64"
    assert found.problems == ()
    assert found.unchecked[1] == (
        "rebuilt file: sub-header at offset 4096: expected 104 bytes, found in none of the records read"
    )


@pytest.mark.parametrize("name", ["vmcore-incomplete", "dump-incomplete"])
def test_name_of_a_dump_being_written_means_incomplete(name):
    found = inspect_source(sent("kdump-compressed"), f"/var/crash/a/{name}")
    assert found.complete is False
    assert found.problems == (f"name: {name} (makedumpfile did not finish)",)
    assert found.unchecked == (UNCHECKED_KDUMP_PAGES,)


def test_elf_core_from_its_first_blocks_and_without_its_notes():
    assert inspect_source(sent("elf")).problems == () and inspect_source(sent("elf")).complete is True
    parts, size = fixture_extents("elf")
    found = read_elf(SparseSource(size, [(0, span(parts, 0, 176))]))
    assert (found.complete, found.kernel_release, found.problems) == (True, "", ())
    assert found.unchecked == ("PT_NOTE at offset 176: expected 3680 bytes, found not sent by the guest",)
    not_core = bytearray(head_bytes("elf"))
    struct.pack_into("<H", not_core, 16, 2)
    assert read_elf(BytesSource(bytes(not_core))).problems == (
        "e_type at offset 16: expected 4 (ET_CORE), found 2",
    )


def test_windows_dump_from_its_header_pages():
    found = inspect_source(sent("windows-kernel", 12288))
    assert (found.format, found.complete, found.nmi_panic, found.details["bugcheck"]) == (
        "windows-kernel",
        True,
        True,
        0x80,
    )
    short = read_windows(sent("windows-kernel", 4096))
    assert (short.complete, short.problems, short.unchecked) == (
        None,
        (),
        ("DUMP_HEADER64 at offset 0: expected 8200 bytes, found not sent by the guest",),
    )


def test_unknown_or_unsent_first_bytes_name_what_was_found():
    found = inspect_source(SparseSource(1 << 20, [(0, b"\x01\x02hello" + bytes(5000))]))
    assert (found.kind, found.format, found.complete) == ("unknown", "unknown", None)
    assert found.problems == (
        "signature at offset 0: expected a dump magic or kernel text, found 010268656c6c6f000000000000000000",
    )
    unsent = inspect_source(SparseSource(1 << 20, []))
    assert (unsent.complete, unsent.problems, unsent.unchecked) == (
        None,
        (),
        ("signature at offset 0: expected 4096 bytes, found not sent by the guest",),
    )


@pytest.mark.parametrize("name", ["kdump-compressed", "flattened", "elf", "windows-full"])
def test_the_judge_of_random_first_blocks_never_raises(name):
    parts, size = fixture_extents(name)
    seed = span(parts, 0, 65536)
    rng = random.Random(name)
    for _ in range(300):
        head = bytearray(seed[: rng.randrange(len(seed) + 1)])
        for _ in range(rng.randrange(12)):
            if head:
                head[rng.randrange(min(len(head), 8192))] = rng.randrange(256)
        declared = rng.choice([len(head), size, rng.randrange(len(head), 2 * size + 1)])
        tail = bytes(rng.randrange(256) for _ in range(rng.randrange(17)))
        found = inspect_source(SparseSource(declared, [(0, bytes(head)), (declared - len(tail), tail)]), "x")
        assert found.complete is True or found.problems or found.unchecked, (name, len(head), declared)
        assert all(isinstance(p, str) for p in (*found.problems, *found.unchecked))


READERS_AND_SEEDS = [
    (read_kdump, "kdump-compressed"),
    (read_flattened, "flattened"),
    (read_elf, "elf"),
    (read_windows, "windows-full"),
]


@pytest.mark.parametrize(("reader", "name"), READERS_AND_SEEDS)
def test_every_reader_on_truncated_real_bytes_reports_never_raises(reader, name):
    seed = head_bytes(name)
    rng = random.Random(name)
    for cut in [0, 1, 7, 16, 100, 463, 4096, 4112, *(rng.randrange(len(seed)) for _ in range(60))]:
        found = reader(BytesSource(seed[:cut]))
        assert found.complete is not True and found.problems, (name, cut)
        assert all(isinstance(p, str) for p in found.problems)


@pytest.mark.parametrize(("reader", "name"), READERS_AND_SEEDS)
def test_every_reader_on_random_bytes_never_raises(reader, name):
    seed = head_bytes(name)[:40000]
    rng = random.Random(7)
    for _ in range(150):
        data = bytearray(seed[: rng.randrange(len(seed) + 1)])
        for _ in range(rng.randrange(12)):
            if data:
                at = rng.randrange(min(len(data), 8192))
                data[at] = rng.randrange(256)
        found = reader(BytesSource(bytes(data)))
        assert found.complete is not True or not found.problems or found.format == "flattened"
        inspect_source(BytesSource(bytes(data)), "x")
    for _ in range(200):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(600)))
        for magic in (b"KDUMP   ", b"makedumpfile\0\0\0\0", b"\x7fELF", b"PAGEDU64", b""):
            reader(BytesSource(magic + noise))
            assert inspect_source(BytesSource(magic + noise)).problems or magic == b""


def test_text_files():
    dmesg = read_text(real("vmcore-dmesg.txt").decode(), "/var/crash/x/vmcore-dmesg.txt")
    assert (dmesg.kind, dmesg.complete, dmesg.nmi_panic, dmesg.panic_message) == (
        "dmesg",
        True,
        True,
        "NMI: Not continuing",
    )
    assert dmesg.kernel_release == "6.1.0-57-amd64"
    cut = read_text(real("vmcore-dmesg.txt").decode()[:20000], "dmesg.202611291209")
    assert cut.complete is False
    assert cut.problems == ("panic: expected a 'Kernel panic - not syncing' line, found none",)
    assert read_text("hello\n", "notes.txt").kind == "unknown"


def test_text_past_the_read_limit_is_unchecked_not_a_problem():
    text = real("vmcore-dmesg.txt")

    class Long:  # a dmesg file claiming one byte more than the readers read of text
        size = TEXT_LIMIT + 1

        def read(self, offset: int, size: int) -> bytes:
            return text[offset : offset + size]

    found = inspect_source(Long(), "/var/crash/x/vmcore-dmesg.txt")
    assert (found.kind, found.complete, found.problems) == ("dmesg", True, ())
    assert found.unchecked == (f"text: only the first {TEXT_LIMIT} bytes were read",)


@pytest.mark.parametrize(
    ("log", "complete", "nmi_panic", "problems"),
    [
        ("console-kdump.log", True, True, ()),
        (
            "console-hang.log",
            False,
            True,
            ("console line 358: panic, then nothing: no capture kernel started (kdump did not take over)",),
        ),
        (
            "console-small-crashkernel-64M.log",
            False,
            True,
            (
                "console line 359: panic, then a new boot: "
                "no capture kernel started (kdump did not take over)",
            ),
        ),
        (
            "console-small-crashkernel-80M.log",
            False,
            True,
            ("console line 746: the capture kernel panicked: System is deadlocked on memory",),
        ),
        (
            "console-nmi-ignored.log",
            None,
            False,
            ("console: NMI received but the kernel continued ('Dazed and confused'): no panic",),
        ),
    ],
)
def test_real_consoles_judged_on_the_capture(log, complete, nmi_panic, problems):
    found = read_text(real(log).decode(errors="replace"), log)
    assert (found.kind, found.complete, found.nmi_panic, found.problems) == (
        "console",
        complete,
        nmi_panic,
        problems,
    )


def test_console_capture_failure_and_saved():
    boot = "[    0.000000] Command line: console=ttyS0 irqpoll elfcorehdr=179572K\n"
    failed = read_text(
        "Kernel panic - not syncing: NMI: Not continuing\n" + boot + "kdump: saving vmcore failed\n"
    )
    assert failed.complete is False and failed.problems == (
        "console line 3: capture failed: saving vmcore failed",
    )
    saved = read_text(
        "Kernel panic - not syncing: NMI: Not continuing\n" + boot + "kdump: saving vmcore complete\n"
    )
    assert saved.complete is True and saved.panic_message == "NMI: Not continuing" and saved.nmi_panic


def test_inspect_path_missing_and_writing_name(tmp_path):
    missing = inspect_path(tmp_path / "nope")
    assert (missing.kind, missing.complete, missing.problems) == (
        "unknown",
        None,
        ("path: cannot read: No such file or directory",),
    )
    path = materialise("kdump-compressed", tmp_path).rename(tmp_path / "vmcore-incomplete")
    found = inspect_path(path)
    assert found.complete is False and found.problems == (
        "name: vmcore-incomplete (makedumpfile did not finish)",
    )
