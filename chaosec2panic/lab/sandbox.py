"""Where simulated guests' commands run: inside their own guest, never on the host.

An SSM command sent to a simulated guest is a shell script from whoever holds the lab's
credentials. It runs chrooted into the guest's own file tree, so ``/etc/os-release``,
``/proc/cmdline``, ``/usr`` or ``/var/crash`` are the guest's, as on an instance. Of the host
there is only, read-only, what the guest's few tools are made of: the host's ``/usr`` under
:data:`HOST_VIEW` (the guest's ``/bin`` tools and ``/lib`` point into it), the Python the lab's
stand-in tools run on at its own paths, and ``/dev/null``, ``/dev/zero`` and ``/dev/urandom``.
Those come in by bind mounts made in a private mount namespace, held by one small process per
lab (:data:`HOLDER`), so the host's own mounts never change and all of it vanishes with the lab.
Each guest's commands run as a user of their own (a uid from :data:`FIRST_UID` up, in a block
no other lab on the machine holds; owner of that guest's files and of nothing else): without
root or capabilities a command cannot leave its tree, remount, or signal anything but its own
guest's processes.

This takes root on the host (a mount namespace and a uid per guest); elsewhere the lab
refuses to start simulated Linux guests rather than run their commands on the host.
"""

import fcntl
import os
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path
from typing import BinaryIO, Dict, List

from .processes import spawn

__all__ = ["FIRST_UID", "HOLDER", "HOST_VIEW", "Sandbox", "SandboxError", "host_program", "python_paths"]

FIRST_UID = 1_900_000_000  # far above any uid a system or a person is given
UID_BLOCK = 65536  # uids a lab may give its guests; each lab on the machine holds a block of its own
UID_BLOCKS = 1024
UID_LOCKS = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")
HOST_VIEW = "/.lab-host"  # where a guest sees the host's /usr (and any /lib* that is no link)
HOST_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
LIBRARY_LINKS = ("lib", "lib32", "lib64", "libx32")  # what the dynamic loader looks in
DEVICES = ("null", "zero", "urandom")

# The holder: enters a new mount namespace, makes every mount in it private, then takes
# "bind SOURCE TARGET" lines on stdin and bind-mounts SOURCE read-only at TARGET (a device
# read-write), answering "ok" or "error ..." per line. It ends when the lab closes its stdin.
HOLDER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, MS_RDONLY, MS_NOSUID, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    0x20000, 1, 2, 32, 4096, 16384, 1 << 18)

def call(result):
    if result != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

try:
    call(libc.unshare(CLONE_NEWNS))
    call(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))
except OSError as exc:
    print(f"error {exc}", flush=True)
    sys.exit(1)
print("ready", flush=True)
for line in sys.stdin:
    _, source, target = line.split()
    try:
        call(libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None))
        flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (0 if source.startswith("/dev/") else MS_RDONLY)
        call(libc.mount(None, target.encode(), None, flags, None))
        print("ok", flush=True)
    except OSError as exc:
        print(f"error {exc}", flush=True)
"""


class SandboxError(RuntimeError):
    """The sandbox cannot be made here; the message says why and what to do."""


def host_program(name: str) -> str:
    """Where a guest finds the host's program ``name`` (e.g. ``cat``), or "" when there is none."""
    found = shutil.which(name)
    return HOST_VIEW + os.path.realpath(found) if found else ""


def python_paths() -> tuple[str, List[str]]:
    """The interpreter the lab's stand-in tools run on, and the directories their imports come from
    (the lab's own packages: boto3 for the AWS CLI's stand-in)."""
    packages = sysconfig.get_paths()
    return os.path.realpath(sys._base_executable), sorted({packages["purelib"], packages["platlib"]})


def _python_binds() -> List[str]:
    """The host paths the interpreter needs, bound at their own paths in the guest, outermost only."""
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    executable, packages = python_paths()
    wanted = [executable, base["stdlib"], base["platstdlib"], *packages]
    if not Path(sys.base_prefix).resolve().is_relative_to("/usr"):
        wanted.append(str(Path(sys.base_prefix).resolve()))  # a Python of its own: its shared library too
    outer: List[Path] = []
    for path in sorted({Path(p).resolve() for p in wanted}, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(o) for o in outer):
            outer.append(path)
    return [str(p) for p in outer]


