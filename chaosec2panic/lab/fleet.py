"""The lab's fleet file: which instances to serve and what state their kernels are in."""

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping

import yaml

from .throttle import DEFAULT_BUCKETS, Bucket, ThrottleError, parse_throttling

__all__ = [
    "CRASH_DUMP_TYPES",
    "FAMILIES",
    "OS_FAMILIES",
    "WINDOWS_FAMILIES",
    "Fleet",
    "FleetError",
    "GuestSpec",
    "OsFamily",
    "load_fleet",
    "parse_fleet",
]


class FleetError(ValueError):
    """The fleet file is wrong; the message names the entry and the field."""


@dataclass(frozen=True)
class OsFamily:
    """How a distribution looks from inside: os-release, kdump tool, dump layout, SSM platform.

    For Windows: ``version`` and ``kernel_release`` are what Win32_OperatingSystem.Version
    says, ``pretty`` its caption (SSM's PlatformName), ``kdump_tool`` the CrashControl key.
    """

    os_id: str
    version: str
    pretty: str
    kdump_tool: str
    layout: str
    kernel_release: str
    platform: str = "Linux"


# The Linux families: their guest scripts run for real under sh in the simulated guest.
OS_FAMILIES: Dict[str, OsFamily] = {
    "amazon-linux-2": OsFamily(
        "amzn", "2", "Amazon Linux 2", "kdumpctl", "rhel", "5.10.228-219.884.amzn2.x86_64"
    ),
    "amazon-linux-2023": OsFamily(
        "amzn", "2023", "Amazon Linux 2023", "kdumpctl", "rhel", "6.1.115-126.197.amzn2023.x86_64"
    ),
    "rhel": OsFamily(
        "rhel", "9.4", "Red Hat Enterprise Linux 9.4", "kdumpctl", "rhel", "5.14.0-427.13.1.el9_4.x86_64"
    ),
    "fedora": OsFamily("fedora", "40", "Fedora Linux 40", "kdumpctl", "rhel", "6.8.5-301.fc40.x86_64"),
    "ubuntu": OsFamily("ubuntu", "24.04", "Ubuntu 24.04 LTS", "kdump-config", "debian", "6.8.0-1016-aws"),
    "debian": OsFamily(
        "debian", "12", "Debian GNU/Linux 12", "kdump-config", "debian", "6.1.0-26-cloud-amd64"
    ),
    "suse": OsFamily(
        "sles",
        "15.6",
        "SUSE Linux Enterprise Server 15 SP6",
        "systemctl",
        "suse",
        "6.4.0-150600.23.25-default",
    ),
}
# The real guests' own system: a Debian kernel, busybox, kdumpctl, RHEL's dump layout.
OS_FAMILIES["crashlab"] = OsFamily(
    "crashlab", "1", "chaosec2panic crash lab", "kdumpctl", "rhel", "(the kit's)"
)
# The Windows Server families: the simulated guest answers their PowerShell guest scripts with
# an interpretation (simwindows.interpret_windows_script), since PowerShell does not run here.
WINDOWS_FAMILIES: Dict[str, OsFamily] = {
    "windows-2019": OsFamily(
        "windows",
        "10.0.17763",
        "Microsoft Windows Server 2019 Datacenter",
        "crashcontrol",
        "windows",
        "10.0.17763",
        "Windows",
    ),
    "windows-2022": OsFamily(
        "windows",
        "10.0.20348",
        "Microsoft Windows Server 2022 Datacenter",
        "crashcontrol",
        "windows",
        "10.0.20348",
        "Windows",
    ),
}
FAMILIES: Dict[str, OsFamily] = {**OS_FAMILIES, **WINDOWS_FAMILIES}
# HKLM\SYSTEM\CurrentControlSet\Control\CrashControl\CrashDumpEnabled, by fleet name.
CRASH_DUMP_TYPES = {"none": 0, "complete": 1, "kernel": 2, "automatic": 7}
LINUX_SETTINGS = ("kdump", "crashkernel_mib", "unknown_nmi_panic", "panic_timeout", "clock_synced")
WINDOWS_SETTINGS = ("crash_dump_enabled", "nmi_crash_dump", "auto_reboot")
KINDS = ("simulated", "qemu", "debian")
QEMU_DEFAULTS = {"os": "crashlab", "memory_mib": 384, "crashkernel_mib": 128}
QEMU_MEMORY_MIB = (320, 512)
# A real Debian guest's kernel settings are what its own files say: these only describe the
# image as built (kdump-tools installed, not armed) and the memory it boots with.
DEBIAN_DEFAULTS = {
    "os": "debian",
    "memory_mib": 1536,
    "kdump": False,
    "crashkernel_mib": 0,
    "unknown_nmi_panic": 0,
    "panic_timeout": 0,
}
# kdump: true boots the image's armed disk: USE_KDUMP=1 and kernel.unknown_nmi_panic=1 in its
# files, kdump-tools' own crashkernel=384M-:128M (128 MiB at this memory) on the line.
DEBIAN_ARMED = {"kdump": True, "crashkernel_mib": 128, "unknown_nmi_panic": 1}
DEBIAN_MEMORY_MIB = (1024, 4096)
# kernel.panic as a distribution ships it, where measured: the real Debian bookworm guest's
# /proc/sys/kernel/panic is 0, so an NMI panic without kdump hangs until the instance is reset.
# The others are not measured here; their simulated guests reboot 10 s after a panic.
SHIPPED_PANIC_TIMEOUT = {"debian": 0}


