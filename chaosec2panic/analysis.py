"""What a vmcore says of its crash, from the crashed kernel's own log, without debug symbols.

``read_log`` walks the lockless printk ringbuffer (Linux 5.10 and later) through VMCOREINFO, as
``makedumpfile --dump-dmesg`` does (makedumpfile printk.c, ``dump_lockless_dmesg``), and
``format_records`` prints it as makedumpfile 1.7 prints it, line for line. ``summarise_log`` is
a pure function of those lines, or of any kernel log text (a dmesg file): the panic, whether
the NMI caused it, the crashing task, the RIP, the call trace, the lines before the panic and
what the log shows of the other CPUs; ``summarise`` adds what VMCOREINFO says (the crash time).
``analyse_source`` puts both together over a dump (``chaosec2panic.memory``).
"""

import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Dict, Iterable, List, Tuple

from .dumps import Source
from .memory import DumpError, KernelMemory, VmcoreInfo, open_memory

__all__ = [
    "Analysis",
    "LogRecord",
    "analyse_source",
    "format_records",
    "read_log",
    "summarise",
    "summarise_log",
]

# kernel/printk/printk_ringbuffer.h: a descriptor's state_var is its id and two state bits.
DESC_SV_BITS = 64
DESC_FLAGS_SHIFT = DESC_SV_BITS - 2
DESC_ID_MASK = (1 << DESC_FLAGS_SHIFT) - 1
DESC_COMMITTED, DESC_FINALIZED = 0x1, 0x2
MAX_RING_BITS = 31  # 2 GiB: CONFIG_LOG_BUF_SHIFT is at most 25, log_buf_len at most 2 GiB
LOG_FIELDS = (
    "SYMBOL(prb)",
    "OFFSET(printk_ringbuffer.desc_ring)",
    "OFFSET(printk_ringbuffer.text_data_ring)",
    "OFFSET(prb_desc_ring.count_bits)",
    "OFFSET(prb_desc_ring.descs)",
    "OFFSET(prb_desc_ring.infos)",
    "OFFSET(prb_desc_ring.head_id)",
    "OFFSET(prb_desc_ring.tail_id)",
    "SIZE(prb_desc)",
    "OFFSET(prb_desc.state_var)",
    "OFFSET(prb_desc.text_blk_lpos)",
    "OFFSET(prb_data_blk_lpos.begin)",
    "OFFSET(prb_data_blk_lpos.next)",
    "SIZE(printk_info)",
    "OFFSET(printk_info.ts_nsec)",
    "OFFSET(printk_info.text_len)",
    "OFFSET(prb_data_ring.size_bits)",
    "OFFSET(prb_data_ring.data)",
    "OFFSET(atomic_long_t.counter)",
)


@dataclass(frozen=True)
class LogRecord:
    """One printk record: its timestamp in nanoseconds since boot and its raw text."""

    ts_nsec: int
    text: bytes


def _check_layout(info: VmcoreInfo) -> None:
    """Refuse, by name, a kernel whose log is not a lockless ringbuffer VMCOREINFO describes."""
    missing = [k for k in LOG_FIELDS if not info.has(k)]
    if not missing:
        return
    kernel = info.release or "unknown"
    if info.has("SYMBOL(log_buf)"):
        raise DumpError(
            f"kernel {kernel} keeps its log in the log_buf ring of kernels before 5.10, which this "
            "reader does not read: use makedumpfile --dump-dmesg"
        )
    raise DumpError(
        f"kernel {kernel}: unknown kernel log layout, VMCOREINFO lacks {', '.join(missing[:3])}"
        + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        + ": use makedumpfile --dump-dmesg"
    )


