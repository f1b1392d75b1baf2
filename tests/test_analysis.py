"""``chaosec2panic analyze``: the crashed kernel's log read out of real vmcores through VMCOREINFO.

The fixtures in tests/fixtures/real/log/ hold exactly the bytes the reader read of two real
dumps of the lab's Debian 6.1 guest (see the README there), so they are read here as a
``SparseSource``: a read of any other byte fails instead of reading zeros.
"""

import ctypes
import ctypes.util
import gzip
import json
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from chaosec2panic import lzo
from chaosec2panic.analysis import LogRecord, analyse_source, format_records, read_log, summarise
from chaosec2panic.dumps import BytesSource, SparseSource
from chaosec2panic.memory import START_KERNEL_MAP, DumpError, KdumpMemory, open_memory

LOG = Path(__file__).parent / "fixtures" / "real" / "log"
MANIFEST = json.loads((LOG / "manifest.json").read_text())
BIN = Path(sys.executable).parent


def extents(name: str) -> tuple[list[tuple[int, bytes]], int]:
    raw = gzip.decompress((LOG / MANIFEST[name]["extents"]).read_bytes())
    parts, at = [], 0
    while at < len(raw):
        offset, length = struct.unpack_from("<QQ", raw, at)
        parts.append((offset, raw[at + 16 : at + 16 + length]))
        at += 16 + length
    return parts, MANIFEST[name]["size"]


def source(name: str) -> SparseSource:
    parts, size = extents(name)
    return SparseSource(size, parts)


def dmesg(name: str) -> list[str]:
    return (LOG / MANIFEST[name]["dmesg"]).read_text().splitlines()


def patch(parts: list[tuple[int, bytes]], at: int, new: bytes) -> list[tuple[int, bytes]]:
    """The extents with ``new`` written over held bytes at ``at``."""
    hit = [
        (o, d[: at - o] + new + d[at - o + len(new) :]) if o <= at < o + len(d) else (o, d) for o, d in parts
    ]
    assert hit != parts, f"offset {at} is not in the fixture"
    return hit


def patched(name: str, at: int, new: bytes) -> SparseSource:
    parts, size = extents(name)
    return SparseSource(size, patch(parts, at, new))


def vmcoreinfo_at(name: str) -> tuple[int, int]:
    """Where the kdump-compressed fixture's VMCOREINFO text is (its sub-header says), and its size."""
    assert name == "kdump-compressed"
    return struct.unpack_from("<qQ", source(name).read(4096, 104), 32)


def patch_vmcoreinfo(old: bytes, new: bytes) -> SparseSource:
    assert len(old) == len(new)
    start, size = vmcoreinfo_at("kdump-compressed")
    text = source("kdump-compressed").read(start, size)
    return patched("kdump-compressed", start + text.index(old), new)


@pytest.mark.parametrize("name", ["kdump-compressed", "flattened"])
def test_log_is_the_real_vmcore_dmesg_line_for_line(name):
    _found, lines = analyse_source(source(name))
    assert lines == dmesg(name)
    assert len(lines) == {"kdump-compressed": 396, "flattened": 397}[name]


def test_records_print_as_makedumpfile_prints_them():
    records = [LogRecord(5_310_188_999, b"CPU: 0\nnext\tline\x01\xe2"), LogRecord(123_456_789_000_000, b"")]
    assert format_records(records) == [
        "[    5.310188] CPU: 0",
        "               next\tline\\x01\\xe2",
        "[123456.789000] ",
    ]


