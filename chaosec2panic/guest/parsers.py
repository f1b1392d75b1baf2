"""Pure parsers of the guest scripts' ``key=value`` output, and the verdicts drawn from it."""

import base64
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List

from ..dumps import SparseSource

__all__ = [
    "CRASHKERNEL",
    "DEFAULT_CRASHKERNEL",
    "LINUX_SETTINGS",
    "RESTORABLE_VALUES",
    "WINDOWS_DUMP_TYPES",
    "WINDOWS_SETTINGS",
    "Check",
    "CrashLog",
    "DumpFile",
    "GuestReport",
    "KdumpVerdict",
    "SettingsChange",
    "Upload",
    "ValueFormat",
    "crash_log",
    "dump_files",
    "kdump_verdict",
    "parse_report",
    "settings_change",
    "upload_report",
]

REPEATED_KEYS = frozenset({"dump"})
HEAD_LIMIT = 1 << 20  # what a dump line's first blocks may inflate to (the scripts send 64 KiB)
# CrashControl\CrashDumpEnabled values that write the DumpFile (MEMORY.DMP). 3 (small) writes a
# minidump to %SystemRoot%\Minidump instead: not a dump this extension can find or judge.
WINDOWS_DUMP_TYPES = {"1": "complete", "2": "kernel", "7": "automatic"}
WINDOWS_SMALL_DUMP = "3"
# Windows 8 / Server 2012 (NT 6.2) and later always bugcheck 0x80 on an NMI (KB 2750146).
NMI_ALWAYS_BUGCHECKS = (6, 2)
# What kdump_settings reports, in the order it is best undone (the service before its files).
LINUX_SETTINGS = (
    "kdump_active",
    "kdump_enabled",
    "unknown_nmi_panic",
    "nmi_sysctl_file",
    "use_kdump",
    "crashkernel",
    "packages",
)
WINDOWS_SETTINGS = ("crash_dump_enabled", "nmi_crash_dump", "auto_reboot")
# RHEL 9's kdump default (kdumpctl get-default-crashkernel): the kernel picks by memory size.
DEFAULT_CRASHKERNEL = "1G-4G:192M,4G-64G:256M,64G-:512M"
# A crashkernel= value as the kernel parses it (kernel/crash_reserve.c; sizes as memparse reads
# them): size[@offset], size,high|low|cma, or ranges start-[end]:size[,...][@offset]; and RHEL 8's
# "auto". crashkernel.sh's crashkernel_value holds the same grammar on the instance.
_SIZE = r"(?:0[xX][0-9a-fA-F]+|[0-9]+)[KMGTPEkmgtpe]?"
_RANGE = rf"{_SIZE}-(?:{_SIZE})?:{_SIZE}"
_CRASHKERNEL = rf"auto|{_SIZE}(?:@{_SIZE}|,(?:high|low|cma))?|{_RANGE}(?:,{_RANGE})*(?:@{_SIZE})?"
CRASHKERNEL = re.compile(rf"\A(?:{_CRASHKERNEL})\Z")


@dataclass(frozen=True)
class ValueFormat:
    """What a setting's value may be: a pattern for the whole value, and the same said for a person."""

    pattern: re.Pattern[str]
    what: str

    def fits(self, value: Any) -> bool:
        return isinstance(value, str) and self.pattern.fullmatch(value) is not None


_STATE = re.compile(r"\A[a-z-]{0,32}\Z")  # what systemctl is-active / is-enabled prints, or absent
_DWORD = ValueFormat(re.compile(r"\A(?:-?[0-9]{1,10})?\Z"), "a whole number, or empty for absent")
# What restore_kdump_settings may send back as each setting's value: what kdump_settings reports
# for it, and nothing a sourced grub file, a sed program or a sysctl line could take for more
# than a value. Empty means there was none. Packages are never restored. kdump_settings.sh's
# restorable and kdump_settings.ps1 check the same on the instance.
RESTORABLE_VALUES: Dict[str, ValueFormat] = {
    "kdump_active": ValueFormat(_STATE, "a systemctl state such as active or inactive"),
    "kdump_enabled": ValueFormat(_STATE, "a systemctl state such as enabled or disabled"),
    "unknown_nmi_panic": ValueFormat(re.compile(r"\A(?:-?[0-9]{1,10})?\Z"), "a whole number, or empty"),
    "nmi_sysctl_file": ValueFormat(
        re.compile(r"\A(?:absent|none|-?[0-9]{1,10})\Z"), "absent, none or a whole number"
    ),
    "use_kdump": ValueFormat(re.compile(r"\A[0-9A-Za-z]{0,16}\Z"), "letters and digits, such as 0 or 1"),
    "crashkernel": ValueFormat(
        re.compile(rf"\A(?:{_CRASHKERNEL})?\Z"),
        f"a crashkernel= value such as 256M or {DEFAULT_CRASHKERNEL}, or empty",
    ),
    "crash_dump_enabled": _DWORD,
    "nmi_crash_dump": _DWORD,
    "auto_reboot": _DWORD,
}


