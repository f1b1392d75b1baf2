"""The real guests' kit: a Debian kernel and an initramfs with busybox, kexec and makedumpfile.

Built once from Debian packages by ``qemu/build-kit.sh`` and cached outside the repository,
keyed by the kernel package and by the guest files, so a changed /init builds a new kit.
"""

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

__all__ = ["GUEST_FILES", "HOST_PACKAGES", "Kit", "KitError", "cache_dir", "ensure_kit"]

GUEST_FILES = ("build-kit.sh", "init", "agent", "lab-kdump", "kdumpctl")
HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "kexec-tools", "makedumpfile", "cpio", "kmod")


class KitError(RuntimeError):
    """The kit cannot be built or found; the message says what to install or run."""


@dataclass(frozen=True)
class Kit:
    path: Path
    kernel_release: str

    @property
    def vmlinuz(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"


def cache_dir(name: str, variable: str) -> Path:
    """Where the lab caches what it builds of ``name``: ``$variable`` if set, else
    ``$XDG_CACHE_HOME/chaosec2panic/NAME`` (``~/.cache`` without it)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get(variable) or base / "chaosec2panic" / name)


def _kernel_package() -> str:
    """The linux-image package that linux-image-amd64 depends on, as apt resolves it now."""
    try:
        out = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except FileNotFoundError as exc:
        raise KitError("apt-cache is missing: real guests are built from Debian packages") from exc
    for line in out.splitlines():
        name = line.split(":", 1)[-1].strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-") and name[12:13].isdigit():
            return name
    raise KitError("cannot resolve linux-image-amd64 (as root: apt-get update)")


def _guest_digest() -> str:
    digest = hashlib.sha256()
    for name in GUEST_FILES:
        digest.update(files("chaosec2panic.lab").joinpath("qemu").joinpath(name).read_bytes())
    return digest.hexdigest()[:12]


def _read_kit(path: Path) -> Kit | None:
    env = path / "kit.env"
    if not all((path / n).is_file() for n in ("vmlinuz", "initrd.img", "kit.env")):
        return None
    values = dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line)
    return Kit(path, values.get("KIT_KERNEL_RELEASE", ""))


def ensure_kit(rebuild: bool = False) -> Kit:
    """The cached kit for the current kernel package and guest files, built if missing."""
    if shutil.which("qemu-system-x86_64") is None:
        raise KitError(f"qemu-system-x86_64 is missing (as root: apt-get install {' '.join(HOST_PACKAGES)})")
    path = cache_dir("kit", "CHAOSEC2PANIC_KIT_CACHE") / f"{_kernel_package()}-{_guest_digest()}"
    found = None if rebuild else _read_kit(path)
    if found:
        return found
    script = files("chaosec2panic.lab").joinpath("qemu").joinpath("build-kit.sh")
    done = subprocess.run(
        ["bash", str(script), str(path)], capture_output=True, text=True, timeout=900, check=False
    )
    built = _read_kit(path)
    if done.returncode != 0 or built is None:
        raise KitError(f"building the guest kit failed:\n{done.stderr[-3000:]}")
    return built
