"""A real guest: a QEMU virtual machine running a Debian kernel with real kdump.

SendDiagnosticInterrupt is QMP ``inject-nmi``; reboot is ``system_reset``; stop and start end
and relaunch the QEMU process on the same disk. The serial console is the console output.
A small agent in the guest (on a virtio-serial port) runs commands under ``sh`` and sends a
heartbeat with the kernel's boot id every two seconds: that heartbeat is the SSM agent's
ping and the source of the status checks.
"""

import base64
import contextlib
import json
import os
import re
import select
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

from .fleet import GuestSpec
from .kit import Kit
from .processes import spawn
from .simguest import STDOUT_LIMIT, CommandOutcome

__all__ = ["HEARTBEAT_FRESH", "QemuError", "QemuGuest", "choose_accel"]

HEARTBEAT_FRESH = 5.0  # seconds: two missed heartbeats and the agent is offline
CONSOLE_LIMIT = 65536
DISK_SIZE = 512 * 1024 * 1024


class QemuError(RuntimeError):
    """A guest cannot be started or driven; the message says why."""


def _connect(path: Path, proc: subprocess.Popen, timeout: float) -> socket.socket:
    """A connection to QEMU's unix socket at ``path``, once QEMU listens there (its file appears
    at bind, before QEMU listens)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
        if proc.poll() is not None:
            raise QemuError(f"qemu exited with {proc.returncode} before opening {path.name}")
        if time.monotonic() > deadline:
            raise QemuError(f"qemu did not open {path.name} within {timeout}s")
        time.sleep(0.05)


class Qmp:
    """A QMP client on a unix socket: one command at a time."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.settimeout(10)
        self.reader = self.sock.makefile("rb")
        self.lock = threading.Lock()
        self.reader.readline()  # greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        with self.lock:
            message = {"execute": command, **({"arguments": arguments} if arguments else {})}
            self.sock.sendall(json.dumps(message).encode() + b"\n")
            while True:
                line = self.reader.readline()
                if not line:
                    raise QemuError(f"QMP closed while running {command}")
                answer = json.loads(line)
                if "return" in answer:
                    return answer["return"]
                if "error" in answer:
                    raise QemuError(f"QMP {command}: {answer['error'].get('desc')}")

    def close(self) -> None:
        self.sock.close()


