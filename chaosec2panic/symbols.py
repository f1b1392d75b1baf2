"""The deeper view of a vmcore with the kernel's debug symbols: what people run ``crash`` for.

``find_vmlinux`` finds the debug vmlinux of a release in a debug tree (``/usr/lib/debug``);
``check_vmlinux`` refuses, naming both, a vmlinux built for another kernel than the dump's (its
``.note.gnu.build-id`` and ``linux_banner`` against VMCOREINFO's BUILD-ID and OSRELEASE), so that a
wrong file is an error and never a wrong answer. Both read the ELF file directly. ``symbol_view``
reads the dump through drgn (the ``symbols`` extra: ``pip install 'chaosec2panic[symbols]'``),
whose wheel carries libkdumpfile and so reads kdump-compressed, flattened and ELF vmcores.
"""

import os
import re
import stat
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .dumps.source import OPEN_FLAGS
from .memory import DumpError, VmcoreInfo

__all__ = ["SymbolView", "VmlinuxError", "check_vmlinux", "find_vmlinux", "symbol_view", "vmlinux_identity"]

ELF_MAGIC = b"\x7fELF"
EM_X86_64 = 62
NT_GNU_BUILD_ID = 3
SHT_NOTE = 7
BANNER = re.compile(rb"Linux version (\S+) \(")
MAX_SECTION_HEADERS = 1 << 16
MAX_RODATA = 256 << 20  # a distribution kernel's .rodata is tens of MiB
DRGN_MISSING = (
    "the symbol view needs drgn: pip install 'chaosec2panic[symbols]' "
    "(or run crash -s VMLINUX DUMP); the analysis without --vmlinux needs nothing"
)


class VmlinuxError(ValueError):
    """A vmlinux that is missing, not a kernel image, or not the dump's kernel's."""


def _sections(f: Any, path: Path) -> Dict[str, Tuple[int, int, int]]:
    """Section name -> (type, file offset, size) of a little-endian ELF64 x86-64 file."""
    head = f.read(64)
    if len(head) < 64 or not head.startswith(ELF_MAGIC):
        raise VmlinuxError(f"{path}: not an ELF file: name the kernel's debug vmlinux")
    if head[4] != 2 or head[5] != 1 or struct.unpack_from("<H", head, 18)[0] != EM_X86_64:
        raise VmlinuxError(f"{path}: not a little-endian x86-64 ELF64 file: name an x86-64 vmlinux")
    shoff, shentsize, shnum, shstrndx = (
        struct.unpack_from("<Q", head, 40)[0],
        *struct.unpack_from("<HHH", head, 58),
    )
    if not shoff or shentsize < 64 or not 0 < shnum <= MAX_SECTION_HEADERS or shstrndx >= shnum:
        raise VmlinuxError(f"{path}: no section headers: a stripped or damaged file, not a debug vmlinux")
    f.seek(shoff)
    table = f.read(shnum * shentsize)
    if len(table) < shnum * shentsize:
        raise VmlinuxError(f"{path}: its section headers run past the end of the file: the file is cut")
    rows = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
    _, _, _, _, str_off, str_size = rows[shstrndx]
    f.seek(str_off)
    names = f.read(min(str_size, 1 << 20))
    found: Dict[str, Tuple[int, int, int]] = {}  # the first section of each name
    for name_at, kind, _flags, _addr, offset, size in rows:
        name = names[name_at : names.find(b"\0", name_at)].decode("ascii", "replace")
        found.setdefault(name, (kind, offset, size))
    return found


def _build_id(notes: bytes) -> str:
    """The GNU build id (hex) among ELF notes, or ""."""
    at = 0
    while at + 12 <= len(notes):
        namesz, descsz, kind = struct.unpack_from("<III", notes, at)
        name_end = at + 12 + (namesz + 3) // 4 * 4
        if kind == NT_GNU_BUILD_ID and notes[at + 12 : at + 12 + namesz].rstrip(b"\0") == b"GNU":
            return notes[name_end : name_end + descsz].hex()
        at = name_end + (descsz + 3) // 4 * 4
    return ""


