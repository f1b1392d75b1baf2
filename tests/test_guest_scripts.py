"""The guest scripts run for real under sh against a guest's file system, and their parsers.

The simulated guest lays out the files and tools each distribution has; the same scripts run
unchanged on an instance through SSM.
"""

import base64
import gzip
import os
import random
from importlib.resources import files
from pathlib import Path

import pytest
from conftest import sim_guest
from test_dumps import MANIFEST, UNCHECKED_KDUMP_PAGES, fixture_extents, materialise, span

from chaosec2panic import guest
from chaosec2panic.analysis import summarise_log
from chaosec2panic.dumps import inspect_path, inspect_source
from chaosec2panic.guest.parsers import (
    LINUX_SETTINGS,
    crash_log,
    dump_files,
    kdump_verdict,
    parse_report,
    settings_change,
)
from chaosec2panic.lab.fleet import OS_FAMILIES
from chaosec2panic.lab.sandbox import host_program
from chaosec2panic.lab.simguest import SimGuest, crashkernel_reservation, kernel_crashkernel

LINUX = guest.PLATFORMS["linux"]
REAL_LOG = Path(__file__).parent / "fixtures" / "real" / "log"


def make_guest(tmp_path: Path, **spec) -> SimGuest:
    return sim_guest(tmp_path / "root", **spec)


def left_behind(g: SimGuest) -> list:
    """What crash_dumps.sh left in the guest's /tmp (its mktemp directories), not the mount points
    the lab's sandbox makes for the host's Python when it lives below /tmp (a CI clone)."""
    return sorted((g.root / "tmp").glob("chaosec2panic-*"))


def run(g: SimGuest, name: str, **variables: str):
    outcome = g.run_command(guest.script(LINUX, name, variables or None))
    assert outcome.status == "Success", outcome.stderr
    return parse_report(outcome.stdout, name)


@pytest.mark.parametrize("os_name", sorted(OS_FAMILIES))
def test_an_armed_guest_of_every_family_is_armed(tmp_path, os_name):
    report = run(make_guest(tmp_path, os=os_name), "kdump_status")
    verdict = kdump_verdict(report, 1.0)
    assert verdict.verdict == "armed", verdict.reasons
    assert set(verdict.checks) == {
        "crash_kernel_loaded",
        "crashkernel_reserved",
        "unknown_nmi_panic",
        "kdump_service",
        "dump_space",
    }
    assert report.get("kdump_tool") == OS_FAMILIES[os_name].kdump_tool
    assert report.get("os_id") == OS_FAMILIES[os_name].os_id
    assert report.get("dump_dir") == "/var/crash"


@pytest.mark.parametrize("os_name", ["amazon-linux-2023", "ubuntu", "suse"])
def test_no_kdump_is_not_armed_and_says_why(tmp_path, os_name):
    verdict = kdump_verdict(run(make_guest(tmp_path, os=os_name, kdump=False), "kdump_status"), 1.0)
    assert verdict.verdict == "not-armed"
    assert verdict.checks["crash_kernel_loaded"].status == "fail"
    assert verdict.checks["kdump_service"].status == "fail"
    assert verdict.checks["crashkernel_reserved"].status == "pass"


def test_unknown_nmi_panic_off_is_not_armed(tmp_path):
    verdict = kdump_verdict(run(make_guest(tmp_path, unknown_nmi_panic=0), "kdump_status"), 1.0)
    assert verdict.verdict == "not-armed"
    assert [r for r in verdict.reasons if r.startswith("unknown_nmi_panic: found 0")]


def test_no_reservation_fails_the_reservation_check(tmp_path):
    verdict = kdump_verdict(run(make_guest(tmp_path, crashkernel_mib=0), "kdump_status"), 1.0)
    assert verdict.checks["crashkernel_reserved"].status == "fail"
    assert "crashkernel=absent" in verdict.checks["crashkernel_reserved"].found


def test_dump_space_is_compared_with_memory(tmp_path):
    report = run(make_guest(tmp_path, memory_mib=16384, disk_free_gib=4), "kdump_status")
    assert kdump_verdict(report, 1.0).checks["dump_space"].status == "fail"
    assert kdump_verdict(report, 0.2).checks["dump_space"].status == "pass"


