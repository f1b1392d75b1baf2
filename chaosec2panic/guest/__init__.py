"""What runs on an instance: the guest scripts (package data), chosen by platform.

The scripts print ``key=value`` lines and always exit 0; :mod:`.parsers` reads them.
They read the system's own paths (``/etc/os-release``, ``/proc``, ``/var/crash``): the lab runs
the very same scripts inside each simulated guest's own tree. Each is sent whole, one per
command: a line ``#include NAME`` is replaced by the text of the platform's file NAME, so
scripts share code without depending on anything installed on the instance.

Values reach a script as variables set before its text, never spliced into code: on Linux each
is one single-quoted sh word (inside which sh gives no character a meaning); on Windows each is
its UTF-8 bytes in base64, decoded by the line that sets it (see :func:`powershell_value`).
"""

import base64
import re
import shlex
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Mapping

__all__ = ["PLATFORMS", "SCRIPTS", "Platform", "platform_of", "powershell_value", "script"]


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
VARIABLE_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


def platform_of(instance: Mapping[str, Any]) -> Platform:
    """The guest platform of a DescribeInstances record (``Platform`` is set only for Windows)."""
    return PLATFORMS["windows" if instance.get("Platform") == "windows" else "linux"]


def powershell_value(value: str) -> str:
    """A PowerShell expression whose value is ``value``, made of ASCII letters, digits and
    punctuation only: the UTF-8 bytes of ``value`` in base64, decoded on the instance.

    Not a quoted literal: PowerShell ends a single-quoted string at any of five quote marks
    (U+0027 and U+2018 to U+201B), and Windows PowerShell reads a script file without a byte
    order mark in the system's ANSI code page, where UTF-8 bytes of other characters can read as
    those marks. Base64 has neither quotes nor ``$``, and the script stays ASCII whatever the
    value holds, so no value can end the literal or change on the way.
    """
    encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
    return f"[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{encoded}'))"


def _checked(variables: Mapping[str, str]) -> None:
    """Refuse a variable a script could not hold as given: a name that is not a plain identifier,
    a value that is not text, or text no environment variable can hold (NUL, lone surrogates)."""
    for name, value in variables.items():
        if not isinstance(name, str) or not VARIABLE_NAME.fullmatch(name):
            raise ValueError(f"guest script variable name {name!r}: expected letters, digits and _")
        if not isinstance(value, str):
            raise ValueError(f"guest script variable {name}: expected text, got {type(value).__name__}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"guest script variable {name}: not encodable as UTF-8 ({exc.reason})") from exc
        if "\0" in value:
            raise ValueError(f"guest script variable {name}: a NUL character cannot be passed")


def script(platform: Platform, name: str, variables: Mapping[str, str] | None = None) -> str:
    """The text of guest script ``name`` for ``platform``, preceded by ``variables``."""
    if name not in SCRIPTS:
        raise ValueError(f"unknown guest script {name!r}; valid: {', '.join(SCRIPTS)}")
    folder = files(__package__).joinpath(platform.name)
    text = folder.joinpath(name + platform.suffix).read_text()
    text = INCLUDE.sub(lambda m: folder.joinpath(m.group(1) + platform.suffix).read_text(), text)
    if not variables:
        return text
    _checked(variables)
    if platform.name == "windows":
        prelude = "".join(f"$env:{k} = {powershell_value(v)}\n" for k, v in variables.items())
    else:
        prelude = "".join(f"{k}={shlex.quote(v)}\n" for k, v in variables.items())
    return prelude + text
