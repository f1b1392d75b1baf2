"""The crashed kernel's memory in a vmcore, page by page, without debug symbols.

``open_memory`` reads a kdump-compressed file, a flattened stream (through the file its records
rebuild) or an ELF core, and gives its VMCOREINFO and ``KernelMemory``: reads of kernel
virtual addresses, translated on x86_64 from VMCOREINFO alone (kernel-image addresses by
``phys_base``, others through the page tables at ``init_top_pgt``). Only the pages asked for
are read, each decompressed on its own; nothing is loaded whole. Whatever stops a read (a
frame not in the dump, a page past the end of a truncated file, a compression with no
decompressor) raises ``DumpError`` naming the problem and what to do.
"""

import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Protocol, Tuple

from . import lzo
from .dumps.elf import ELF_MAGIC, EM_NAMES
from .dumps.kdump import (
    FLAT_BYTES_PER_RECORD,
    FLAT_END_RECORD,
    FLAT_RECORDS_AT,
    FLAT_RECORDS_MIN,
    FLAT_SIGNATURE,
    KDUMP_SIGNATURE,
    PAGE_DESC,
    FlatRecords,
    FlattenedSource,
)
from .dumps.source import NotHeld, Source, parse_vmcoreinfo

__all__ = [
    "DumpError",
    "KernelMemory",
    "PhysicalMemory",
    "VmcoreInfo",
    "open_memory",
]

START_KERNEL_MAP = 0xFFFFFFFF80000000  # __START_KERNEL_map (x86_64)
PTE_PRESENT = 0x1
PTE_HUGE = 0x80  # PSE: a 1 GiB (PUD) or 2 MiB (PMD) page
PTE_ADDRESS = 0x000FFFFFFFFFF000
VMCOREINFO_MAX = 1 << 20
PAGE_CACHE = 64  # decompressed pages kept
ZLIB, LZO, SNAPPY, ZSTD = 0x1, 0x2, 0x4, 0x20  # page flags (makedumpfile diskdump_mod.h)
PIP_PACKAGE = {SNAPPY: ("snappy", "cramjam"), ZSTD: ("zstd", "cramjam")}


class DumpError(ValueError):
    """A dump that cannot be read as asked: the message names the problem and what to do."""


@dataclass(frozen=True)
class VmcoreInfo:
    """The VMCOREINFO fields, with typed look-ups that name what is missing."""

    fields: Dict[str, str]

    @property
    def release(self) -> str:
        return self.fields.get("OSRELEASE", "")

    def has(self, key: str) -> bool:
        return key in self.fields

    def _value(self, key: str, base: int) -> int:
        raw = self.fields.get(key)
        if raw is None:
            raise DumpError(
                f"VMCOREINFO has no {key} (kernel {self.release or 'unknown'}): unknown kernel log "
                "layout; read the log with makedumpfile --dump-dmesg or crash"
            )
        try:
            return int(raw, base)
        except ValueError:
            raise DumpError(f"VMCOREINFO {key}={raw!r} is not a number: the note is damaged") from None

    def symbol(self, name: str) -> int:
        return self._value(f"SYMBOL({name})", 16)

    def size(self, name: str) -> int:
        return self._value(f"SIZE({name})", 10)

    def offset(self, member: str) -> int:
        return self._value(f"OFFSET({member})", 10)

    def number(self, name: str) -> int:
        return self._value(f"NUMBER({name})", 10)


class PhysicalMemory(Protocol):
    """Page frames of a dump: ``page(pfn)`` gives ``page_size`` bytes or raises ``DumpError``;
    ``machine`` is the dump's architecture, ``vmcoreinfo`` its VMCOREINFO text."""

    page_size: int
    machine: str
    vmcoreinfo: bytes

    def page(self, pfn: int) -> bytes: ...


def _read(src: Source, offset: int, size: int, what: str) -> bytes:
    """Exactly ``size`` bytes at ``offset``, else ``DumpError`` (truncated or not held)."""
    try:
        data = src.read(offset, size)
    except NotHeld as e:
        raise DumpError(f"{what}: {e}: the dump does not hold it (a truncated or partial copy)") from None
    if len(data) != size:
        raise DumpError(
            f"{what}: {size} bytes at offset {offset}, but the file ends at {src.size}: the dump is "
            "truncated (copy it again, or capture a new one)"
        )
    return data


def _decompressor(flag: int) -> Callable[[bytes, int], bytes]:
    """The decompressor of one page flag; snappy and zstd need cramjam."""
    if flag == ZLIB:
        return lambda data, size: zlib.decompress(data, bufsize=size)
    if flag == LZO:
        return lzo.decompress
    name, package = PIP_PACKAGE[flag]
    try:
        import cramjam
    except ImportError:
        raise DumpError(
            f"pages are {name}-compressed and no {name} decompressor is installed: pip install {package}"
        ) from None
    if flag == SNAPPY:
        return lambda data, size: bytes(cramjam.snappy.decompress_raw(data))
    return lambda data, size: bytes(cramjam.zstd.decompress(data, output_len=size))