def test_identity_reports_the_boot(tmp_path):
    g = make_guest(tmp_path)
    report = run(g, "identity")
    assert report.complete and report.get("boot_id") == g.boot_id
    assert float(report.get("uptime")) >= 3600


@pytest.mark.parametrize(
    "timedatectl, synced",
    [
        (None, "yes"),  # the lab's stand-in: AWS's images keep the clock on Amazon Time Sync
        ('[ "$1" = show ] && echo NTPSynchronized=no', "no"),
        # systemd 219 (Amazon Linux 2) has no "show": its status says it
        ('[ "$1" = status ] && printf "      NTP enabled: yes\\nNTP synchronized: yes\\n"', "yes"),
        ('[ "$1" = status ] && echo "System clock synchronized: no"', "no"),
        ("echo 'Failed to connect to bus: No such file or directory' >&2; exit 1", ""),
        ("", ""),  # no timedatectl at all (busybox)
    ],
)
def test_identity_and_kdump_status_say_whether_the_clock_is_synchronised(tmp_path, timedatectl, synced):
    g = make_guest(tmp_path)
    tool = g.root / "sim-bin" / "timedatectl"
    if timedatectl is not None:
        tool.unlink()
        if timedatectl:
            tool.write_text(f"#!/bin/sh\n{timedatectl}\n")
            tool.chmod(0o755)
    assert run(g, "identity").get("clock_synced") == synced
    assert run(g, "kdump_status").get("clock_synced") == synced


def test_crash_dumps_lists_nothing_on_a_fresh_guest(tmp_path):
    report = run(make_guest(tmp_path), "crash_dumps", DUMP_DIR="/var/crash")
    assert report.complete and dump_files(report) == ([], [])


def _move_dumps(g: SimGuest, to: str) -> None:
    """Point the guest's kdump configuration (whichever file its distribution has) at ``to``."""
    config = g.root / g._kdump_package()[3]
    config.write_text(config.read_text().replace("/var/crash", to))


@pytest.mark.parametrize("os_name", ["amazon-linux-2023", "ubuntu", "suse"])
def test_crash_dumps_looks_where_kdump_is_configured_to_write(tmp_path, os_name):
    g = make_guest(tmp_path, os=os_name)
    default = run(g, "crash_dumps")
    assert (default.get("dump_dir"), default.get("dump_dir_from")) == ("/var/crash", "kdump")
    _move_dumps(g, "/srv/dumps")
    directory = g.root / "srv" / "dumps" / "127.0.0.1-2026-01-01-00:00:00"
    directory.mkdir(parents=True)
    (directory / "vmcore").write_bytes(b"KDUMP   " + bytes(5000))
    report = run(g, "crash_dumps")
    assert (report.get("dump_dir"), report.get("dump_dir_from")) == ("/srv/dumps", "kdump")
    assert [f.path for f in dump_files(report)[0]] == ["/srv/dumps/127.0.0.1-2026-01-01-00:00:00/vmcore"]
    # The same directory kdump_status reports (and measures the free space of).
    assert run(g, "kdump_status").get("dump_dir") == "/srv/dumps"
    # A directory the caller names wins.
    named = run(g, "crash_dumps", DUMP_DIR="/var/crash")
    assert (named.get("dump_dir"), named.get("dump_dir_from")) == ("/var/crash", "argument")
    assert dump_files(named) == ([], [])


def test_scripts_share_code_by_inclusion_and_are_sent_whole():
    kdump_dir = (files(guest) / "linux" / "kdump_dir.sh").read_text()
    for name in ("crash_dumps", "kdump_status"):
        text = guest.script(LINUX, name)
        assert "#include" not in text and kdump_dir in text