def read_log(mem: KernelMemory, info: VmcoreInfo) -> List[LogRecord]:
    """The committed records of the printk ringbuffer, tail to head (``dump_lockless_dmesg``)."""
    _check_layout(info)
    u64 = mem.u64
    prb = u64(info.symbol("prb"))
    desc_ring = prb + info.offset("printk_ringbuffer.desc_ring")
    data_ring = prb + info.offset("printk_ringbuffer.text_data_ring")
    counter = info.offset("atomic_long_t.counter")
    count_bits = int.from_bytes(mem.read(desc_ring + info.offset("prb_desc_ring.count_bits"), 4), "little")
    size_bits = int.from_bytes(mem.read(data_ring + info.offset("prb_data_ring.size_bits"), 4), "little")
    if not 0 < count_bits <= MAX_RING_BITS or not 0 < size_bits <= MAX_RING_BITS:
        raise DumpError(
            f"printk ringbuffer at {prb:#x}: count_bits {count_bits}, size_bits {size_bits} are not a "
            "ring's: SYMBOL(prb) or the ring's OFFSET fields are wrong for this dump"
        )
    ring, size = 1 << count_bits, 1 << size_bits
    descs = u64(desc_ring + info.offset("prb_desc_ring.descs"))
    infos = u64(desc_ring + info.offset("prb_desc_ring.infos"))
    text = u64(data_ring + info.offset("prb_data_ring.data"))
    head = u64(desc_ring + info.offset("prb_desc_ring.head_id") + counter)
    tail = u64(desc_ring + info.offset("prb_desc_ring.tail_id") + counter)
    if (head - tail) & DESC_ID_MASK >= ring:
        raise DumpError(
            f"printk ringbuffer: tail id {tail:#x} and head id {head:#x} are more than the ring's "
            f"{ring} descriptors apart: the ring's fields are wrong for this dump"
        )
    desc_size, info_size = info.size("prb_desc"), info.size("printk_info")
    state_at = info.offset("prb_desc.state_var") + counter
    lpos = info.offset("prb_desc.text_blk_lpos")
    begin_at, next_at = (
        lpos + info.offset("prb_data_blk_lpos.begin"),
        lpos + info.offset("prb_data_blk_lpos.next"),
    )
    ts_at, len_at = info.offset("printk_info.ts_nsec"), info.offset("printk_info.text_len")
    records: List[LogRecord] = []
    ident = tail
    while True:
        desc = mem.read(descs + (ident % ring) * desc_size, desc_size)
        state_var = int.from_bytes(desc[state_at : state_at + 8], "little")
        state = state_var >> DESC_FLAGS_SHIFT
        if state_var & DESC_ID_MASK == ident and state in (DESC_COMMITTED, DESC_FINALIZED):
            begin = int.from_bytes(desc[begin_at : begin_at + 8], "little") % size
            end = int.from_bytes(desc[next_at : next_at + 8], "little") % size
            if begin != end:
                rec = mem.read(infos + (ident % ring) * info_size, info_size)
                text_len = int.from_bytes(rec[len_at : len_at + 2], "little")
                if begin > end:  # a block that wraps is stored whole from the ring's start
                    begin = 0
                begin += 8  # the block's own copy of the descriptor id
                text_len = max(0, min(text_len, end - begin))
                ts = int.from_bytes(rec[ts_at : ts_at + 8], "little")
                records.append(LogRecord(ts, mem.read(text + begin, text_len) if text_len else b""))
        if ident == head:
            return records
        ident = (ident + 1) & DESC_ID_MASK


PRINTABLE = frozenset(range(0x20, 0x7F)) | frozenset(b" \t\v\f\r")


def format_records(records: Iterable[LogRecord]) -> List[str]:
    """The log as ``makedumpfile --dump-dmesg`` prints it: ``[%5d.%06d] text``, a record's
    continuation lines indented under its text, other bytes as ``\\xNN``."""
    lines: List[str] = []
    for rec in records:
        prefix = f"[{rec.ts_nsec // 10**9:5d}.{rec.ts_nsec % 10**9 // 1000:06d}] "
        text = "".join(chr(b) if b in PRINTABLE or b == 0x0A else f"\\x{b:02x}" for b in rec.text)
        first, *rest = text.split("\n")
        lines.append(prefix + first)
        lines.extend(" " * len(prefix) + more for more in rest)
    return lines


STAMP = re.compile(r"^\[\s*(\d+)\.(\d+)\] ?")
PANIC = re.compile(r"Kernel panic - not syncing: (.*)$")
NMI_UNKNOWN = re.compile(r"NMI received for unknown reason \w+ on CPU (\d+)")
TASK = re.compile(r"CPU: (\d+) PID: (\d+) Comm: (\S+)")
RIP = re.compile(r"RIP: ([0-9a-f]{4}):(\S+)")
NMI_BACKTRACE = re.compile(r"NMI backtrace for cpu (\d+)")
CPUS_UP = re.compile(r"smp: Brought up \d+ nodes?, (\d+) CPUs?")
TRACE_END = (" </TASK>", " </IRQ>")
BLOCK_LINES = (" ", "Hardware name: ", "Call Trace:")  # what an NMI backtrace prints under its head
REGISTER = re.compile(r"^(RIP|Code|RSP|R[A-Z0-9]{2}|FS|CS|CR2|DR\d|PKRU): ")


def _body(line: str) -> str:
    """A log line without its timestamp."""
    return STAMP.sub("", line, count=1)


def _seconds(line: str) -> float | None:
    m = STAMP.match(line)
    return float(f"{m.group(1)}.{m.group(2)}") if m else None


