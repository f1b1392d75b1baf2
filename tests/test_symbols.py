"""``analyze --vmlinux`` / ``--debuginfo-dir``: a vmlinux of another kernel is refused, naming both.

The refusals run everywhere, on small ELF files built here the way a vmlinux carries its identity
(a GNU build-id note in ``.notes``, ``linux_banner`` in ``.rodata``) and on the real dump of the
log fixtures. The full symbol view needs drgn and the debug vmlinux of the lab's kernel (Debian's
linux-image-6.1.0-57-amd64-dbg, 859 MB): it runs only where both are, on the real dump's bytes
drgn reads (tests/fixtures/real/symbols/, made by its record.py) and, when CHAOSEC2PANIC_VMCORE
names one, on a whole vmcore of the lab.
"""

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_analysis import extents

from chaosec2panic.analyze_cmd import run
from chaosec2panic.symbols import vmlinux_identity

RELEASE = "6.1.0-57-amd64"
DUMP_BUILD_ID = "6a2b4ac77585b8cf102cba771300e573c8489b69"
DEBUG_DIR = Path(os.environ.get("CHAOSEC2PANIC_DEBUG_DIR", "/usr/lib/debug"))
VMCORE = os.environ.get("CHAOSEC2PANIC_VMCORE", "")
BIN = Path(sys.executable).parent
SYMBOLS = Path(__file__).parent / "fixtures" / "real" / "symbols"
SYMBOLS_MANIFEST = json.loads((SYMBOLS / "manifest.json").read_text())


def fake_vmlinux(path: Path, build_id: str = "", release: str = "", machine: int = 62) -> Path:
    """An ELF64 x86-64 file with a ``.notes`` build id and a ``.rodata`` banner, as a vmlinux has."""
    names = b"\0.notes\0.rodata\0.shstrtab\0"
    desc = bytes.fromhex(build_id)
    notes = struct.pack("<III", 4, len(desc), 3) + b"GNU\0" + desc if build_id else b""
    rodata = b"\0%s version %s (\0" + (
        f"Linux version {release} (gcc) #1 SMP\n\0".encode() if release else b""
    )
    body, sections = b"", [(0, 0, 0, 0)]
    for name_at, kind, data in ((1, 7, notes), (8, 1, rodata), (16, 3, names)):
        sections.append((name_at, kind, 64 + len(body), len(data)))
        body += data
    shoff = 64 + len(body)
    head = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    head += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(sections), 3)
    table = b"".join(struct.pack("<IIQQQQIIQQ", n, k, 0, 0, o, s, 0, 0, 1, 0) for n, k, o, s in sections)
    path.write_bytes(head + body + table)
    return path


def log_dump(directory: Path) -> str:
    """The log fixture's real kdump-compressed dump as a file: what ``analyze`` reads of it."""
    parts, size = extents("kdump-compressed")
    path = directory / "vmcore"
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in parts:
            f.seek(offset)
            f.write(data)
    return str(path)


def test_identity_of_a_vmlinux_is_its_build_id_and_banner(tmp_path):
    assert vmlinux_identity(fake_vmlinux(tmp_path / "v", DUMP_BUILD_ID, RELEASE)) == (DUMP_BUILD_ID, RELEASE)
    assert vmlinux_identity(fake_vmlinux(tmp_path / "w", release="6.1.0-99-amd64")) == ("", "6.1.0-99-amd64")