UNSENT_RECORDS = (
    "record header at offset 104854: expected 16 bytes, found not sent by the guest: "
    "the records from there on are not checked"
)
# What the readers say of each real dump (tests/fixtures/dumps.json) from what crash_dumps.sh
# sends of it (complete, problems, unchecked): None where they say what they say of the whole
# file. What the bytes sent cannot show is unchecked, never a problem.
FROM_FIRST_BLOCKS = {
    "kdump-compressed": (True, (), (UNCHECKED_KDUMP_PAGES,)),
    # The one verdict the first blocks cannot give: page data cut from a file whose flag and
    # name say it is whole. Only a scan of every page descriptor shows it.
    "kdump-compressed-cut-in-page-data": (True, (), (UNCHECKED_KDUMP_PAGES,)),
    "kdump-compressed-cut-in-descriptors": None,
    "kdump-compressed-incomplete-flag": (
        False,
        ("status at offset 424: expected incomplete flag 0x8 clear, found 0xa",),
        (UNCHECKED_KDUMP_PAGES,),
    ),
    "flattened": (True, (), (UNSENT_RECORDS,)),
    "flattened-cut-in-records": (
        False,
        (
            "end record at offset 19999984: expected 16 bytes of 0xff at the end of the file, "
            "found 000000000000000011a7340100000000",
        ),
        (UNSENT_RECORDS,),
    ),
    "flattened-no-end-record": (
        False,
        (
            "end record at offset 23246798: expected 16 bytes of 0xff at the end of the file, "
            "found 00100000000000000000000000000000",
        ),
        (UNSENT_RECORDS,),
    ),
    "elf": None,
    "elf-incomplete-flag": None,
    "elf-cut-in-load": None,
}


def test_every_linux_dump_fixture_is_judged_from_its_first_blocks():
    assert set(FROM_FIRST_BLOCKS) == {n for n in MANIFEST if not n.startswith("windows")}


@pytest.mark.parametrize("name", sorted(FROM_FIRST_BLOCKS))
def test_what_the_script_sends_of_a_real_dump_is_judged_as_the_whole_file(tmp_path, name):
    g = make_guest(tmp_path)
    directory = g.root / "var" / "crash" / "127.0.0.1-2026-11-29-12:09:16"
    directory.mkdir(parents=True)
    path = materialise(name, directory).rename(directory / "vmcore")
    outcome = g.run_command(guest.script(LINUX, "crash_dumps", {"DUMP_DIR": "/var/crash"}))
    [dump], problems = dump_files(parse_report(outcome.stdout, "crash_dumps"))
    assert problems == [] and len(outcome.stdout) < 16000
    assert (dump.path, dump.size) == ("/var/crash/127.0.0.1-2026-11-29-12:09:16/vmcore", path.stat().st_size)
    parts, _ = fixture_extents(name)
    assert dump.head == span(parts, 0, len(dump.head)) and len(dump.head) >= min(dump.size, 32768)
    assert dump.tail == span(parts, dump.size - 16, dump.size)
    sparse, whole = inspect_source(dump.source(), dump.path), inspect_path(path)
    fields = ("kind", "format", "kernel_release", "machine", "crash_time")
    assert [getattr(sparse, f) for f in fields] == [getattr(whole, f) for f in fields]
    assert whole.kernel_release == "6.1.0-57-amd64"
    judged = (sparse.complete, sparse.problems, sparse.unchecked)
    assert judged == (FROM_FIRST_BLOCKS[name] or (whole.complete, whole.problems, whole.unchecked))
    assert whole.unchecked == ()  # a file on disk holds every byte a reader needs
    if name != "kdump-compressed-cut-in-page-data":
        assert sparse.complete == whole.complete


def test_the_output_fits_what_ssm_returns_whatever_the_dumps_hold(tmp_path):
    g = make_guest(tmp_path)
    rng = random.Random(5)
    for n in range(7):
        directory = g.root / "var" / "crash" / f"127.0.0.1-2026-01-0{n + 1}-00:00:00"
        directory.mkdir(parents=True)
        dump = directory / "vmcore"
        dump.write_bytes(b"KDUMP   " + rng.randbytes(300_000))  # nothing to compress
        (directory / "vmcore-dmesg.txt").write_text(("Kernel panic - not syncing: " + "x" * 5000 + "\n") * 9)
        os.utime(dump, (1767225600 + n, 1767225600 + n))
    outcome = g.run_command(guest.script(LINUX, "crash_dumps", {"DUMP_DIR": "/var/crash"}))
    assert len(outcome.stdout) < 16000 + 2000
    files, problems = dump_files(parse_report(outcome.stdout, "crash_dumps"))
    assert problems == [] and len(files) == 5  # MAX_DUMPS, newest first
    newest, *older = files
    assert newest.path.endswith("2026-01-07-00:00:00/vmcore") and len(newest.head) == 8192
    assert newest.dmesg_panic is not None and len(newest.dmesg_panic.splitlines()) == 4
    assert all(len(line) == 200 for line in newest.dmesg_panic.splitlines())
    assert [(f.head, f.tail, f.dmesg_panic) for f in older] == [(b"", b"", None)] * 4


