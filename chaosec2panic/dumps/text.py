"""Kernel text: serial consoles, and dmesg as kdump saves it beside a dump."""

import re
from dataclasses import dataclass
from typing import Dict, List

from .source import Inspection

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


# Text: vmcore-dmesg.txt / dmesg.* as makedumpfile --dump-dmesg writes them, and serial consoles.
KMSG_LINE = re.compile(r"^\[\s*\d+\.\d+\] ", re.M)
LINUX_VERSION = re.compile(r"Linux version (\S+)")
NORMAL_BOOT = re.compile(r"^(?:\[\s*\d+\.\d+\] )?Command line: (?!.*\belfcorehdr=).*$", re.M)
CAPTURE_SAVED = re.compile(r"saving vmcore complete|makedumpfile Completed\.|kdump-tools: saved vmcore")
CAPTURE_FAILED = re.compile(r"saving vmcore failed|makedumpfile Failed|failed to save vmcore")
TEXT_LIMIT = 32 << 20


def _line(text: str, at: int) -> int:
    return text.count("\n", 0, at) + 1


def read_text(text: str, name: str = "") -> Inspection:
    """Kernel messages: a dmesg of the crashed kernel (``kind`` dmesg) or a console log.

    A dmesg is whole when it reaches the panic. A console is judged on the capture: the
    capture kernel booting (``elfcorehdr=``) then "saving vmcore complete" (or makedumpfile
    "Completed.") is complete; a capture failure, the capture kernel's own panic, or a panic
    with no capture kernel after it (kdump did not take over) is not.
    """
    release = LINUX_VERSION.search(text)
    release_text = release.group(1) if release else ""
    kernel_lines = KMSG_LINE.findall(text)
    if not kernel_lines and not PANIC.search(text):
        return Inspection("", "unknown", "text", None, problems=("text: no kernel messages found",))
    lines = [line for line in text.splitlines() if line.strip()]
    base = name.replace("\\", "/").rsplit("/", 1)[-1].lower()
    if "dmesg" in base or len(kernel_lines) == len(lines):
        found = console_findings(text)
        problems = (
            ()
            if found.panic_message
            else ("panic: expected a 'Kernel panic - not syncing' line, found none",)
        )
        return Inspection(
            "",
            "dmesg",
            "text",
            bool(found.panic_message),
            kernel_release=release_text,
            nmi_panic=found.nmi_panic,
            panic_message=found.panic_message,
            problems=problems,
        )
    return _console(text, release_text)


def _console(text: str, release: str) -> Inspection:
    capture = CAPTURE_KERNEL.search(text)
    before = console_findings(text[: capture.start()] if capture else text)
    whole = console_findings(text)
    problems: List[str] = []
    complete: bool | None
    if capture:
        after = NORMAL_BOOT.search(text, capture.end())
        segment_end = after.start() if after else len(text)
        segment = text[capture.start() : segment_end]
        saved, failed, panic = (r.search(segment) for r in (CAPTURE_SAVED, CAPTURE_FAILED, PANIC))
        where = _line(text, capture.start())
        if failed:
            problems.append(
                f"console line {_line(text, capture.start() + failed.start())}: "
                f"capture failed: {failed.group(0)}"
            )
            complete = False
        elif panic:
            problems.append(
                f"console line {_line(text, capture.start() + panic.start())}: the capture kernel panicked: "
                f"{panic.group(1).strip()}"
            )
            complete = False
        elif saved:
            complete = True
        else:
            problems.append(
                f"console line {where}: the capture kernel started, but neither "
                "'saving vmcore complete' nor a failure follows"
            )
            complete = None
    elif before.panic_message or before.nmi_panic:
        panic = PANIC.search(text)
        at = _line(text, panic.start()) if panic else 0
        after = panic.end() if panic else 0
        if NORMAL_BOOT.search(text, after):
            reboot = "a new boot"
        elif "Rebooting in " in text[after:]:
            reboot = "'Rebooting in'"
        else:
            reboot = "nothing"
        problems.append(
            f"console line {at}: panic, then {reboot}: no capture kernel started (kdump did not take over)"
        )
        complete = False
    elif before.dazed:
        problems.append("console: NMI received but the kernel continued ('Dazed and confused'): no panic")
        complete = None
    else:
        problems.append("console: no panic and no capture kernel")
        complete = None
    return Inspection(
        "",
        "console",
        "text",
        complete,
        kernel_release=release,
        nmi_panic=whole.panicked_on_nmi if (capture or whole.panic_message or whole.nmi_received) else None,
        panic_message=before.panic_message,
        problems=tuple(problems),
    )


def looks_like_text(head: bytes) -> bool:
    if not head or b"\0" in head:
        return False
    printable = sum(32 <= b < 127 or b in b"\t\n\r\x1b" or b >= 0x80 for b in head)
    return printable >= 0.95 * len(head)
