"""A simulated guest: a kernel, kdump and an SSM agent as a state machine over wall-clock time.

Transitions are scheduled (in model seconds times the lab's time scale) and applied lazily
whenever the guest is looked at, with their scheduled times, so events carry exact times.
The guest's file system is a real directory; SSM commands run the extension's real guest
scripts under ``sh`` against it, with only the tools a minimal system has on the PATH.

A Windows Server guest (:class:`WindowsSimGuest`) follows its CrashControl settings instead
of a kernel's, and since PowerShell cannot run here it answers the extension's PowerShell
guest scripts with :func:`interpret_windows_script`, an interpretation of them in Python.
"""

import base64
import gzip
import json
import os
import re
import shlex
import subprocess
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Tuple

from ..guest import SCRIPTS
from .dumpwriter import (
    kdump_header,
    windows_dump_header,
    write_flattened,
    write_kdump_compressed,
    write_windows_dump,
)
from .fleet import CRASH_DUMP_TYPES, GuestSpec
from .sandbox import Sandbox, host_program, python_paths

__all__ = [
    "MODEL_SECONDS",
    "CommandOutcome",
    "SimGuest",
    "WindowsFacts",
    "WindowsFile",
    "WindowsSimGuest",
    "crash_control_after",
    "crashkernel_reservation",
    "interpret_windows_script",
    "kernel_crashkernel",
    "windows_script_name",
]