# The crash's own account: the crashed kernel's log around its last panic --------------------------
REAL_NMI_DMESG = (REAL_LOG / "vmcore-dmesg.txt").read_text().splitlines()


def _real_dump(g: SimGuest, directory: str, name: str, fixture: str = "kdump-compressed") -> Path:
    """A real dump fixture at ``directory/name`` in the guest's dump directory."""
    where = g.root / "var" / "crash" / directory
    where.mkdir(parents=True)
    return materialise(fixture, where).rename(where / name)


@pytest.mark.parametrize(
    ("directory", "dump", "dmesg"),
    [
        ("127.0.0.1-2026-12-02-22:02:11", "vmcore", "vmcore-dmesg.txt"),  # kdumpctl
        ("202612022202", "dump.202612022202", "dmesg.202612022202"),  # Debian's kdump-tools
        ("2026-12-02-22-02", "vmcore", "dmesg"),  # SUSE
    ],
)
def test_the_crash_log_is_the_real_nmi_panic_of_the_dmesg_beside_the_dump(tmp_path, directory, dump, dmesg):
    g = make_guest(tmp_path)
    _real_dump(g, directory, dump)
    (g.root / "var" / "crash" / directory / dmesg).write_text("\n".join(REAL_NMI_DMESG) + "\n")
    report = run(g, "crash_dumps")
    assert report.schema == "crash_dumps/3"
    log = crash_log(report)
    assert (log.source, log.file, log.error) == ("dmesg-file", f"/var/crash/{directory}/{dmesg}", "")
    panic = REAL_NMI_DMESG.index("[    6.505469] Kernel panic - not syncing: NMI: Not continuing")
    # From 5 lines before the last panic line to the end of the log (33 lines after it), whole.
    assert report.get("crash_log_shape") == "60x200"
    assert log.lines == [line[:200] for line in REAL_NMI_DMESG[panic - 5 :]]
    told = summarise_log(log.lines)
    assert (told.panic_message, told.nmi_panic) == ("NMI: Not continuing", True)
    assert told.nmi_line == "Uhhuh. NMI received for unknown reason 21 on CPU 0."
    assert (told.cpu, told.pid, told.comm, told.rip_function) == (0, 0, "swapper/0", "native_safe_halt")
    assert told.call_trace[:7] == [
        " <NMI>",
        " dump_stack_lvl+0x44/0x5c",
        " panic+0x118/0x2f4",
        " ? _printk+0x68/0x83",
        " nmi_panic.cold+0xc/0xc",
        " unknown_nmi_error.cold+0x3b/0x49",
        " exc_nmi+0x11e/0x150",
    ]
    # The older field keeps its meaning: the first panic lines of that dmesg.
    [newest], _ = dump_files(report)
    assert newest.dmesg_panic is not None and "NMI: Not continuing" in newest.dmesg_panic


def _tools(g: SimGuest, *names: str) -> None:
    """The host's programs ``names`` on the guest's PATH (its /bin)."""
    for name in names:
        found = host_program(name)
        assert found, f"{name} is not installed on this host"
        (g.root / "bin" / name).symlink_to(found)
    (g.root / "tmp").mkdir(exist_ok=True)


@pytest.mark.skipif(not host_program("makedumpfile"), reason="makedumpfile is not installed")
@pytest.mark.parametrize("fixture", ["kdump-compressed", "flattened"])
def test_without_a_dmesg_beside_it_makedumpfile_reads_the_dump_and_its_failure_is_said(tmp_path, fixture):
    g = make_guest(tmp_path)
    _real_dump(g, "127.0.0.1-2026-12-02-22:02:11", "vmcore", fixture)
    assert crash_log(run(g, "crash_dumps")).error == (
        "not read: no dmesg file beside the dump, and makedumpfile "
        "(to read the log out of it) is not installed"
    )
    _tools(g, "makedumpfile", "mktemp")
    report = run(g, "crash_dumps")
    log = crash_log(report)
    # The fixtures hold only the bytes this project's readers read: too few for makedumpfile to
    # read the log (the flattened one is first rebuilt by the real makedumpfile -R).
    said = "not read: makedumpfile --dump-dmesg exited 1: readpage_kdump_compressed: Uncompress failed"
    assert (log.source, log.lines) == ("", []) and log.error.startswith(said), log.error
    assert left_behind(g) == []  # its temporary directory is gone
    assert dump_files(report)[0][0].dmesg_panic is None


