"""``chaosec2panic inspect PATH... [--json]``: judge crash dumps, dmesg files and console logs offline.

A vmcore's ``nmi_panic`` and ``panic_message`` come from the crashed kernel's own log, read out of
the dump as ``analyze`` reads it; they never change the verdict or the exit code.

The CLI wires ``run`` in and prints what it returns; usage errors (exit 2) stay the CLI's.
"""

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import List, Tuple

from .analysis import analyse_source
from .dumps import FileSource, Inspection, NotRegularFile, Source, inspect_path
from .dumps.source import OPEN_FLAGS
from .memory import DumpError

__all__ = ["inspect_file", "render_text", "run", "with_kernel_log"]


def with_kernel_log(found: Inspection, src: Source) -> Inspection:
    """A vmcore's inspection with the panic its log holds (``nmi_panic`` False when the log holds
    none); a log that cannot be read leaves both unset and says why in ``unchecked``. Anything
    that is not a vmcore is returned as it is."""
    if found.kind != "vmcore":
        return found
    try:
        analysis, _ = analyse_source(src, last=0)
    except DumpError as e:
        return replace(
            found, unchecked=(*found.unchecked, f"kernel log: {e}: nmi_panic and panic_message not read")
        )
    return replace(found, nmi_panic=bool(analysis.nmi_panic), panic_message=analysis.panic_message or "")


def inspect_file(path: str) -> Inspection:
    """``inspect_path``, and for a vmcore the panic from its own log (``with_kernel_log``)."""
    found = replace(inspect_path(Path(path)), path=path)
    if found.kind != "vmcore":
        return found
    try:
        with os.fdopen(os.open(Path(path), OPEN_FLAGS), "rb") as f:
            return with_kernel_log(found, FileSource(f))
    except (OSError, NotRegularFile) as e:
        why = e.strerror or e if isinstance(e, OSError) else e
        return replace(found, unchecked=(*found.unchecked, f"kernel log: cannot read the file again: {why}"))


def _ok(found: Inspection) -> bool:
    return found.kind != "unknown" and found.format != "unknown" and found.complete is True


def render_text(found: Inspection) -> str:
    """One readable block for one path."""
    data = found.to_dict()
    verdict = {True: "complete", False: "INCOMPLETE", None: "cannot tell"}[found.complete]
    lines = [f"{found.path}", f"  {found.kind} ({found.format}): {verdict}"]
    for key, label in (
        ("kernel_release", "kernel"),
        ("machine", "machine"),
        ("crash_time", "crash time"),
        ("panic_message", "panic"),
    ):
        if data[key] is not None:
            lines.append(f"  {label}: {data[key]}")
    if found.nmi_panic is not None:
        lines.append(f"  panic caused by the NMI: {'yes' if found.nmi_panic else 'no'}")
    for key in ("compression", "dump_level", "dumpable_pages", "expected_size", "records", "bugcheck"):
        if key in found.details:
            value = found.details[key]
            shown = f"0x{value:x}" if key == "bugcheck" and isinstance(value, int) else value
            lines.append(f"  {key.replace('_', ' ')}: {shown}")
    lines.extend(f"  problem: {p}" for p in found.problems)
    lines.extend(f"  not checked: {u}" for u in found.unchecked)
    return "\n".join(lines)


def run(paths: List[str], as_json: bool) -> Tuple[int, str]:
    """Inspect each path; return the exit code and the text to print.

    Exit 0 when every path is a recognised artefact judged complete, else 1: what could not be
    checked (``unchecked``) is reported, never counted against it. A missing or unreadable path,
    or one that is not a regular file (a FIFO, a device, a directory), is a problem of that
    path, not an error, and is refused without waiting on it.
    """
    found = [inspect_file(p) for p in paths]
    code = 0 if found and all(_ok(f) for f in found) else 1
    if as_json:
        return code, json.dumps([f.to_dict() for f in found], indent=1)
    return code, "\n\n".join(render_text(f) for f in found)