class KdumpMemory:
    """The pages of a kdump-compressed file (``makedumpfile -c/-l/-p/-z``, or none).

    A frame's page descriptor is found by its rank among the set bits of the second bitmap
    (the dumped pages); a frame not set there was left out of the dump, as makedumpfile's own
    reader says. Prefix counts of the bitmap are kept per block, so a look-up reads one block.
    """

    def __init__(self, src: Source):
        head = _read(src, 0, 464, "kdump header")
        block, sub_blocks, bitmap_blocks, max_mapnr = struct.unpack_from("<iiII", head, 428)
        if block < 512 or block > 1 << 20 or block & (block - 1) or sub_blocks < 0 or bitmap_blocks % 2:
            raise DumpError(
                f"kdump header: block_size {block}, sub_hdr_size {sub_blocks}, bitmap_blocks {bitmap_blocks} "
                "are not a kdump-compressed layout: the header is damaged"
            )
        self.src, self.page_size = src, block
        self.machine = head[12 + 4 * 65 : 12 + 5 * 65].split(b"\0", 1)[0].decode("ascii", "replace")
        sub = _read(src, block, 104, "kdump sub-header") if sub_blocks else b""
        vi_offset, vi_size = struct.unpack_from("<qQ", sub, 32) if sub else (0, 0)
        if not 0 < vi_size <= VMCOREINFO_MAX or vi_offset < block or vi_offset + vi_size > src.size:
            raise DumpError(
                f"kdump sub-header: VMCOREINFO at offset {vi_offset} size {vi_size} is not inside the "
                f"file of {src.size} bytes: the sub-header is damaged, or the dump was made without it"
            )
        self.vmcoreinfo = _read(src, vi_offset, vi_size, "VMCOREINFO")
        wide = struct.unpack_from("<Q", sub, 96)[0] if len(sub) >= 104 else 0
        self.max_mapnr = wide or max_mapnr
        half = bitmap_blocks // 2 * block
        self.bitmap2 = (1 + sub_blocks) * block + half
        self.bitmap_size = half
        self.table = self.bitmap2 + half
        self._ranks: List[int] | None = None
        self._block: Tuple[int, bytes] = (-1, b"")  # the bitmap block of the last look-up
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def _rank(self, pfn: int) -> int | None:
        """The descriptor index of a dumped frame, or None when the frame is not in the dump."""
        block = self.page_size
        if self._ranks is None:
            ranks, total = [], 0
            for at in range(0, self.bitmap_size, block):
                ranks.append(total)
                chunk = _read(self.src, self.bitmap2 + at, min(block, self.bitmap_size - at), "bitmap")
                total += int.from_bytes(chunk, "little").bit_count()
            self._ranks = ranks
        byte = pfn // 8
        n = byte // block
        if pfn >= self.max_mapnr or n >= len(self._ranks):
            return None
        if self._block[0] != n:
            self._block = (n, _read(self.src, self.bitmap2 + n * block, block, "bitmap"))
        chunk = self._block[1]
        bits = int.from_bytes(chunk[: byte % block + 1], "little")
        if not bits >> (pfn % 8 + 8 * (byte % block)) & 1:
            return None
        below = bits & ((1 << (pfn % 8 + 8 * (byte % block))) - 1)
        return self._ranks[n] + below.bit_count()

    def page(self, pfn: int) -> bytes:
        if pfn in self._cache:
            self._cache.move_to_end(pfn)
            return self._cache[pfn]
        rank = self._rank(pfn)
        if rank is None:
            raise DumpError(
                f"page frame {pfn:#x} (physical {pfn * self.page_size:#x}) is not in the dump: it was "
                "filtered out (makedumpfile -d) or lies outside the memory dumped"
            )
        at = self.table + rank * PAGE_DESC.size
        offset, size, flags, _ = PAGE_DESC.unpack(_read(self.src, at, PAGE_DESC.size, "page descriptor"))
        if offset < self.table or not 0 < size <= self.page_size:
            raise DumpError(
                f"page descriptor {rank} at offset {at}: data at {offset} of {size} bytes is not a page "
                "of this file: the descriptor table is damaged"
            )
        raw = _read(self.src, offset, size, f"page frame {pfn:#x}")
        method = flags & (ZLIB | LZO | SNAPPY | ZSTD)
        if method and method not in (ZLIB, LZO, SNAPPY, ZSTD):
            raise DumpError(f"page descriptor {rank}: flags {flags:#x} name more than one compression")
        if method:
            try:
                data = _decompressor(method)(raw, self.page_size)
            except DumpError:
                raise
            except Exception as e:
                raise DumpError(
                    f"page frame {pfn:#x} at offset {offset}: its {size} bytes do not decompress ({e}): "
                    "the page data is damaged"
                ) from None
        else:
            data = raw
        if len(data) != self.page_size:
            raise DumpError(
                f"page frame {pfn:#x} at offset {offset}: {len(data)} bytes, not a page of {self.page_size}"
            )
        self._cache[pfn] = data
        if len(self._cache) > PAGE_CACHE:
            self._cache.popitem(last=False)
        return data


