"""ELF cores: /proc/vmcore as the kernel shows it, or makedumpfile -E."""

import struct
from dataclasses import dataclass
from typing import Dict, List, Tuple

from .source import Inspection, Source, crash_time, held, parse_vmcoreinfo, problem, unpack

ELF_MAGIC = b"\x7fELF"
ET_CORE = 4
ELF_FLAG_INCOMPLETE = 0x1


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
    head = held(src, 0, 64, "ELF header", unchecked)
    if head is None or len(head) < 52:
        if head is not None:
            problems.append(problem("ELF header", len(head), "52 bytes", "end of file"))
        return Inspection("", "vmcore", name, None, problems=tuple(problems), unchecked=tuple(unchecked))
    layout = ELF_LAYOUTS.get(head[4])
    if head[5] not in (1, 2) or layout is None or len(head) < layout.header_size:
        return Inspection(
            "",
            "unknown",
            name,
            None,
            problems=(problem("e_ident", 4, "class 1 or 2, data 1 or 2", head[4:6].hex()),),
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
            problems=(problem("e_type", 16, "4 (ET_CORE)", e_type),),
        )
    (phoff,) = struct.unpack_from(end + layout.phoff, head, layout.phoff_at)
    (flags,) = struct.unpack_from(end + "I", head, layout.flags_at)
    phentsize, phnum = struct.unpack_from(end + "HH", head, layout.phentsize_at)
    complete: bool | None = True
    if flags & ELF_FLAG_INCOMPLETE:
        problems.append(problem("e_flags", layout.flags_at, "incomplete flag 0x1 clear", f"0x{flags:x}"))
        complete = False
    if phnum == PN_XNUM:  # the real count is in section header 0's sh_info
        (shoff,) = struct.unpack_from(end + layout.phoff, head, layout.shoff_at)
        sh_info = held(src, shoff + layout.sh_info_at, 4, "section header 0 sh_info", unchecked)
        got = None if sh_info is None else unpack(end + "I", sh_info, 0)
        if got is None:
            if sh_info is not None:
                problems.append(
                    problem("section header 0 sh_info", shoff + layout.sh_info_at, "e_phnum", "end of file")
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
        problems.append(problem("e_phentsize", layout.phentsize_at, entry, phentsize))
        return Inspection(
            "", "vmcore", name, None, machine=machine, problems=tuple(problems), unchecked=tuple(unchecked)
        )
    if phoff + phnum * entry > src.size:  # checked before reading: sh_info may say 4 billion
        problems.append(
            problem("program headers", max(phoff, src.size), f"{phnum} of {entry} bytes", "end of file")
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
        table = held(src, phoff + first * entry, count * entry, "program headers", unchecked)
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
                notes = held(src, p_offset, p_filesz, "PT_NOTE", unchecked)
                notes_held = notes is not None
                if notes is not None:
                    info, note_problems = _elf_notes(notes, p_offset, end)
                    problems.extend(note_problems)
    details: Dict[str, object] = {"segments": phnum, "memory_segments": loads, "expected_size": expected}
    if not loads:
        problems.append(
            problem(
                "program headers",
                phoff,
                "a PT_LOAD segment with bytes in the file (p_filesz > 0)",
                f"none of {phnum} segments: the core holds no memory",
            )
        )
        complete = False
    if src.size < expected:
        problems.append(
            problem(
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
        crash_time=crash_time(info, ""),
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
                problem(
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
