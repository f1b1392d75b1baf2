"""Dump headers and console text, from bytes laid out as the producers write them."""

import random
import struct
from pathlib import Path

import pytest

from chaosec2panic.dumps import console_findings, identify_dump
from chaosec2panic.lab.dumpwriter import kdump_header


def kdump_bytes(
    release: str = "6.1.0-26-amd64", machine: str = "x86_64", status: int = 0x2, seconds: int = 1767225600
) -> bytes:
    """A kdump-compressed header laid out by hand from makedumpfile's diskdump_data.h."""
    head = bytearray(4096)
    head[0:8] = b"KDUMP   "
    struct.pack_into("<i", head, 8, 6)
    for n, text in enumerate(["Linux", "node", release, "#1 SMP", machine, "(none)"]):
        head[12 + 65 * n : 12 + 65 * n + len(text)] = text.encode()
    struct.pack_into("<qqI", head, 408, seconds, 0, status)
    return bytes(head)


def test_kdump_compressed_header_fields():
    found = identify_dump(kdump_bytes()[:512], b"\0" * 16, "/var/crash/x/vmcore")
    assert (found.format, found.complete) == ("kdump-compressed", True)
    assert (found.kernel_release, found.machine) == ("6.1.0-26-amd64", "x86_64")
    assert found.crash_time == "2026-01-01T00:00:00Z"
    assert found.compression == "lzo" and found.problems == []


def test_kdump_incomplete_flag_is_reported_with_its_offset():
    found = identify_dump(kdump_bytes(status=0x2 | 0x8)[:512], b"")
    assert found.complete is False
    assert found.problems == ["status at offset 424: incomplete flag 0x8 set (status 0xa)"]


def test_lab_writer_and_reader_agree():
    head = kdump_header("5.14.0-427.el9.x86_64", "x86_64", "web-1", 1767225600.5, 2048)
    found = identify_dump(head[:512], b"")
    assert (found.kernel_release, found.crash_time, found.complete) == (
        "5.14.0-427.el9.x86_64",
        "2026-01-01T00:00:00Z",
        True,
    )


@pytest.mark.parametrize("cut", [8, 100, 300, 427])
def test_truncated_kdump_header_is_a_problem_not_an_error(cut):
    found = identify_dump(kdump_bytes()[:cut], b"")
    assert found.format == "kdump-compressed" and found.complete is None
    assert found.problems == [
        f"kdump-compressed: header cut short at offset {cut}, expected at least 428 bytes"
    ]


def test_flattened_needs_its_end_record():
    head = b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1)
    assert identify_dump(head, b"\xff" * 16).complete is True
    missing = identify_dump(head, b"\0" * 16)
    assert missing.complete is False and "end record" in missing.problems[0]


def test_name_of_a_dump_being_written_means_incomplete():
    for name in ("/var/crash/a/vmcore-incomplete", "/var/crash/202601010000/dump-incomplete"):
        found = identify_dump(kdump_bytes()[:512], b"", name)
        assert found.complete is False and "makedumpfile did not finish" in found.problems[-1]


def elf(e_type: int, flags: int) -> bytes:
    head = bytearray(64)
    head[0:4] = b"\x7fELF"
    head[4] = 2
    struct.pack_into("<H", head, 16, e_type)
    struct.pack_into("<I", head, 48, flags)
    return bytes(head)


def test_elf_core_and_its_incomplete_flag():
    assert identify_dump(elf(4, 0), b"").complete is True
    assert identify_dump(elf(4, 1), b"").complete is False
    assert "e_type at offset 16" in identify_dump(elf(2, 0), b"").problems[0]


def test_windows_dump_bugcheck():
    head = bytearray(512)
    head[0:8] = b"PAGEDU64"
    struct.pack_into("<I", head, 0x38, 0x80)
    assert identify_dump(bytes(head), b"").bugcheck == 0x80


def test_unknown_bytes_name_what_was_found():
    found = identify_dump(b"hello world", b"")
    assert found.format == "unknown" and found.complete is None
    assert found.problems == ["signature at offset 0: no known dump magic, found 68656c6c6f20776f726c64"]


