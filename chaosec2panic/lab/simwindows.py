"""A simulated Windows Server guest: CrashControl settings instead of a kernel's, and an
interpretation in Python of the extension's PowerShell guest scripts (PowerShell does not run here).
"""

import base64
import gzip
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Tuple

from ..guest import SCRIPTS
from .dumpwriter import (
    windows_dump_header,
    write_windows_dump,
)
from .fleet import CRASH_DUMP_TYPES, GuestSpec
from .simguest import STDOUT_LIMIT, CommandOutcome, SimGuest

__all__ = [
    "WindowsFacts",
    "WindowsFile",
    "WindowsSimGuest",
    "crash_control_after",
    "interpret_windows_script",
    "script_variables",
    "windows_script_name",
]

# Windows Server ----------------------------------------------------------------------------------
SCRIPT_SCHEMA = re.compile(r'^\s*Write-Output "schema=(\w+)/\d+"\s*$', re.M)
SYSTEM_ROOT = "C:\\Windows"
DUMP_FILE = "%SystemRoot%\\MEMORY.DMP"  # CrashControl\DumpFile as Windows sets it
NMI_HARDWARE_FAILURE = 0x80
NMI_PARAMETERS = (0x4F4454, 0, 0, 0)  # what Windows puts in BugCheckParameter1..4 for a 0x80
HEAD_BYTES, TAIL_BYTES = 12288, 16  # the dump's header pages, and where an end marker would be
RESERVED_KIB = 65536  # memory firmware and hardware keep: not in TotalVisibleMemorySize
KERNEL_DUMP_SHARE = 0.12  # a kernel or automatic dump holds about this share of memory
WINDOWS_NO_UPLOAD = (
    "not supported in the lab: its Windows guests have neither AWS Tools for PowerShell nor the "
    "AWS CLI, so nothing was uploaded"
)


@dataclass(frozen=True)
class WindowsFile:
    """A file as Get-Item and a FileStream see it: full name, length, last write, first and last bytes."""

    full_name: str
    length: int
    last_write: float
    head: bytes
    tail: bytes


@dataclass(frozen=True)
class WindowsFacts:
    """What the PowerShell guest scripts read on a Windows instance: Win32_OperatingSystem,
    CrashControl, the dump file's disk, the dump file and the last BugCheck event (1001)."""

    now: float
    last_boot: float  # Win32_OperatingSystem.LastBootUpTime
    version: str  # Win32_OperatingSystem.Version
    total_visible_kb: int  # Win32_OperatingSystem.TotalVisibleMemorySize
    crash_dump_enabled: int | None  # the CrashControl values; None when absent
    nmi_crash_dump: int | None
    auto_reboot: int | None
    dump_file: str  # CrashControl\DumpFile, unexpanded
    system_root: str
    free_bytes: int  # Win32_LogicalDisk.FreeSpace of the dump file's drive
    dump: WindowsFile | None = None
    bugcheck_event: float | None = None


def windows_script_name(text: str) -> str | None:
    """Which guest script ``text`` is (``kdump_status``, ``identity``, ``crash_dumps``,
    ``kdump_settings``), by the ``schema=`` line it writes; None for any other PowerShell."""
    found = SCRIPT_SCHEMA.search(text)
    return found.group(1) if found and found.group(1) in SCRIPTS else None


PRELUDE = re.compile(
    r"^\$env:([A-Za-z_][A-Za-z0-9_]*) = "
    r"\[Text\.Encoding\]::UTF8\.GetString\(\[Convert\]::FromBase64String\('([A-Za-z0-9+/]*={0,2})'\)\)$",
    re.M,
)
RESTORE_VALUE = re.compile(r"(?:-?[0-9]{1,10})?")  # kdump_settings.ps1: '\A(-?[0-9]{1,10})?\z'
CRASH_CONTROL = {
    "crash_dump_enabled": "CrashDumpEnabled",
    "nmi_crash_dump": "NMICrashDump",
    "auto_reboot": "AutoReboot",
}