# A stand-in for makedumpfile on a dump it can read (the fixtures are too sparse for the real
# one), taking the script's arguments as the real one does: -R rebuilds the flattened dump on its
# stdin into a new file (here: a 16-byte header, then the kdump-compressed file), --dump-dmesg
# writes the log into a new file; either refuses an output file that exists (it opens with O_EXCL).
MAKEDUMPFILE = f"""#!/bin/sh
case "$1" in
  -R) [ ! -e "$2" ] || exit 1; tail -c +17 >"$2"; exit 0 ;;
  --dump-dmesg)
    [ ! -e "$3" ] || {{ echo "open_dump_file: Can't open the dump file($3). File exists"; exit 1; }} >&2
    [ "$(head -c 5 "$2")" = KDUMP ] || {{ echo "check_elf_format: Can't get valid ehdr."; exit 1; }} >&2
    cat <<'LOG' >"$3"
{chr(10).join(REAL_NMI_DMESG)}
LOG
    exit 0 ;;
esac
exit 1
"""


@pytest.mark.parametrize("fixture", ["kdump-compressed", "flattened"])
def test_the_log_makedumpfile_reads_out_of_the_dump_is_sent(tmp_path, fixture):
    g = make_guest(tmp_path)
    path = _real_dump(g, "202612022202", "dump.202612022202", fixture)
    if fixture == "flattened":
        path.write_bytes(b"makedumpfile" + bytes(4) + b"KDUMP   " + bytes(4096))
    _tools(g, "mktemp")
    (g.root / "bin" / "makedumpfile").write_text(MAKEDUMPFILE)
    (g.root / "bin" / "makedumpfile").chmod(0o755)
    log = crash_log(run(g, "crash_dumps"))
    assert (log.source, log.file, log.error) == (
        "dump-dmesg",
        "/var/crash/202612022202/dump.202612022202",
        "",
    )
    assert summarise_log(log.lines).call_trace[6] == " exc_nmi+0x11e/0x150"
    assert left_behind(g) == []


def test_a_flattened_dump_too_large_to_rebuild_is_not_rebuilt_and_that_is_said(tmp_path):
    g = make_guest(tmp_path)
    where = g.root / "var" / "crash" / "202612022202"
    where.mkdir(parents=True)
    with open(where / "dump.202612022202", "wb") as f:  # sparse: it takes no space
        f.write(b"makedumpfile" + bytes(4) + b"KDUMP   ")
        f.truncate((1 << 30) + 1)
    _tools(g, "mktemp")
    (g.root / "bin" / "makedumpfile").write_text(MAKEDUMPFILE)
    (g.root / "bin" / "makedumpfile").chmod(0o755)
    assert crash_log(run(g, "crash_dumps")).error == (
        "not read: the dump is in the flattened format, and rebuilding it (makedumpfile -R) to read "
        "its log would write 1073741825 bytes, more than the 1024 MiB allowed"
    )
    assert left_behind(g) == []


def test_the_output_fits_what_ssm_returns_with_the_longest_crash_log(tmp_path):
    """The worst case: nothing compresses, every path long, the old panic field full."""
    g = make_guest(tmp_path)
    rng = random.Random(7)
    text = "".join(chr(c) for c in range(0x21, 0x7F))
    dump_dir = "/var/crash/" + "d" * 120
    for n in range(7):
        directory = g.root / dump_dir.lstrip("/") / f"127.0.0.1-2026-01-0{n + 1}-00:00:00-{'x' * 80}"
        directory.mkdir(parents=True)
        dump = directory / "vmcore"
        # 64 KiB whose blocks take just under the 16,000 characters they may
        dump.write_bytes(b"KDUMP   " + rng.randbytes(11_700) + bytes(300_000))
        noise = ["".join(rng.choices(text, k=300)) for _ in range(400)]
        panics = [f"[ 6.5] Kernel panic - not syncing: {''.join(rng.choices(text, k=300))}" for _ in range(5)]
        (directory / "vmcore-dmesg.txt").write_text("\n".join(noise[:200] + panics + noise[200:]) + "\n")
        os.utime(dump, (1767225600 + n, 1767225600 + n))
    outcome = g.run_command(guest.script(LINUX, "crash_dumps", {"DUMP_DIR": dump_dir}))
    assert len(outcome.stdout) < 24000, len(outcome.stdout)
    report = parse_report(outcome.stdout, "crash_dumps")
    files, problems = dump_files(report)
    assert report.complete and problems == [] and len(files) == 5
    assert len(files[0].dmesg_panic.splitlines()) == 4 and len(files[0].head) == 65536
    log = crash_log(report)
    assert len(report.get("crash_log")) <= 3500 and report.get("crash_log_shape") != "60x200"
    width = int(report.get("crash_log_shape").split("x")[1])
    assert log.lines[5] == panics[-1][:width] and len(log.lines) == int(
        report.get("crash_log_shape").split("x")[0]
    )