def vmlinux_identity(path: Path) -> Tuple[str, str]:
    """The build id (hex, or "") and the release of its ``linux_banner`` (or "") of a vmlinux."""
    try:
        with os.fdopen(os.open(path, OPEN_FLAGS), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise VmlinuxError(f"{path}: not a regular file: name the kernel's debug vmlinux")
            sections = _sections(f, path)
            build_id = ""
            # vmlinux keeps its build id in .notes, other files in .note.gnu.build-id
            for kind, offset, size in sections.values():
                if kind == SHT_NOTE and not build_id:
                    f.seek(offset)
                    build_id = _build_id(f.read(min(size, 1 << 16)))
            release = ""
            if ".rodata" in sections:
                _, offset, size = sections[".rodata"]
                f.seek(offset)
                banner = BANNER.search(f.read(min(size, MAX_RODATA)))
                release = banner.group(1).decode("ascii", "replace") if banner else ""
    except OSError as e:
        raise VmlinuxError(f"{path}: cannot read: {e.strerror or e}: name the debug vmlinux file") from None
    if not build_id and not release:
        raise VmlinuxError(f"{path}: neither a build id nor a linux_banner: not a kernel image")
    return build_id, release


def check_vmlinux(path: Path, info: VmcoreInfo) -> str:
    """The vmlinux's build id, once it is shown to be the dump's kernel's; else ``VmlinuxError``
    naming both sides. The build id decides when both have one, the release otherwise."""
    build_id, release = vmlinux_identity(path)
    dump_id = info.fields.get("BUILD-ID", "").lower()
    dump_release = info.release
    if dump_id and build_id and dump_id != build_id:
        raise VmlinuxError(
            f"{path} is not this dump's kernel: its build id is {build_id} (release {release or 'unknown'}), "
            f"the dump's is {dump_id} (release {dump_release or 'unknown'}): use the debug vmlinux "
            f"of that build, e.g. Debian's linux-image-{dump_release}-dbg"
        )
    if dump_release and release and dump_release != release:
        raise VmlinuxError(
            f"{path} is not this dump's kernel: it is release {release}, the dump is {dump_release}: "
            f"use the debug vmlinux of {dump_release}, e.g. Debian's linux-image-{dump_release}-dbg"
        )
    if not (dump_id and build_id) and not (dump_release and release):
        raise VmlinuxError(
            f"{path}: cannot tell whether it is this dump's kernel (vmlinux build id "
            f"{build_id or 'none'}, release {release or 'none'}; dump build id {dump_id or 'none'}, "
            f"release {dump_release or 'none'}): name a vmlinux with a build id or a linux_banner"
        )
    return build_id


def find_vmlinux(directory: Path, info: VmcoreInfo) -> Path:
    """The debug vmlinux of the dump's kernel in a debug tree like ``/usr/lib/debug``: by the
    dump's build id (``.build-id/xx/rest.debug``), else by its release (``boot/vmlinux-REL``,
    ``lib/modules/REL/vmlinux``)."""
    if not directory.is_dir():
        raise VmlinuxError(f"--debuginfo-dir {directory}: not a directory: name a tree like /usr/lib/debug")
    build_id, release = info.fields.get("BUILD-ID", "").lower(), info.release
    tried: List[Path] = []
    if len(build_id) > 2:
        tried.append(directory / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug")
    if release:
        tried += [directory / "boot" / f"vmlinux-{release}", directory / "lib/modules" / release / "vmlinux"]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(t) for t in tried) or "nothing (the dump names neither build id nor release)"
    raise VmlinuxError(
        f"--debuginfo-dir {directory}: no vmlinux for this dump's kernel (looked for {looked}): install "
        f"its debug package (Debian: linux-image-{release or 'RELEASE'}-dbg) or name it with --vmlinux"
    )


@dataclass(frozen=True)
class SymbolView:
    """What the kernel's memory says at the crash, read with its debug symbols.

    ``cpus`` has, per online CPU, the task on it and its backtrace; ``blocked`` the tasks in D
    state with theirs. A frame is its function, file and line (None where the debug info has
    none). ``unread`` names each part that could not be read and why; the rest still stands.
    """

    vmlinux: str
    build_id: str
    tasks: int | None = None
    load_average: List[float] | None = None
    uptime_seconds: float | None = None
    memory: Dict[str, int] = field(default_factory=dict)
    cpus: List[Dict[str, Any]] = field(default_factory=list)
    blocked: List[Dict[str, Any]] = field(default_factory=list)
    unread: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def _frames(trace: Any) -> List[Dict[str, Any]]:
    frames = []
    for frame in trace:
        try:
            filename, line, _column = frame.source()
        except LookupError:
            filename, line = None, None
        name = frame.name
        if name is None:
            try:
                name = frame.symbol().name
            except LookupError:
                name = hex(frame.pc)
        frames.append({"function": name, "file": filename, "line": line, "inline": frame.is_inline})
    return frames


def _task(prog: Any, task: Any) -> Dict[str, Any]:
    from drgn.helpers.linux.sched import task_state_to_char

    return {
        "pid": task.pid.value_(),
        "comm": task.comm.string_().decode("utf-8", "replace"),
        "state": task_state_to_char(task),
        "frames": _frames(prog.stack_trace(task)),
    }


def symbol_view(dump: Path, vmlinux: Path, build_id: str) -> SymbolView:
    """Read the dump through drgn with ``vmlinux`` (already checked by ``check_vmlinux``)."""
    try:
        import drgn
        from drgn.helpers.linux.cpumask import for_each_online_cpu
        from drgn.helpers.linux.mm import totalram_pages
        from drgn.helpers.linux.pid import for_each_task
        from drgn.helpers.linux.sched import cpu_curr, loadavg, task_state_to_char
        from drgn.helpers.linux.timekeeping import uptime
        from drgn.helpers.linux.vmstat import nr_free_pages
    except ImportError:
        raise DumpError(DRGN_MISSING) from None
    prog = drgn.Program()
    try:
        prog.set_core_dump(str(dump))
        prog.load_debug_info([str(vmlinux)])
    except drgn.MissingDebugInfoError as e:
        raise VmlinuxError(f"{vmlinux}: drgn found no debug info in it for this dump's kernel: {e}") from None
    except Exception as e:  # libkdumpfile's errors reach Python as plain Exception
        raise DumpError(f"drgn cannot read the dump ({e}): a truncated or damaged dump") from None
    unread: List[str] = []
    found: Dict[str, Any] = {}

    def part(name: str, read: Any) -> Any:
        try:
            return read()
        except Exception as e:  # drgn's FaultError, LookupError, and libkdumpfile's plain Exception
            unread.append(f"{name}: {e}")
            return None

    tasks = part("tasks", lambda: list(for_each_task(prog))) or []
    found["tasks"] = len(tasks) if tasks else None
    avg = part("load average", lambda: loadavg(prog))
    found["load_average"] = [round(a, 2) for a in avg] if avg else None
    found["uptime_seconds"] = part("uptime", lambda: round(uptime(prog), 3))
    page = part("page size", lambda: prog["PAGE_SIZE"].value_())
    pages = (("total_bytes", totalram_pages), ("free_bytes", nr_free_pages)) if page else ()
    counted = {
        key: part(key.replace("_bytes", " memory"), lambda count=count: count(prog)) for key, count in pages
    }
    found["memory"] = {key: n * page for key, n in counted.items() if n is not None}
    cpus = part("online CPUs", lambda: list(for_each_online_cpu(prog))) or []
    found["cpus"] = [
        {"cpu": cpu, **shown}
        for cpu in cpus
        if (shown := part(f"CPU {cpu} backtrace", lambda cpu=cpu: _task(prog, cpu_curr(prog, cpu))))
    ]
    blocked = [t for t in tasks if part("task state", lambda t=t: task_state_to_char(t)) == "D"]
    found["blocked"] = [s for t in blocked if (s := part("D-state backtrace", lambda t=t: _task(prog, t)))]
    return SymbolView(str(vmlinux), build_id, unread=unread, **found)