@dataclass(frozen=True)
class GuestSpec:
    """One simulated instance: its EC2 face and the state of its kernel and agent.

    Linux guests use ``kdump`` .. ``panic_timeout``; Windows guests the CrashControl settings
    ``crash_dump_enabled`` (complete, kernel, automatic or none), ``nmi_crash_dump`` and
    ``auto_reboot``.
    """

    name: str
    kind: str = "simulated"
    instance_type: str = "m5.large"
    os: str = "amazon-linux-2023"
    memory_mib: int = 8192
    kdump: bool = True
    crashkernel_mib: int = 256
    unknown_nmi_panic: int = 1
    panic_timeout: int = 10
    clock_synced: bool = True
    crash_dump_enabled: str = "automatic"
    nmi_crash_dump: bool = True
    auto_reboot: bool = True
    agent: bool = True
    acpi_reboot: bool = True
    disk_free_gib: float = 40.0
    state: str = "running"
    tags: Mapping[str, str] = field(default_factory=lambda: {"chaos:nmi": "allowed"})

    @property
    def family(self) -> OsFamily:
        return FAMILIES[self.os]

    @property
    def windows(self) -> bool:
        return self.family.platform == "Windows"

    @property
    def armed(self) -> bool:
        """Whether an NMI leaves a dump. Linux: a crash kernel is loaded (kdump on and memory
        reserved for it). Windows: NMICrashDump on and a dump type other than none."""
        if self.windows:
            return self.nmi_crash_dump and self.crash_dump_enabled != "none"
        return self.kdump and self.crashkernel_mib > 0


@dataclass(frozen=True)
class Fleet:
    region: str
    time_scale: float
    guests: List[GuestSpec]
    # Token buckets by class (AWS's documented sizes unless the file says otherwise); None: off.
    throttling: Dict[str, Bucket] | None = field(default_factory=lambda: dict(DEFAULT_BUCKETS))


SPEC_FIELDS = {f.name: f for f in fields(GuestSpec)}


def _expected_type(key: str) -> type:
    if key == "tags":
        return dict
    if key == "name":
        return object
    default = SPEC_FIELDS[key].default
    return float if isinstance(default, float) else type(default)


