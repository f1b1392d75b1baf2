"""Crash dump headers and console text: detect, parse, judge. Pure: bytes and str in, data out.

Parsers never raise on bad input; they return what they could read and a list of problems,
each naming the field, the offset, what was expected and what was found.
"""

import re
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Callable, Dict, List

__all__ = ["ConsoleFindings", "DumpHeader", "console_findings", "identify_dump"]

KDUMP_SIGNATURE = b"KDUMP   "
FLAT_SIGNATURE = b"makedumpfile"
FLAT_END_RECORD = b"\xff" * 16
ELF_MAGIC = b"\x7fELF"
WINDOWS_SIGNATURE = b"PAGEDU64"
KDUMP_STATUS_INCOMPLETE = 0x8
KDUMP_COMPRESSION = {0x1: "zlib", 0x2: "lzo", 0x4: "snappy", 0x20: "zstd"}
UTS_FIELD = 65
UTS_OFFSET = 12
ET_CORE = 4
ELF_FLAG_INCOMPLETE = 0x1
WINDOWS_BUGCHECK_OFFSET = 0x38
NMI_BUGCHECK = 0x80
WRITING_NAMES = frozenset({"vmcore-incomplete", "dump-incomplete"})


@dataclass(frozen=True)
class DumpHeader:
    """What the first and last bytes of a dump file say about it."""

    format: str
    complete: bool | None
    kernel_release: str = ""
    machine: str = ""
    crash_time: str = ""
    compression: str = ""
    bugcheck: int | None = None
    problems: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, object]:
        return {
            "format": self.format,
            "complete": self.complete,
            "kernel_release": self.kernel_release,
            "machine": self.machine,
            "crash_time": self.crash_time,
            "compression": self.compression,
            "bugcheck": self.bugcheck,
            "problems": list(self.problems),
        }


def _cstr(data: bytes, offset: int, size: int) -> str:
    return data[offset : offset + size].split(b"\0", 1)[0].decode("ascii", "replace")


def _short(name: str, data: bytes, need: int) -> List[str]:
    if len(data) >= need:
        return []
    return [f"{name}: header cut short at offset {len(data)}, expected at least {need} bytes"]


def _kdump(head: bytes, tail: bytes) -> DumpHeader:
    problems = _short("kdump-compressed", head, 428)
    if problems:
        return DumpHeader("kdump-compressed", None, problems=problems)
    (seconds,) = struct.unpack_from("<q", head, 408)
    (status,) = struct.unpack_from("<I", head, 424)
    incomplete = bool(status & KDUMP_STATUS_INCOMPLETE)
    if incomplete:
        problems.append(f"status at offset 424: incomplete flag 0x8 set (status 0x{status:x})")
    try:
        crash_time = datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        crash_time = ""
        problems.append(f"timestamp at offset 408: {seconds} is not a time")
    return DumpHeader(
        "kdump-compressed",
        not incomplete,
        kernel_release=_cstr(head, UTS_OFFSET + 2 * UTS_FIELD, UTS_FIELD),
        machine=_cstr(head, UTS_OFFSET + 4 * UTS_FIELD, UTS_FIELD),
        crash_time=crash_time,
        compression=",".join(n for bit, n in KDUMP_COMPRESSION.items() if status & bit) or "none",
        problems=problems,
    )


def _flattened(head: bytes, tail: bytes) -> DumpHeader:
    complete = tail[-16:] == FLAT_END_RECORD
    problems = (
        []
        if complete
        else [f"end record: expected 16 bytes of 0xff at the end, found {tail[-16:].hex() or 'nothing'}"]
    )
    return DumpHeader("flattened", complete, problems=problems)


def _elf(head: bytes, tail: bytes) -> DumpHeader:
    problems = _short("elf", head, 52)
    if problems:
        return DumpHeader("elf", None, problems=problems)
    (e_type,) = struct.unpack_from("<H", head, 16)
    if e_type != ET_CORE:
        return DumpHeader(
            "elf", False, problems=[f"e_type at offset 16: expected 4 (ET_CORE), found {e_type}"]
        )
    flags_offset = 48 if head[4] == 2 else 36
    (flags,) = struct.unpack_from("<I", head, flags_offset)
    incomplete = bool(flags & ELF_FLAG_INCOMPLETE)
    problems = [f"e_flags at offset {flags_offset}: incomplete flag 0x1 set"] if incomplete else []
    return DumpHeader("elf", not incomplete, problems=problems)


def _windows(head: bytes, tail: bytes) -> DumpHeader:
    problems = _short("windows", head, WINDOWS_BUGCHECK_OFFSET + 4)
    if problems:
        return DumpHeader("windows", None, problems=problems)
    (code,) = struct.unpack_from("<I", head, WINDOWS_BUGCHECK_OFFSET)
    return DumpHeader("windows", True, bugcheck=code)


FORMATS: List[tuple[bytes, Callable[[bytes, bytes], DumpHeader]]] = [
    (KDUMP_SIGNATURE, _kdump),
    (FLAT_SIGNATURE, _flattened),
    (ELF_MAGIC, _elf),
    (WINDOWS_SIGNATURE, _windows),
]


def identify_dump(head: bytes, tail: bytes, name: str = "") -> DumpHeader:
    """Identify a dump by its magic and judge it from its first bytes and its last 16 bytes.

    A file named as the distros name a dump being written (``vmcore-incomplete``,
    ``dump-incomplete``) is incomplete whatever its header says.
    """
    for magic, parse in FORMATS:
        if head.startswith(magic):
            found = parse(head, tail)
            break
    else:
        found = DumpHeader(
            "unknown",
            None,
            problems=[f"signature at offset 0: no known dump magic, found {head[:16].hex() or 'nothing'}"],
        )
    base = name.rsplit("/", 1)[-1]
    if base in WRITING_NAMES:
        problems = [*found.problems, f"name: {base} (makedumpfile did not finish)"]
        return DumpHeader(**{**found.__dict__, "complete": False, "problems": problems})
    return found


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