class ElfMemory:
    """The pages of an ELF64 little-endian core (/proc/vmcore, ``makedumpfile -E``): PT_LOAD
    segments by physical address; bytes past a segment's ``p_filesz`` read as zeros."""

    def __init__(self, src: Source, page_size: int = 4096):
        head = _read(src, 0, 64, "ELF header")
        if head[4:6] != b"\x02\x01":
            raise DumpError("ELF core: only 64-bit little-endian cores are read (e_ident class 2, data 1)")
        phoff, phentsize, phnum = struct.unpack_from("<Q", head, 32)[0], *struct.unpack_from("<HH", head, 54)
        if phentsize != 56 or phnum in (0, 0xFFFF):
            raise DumpError(f"ELF core: {phnum} program headers of {phentsize} bytes: not a vmcore layout")
        table = _read(src, phoff, phnum * 56, "program headers")
        self.src, self.page_size = src, page_size
        self.machine = EM_NAMES.get(struct.unpack_from("<H", head, 18)[0], "unknown")
        self.loads: List[Tuple[int, int, int, int]] = []  # paddr, offset, filesz, memsz
        self.vmcoreinfo = b""
        for p_type, _flags, offset, _vaddr, paddr, filesz, memsz, _align in struct.iter_unpack(
            "<IIQQQQQQ", table
        ):
            if p_type == 1:
                self.loads.append((paddr, offset, filesz, memsz))
            elif p_type == 4 and not self.vmcoreinfo:
                self.vmcoreinfo = _vmcoreinfo_note(_read(src, offset, min(filesz, 1 << 24), "PT_NOTE"))
        if not self.vmcoreinfo:
            raise DumpError("ELF core: no VMCOREINFO note; the kernel log cannot be found without one")

    def page(self, pfn: int) -> bytes:
        start = pfn * self.page_size
        for paddr, offset, filesz, memsz in self.loads:
            if paddr <= start and start + self.page_size <= paddr + memsz:
                held = max(0, min(self.page_size, paddr + filesz - start))
                data = _read(self.src, offset + start - paddr, held, f"page frame {pfn:#x}") if held else b""
                return data + bytes(self.page_size - held)
        raise DumpError(f"page frame {pfn:#x} (physical {start:#x}) is in no PT_LOAD segment of the core")


def _vmcoreinfo_note(notes: bytes) -> bytes:
    """The VMCOREINFO note's text in a PT_NOTE segment (4-byte aligned), or b""."""
    at = 0
    while at + 12 <= len(notes):
        namesz, descsz, _ = struct.unpack_from("<III", notes, at)
        desc = at + 12 + (namesz + 3) // 4 * 4
        if desc + descsz > len(notes):
            break
        if notes[at + 12 : at + 12 + namesz].rstrip(b"\0") == b"VMCOREINFO":
            return notes[desc : desc + descsz]
        at = desc + (descsz + 3) // 4 * 4
    return b""