def choose_accel(kit: Kit, workdir: Path) -> str:
    """KVM when it boots a kernel here, else TCG; the probe's answer is kept with the kit.

    ``CHAOSEC2PANIC_LAB_ACCEL`` (kvm, tcg, auto) overrides. Nested KVM can hang silently at
    boot, so KVM counts only when the console shows the kernel within 20 seconds.
    """
    wanted = os.environ.get("CHAOSEC2PANIC_LAB_ACCEL", "auto")
    if wanted in ("kvm", "tcg"):
        return wanted
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    remembered = kit.path / "accel"
    if remembered.exists():
        return remembered.read_text().strip()
    console = workdir / "kvm-probe.log"
    probe = spawn(
        [
            "qemu-system-x86_64",
            "-accel",
            "kvm",
            "-nodefaults",
            "-display",
            "none",
            "-m",
            "256",
            "-kernel",
            str(kit.vmlinuz),
            "-append",
            "console=ttyS0",
            "-serial",
            f"file:{console}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    booted = False
    while time.monotonic() < deadline and probe.poll() is None and not booted:
        time.sleep(0.5)
        booted = console.exists() and b"Linux version" in console.read_bytes()
    probe.kill()
    probe.wait()
    choice = "kvm" if booted else "tcg"
    remembered.write_text(choice + "\n")
    return choice


class QemuGuest:
    """One real instance. The same interface as the simulated guest."""

    def __init__(
        self,
        instance_id: str,
        spec: GuestSpec,
        root: Path,
        kit: Kit,
        accel: str,
        clock: Callable[[], float],
        emit: Callable[[float, str, str, str], None],
    ):
        self.instance_id = instance_id
        self.spec = spec
        self.root = root
        self.kit = kit
        self.accel = accel
        self.clock = clock
        self._emit = emit
        self.phase = "stopped"
        self.boot_id = ""
        self.last_heartbeat = 0.0
        self.online_since = 0.0
        self.launched_at = 0.0
        self.after_nmi = False
        self.agent_outage = False  # set by the lab to cut the agent off on demand
        self._proc: subprocess.Popen | None = None
        self._qmp: Qmp | None = None
        self._agent: socket.socket | None = None
        self._monitor: threading.Thread | None = None
        self._replies: Dict[int, List[Any]] = {}
        self._next_id = 0
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._console_seen = 0
        self._capture_dir = ""
        root.mkdir(parents=True, exist_ok=True)
        self.disk = root / "disk.img"
        if not self.disk.exists():
            with open(self.disk, "wb") as f:
                f.truncate(DISK_SIZE)
        self.console_path = root / "console.log"
        if spec.state == "running":
            self._launch()

    # the QEMU process ---------------------------------------------------------------
    def command_line(self) -> List[str]:
        spec = self.spec
        append = ["console=ttyS0,115200"]
        if spec.crashkernel_mib:
            append.append(f"crashkernel={spec.crashkernel_mib}M")
        append += [
            f"lab.unknown_nmi_panic={spec.unknown_nmi_panic}",
            f"lab.panic={spec.panic_timeout}",
            f"lab.kdump={1 if spec.kdump else 0}",
        ]
        return [
            "qemu-system-x86_64",
            "-name",
            f"{spec.name},process=chaosec2panic-{self.instance_id}",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
            "-accel",
            self.accel,
            "-machine",
            "pc",
            "-smp",
            "1",
            "-m",
            str(spec.memory_mib),
            "-kernel",
            str(self.kit.vmlinuz),
            "-initrd",
            str(self.kit.initrd),
            "-append",
            " ".join(append),
            "-chardev",
            f"file,id=con,path={self.console_path},append=on",
            "-chardev",
            f"socket,id=agent,path={self.root / 'agent.sock'},server=on,wait=off",
            "-serial",
            "chardev:con",
            "-device",
            "virtio-serial-pci,id=vser0",
            "-device",
            "virtserialport,bus=vser0.0,chardev=agent,name=lab.agent",
            "-drive",
            f"file={self.disk},format=raw,if=none,id=crash0,cache=writeback",
            "-device",
            "virtio-blk-pci,drive=crash0",
            "-qmp",
            f"unix:{self.root / 'qmp.sock'},server=on,wait=off",
            "-nic",
            "none",
            "-rtc",
            "base=utc",
        ]

    def _launch(self) -> None:
        for name in ("qmp.sock", "agent.sock"):
            (self.root / name).unlink(missing_ok=True)
        try:
            with open(self.root / "qemu.log", "ab") as log:
                self._proc = spawn(self.command_line(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        except FileNotFoundError as exc:
            raise QemuError(
                "qemu-system-x86_64 is missing (as root: apt-get install qemu-system-x86)"
            ) from exc
        self._qmp = Qmp(_connect(self.root / "qmp.sock", self._proc, 30))
        self._agent = _connect(self.root / "agent.sock", self._proc, 30)
        self.launched_at = self.clock()
        self.phase = "booting"
        self._monitor = threading.Thread(target=self._watch, args=(self._proc, self._agent), daemon=True)
        self._monitor.start()

    def _halt(self) -> None:
        proc, qmp, agent = self._proc, self._qmp, self._agent
        self._proc = self._qmp = self._agent = None
        self.phase = "stopped"
        if qmp is not None:
            with contextlib.suppress(OSError, QemuError):
                qmp.execute("quit")
            qmp.close()
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if agent is not None:
            agent.close()
        if self._monitor is not None:
            self._monitor.join(timeout=5)

    def close(self) -> None:
        """End the VM (the lab is shutting down)."""
        with self._lock:
            self._halt()

    # what the guest says -----------------------------------------------------------------
    def _watch(self, proc: subprocess.Popen, agent: socket.socket) -> None:
        pending = b""
        while proc.poll() is None:
            try:
                ready, _, _ = select.select([agent], [], [], 0.2)
                chunk = agent.recv(65536) if ready else b""
            except OSError:
                break
            if ready and not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._agent_line(line.decode(errors="replace").split())
            self._read_console()
        self._read_console()

    def _agent_line(self, fields: List[str]) -> None:
        if not fields:
            return
        if fields[0] == "HB" and len(fields) >= 2:
            self._heartbeat(fields[1])
        elif fields[0] == "R" and len(fields) >= 5:
            self._reply(int(fields[1]), int(fields[2]), fields[3], fields[4])
        elif fields[0] == "E" and len(fields) >= 2 and fields[1].isdigit():
            self._reply(int(fields[1]), 125, "-", base64.b64encode(" ".join(fields[2:]).encode()).decode())

    def _heartbeat(self, boot_id: str) -> None:
        with self._lock:
            now = self.clock()
            self.last_heartbeat = now
            if boot_id == self.boot_id:
                return
            self.boot_id = boot_id
            self.online_since = now
            self.phase = "up"
            self._emit(now, self.instance_id, "agent-online", boot_id)
            if self.after_nmi:
                self._emit(now, self.instance_id, "recovered", "new boot, status ok, agent online")
                self.after_nmi = False

    def _reply(self, command_id: int, code: int, out: str, err: str) -> None:
        def text(b64: str) -> str:
            return "" if b64 == "-" else base64.b64decode(b64).decode(errors="replace")

        slot = self._replies.get(command_id)
        if slot is not None:
            slot.append((code, text(out), text(err)))

    CONSOLE_EVENTS = (
        (re.compile(r"Dazed and confused"), "dazed"),
        (re.compile(r"(?<!end )Kernel panic - not syncing:"), "panic"),
        # Each kernel prints its command line first, at its start: elfcorehdr= marks the capture kernel.
        (re.compile(r"^\[\s*[\d.]+\] Command line: .*elfcorehdr="), "capture-start"),
        (re.compile(r"^\[\s*[\d.]+\] Command line: (?!.*elfcorehdr=)"), "boot"),
        (re.compile(r"^LAB: capture: vmcore ok"), "dump-written"),
        (re.compile(r"^LAB: capture: makedumpfile failed"), "capture-failed"),
    )

    def _read_console(self) -> None:
        try:
            with open(self.console_path, "rb") as f:
                f.seek(self._console_seen)
                data = f.read()
        except FileNotFoundError:
            return
        cut = data.rfind(b"\n") + 1
        self._console_seen += cut
        now = self.clock()
        for line in data[:cut].decode(errors="replace").splitlines():
            if line.startswith("LAB: capture: start dir="):
                self._capture_dir = line.split("dir=", 1)[1].split()[0]
            for marker, kind in self.CONSOLE_EVENTS:
                if marker.search(line):
                    detail = f"{self._capture_dir}/vmcore" if kind == "dump-written" else line.strip()[:200]
                    self._emit(now, self.instance_id, kind, detail)

    # what EC2 sees ---------------------------------------------------------------------------
    def advance(self) -> None:
        """Real guests move on their own; their monitor thread records what they do."""

    @property
    def state(self) -> str:
        return "stopped" if self.phase == "stopped" else "running"

    def _fresh(self) -> bool:
        return self.clock() - self.last_heartbeat <= HEARTBEAT_FRESH

    def status(self) -> str:
        if self.phase == "stopped":
            return "not-applicable"
        if self._fresh():
            return "ok"
        return "initializing" if self.last_heartbeat < self.launched_at else "impaired"

    def impaired_since(self) -> float:
        """When the status check that fails now began to: the last heartbeat went stale."""
        return self.last_heartbeat + HEARTBEAT_FRESH

    def agent_online(self) -> bool:
        return self.spec.agent and self.phase != "stopped" and self._fresh() and not self.agent_outage

    def agent_since(self) -> float:
        """When the agent's first heartbeat of this boot came."""
        return self.online_since

    def app_healthy(self) -> bool:
        """Real guests run no application: it is healthy when the agent is."""
        return self.agent_online()

    def last_ping(self) -> float:
        return self.clock() if self.agent_online() else max(self.last_heartbeat, self.launched_at)

    def console_output(self) -> str:
        try:
            with open(self.console_path, "rb") as f:
                f.seek(max(0, self.console_path.stat().st_size - CONSOLE_LIMIT))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    # what the lab's API does to it ----------------------------------------------------------------
    def nmi(self) -> None:
        with self._lock:
            now = self.clock()
            self._emit(now, self.instance_id, "nmi", "")
            if self._qmp is None:
                self._emit(now, self.instance_id, "nmi-ignored", "phase stopped")
                return
            self.after_nmi = True
            self._qmp.execute("inject-nmi")

    def reboot(self) -> None:
        with self._lock:
            if self._qmp is None:
                return
            self._emit(self.clock(), self.instance_id, "reboot", "system_reset")
            self._qmp.execute("system_reset")
            self.launched_at = self.clock()
            self.last_heartbeat = 0.0

    def stop(self) -> None:
        with self._lock:
            if self._proc is None:
                return
            self._emit(self.clock(), self.instance_id, "stop", "")
            self._halt()
            self.last_heartbeat = 0.0

    def start(self) -> None:
        with self._lock:
            if self._proc is not None:
                return
            self._emit(self.clock(), self.instance_id, "start", "")
            self._launch()

    def run_command(
        self, script: str, timeout: float = 30.0, delivered: float | None = None
    ) -> CommandOutcome:
        """Run ``script`` under sh in the guest through its agent (on the guest's own clock,
        whenever the command was ``delivered``)."""
        started = self.clock()
        agent = self._agent
        if agent is None:
            return CommandOutcome("Failed", 1, "", "the instance is stopped", started, self.clock())
        with self._send_lock:
            self._next_id += 1
            command_id = self._next_id
            self._replies[command_id] = []
            frame = f"X {command_id} {int(timeout)} {base64.b64encode(script.encode()).decode()}\n"
            try:
                agent.sendall(frame.encode())
            except OSError as exc:
                self._replies.pop(command_id)
                return CommandOutcome("Failed", 1, "", f"agent channel: {exc}", started, self.clock())
        deadline = time.monotonic() + timeout + 5
        while not self._replies[command_id] and time.monotonic() < deadline:
            time.sleep(0.02)
        answer = self._replies.pop(command_id)
        ended = self.clock()
        self._emit(ended, self.instance_id, "command", f"exit {answer[0][0]}" if answer else "no answer")
        if not answer:
            return CommandOutcome("TimedOut", 124, "", f"no answer within {timeout}s", started, ended)
        code, out, err = answer[0]
        return CommandOutcome(
            "Success" if code == 0 else "Failed", code, out[:STDOUT_LIMIT], err[:8000], started, ended
        )

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the guest's agent has sent a heartbeat (for a lab that starts booted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.phase in ("up", "stopped"):
                return True
            if self._proc is not None and self._proc.poll() is not None:
                raise QemuError(
                    f"{self.spec.name}: qemu exited with {self._proc.returncode}; "
                    f"see {self.root / 'qemu.log'}"
                )
            time.sleep(0.1)
        return False
