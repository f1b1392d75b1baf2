"""When things happened, by the instance's own account: the kernels' printk times on a console
or in a dmesg, the clock anchors they print, a dump's own times. Pure functions on text.

A console after an NMI holds, in order: the end of the crashed kernel's log (the NMI, the
panic when it was printed), then each kernel that started since, each beginning with its
``Linux version`` line: the capture kernel (``elfcorehdr=`` on its command line, which kexec
adds), then the new boot's kernel. A printk time counts seconds since its own kernel started;
the crashed kernel's times are turned into UTC with its boot time (known before the NMI), and
a later kernel's with the UTC time it prints when it sets its clock from the hardware clock
(``rtc_cmos ...: setting system clock to ... UTC (EPOCH)``; whole seconds).
"""

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Tuple

from .dumps.text import CAPTURE_KERNEL
from .recovery import Boot, Evidence, at_epoch, epoch_iso, first_seen, parse_iso

__all__ = [
    "ClockAnchor",
    "ConsoleTimes",
    "KernelLog",
    "console_evidence",
    "console_times",
    "crashed_boot",
    "dump_evidence",
    "kernels",
    "panic_uptime",
    "recorded_evidence",
]

FILE_TIME_UNCERTAINTY = 1.0  # whole-second file times, by a capture kernel's clock (see dump_evidence)
CRASHTIME_UNCERTAINTY = 0.5  # VMCOREINFO CRASHTIME: whole seconds of the crashed kernel's clock

PRINTK = re.compile(r"^\s*(?:<\d+>)?\[\s*(\d+\.\d+)\]\s?(.*)$")
KERNEL_START = re.compile(r"\bLinux version \S+")
RTC_SET = re.compile(r"setting system clock to \S+ UTC \((\d+)\)")
PANIC_LINE = re.compile(r"(?<!end )Kernel panic - not syncing: ")
# What a capture kernel's kdump prints, through the kernel log, once the dump is written
# (RHEL's kdump: "saving vmcore complete"; kdump-tools: "saved vmcore in ...").
DUMP_DONE = re.compile(r"saving vmcore complete|saved vmcore in ")


@dataclass(frozen=True)
class ClockAnchor:
    """A kernel's start on the hardware clock: it set its clock to ``epoch`` (whole seconds, so
    the moment was within the second after it) ``uptime`` seconds after it started."""

    epoch: int
    uptime: float

    @property
    def started(self) -> float:
        """The kernel's start, mid-way through the second the clock was read in (±0.5 s)."""
        return self.epoch + 0.5 - self.uptime


@dataclass(frozen=True)
class KernelLog:
    """The lines of one kernel in a console: ``kind`` is crashed (the log before the first
    kernel start seen), capture or normal; ``lines`` pair each printk time (None for lines
    without one, such as userspace output) with its text."""

    kind: str
    lines: Tuple[Tuple[float | None, str], ...]

    @property
    def anchor(self) -> ClockAnchor | None:
        for uptime, text in self.lines:
            found = RTC_SET.search(text)
            if found and uptime is not None:
                return ClockAnchor(int(found[1]), uptime)
        return None

    def first(self, pattern: re.Pattern) -> float | None:
        """The printk time of the first line matching ``pattern`` (None when none has one)."""
        return next((t for t, text in self.lines if t is not None and pattern.search(text)), None)


def _line(raw: str) -> Tuple[float | None, str]:
    found = PRINTK.match(raw)
    return (float(found[1]), found[2]) if found else (None, raw.strip())


def kernels(text: str) -> List[KernelLog]:
    """The console ``text`` cut into one :class:`KernelLog` per kernel, oldest first."""
    logs: List[Tuple[str, List[Tuple[float | None, str]]]] = [("crashed", [])]
    for raw in text.splitlines():
        uptime, line = _line(raw)
        if KERNEL_START.search(line) and (uptime is None or uptime < 1.0):
            logs.append(("normal", []))
        if CAPTURE_KERNEL.search(line) and len(logs) > 1:
            logs[-1] = ("capture", logs[-1][1])
        logs[-1][1].append((uptime, line))
    return [KernelLog(kind, tuple(lines)) for kind, lines in logs if lines or kind != "crashed"]


def panic_uptime(log: str) -> float | None:
    """The printk time of the first panic line of one kernel's log (a dmesg saved beside a
    dump, or the lines of it a guest script sent), else None."""
    for raw in log.splitlines():
        uptime, line = _line(raw)
        if uptime is not None and PANIC_LINE.search(line):
            return uptime
    return None


