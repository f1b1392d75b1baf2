"""``chaosec2panic analyze`` against ``makedumpfile --dump-dmesg`` on real vmcores, in one run.

    python bench/analyze.py [ARTEFACTS_DIR] [--repeats N] [--out bench/analyze-results.json]
                            [--vmlinux PATH]

ARTEFACTS_DIR is what ``tests/fixtures/real/collect.py`` writes (default /tmp/qemu-lab/artifacts):
the oldest ``127.0.0.1-*__vmcore`` (kdump-compressed, LZO) and the ``*__vmcore.flat``. Each
command runs N times under ``bench/measure.py`` (peak RSS, CPU, wall of that process alone);
the medians are printed as a Markdown table. makedumpfile cannot read a flattened stream, so
its flattened row is ``makedumpfile -R`` into a temporary file, then ``--dump-dmesg``. The
library row is ``analyse_source`` alone, in this process (no interpreter start-up), with the
bytes it read; the bench also checks that its log equals makedumpfile's, byte for byte.

With ``--vmlinux`` (the dumps' debug vmlinux), two rows more per dump: ``analyze --vmlinux`` (the
symbol view, through drgn) and ``crash -s`` in batch mode with the commands that give the same
view (``sys``, ``bt -a``, ``ps``, ``kmem -i``), when crash is installed.
The table goes in the section ``SECTION`` of bench/RESULTS.md, in place of the one there (the
section is added at the end of the file if it is missing); the words around it are written by
hand from the numbers, so read them again after a run.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Dict, List

from chaosec2panic.analysis import analyse_source
from chaosec2panic.dumps import FileSource

HERE = Path(__file__).parent
RESULTS = HERE / "RESULTS.md"
SECTION = "## `chaosec2panic analyze` on real dumps"
BIN = Path(sys.executable).parent


class Counting:
    """A file source that counts the bytes read."""

    def __init__(self, src: FileSource):
        self.src, self.bytes, self.reads = src, 0, 0

    @property
    def size(self) -> int:
        return self.src.size

    def read(self, offset: int, size: int) -> bytes:
        data = self.src.read(offset, size)
        self.bytes += len(data)
        self.reads += 1
        return data


def measured(command: List[str], repeats: int, tmp: Path) -> Dict[str, float]:
    """Median wall, CPU and peak RSS of a command run ``repeats`` times under measure.py."""
    runs = []
    for n in range(repeats):
        out = tmp / f"m{n}.json"
        subprocess.run(
            [sys.executable, str(HERE / "measure.py"), str(out), *command],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        runs.append(json.loads(out.read_text()))
    return {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "cpu_s", "max_rss_kib")}


def library(path: Path, repeats: int) -> Dict[str, float]:
    """``analyse_source`` in this process: median wall, peak traced allocation, bytes read."""
    walls, peaks = [], []
    for _ in range(repeats):
        with open(path, "rb") as f:
            src = Counting(FileSource(f))
            started = time.perf_counter()
            analyse_source(src)
            walls.append(time.perf_counter() - started)
        with open(path, "rb") as f:  # again, traced (tracemalloc slows it, so apart from the timing)
            tracemalloc.start()
            analyse_source(FileSource(f))
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    return {
        "wall_s": statistics.median(walls),
        "peak_alloc_kib": max(peaks) / 1024,
        "bytes_read": src.bytes,
        "reads": src.reads,
    }


def write_table(table: List[str]) -> None:
    """Put ``table`` in RESULTS.md's SECTION, in place of its table (or at its end when it has
    none); add the section at the end of the file when it is missing."""
    text = RESULTS.read_text()
    head, found, rest = text.partition(SECTION)
    if not found:
        head, rest = text.rstrip("\n") + "\n\n", "\n"
    body, more, after = rest.partition("\n## ")
    lines = body.rstrip("\n").split("\n")
    start = next((n for n, line in enumerate(lines) if line.startswith("|")), len(lines))
    end = next((n for n in range(start, len(lines)) if not lines[n].startswith("|")), len(lines))
    lines[start:end] = ["", *table] if start == len(lines) else table
    RESULTS.write_text(head + SECTION + "\n".join(lines) + "\n" + ("\n## " + after if more else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artefacts", nargs="?", default="/tmp/qemu-lab/artifacts", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "analyze-results.json")
    ap.add_argument("--vmlinux", type=Path, help="the dumps' debug vmlinux: also measure the symbol views")
    args = ap.parse_args()
    crash = shutil.which("crash") if args.vmlinux else None
    kdumps = sorted(args.artefacts.glob("127.0.0.1-*__vmcore"))
    flats = sorted(args.artefacts.glob("127.0.0.1-*__vmcore.flat"))
    if not kdumps or not flats:
        print(
            f"bench/analyze.py: no 127.0.0.1-*__vmcore and *__vmcore.flat in {args.artefacts}: run "
            "tests/fixtures/real/collect.py first",
            file=sys.stderr,
        )
        return 2
    kdump, flat = kdumps[0], flats[0]
    mdf = shutil.which("makedumpfile")
    if mdf is None:
        print(
            "bench/analyze.py: makedumpfile is not installed (apt-get install makedumpfile)", file=sys.stderr
        )
        return 2
    results: Dict[str, object] = {
        "makedumpfile": subprocess.run([mdf, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, dump in (("kdump-compressed", kdump), ("flattened", flat)):
            out = tmp / f"{name}.dmesg"
            if name == "flattened":
                rebuilt = tmp / "rebuilt"
                theirs = [
                    "sh",
                    "-c",
                    'rm -f "$3" && "$0" -R "$1" < "$2" >/dev/null && "$0" --dump-dmesg "$1" "$3" >/dev/null '
                    '&& rm "$1"',
                    mdf,
                    str(rebuilt),
                    str(dump),
                    str(out),
                ]
            else:
                theirs = [
                    "sh",
                    "-c",
                    'rm -f "$2" && "$0" --dump-dmesg "$1" "$2" >/dev/null',
                    mdf,
                    str(dump),
                    str(out),
                ]
            ours = [str(BIN / "chaosec2panic"), "analyze", str(dump), "--json"]
            row = {
                "file": dump.name,
                "chaosec2panic --help (start-up alone)": measured(
                    [str(BIN / "chaosec2panic"), "--help"], args.repeats, tmp
                ),
                "size": dump.stat().st_size,
                "chaosec2panic analyze": measured(ours, args.repeats, tmp),
                "makedumpfile": measured(theirs, args.repeats, tmp),
                "analyse_source (in process)": library(dump, args.repeats),
            }
            if args.vmlinux:
                row["chaosec2panic analyze --vmlinux"] = measured(
                    [*ours, "--vmlinux", str(args.vmlinux)], args.repeats, tmp
                )
            if crash:
                batch = 'printf "sys\\nbt -a\\nps\\nkmem -i\\nquit\\n" | "$0" -s "$1" "$2" >/dev/null'
                row["crash -s"] = measured(
                    ["sh", "-c", batch, crash, str(args.vmlinux), str(dump)], args.repeats, tmp
                )
            with open(dump, "rb") as f:
                _found, lines = analyse_source(FileSource(f))
            row["same_log_as_makedumpfile"] = "\n".join(lines) + "\n" == out.read_text()
            results[name] = row
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    table = ["| dump | tool | wall s | CPU s | peak RSS MiB | bytes read | same log |"]
    table.append("| --- | --- | --- | --- | --- | --- | --- |")
    for name in ("kdump-compressed", "flattened"):
        row = results[name]
        assert isinstance(row, dict)
        lib = row["analyse_source (in process)"]
        tools = ["chaosec2panic --help (start-up alone)", "chaosec2panic analyze", "makedumpfile"]
        for tool in [*tools, *(t for t in ("chaosec2panic analyze --vmlinux", "crash -s") if t in row)]:
            m = row[tool]
            table.append(
                f"| {name} ({row['size']:,} B) | {tool} | {m['wall_s']:.3f} | {m['cpu_s']:.3f} | "
                f"{m['max_rss_kib'] / 1024:.1f} | | |"
            )
        table.append(
            f"| {name} | analyse_source (in process) | {lib['wall_s']:.4f} | | "
            f"{lib['peak_alloc_kib'] / 1024:.2f} (traced) | {lib['bytes_read']:,} in {lib['reads']} reads | "
            f"{row['same_log_as_makedumpfile']} |"
        )
    print(f"{results['makedumpfile']}, {args.repeats} runs each, medians\n")
    print("\n".join(table))
    write_table(table)
    print(f"\nwrote the table in {RESULTS}, section {SECTION!r}: read its words again against it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