TRACE_HEAD = [
    " <NMI>",
    " dump_stack_lvl+0x44/0x5c",
    " panic+0x118/0x2f4",
    " ? _printk+0x68/0x83",
    " nmi_panic.cold+0xc/0xc",
    " unknown_nmi_error.cold+0x3b/0x49",
    " exc_nmi+0x11e/0x150",
    " end_repeat_nmi+0x16/0x67",
    "RIP: 0010:native_safe_halt+0xb/0x10",
]
TRACE_TAIL = [
    " ? native_safe_halt+0xb/0x10",
    " ? native_safe_halt+0xb/0x10",
    " </NMI>",
    " <TASK>",
    " amd_e400_idle+0x3d/0x50",
    " default_idle_call+0x38/0xf0",
    " do_idle+0x206/0x2b0",
    " cpu_startup_entry+0x26/0x30",
    " rest_init+0xca/0xd0",
    " arch_call_rest_init+0xa/0x14",
    " start_kernel+0x6fb/0x70f",
    " secondary_startup_64_no_verify+0xe5/0xeb",
    " </TASK>",
]


@pytest.mark.parametrize(
    ("name", "crash_time", "line", "uptime", "reason"),
    [
        ("kdump-compressed", "2026-12-02T22:02:04Z", 364, 6.505469, 21),
        ("flattened", "2026-12-02T22:02:23Z", 365, 7.316357, 31),
    ],
)
def test_summary_is_the_real_crash(name, crash_time, line, uptime, reason):
    found, lines = analyse_source(source(name), last=3)
    assert found.format == name
    assert (found.kernel_release, found.crash_time, found.log_lines) == (
        "6.1.0-57-amd64",
        crash_time,
        len(lines),
    )
    assert (found.panic_message, found.panic_line, found.uptime_seconds) == (
        "NMI: Not continuing",
        line,
        uptime,
    )
    assert lines[line - 1].endswith("Kernel panic - not syncing: NMI: Not continuing")
    assert found.nmi_panic is True
    assert found.nmi_line == f"Uhhuh. NMI received for unknown reason {reason} on CPU 0."
    assert (found.cpu, found.pid, found.comm) == (0, 0, "swapper/0")
    assert (found.rip, found.rip_function) == ("0010:native_safe_halt+0xb/0x10", "native_safe_halt")
    assert found.call_trace[: len(TRACE_HEAD)] == TRACE_HEAD
    assert found.call_trace[-len(TRACE_TAIL) :] == TRACE_TAIL
    assert len(found.call_trace) == len(TRACE_HEAD) + 7 + len(TRACE_TAIL)  # Code:, RSP:, 5 register lines
    assert found.last_lines == lines[line - 4 : line - 1]
    assert found.last_lines[-1].endswith(found.nmi_line)
    assert (found.cpus_brought_up, found.other_cpus) == (1, {})


@pytest.mark.parametrize("name", ["kdump-compressed", "flattened"])
def test_page_table_walk_agrees_with_phys_base_and_the_direct_map(name):
    _fmt, info, mem = open_memory(source(name))
    prb = info.symbol("prb")
    assert mem.walk(prb) == prb - START_KERNEL_MAP + info.number("phys_base")
    direct = info.symbol("mem_section")  # a direct-map address: page_offset_base is 1 GiB aligned
    assert (direct - mem.walk(direct)) % (1 << 30) == 0


def test_other_cpus_are_their_nmi_backtrace_blocks():
    """Constructed: the lab's guest has one CPU, so a block as nmi_cpu_backtrace() prints it is
    put into the real log after the panic."""
    lines = dmesg("kdump-compressed")
    at = next(i for i, line in enumerate(lines) if "Kernel panic" in line)
    block = [
        "[    6.520000] NMI backtrace for cpu 1",
        "[    6.520001] CPU: 1 PID: 0 Comm: swapper/1 Not tainted 6.1.0-57-amd64 #1",
        "[    6.520002] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996)",
        "[    6.520003] RIP: 0010:native_safe_halt+0xb/0x10",
        "[    6.520004] Call Trace:",
        "[    6.520005]  <TASK>",
        "[    6.520006]  </TASK>",
    ]
    text = [*lines[: at + 2], *block, "[    6.530000] Kernel Offset: 0x9000000", *lines[at + 2 :]]
    _fmt, info, _mem = open_memory(source("kdump-compressed"))
    found = summarise(text, info, "kdump-compressed")
    assert found.other_cpus == {"1": [b.split("] ", 1)[1] for b in block]}
    assert found.cpu == 0


