"""``inspect_cmd.run``: both outputs and the exit codes, on the committed fixtures only."""

import json
from pathlib import Path

import pytest
from test_analysis import LOG, extents
from test_dumps import FIXTURES, MANIFEST, UNCHECKED_KDUMP_PAGES, materialise, sent

from chaosec2panic import inspect_cmd
from chaosec2panic.analysis import Analysis
from chaosec2panic.dumps import FileSource, inspect_path, inspect_source
from chaosec2panic.inspect_cmd import run, with_kernel_log

REAL = FIXTURES / "real"
# The committed whole-file fixtures hold no page data (holes read as zeros), so their log cannot be read.
NO_LOG_KDUMP = (
    "kernel log: page frame 0xd864 at offset 17794605: its 855 bytes do not decompress (length run at "
    "input byte 1 reaches the end of the input): the page data is damaged: nmi_panic and panic_message "
    "not read"
)
KEYS = [
    "path",
    "kind",
    "format",
    "complete",
    "kernel_release",
    "machine",
    "crash_time",
    "nmi_panic",
    "panic_message",
    "problems",
    "unchecked",
]


def test_json_for_a_whole_capture(tmp_path):
    paths = [str(materialise("kdump-compressed", tmp_path)), str(REAL / "vmcore-dmesg.txt")]
    code, out = run(paths, as_json=True)
    found = json.loads(out)
    assert code == 0 and [list(f) for f in found] == [KEYS, KEYS]
    assert found[0] == {
        "path": paths[0],
        "kind": "vmcore",
        "format": "kdump-compressed",
        "complete": True,
        "kernel_release": "6.1.0-57-amd64",
        "machine": "x86_64",
        "crash_time": "2026-11-29T12:09:10Z",
        "nmi_panic": None,
        "panic_message": None,
        "problems": [],
        "unchecked": [NO_LOG_KDUMP],
    }
    assert found[1] == {
        "path": paths[1],
        "kind": "dmesg",
        "format": "text",
        "complete": True,
        "kernel_release": "6.1.0-57-amd64",
        "machine": None,
        "crash_time": None,
        "nmi_panic": True,
        "panic_message": "NMI: Not continuing",
        "problems": [],
        "unchecked": [],
    }


@pytest.mark.parametrize(
    ("name", "kind", "fmt"),
    [
        ("flattened", "vmcore", "flattened"),
        ("elf", "vmcore", "elf"),
        ("windows-full", "windows-dump", "windows-full"),
        ("windows-kernel", "windows-dump", "windows-kernel"),
    ],
)
def test_every_whole_format_exits_0(tmp_path, name, kind, fmt):
    code, out = run([str(materialise(name, tmp_path))], as_json=True)
    (found,) = json.loads(out)
    assert (code, found["kind"], found["format"], found["complete"], found["problems"]) == (
        0,
        kind,
        fmt,
        True,
        [],
    )


def test_one_truncated_dump_makes_exit_1(tmp_path):
    whole = str(materialise("flattened", tmp_path))
    cut = str(materialise("kdump-compressed-cut-in-page-data", tmp_path))
    code, out = run([whole, cut], as_json=True)
    found = json.loads(out)
    assert code == 1 and [f["complete"] for f in found] == [True, False]
    assert found[1]["problems"] == [
        "page data at offset 20000000: expected a file of 23283460 bytes (the end of the last page), "
        "found end of file, 3283460 bytes missing"
    ]


@pytest.mark.parametrize(
    ("name", "code", "complete", "problems"),
    [
        ("kdump-compressed", 0, True, []),
        (
            "kdump-compressed-incomplete-flag",
            1,
            False,
            ["status at offset 424: expected incomplete flag 0x8 clear, found 0xa"],
        ),
    ],
)
def test_what_could_not_be_checked_is_said_apart_and_does_not_change_the_exit_code(
    monkeypatch, name, code, complete, problems
):
    """A dump judged from its first blocks (as a guest sends them): its page data is unchecked,
    which is no problem and no reason to exit 1; a real problem still is."""
    monkeypatch.setattr(
        inspect_cmd,
        "inspect_file",
        lambda path: with_kernel_log(inspect_source(sent(name), path), sent(name)),
    )
    got, out = run(["vmcore"], as_json=True)
    (found,) = json.loads(out)
    assert (got, found["complete"], found["problems"]) == (code, complete, problems)
    assert found["unchecked"] == [
        UNCHECKED_KDUMP_PAGES,
        "kernel log: page descriptor: 24 bytes at offset 313808: not sent by the guest: the dump does not "
        "hold it (a truncated or partial copy): nmi_panic and panic_message not read",
    ]
    assert (found["nmi_panic"], found["panic_message"]) == (None, None)
    text = run(["vmcore"], as_json=False)[1].splitlines()
    assert f"  not checked: {UNCHECKED_KDUMP_PAGES}" in text
    assert [line for line in text if line.startswith("  problem: ")] == [f"  problem: {p}" for p in problems]


def test_missing_path_is_a_problem_not_a_crash(tmp_path):
    code, out = run([str(tmp_path / "nope"), str(REAL / "vmcore-dmesg.txt")], as_json=True)
    found = json.loads(out)
    assert code == 1 and found[0]["kind"] == "unknown" and found[0]["complete"] is None
    assert found[0]["problems"] == ["path: cannot read: No such file or directory"]
    assert found[1]["complete"] is True


