"""Real Debian guests: a bookworm system built from Debian's packages, booted by its own GRUB.

The image is built once by ``debian/build-image.sh`` (mmdebstrap --variant=minbase, then
``mke2fs -d``: no loop device, no mount) and cached outside the repository, keyed by the
candidate versions of its packages and by the guest files. Each guest boots a qcow2 overlay
on that image, so what ``arm_kdump`` writes to /etc/default/grub and what ``update-grub``
makes decide the guest's next boot, as on an instance. The guest runs the lab's agent as a
systemd service on the same virtio-serial port and protocol as the busybox guests.
"""

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Callable, Dict, List

from .fleet import GuestSpec
from .kit import Kit, cache_dir
from .qemuguest import QemuError, QemuGuest, choose_accel

__all__ = [
    "HOST_PACKAGES",
    "IMAGE_PACKAGES",
    "DebianGuest",
    "DebianImage",
    "DebianImageError",
    "debian_guest",
    "ensure_image",
]

# What the image holds (build-image.sh installs them) and what the host needs to build it.
IMAGE_PACKAGES = (
    "linux-image-amd64",
    "kdump-tools",
    "makedumpfile",
    "kexec-tools",
    "systemd-sysv",
    "udev",
    "initramfs-tools",
    "grub-pc",
)
HOST_PACKAGES = ("mmdebstrap", "e2fsprogs", "fdisk", "qemu-utils", "qemu-system-x86")
GUEST_FILES = (("debian", "build-image.sh"), ("debian", "lab-agent.service"), ("qemu", "agent"))
BUILD_TIMEOUT = 1800


class DebianImageError(RuntimeError):
    """The Debian image cannot be built or found; the message says what to install or run."""


@dataclass(frozen=True)
class DebianImage:
    path: Path
    kernel_release: str
    versions: Dict[str, str] = field(repr=False)

    @property
    def base(self) -> Path:
        """The unarmed disk: kdump-tools installed, USE_KDUMP=0."""
        return self.path / "base.qcow2"

    @property
    def kit(self) -> Kit:
        """The image as the QEMU guest's kit: its folder and kernel release."""
        return Kit(self.path, self.kernel_release)

    @property
    def armed(self) -> Path:
        """The same root filesystem armed: USE_KDUMP=1, kernel.unknown_nmi_panic=1 in sysctl.d."""
        return self.path / "armed.qcow2"


def _guest_file(folder: str, name: str) -> Path:
    return Path(str(files("chaosec2panic.lab").joinpath(folder).joinpath(name)))


def candidate_versions(packages: tuple[str, ...] = IMAGE_PACKAGES) -> Dict[str, str]:
    """The version apt would install of each package now (``apt-cache policy``)."""
    try:
        out = subprocess.run(
            ["apt-cache", "policy", *packages], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except FileNotFoundError as exc:
        raise DebianImageError(
            "apt-cache is missing: the Debian image is built from Debian packages"
        ) from exc
    versions = dict(re.findall(r"^(\S+):\n(?:\s+Installed:.*\n)?\s+Candidate: (\S+)", out, re.M))
    missing = [p for p in packages if versions.get(p) in (None, "(none)")]
    if missing:
        raise DebianImageError(f"apt knows no candidate for {missing} (as root: apt-get update)")
    return versions


def image_key(versions: Dict[str, str]) -> str:
    """The cache key: the packages' versions and the guest files' bytes."""
    digest = hashlib.sha256()
    for name in sorted(versions):
        digest.update(f"{name}={versions[name]}\n".encode())
    for folder, name in GUEST_FILES:
        digest.update(_guest_file(folder, name).read_bytes())
    return digest.hexdigest()[:16]


def _read_image(path: Path) -> DebianImage | None:
    env, listed = path / "image.env", path / "rootfs.versions"
    if not all(p.is_file() for p in (path / "base.qcow2", path / "armed.qcow2", env, listed)):
        return None
    values = dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line)
    versions = dict(line.split("=", 1) for line in listed.read_text().splitlines() if "=" in line)
    return DebianImage(path, values.get("IMAGE_KERNEL_RELEASE", ""), versions)


def ensure_image(rebuild: bool = False) -> DebianImage:
    """The cached image for the packages apt would install now, built if missing."""
    missing = [t for t in ("mmdebstrap", "mke2fs", "sfdisk", "qemu-img") if shutil.which(t) is None]
    if missing:
        raise DebianImageError(
            f"{', '.join(missing)} missing (as root: apt-get install {' '.join(HOST_PACKAGES)})"
        )
    wanted = candidate_versions()
    path = cache_dir("debian", "CHAOSEC2PANIC_DEBIAN_CACHE") / f"bookworm-{image_key(wanted)}"
    found = None if rebuild else _read_image(path)
    if found:
        return found
    if rebuild and path.exists():
        shutil.rmtree(path)
    command = [
        "bash",
        str(_guest_file("debian", "build-image.sh")),
        str(path),
        str(_guest_file("qemu", "agent")),
        str(_guest_file("debian", "lab-agent.service")),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    built = _read_image(path)
    if done.returncode != 0 or built is None:
        raise DebianImageError(f"building the Debian image failed:\n{done.stderr[-3000:]}")
    differ = {p: (v, built.versions.get(p)) for p, v in wanted.items() if built.versions.get(p) != v}
    if differ:
        shutil.rmtree(path)
        raise DebianImageError(
            f"the image got other versions than this machine's apt lists name (wanted, got): {differ}; "
            "as root: apt-get update"
        )
    return built


class DebianGuest(QemuGuest):
    """A real Debian instance: its own disk (an overlay on the image's armed disk if the spec
    says kdump, else on the unarmed one), its own GRUB, systemd, kdump-tools. The busybox
    guests' interface and agent protocol."""

    def __init__(
        self,
        instance_id: str,
        spec: GuestSpec,
        root: Path,
        image: DebianImage,
        accel: str,
        clock: Callable[[], float],
        emit: Callable[[float, str, str, str], None],
    ):
        self.image = image
        self.overlay = root / "disk.qcow2"
        root.mkdir(parents=True, exist_ok=True)
        if not self.overlay.exists():
            made = subprocess.run(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "qcow2",
                    "-b",
                    str(image.armed if spec.kdump else image.base),
                    str(self.overlay),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if made.returncode != 0:
                raise QemuError(f"qemu-img create {self.overlay}: {made.stderr.strip()}")
        super().__init__(instance_id, spec, root, image.kit, accel, clock, emit)

    def command_line(self) -> List[str]:
        line = super().command_line()
        for flag in ("-kernel", "-initrd", "-append"):
            at = line.index(flag)
            del line[at : at + 2]
        at = line.index("-drive")
        line[at + 1] = f"file={self.overlay},format=qcow2,if=none,id=root0,cache=writeback"
        line[at + 3] = "virtio-blk-pci,drive=root0,bootindex=0"
        return line


def debian_guest(
    instance_id: str,
    spec: GuestSpec,
    root: Path,
    workdir: Path,
    clock: Callable[[], float],
    emit: Callable[[float, str, str, str], None],
) -> DebianGuest:
    """A Debian guest on the cached image (built first if missing), on KVM when it works here."""
    image = ensure_image()
    accel = choose_accel(image.kit, workdir)
    return DebianGuest(instance_id, spec, root, image, accel, clock, emit)