def _guest(entry: Any, where: str) -> List[GuestSpec]:
    if not isinstance(entry, Mapping):
        raise FleetError(f"{where}: expected a mapping of instance settings, got {entry!r}")
    settings = dict(entry)
    count = settings.pop("count", 1)
    unknown = sorted(set(settings) - set(SPEC_FIELDS))
    if unknown:
        raise FleetError(f"{where}: unknown settings {unknown}; valid: {sorted(SPEC_FIELDS)} and count")
    if "name" not in settings:
        raise FleetError(f"{where}: every instance needs a name")
    if settings.get("kind", "simulated") not in KINDS:
        raise FleetError(f"{where}: unknown kind {settings['kind']!r}; valid: {list(KINDS)}")
    if settings.get("kind") == "qemu":
        settings = {**QEMU_DEFAULTS, **settings}
        low, high = QEMU_MEMORY_MIB
        fixed = settings["os"] != "crashlab" or not settings.get("acpi_reboot", True)
        if fixed or "clock_synced" in settings:
            raise FleetError(
                f"{where}: a qemu guest runs the lab's own system (os: crashlab) with its own clock,"
                " and always reboots"
            )
        if not isinstance(settings["memory_mib"], int) or not low <= settings["memory_mib"] <= high:
            raise FleetError(
                f"{where}: a qemu guest has {low} to {high} MiB of memory, got {settings['memory_mib']!r}"
            )
    elif settings.get("kind") == "debian":
        own = sorted(set(LINUX_SETTINGS) - {"kdump"} & set(settings))
        if own or settings.get("os", "debian") != "debian" or not settings.get("acpi_reboot", True):
            raise FleetError(
                f"{where}: a debian guest runs a real Debian system (os: debian) whose kernel settings "
                f"are its own files; {own or 'os or acpi_reboot'} cannot be set (kdump: true boots it armed)"
            )
        settings = {**DEBIAN_DEFAULTS, **(DEBIAN_ARMED if settings.get("kdump") else {}), **settings}
        low, high = DEBIAN_MEMORY_MIB
        if not isinstance(settings["memory_mib"], int) or not low <= settings["memory_mib"] <= high:
            raise FleetError(
                f"{where}: a debian guest has {low} to {high} MiB of memory, got {settings['memory_mib']!r}"
            )
    elif settings.get("os") == "crashlab":
        raise FleetError(f"{where}: os crashlab is the qemu guests' system; set kind: qemu")
    if settings.get("os", "amazon-linux-2023") not in FAMILIES:
        raise FleetError(f"{where}: unknown os {settings['os']!r}; valid: {sorted(FAMILIES)}")
    _platform_settings(settings, where)
    os_name = settings.get("os", "amazon-linux-2023")
    if settings.get("kind", "simulated") == "simulated" and os_name in SHIPPED_PANIC_TIMEOUT:
        settings.setdefault("panic_timeout", SHIPPED_PANIC_TIMEOUT[os_name])
    if settings.get("state", "running") not in ("running", "stopped"):
        raise FleetError(f"{where}: state must be running or stopped")
    if not isinstance(count, int) or count < 1:
        raise FleetError(f"{where}: count must be a whole number >= 1")
    for key, value in settings.items():
        expected = _expected_type(key)
        accepted = (int, float) if expected is float else expected
        if not isinstance(value, accepted) or (isinstance(value, bool) and expected is not bool):
            raise FleetError(f"{where}: {key} must be {expected.__name__}, got {value!r}")
    if "tags" in settings:
        settings["tags"] = {str(k): str(v) for k, v in settings["tags"].items()}
    name = str(settings.pop("name"))
    names = [name] if count == 1 else [f"{name}-{n}" for n in range(1, count + 1)]
    try:
        return [GuestSpec(name=n, **settings) for n in names]
    except TypeError as exc:
        raise FleetError(f"{where}: {exc}") from exc


def _platform_settings(settings: Mapping[str, Any], where: str) -> None:
    """Linux kernel settings only on Linux guests, CrashControl settings only on Windows ones."""
    os_name = settings.get("os", "amazon-linux-2023")
    windows = FAMILIES[os_name].platform == "Windows"
    own, other = (WINDOWS_SETTINGS, LINUX_SETTINGS) if windows else (LINUX_SETTINGS, WINDOWS_SETTINGS)
    misplaced = [k for k in other if k in settings]
    if misplaced:
        kind = "Windows" if windows else "Linux"
        raise FleetError(
            f"{where}: {misplaced} do not apply to os {os_name} ({kind}); its crash settings are {list(own)}"
        )
    dump_type = settings.get("crash_dump_enabled", "automatic")
    if not isinstance(dump_type, str) or dump_type not in CRASH_DUMP_TYPES:
        raise FleetError(
            f"{where}: crash_dump_enabled must be one of {list(CRASH_DUMP_TYPES)}, got {dump_type!r}"
        )


def parse_fleet(data: Any) -> Fleet:
    """A fleet from the parsed YAML document."""
    if not isinstance(data, Mapping) or not isinstance(data.get("instances"), list):
        raise FleetError("a fleet file is a mapping with a list under 'instances'")
    guests = [g for n, e in enumerate(data["instances"]) for g in _guest(e, f"instances[{n}]")]
    names = [g.name for g in guests]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FleetError(f"instance names must be unique; repeated: {duplicates}")
    scale = data.get("time_scale", 1.0)
    if not isinstance(scale, int | float) or scale <= 0:
        raise FleetError(f"time_scale must be a number > 0, got {scale!r}")
    try:
        throttling = parse_throttling(data.get("throttling"))
    except ThrottleError as exc:
        raise FleetError(str(exc)) from None
    return Fleet(str(data.get("region", "us-east-1")), float(scale), guests, throttling)


def load_fleet(path: Path) -> Fleet:
    """Read and check a fleet file."""
    try:
        return parse_fleet(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as exc:
        raise FleetError(f"{path}: not valid YAML: {exc}") from exc
