"""``chaosec2panic analyze DUMP [--json] [--lines N] [--vmlinux PATH | --debuginfo-dir DIR]``: the
crash a vmcore holds, from the crashed kernel's log, without debug symbols or makedumpfile; with
the kernel's debug vmlinux, also the tasks, load, memory and every CPU's backtrace
(``chaosec2panic.symbols``, through drgn).

The CLI wires ``run`` in and prints what it returns; usage errors stay the CLI's.
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .analysis import Analysis, analyse_source
from .dumps.source import OPEN_FLAGS, FileSource, NotRegularFile
from .memory import DumpError, open_memory
from .symbols import SymbolView, VmlinuxError, check_vmlinux, find_vmlinux, symbol_view

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


def _frame(frame: Dict[str, Any]) -> str:
    where = f" ({frame['file']}:{frame['line']})" if frame["file"] else ""
    return f"{frame['function']}{where}" + (" [inlined]" if frame["inline"] else "")


def render_symbols(view: SymbolView) -> str:
    """The symbol view as a readable block, after the log's account."""
    mib = {k: f"{v / 2**20:.0f} MiB" for k, v in view.memory.items()}
    load = ", ".join(f"{a:.2f}" for a in view.load_average) if view.load_average else "unread"
    lines = [
        f"  with symbols ({view.vmlinux}, build id {view.build_id or 'none'}):",
        f"    tasks: {view.tasks if view.tasks is not None else 'unread'}, load average: {load}, "
        f"uptime: {view.uptime_seconds if view.uptime_seconds is not None else 'unread'} s",
        f"    memory: {mib.get('total_bytes', 'unread')} total, {mib.get('free_bytes', 'unread')} free",
    ]
    for shown in view.cpus:
        lines.append(f"    CPU {shown['cpu']}: PID {shown['pid']} {shown['comm']} ({shown['state']})")
        lines.extend(f"      #{i} {_frame(f)}" for i, f in enumerate(shown["frames"]))
    lines.append(f"    tasks in D state: {len(view.blocked)}")
    for shown in view.blocked:
        lines.append(f"    PID {shown['pid']} {shown['comm']}:")
        lines.extend(f"      #{i} {_frame(f)}" for i, f in enumerate(shown["frames"]))
    lines.extend(f"    not read: {u}" for u in view.unread)
    return "\n".join(lines)


def run(
    path: str, as_json: bool, last: int = 20, vmlinux: str | None = None, debuginfo_dir: str | None = None
) -> Tuple[int, str]:
    """Analyse one dump: exit 0 and the account, or 2 and what is wrong with the input (a vmlinux
    that is not the dump's kernel's included: a wrong one is never read)."""
    if last < 0:
        return 2, f"chaosec2panic analyze: --lines {last}: give a count of lines, 0 or more"
    if vmlinux and debuginfo_dir:
        return 2, "chaosec2panic analyze: give --vmlinux or --debuginfo-dir, not both"
    view = None
    try:
        with os.fdopen(os.open(Path(path), OPEN_FLAGS), "rb") as f:
            src = FileSource(f)
            found, _lines = analyse_source(src, last)
            if vmlinux or debuginfo_dir:
                info = open_memory(src)[1]
                image = Path(vmlinux) if vmlinux else find_vmlinux(Path(debuginfo_dir or ""), info)
                view = symbol_view(Path(path), image, check_vmlinux(image, info))
    except NotRegularFile as e:
        return 2, f"chaosec2panic analyze: {path}: {e}: name a dump file"
    except OSError as e:
        return 2, f"chaosec2panic analyze: {path}: cannot read: {e.strerror or e}"
    except VmlinuxError as e:
        return 2, f"chaosec2panic analyze: {e}"
    except DumpError as e:
        return 2, f"chaosec2panic analyze: {path}: {e}"
    extra: List[str] = [render_symbols(view)] if view else []
    if as_json:
        symbols = {"symbols": view.to_dict()} if view else {}
        return 0, json.dumps({"path": path, **found.to_dict(), **symbols}, indent=1)
    return 0, "\n".join([render_text(path, found), *extra])
