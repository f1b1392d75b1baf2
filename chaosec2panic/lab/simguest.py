"""A simulated guest: a kernel, kdump and an SSM agent as a state machine over wall-clock time.

Transitions are scheduled (in model seconds times the lab's time scale) and applied lazily
whenever the guest is looked at, with their scheduled times, so events carry exact times.
The guest's file system is a real directory; SSM commands run the extension's real guest
scripts under ``sh`` against it, with only the tools a minimal system has on the PATH.

A Windows Server guest (:class:`WindowsSimGuest`) follows its CrashControl settings instead
of a kernel's, and since PowerShell cannot run here it answers the extension's PowerShell
guest scripts with :func:`interpret_windows_script`, an interpretation of them in Python.
"""

import re
import shutil
import subprocess
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable, Dict, List

from ..guest import SCRIPTS
from .dumpwriter import (
    kdump_header,
    windows_dump_header,
    write_flattened,
    write_kdump_compressed,
    write_windows_dump,
)
from .fleet import CRASH_DUMP_TYPES, GuestSpec

__all__ = [
    "MODEL_SECONDS",
    "CommandOutcome",
    "SimGuest",
    "WindowsFacts",
    "WindowsFile",
    "WindowsSimGuest",
    "interpret_windows_script",
    "windows_script_name",
]

MODEL_SECONDS = {
    "capture_boot": 8.0,  # capture kernel boots after the panic
    "capture_base": 2.0,  # makedumpfile start-up, dmesg
    "capture_per_gib": 1.5,  # makedumpfile -d 31 per GiB of memory
    "boot": 20.0,  # firmware to userspace
    "agent": 5.0,  # userspace to SSM agent online
    "shutdown": 3.0,  # clean shutdown on RebootInstances
    "bluescreen": 2.0,  # Windows: the blue screen before a restart when no dump is written
}
MIN_CAPTURE_MIB = 128
STDOUT_LIMIT = 24000
TOOLS = (
    "cat",
    "cut",
    "date",
    "grep",
    "head",
    "ls",
    "od",
    "sed",
    "sort",
    "stat",
    "tail",
    "tr",
    "uname",
    "uniq",
    "wc",
    "basename",
    "dirname",
    "printf",
    "echo",
    "true",
    "false",
    "sh",
)


@dataclass(frozen=True)
class CommandOutcome:
    status: str
    code: int
    stdout: str
    stderr: str
    started: float
    ended: float