def test_random_and_truncated_input_never_raises():
    rng = random.Random(7)
    seeds = [kdump_bytes(), elf(4, 0), b"makedumpfile" + bytes(500), b"PAGEDU64" + bytes(8)]
    for _ in range(3000):
        base = rng.choice(seeds)
        data = bytearray(base[: rng.randrange(len(base) + 1)])
        for _ in range(rng.randrange(4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        found = identify_dump(bytes(data), bytes(rng.randrange(256) for _ in range(rng.randrange(17))))
        assert found.complete is True or found.problems or found.format == "windows"


PANIC_CONSOLE = """[ 3600.216325] Uhhuh. NMI received for unknown reason 3d on CPU 0.
[ 3600.216325] Do you have a strange power saving mode enabled?
[ 3600.216325] Kernel panic - not syncing: NMI: Not continuing
[ 3600.216325] Starting crashdump kernel...
[    0.000000] Command line: console=ttyS0 irqpoll nr_cpus=1 reset_devices elfcorehdr=179572K
"""


def test_console_nmi_panic_and_capture():
    found = console_findings(PANIC_CONSOLE)
    assert found.nmi_received and found.nmi_panic and found.capture_started
    assert found.panic_message == "NMI: Not continuing" and not found.kdump_skipped


def test_console_dazed_is_no_panic():
    found = console_findings(
        "Uhhuh. NMI received for unknown reason 3d on CPU 0.\nDazed and confused, but trying to continue\n"
    )
    assert found.nmi_received and found.dazed and not found.nmi_panic and found.panic_message == ""


def test_console_other_panic_is_not_the_nmi():
    found = console_findings("Kernel panic - not syncing: Fatal exception\nRebooting in 10 seconds..\n")
    assert not found.nmi_panic and found.panic_message == "Fatal exception" and found.kdump_skipped


REAL = Path(__file__).parent / "fixtures" / "real"


def real(name: str) -> bytes:
    return (REAL / name).read_bytes()


def test_real_kdump_compressed_header():
    found = identify_dump(real("vmcore.kdump-compressed.head")[:512], b"", "/var/crash/127.0.0.1-x/vmcore")
    assert (found.format, found.complete, found.problems) == ("kdump-compressed", True, [])
    assert (found.kernel_release, found.machine) == ("6.1.0-57-amd64", "x86_64")
    assert found.compression == "lzo" and found.crash_time.startswith("2026-11-29T12:09")


def test_real_flattened_dump_and_the_same_dump_cut_short():
    head, tail = real("vmcore.flattened.head")[:512], real("vmcore.flattened.tail")
    assert identify_dump(head, tail[-16:]).complete is True
    cut = identify_dump(head, tail[-1000:-984])
    assert cut.complete is False and cut.problems[0].startswith("end record: expected 16 bytes of 0xff")


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        (
            "console-kdump.log",
            {
                "nmi_received": False,
                "nmi_panic": False,
                "capture_started": True,
                "dazed": False,
                "kdump_skipped": False,
                "panicked_on_nmi": True,
            },
        ),
        (
            "console-nmi-ignored.log",
            {
                "nmi_received": True,
                "nmi_panic": False,
                "capture_started": False,
                "dazed": True,
                "kdump_skipped": False,
                "panicked_on_nmi": False,
            },
        ),
        (
            "console-hang.log",
            {
                "nmi_received": True,
                "nmi_panic": True,
                "capture_started": False,
                "dazed": False,
                "kdump_skipped": True,
                "panicked_on_nmi": True,
            },
        ),
        (
            "console-small-crashkernel-64M.log",
            {
                "nmi_received": True,
                "nmi_panic": True,
                "capture_started": False,
                "dazed": False,
                "panicked_on_nmi": True,
            },
        ),
        (
            "console-small-crashkernel-80M.log",
            {"capture_started": True, "nmi_panic": False, "panicked_on_nmi": True},
        ),
    ],
)
def test_real_consoles(log, expected):
    found = console_findings((REAL / log).read_text(errors="replace")).to_dict()
    assert {k: found[k] for k in expected} == expected


def test_real_capture_kernel_out_of_memory_panic_is_not_the_nmi():
    found = console_findings((REAL / "console-small-crashkernel-80M.log").read_text(errors="replace"))
    assert found.panic_message == "System is deadlocked on memory"


def test_real_vmcore_dmesg_shows_the_nmi_panic():
    found = console_findings((REAL / "vmcore-dmesg.txt").read_text())
    assert found.nmi_received and found.nmi_panic and found.panic_message == "NMI: Not continuing"