@dataclass(frozen=True)
class ConsoleTimes:
    """What a console after an NMI says of when things happened, in UTC epoch seconds where the
    kernels' own clocks tell, with the error bar each carries (None: not told)."""

    panic_uptime: float | None  # seconds since the crashed kernel started
    capture_seen: bool
    capture_started: float | None
    dump_written: float | None

    UNCERTAINTY = 0.5  # a kernel's start from its hardware-clock line: whole seconds


def console_times(text: str) -> ConsoleTimes:
    """Read a console after an NMI (see the module's docstring)."""
    logs = kernels(text)
    crashed = logs[0] if logs and logs[0].kind == "crashed" else None
    capture = next((k for k in logs if k.kind == "capture"), None)
    anchor = capture.anchor if capture else None
    done = capture.first(DUMP_DONE) if capture else None
    return ConsoleTimes(
        panic_uptime=crashed.first(PANIC_LINE) if crashed else None,
        capture_seen=capture is not None,
        capture_started=anchor.started if anchor else None,
        dump_written=anchor.started + done if anchor and done is not None else None,
    )


def _since_boot(boot: Boot, uptime: float, source: str) -> Evidence:
    return at_epoch(parse_iso(boot.booted_at).timestamp() + uptime, source, boot.uncertainty_s)


def console_evidence(
    times: ConsoleTimes, read_at: str, since: str, booted_before: Boot | None
) -> Dict[str, Evidence]:
    """What a console read at ``read_at`` (the read before it, or the NMI, at ``since``) proves:
    the panic at its printk time (with the crashed kernel's start), the capture kernel's start
    and the dump written by the capture kernel's clock anchor; else, when the read shows the
    panic or a capture kernel, that they happened by then (first seen): a panic the console
    does not date happened by the capture kernel's start, where that is dated."""
    found: Dict[str, Evidence] = {}
    capture = None
    if times.capture_started is not None:
        capture = at_epoch(times.capture_started, "console-printk", times.UNCERTAINTY)
        found["capture_started"] = capture
    elif times.capture_seen:
        found["capture_started"] = first_seen(read_at, since)
    if times.panic_uptime is not None and booted_before is not None:
        found["panic"] = _since_boot(booted_before, times.panic_uptime, "console-printk")
    elif times.panic_uptime is not None or times.capture_seen:
        found["panic"] = first_seen(min(read_at, epoch_iso(capture.latest)) if capture else read_at, since)
    if times.dump_written is not None:
        found["dump_written"] = at_epoch(times.dump_written, "console-printk", times.UNCERTAINTY)
    return found


def dump_evidence(
    dmesg_panic_uptime: float | None,
    crash_time: str,
    mtime: int | None,
    booted_before: Boot | None,
) -> Dict[str, Evidence]:
    """What a dump of the NMI proves: the panic at the printk time in the dmesg saved beside it
    (with the crashed kernel's start), else at the dump's own crash time (VMCOREINFO CRASHTIME,
    whole seconds); the dump written by its file time. A file time is whole seconds of the
    capture kernel's clock, which it set from the hardware clock's whole seconds: the write
    happened within two seconds after it, so it is dated one second after, ±1 s."""
    found: Dict[str, Evidence] = {}
    if dmesg_panic_uptime is not None and booted_before is not None:
        found["panic"] = _since_boot(booted_before, dmesg_panic_uptime, "dump-dmesg")
    elif crash_time:
        found["panic"] = at_epoch(
            parse_iso(crash_time).timestamp() + CRASHTIME_UNCERTAINTY, "vmcore", CRASHTIME_UNCERTAINTY
        )
    if mtime is not None:
        found["dump_written"] = at_epoch(mtime + FILE_TIME_UNCERTAINTY, "vmcore", FILE_TIME_UNCERTAINTY)
    return found


def crashed_boot(record: Mapping[str, Any]) -> Boot | None:
    """The crashed kernel's start as the ledger keeps it (``Injection.boot_before``)."""
    if not record:
        return None
    return Boot("", record["booted_at"], record["booted_at"], record["uncertainty_s"], record["skew"])


def recorded_evidence(record: Mapping[str, Mapping[str, Any]]) -> Dict[str, Evidence]:
    """Evidence as the ledger keeps it (``Injection.evidence``)."""
    return {m: Evidence.from_dict(e) for m, e in record.items()}