def test_truncated_dump_names_the_page_and_the_end_of_file():
    parts, _size = extents("kdump-compressed")
    with pytest.raises(
        DumpError,
        match=r"page frame 0x[0-9a-f]+: \d+ bytes at offset \d+, but the file ends at "
        r"3000000: the dump is truncated",
    ):
        analyse_source(SparseSource(3_000_000, parts))


def test_flattened_stream_cut_before_the_log_says_what_it_lacks():
    parts, _size = extents("flattened")
    with pytest.raises(DumpError, match="in none of the records read: the dump does not hold it"):
        analyse_source(SparseSource(10_000_000, parts))  # cut: no end record, the log's records gone


def test_vmcoreinfo_outside_the_file_is_refused():
    bad = patched("kdump-compressed", 4096 + 32, struct.pack("<q", 1 << 40))
    with pytest.raises(
        DumpError, match="VMCOREINFO at offset 1099511627776 size 3298 is not inside the file"
    ):
        analyse_source(bad)


def test_wrong_ring_offset_in_vmcoreinfo_is_an_error_not_a_log():
    bad = patch_vmcoreinfo(
        b"OFFSET(printk_ringbuffer.text_data_ring)=48", b"OFFSET(printk_ringbuffer.text_data_ring)=40"
    )
    with pytest.raises(DumpError, match=r"size_bits \d+ are not a ring's"):
        analyse_source(bad)


def test_kernel_without_the_lockless_ring_is_named():
    bad = patch_vmcoreinfo(b"SYMBOL(prb)=ffffffff8ba643e0", b"SYMBOL(log_buf)=ffffffff8ba6")
    with pytest.raises(DumpError, match=r"kernel 6\.1\.0-57-amd64 keeps its log in the log_buf ring"):
        analyse_source(bad)
    bad = patch_vmcoreinfo(b"SIZE(prb_desc)=24", b"SIZE(prb_dexx)=24")
    with pytest.raises(
        DumpError, match=r"kernel 6.1.0-57-amd64: unknown kernel log layout, .*SIZE\(prb_desc\)"
    ):
        analyse_source(bad)


def kdump_layout(src) -> tuple[int, int, int]:
    """Second bitmap, its size and the descriptor table of the kdump-compressed fixture."""
    block, sub, bitmaps = struct.unpack_from("<iiI", src.read(428, 12))
    half = bitmaps // 2 * block
    return (1 + sub) * block + half, half, (1 + sub) * block + 2 * half


def descriptor_at(src, pfn: int) -> int:
    bitmap2, half, table = kdump_layout(src)
    bits = int.from_bytes(src.read(bitmap2, half), "little")
    return table + 24 * (bits & ((1 << pfn) - 1)).bit_count()


FIRST_PFN = 0x6C64  # of SYMBOL(prb) in the kdump-compressed fixture: the first page read


