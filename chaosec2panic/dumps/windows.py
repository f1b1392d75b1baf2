"""Windows kernel dumps (MEMORY.DMP): the 64-bit dump header."""

import struct
from typing import List

from .source import Inspection, Source, held, problem, utc_iso

WINDOWS_SIGNATURE = b"PAGEDU64"
WINDOWS_BUGCHECK_OFFSET = 0x38
NMI_BUGCHECK = 0x80


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
    head = held(src, 0, WINDOWS_HEADER_SIZE + 8, "DUMP_HEADER64", unchecked)
    if head is None or len(head) < WINDOWS_TIME_OFFSET + 8:
        if head is not None:
            problems.append(
                problem("DUMP_HEADER64", len(head), f"{WINDOWS_HEADER_SIZE} bytes", "end of file")
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
        problems.append(problem("DumpType", WINDOWS_DUMPTYPE_OFFSET, "1, 2, 5 or 6", dump_type))
    elif dump_type in (5, 6):
        signature = head[WINDOWS_HEADER_SIZE : WINDOWS_HEADER_SIZE + 8]
        fmt = WINDOWS_BITMAP_SIGNATURES.get(signature, fmt)
        if signature not in WINDOWS_BITMAP_SIGNATURES:
            problems.append(
                problem(
                    "bitmap header",
                    WINDOWS_HEADER_SIZE,
                    "FDMPDUMP or SDMPDUMP",
                    signature.hex() or "end of file",
                )
            )
    complete: bool | None = None if fmt == "unknown" else True
    if required <= 0:
        problems.append(problem("RequiredDumpSpace", WINDOWS_REQUIRED_OFFSET, "a size > 0", required))
        complete = None
    elif src.size < required and complete is not None:
        problems.append(
            problem(
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
        crash_time=utc_iso((filetime - FILETIME_UNIX) / 1e7) if filetime > FILETIME_UNIX else "",
        nmi_panic=code == NMI_BUGCHECK,
        panic_message=f"bugcheck 0x{code:08x}"
        + (f" ({name})" if name else "")
        + " ("
        + ", ".join(f"0x{p:x}" for p in params)
        + ")",
        problems=tuple(problems),
        details={"bugcheck": code, "dump_type": dump_type, "required_size": required},
    )