def test_dump_lines_cut_or_garbled_are_problems_never_errors():
    blocks = base64.b64encode(gzip.compress(b"KDUMP   " + bytes(5000))).decode()
    good = f"/var/crash/x/vmcore|23283460|1767225600|{b'Kernel panic'.hex()}|{blocks}|{'ff' * 16}"
    rng = random.Random(3)
    for _ in range(600):
        line = list(good[: rng.randrange(len(good) + 1)])
        for _ in range(rng.randrange(4)):
            if line:
                line[rng.randrange(len(line))] = rng.choice("|0f=Zz/+ ")
        text = "".join(line)
        report = parse_report(f"schema=crash_dumps/2\ndump={text}\nend=ok\n", "crash_dumps")
        files, problems = dump_files(report)
        assert len(files) + len(problems) == 1, text
    bomb = base64.b64encode(gzip.compress(bytes(2 << 20))).decode()
    files, problems = dump_files(parse_report(f"schema=crash_dumps/2\ndump=/v|1|1||{bomb}|\nend=ok\n", "x"))
    assert files == [] and problems[0].endswith("(gzip stream cut short or larger than 1048576 bytes)")


def test_output_cut_short_is_unknown_never_armed():
    text = "schema=kdump_status/1\ncrash_loaded=1\ncrash_size=1\nunknown_nmi_panic=1\n"
    verdict = kdump_verdict(parse_report(text, "kdump_status"), 1.0)
    assert verdict.verdict == "unknown"
    assert any("end line" in r for r in verdict.reasons)


def test_wrong_schema_is_a_problem():
    assert parse_report("schema=identity/1\nend=ok\n", "kdump_status").problems


def test_missing_values_are_unknown():
    verdict = kdump_verdict(parse_report("schema=kdump_status/1\nend=ok\n", "kdump_status"), 1.0)
    assert verdict.verdict == "unknown"
    assert {c.status for c in verdict.checks.values()} == {"unknown"}


# Hand-written: no PowerShell runs here. Keys as kdump_status.ps1 prints them.
WINDOWS_ARMED = """schema=kdump_status/1
boot_id=20260101T000000Z
os_id=windows
mem_total_kb=8388608
crash_dump_enabled=1
nmi_crash_dump=1
auto_reboot=1
dump_file=C:\\Windows\\MEMORY.DMP
dump_dir=C:\\Windows
dump_dir_free_kb=20971520
end=ok
"""


def test_windows_settings_are_judged():
    assert kdump_verdict(parse_report(WINDOWS_ARMED, "kdump_status"), 1.0).verdict == "armed"
    off = WINDOWS_ARMED.replace("nmi_crash_dump=1", "nmi_crash_dump=0").replace(
        "crash_dump_enabled=1", "crash_dump_enabled=0"
    )
    verdict = kdump_verdict(parse_report(off, "kdump_status"), 1.0)
    assert verdict.verdict == "not-armed"
    assert {n for n, c in verdict.checks.items() if c.status == "fail"} == {
        "nmi_crash_dump",
        "crash_dump_enabled",
    }


def test_windows_script_prints_every_key_the_parser_reads():
    text = guest.script(guest.PLATFORMS["windows"], "kdump_status")
    for key in (
        "boot_id",
        "os_id",
        "mem_total_kb",
        "crash_dump_enabled",
        "nmi_crash_dump",
        "auto_reboot",
        "dump_dir_free_kb",
        "end=ok",
        "exit 0",
    ):
        assert key in text