class Sandbox:
    """The lab's one mount namespace for its simulated guests' commands."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise SandboxError(
                "simulated Linux guests run each command inside the guest, in a private mount "
                "namespace as a user of its own, which takes root: run the lab as root"
            )
        self._lock = threading.Lock()
        self._block, self._first_uid = _claim_uids()
        self._uids: Dict[Path, int] = {}
        self._mounts: Dict[Path, set[Path]] = {}
        self._holder = spawn(
            [sys.executable, "-I", "-S", "-c", HOLDER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        first = self._holder.stdout.readline().strip() if self._holder.stdout else ""
        if first != "ready":
            self.close()
            raise SandboxError(f"no private mount namespace for the guests' commands: {first or 'no answer'}")
        self._hidden = [f"/{d}" for d in HOST_DIRS if Path("/", d).is_dir() and not Path("/", d).is_symlink()]
        self._python = _python_binds()
        self._tools = [shutil.which(t) or t for t in ("nsenter", "chroot")]

    def _bind(self, source: str, target: Path) -> None:
        assert self._holder.stdin and self._holder.stdout
        self._holder.stdin.write(f"bind {source} {target}\n")
        self._holder.stdin.flush()
        answer = self._holder.stdout.readline().strip()
        if answer != "ok":
            raise SandboxError(f"cannot bind {source} into {target}: {answer or 'the holder ended'}")

    def add(self, root: Path) -> int:
        """Make ``root`` a guest the sandbox can run commands in; the uid its commands run as."""
        with self._lock:
            if root in self._uids:
                return self._uids[root]
            if len(self._uids) >= UID_BLOCK:
                raise SandboxError(f"a lab takes at most {UID_BLOCK} simulated Linux guests")
            uid = self._first_uid + len(self._uids)
            root.mkdir(parents=True, exist_ok=True)
            for name in LIBRARY_LINKS:
                host, mine = Path("/", name), root / name
                if os.path.lexists(host) and not os.path.lexists(mine):
                    mine.symlink_to(HOST_VIEW + os.path.realpath(host))
            for source in self._hidden:
                self._bind(source, self._mount_point(root, HOST_VIEW + source, is_dir=True))
            for source in self._python:
                self._bind(source, self._mount_point(root, source, Path(source).is_dir()))
            for device in DEVICES:
                self._bind(f"/dev/{device}", self._mount_point(root, f"/dev/{device}", is_dir=False))
            (root / "tmp").mkdir(exist_ok=True)
            self._uids[root] = uid
            self._mounts[root] = {root / p.lstrip("/") for p in [HOST_VIEW, *self._python]}
        self.own(root)
        return uid

    @staticmethod
    def _mount_point(root: Path, path: str, is_dir: bool) -> Path:
        target = root / path.lstrip("/")
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        return target

    def own(self, root: Path) -> None:
        """Give the guest's user every file of its tree (the lab writes them as root)."""
        uid = self._uids[root]
        mounts = self._mounts[root]
        for top, dirs, files in os.walk(root):
            here = Path(top)
            dirs[:] = [d for d in dirs if here / d not in mounts]
            for name in [*dirs, *files, ""]:
                path = here / name
                if os.lstat(path).st_uid != uid:
                    os.lchown(path, uid, uid)

    def run(
        self, root: Path, script: str, env: Dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess:
        """Run ``script`` under the guest's ``/bin/sh``, inside the guest, as its user.

        On timeout every process of the command is killed and TimeoutExpired raised."""
        uid = self._uids[root]
        nsenter, chroot = self._tools
        command = [
            nsenter,
            f"--target={self._holder.pid}",
            "--mount",
            "--",
            chroot,
            f"--userspec={uid}:{uid}",
            f"--groups={uid}",
            str(root),
            "/bin/sh",
            "-c",
            script,
        ]
        with subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        ) as proc:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_uids({uid})
                proc.communicate()
                raise
        return subprocess.CompletedProcess(command, proc.returncode, out, err)

    def close(self) -> None:
        """End the holder and every process still running as a guest's user."""
        _kill_uids(set(self._uids.values()))
        if self._holder.stdin:
            self._holder.stdin.close()
        try:
            self._holder.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._holder.kill()
            self._holder.wait()
        if self._holder.stdout:
            self._holder.stdout.close()
        self._block.close()


def _claim_uids() -> tuple[BinaryIO, int]:
    """A block of uids no other lab on this machine holds: its lock (held while the file stays
    open) and its first uid. Two labs never share a uid, so neither can signal the other's guests."""
    for block in random.sample(range(UID_BLOCKS), UID_BLOCKS):
        lock = open(UID_LOCKS / f"chaosec2panic-lab-uids-{block}.lock", "ab")  # noqa: SIM115 - held open
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return lock, FIRST_UID + block * UID_BLOCK
    raise SandboxError(f"all {UID_BLOCKS} blocks of guest uids are held by other labs on this machine")


def _kill_uids(uids: set[int]) -> None:
    """SIGKILL every process of ``uids`` (guests' commands and whatever they left behind)."""
    if not uids:
        return
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid in uids:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