@pytest.mark.parametrize(
    ("paths", "code"),
    [
        (["console-kdump.log"], 0),
        (["console-hang.log"], 1),
        (["console-nmi-ignored.log"], 1),
        (["README.md"], 1),
        (["vmcore.flattened.tail"], 1),
    ],
)
def test_exit_codes_on_text_and_unknown(paths, code):
    assert run([str(REAL / p) for p in paths], as_json=True)[0] == code


def test_text_output_one_block_per_path(tmp_path):
    cut = materialise("kdump-compressed-cut-in-descriptors", tmp_path)
    code, out = run([str(cut), str(REAL / "console-small-crashkernel-80M.log")], as_json=False)
    blocks = out.split("\n\n")
    assert code == 1 and len(blocks) == 2
    assert blocks[0].splitlines() == [
        str(cut),
        "  vmcore (kdump-compressed): INCOMPLETE",
        "  kernel: 6.1.0-57-amd64",
        "  machine: x86_64",
        "  crash time: 2026-11-29T12:09:10Z",
        "  compression: lzo",
        "  dump level: 31",
        "  dumpable pages: 20821",
        "  problem: page descriptors at offset 100000: expected 20821 descriptors of 24 bytes from 32768 to "
        "532472, found end of file",
        "  not checked: kernel log: page descriptor: 24 bytes at offset 313808, but the file ends at 100000: "
        "the dump is truncated (copy it again, or capture a new one): nmi_panic and panic_message not read",
    ]
    assert "  console (text): INCOMPLETE" in blocks[1]
    assert "  panic caused by the NMI: yes" in blocks[1]
    assert (
        "  problem: console line 746: the capture kernel panicked: System is deadlocked on memory"
        in blocks[1]
    )


def materialise_log(name: str, directory: Path) -> Path:
    """A log fixture written as its file: the bytes the log reader reads, holes elsewhere."""
    parts, size = extents(name)
    path = directory / f"{name}.vmcore"
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in parts:
            f.seek(offset)
            f.write(data)
    return path


@pytest.mark.parametrize("name", ["kdump-compressed", "flattened"])
def test_a_real_vmcore_gets_its_panic_from_its_own_log(tmp_path, name):
    """Both real dumps: the panic and the NMI cause come from the log, the verdict stays inspect's."""
    path = str(materialise_log(name, tmp_path))
    alone = inspect_path(Path(path)).to_dict()
    code, out = run([path], as_json=True)
    (found,) = json.loads(out)
    assert (found["nmi_panic"], found["panic_message"]) == (True, "NMI: Not continuing")
    assert {k: v for k, v in found.items() if k not in ("nmi_panic", "panic_message")} == {
        k: v for k, v in alone.items() if k not in ("nmi_panic", "panic_message")
    }
    assert alone["nmi_panic"] is None and alone["complete"] is not True and code == 1
    text = run([path], as_json=False)[1].splitlines()
    assert "  panic: NMI: Not continuing" in text and "  panic caused by the NMI: yes" in text


def test_a_log_without_a_panic_says_no_nmi_panic(monkeypatch, tmp_path):
    """A log read whole with no panic line in it: the NMI did not panic it, and nothing is unchecked."""
    empty = Analysis("kdump-compressed", "6.1.0-57-amd64", "", 3)
    monkeypatch.setattr(inspect_cmd, "analyse_source", lambda src, last: (empty, []))
    path = materialise_log("kdump-compressed", tmp_path)
    alone = inspect_path(path)
    with open(path, "rb") as f:
        found = with_kernel_log(alone, FileSource(f))
    assert (found.nmi_panic, found.panic_message, found.unchecked) == (False, "", alone.unchecked)


def test_only_a_vmcore_is_read_for_its_log(tmp_path):
    dmesg = inspect_path(LOG / "vmcore-dmesg.txt")
    with open(materialise_log("kdump-compressed", tmp_path), "rb") as f:
        assert with_kernel_log(dmesg, FileSource(f)) == dmesg


def test_windows_text_output_names_the_bugcheck(tmp_path):
    code, out = run([str(materialise("windows-kernel", tmp_path))], as_json=False)
    assert code == 0 and "  bugcheck: 0x80" in out.splitlines()
    assert "  panic: bugcheck 0x00000080 (NMI_HARDWARE_FAILURE) (0x0, 0x0, 0x0, 0x0)" in out.splitlines()


def test_the_committed_fixtures_are_enough():
    """The full 23 MB artefacts are not needed: every dump fixture is committed, small, and
    nothing the tests read points at the lab's artefacts directory."""
    stored = {FIXTURES / spec["extents"] for spec in MANIFEST.values() if "extents" in spec}
    assert all(p.is_file() for p in stored)
    committed = [p for p in FIXTURES.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in committed) < 1 << 20
    for text in [Path(__file__).read_text(), (Path(__file__).parent / "test_dumps.py").read_text()]:
        assert "/tmp/" + "qemu-lab" not in text
    assert "qemu-lab" not in (FIXTURES / "dumps.json").read_text()
