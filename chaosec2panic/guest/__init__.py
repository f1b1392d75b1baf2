"""What runs on an instance: the guest scripts (package data), chosen by platform.

The scripts print ``key=value`` lines and always exit 0; :mod:`.parsers` reads them.
Paths are read below ``$CHAOSEC2PANIC_ROOT`` (unset on a real instance), so the lab
and the tests run the very same scripts against a prepared tree. Each is sent whole, one per
command: a line ``#include NAME`` is replaced by the text of the platform's file NAME, so
scripts share code without depending on anything installed on the instance.
"""

import re
import shlex
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Mapping

__all__ = ["PLATFORMS", "SCRIPTS", "Platform", "platform_of", "script"]


@dataclass(frozen=True)
class Platform:
    name: str
    document: str
    suffix: str


PLATFORMS = {
    "linux": Platform("linux", "AWS-RunShellScript", ".sh"),
    "windows": Platform("windows", "AWS-RunPowerShellScript", ".ps1"),
}
SCRIPTS = ("kdump_status", "identity", "crash_dumps", "kdump_settings", "collect_crash_dump")
INCLUDE = re.compile(r"^#include (\w+)$", re.M)


def platform_of(instance: Mapping[str, Any]) -> Platform:
    """The guest platform of a DescribeInstances record (``Platform`` is set only for Windows)."""
    return PLATFORMS["windows" if instance.get("Platform") == "windows" else "linux"]


def script(platform: Platform, name: str, variables: Mapping[str, str] | None = None) -> str:
    """The text of guest script ``name`` for ``platform``, preceded by ``variables``."""
    if name not in SCRIPTS:
        raise ValueError(f"unknown guest script {name!r}; valid: {', '.join(SCRIPTS)}")
    folder = files(__package__).joinpath(platform.name)
    text = folder.joinpath(name + platform.suffix).read_text()
    text = INCLUDE.sub(lambda m: folder.joinpath(m.group(1) + platform.suffix).read_text(), text)
    if not variables:
        return text
    if platform.name == "windows":
        prelude = "".join(f"$env:{k} = '{v.replace(chr(39), chr(39) * 2)}'\n" for k, v in variables.items())
    else:
        prelude = "".join(f"{k}={shlex.quote(v)}\n" for k, v in variables.items())
    return prelude + text
