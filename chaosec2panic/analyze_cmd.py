"""``chaosec2panic analyze DUMP [--json] [--lines N]``: the crash a vmcore holds, from the crashed
kernel's log, without debug symbols or makedumpfile.

The CLI wires ``run`` in and prints what it returns; usage errors stay the CLI's.
"""

import json
import os
from pathlib import Path
from typing import Tuple

from .analysis import Analysis, analyse_source
from .dumps import OPEN_FLAGS, FileSource, NotRegularFile
from .memory import DumpError

__all__ = ["render_text", "run"]


def render_text(path: str, found: Analysis) -> str:
    """A readable account of one dump's crash."""
    when = found.crash_time or "at an unknown time"
    lines = [
        f"{path}",
        f"  {found.format}: kernel {found.kernel_release}, crashed {when}",
        f"  log: {found.log_lines} lines",
    ]
    if found.panic_message is None:
        lines.append("  panic: none in the log")
        return "\n".join(lines)
    nmi = "yes" if found.nmi_panic else "no"
    lines += [
        f"  panic: {found.panic_message} (log line {found.panic_line}, {found.uptime_seconds} s after boot)",
        f"  panic caused by the NMI: {nmi}" + (f" ({found.nmi_line})" if found.nmi_line else ""),
    ]
    if found.cpu is not None:
        lines.append(f"  CPU {found.cpu}, PID {found.pid}, command {found.comm}")
    if found.rip:
        lines.append(f"  RIP: {found.rip} (in {found.rip_function})")
    if found.call_trace:
        lines.append("  call trace:")
        lines.extend(f"    {t}" for t in found.call_trace)
    if found.other_cpus:
        for cpu, shown in sorted(found.other_cpus.items(), key=lambda c: int(c[0])):
            lines.append(f"  CPU {cpu}:")
            lines.extend(f"    {t}" for t in shown)
    else:
        up = f" ({found.cpus_brought_up} CPU brought up)" if found.cpus_brought_up is not None else ""
        lines.append(f"  other CPUs: the log shows nothing of them{up}")
    if found.last_lines:
        lines.append(f"  last {len(found.last_lines)} lines before the panic:")
        lines.extend(f"    {t}" for t in found.last_lines)
    return "\n".join(lines)


def run(path: str, as_json: bool, last: int = 20) -> Tuple[int, str]:
    """Analyse one dump: exit 0 and the account, or 2 and what is wrong with the input."""
    if last < 0:
        return 2, f"chaosec2panic analyze: --lines {last}: give a count of lines, 0 or more"
    try:
        with os.fdopen(os.open(Path(path), OPEN_FLAGS), "rb") as f:
            found, _lines = analyse_source(FileSource(f), last)
    except NotRegularFile as e:
        return 2, f"chaosec2panic analyze: {path}: {e}: name a dump file"
    except OSError as e:
        return 2, f"chaosec2panic analyze: {path}: cannot read: {e.strerror or e}"
    except DumpError as e:
        return 2, f"chaosec2panic analyze: {path}: {e}"
    if as_json:
        return 0, json.dumps({"path": path, **found.to_dict()}, indent=1)
    return 0, render_text(path, found)