class SimGuest:
    """One simulated instance. Every public method takes the lab's lock-free view of time."""

    def __init__(
        self,
        instance_id: str,
        spec: GuestSpec,
        root: Path,
        scale: float,
        clock: Callable[[], float],
        emit: Callable[[float, str, str, str], None],
    ):
        self.instance_id = instance_id
        self.spec = spec
        self.root = root
        self.scale = scale
        self.clock = clock
        self._emit = emit
        self._lock = threading.RLock()
        now = clock()
        self.phase = "up" if spec.state == "running" else "stopped"
        self.booted_at = now - 3600.0
        self.boot_id = self._new_boot_id()
        self.agent_at = self.booted_at
        self.last_online = now
        self.after_nmi = False
        self._plan: List[tuple[float, str]] = []
        self.console: List[str] = []
        self.capture_started = 0.0
        self.agent_outage = False  # set by the lab to cut the agent off on demand
        self._prepare_root()
        self._boot_messages(self.booted_at)

    def close(self) -> None:
        """Nothing to end: a simulated guest is only state."""

    def _new_boot_id(self) -> str:
        """What /proc/sys/kernel/random/boot_id holds in this boot: a new random UUID."""
        return str(uuid.uuid4())

    # time and events ------------------------------------------------------------------
    def _later(self, now: float, *keys: str) -> float:
        model = sum(MODEL_SECONDS[k] for k in keys)
        if "capture_base" in keys:
            model += MODEL_SECONDS["capture_per_gib"] * self.spec.memory_mib / 1024
        return now + model * self.scale

    def _event(self, at: float, kind: str, detail: str = "") -> None:
        self._emit(at, self.instance_id, kind, detail)

    def _say(self, at: float, *lines: str) -> None:
        since = max(0.0, at - self.booted_at)
        self.console.extend(f"[{since:12.6f}] {line}" for line in lines)

    def advance(self) -> None:
        """Apply every scheduled transition that is due, at its own time."""
        with self._lock:
            now = self.clock()
            while self._plan and self._plan[0][0] <= now:
                at, step = self._plan.pop(0)
                getattr(self, f"_step_{step}")(at)

    def _schedule(self, *steps: tuple[float, str]) -> None:
        self._plan = sorted([*self._plan, *steps])

    # what EC2 sees ----------------------------------------------------------------------
    @property
    def state(self) -> str:
        return "stopped" if self.phase == "stopped" else "running"

    def status(self) -> str:
        """The instance status check: ok, initializing, impaired or not-applicable."""
        self.advance()
        return {"up": "ok", "booting": "initializing", "stopped": "not-applicable"}.get(
            self.phase, "impaired"
        )

    def agent_online(self) -> bool:
        self.advance()
        up = self.spec.agent and self.phase == "up" and self.clock() >= self.agent_at
        return up and not self.agent_outage

    def last_ping(self) -> float:
        """When the agent last reported: now while online, else when it went away."""
        return self.clock() if self.agent_online() else self.last_online

    def _agent_gone(self, at: float) -> None:
        if self.spec.agent and self.phase == "up" and at >= self.agent_at:
            self.last_online = at
        self.agent_at = float("inf")

    def console_output(self) -> str:
        self.advance()
        return "\n".join(self.console)[-65536:]

    # what the lab's API does to it ---------------------------------------------------------
    def nmi(self) -> None:
        with self._lock:
            self.advance()
            now = self.clock()
            self._event(now, "nmi")
            if self.phase != "up":
                self._event(now, "nmi-ignored", f"phase {self.phase}")
                return
            self.after_nmi = True
            self._say(
                now,
                "Uhhuh. NMI received for unknown reason 3d on CPU 0.",
                "Do you have a strange power saving mode enabled?",
            )
            if self.spec.unknown_nmi_panic != 1:
                self._say(now, "Dazed and confused, but trying to continue")
                self._event(now, "dazed", "unknown_nmi_panic=0: no panic")
                return
            self._say(
                now,
                "Kernel panic - not syncing: NMI: Not continuing",
                f"CPU: 0 PID: 0 Comm: swapper/0 Not tainted {self.spec.family.kernel_release} #1",
                "Kernel Offset: disabled",
            )
            self._event(now, "panic", "NMI: Not continuing")
            self._agent_gone(now)
            if self.spec.armed:
                self.phase = "capturing"
                self._say(now, "Starting crashdump kernel...", "Bye!")
                self._schedule((self._later(now, "capture_boot"), "capture_start"))
            elif self.spec.panic_timeout > 0:
                self.phase = "panicked"
                self._say(now, f"Rebooting in {self.spec.panic_timeout} seconds..")
                self._schedule((now + self.spec.panic_timeout * self.scale, "reset"))
            else:
                self.phase = "hung"
                self._say(now, "---[ end Kernel panic - not syncing: NMI: Not continuing ]---")
                self._event(now, "hung", "no kdump and kernel.panic=0")

    def reboot(self) -> None:
        with self._lock:
            self.advance()
            now = self.clock()
            if self.phase == "stopped":
                return
            if self.phase in ("hung", "panicked", "capturing", "bugcheck") and not self.spec.acpi_reboot:
                self._event(now, "reboot-ignored", f"phase {self.phase}: the kernel does not answer ACPI")
                return
            self._event(now, "reboot", f"from phase {self.phase}")
            self._agent_gone(now)
            self._plan = []
            self.phase = "booting"
            self._schedule((self._later(now, "shutdown"), "reset"))

    def stop(self) -> None:
        with self._lock:
            self.advance()
            self._event(self.clock(), "stop", f"from phase {self.phase}")
            self._agent_gone(self.clock())
            self._plan = []
            self.phase = "stopped"

    def start(self) -> None:
        with self._lock:
            self.advance()
            if self.phase != "stopped":
                return
            now = self.clock()
            self._event(now, "start")
            self.phase = "booting"
            self._step_reset(now)

    # scheduled steps -------------------------------------------------------------------------
    def _dump_names(self, at: float) -> tuple[str, str, str, str]:
        """Directory, dump file, dump file while written, dmesg file: as each distro names them."""
        moment = datetime.fromtimestamp(at, UTC)
        stamp = f"{moment:%Y%m%d%H%M}"
        return {
            "rhel": (
                f"127.0.0.1-{moment:%Y-%m-%d-%H:%M:%S}",
                "vmcore",
                "vmcore-incomplete",
                "vmcore-dmesg.txt",
            ),
            "debian": (stamp, f"dump.{stamp}", "dump-incomplete", f"dmesg.{stamp}"),
            "suse": (f"{moment:%Y-%m-%d-%H-%M}", "vmcore", "vmcore", "dmesg"),
        }[self.spec.family.layout]

    def _write_dump(self, at: float, started: float, complete: bool) -> Path:
        directory, final, partial, _ = self._dump_names(started)
        path = self.root / "var" / "crash" / directory
        path.mkdir(parents=True, exist_ok=True)
        header = kdump_header(
            self.spec.family.kernel_release,
            "x86_64",
            self.spec.name,
            started,
            self.spec.memory_mib * 256,
            incomplete=not complete,
        )
        size = int(self.spec.memory_mib * 1024 * 1024 * 0.03) + 20 * 1024 * 1024
        target = path / (final if complete else partial)
        (path / partial).unlink(missing_ok=True)
        if self.spec.family.layout == "rhel":
            write_kdump_compressed(target, header, size if complete else size // 3, at)
        else:
            write_flattened(target, header, size if complete else size // 3, at, complete)
        return target

    def _step_capture_start(self, at: float) -> None:
        self._say(
            at,
            f"Linux version {self.spec.family.kernel_release} (capture kernel)",
            "kdump: dump target is /var/crash",
            "kdump: saving vmcore-dmesg.txt",
        )
        self._event(at, "capture-start")
        self.capture_started = at
        self._write_dump(at, at, complete=False)
        if self.spec.crashkernel_mib < MIN_CAPTURE_MIB:
            self._schedule((at + MODEL_SECONDS["capture_base"] * self.scale, "capture_oom"))
        else:
            self._schedule((self._later(at, "capture_base"), "capture_done"))

    def _step_capture_oom(self, at: float) -> None:
        self._say(
            at,
            "Out of memory: Killed process 312 (makedumpfile)",
            "kdump: saving vmcore failed",
            "kdump: Rebooting.",
        )
        self._event(at, "capture-failed", f"crashkernel={self.spec.crashkernel_mib}M is too small")
        self._step_reset(at)

    def _step_capture_done(self, at: float) -> None:
        target = self._write_dump(at, self.capture_started, complete=True)
        (target.parent / self._dump_names(self.capture_started)[3]).write_text(
            "\n".join(self.console[-20:]) + "\n"
        )
        self._say(at, "kdump: saving vmcore complete", "kdump: Rebooting.")
        self._event(at, "dump-written", "/" + str(target.relative_to(self.root)))
        self._step_reset(at)

    def _step_reset(self, at: float) -> None:
        self.phase = "booting"
        self._schedule((self._later(at, "boot"), "booted"))

    def _step_booted(self, at: float) -> None:
        self.phase = "up"
        self.booted_at = at - MODEL_SECONDS["boot"] * self.scale * 0.5
        self.boot_id = self._new_boot_id()
        self.agent_at = self._later(at, "agent")
        self._boot_messages(at)
        self._event(at, "boot", self.boot_id)
        if self.spec.agent:
            self._schedule((self.agent_at, "agent_up"))

    def _step_agent_up(self, at: float) -> None:
        self._event(at, "agent-online")
        if self.after_nmi:
            self._event(at, "recovered", "new boot, status ok, agent online")
        self.after_nmi = False

    def _boot_messages(self, at: float) -> None:
        release = self.spec.family.kernel_release
        crash = f" crashkernel={self.spec.crashkernel_mib}M" if self.spec.crashkernel_mib else ""
        self._say(
            at,
            f"Linux version {release} (builder@lab) #1 SMP",
            f"Command line: BOOT_IMAGE=/boot/vmlinuz-{release} root=/dev/nvme0n1p1 ro "
            f"console=ttyS0,115200n8{crash}",
            f"{self.spec.family.pretty}",
            f"{self.spec.name} login:",
        )

    # the guest's file system and commands -------------------------------------------------------
    def _prepare_root(self) -> None:
        (self.root / "var" / "crash").mkdir(parents=True, exist_ok=True)
        tools = self.root / "bin"
        tools.mkdir(exist_ok=True)
        for tool in TOOLS:
            found = shutil.which(tool)
            if found and not (tools / tool).exists():
                (tools / tool).symlink_to(found)

    def _files(self) -> Dict[str, str]:
        spec, family = self.spec, self.spec.family
        armed = self.phase == "up" and spec.armed
        crash = f" crashkernel={spec.crashkernel_mib}M" if spec.crashkernel_mib else ""
        uptime = max(0.0, self.clock() - self.booted_at)
        free_kb = int(spec.disk_free_gib * 1024 * 1024)
        files = {
            "proc/sys/kernel/random/boot_id": self.boot_id,
            "proc/uptime": f"{uptime:.2f} {uptime * 0.9:.2f}",
            "proc/sys/kernel/osrelease": family.kernel_release,
            "proc/cmdline": f"BOOT_IMAGE=/boot/vmlinuz-{family.kernel_release} root=/dev/nvme0n1p1 ro{crash}",
            "proc/meminfo": f"MemTotal:       {spec.memory_mib * 1024 - 180000} kB\n",
            "proc/sys/kernel/unknown_nmi_panic": str(spec.unknown_nmi_panic),
            "proc/sys/kernel/panic": str(spec.panic_timeout),
            "sys/kernel/kexec_crash_loaded": "1" if armed else "0",
            "sys/kernel/kexec_crash_size": str(spec.crashkernel_mib * 1024 * 1024),
            "etc/os-release": f'ID="{family.os_id}"\nVERSION_ID="{family.version}"\n'
            f'PRETTY_NAME="{family.pretty}"\n',
            "sim-bin/df": "#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
            f"echo '/dev/nvme0n1p1 {free_kb * 2} {free_kb} {free_kb} 50% /'\n",
        }
        ready = "0" if armed else "3"
        if family.kdump_tool == "kdumpctl":
            files["etc/kdump.conf"] = (
                "path /var/crash\ncore_collector makedumpfile -l --message-level 7 -d 31\n"
            )
            files["sim-bin/kdumpctl"] = (
                f'#!/bin/sh\n[ {ready} = 0 ] && echo "Kdump is operational" >&2 '
                f'|| echo "Kdump is not operational" >&2\nexit {ready}\n'
            )
        elif family.kdump_tool == "kdump-config":
            files["etc/default/kdump-tools"] = 'USE_KDUMP=1\nKDUMP_COREDIR="/var/crash"\n'
            state = "ready to kdump" if armed else "Not ready to kdump"
            files["sim-bin/kdump-config"] = f'#!/bin/sh\necho "current state   : {state}"\nexit 0\n'
        else:
            files["etc/sysconfig/kdump"] = 'KDUMP_SAVEDIR="file:///var/crash"\n'
            files["sim-bin/systemctl"] = f"#!/bin/sh\nexit {ready}\n"
        return files

    def run_command(self, script: str, timeout: float = 30.0) -> CommandOutcome:
        """Run ``script`` under sh against the guest's file system, as the SSM agent would."""
        with self._lock:
            self.advance()
            for rel, text in self._files().items():
                path = self.root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text if text.endswith("\n") else text + "\n")
                if rel.startswith("sim-bin/"):
                    path.chmod(0o755)
            env = {
                "CHAOSEC2PANIC_ROOT": str(self.root),
                "LC_ALL": "C",
                "PATH": f"{self.root / 'sim-bin'}:{self.root / 'bin'}",
            }
            started = self.clock()
            try:
                done = subprocess.run(
                    [str(self.root / "bin" / "sh"), "-c", script],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    cwd=self.root,
                )
                code, out, err = done.returncode, done.stdout, done.stderr
            except subprocess.TimeoutExpired:
                code, out, err = 124, "", f"timed out after {timeout}s"
            ended = self.clock()
            self._event(ended, "command", f"exit {code}")
            return CommandOutcome(
                "Success" if code == 0 else "Failed", code, out[:STDOUT_LIMIT], err[:8000], started, ended
            )


# Windows Server ----------------------------------------------------------------------------------
SCRIPT_SCHEMA = re.compile(r'^\s*Write-Output "schema=(\w+)/\d+"\s*$', re.M)
SYSTEM_ROOT = "C:\\Windows"
DUMP_FILE = "%SystemRoot%\\MEMORY.DMP"  # CrashControl\DumpFile as Windows sets it
NMI_HARDWARE_FAILURE = 0x80
NMI_PARAMETERS = (0x4F4454, 0, 0, 0)  # what Windows puts in BugCheckParameter1..4 for a 0x80
HEAD_BYTES, TAIL_BYTES = 512, 16
RESERVED_KIB = 65536  # memory firmware and hardware keep: not in TotalVisibleMemorySize
KERNEL_DUMP_SHARE = 0.12  # a kernel or automatic dump holds about this share of memory


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
    crash_dump_enabled: int
    nmi_crash_dump: int
    auto_reboot: int
    dump_file: str  # CrashControl\DumpFile, unexpanded
    system_root: str
    free_bytes: int  # Win32_LogicalDisk.FreeSpace of the dump file's drive
    dump: WindowsFile | None = None
    bugcheck_event: float | None = None


def windows_script_name(text: str) -> str | None:
    """Which guest script ``text`` is (``kdump_status``, ``identity``, ``crash_dumps``), by the
    ``schema=`` line it writes; None for any other PowerShell."""
    found = SCRIPT_SCHEMA.search(text)
    return found.group(1) if found and found.group(1) in SCRIPTS else None


def _expand(value: str, system_root: str) -> str:
    return re.sub("%SystemRoot%", lambda _: system_root, value, flags=re.I)


def _parent(path: str) -> str:
    """Split-Path -Parent: ``C:\\Windows\\MEMORY.DMP`` -> ``C:\\Windows``, ``C:\\x`` -> ``C:\\``."""
    head = path.rsplit("\\", 1)[0] if "\\" in path else ""
    return head + "\\" if head.endswith(":") else head


def _epoch(at: float) -> int:
    """[DateTimeOffset]::ToUnixTimeSeconds(): whole seconds, rounded down."""
    return int(at // 1)


def interpret_windows_script(name: str, facts: WindowsFacts) -> str:
    """What guest script ``name`` prints on a Windows instance with ``facts``.

    This is an interpretation, in Python, of ``chaosec2panic/guest/windows/<name>.ps1`` (which
    cannot run here: no PowerShell), not the script itself: the same ``key=value`` lines in
    the same order, each value as its ``Write-Output`` line formats it (LastBootUpTime as
    ``yyyyMMddTHHmmssZ``, ``[int]`` and ``[int64]`` rounding half to even, hex of the first 512
    and last 16 bytes of the dump file). tests/lab/test_windows.py holds it to the .ps1 text
    key by key.
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
            f"crash_dump_enabled={facts.crash_dump_enabled}",
            f"nmi_crash_dump={facts.nmi_crash_dump}",
            f"auto_reboot={facts.auto_reboot}",
            f"dump_file={dump_file}",
            f"dump_dir={_parent(dump_file)}",
            f"dump_dir_free_kb={round(facts.free_bytes / 1024)}",
        ]
    elif name == "identity":
        lines = ["schema=identity/1", f"boot_id={boot_id}", f"uptime={uptime}", f"now={_epoch(facts.now)}"]
    elif name == "crash_dumps":
        lines = [
            "schema=crash_dumps/1",
            f"boot_id={boot_id}",
            f"kernel_release={facts.version}",
            f"dump_dir={_parent(dump_file)}",
        ]
        f = facts.dump
        if f is not None:
            head = f.head[:HEAD_BYTES].ljust(HEAD_BYTES, b"\0")  # a 512-byte buffer, read into
            tail = f.tail[-min(TAIL_BYTES, f.length) :] if f.length else b""
            lines.append(f"dump={f.full_name}|{f.length}|{_epoch(f.last_write)}|{head.hex()}|{tail.hex()}")
        if facts.bugcheck_event is not None:
            lines.append(f"bugcheck_event={_epoch(facts.bugcheck_event)}")
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
        super().__init__(instance_id, spec, root, scale, clock, emit)

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
    def nmi(self) -> None:
        with self._lock:
            self.advance()
            now = self.clock()
            self._event(now, "nmi")
            if self.phase != "up":
                self._event(now, "nmi-ignored", f"phase {self.phase}")
                return
            self.after_nmi = True
            if not self.spec.nmi_crash_dump:
                self._event(now, "nmi-no-bugcheck", "NMICrashDump=0: Windows carries on")
                return
            self._event(now, "bugcheck", f"0x{NMI_HARDWARE_FAILURE:08x} NMI_HARDWARE_FAILURE")
            self._agent_gone(now)
            self.phase = "bugcheck"
            self.bugchecked_at, self.dump_saved = now, False
            if self.spec.crash_dump_enabled == "none":
                self._schedule((self._later(now, "bluescreen"), "bluescreen_done"))
            else:
                self._schedule((self._later(now, "capture_base"), "bluescreen_done"))

    def _step_bluescreen_done(self, at: float) -> None:
        if self.spec.crash_dump_enabled != "none":
            self.dump_saved = True
            self._event(at, "dump-saved", f"{self.spec.crash_dump_enabled} dump in the page file")
        if self.spec.auto_reboot:
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
        kind = "complete" if self.spec.crash_dump_enabled == "complete" else "kernel"
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
    def facts(self) -> WindowsFacts:
        """The facts the guest scripts would read on this instance now."""
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
            now=self.clock(),
            last_boot=self.booted_at,
            version=spec.family.version,
            total_visible_kb=spec.memory_mib * 1024 - RESERVED_KIB,
            crash_dump_enabled=CRASH_DUMP_TYPES[spec.crash_dump_enabled],
            nmi_crash_dump=int(spec.nmi_crash_dump),
            auto_reboot=int(spec.auto_reboot),
            dump_file=DUMP_FILE,
            system_root=SYSTEM_ROOT,
            free_bytes=int(spec.disk_free_gib * 2**30),
            dump=listing,
            bugcheck_event=self.bugcheck_events[-1] if self.bugcheck_events else None,
        )

    def run_command(self, script: str, timeout: float = 30.0) -> CommandOutcome:
        """Answer a PowerShell command as the SSM agent would, if it is one of the guest scripts."""
        with self._lock:
            self.advance()
            started = self.clock()
            name = windows_script_name(script)
            if name is None:
                code, out = 1, ""
                err = (
                    "the lab's Windows guests cannot run PowerShell: they answer only the "
                    f"extension's guest scripts ({', '.join(SCRIPTS)}), by their schema= line"
                )
            else:
                code, out, err = 0, interpret_windows_script(name, self.facts()), ""
            ended = self.clock()
            self._event(ended, "command", f"exit {code}")
            return CommandOutcome(
                "Success" if code == 0 else "Failed", code, out[:STDOUT_LIMIT], err, started, ended
            )
