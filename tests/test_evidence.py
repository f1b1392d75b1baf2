"""When things happened by the instance's own account, read from real kernel consoles and logs
(tests/fixtures/real: a Debian 6.1 kernel under QEMU, NMI, kdump, reboot)."""

from pathlib import Path

from chaosec2panic.evidence import (
    ClockAnchor,
    console_evidence,
    console_times,
    dump_evidence,
    kernels,
    panic_uptime,
)
from chaosec2panic.recovery import Boot, Evidence, Track, at_epoch, parse_iso, timeline

REAL = Path(__file__).parent / "fixtures" / "real"
KDUMP_CONSOLE = (REAL / "console-kdump.log").read_text()
# What the console showed after the first NMI: everything after the guest said it was ready.
AFTER_FIRST_NMI = KDUMP_CONSOLE[KDUMP_CONSOLE.index("LAB: ready") :]
# The crashed kernel's start, by its own hardware-clock line (1.617835 s in, at 12:09:06 UTC).
CRASHED_START = ClockAnchor(1795954146, 1.617835).started


def crashed_boot(uncertainty: float = 0.5) -> Boot:
    booted = at_epoch(CRASHED_START, "boot-time", uncertainty).at
    return Boot("", booted, booted, uncertainty)


def test_a_real_console_is_cut_into_its_kernels_with_their_clock_anchors():
    logs = kernels(KDUMP_CONSOLE)
    assert [k.kind for k in logs] == ["normal", "capture", "normal", "capture", "normal"]
    assert [k.anchor for k in logs[:2]] == [
        ClockAnchor(1795954146, 1.617835),
        ClockAnchor(1795954155, 1.388758),
    ]


def test_an_armed_kernel_does_not_print_the_nmi_panic_but_the_capture_kernel_dates_itself():
    times = console_times(AFTER_FIRST_NMI)
    assert times.panic_uptime is None and times.capture_seen
    assert times.capture_started == 1795954155 + 0.5 - 1.388758
    assert times.dump_written is None  # the lab's capture script prints no kernel-log line


def test_the_panic_of_a_real_dmesg_and_of_a_console_without_kdump():
    assert panic_uptime((REAL / "vmcore-dmesg.txt").read_text()) == 5.310016
    hang = (REAL / "console-hang.log").read_text()
    assert console_times(hang[hang.index("LAB: ready") :]).panic_uptime == 4.093252
    assert panic_uptime("Kernel panic - not syncing: NMI: Not continuing") is None  # no printk time
    assert panic_uptime("[ 9.000000] ---[ end Kernel panic - not syncing: NMI ]---") is None


def test_a_console_read_dates_the_panic_by_printk_and_else_bounds_it_by_the_capture_or_the_read():
    read, since = "2026-11-29T12:09:30.000Z", "2026-11-29T12:09:10.000Z"
    found = console_evidence(console_times(AFTER_FIRST_NMI), read, since, crashed_boot())
    capture = at_epoch(1795954155 + 0.5 - 1.388758, "console-printk", 0.5)
    assert found["capture_started"] == capture
    # Not printed before the capture kernel: it happened by that kernel's start (its bar's end).
    assert found["panic"] == Evidence("2026-11-29T12:09:14.611Z", "first-seen", 4.611, upper_bound=True)
    assert capture.latest == parse_iso(found["panic"].at).timestamp()
    assert "dump_written" not in found
    # A capture kernel seen without its clock line bounds nothing before the read.
    undated = AFTER_FIRST_NMI.replace("setting system clock to", "clock set to")
    found = console_evidence(console_times(undated), read, since, crashed_boot())
    assert found["panic"] == Evidence(read, "first-seen", 20.0, upper_bound=True)
    assert found["capture_started"] == Evidence(read, "first-seen", 20.0, upper_bound=True)
    printed = (
        "[ 3600.250000] Kernel panic - not syncing: NMI: Not continuing\n"
        "[    0.000000] Linux version 6.1.0 (capture)\n"
        "[    0.000000] Command line: console=ttyS0 elfcorehdr=179572K\n"
        "[    1.200000] rtc_cmos 00:00: setting system clock to 2026-11-29T13:09:06 UTC (1795957746)\n"
        "[    6.000000] kdump[410]: saving vmcore complete\n"
    )
    found = console_evidence(console_times(printed), read, since, crashed_boot(0.01))
    assert found["panic"] == at_epoch(CRASHED_START + 3600.25, "console-printk", 0.01)
    assert found["dump_written"] == at_epoch(1795957746 + 0.5 - 1.2 + 6.0, "console-printk", 0.5)
    assert console_evidence(console_times("nothing yet\n"), read, since, None) == {}


def test_a_dump_dates_the_panic_by_its_dmesg_else_its_crash_time_and_itself_by_its_file_time():
    found = dump_evidence(5.310016, "2026-11-29T12:09:10.000Z", 1795954158, crashed_boot())
    assert found["panic"] == at_epoch(CRASHED_START + 5.310016, "dump-dmesg", 0.5)
    assert found["dump_written"] == at_epoch(1795954159, "vmcore", 1.0)
    no_log = dump_evidence(None, "2026-11-29T12:09:10.000Z", None, crashed_boot())
    assert no_log == {"panic": Evidence("2026-11-29T12:09:10.500Z", "vmcore", 0.5)}
    assert dump_evidence(5.3, "", None, None) == {}


def test_the_real_crash_keeps_its_order_nmi_panic_capture_dump_boot():
    """The first crash of console-kdump.log, dated from its own artefacts: the panic from the
    dmesg, the capture kernel and the next boot from their hardware-clock lines."""
    logs = kernels(KDUMP_CONSOLE)
    nmi = iso_at(CRASHED_START + 5.30)  # the dmesg's NMI line is at 5.307721 s
    next_boot = logs[2].anchor.started
    track = Track("i-real", nmi, "old", booted_before=crashed_boot())
    track = track.with_evidence(dump_evidence(5.310016, "", int(next_boot) - 2, track.booted_before))
    track = track.with_evidence(
        console_evidence(console_times(AFTER_FIRST_NMI), nmi, nmi, track.booted_before)
    )
    track = track.with_boot(Boot("new", iso_at(next_boot), iso_at(next_boot + 6), 0.5))
    line = timeline(track)
    order = ["nmi_sent", "panic", "capture_started", "dump_written", "kernel_back", "agent_online"]
    assert [line.milestones[m] for m in order] == sorted(line.milestones[m] for m in order)
    assert line.conflicts == ()
    assert line.evidence["panic"].source == "dump-dmesg"
    assert line.evidence["capture_started"].source == "console-printk"
    assert line.durations["time_to_crash"] == 0.01
    # Under TCG, kexec's purgatory checks the capture kernel's hash for seconds before it starts.
    assert line.evidence["capture_started"].earliest - line.evidence["panic"].latest > 2.0


def iso_at(seconds: float) -> str:
    return at_epoch(seconds, "boot-time", 0).at