@pytest.mark.parametrize(
    ("build_id", "release", "says"),
    [
        (
            "00" * 20,
            RELEASE,
            f"its build id is {'00' * 20} (release {RELEASE}), "
            f"the dump's is {DUMP_BUILD_ID} (release {RELEASE})",
        ),
        ("", "6.1.0-58-amd64", f"it is release 6.1.0-58-amd64, the dump is {RELEASE}"),
    ],
)
def test_a_vmlinux_of_another_kernel_is_refused_naming_both(tmp_path, build_id, release, says):
    vmlinux = fake_vmlinux(tmp_path / "vmlinux", build_id, release)
    code, out = run(log_dump(tmp_path), as_json=True, vmlinux=str(vmlinux))
    assert code == 2 and out.startswith(f"chaosec2panic analyze: {vmlinux} is not this dump's kernel: ")
    assert says in out and f"linux-image-{RELEASE}-dbg" in out


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.write_bytes(b"not an elf file at all" * 4), "not an ELF file"),
        (lambda p: fake_vmlinux(p, DUMP_BUILD_ID, RELEASE, machine=183), "not a little-endian x86-64 ELF64"),
        (lambda p: fake_vmlinux(p), "neither a build id nor a linux_banner: not a kernel image"),
        (lambda p: os.mkfifo(p), "not a regular file"),
        (lambda p: p.mkdir(), "cannot read: Is a directory: name the debug vmlinux file"),
        (lambda p: None, "cannot read: No such file or directory"),
    ],
)
def test_what_is_not_a_vmlinux_is_refused(tmp_path, make, says):
    make(tmp_path / "vmlinux")
    code, out = run(log_dump(tmp_path), as_json=False, vmlinux=str(tmp_path / "vmlinux"))
    assert code == 2 and says in out


def test_a_debug_tree_without_the_dumps_kernel_names_where_it_looked(tmp_path):
    tree = tmp_path / "debug"
    (tree / "boot").mkdir(parents=True)
    fake_vmlinux(tree / "boot" / "vmlinux-6.1.0-58-amd64", "11" * 20, "6.1.0-58-amd64")
    code, out = run(log_dump(tmp_path), as_json=True, debuginfo_dir=str(tree))
    assert code == 2
    assert f"{tree}/.build-id/6a/{DUMP_BUILD_ID[2:]}.debug, {tree}/boot/vmlinux-{RELEASE}" in out
    assert f"Debian: linux-image-{RELEASE}-dbg" in out


def test_a_debug_tree_holding_another_build_under_the_release_is_refused(tmp_path):
    tree = tmp_path / "debug"
    (tree / "boot").mkdir(parents=True)
    fake_vmlinux(tree / "boot" / f"vmlinux-{RELEASE}", "22" * 20, RELEASE)
    code, out = run(log_dump(tmp_path), as_json=True, debuginfo_dir=str(tree))
    assert code == 2 and f"its build id is {'22' * 20}" in out and DUMP_BUILD_ID in out


