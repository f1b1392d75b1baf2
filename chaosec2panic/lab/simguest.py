"""A simulated guest: a kernel, kdump and an SSM agent as a state machine over wall-clock time.

Transitions are scheduled (in model seconds times the lab's time scale) and applied lazily
whenever the guest is looked at, with their scheduled times, so events carry exact times.
The guest's file system is a real directory; SSM commands run the extension's real guest
scripts under ``sh`` against it, with only the tools a minimal system has on the PATH.
The stand-ins for the tools a guest's commands call are programs of their own, in ``sim_bin``;
a Windows Server guest is :mod:`chaosec2panic.lab.simwindows`.
"""

import json
import math
import os
import re
import shlex
import subprocess
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable, Dict, List, Mapping

from .dumpwriter import (
    kdump_header,
    write_flattened,
    write_kdump_compressed,
)
from .fleet import GuestSpec
from .sandbox import Sandbox, host_program, python_paths

__all__ = [
    "MODEL_SECONDS",
    "CommandOutcome",
    "SimGuest",
    "crashkernel_reservation",
    "kernel_crashkernel",
]

SIM_BIN = Path(__file__).with_name("sim_bin")  # the stand-in programs, copied into each guest
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
        self.impaired_at = 0.0  # when the NMI's panic (or bug check) made the status check fail
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

    def impaired_since(self) -> float:
        """When the status check that fails now began to: the NMI that panicked the kernel."""
        return self.impaired_at

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
            self.impaired_at = now

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
        tools, systemctl and sysctl (sim-bin, all one program: ``sim_bin/simtool.py``), and the AWS
        CLI's ``s3 cp`` (``sim_bin/aws.py``)."""
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
        (sim / "simtool").write_text(f"#!{python} -IS\n{(SIM_BIN / 'simtool.py').read_text()}")
        (sim / "simtool").chmod(0o755)
        # -I, not -S, and the lab's own packages first: it needs boto3.
        aws = (SIM_BIN / "aws.py").read_text()
        (sim / "aws").write_text(f"#!{python} -I\nimport sys\nsys.path[:0] = {packages!r}\n{aws}")
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
                    "clock_synced": spec.clock_synced,
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
            "proc/uptime": f"{math.floor(uptime * 100) / 100:.2f} {uptime * 0.9:.2f}",  # cut, as Linux does
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