def script_variables(text: str) -> Dict[str, str]:
    """The variables :func:`chaosec2panic.guest.script` sets before a script, each a line
    ``$env:NAME = <its UTF-8 bytes in base64, decoded>``, read as PowerShell would."""
    return {k: base64.b64decode(v, validate=True).decode("utf-8") for k, v in PRELUDE.findall(text)}


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


def crash_control_after(
    facts: "WindowsFacts", variables: Mapping[str, str] | None
) -> Tuple[str, Dict[str, int | None], str]:
    """What kdump_settings.ps1 does to CrashControl: the action, the values after (by setting
    name, None when absent) and the error it reports (changes before an error stay, as in the
    script's try block)."""
    variables = variables or {}
    action = variables.get("ACTION") or "report"
    values: Dict[str, int | None] = {
        "crash_dump_enabled": facts.crash_dump_enabled,
        "nmi_crash_dump": facts.nmi_crash_dump,
        "auto_reboot": facts.auto_reboot,
    }
    if action == "arm":
        wanted = variables.get("CRASH_DUMP_ENABLED", "")
        if wanted not in ("1", "2", "7"):
            return action, values, f"CRASH_DUMP_ENABLED must be 1, 2 or 7, got '{wanted}'"
        values.update(crash_dump_enabled=int(wanted), nmi_crash_dump=1, auto_reboot=1)
    elif action == "restore":
        restore: Dict[str, str] = {}
        for name in filter(None, variables.get("RESTORE", "").split(" ")):
            if name not in CRASH_CONTROL:
                return action, values, f"unknown setting {name} (known: {' '.join(CRASH_CONTROL)})"
            before = variables.get(f"BEFORE_{name}", "")
            if not RESTORE_VALUE.fullmatch(before):
                return (
                    action,
                    values,
                    f"BEFORE_{name} must be a whole number, or empty for a value that was absent; "
                    f"got '{before}': nothing was changed",
                )
            restore[name] = before
        for name, before in restore.items():
            if before and not -(2**31) <= int(before) < 2**31:
                return action, values, f'Cannot convert value "{before}" to type "System.Int32".'
            values[name] = int(before) if before else None
    elif action != "report":
        return action, values, f"unknown ACTION {action} (arm, restore or report)"
    return action, values, ""


def _expand(value: str, system_root: str) -> str:
    return re.sub("%SystemRoot%", lambda _: system_root, value, flags=re.I)


def _parent(path: str) -> str:
    """Split-Path -Parent: ``C:\\Windows\\MEMORY.DMP`` -> ``C:\\Windows``, ``C:\\x`` -> ``C:\\``."""
    head = path.rsplit("\\", 1)[0] if "\\" in path else ""
    return head + "\\" if head.endswith(":") else head