def test_cli_exits_2_on_a_mismatched_vmlinux_and_needs_no_drgn_for_it(tmp_path):
    vmlinux = fake_vmlinux(tmp_path / "vmlinux", "33" * 20, RELEASE)
    done = subprocess.run(
        [BIN / "chaosec2panic", "analyze", log_dump(tmp_path), "--vmlinux", str(vmlinux)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == "" and "is not this dump's kernel" in done.stderr
    assert "Traceback" not in done.stderr


def test_vmlinux_and_debuginfo_dir_together_are_a_usage_error(tmp_path):
    code, out = run(log_dump(tmp_path), as_json=True, vmlinux="a", debuginfo_dir="b")
    assert code == 2 and "not both" in out


def test_without_drgn_the_symbol_view_says_how_to_get_it(tmp_path, monkeypatch):
    """The vmlinux is the dump's kernel's; drgn is absent (an import of it fails)."""
    monkeypatch.setitem(sys.modules, "drgn", None)
    vmlinux = fake_vmlinux(tmp_path / "vmlinux", DUMP_BUILD_ID, RELEASE)
    code, out = run(log_dump(tmp_path), as_json=True, vmlinux=str(vmlinux))
    assert code == 2 and "pip install 'chaosec2panic[symbols]'" in out


def test_a_dump_drgn_cannot_read_is_exit_2_not_a_traceback(tmp_path):
    """The log fixture's dump holds the log's pages only: libkdumpfile refuses it, and so do we."""
    pytest.importorskip("drgn", reason="drgn is not installed (pip install 'chaosec2panic[symbols]')")
    vmlinux = fake_vmlinux(tmp_path / "vmlinux", DUMP_BUILD_ID, RELEASE)
    code, out = run(log_dump(tmp_path), as_json=True, vmlinux=str(vmlinux))
    assert code == 2 and "drgn cannot read the dump (" in out


def _symbols_ready() -> str:
    """Why the full symbol view cannot run here, or "" when it can."""
    try:
        import drgn  # noqa: F401
    except ImportError:
        return "drgn is not installed (pip install 'chaosec2panic[symbols]')"
    if not (DEBUG_DIR / "boot" / f"vmlinux-{RELEASE}").is_file():
        return (
            f"no debug vmlinux of {RELEASE} under {DEBUG_DIR} (Debian's linux-image-{RELEASE}-dbg, 859 MB; "
            "or set CHAOSEC2PANIC_DEBUG_DIR to a tree holding boot/vmlinux-RELEASE)"
        )
    return ""


def symbols_dump(directory: Path) -> str:
    """The real dump as the symbol fixture holds it: the log's ranges and those drgn read."""
    path = Path(log_dump(directory))
    raw = gzip.decompress((SYMBOLS / "vmcore.kdump-compressed.extents.gz").read_bytes())
    with open(path, "r+b") as f:
        at = 0
        while at < len(raw):
            offset, size = struct.unpack_from("<QQ", raw, at)
            f.seek(offset)
            f.write(raw[at + 16 : at + 16 + size])
            at += 16 + size
    return str(path)


def check_view(dump: str) -> dict:
    """The lab's NMI crash with its debug vmlinux: the crashing CPU's backtrace runs through the
    NMI handler with source lines, and the tasks, load and memory are read."""
    code, out = run(dump, as_json=True, last=0, debuginfo_dir=str(DEBUG_DIR))
    assert code == 0, out
    found = json.loads(out)
    view = found["symbols"]
    assert view["build_id"] == DUMP_BUILD_ID and view["unread"] == []
    assert view["tasks"] > 10 and len(view["load_average"]) == 3
    assert 0 < view["memory"]["free_bytes"] < view["memory"]["total_bytes"]
    assert abs(view["uptime_seconds"] - found["uptime_seconds"]) < 1
    (cpu,) = [c for c in view["cpus"] if c["cpu"] == found["cpu"]]
    names = [f["function"] for f in cpu["frames"]]
    assert (cpu["pid"], cpu["comm"]) == (found["pid"], found["comm"])
    assert names.index("exc_nmi") < names.index("native_safe_halt"), names
    assert {"unknown_nmi_error", "nmi_panic", "panic"} <= set(names)
    nmi = next(f for f in cpu["frames"] if f["function"] == "exc_nmi")
    assert nmi["file"] == "arch/x86/kernel/nmi.c" and nmi["line"] > 0
    code, text = run(dump, as_json=False, last=0, debuginfo_dir=str(DEBUG_DIR))
    shown = text.splitlines()
    assert code == 0 and f"    tasks: {view['tasks']}, load average: " in "\n".join(shown)
    assert f"      #{names.index('exc_nmi')} exc_nmi (arch/x86/kernel/nmi.c:{nmi['line']})" in shown
    return view


@pytest.mark.skipif(bool(_symbols_ready()), reason=_symbols_ready() or "ready")
def test_the_symbol_view_of_the_real_dump(tmp_path):
    """The fixture's real dump gives what the whole file gave when it was recorded."""
    view = check_view(symbols_dump(tmp_path))
    assert {k: v for k, v in view.items() if k != "vmlinux"} == SYMBOLS_MANIFEST["symbols"]


@pytest.mark.skipif(
    bool(_symbols_ready()) or not (VMCORE and Path(VMCORE).is_file()),
    reason=_symbols_ready() or "set CHAOSEC2PANIC_VMCORE to a whole vmcore the QEMU lab made",
)
def test_the_symbol_view_of_a_lab_dump():
    check_view(VMCORE)