@dataclass(frozen=True)
class Analysis:
    """What the dump says of its crash. ``to_dict`` is the ``analyze --json`` shape."""

    format: str
    kernel_release: str
    crash_time: str
    log_lines: int
    panic_message: str | None = None
    panic_line: int | None = None
    uptime_seconds: float | None = None
    nmi_panic: bool | None = None
    nmi_line: str | None = None
    cpu: int | None = None
    pid: int | None = None
    comm: str | None = None
    rip: str | None = None
    rip_function: str | None = None
    call_trace: List[str] = field(default_factory=list)
    last_lines: List[str] = field(default_factory=list)
    cpus_brought_up: int | None = None
    other_cpus: Dict[str, List[str]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def _trace(bodies: List[str], start: int) -> List[str]:
    """The call trace from a ``Call Trace:`` line: its frames, stack markers and the register
    dump of an exception frame printed inside it, up to the task's or IRQ's closing marker."""
    trace: List[str] = []
    for body in bodies[start + 1 :]:
        if not (body.startswith(" ") or REGISTER.match(body)):
            break
        trace.append(body)
        if body in TRACE_END:
            break
    return trace


def _other_cpus(bodies: List[str], crashing: int | None) -> Dict[str, List[str]]:
    """Per CPU other than the crashing one, the lines of each ``NMI backtrace for cpu N`` block."""
    found: Dict[str, List[str]] = {}
    current: List[str] | None = None
    for body in bodies:
        m = NMI_BACKTRACE.search(body)
        if m:
            cpu = int(m.group(1))
            current = None if cpu == crashing else found.setdefault(str(cpu), [])
        if current is not None:
            if not m and not (body.startswith(BLOCK_LINES) or REGISTER.match(body) or TASK.search(body)):
                current = None
                continue
            current.append(body)
    return found


def summarise_log(lines: List[str], last: int = 20) -> Analysis:
    """The crash as kernel log lines alone tell it (the last panic in them): a whole log, or the
    window around its panic a guest sent; format, release and crash time are left empty."""
    bodies = [_body(line) for line in lines]
    cpus = next((int(m.group(1)) for b in bodies if (m := CPUS_UP.search(b))), None)
    base = Analysis("", "", "", len(lines), cpus_brought_up=cpus)
    panics = [(i, m) for i, b in enumerate(bodies) if (m := PANIC.search(b))]
    if not panics:
        return base
    at, found = panics[-1]
    message = found.group(1)
    nmi_at = next((i for i in range(at - 1, max(-1, at - 5), -1) if NMI_UNKNOWN.search(bodies[i])), None)
    after = bodies[at + 1 :]
    task = next((m for b in after[:5] if (m := TASK.search(b))), None)
    rip = next((m for b in after if (m := RIP.search(b)) and m.group(1) == "0010"), None)
    trace_at = next((i for i in range(at + 1, len(bodies)) if bodies[i] == "Call Trace:"), None)
    cpu = int(task.group(1)) if task else None
    return replace(
        base,
        panic_message=message,
        panic_line=at + 1,
        uptime_seconds=_seconds(lines[at]),
        nmi_panic="NMI" in message or nmi_at is not None,
        nmi_line=bodies[nmi_at] if nmi_at is not None else None,
        cpu=cpu,
        pid=int(task.group(2)) if task else None,
        comm=task.group(3) if task else None,
        rip=f"{rip.group(1)}:{rip.group(2)}" if rip else None,
        rip_function=rip.group(2).split("+", 1)[0] if rip else None,
        call_trace=_trace(bodies, trace_at) if trace_at is not None else [],
        last_lines=lines[max(0, at - last) : at],
        other_cpus=_other_cpus(bodies, cpu),
    )


def summarise(lines: List[str], info: VmcoreInfo, fmt: str, last: int = 20) -> Analysis:
    """The crash as the log lines tell it (the last panic in the log) and VMCOREINFO dates it."""
    crash = info.fields.get("CRASHTIME", "")
    crash_time = (
        datetime.fromtimestamp(int(crash), UTC).isoformat().replace("+00:00", "Z") if crash.isdigit() else ""
    )
    return replace(summarise_log(lines, last), format=fmt, kernel_release=info.release, crash_time=crash_time)


def analyse_source(src: Source, last: int = 20) -> Tuple[Analysis, List[str]]:
    """The analysis and the log lines of a dump; ``DumpError`` when it cannot be read."""
    fmt, info, mem = open_memory(src)
    lines = format_records(read_log(mem, info))
    return summarise(lines, info, fmt, last), lines