def _epoch(at: float) -> int:
    """[DateTimeOffset]::ToUnixTimeSeconds(): whole seconds, rounded down."""
    return int(at // 1)


def interpret_windows_script(
    name: str, facts: WindowsFacts, variables: Mapping[str, str] | None = None
) -> str:
    """What guest script ``name`` prints on a Windows instance with ``facts`` (and the
    ``variables`` set before it: kdump_settings' ACTION and its values).

    This is an interpretation, in Python, of ``chaosec2panic/guest/windows/<name>.ps1`` (which
    cannot run here: no PowerShell), not the script itself: the same ``key=value`` lines in
    the same order, each value as its ``Write-Output`` line formats it (LastBootUpTime as
    ``yyyyMMddTHHmmssZ``, ``[int]`` and ``[int64]`` rounding half to even, base64 of a gzip of
    the first 12 KiB of the dump file, hex of its last 16 bytes). tests/lab/test_windows.py
    holds it to the .ps1 text key by key. ``collect_crash_dump`` answers as the .ps1 does when
    the upload cannot run: the lab's Windows guests have no AWS tools.
    """
    dump_file = _expand(facts.dump_file, facts.system_root)
    boot_id = datetime.fromtimestamp(facts.last_boot, UTC).strftime("%Y%m%dT%H%M%SZ")
    uptime = round(facts.now - facts.last_boot)
    if name == "kdump_status":
        lines = [
            "schema=kdump_status/1",
            f"boot_id={boot_id}",
            f"uptime={uptime}",
            f"kernel_release={facts.version}",
            "machine=x86_64",
            "os_id=windows",
            f"os_version={facts.version}",
            f"mem_total_kb={facts.total_visible_kb}",
            f"crash_dump_enabled={_text(facts.crash_dump_enabled)}",
            f"nmi_crash_dump={_text(facts.nmi_crash_dump)}",
            f"auto_reboot={_text(facts.auto_reboot)}",
            f"dump_file={dump_file}",
            f"dump_dir={_parent(dump_file)}",
            f"dump_dir_free_kb={round(facts.free_bytes / 1024)}",
        ]
    elif name == "identity":
        lines = [
            "schema=identity/1",
            f"boot_id={boot_id}",
            f"uptime={facts.now - facts.last_boot:.3f}",
            f"now={facts.now:.3f}",
            "clock_synced=yes",  # w32time on Amazon Time Sync, as AWS's images have it (a model)
        ]
    elif name == "crash_dumps":
        lines = [
            "schema=crash_dumps/2",
            f"boot_id={boot_id}",
            f"kernel_release={facts.version}",
            f"dump_dir={_parent(dump_file)}",
        ]
        f = facts.dump
        if f is not None:
            blocks = base64.b64encode(gzip.compress(f.head[:HEAD_BYTES])).decode()
            tail = f.tail[-min(TAIL_BYTES, f.length) :] if f.length else b""
            lines.append(f"dump={f.full_name}|{f.length}|{_epoch(f.last_write)}||{blocks}|{tail.hex()}")
        if facts.bugcheck_event is not None:
            lines.append(f"bugcheck_event={_epoch(facts.bugcheck_event)}")
    elif name == "kdump_settings":
        action, after, error = crash_control_after(facts, variables)
        before = {
            "crash_dump_enabled": facts.crash_dump_enabled,
            "nmi_crash_dump": facts.nmi_crash_dump,
            "auto_reboot": facts.auto_reboot,
        }
        lines = ["schema=kdump_settings/1", f"action={action}", f"boot_id={boot_id}", f"uptime={uptime}"]
        lines.append("os_id=windows")
        for setting in CRASH_CONTROL:
            lines += [
                f"{setting}_before={_text(before[setting])}",
                f"{setting}_after={_text(after[setting])}",
            ]
        lines.append("error=" + re.sub(r"[\r\n]+", " ", error))  # as the .ps1's -replace
    elif name == "collect_crash_dump":
        found = variables or {}
        lines = [
            "schema=collect_crash_dump/1",
            f"dest=s3://{found.get('BUCKET', '')}/{found.get('KEY', '')}",
            "file=",
            f"error={WINDOWS_NO_UPLOAD}",
        ]
    else:
        raise ValueError(f"unknown guest script {name!r}; valid: {', '.join(SCRIPTS)}")
    return "\r\n".join([*lines, "end=ok"]) + "\r\n"


class WindowsSimGuest(SimGuest):
    """A simulated Windows Server instance, as CrashControl makes it behave on an NMI.

    NMICrashDump=1: bugcheck 0x80 (NMI_HARDWARE_FAILURE) and a blue screen while the dump
    (CrashDumpEnabled: complete, kernel, automatic; none writes nothing) goes to the page file;
    then AutoReboot=1 restarts, AutoReboot=0 stays on the blue screen until rebooted. The next
    boot turns the saved dump into C:\\Windows\\MEMORY.DMP (``Windows/MEMORY.DMP`` under the
    guest's root) and logs event 1001. NMICrashDump=0: nothing happens. The boot id is
    LastBootUpTime as the guest scripts format it. SSM commands get
    :func:`interpret_windows_script`'s answer.
    """

    def __init__(
        self,
        instance_id: str,
        spec: GuestSpec,
        root: Path,
        scale: float,
        clock: Callable[[], float],
        emit: Callable[[float, str, str, str], None],
    ):
        self.bugchecked_at: float | None = None  # the blue screen the next boot will report
        self.dump_saved = False  # the dump of that bugcheck is in the page file
        self.bugcheck_events: List[float] = []
        # CrashControl as the registry holds it (None: the value is absent), and as the running
        # system took it at boot: changes take effect at the next boot.
        self.crash_control: Dict[str, int | None] = {
            "crash_dump_enabled": CRASH_DUMP_TYPES[spec.crash_dump_enabled],
            "nmi_crash_dump": int(spec.nmi_crash_dump),
            "auto_reboot": int(spec.auto_reboot),
        }
        self.effective = dict(self.crash_control)
        super().__init__(instance_id, spec, root, scale, clock, emit)

    def _boot_from_files(self) -> None:
        self.effective = dict(self.crash_control)

    def _dump_type(self) -> str:
        """What the running system writes on a bugcheck: complete, kernel, automatic, small
        (to %SystemRoot%\\Minidump: no MEMORY.DMP) or none."""
        names = {v: k for k, v in CRASH_DUMP_TYPES.items()}
        value = self.effective["crash_dump_enabled"]
        return "small" if value == 3 else names.get(value if value is not None else 0, "none")

    def _new_boot_id(self) -> str:
        return datetime.fromtimestamp(self.booted_at, UTC).strftime("%Y%m%dT%H%M%SZ")

    def _say(self, at: float, *lines: str) -> None:
        """EC2Launch's lines on the serial console (Windows prints no kernel messages there)."""
        stamp = f"{datetime.fromtimestamp(at, UTC):%Y/%m/%d %H:%M:%S}Z"
        self.console.extend(f"{stamp}: {line}" for line in lines)

    def _boot_messages(self, at: float) -> None:
        family = self.spec.family
        self._say(
            at,
            "Message: Waiting for meta-data accessibility...",
            "Message: Meta-data is now available.",
            f"OS: Microsoft Windows NT {family.version}",
            f"OsProductName: {family.pretty.removeprefix('Microsoft ')}",
            f"Instance-ID: {self.instance_id}",
            f"Instance Type: {self.spec.instance_type}",
            "Message: Windows is Ready to use",
        )

    def _prepare_root(self) -> None:
        (self.root / "Windows").mkdir(parents=True, exist_ok=True)

    def _host_path(self, windows_path: str) -> Path:
        """Where ``C:\\dir\\file`` lives under the guest's root."""
        return self.root.joinpath(*windows_path.split(":", 1)[-1].strip("\\").split("\\"))

    # the NMI and what follows --------------------------------------------------------------------
    def _on_nmi(self, now: float) -> None:
        """What Windows does with an NMI: bugcheck 0x80 as CrashControl says (lock held)."""
        # The lab's model: NMICrashDump=0 ignores the NMI; absent, Windows Server 2012 and later
        # bugcheck (KB 2750146).
        if self.effective["nmi_crash_dump"] == 0:
            self._event(now, "nmi-no-bugcheck", "NMICrashDump=0: Windows carries on")
            return
        self._event(now, "bugcheck", f"0x{NMI_HARDWARE_FAILURE:08x} NMI_HARDWARE_FAILURE")
        self._agent_gone(now)
        self.phase = "bugcheck"
        self.bugchecked_at, self.dump_saved = now, False
        if self._dump_type() in ("none", "small"):
            self._schedule((self._later(now, "bluescreen"), "bluescreen_done"))
        else:
            self._schedule((self._later(now, "capture_base"), "bluescreen_done"))

    def _step_bluescreen_done(self, at: float) -> None:
        if self._dump_type() not in ("none", "small"):
            self.dump_saved = True
            self._event(at, "dump-saved", f"{self._dump_type()} dump in the page file")
        if self.effective["auto_reboot"] != 0:
            self._step_reset(at)
        else:
            self.phase = "hung"
            self._event(at, "hung", "AutoReboot=0: the blue screen stays until a reboot")

    def _step_booted(self, at: float) -> None:
        super()._step_booted(at)
        if self.bugchecked_at is None:
            return
        if self.dump_saved:
            path = self._write_memory_dmp(self.bugchecked_at, at)
            self._event(at, "dump-written", path)
        self.bugcheck_events.append(at)
        self.bugchecked_at, self.dump_saved = None, False

    def _write_memory_dmp(self, crashed_at: float, at: float) -> str:
        """MEMORY.DMP from the page file, as the boot after the bugcheck writes it."""
        kind = "complete" if self._dump_type() == "complete" else "kernel"
        pages = self.spec.memory_mib * 256
        present = pages if kind == "complete" else int(pages * KERNEL_DUMP_SHARE)
        build = int(self.spec.family.version.rsplit(".", 1)[-1])
        header = windows_dump_header(
            kind, build, 2, NMI_HARDWARE_FAILURE, NMI_PARAMETERS, crashed_at, pages, present
        )
        windows_path = _expand(DUMP_FILE, SYSTEM_ROOT)
        target = self._host_path(windows_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_windows_dump(target, header, at)
        return windows_path

    # what the guest scripts read -------------------------------------------------------------------
    def facts(self, now: float | None = None) -> WindowsFacts:
        """The facts the guest scripts would read on this instance at ``now`` (default: now)."""
        spec = self.spec
        dump_file = _expand(DUMP_FILE, SYSTEM_ROOT)
        path = self._host_path(dump_file)
        listing = None
        if path.is_file():
            with open(path, "rb") as f:
                head = f.read(HEAD_BYTES)
                size = f.seek(0, 2)
                f.seek(max(0, size - TAIL_BYTES))
                tail = f.read(TAIL_BYTES)
            listing = WindowsFile(dump_file, size, path.stat().st_mtime, head, tail)
        return WindowsFacts(
            now=self.clock() if now is None else now,
            last_boot=self.booted_at,
            version=spec.family.version,
            total_visible_kb=spec.memory_mib * 1024 - RESERVED_KIB,
            crash_dump_enabled=self.crash_control["crash_dump_enabled"],
            nmi_crash_dump=self.crash_control["nmi_crash_dump"],
            auto_reboot=self.crash_control["auto_reboot"],
            dump_file=DUMP_FILE,
            system_root=SYSTEM_ROOT,
            free_bytes=int(spec.disk_free_gib * 2**30),
            dump=listing,
            bugcheck_event=self.bugcheck_events[-1] if self.bugcheck_events else None,
        )

    def run_command(
        self, script: str, timeout: float = 30.0, delivered: float | None = None
    ) -> CommandOutcome:
        """Answer a PowerShell command as the SSM agent would, if it is one of the guest scripts
        (its clock reads ``delivered``, as on a Linux guest)."""
        with self._lock:
            self.advance()
            started = self.clock() if delivered is None else delivered
            name = windows_script_name(script)
            if name is None:
                code, out = 1, ""
                err = (
                    "the lab's Windows guests cannot run PowerShell: they answer only the "
                    f"extension's guest scripts ({', '.join(SCRIPTS)}), by their schema= line"
                )
            else:
                facts, variables = self.facts(started), script_variables(script)
                code, out, err = 0, interpret_windows_script(name, facts, variables), ""
                if name == "kdump_settings":
                    self.crash_control = crash_control_after(facts, variables)[1]
            ended = self.clock()
            self._event(ended, "command", f"exit {code}")
            return CommandOutcome(
                "Success" if code == 0 else "Failed", code, out[:STDOUT_LIMIT], err, started, ended
            )