MODEL_SECONDS = {
    "capture_boot": 8.0,  # the capture kernel, started at the panic, boots to its kdump service
    "rtc": 1.5,  # a kernel sets its clock from the hardware clock this long after it starts
    "capture_base": 2.0,  # makedumpfile start-up, dmesg
    "capture_per_gib": 1.5,  # makedumpfile -d 31 per GiB of memory
    "boot": 20.0,  # firmware to userspace
    "agent": 5.0,  # userspace to SSM agent online
    "app": 3.0,  # SSM agent online to the application answering its health check
    "shutdown": 3.0,  # clean shutdown on RebootInstances
    "bluescreen": 2.0,  # Windows: the blue screen before a restart when no dump is written
}
# What a boot prints on the serial console, kernel and systemd: a real Debian bookworm guest
# under QEMU printed 41,098 to 42,116 bytes per boot, its capture boot (a full systemd boot into
# kdump-tools-dump.service) included. GetConsoleOutput returns the last 64 KiB, so the capture
# kernel's lines are gone once the next boot has printed about 22 KiB of its own. The simulated
# kdump-tools distributions (Debian, Ubuntu: a full systemd capture boot) print this much per
# boot; the others' amounts are not measured, and their consoles stay short (kinder than real).
BOOT_CONSOLE_BYTES = 41_000
CONSOLE_LIMIT = 65536
BOOT_CHATTER = tuple(
    f"systemd[1]: Started lab-unit-{n:04d}.service - unit {n} of target {n % 7 + 1} of this boot, "
    "described as long as a real unit is."
    for n in range(BOOT_CONSOLE_BYTES // 130)
)
MIN_CAPTURE_MIB = 128
STDOUT_LIMIT = 24000
AGENT_UNIT = "amazon-ssm-agent.service"  # Ubuntu's is a snap's: snap.amazon-ssm-agent.amazon-ssm-agent
UNIT_STATE = "run/lab-sim/units"  # what the systemctl stand-in shows of a unit (its start time)
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
    "uniq",
    "wc",
    "basename",
    "dirname",
    "gzip",
    "base64",
    "printf",
    "echo",
    "true",
    "false",
    "sh",
    "mkdir",
    "rm",
)
# What a Linux 6.1 kernel printed after "Kernel panic" for an NMI on an idle CPU: the real Debian
# bookworm guest's log (tests/fixtures/real/log/vmcore-dmesg.txt), registers left out.
NMI_PANIC_TRACE = (
    "Call Trace:",
    " <NMI>",
    " dump_stack_lvl+0x44/0x5c",
    " panic+0x118/0x2f4",
    " ? _printk+0x68/0x83",
    " nmi_panic.cold+0xc/0xc",
    " unknown_nmi_error.cold+0x3b/0x49",
    " exc_nmi+0x11e/0x150",
    " end_repeat_nmi+0x16/0x67",
    "RIP: 0010:native_safe_halt+0xb/0x10",
    " ? native_safe_halt+0xb/0x10",
    " </NMI>",
    " <TASK>",
    " default_idle_call+0x38/0xf0",
    " do_idle+0x206/0x2b0",
    " cpu_startup_entry+0x26/0x30",
    " rest_init+0xca/0xd0",
    " start_kernel+0x6fb/0x70f",
    " secondary_startup_64_no_verify+0xe5/0xeb",
    " </TASK>",
)
# uname as the guest's kernel answers it (the host's uname would ask the host's kernel).
UNAME = r"""#!/bin/sh
r=$(cat /proc/sys/kernel/osrelease); n=$(cat /proc/sys/kernel/hostname)
[ $# -gt 0 ] || set -- -s
out=""
for a in "$@"; do
  case "$a" in
    --all) a=-a ;; --kernel-name) a=-s ;; --nodename) a=-n ;; --kernel-release) a=-r ;;
    --kernel-version) a=-v ;; --machine) a=-m ;; --operating-system) a=-o ;;
    --*) echo "uname: unrecognized option '$a'" >&2; exit 1 ;;
  esac
  f=${a#-}
  while [ -n "$f" ]; do
    c=${f%"${f#?}"}; f=${f#?}
    case "$c" in
      a) out="$out Linux $n $r #1 SMP x86_64 GNU/Linux" ;; s) out="$out Linux" ;; n) out="$out $n" ;;
      r) out="$out $r" ;; v) out="$out #1 SMP" ;; m|p|i) out="$out x86_64" ;; o) out="$out GNU/Linux" ;;
      *) echo "uname: invalid option -- '$c'" >&2; exit 1 ;;
    esac
  done
done
echo "${out# }"
"""
# What each distribution's kdump comes in: the package, the packages it pulls, its systemd unit,
# its tool and its configuration file (by OsFamily.kdump_tool).
KDUMP_PACKAGES = {
    "kdumpctl": ("kexec-tools", (), "kdump", "etc/kdump.conf"),
    "kdump-config": (
        "kdump-tools",
        ("kexec-tools", "makedumpfile"),
        "kdump-tools",
        "etc/default/kdump-tools",
    ),
    "systemctl": ("kdump", ("kexec-tools", "makedumpfile"), "kdump", "etc/sysconfig/kdump"),
}
KDUMP_CONFIG = {
    "kdumpctl": "path /var/crash\ncore_collector makedumpfile -l --message-level 7 -d 31\n",
    "kdump-config": 'USE_KDUMP={use}\nKDUMP_COREDIR="/var/crash"\n',
    "systemctl": 'KDUMP_SAVEDIR="file:///var/crash"\n',
}
# The package manager and boot loader tools on each distribution's PATH (simulated in sim-bin).
# The kernel files a command may write (sysctl -w, kdump loading the crash kernel).
WRITABLE = ("proc/sys/kernel/unknown_nmi_panic", "proc/sys/kernel/panic", "sys/kernel/kexec_crash_loaded")
OS_TOOLS = {
    "amazon-linux-2": ("yum", "rpm", "grubby"),
    "amazon-linux-2023": ("dnf", "yum", "rpm", "grubby"),
    "rhel": ("dnf", "yum", "rpm", "grubby"),
    "fedora": ("dnf", "yum", "rpm", "grubby"),
    "ubuntu": ("apt-get", "dpkg-query", "update-grub", "grub-mkconfig"),
    "debian": ("apt-get", "dpkg-query", "update-grub", "grub-mkconfig"),
    "suse": ("zypper", "rpm", "grub2-mkconfig"),
    "crashlab": (),
}
PACKAGE_DB = "var/lib/chaosec2panic-lab/packages"  # the simulated package database: a name a line
SYSCTL_FILES = ("etc/sysctl.d", "etc/sysctl.conf")
BASE_CMDLINE = "console=ttyS0,115200n8"
ROOT_ARGS = "root=/dev/nvme0n1p1 ro"
# kdump-tools' grub.d file, as the package ships it (debian/kdump-tools.grub.default, installed
# as /etc/default/grub.d/kdump-tools.cfg; its postinst then runs update-grub when grub.cfg exists).
# Ubuntu's reserves by memory size from 2G (Canonical's kernel crash dump guide); Debian's is the
# postinst's DEF_PRESET. grub-mkconfig on Debian and Ubuntu reads it after /etc/default/grub.
KDUMP_TOOLS_GRUB = "etc/default/grub.d/kdump-tools.cfg"
KDUMP_TOOLS_CRASHKERNEL = {
    "ubuntu": "2G-4G:320M,4G-32G:512M,32G-64G:1024M,64G-128G:2048M,128G-:4096M",
    "debian": "384M-:128M",
}


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
        sandbox: Sandbox | None = None,
    ):
        self.instance_id = instance_id
        self.sandbox = sandbox
        self.spec = spec
        self.root = root
        self.scale = scale
        self.clock = clock
        self._emit = emit
        self._lock = threading.RLock()
        now = clock()
        self.phase = "up" if spec.state == "running" else "stopped"
        self.booted_at = now - 3600.0
        self.printk_origin = self.booted_at  # when the kernel printing now started
        self.kernel_line = 0  # where its lines begin in the console
        self.crashed_log: List[str] = []  # the crashed kernel's log, as kdump saves it beside the dump
        self.boot_id = self._new_boot_id()
        self.agent_at = self.booted_at + (MODEL_SECONDS["boot"] * 0.5 + MODEL_SECONDS["agent"]) * self.scale
        self.last_online = now
        self.after_nmi = False
        self._plan: List[tuple[float, str]] = []
        self.console: List[str] = []
        self.capture_started = 0.0
        self.agent_outage = False  # set by the lab to cut the agent off on demand
        # What the instance's role and metadata give AWS tools; the lab points them at itself.
        self.aws_env: Dict[str, str] = {}
        # The running kernel's state: its crashkernel= argument, the memory reserved for it, the
        # crash kernel loaded, unknown_nmi_panic. Set at each boot from the guest's files.
        self.crashkernel = f"{spec.crashkernel_mib}M" if spec.crashkernel_mib else ""
        self.crashkernel_mib = spec.crashkernel_mib
        crash = f" crashkernel={self.crashkernel}" if self.crashkernel else ""
        self.kernel_args = f"{ROOT_ARGS} {BASE_CMDLINE}{crash}"  # /proc/cmdline after BOOT_IMAGE=
        self.crash_loaded = spec.armed
        self.unknown_nmi_panic = spec.unknown_nmi_panic
        # What each file of :meth:`_files` holds on disk, so a command rewrites only what changed.
        self._shown: Dict[str, str] = {}
        if sandbox is not None:
            sandbox.add(root)
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
        since = max(0.0, at - self.printk_origin)
        self.console.extend(f"[{since:12.6f}] {line}" for line in lines)

    def _kernel_start(self, started: float, args: str) -> None:
        """A kernel's first lines: its version and command line at 0, then the line that sets its
        clock from the hardware clock (whole seconds), as a real kernel prints them."""
        kept, size = len(self.console), 0
        while kept and size + len(self.console[kept - 1]) < CONSOLE_LIMIT:  # what a read can show
            kept -= 1
            size += len(self.console[kept]) + 1
        del self.console[:kept]
        self.printk_origin, self.kernel_line = started, len(self.console)
        release = self.spec.family.kernel_release
        self._say(
            started,
            f"Linux version {release} (builder@lab) #1 SMP",
            f"Command line: BOOT_IMAGE=/boot/vmlinuz-{release} {args}",
        )
        rtc = started + MODEL_SECONDS["rtc"] * self.scale
        clock = datetime.fromtimestamp(int(rtc), UTC)
        self._say(rtc, f"rtc_cmos 00:00: setting system clock to {clock:%Y-%m-%dT%H:%M:%S} UTC ({int(rtc)})")
        if self.spec.family.kdump_tool == "kdump-config":
            self._say(rtc, *BOOT_CHATTER)

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

    def agent_since(self) -> float:
        """When the agent came online in this boot (a command waiting for it is taken then)."""
        return self.agent_at

    def app_healthy(self) -> bool:
        """Whether the instance's application answers: a while after its agent came online."""
        return self.agent_online() and self.clock() >= self.agent_at + MODEL_SECONDS["app"] * self.scale

    def last_ping(self) -> float:
        """When the agent last reported: now while online, else when it went away."""
        return self.clock() if self.agent_online() else self.last_online

    def _agent_gone(self, at: float) -> None:
        if self.spec.agent and self.phase == "up" and at >= self.agent_at:
            self.last_online = at
        self.agent_at = float("inf")

    def console_output(self) -> str:
        self.advance()
        return "\n".join(self.console)[-CONSOLE_LIMIT:]

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
            self._on_nmi(now)

    def _on_nmi(self, now: float) -> None:
        """What the running kernel does with an NMI (called with the lock held)."""
        self._say(now, "Uhhuh. NMI received for unknown reason 3d on CPU 0.")
        if self.unknown_nmi_panic != 1:
            self._say(
                now,
                "Do you have a strange power saving mode enabled?",
                "Dazed and confused, but trying to continue",
            )
            self._event(now, "dazed", "unknown_nmi_panic=0: no panic")
            return
        loaded = "Kdump: loaded " if self.crash_loaded else ""
        self._say(
            now,
            "Kernel panic - not syncing: NMI: Not continuing",
            f"CPU: 0 PID: 0 Comm: swapper/0 {loaded}Not tainted {self.spec.family.kernel_release} #1",
            f"Hardware name: Amazon EC2 {self.spec.instance_type}/, BIOS 1.0 10/16/2017",
            *NMI_PANIC_TRACE,
            "Kernel Offset: disabled",
        )
        self._event(now, "panic", "NMI: Not continuing")
        self._agent_gone(now)
        if self.crash_loaded:
            self.phase = "capturing"
            self._say(now, "Starting crashdump kernel...", "Bye!")
            self.crashed_log = self.console[self.kernel_line :]
            self._kernel_start(now, f"{BASE_CMDLINE} irqpoll nr_cpus=1 reset_devices elfcorehdr=179572K")
            self._event(now, "capture-start", "the capture kernel started")
            self.capture_started = now
            self._schedule((self._later(now, "capture_boot"), "kdump_start"))
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

    def _kdump_dir(self) -> str:
        """Where kdump writes its dumps: the directory its configuration file names (kdump.conf
        ``path``, kdump-tools ``KDUMP_COREDIR``, SUSE ``KDUMP_SAVEDIR``; the last line wins), else
        /var/crash, as each distribution's kdump reads it."""
        config = self.root / self._kdump_package()[3]
        found = "/var/crash"
        for line in (config.read_text() if config.is_file() else "").splitlines():
            words = line.split()
            key, sep, value = line.strip().partition("=")
            if sep and key in ("KDUMP_COREDIR", "KDUMP_SAVEDIR"):
                found = value.strip().strip('"').removeprefix("file://") or found
            elif len(words) > 1 and words[0] == "path":
                found = words[1]
        return found

    def _write_dump(self, at: float, started: float, complete: bool) -> Path:
        directory, final, partial, _ = self._dump_names(started)
        path = self.root / self._kdump_dir().lstrip("/") / directory
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

    def _step_kdump_start(self, at: float) -> None:
        self._say(at, f"kdump: dump target is {self._kdump_dir()}", "kdump: saving vmcore-dmesg.txt")
        self._write_dump(at, self.capture_started, complete=False)
        if self.crashkernel_mib < MIN_CAPTURE_MIB:
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
        self._event(at, "capture-failed", f"crashkernel={self.crashkernel} is too small")
        self._step_reset(at)

    def _step_capture_done(self, at: float) -> None:
        target = self._write_dump(at, self.capture_started, complete=True)
        (target.parent / self._dump_names(self.capture_started)[3]).write_text(
            "\n".join(self.crashed_log) + "\n"
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
        self._boot_from_files()
        self.boot_id = self._new_boot_id()
        self.agent_at = self._later(at, "agent")
        self._boot_messages(at)
        self._event(self.booted_at, "boot", self.boot_id)
        if self.spec.agent:
            self._schedule((self.agent_at, "agent_up"))

    def _step_agent_up(self, at: float) -> None:
        self._event(at, "agent-online")
        if self.after_nmi:
            self._event(at, "recovered", "new boot, status ok, agent online")
        self.after_nmi = False

    def _boot_messages(self, at: float) -> None:
        """The kernel's lines from its start (``booted_at``), then userspace's at ``at``."""
        self._kernel_start(self.booted_at, self.kernel_args)
        rtc = self.booted_at + MODEL_SECONDS["rtc"] * self.scale
        self._say(max(at, rtc), f"{self.spec.family.pretty}", f"{self.spec.name} login:")

    # the guest's file system and commands -------------------------------------------------------
    def _kdump_package(self) -> tuple[str, tuple[str, ...], str, str]:
        return KDUMP_PACKAGES[self.spec.family.kdump_tool]

    def _prepare_root(self) -> None:
        """The files a distribution keeps across boots, as the fleet entry describes them, and the
        tools: a minimal system's, and the lab's stand-ins for its package manager, boot loader
        tools, systemctl and sysctl (sim-bin, all one program: :data:`SIM_TOOL`), and the AWS
        CLI's ``s3 cp`` (:data:`SIM_AWS`)."""
        (self.root / "var" / "crash").mkdir(parents=True, exist_ok=True)
        tools = self.root / "bin"
        tools.mkdir(exist_ok=True)
        for tool in TOOLS:
            found = host_program(tool)
            if found and not os.path.lexists(tools / tool):
                (tools / tool).symlink_to(found)
        spec, family = self.spec, self.spec.family
        package, pulled, unit, _ = self._kdump_package()
        sim = self.root / "sim-bin"
        sim.mkdir(exist_ok=True)
        python, packages = python_paths()
        (sim / "simtool").write_text(f"#!{python} -IS\n{SIM_TOOL}")
        (sim / "simtool").chmod(0o755)
        # -I, not -S, and the lab's own packages first: it needs boto3.
        (sim / "aws").write_text(f"#!{python} -I\nimport sys\nsys.path[:0] = {packages!r}\n{SIM_AWS}")
        (sim / "aws").chmod(0o755)
        (sim / "simtool.json").write_text(
            json.dumps(
                {
                    "os": spec.os,
                    "pretty": family.pretty,
                    "release": family.kernel_release,
                    "kdump_tool": family.kdump_tool,
                    "package": package,
                    "pulled": list(pulled),
                    "unit": unit,
                    "unit_state": UNIT_STATE,
                    "config": KDUMP_CONFIG[family.kdump_tool].replace(
                        "{use}", "0" if spec.os == "debian" else "1"
                    ),
                    "config_path": self._kdump_package()[3],
                    # Debian's grub-mkconfig also reads /etc/default/grub.d/*.cfg; kdump-tools
                    # lays down one of them.
                    "grub_d": spec.os in KDUMP_TOOLS_CRASHKERNEL,
                    "kdump_grub": KDUMP_TOOLS_CRASHKERNEL.get(spec.os, ""),
                }
            )
        )
        for tool in ("systemctl", "sysctl", "timedatectl", *OS_TOOLS.get(spec.os, ())):
            if not (sim / tool).exists():
                (sim / tool).symlink_to("simtool")
        if (self.root / PACKAGE_DB).exists():
            return
        db = self.root / PACKAGE_DB
        db.parent.mkdir(parents=True, exist_ok=True)
        db.write_text("")
        if spec.kdump:
            self._sim_tool("install", package)
            self._sim_tool("systemctl", "enable", unit)
        crash = f" crashkernel={self.crashkernel}" if self.crashkernel else ""
        if (self.root / KDUMP_TOOLS_GRUB).is_file():
            # The image's reservation where Canonical's guide says to change it: kdump-tools.cfg
            # (the kernel would take its crashkernel= over one in GRUB_CMDLINE_LINUX).
            line = f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT{crash}"\n'
            self._write(KDUMP_TOOLS_GRUB, line)
            crash = ""
        self._write("etc/default/grub", f'GRUB_TIMEOUT=0\nGRUB_CMDLINE_LINUX="{BASE_CMDLINE}{crash}"\n')
        if "grubby" in OS_TOOLS.get(spec.os, ()):
            self._write(
                f"boot/loader/entries/lab-{family.kernel_release}.conf",
                f"title {family.pretty} ({family.kernel_release})\nversion {family.kernel_release}\n"
                f"linux /boot/vmlinuz-{family.kernel_release}\n"
                f"options {ROOT_ARGS} {BASE_CMDLINE}{crash}\n",
            )
        else:
            self._sim_tool("grub-mkconfig", "-o", self._grub_cfg())

    def _grub_cfg(self) -> str:
        return "/boot/grub2/grub.cfg" if self.spec.family.layout == "suse" else "/boot/grub/grub.cfg"

    def _write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def _sim_tool(self, *args: str) -> None:
        """Run one of the lab's stand-in tools in the guest (to lay out the files as the tool would)."""
        done = self._sandboxed(shlex.join(["/sim-bin/simtool", *args]), {"SIMTOOL": args[0]}, 60)
        if done.returncode != 0:
            raise RuntimeError(
                f"{self.spec.name}: simtool {' '.join(args)} exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()}"
            )

    def _sandboxed(self, script: str, env: Mapping[str, str], timeout: float) -> subprocess.CompletedProcess:
        """``script`` run inside the guest, with the guest's files its own."""
        if self.sandbox is None:
            raise RuntimeError(f"{self.spec.name}: a simulated guest runs commands only in a sandbox")
        self.sandbox.own(self.root)
        return self.sandbox.run(
            self.root, script, {"LC_ALL": "C", "HOME": "/root", "PATH": "/sim-bin:/bin", **env}, timeout
        )

    def _installed(self) -> List[str]:
        try:
            return (self.root / PACKAGE_DB).read_text().split()
        except FileNotFoundError:
            return []

    def _next_cmdline(self) -> str:
        """The kernel command line the boot loader gives the next boot: the default BLS entry's
        options (grubby's distributions), else the first ``linux`` line of grub.cfg."""
        entries = sorted((self.root / "boot" / "loader" / "entries").glob("*.conf"))
        for entry in entries[:1]:
            for line in entry.read_text().splitlines():
                if line.startswith("options "):
                    return line[len("options ") :]
        cfg = self.root / self._grub_cfg().lstrip("/")
        if cfg.is_file():
            for line in cfg.read_text().splitlines():
                words = line.split()
                if words[:1] == ["linux"]:
                    return " ".join(words[2:])
        return ""

    def _boot_sysctl(self) -> int:
        """kernel.unknown_nmi_panic after systemd-sysctl: the image's value, then the files."""
        value = self.spec.unknown_nmi_panic
        sysctl_d = self.root / SYSCTL_FILES[0]
        files = sorted(sysctl_d.glob("*.conf")) if sysctl_d.is_dir() else []
        for path in [*files, self.root / SYSCTL_FILES[1]]:
            if not path.is_file():
                continue
            for line in path.read_text().splitlines():
                key, sep, found = line.partition("=")
                if sep and key.strip() == "kernel.unknown_nmi_panic" and found.strip().isdigit():
                    value = int(found.strip())
        return value

    def _boot_from_files(self) -> None:
        """A new boot takes its command line from the boot loader's files (its crashkernel= as
        the kernel picks it: :func:`kernel_crashkernel`), its sysctl values from /etc/sysctl.d,
        and loads the crash kernel when the kdump service is installed, enabled (and, for
        kdump-tools, USE_KDUMP=1) and memory was reserved."""
        self.kernel_args = self._next_cmdline() or f"{ROOT_ARGS} {BASE_CMDLINE}"
        crash = kernel_crashkernel(self.kernel_args)
        self.crashkernel = crash
        self.crashkernel_mib = crashkernel_reservation(crash, self.spec.memory_mib)
        self.unknown_nmi_panic = self._boot_sysctl()
        package, _, unit, config = self._kdump_package()
        wants = self.root / "etc" / "systemd" / "system" / "multi-user.target.wants" / f"{unit}.service"
        enabled = package in self._installed() and (wants.exists() or wants.is_symlink())
        if self.spec.family.kdump_tool == "kdump-config":
            text = (self.root / config).read_text() if (self.root / config).is_file() else ""
            enabled = enabled and "USE_KDUMP=1" in text.split()
        self.crash_loaded = enabled and self.crashkernel_mib > 0

    def _files(self, now: float) -> Dict[str, str]:
        """The files the running kernel shows (/proc, /sys) at ``now`` and the tools whose
        answers follow it (``date`` tells ``$CHAOSEC2PANIC_CLOCK``)."""
        spec, family = self.spec, self.spec.family
        loaded = self.phase == "up" and self.crash_loaded
        uptime = max(0.0, now - self.booted_at)
        free_kb = int(spec.disk_free_gib * 1024 * 1024)
        files = {
            "proc/sys/kernel/random/boot_id": self.boot_id,
            "proc/uptime": f"{uptime:.2f} {uptime * 0.9:.2f}",
            "proc/sys/kernel/osrelease": family.kernel_release,
            "proc/cmdline": f"BOOT_IMAGE=/boot/vmlinuz-{family.kernel_release} {self.kernel_args}",
            "proc/meminfo": f"MemTotal:       {spec.memory_mib * 1024 - 180000} kB\n",
            "proc/sys/kernel/unknown_nmi_panic": str(self.unknown_nmi_panic),
            "proc/sys/kernel/panic": str(spec.panic_timeout),
            "sys/kernel/kexec_crash_loaded": "1" if loaded else "0",
            "sys/kernel/kexec_crash_size": str(self.crashkernel_mib * 1024 * 1024),
            "etc/os-release": f'ID="{family.os_id}"\nVERSION_ID="{family.version}"\n'
            f'PRETTY_NAME="{family.pretty}"\n',
            "sim-bin/date": f'#!/bin/sh\nexec {host_program("date")} -d "@$CHAOSEC2PANIC_CLOCK" "$@"\n',
            "sim-bin/df": "#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
            f"echo '/dev/nvme0n1p1 {free_kb * 2} {free_kb} {free_kb} 50% /'\n",
            "proc/sys/kernel/hostname": spec.name,
            "sim-bin/uname": UNAME,
            # A command runs in its agent's cgroup; systemd says when that unit started (the
            # model's agent is online the moment it starts: a real one registers after that).
            "proc/self/cgroup": f"0::/system.slice/{AGENT_UNIT}",
            f"{UNIT_STATE}/{AGENT_UNIT}": "ActiveEnterTimestampMonotonic="
            f"{max(0, round((self.agent_at - self.booted_at) * 1e6)) if self.agent_at <= now else 0}",
        }
        if self._kdump_package()[0] not in self._installed():
            return files
        loaded_now = '[ "$(cat /sys/kernel/kexec_crash_loaded 2>/dev/null)" = 1 ]'
        if family.kdump_tool == "kdumpctl":
            files["sim-bin/kdumpctl"] = (
                f'#!/bin/sh\nif {loaded_now}; then echo "Kdump is operational" >&2; exit 0; fi\n'
                'echo "Kdump is not operational" >&2\nexit 3\n'
            )
        elif family.kdump_tool == "kdump-config":
            files["sim-bin/kdump-config"] = (
                '#!/bin/sh\nif [ "$1" = unload ]; then echo 0 > /sys/kernel/kexec_crash_loaded; '
                'echo "unloaded kdump kernel."; exit 0; fi\n'
                f'if {loaded_now}; then echo "current state   : ready to kdump"; '
                'else echo "current state   : Not ready to kdump"; fi\nexit 0\n'
            )
        return files

    def _show(self, files: Dict[str, str]) -> None:
        """Write each of ``files`` whose text differs from what is on disk."""
        for rel, text in files.items():
            text = text if text.endswith("\n") else text + "\n"
            if self._shown.get(rel) == text:
                continue
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if rel.startswith("sim-bin/"):
                path.chmod(0o755)
            self._shown[rel] = text

    def _read_back(self) -> None:
        """What a command changed in the running kernel: sysctl -w, the crash kernel (un)loaded.
        A kernel file a command wrote is shown again from the kernel's state at the next command
        (the kernel keeps only what it accepts)."""
        for rel in WRITABLE:
            text = (self.root / rel).read_text() if (self.root / rel).is_file() else ""
            if text != self._shown.get(rel):
                self._shown.pop(rel, None)
            if self.phase != "up":
                continue
            if rel == "proc/sys/kernel/unknown_nmi_panic" and text.strip().isdigit():
                self.unknown_nmi_panic = int(text)
            elif rel == "sys/kernel/kexec_crash_loaded":
                self.crash_loaded = text.strip() == "1" and self.crashkernel_mib > 0

    def run_command(
        self, script: str, timeout: float = 30.0, delivered: float | None = None
    ) -> CommandOutcome:
        """Run ``script`` under sh inside the guest (:class:`~.sandbox.Sandbox`), as the SSM agent would.

        The guest's clock (``date``, /proc/uptime) reads ``delivered``, when its agent took the
        command: the lab runs its guests' commands one after another on the host's few CPUs,
        where real instances would run them side by side, each on its own.
        """
        with self._lock:
            self.advance()
            at = self.clock() if delivered is None else delivered
            self._show(self._files(at))
            started = at
            try:
                done = self._sandboxed(script, {"CHAOSEC2PANIC_CLOCK": f"{at:.6f}", **self.aws_env}, timeout)
                code, out, err = done.returncode, done.stdout, done.stderr
            except subprocess.TimeoutExpired:
                code, out, err = 124, "", f"timed out after {timeout}s"
            self._read_back()
            ended = self.clock()
            self._event(ended, "command", f"exit {code}")
            return CommandOutcome(
                "Success" if code == 0 else "Failed", code, out[:STDOUT_LIMIT], err[:8000], started, ended
            )


SIZE = re.compile(r"^(\d+)([KMGT]?)$", re.I)
UNITS_MIB = {"": 1 / 2**20, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def _mib(text: str) -> float | None:
    found = SIZE.match(text.strip())
    return int(found.group(1)) * UNITS_MIB[found.group(2).upper()] if found else None


# The suffixes that make a crashkernel= a part of a split reservation (kernel/crash_reserve.c).
CRASHKERNEL_SUFFIXES = (",high", ",low", ",cma")


def kernel_crashkernel(cmdline: str) -> str:
    """The crashkernel= value the kernel reserves by, from its command line: the last one
    without a suffix, else the last ``,high`` one (get_last_crashkernel; "" when none)."""
    values = [w[len("crashkernel=") :] for w in cmdline.split() if w.startswith("crashkernel=")]
    plain = [v for v in values if not v.endswith(CRASHKERNEL_SUFFIXES)]
    high = [v for v in values if v.endswith(",high")]
    return (plain or high or [""])[-1]


def crashkernel_reservation(value: str, memory_mib: int) -> int:
    """MiB the kernel reserves for ``crashkernel=value`` on a machine with ``memory_mib``: a size
    (``256M``, ``256M@16M``, ``512M,high``) or ranges (``1G-4G:192M,4G-64G:256M,64G-:512M``, the
    range holding the memory wins); 0 when nothing fits or the value is not understood."""
    value = value.split("@", 1)[0].removesuffix(",high").removesuffix(",low")
    if ":" not in value:
        return int(_mib(value) or 0)
    for part in value.split(","):
        span, _, size = part.partition(":")
        start, _, end = span.partition("-")
        low, high = _mib(start), _mib(end) if end else float("inf")
        amount = _mib(size)
        if low is None or high is None or amount is None:
            return 0
        if low <= memory_mib < high:
            return int(amount)
    return 0


# The lab's stand-ins for the tools arm_kdump's script calls: one program, by the name it is
# run as (or $SIMTOOL). It changes the guest's files as the real tool would change the system;
# the guest reads them back after the command (sysctl, the crash kernel) and at boot.
SIM_TOOL = r"""
import json, os, re, subprocess, sys
from pathlib import Path

R = Path("/")  # the guest's own root: its commands run chrooted
HERE = Path(__file__).resolve().parent
CONF = json.loads((HERE / "simtool.json").read_text())
DB = R / "var/lib/chaosec2panic-lab/packages"
REPO = {CONF["package"], *CONF["pulled"]}


def err(text, code=1):
    print(text, file=sys.stderr)
    sys.exit(code)


def installed():
    return DB.read_text().split() if DB.exists() else []


def install(names):
    unknown = [n for n in names if n not in REPO]
    if unknown:
        err(f"No match for argument: {' '.join(unknown)}")
    have = installed()
    for name in names:
        for n in ([name, *CONF["pulled"]] if name == CONF["package"] else [name]):
            if n not in have:
                have.append(n)
        print(f"Installing {name}")
        if name == CONF["package"]:
            unit = R / f"usr/lib/systemd/system/{CONF['unit']}.service"
            unit.parent.mkdir(parents=True, exist_ok=True)
            unit.write_text("[Unit]\nDescription=kdump\n[Install]\nWantedBy=multi-user.target\n")
            config = R / CONF["config_path"]
            if not config.exists():
                config.parent.mkdir(parents=True, exist_ok=True)
                config.write_text(CONF["config"])
            grub_d = R / "etc/default/grub.d/kdump-tools.cfg"
            if CONF["kdump_grub"] and not grub_d.exists():  # a conffile: one changed is kept
                grub_d.parent.mkdir(parents=True, exist_ok=True)
                value = CONF["kdump_grub"]
                grub_d.write_text(f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT '
                                  f'crashkernel={value}"\n')
                if (R / "boot/grub/grub.cfg").exists():  # the postinst's update-grub
                    mkconfig(["-o", "/boot/grub/grub.cfg"])
    DB.write_text("".join(n + "\n" for n in have))


def package_manager(args):
    words = [a for a in args if not a.startswith("-")]
    if words[:1] == ["update"] or words[:1] == ["makecache"]:
        return
    if words[:1] not in (["install"], ["in"]):
        err(f"unsupported: {' '.join(args)}")
    install(words[1:])


def rpm(args):
    if args[:1] != ["-q"]:
        err("unsupported")
    missing = 0
    for name in args[1:]:
        if name in installed():
            print(f"{name}-1.0-1.x86_64")
        else:
            print(f"package {name} is not installed")
            missing += 1
    sys.exit(missing)


def dpkg_query(args):
    fmt = next((a[3:] for a in args if a.startswith("-f=")), "${Package}\t${Version}\n")
    names = [a for a in args if not a.startswith("-")]
    for name in names:
        if name not in installed():
            err(f"dpkg-query: no packages found matching {name}")
        sys.stdout.write(fmt.replace("${Status}", "install ok installed").replace("${Package}", name)
                         .replace("${Version}", "1.0").replace("\\n", "\n"))


def grub_default():
    path = R / "etc/default/grub"
    return path, (path.read_text() if path.exists() else "")


def cmdline_of(text, key="GRUB_CMDLINE_LINUX"):
    found = re.findall(rf'^{key}=["\']?(.*?)["\']?$', text, re.M)
    return found[-1] if found else ""


def edit_args(words, add, remove):
    keys = {a.split("=", 1)[0] for a in add} | set(remove)
    return [w for w in words if w.split("=", 1)[0] not in keys] + list(add)


def grubby(args):
    entries = sorted((R / "boot/loader/entries").glob("*.conf"))
    if not entries:
        err("grubby: no boot entries")
    opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    if "info" in opts:
        lines = entries[0].read_text().splitlines()
        options = next((l[8:] for l in lines if l.startswith("options ")), "").split()
        root = next((w[5:] for w in options if w.startswith("root=")), "")
        kernel = next((l[6:] for l in lines if l.startswith("linux ")), "")
        args = " ".join(w for w in options if not w.startswith("root="))
        print(f'index=0\nkernel="{kernel}"\nargs="{args}"')
        print(f'root="{root}"')
        return
    if "update-kernel" not in opts:
        err("grubby: unsupported")
    add, remove = opts.get("args", "").split(), opts.get("remove-args", "").split()
    for entry in entries:
        lines = entry.read_text().splitlines()
        lines = [("options " + " ".join(edit_args(l[8:].split(), add, remove))) if l.startswith("options ")
                 else l for l in lines]
        entry.write_text("\n".join(lines) + "\n")
    path, text = grub_default()
    if text:
        new = " ".join(edit_args(cmdline_of(text).split(), add, remove))
        path.write_text(re.sub(r'^GRUB_CMDLINE_LINUX=.*$', f'GRUB_CMDLINE_LINUX="{new}"', text, flags=re.M))


def grub_args():
    # grub-mkconfig sources /etc/default/grub, then (Debian's grub) /etc/default/grub.d/*.cfg in
    # name order, and gives the default entry GRUB_CMDLINE_LINUX then GRUB_CMDLINE_LINUX_DEFAULT.
    files = [R / "etc/default/grub"]
    if CONF["grub_d"]:
        files += sorted((R / "etc/default/grub.d").glob("*.cfg"))
    script = ('GRUB_CMDLINE_LINUX=; GRUB_CMDLINE_LINUX_DEFAULT=; for f in "$@"; do [ ! -e "$f" ] || '
              '. "$f" >/dev/null || exit 1; done; echo "$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT"')
    done = subprocess.run([str(R / "bin/sh"), "-c", script, "sh", *map(str, files)], capture_output=True,
                          text=True, env={"LC_ALL": "C", "PATH": str(R / "bin")})
    if done.returncode:
        err(f"grub-mkconfig: sourcing the defaults failed: {done.stderr.strip()}")
    return " ".join(done.stdout.split())


def mkconfig(args):
    out = args[args.index("-o") + 1] if "-o" in args else "/boot/grub/grub.cfg"
    line = grub_args()
    target = R / out.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"menuentry '{CONF['pretty']}' {{\n\tlinux /boot/vmlinuz-{CONF['release']} "
                      f"root=/dev/nvme0n1p1 ro {line}\n}}\n")
    print("Generating grub configuration file ... done", file=sys.stderr)


def systemctl(args):
    if args[:2] == ["show", "-p"] and len(args) == 4:
        state = R / CONF["unit_state"] / args[3]
        found = dict(l.split("=", 1) for l in state.read_text().split()) if state.is_file() else {}
        print(f"{args[2]}={found.get(args[2], '0' if args[2].endswith('Monotonic') else '')}")
        return
    words = [a for a in args if not a.startswith("-")]
    quiet = "--quiet" in args or "-q" in args
    if len(words) != 2:
        err("systemctl: unsupported")
    verb, unit = words[0], words[1].removesuffix(".service")
    unit_file = R / f"usr/lib/systemd/system/{unit}.service"
    wants = R / f"etc/systemd/system/multi-user.target.wants/{unit}.service"
    loaded = R / "sys/kernel/kexec_crash_loaded"
    kdump = unit == CONF["unit"] and unit_file.exists()
    if verb == "is-active":
        active = kdump and loaded.read_text().strip() == "1"
        if not quiet:
            print("active" if active else "inactive")
        sys.exit(0 if active else 3)
    if not unit_file.exists():
        err(f"Failed to {verb} unit: Unit file {unit}.service does not exist.")
    if verb == "is-enabled":
        on = wants.exists() or wants.is_symlink()
        if not quiet:
            print("enabled" if on else "disabled")
        sys.exit(0 if on else 1)
    if verb == "enable":
        wants.parent.mkdir(parents=True, exist_ok=True)
        if not wants.is_symlink():
            wants.symlink_to(f"/usr/lib/systemd/system/{unit}.service")
        return
    if verb == "disable":
        if wants.is_symlink() or wants.exists():
            wants.unlink()
        return
    if verb in ("start", "restart"):
        size = (R / "sys/kernel/kexec_crash_size").read_text().strip()
        config = R / CONF["config_path"]
        if CONF["kdump_tool"] == "kdump-config" and "USE_KDUMP=1" not in config.read_text().split():
            err(f"Job for {unit}.service failed: kdump-tools: not configured to use kdump (USE_KDUMP)")
        if not size.isdigit() or int(size) == 0:
            err(f"Job for {unit}.service failed: no memory reserved for the crash kernel (crashkernel=)")
        loaded.write_text("1\n")
        return
    if verb == "stop":
        loaded.write_text("0\n")
        return
    err(f"systemctl: unsupported verb {verb}")


def timedatectl(args):
    # AWS's images keep the clock synchronised (chrony or timesyncd on Amazon Time Sync): a model.
    if args == ["show", "-p", "NTPSynchronized"]:
        print("NTPSynchronized=yes")
        return
    err("timedatectl: unsupported")


def sysctl(args):
    if args[:1] == ["-n"] and len(args) == 2:
        print((R / "proc/sys" / args[1].replace(".", "/")).read_text().strip())
        return
    if args[:1] != ["-w"] or len(args) != 2 or "=" not in args[1]:
        err("sysctl: unsupported")
    key, value = args[1].split("=", 1)
    path = R / "proc/sys" / key.strip().replace(".", "/")
    if not path.exists():
        err(f"sysctl: cannot stat /proc/sys/{key.replace('.', '/')}: No such file or directory", 255)
    path.write_text(value.strip() + "\n")
    print(f"{key.strip()} = {value.strip()}")


name = os.environ.get("SIMTOOL") or Path(sys.argv[0]).name
args = sys.argv[1:] if not os.environ.get("SIMTOOL") else sys.argv[2:]
if name == "install":
    install(args)
elif name in ("dnf", "yum", "apt-get", "zypper"):
    package_manager(args)
elif name == "rpm":
    rpm(args)
elif name == "dpkg-query":
    dpkg_query(args)
elif name == "grubby":
    grubby(args)
elif name in ("update-grub", "grub-mkconfig", "grub2-mkconfig"):
    mkconfig(args)
elif name == "systemctl":
    systemctl(args)
elif name == "sysctl":
    sysctl(args)
elif name == "timedatectl":
    timedatectl(args)
else:
    err(f"{name}: not simulated")
"""

# The lab's stand-in for the AWS CLI: ``aws s3 cp [--recursive] SOURCE s3://BUCKET/KEY``, with
# boto3, to the endpoint the lab gives its guests (AWS_ENDPOINT_URL). Anything else, or no lab
# endpoint, is an error: it never reaches real AWS.
SIM_AWS = r"""
import os, sys
from pathlib import Path

OPTIONS = {"--recursive", "--only-show-errors", "--no-progress"}


def err(text, code):
    print(text, file=sys.stderr)
    sys.exit(code)


args = sys.argv[1:]
words = [a for a in args if not a.startswith("--")]
options = set(args) - set(words)
if words[:2] != ["s3", "cp"] or len(words) != 4 or not words[3].startswith("s3://") or options - OPTIONS:
    err(f"aws {' '.join(args)}: the lab's aws does only s3 cp [--recursive] SOURCE s3://BUCKET/KEY", 252)
if not os.environ.get("AWS_ENDPOINT_URL"):
    err("aws: no AWS_ENDPOINT_URL: the lab's aws uploads only to a lab", 255)
source = Path(words[2])
if not source.exists():
    err(f"The user-provided path {source} does not exist.", 255)
import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

bucket, _, key = words[3][len("s3://"):].partition("/")
if "--recursive" in options:
    folder = key if not key or key.endswith("/") else key + "/"
    pairs = [(p, folder + p.relative_to(source).as_posix()) for p in sorted(source.rglob("*")) if p.is_file()]
else:
    pairs = [(source, key + source.name if not key or key.endswith("/") else key)]
s3 = boto3.client("s3")
failed = 0
for path, name in pairs:
    try:
        s3.upload_file(str(path), bucket, name)
    except (S3UploadFailedError, ClientError, BotoCoreError, OSError) as exc:
        print(f"upload failed: {path} to s3://{bucket}/{name} {exc}", file=sys.stderr)
        failed += 1
        continue
    if "--only-show-errors" not in options:
        print(f"upload: {path} to s3://{bucket}/{name}")
sys.exit(1 if failed else 0)
"""


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