def test_unknown_script_names_the_valid_ones():
    with pytest.raises(ValueError, match="kdump_status"):
        guest.script(LINUX, "nope")


# kdump_settings: arm and restore, run for real against the guest's files ---------------------------
@pytest.mark.parametrize(
    "os_name", ["amazon-linux-2023", "amazon-linux-2", "rhel", "fedora", "ubuntu", "debian", "suse"]
)
def test_arming_changes_the_files_and_the_next_boot_is_armed(tmp_path, os_name):
    g = make_guest(tmp_path, os=os_name, kdump=False, crashkernel_mib=0, unknown_nmi_panic=0)
    change = settings_change(run(g, "kdump_settings", ACTION="arm"))
    assert change.error == "" and change.reboot.startswith("crashkernel=1G-4G:192M")
    assert set(change.changed) >= {
        "packages",
        "crashkernel",
        "unknown_nmi_panic",
        "nmi_sysctl_file",
        "kdump_enabled",
    }
    assert (g.root / "etc/sysctl.d/99-chaosec2panic.conf").read_text() == "kernel.unknown_nmi_panic = 1\n"
    assert kdump_verdict(run(g, "kdump_status"), 1.0).verdict == "not-armed"  # no crash memory yet
    g._boot_from_files()  # what the next boot reads
    assert (g.crashkernel_mib, g.crash_loaded, g.unknown_nmi_panic) == (256, True, 1)
    assert kdump_verdict(run(g, "kdump_status"), 1.0).verdict == "armed"
    assert settings_change(run(g, "kdump_settings", ACTION="arm")).changed == []


def test_restoring_puts_back_the_values_before(tmp_path):
    g = make_guest(tmp_path, os="debian", kdump=False, crashkernel_mib=0, unknown_nmi_panic=0)
    armed = settings_change(run(g, "kdump_settings", ACTION="arm"))
    assert armed.settings["use_kdump"] == {"before": "", "after": "1", "changed": True}
    names = [n for n in LINUX_SETTINGS if n in armed.changed and n != "packages"]
    before = {f"BEFORE_{n}": armed.settings[n]["before"] for n in names}
    restored = settings_change(run(g, "kdump_settings", ACTION="restore", RESTORE=" ".join(names), **before))
    assert restored.error == ""
    assert {n: restored.settings[n]["after"] for n in names} == {
        **{n: armed.settings[n]["before"] for n in names},
        "use_kdump": "1",  # the package's file stays, and nothing was there to put back
        "kdump_enabled": "disabled",  # the unit stays with its package, disabled
        "crashkernel": "384M-:128M",  # so does its grub.d file, with its own reservation
    }
    assert not (g.root / "etc/default/grub.d/zz-chaosec2panic-crashkernel.cfg").exists()
    assert "crashkernel" not in (g.root / "etc/default/grub").read_text()
    assert (g.root / "boot/grub/grub.cfg").read_text().count("crashkernel=") == 1
    assert not (g.root / "etc/sysctl.d/99-chaosec2panic.conf").exists()


def test_a_size_or_ranges_reserve_what_the_kernel_would():
    assert crashkernel_reservation("256M", 8192) == 256
    assert crashkernel_reservation("1G-4G:192M,4G-64G:256M,64G-:512M", 2048) == 192
    assert crashkernel_reservation("1G-4G:192M,4G-64G:256M,64G-:512M", 8192) == 256
    assert crashkernel_reservation("1G-4G:192M,4G-64G:256M,64G-:512M", 512) == 0
    assert crashkernel_reservation("512M,high", 8192) == 512 and crashkernel_reservation("", 8192) == 0


def test_an_unknown_action_changes_nothing(tmp_path):
    g = make_guest(tmp_path, kdump=False)
    change = settings_change(run(g, "kdump_settings", ACTION="wipe"))
    assert change.changed == [] and change.error == "unknown ACTION wipe (arm, restore or report)"


def test_a_small_windows_dump_is_not_armed_and_says_where_it_goes():
    small = WINDOWS_ARMED.replace("crash_dump_enabled=1", "crash_dump_enabled=3")
    check = kdump_verdict(parse_report(small, "kdump_status"), 1.0).checks["crash_dump_enabled"]
    assert check.status == "fail" and "Minidump" in check.found
    assert check.expected == "complete, kernel or automatic"


