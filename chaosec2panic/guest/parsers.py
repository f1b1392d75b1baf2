"""Pure parsers of the guest scripts' ``key=value`` output, and the verdicts drawn from it."""

from dataclasses import dataclass, field
from typing import Any, Dict, List

__all__ = [
    "Check",
    "DumpFile",
    "GuestReport",
    "KdumpVerdict",
    "dump_files",
    "kdump_verdict",
    "parse_report",
]

REPEATED_KEYS = frozenset({"dump"})
WINDOWS_DUMP_TYPES = {"1": "complete", "2": "kernel", "3": "small", "7": "automatic"}


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


def _windows_checks(report: GuestReport) -> Dict[str, Check]:
    dump_type = report.get("crash_dump_enabled")
    return {
        "crash_dump_enabled": Check(
            "unknown" if not dump_type else ("pass" if dump_type in WINDOWS_DUMP_TYPES else "fail"),
            WINDOWS_DUMP_TYPES.get(dump_type, dump_type),
            "complete, kernel, small or automatic",
        ),
        "nmi_crash_dump": _equals(report.get("nmi_crash_dump"), "1"),
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
    facts = {k: report.get(k) for k in ("boot_id", "kernel_release", "os_id", "dump_dir")}
    return KdumpVerdict(verdict, checks, failed + unknown, facts)


@dataclass(frozen=True)
class DumpFile:
    """A dump file as listed by ``crash_dumps``: where, how big, when, its first/last bytes, and
    the panic lines of the dmesg saved beside it (None when there is no such file)."""

    path: str
    size: int
    mtime: int
    head: bytes
    tail: bytes
    dmesg_panic: str | None = None


def dump_files(report: GuestReport) -> tuple[List[DumpFile], List[str]]:
    """The dump files of a ``crash_dumps`` report, and a problem for each line that is unreadable."""
    dumps: List[DumpFile] = []
    problems: List[str] = []
    for line in report.repeated.get("dump", []):
        parts = line.split("|")
        try:
            path, size, mtime, head, tail, *dmesg = parts
            panic = (
                bytes.fromhex(dmesg[0]).decode(errors="replace").strip("\0") if dmesg and dmesg[0] else None
            )
            dumps.append(
                DumpFile(path, int(size), int(mtime), bytes.fromhex(head), bytes.fromhex(tail), panic)
            )
        except ValueError:
            problems.append(f"dump: unreadable line {line[:80]!r}")
    return dumps, problems