def flattened_file(src: Source) -> FlattenedSource:
    """The kdump-compressed file a flattened stream rebuilds, read in place (no ``-R`` copy).

    A stream without its end record still rebuilds what its records hold; bytes no record read
    holds then raise ``DumpError`` when read.
    """
    records, at, whole = FlatRecords(), FLAT_RECORDS_AT, False
    limit = max(FLAT_RECORDS_MIN, src.size // FLAT_BYTES_PER_RECORD)
    while True:
        if len(records) > limit:
            raise DumpError(
                f"flattened stream: more than {limit} records (one per {FLAT_BYTES_PER_RECORD} bytes, as "
                f"makedumpfile writes them) before offset {at}: not a stream makedumpfile wrote"
            )
        raw = _read(src, at, 16, "flattened record header") if at + 16 <= src.size else b""
        if raw == FLAT_END_RECORD:
            whole = True
            break
        if len(raw) < 16:
            break
        offset, size = struct.unpack(">qq", raw)
        if offset < 0 or size < 0 or at + 16 + size > src.size:
            break
        if size:
            records.add(at, offset, size)
        at += 16 + size
    return FlattenedSource(src, records, whole)


class KernelMemory:
    """Kernel virtual addresses of an x86_64 vmcore, from VMCOREINFO alone."""

    def __init__(self, memory: PhysicalMemory, info: VmcoreInfo):
        self.memory, self.info = memory, info
        self.page_size = memory.page_size
        self.phys_base = info.number("phys_base")
        self.l5 = info.has("NUMBER(pgtable_l5_enabled)") and info.number("pgtable_l5_enabled") == 1
        self.sme = info.number("sme_mask") if info.has("NUMBER(sme_mask)") else 0
        self._top: int | None = None
        self.page_offset: int | None = None
        if info.has("SYMBOL(page_offset_base)"):
            self.page_offset = self.u64(info.symbol("page_offset_base"))

    def physical(self, vaddr: int) -> int:
        """The physical address of a kernel virtual address."""
        if vaddr >= START_KERNEL_MAP:
            return vaddr - START_KERNEL_MAP + self.phys_base
        if self.page_offset is not None and self.page_offset <= vaddr < self.page_offset + (1 << 46):
            return vaddr - self.page_offset
        return self.walk(vaddr)

    def walk(self, vaddr: int) -> int:
        """Translate through the kernel's page tables (4 or 5 levels, 2 MiB and 1 GiB pages)."""
        if self._top is None:
            self._top = self.physical(self.info.symbol("init_top_pgt"))
        table = self._top
        shifts = (48, 39, 30, 21, 12) if self.l5 else (39, 30, 21, 12)
        for shift in shifts:
            at = table + ((vaddr >> shift) & 511) * 8
            (entry,) = struct.unpack("<Q", self._physical_bytes(at, 8))
            if not entry & PTE_PRESENT:
                raise DumpError(
                    f"kernel address {vaddr:#x} is not mapped (page table entry {entry:#x} at physical "
                    f"{at:#x}): a VMCOREINFO address is wrong, or the page tables are damaged"
                )
            base = entry & PTE_ADDRESS & ~self.sme
            if shift in (30, 21) and entry & PTE_HUGE:
                return (base & ~((1 << shift) - 1)) | (vaddr & ((1 << shift) - 1))
            table = base
        return table | (vaddr & 0xFFF)

    def _physical_bytes(self, paddr: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            pfn, within = divmod(paddr, self.page_size)
            take = min(size, self.page_size - within)
            out += self.memory.page(pfn)[within : within + take]
            paddr, size = paddr + take, size - take
        return bytes(out)

    def read(self, vaddr: int, size: int) -> bytes:
        """``size`` bytes at a kernel virtual address, page by page."""
        out = bytearray()
        while size > 0:
            take = min(size, self.page_size - vaddr % self.page_size)
            out += self._physical_bytes(self.physical(vaddr), take)
            vaddr, size = vaddr + take, size - take
        return bytes(out)

    def u64(self, vaddr: int) -> int:
        return struct.unpack("<Q", self.read(vaddr, 8))[0]


def open_memory(src: Source) -> Tuple[str, VmcoreInfo, KernelMemory]:
    """The format, the VMCOREINFO and the kernel memory of a dump, by its magic."""
    head = src.read(0, 16) if src.size else b""
    if head.startswith(FLAT_SIGNATURE):
        fmt, inner = "flattened", flattened_file(src)
        try:
            rebuilt = inner.read(0, 8)
        except NotHeld:
            rebuilt = b""
        if not rebuilt.startswith(KDUMP_SIGNATURE):
            raise DumpError("flattened stream: its records do not rebuild a kdump-compressed file")
        memory: KdumpMemory | ElfMemory = KdumpMemory(inner)
    elif head.startswith(KDUMP_SIGNATURE):
        fmt, memory = "kdump-compressed", KdumpMemory(src)
    elif head.startswith(ELF_MAGIC):
        fmt, memory = "elf", ElfMemory(src)
    else:
        raise DumpError(
            f"not a vmcore: the file starts with {head.hex() or 'nothing'}, not KDUMP, makedumpfile or "
            "ELF magic (a dmesg or console log is judged by chaosec2panic inspect)"
        )
    if memory.machine != "x86_64":
        raise DumpError(
            f"{fmt}: a dump of a {memory.machine or 'unknown'} machine; only x86_64 kernels' memory is "
            "translated here: use makedumpfile --dump-dmesg"
        )
    info = VmcoreInfo(parse_vmcoreinfo(memory.vmcoreinfo))
    if not info.release:
        raise DumpError(f"{fmt}: VMCOREINFO has no OSRELEASE: the note is damaged")
    return fmt, info, KernelMemory(memory, info)