@pytest.mark.parametrize(
    ("version", "status"),
    [("10.0.20348", "pass"), ("6.2.9200", "pass"), ("6.1.7601", "unknown"), ("", "unknown")],
)
def test_an_absent_nmi_crash_dump_passes_from_windows_server_2012(version, status):
    text = WINDOWS_ARMED.replace("nmi_crash_dump=1", "nmi_crash_dump=").replace(
        "os_id=windows", f"os_id=windows\nos_version={version}"
    )
    assert kdump_verdict(parse_report(text, "kdump_status"), 1.0).checks["nmi_crash_dump"].status == status


# crashkernel=: the kernel takes the last one (kernel/crash_reserve.c, get_last_crashkernel) -------
@pytest.mark.parametrize(
    ("words", "used"),
    [
        ("crashkernel=384M-:128M crashkernel=256M", "256M"),
        ("crashkernel=256M crashkernel=512M,high crashkernel=64M,low", "256M"),  # a plain one first
        ("crashkernel=128M,low crashkernel=512M,high", "512M,high"),
        ("", ""),
    ],
)
def test_the_running_crashkernel_is_the_one_the_kernel_takes(tmp_path, words, used):
    g = make_guest(tmp_path, os="ubuntu", crashkernel_mib=0)
    g.kernel_args = f"root=/dev/nvme0n1p1 ro console=ttyS0,115200n8 {words}".strip()
    assert kernel_crashkernel(g.kernel_args) == used  # the lab's kernel agrees
    assert run(g, "kdump_status").get("cmdline_crashkernel") == used
    assert run(g, "kdump_settings").get("running_crashkernel") == used


def test_a_reservation_there_was_survives_the_kdump_tools_grub_default(tmp_path):
    # crashkernel=256M in GRUB_CMDLINE_LINUX; installing kdump-tools appends its own after it
    g = make_guest(tmp_path, os="debian", kdump=False, crashkernel_mib=256)
    grub = (g.root / "etc/default/grub").read_text()
    change = settings_change(run(g, "kdump_settings", ACTION="arm"))
    assert change.error == "" and change.reboot == ""
    assert change.settings["crashkernel"] == {"before": "256M", "after": "256M", "changed": False}
    assert (g.root / "etc/default/grub.d/kdump-tools.cfg").is_file()
    assert (g.root / "etc/default/grub").read_text() == grub
    g._boot_from_files()
    assert (g.crashkernel, g.crashkernel_mib, g.crash_loaded) == ("256M", 256, True)


def test_a_crashkernel_a_later_file_overrides_is_an_error(tmp_path):
    g = make_guest(tmp_path, os="ubuntu")
    (g.root / "etc/default/grub.d/zzz-site.cfg").write_text(
        'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel=64M"\n'
    )
    report = run(g, "kdump_settings", ACTION="arm", CRASHKERNEL="512M", CRASHKERNEL_FORCE="1")
    change = settings_change(report)
    assert change.error.startswith("crashkernel=512M was written but the next boot would use crashkernel=64M")
    assert "/etc/default/grub.d/zzz-site.cfg" in change.error
    assert not (g.root / "etc/default/grub.d/zz-chaosec2panic-crashkernel.cfg").exists()  # taken back
    assert change.settings["crashkernel"] == {"before": "64M", "after": "64M", "changed": False}


def test_a_crashkernel_grub_cmdline_linux_default_overrides_is_an_error_and_undone(tmp_path):
    # SUSE: arm_kdump writes GRUB_CMDLINE_LINUX; one in GRUB_CMDLINE_LINUX_DEFAULT comes after it
    g = make_guest(tmp_path, os="suse", crashkernel_mib=0)
    grub = g.root / "etc/default/grub"
    grub.write_text(grub.read_text() + 'GRUB_CMDLINE_LINUX_DEFAULT="quiet crashkernel=192M"\n')
    before = grub.read_text()
    assert run(g, "kdump_settings").get("crashkernel_before") == "192M"  # seen, kept without a size
    report = run(g, "kdump_settings", ACTION="arm", CRASHKERNEL="512M", CRASHKERNEL_FORCE="1")
    change = settings_change(report)
    assert change.error.startswith("crashkernel=512M was written but the next boot would use")
    assert "would use crashkernel=192M (crashkernel= is set in: /etc/default/grub)" in change.error
    assert grub.read_text() == before