def test_page_left_out_of_the_dump_is_named():
    src = source("kdump-compressed")
    bitmap2, _half, _table = kdump_layout(src)
    byte = src.read(bitmap2 + FIRST_PFN // 8, 1)[0] & ~(1 << FIRST_PFN % 8)
    with pytest.raises(
        DumpError, match=f"page frame {FIRST_PFN:#x} .* is not in the dump: it was filtered out"
    ):
        analyse_source(patched("kdump-compressed", bitmap2 + FIRST_PFN // 8, bytes([byte])))


def test_damaged_page_data_does_not_decompress():
    src = source("kdump-compressed")
    offset, size, flags, _ = struct.unpack("<qIIQ", src.read(descriptor_at(src, FIRST_PFN), 24))
    assert flags == 0x2  # LZO, as makedumpfile -l wrote it
    with pytest.raises(
        DumpError, match=f"page frame {FIRST_PFN:#x} at offset {offset}: its {size} bytes do not"
    ):
        analyse_source(patched("kdump-compressed", offset + size // 2, b"\xff" * 8))


def pages_read(name: str) -> dict[int, bytes]:
    """The page frames the log reader reads, decompressed."""
    _fmt, info, mem = open_memory(source(name))
    inner = mem.memory
    assert isinstance(inner, KdumpMemory)
    seen: dict[int, bytes] = {}
    page = inner.page
    inner.page = lambda pfn: seen.setdefault(pfn, page(pfn))  # type: ignore[method-assign]
    read_log(mem, info)
    return seen


def recompressed(method: int, compress) -> SparseSource:
    """The real dump with every page the log needs re-stored with another compression."""
    parts, size = extents("kdump-compressed")
    src = SparseSource(size, parts)
    for pfn, data in sorted(pages_read("kdump-compressed").items()):
        packed = compress(data)
        at = descriptor_at(src, pfn)
        parts = [*patch(parts, at, struct.pack("<qIIQ", size, len(packed), method, 0)), (size, packed)]
        size += len(packed)
        src = SparseSource(size, parts)
    return src


def _snappy(data: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.snappy.compress_raw(data))


def _zstd(data: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.zstd.compress(data))


@pytest.mark.parametrize(
    ("method", "compress"),
    [(0x1, zlib.compress), (0x4, _snappy), (0x20, _zstd), (0x0, lambda data: data)],
    ids=["zlib", "snappy", "zstd", "none"],
)
def test_each_page_compression_gives_the_same_log(method, compress):
    src = recompressed(method, compress)
    assert struct.unpack("<qIIQ", src.read(descriptor_at(src, FIRST_PFN), 24))[2] == method
    _found, lines = analyse_source(src)
    assert lines == dmesg("kdump-compressed")


def test_missing_decompressor_names_the_package(monkeypatch):
    src = recompressed(0x20, _zstd)
    monkeypatch.setitem(sys.modules, "cramjam", None)
    with pytest.raises(
        DumpError,
        match="pages are zstd-compressed and no zstd decompressor is installed: pip install cramjam",
    ):
        analyse_source(src)


def elf_core(name: str) -> bytes:
    """An ELF64 core of the pages the log needs: one PT_LOAD a page, the real VMCOREINFO note."""
    src = source(name)
    text = src.read(*vmcoreinfo_at(name))
    note = struct.pack("<III", 11, len(text), 0) + b"VMCOREINFO\0\0" + text + bytes(-len(text) % 4)
    pages = sorted(pages_read(name).items())
    phnum = 1 + len(pages)
    data_at = 64 + 56 * phnum
    head = bytearray(b"\x7fELF\x02\x01\x01" + bytes(9))
    head += struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    head += struct.pack("<IIQQQQQQ", 4, 0, data_at, 0, 0, len(note), len(note), 0)
    at = data_at + len(note)
    for pfn, _data in pages:
        head += struct.pack("<IIQQQQQQ", 1, 7, at, 0, pfn * 4096, 4096, 4096, 4096)
        at += 4096
    return bytes(head) + note + b"".join(d for _, d in pages)


def test_elf_core_gives_the_same_log():
    found, lines = analyse_source(BytesSource(elf_core("kdump-compressed")))
    assert found.format == "elf"
    assert lines == dmesg("kdump-compressed")
    assert found.panic_message == "NMI: Not continuing"


def test_elf_core_without_a_page_names_it():
    core = elf_core("kdump-compressed")
    _fmt, _info, mem = open_memory(BytesSource(core))
    first = mem.memory.loads[0][0] // 4096  # type: ignore[attr-defined]
    phdr = 64 + 56  # the first PT_LOAD: make it another frame's
    core = core[: phdr + 24] + struct.pack("<Q", 0x100000000) + core[phdr + 32 :]
    with pytest.raises(DumpError, match=f"page frame {first:#x} .* is in no PT_LOAD segment"):
        analyse_source(BytesSource(core))


def test_dump_of_another_machine_is_refused():
    bad = patched("kdump-compressed", 12 + 4 * 65, b"aarch64\0")
    with pytest.raises(DumpError, match="a dump of a aarch64 machine; only x86_64"):
        analyse_source(bad)


def test_text_is_not_a_vmcore():
    with pytest.raises(DumpError, match="not a vmcore: the file starts with 5b20"):
        analyse_source(BytesSource((LOG / "vmcore-dmesg.txt").read_bytes()))


def _liblzo2():
    found = ctypes.util.find_library("lzo2")
    return ctypes.CDLL(found) if found else None


@pytest.mark.skipif(_liblzo2() is None, reason="liblzo2 (makedumpfile's own LZO) is not installed")
def test_lzo_decodes_what_liblzo2_encodes():
    lib = _liblzo2()
    rnd = random.Random(14)
    for _ in range(100):
        parts: list[bytes] = []
        while sum(map(len, parts)) < 6000:
            kind = rnd.randrange(3)
            if kind == 0:
                parts.append(rnd.randbytes(rnd.randrange(1, 300)))
            elif kind == 1:
                parts.append(bytes([rnd.randrange(256)]) * rnd.randrange(1, 3000))
            else:
                parts.append(rnd.choice(parts) if parts else b"x")
        data = b"".join(parts)[: rnd.choice([4096, 100, 5, 70000])]
        out = ctypes.create_string_buffer(len(data) + len(data) // 16 + 67)
        size = ctypes.c_ulong(0)
        work = ctypes.create_string_buffer(16384 * 8)  # LZO1X_1_MEM_COMPRESS
        assert lib.lzo1x_1_compress(data, len(data), out, ctypes.byref(size), work) == 0
        packed = out.raw[: size.value]
        assert lzo.decompress(packed, len(data)) == data
        with pytest.raises(lzo.LzoError):
            lzo.decompress(packed[: len(packed) // 2], len(data))


def test_cli_prints_the_analysis_as_json(tmp_path):
    subprocess.run(
        [BIN / "pip", "install", "-q", "--no-deps", str(Path(__file__).parents[1])], check=True, timeout=300
    )
    parts, size = extents("kdump-compressed")
    dump = tmp_path / "vmcore"
    with open(dump, "wb") as f:  # sparse: holes where the fixture holds no bytes
        f.truncate(size)
        for offset, data in parts:
            f.seek(offset)
            f.write(data)
    done = subprocess.run(
        [BIN / "chaosec2panic", "analyze", str(dump), "--json", "--lines", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert {
        k: found[k] for k in ("format", "kernel_release", "crash_time", "panic_message", "nmi_panic")
    } == {
        "format": "kdump-compressed",
        "kernel_release": "6.1.0-57-amd64",
        "crash_time": "2026-12-02T22:02:04Z",
        "panic_message": "NMI: Not continuing",
        "nmi_panic": True,
    }
    assert (found["cpu"], found["pid"], found["comm"], found["rip_function"]) == (
        0,
        0,
        "swapper/0",
        "native_safe_halt",
    )
    assert found["uptime_seconds"] == 6.505469
    assert found["last_lines"] == dmesg("kdump-compressed")[361:363]
    assert found["call_trace"][:2] == [" <NMI>", " dump_stack_lvl+0x44/0x5c"]

    text = tmp_path / "dmesg.txt"
    text.write_bytes((LOG / "vmcore-dmesg.txt").read_bytes())
    bad = subprocess.run(
        [BIN / "chaosec2panic", "analyze", str(text)], capture_output=True, text=True, timeout=60
    )
    assert (bad.returncode, bad.stdout) == (2, "")
    assert "not a vmcore" in bad.stderr