@dataclass(frozen=True)
class GuestReport:
    """One script's output: single values, repeated values, and what was wrong with it."""

    schema: str
    values: Dict[str, str]
    repeated: Dict[str, List[str]]
    problems: List[str]

    @property
    def complete(self) -> bool:
        return not self.problems

    def get(self, key: str) -> str:
        return self.values.get(key, "")


def parse_report(text: str, schema: str) -> GuestReport:
    """Parse a guest script's stdout; a missing header or end line is a problem, not an error."""
    values: Dict[str, str] = {}
    repeated: Dict[str, List[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or not key:
            continue
        if key in REPEATED_KEYS:
            repeated.setdefault(key, []).append(value)
        else:
            values[key] = value
    problems = []
    found = values.get("schema", "")
    if found.split("/")[0] != schema:
        problems.append(f"schema: expected {schema!r}, found {found or 'nothing'!r}")
    if values.get("end") != "ok":
        problems.append("end: the output stops before its end line (cut short or the script died)")
    return GuestReport(found, values, repeated, problems)


@dataclass(frozen=True)
class Check:
    """One readiness check: pass, fail or unknown, with what was found and expected."""

    status: str
    found: str
    expected: str

    def to_dict(self) -> Dict[str, str]:
        return {"status": self.status, "found": self.found, "expected": self.expected}


@dataclass(frozen=True)
class KdumpVerdict:
    """Whether an instance will capture a dump on an NMI: armed, not-armed or unknown."""

    verdict: str
    checks: Dict[str, Check] = field(default_factory=dict)
    reasons: List[str] = field(default_factory=list)
    facts: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "verdict": self.verdict,
            "checks": {name: check.to_dict() for name, check in self.checks.items()},
            "reasons": list(self.reasons),
            **self.facts,
        }


def _int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _equals(found: str, expected: str) -> Check:
    if not found:
        return Check("unknown", "", expected)
    return Check("pass" if found == expected else "fail", found, expected)


def _dump_space(report: GuestReport, min_ratio: float) -> Check:
    free_kb, mem_kb = _int(report.get("dump_dir_free_kb")), _int(report.get("mem_total_kb"))
    expected = f">= {min_ratio:g} x memory"
    if free_kb is None or mem_kb is None:
        return Check("unknown", "", expected)
    need_kb = int(mem_kb * min_ratio)
    status = "pass" if free_kb >= need_kb else "fail"
    return Check(status, f"{free_kb} KiB free, {mem_kb} KiB memory", expected)


def _linux_checks(report: GuestReport) -> Dict[str, Check]:
    size = _int(report.get("crash_size"))
    service = report.get("kdump_service")
    return {
        "crash_kernel_loaded": _equals(report.get("crash_loaded"), "1"),
        "crashkernel_reserved": Check(
            "unknown" if size is None else ("pass" if size > 0 else "fail"),
            f"{size} bytes (crashkernel={report.get('cmdline_crashkernel') or 'absent'})"
            if size is not None
            else "",
            "> 0 bytes",
        ),
        "unknown_nmi_panic": _equals(report.get("unknown_nmi_panic"), "1"),
        "kdump_service": Check(
            {"operational": "pass", "not-operational": "fail"}.get(service, "unknown"),
            f"{service or 'nothing'} ({report.get('kdump_tool') or 'no tool'})",
            "operational",
        ),
    }


def _windows_version(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in text.split(".")[:2])
    except ValueError:
        return None


def _nmi_crash_dump(report: GuestReport) -> Check:
    found, expected = report.get("nmi_crash_dump"), "1"
    version = _windows_version(report.get("os_version"))
    if not found and version is not None and version >= NMI_ALWAYS_BUGCHECKS:
        return Check("pass", "absent (Windows 8 / Server 2012 and later bugcheck on an NMI)", expected)
    return _equals(found, expected)


def _windows_checks(report: GuestReport) -> Dict[str, Check]:
    dump_type = report.get("crash_dump_enabled")
    expected = "complete, kernel or automatic"
    if dump_type == WINDOWS_SMALL_DUMP:
        dump = Check("fail", "small (a minidump in %SystemRoot%\\Minidump, not the DumpFile)", expected)
    else:
        dump = Check(
            "unknown" if not dump_type else ("pass" if dump_type in WINDOWS_DUMP_TYPES else "fail"),
            WINDOWS_DUMP_TYPES.get(dump_type, dump_type),
            expected,
        )
    return {
        "crash_dump_enabled": dump,
        "nmi_crash_dump": _nmi_crash_dump(report),
        "auto_reboot": _equals(report.get("auto_reboot"), "1"),
    }


def kdump_verdict(report: GuestReport, min_dump_space_ratio: float) -> KdumpVerdict:
    """Judge a ``kdump_status`` report. Anything not proven is unknown, never armed."""
    if not report.complete:
        return KdumpVerdict("unknown", reasons=list(report.problems))
    windows = report.get("os_id") == "windows"
    checks = _windows_checks(report) if windows else _linux_checks(report)
    checks["dump_space"] = _dump_space(report, min_dump_space_ratio)
    failed = [
        f"{name}: found {c.found or 'nothing'}, expected {c.expected}"
        for name, c in checks.items()
        if c.status == "fail"
    ]
    unknown = [f"{name}: could not be read" for name, c in checks.items() if c.status == "unknown"]
    verdict = "not-armed" if failed else ("unknown" if unknown else "armed")
    known = ("boot_id", "uptime", "now", "clock_synced", "kernel_release", "os_id", "dump_dir")
    facts = {k: report.get(k) for k in known}
    return KdumpVerdict(verdict, checks, failed + unknown, facts)


@dataclass(frozen=True)
class DumpFile:
    """A dump file as listed by ``crash_dumps``: where, how big, when. For the newest, also its
    first blocks (``head``), its last bytes (``tail``) and the panic lines of the dmesg saved
    beside it (``dmesg_panic``, None when there is no such file)."""

    path: str
    size: int
    mtime: int
    head: bytes = b""
    tail: bytes = b""
    dmesg_panic: str | None = None

    def source(self) -> SparseSource:
        """The bytes sent, at their offsets in the file, for the dump readers to judge."""
        return SparseSource(self.size, ((0, self.head), (self.size - len(self.tail), self.tail)))


def _inflate(text: str) -> bytes:
    """The first blocks of a dump line: base64 of gzip, bounded (a bad line raises ValueError)."""
    if not text:
        return b""
    unzip = zlib.decompressobj(wbits=31)
    try:
        data = unzip.decompress(base64.b64decode(text, validate=True), HEAD_LIMIT + 1)
    except zlib.error as e:
        raise ValueError(f"not gzip: {e}") from e
    if not unzip.eof or len(data) > HEAD_LIMIT:
        raise ValueError(f"gzip stream cut short or larger than {HEAD_LIMIT} bytes")
    return data


def dump_files(report: GuestReport) -> tuple[List[DumpFile], List[str]]:
    """The dump files of a ``crash_dumps`` report, and a problem for each line that is unreadable.

    A line is ``path|size|mtime``, or for the newest dump
    ``path|size|mtime|dmesg panic lines (hex)|first blocks (base64 of gzip)|last bytes (hex)``.
    """
    dumps: List[DumpFile] = []
    problems: List[str] = []
    for line in report.repeated.get("dump", []):
        try:
            path, size, mtime, *sent = line.split("|")
            if not sent:
                dumps.append(DumpFile(path, int(size), int(mtime)))
                continue
            panic, head, tail = sent
            found = bytes.fromhex(panic).decode(errors="replace").strip("\0") if panic else None
            dumps.append(DumpFile(path, int(size), int(mtime), _inflate(head), bytes.fromhex(tail), found))
        except ValueError as e:
            problems.append(f"dump: unreadable line {line[:80]!r} ({e})")
    return dumps, problems


@dataclass(frozen=True)
class CrashLog:
    """What ``crash_dumps`` sent of the newest dump's own account of its crash: the lines of the
    crashed kernel's log around its last panic, where they were read (``source``: ``dmesg-file``
    beside the dump, or ``dump-dmesg``, makedumpfile out of the dump; ``file``), or why they
    were not (``error``)."""

    source: str
    file: str
    lines: List[str]
    error: str


def crash_log(report: GuestReport) -> CrashLog:
    """The crash log of a ``crash_dumps`` report (its ``crash_log*`` lines)."""
    source, file, error = report.get("crash_log_source"), report.get("crash_log_file"), ""
    lines: List[str] = []
    if source:
        try:
            lines = _inflate(report.get("crash_log")).decode(errors="replace").splitlines()
        except ValueError as e:
            error = f"crash_log: unreadable ({e})"
        if not lines and not error:
            error = f"crash_log: the log read from {file} is empty"
    else:
        error = report.get("crash_log_error") or "the instance sent no crash log"
    return CrashLog(source, file, lines, error)


@dataclass(frozen=True)
class SettingsChange:
    """What one ``kdump_settings`` run found and did: each setting before and after, the error
    that stopped it, and why the instance must reboot for the result to hold (empty: it need not)."""

    platform: str
    settings: Dict[str, Dict[str, Any]]
    error: str
    reboot: str
    boot_id: str
    uptime: float | None

    @property
    def changed(self) -> List[str]:
        return [name for name, s in self.settings.items() if s["changed"]]


def _reboot_reason(report: GuestReport, windows: bool, changed: Dict[str, Dict[str, Any]]) -> str:
    if windows:
        names = [n for n in WINDOWS_SETTINGS if changed[n]["changed"]]
        return f"CrashControl changed ({', '.join(names)}): it takes effect at the next boot" if names else ""
    configured = changed["crashkernel"]["after"]
    running = report.get("running_crashkernel")
    size = _int(report.get("crash_size"))
    if changed["crashkernel"]["changed"] and configured != running:
        return (
            f"crashkernel={configured or '(none)'} is configured, the running kernel booted with "
            f"crashkernel={running or '(none)'}"
        )
    if report.get("action") == "arm" and configured and not size:
        return f"no crash memory reserved in the running kernel; crashkernel={configured} applies at boot"
    return ""


def settings_change(report: GuestReport) -> SettingsChange:
    """Read a ``kdump_settings`` report: each setting's before, after and changed, the error, and
    the reboot it needs (a crashkernel= the running kernel does not have, or new CrashControl)."""
    windows = report.get("os_id") == "windows"
    names = WINDOWS_SETTINGS if windows else LINUX_SETTINGS
    settings = {
        n: {
            "before": report.get(f"{n}_before"),
            "after": report.get(f"{n}_after"),
            "changed": report.get(f"{n}_before") != report.get(f"{n}_after"),
        }
        for n in names
    }
    error = report.get("error") or "; ".join(report.problems)
    uptime = report.get("uptime")
    try:
        seconds: float | None = float(uptime)
    except ValueError:
        seconds = None
    return SettingsChange(
        "windows" if windows else "linux",
        settings,
        error,
        _reboot_reason(report, windows, settings),
        report.get("boot_id"),
        seconds,
    )


@dataclass(frozen=True)
class Upload:
    """What one ``collect_crash_dump`` run sent: the destination, each file's size as the
    instance saw it, and why the upload failed (empty when it did not)."""

    dest: str
    files: Dict[str, int]
    error: str


def upload_report(text: str) -> Upload:
    """Read a ``collect_crash_dump`` report; an output cut short or unreadable is an error."""
    report = parse_report(text, "collect_crash_dump")
    files: Dict[str, int] = {}
    problems = list(report.problems)
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key != "file" or not value:
            continue
        name, _, size = value.rpartition("|")
        try:
            files[name] = int(size)
        except ValueError:
            problems.append(f"file: unreadable line {value[:80]!r}")
    return Upload(report.get("dest"), files, "; ".join(filter(None, [report.get("error"), *problems])))
