"""Windows Server guests in the lab: CrashControl, bugcheck 0x80, MEMORY.DMP and recovery.

PowerShell cannot run here, so the simulated Windows guest answers the guest scripts with an
interpretation in Python; the first tests hold that interpretation to the .ps1 text.
"""

import contextlib
import re
from datetime import UTC, datetime

import boto3
import pytest
from botocore.exceptions import WaiterError
from conftest import ROOT, failed_probes, opted_in, run_experiment

from chaosec2panic import guest
from chaosec2panic.actions import send_nmi
from chaosec2panic.dumps import inspect_path, inspect_source
from chaosec2panic.errors import Refused
from chaosec2panic.guest.parsers import dump_files, parse_report
from chaosec2panic.lab.dumpwriter import windows_dump_header, write_windows_dump
from chaosec2panic.lab.fleet import FleetError, parse_fleet
from chaosec2panic.lab.simwindows import (
    WindowsFacts,
    WindowsFile,
    crash_control_after,
    interpret_windows_script,
    script_variables,
    windows_script_name,
)
from chaosec2panic.probes import (
    crash_dump_present,
    crash_dumps,
    kdump_armed,
    panic_on_console,
    recovered_within,
)
from chaosec2panic.rollbacks import recover_instances

WINDOWS = guest.PLATFORMS["windows"]
WRITE_OUTPUT = re.compile(r'Write-Output\s+\(?"(\w+)=([^"]*)"(\s*\+)?')
BOOT = datetime(2026, 3, 1, 8, 30, 15, 600000, tzinfo=UTC).timestamp()
HEAD = b"PAGEDU64" + bytes(range(200))  # shorter than the 12 KiB the script reads


def facts(**more) -> WindowsFacts:
    """A Windows instance with a dump and a BugCheck event, so every conditional line prints."""
    values = dict(
        now=BOOT + 90.5,
        last_boot=BOOT,
        version="10.0.20348",
        total_visible_kb=8323072,
        crash_dump_enabled=7,
        nmi_crash_dump=1,
        auto_reboot=1,
        dump_file="%SystemRoot%\\MEMORY.DMP",
        system_root="C:\\Windows",
        free_bytes=40 * 2**30 + 1536,
        dump=WindowsFile("C:\\Windows\\MEMORY.DMP", 1048576, BOOT + 20.9, HEAD, b"\xaa" * 16),
        bugcheck_event=BOOT + 30.2,
    )
    return WindowsFacts(**{**values, **more})


def ps1_lines(name: str) -> list[tuple[str, str | None]]:
    """(key, literal value or None when computed) of each Write-Output line of the .ps1, in order."""
    text = guest.script(WINDOWS, name)
    found = [(k, None if plus or "$" in v else v) for k, v, plus in WRITE_OUTPUT.findall(text)]
    assert len(found) == text.count("Write-Output"), f"{name}.ps1 has a Write-Output this test cannot read"
    return found


# the interpretation, held to the .ps1 text -----------------------------------------------------
@pytest.mark.parametrize("name", guest.SCRIPTS)
def test_the_interpretation_prints_every_key_its_ps1_prints_in_order(name):
    expected = ps1_lines(name)
    assert expected and expected[0][0] == "schema" and expected[-1] == ("end", "ok")
    printed = [line.partition("=")[::2] for line in interpret_windows_script(name, facts()).splitlines()]
    assert [k for k, _ in printed] == [k for k, _ in expected]
    for (key, value), (_, literal) in zip(printed, expected, strict=True):
        if literal is not None:  # Write-Output "key=literal"
            assert value == literal, key


@pytest.mark.parametrize("name", guest.SCRIPTS)
def test_the_guest_scripts_are_recognised_by_their_schema_line(name):
    assert windows_script_name(guest.script(WINDOWS, name)) == name
    assert windows_script_name(guest.script(WINDOWS, name, {"DUMP_DIR": "C:\\it's"})) == name
    assert windows_script_name(guest.script(guest.PLATFORMS["linux"], name)) is None
    assert windows_script_name("Get-Process\nWrite-Output 'schema=identity/1'") is None


def test_values_are_formatted_as_the_ps1_format_them():
    report = parse_report(interpret_windows_script("crash_dumps", facts()), "crash_dumps")
    assert report.complete and report.get("boot_id") == "20260301T083015Z"  # yyyyMMddTHHmmssZ
    assert report.get("dump_dir") == "C:\\Windows" and report.get("bugcheck_event") == str(int(BOOT + 30.2))
    [dump], problems = dump_files(report)
    assert problems == [] and dump.path == "C:\\Windows\\MEMORY.DMP" and dump.size == 1048576
    assert dump.mtime == int(BOOT + 20.9) and dump.head == HEAD and dump.tail == b"\xaa" * 16
    assert dump.dmesg_panic is None
    status = parse_report(interpret_windows_script("kdump_status", facts()), "kdump_status")
    assert status.get("uptime") == "90"  # [int] rounds half to even
    assert status.get("dump_dir_free_kb") == str(40 * 2**20 + 2)  # [int64](1.5) rounds to 2
    assert status.get("dump_file") == "C:\\Windows\\MEMORY.DMP"
    bare = interpret_windows_script("crash_dumps", facts(dump=None, bugcheck_event=None))
    assert "dump=" not in bare and "bugcheck_event=" not in bare and bare.endswith("end=ok\r\n")
    with pytest.raises(ValueError, match="unknown guest script"):
        interpret_windows_script("uptime", facts())


# fleet and dump writer -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"os": "windows-2022", "kdump": False}, r"\['kdump'\] do not apply to os windows-2022 \(Windows\)"),
        ({"os": "rhel", "auto_reboot": False}, r"\['auto_reboot'\] do not apply to os rhel \(Linux\)"),
        ({"os": "windows-2022", "crash_dump_enabled": "small"}, "crash_dump_enabled must be one of"),
        ({"os": "windows-2022", "nmi_crash_dump": 1}, "nmi_crash_dump must be bool"),
        ({"os": "windows-2012"}, "unknown os 'windows-2012'; valid: .*'windows-2022'"),
        ({"os": "windows-2022", "clock_synced": False}, r"\['clock_synced'\] do not apply to os windows"),
        ({"kind": "qemu", "clock_synced": False}, "a qemu guest runs the lab's own system .* its own clock"),
        ({"kind": "debian", "clock_synced": False}, r"real Debian system .*\['clock_synced'\] cannot be set"),
    ],
)
def test_fleet_windows_settings_are_checked(entry, message):
    with pytest.raises(FleetError, match=message):
        parse_fleet({"instances": [{"name": "w", **entry}]})


def test_fleet_windows_defaults_are_armed():
    [spec] = parse_fleet({"instances": [{"name": "w", "os": "windows-2019"}]}).guests
    assert spec.windows and spec.armed and spec.family.platform == "Windows"
    assert (spec.crash_dump_enabled, spec.nmi_crash_dump, spec.auto_reboot) == ("automatic", True, True)


@pytest.mark.parametrize(("kind", "fmt"), [("complete", "windows-full"), ("kernel", "windows-kernel")])
def test_a_written_memory_dmp_reads_back_as_an_nmi_bugcheck(tmp_path, kind, fmt):
    header = windows_dump_header(kind, 20348, 2, 0x80, (0x4F4454, 0, 0, 0), BOOT, 4096, 1000)
    size = write_windows_dump(tmp_path / "MEMORY.DMP", header, BOOT + 30)
    found = inspect_path(tmp_path / "MEMORY.DMP")
    assert (found.format, found.complete, found.nmi_panic, found.machine) == (fmt, True, True, "x86_64")
    assert found.details["required_size"] == size == 4096 * 3 + 1000 * 4096
    assert found.crash_time.startswith("2026-03-01T08:30:15")
    assert "NMI_HARDWARE_FAILURE" in found.panic_message and found.problems == ()
    listed = WindowsFile("C:\\Windows\\MEMORY.DMP", size, BOOT + 30, header, b"")
    [dump], _ = dump_files(parse_report(interpret_windows_script("crash_dumps", facts(dump=listed)), "x"))
    sent = inspect_source(dump.source(), dump.path)
    assert (sent.format, sent.complete, sent.details["bugcheck"], sent.problems) == (fmt, True, 0x80, ())


# the lab over HTTP -----------------------------------------------------------------------------
def windows(name: str, **settings) -> dict:
    return opted_in(name, os="windows-2022", **settings)


def hit(lab, name: str, **kw) -> None:
    send_nmi(instance_ids=[lab.id(name)], configuration=lab.configuration(), **kw)


def run(ssm, instance_id: str, document: str, command: str) -> dict:
    sent = ssm.send_command(
        InstanceIds=[instance_id], DocumentName=document, Parameters={"commands": [command]}
    )
    with contextlib.suppress(WaiterError):  # the waiter fails on a failed command: that is checked
        ssm.get_waiter("command_executed").wait(
            CommandId=sent["Command"]["CommandId"], InstanceId=instance_id, WaiterConfig={"Delay": 1}
        )
    return ssm.get_command_invocation(CommandId=sent["Command"]["CommandId"], InstanceId=instance_id)


def test_a_windows_instance_looks_like_windows_to_ec2_and_ssm(make_lab):
    lab = make_lab([windows("win"), opted_in("lin")])
    ec2, ssm = boto3.client("ec2"), boto3.client("ssm")
    [found] = ec2.describe_instances(InstanceIds=[lab.id("win")])["Reservations"][0]["Instances"]
    assert found["Platform"] == "windows"
    [linux] = ec2.describe_instances(InstanceIds=[lab.id("lin")])["Reservations"][0]["Instances"]
    assert "Platform" not in linux
    [info] = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [lab.id("win")]}])[
        "InstanceInformationList"
    ]
    assert (info["PlatformType"], info["PlatformName"], info["PlatformVersion"]) == (
        "Windows",
        "Microsoft Windows Server 2022 Datacenter",
        "10.0.20348",
    )
    ps = run(ssm, lab.id("win"), "AWS-RunPowerShellScript", guest.script(WINDOWS, "identity"))
    assert ps["Status"] == "Success" and parse_report(ps["StandardOutputContent"], "identity").complete
    other = run(ssm, lab.id("win"), "AWS-RunPowerShellScript", "Get-Date")
    assert other["Status"] == "Failed" and "cannot run PowerShell" in other["StandardErrorContent"]
    sh = run(ssm, lab.id("win"), "AWS-RunShellScript", "true")
    assert (
        sh["Status"] == "Failed"
        and "aws:runShellScript does not run on Windows" in sh["StandardErrorContent"]
    )
    wrong = run(ssm, lab.id("lin"), "AWS-RunPowerShellScript", "true")
    assert wrong["Status"] == "Failed" and "does not run on Linux" in wrong["StandardErrorContent"]
    console = ec2.get_console_output(InstanceId=lab.id("win"), Latest=True)["Output"]
    assert "Windows is Ready to use" in console and "Linux" not in console


def test_kdump_armed_reads_crashcontrol_on_windows(make_lab):
    lab = make_lab(
        [
            windows("armed"),
            windows("no-nmi", nmi_crash_dump=False),
            windows("no-reboot", auto_reboot=False),
            windows("no-dump", crash_dump_enabled="none"),
        ]
    )
    result = kdump_armed(tags={"chaos:nmi": "allowed"}, configuration=lab.configuration())
    found = {lab.lab.guests[i].spec.name: v for i, v in result["instances"].items()}
    assert result["armed"] is False
    assert {n: v["verdict"] for n, v in found.items()} == {
        "armed": "armed",
        "no-nmi": "not-armed",
        "no-reboot": "not-armed",
        "no-dump": "not-armed",
    }
    assert set(found["armed"]["checks"]) == {
        "crash_dump_enabled",
        "nmi_crash_dump",
        "auto_reboot",
        "dump_space",
    }
    assert found["armed"]["checks"]["crash_dump_enabled"]["found"] == "automatic"
    assert found["armed"]["os_id"] == "windows" and found["armed"]["dump_dir"] == "C:\\Windows"
    assert found["no-nmi"]["reasons"] == ["nmi_crash_dump: found 0, expected 1"]
    assert found["no-reboot"]["reasons"] == ["auto_reboot: found 0, expected 1"]
    assert found["no-dump"]["reasons"] == [
        "crash_dump_enabled: found 0, expected complete, kernel or automatic"
    ]


@pytest.mark.parametrize(
    ("dump_type", "fmt"), [("automatic", "windows-kernel"), ("complete", "windows-full")]
)
def test_an_armed_windows_instance_bugchecks_dumps_and_comes_back(make_lab, dump_type, fmt):
    lab = make_lab([windows("win", crash_dump_enabled=dump_type)])
    boot_before = lab.lab.guests[lab.id("win")].boot_id
    hit(lab, "win")
    conf = lab.configuration()
    assert recovered_within(30, configuration=conf) is True
    assert lab.lab.guests[lab.id("win")].boot_id != boot_before
    dump = crash_dumps(configuration=conf)["instances"][lab.id("win")]
    assert (dump["verdict"], dump["format"], dump["bugcheck"]) == ("complete-dump", fmt, 0x80)
    assert (dump["nmi_panic"], dump["panic_message"]) == (
        True,
        "bugcheck 0x00000080 (NMI_HARDWARE_FAILURE) (0x4f4454, 0x0, 0x0, 0x0)",
    )
    assert dump["path"] == "C:\\Windows\\MEMORY.DMP" == lab.events("dump-written", "win")[0]["detail"]
    assert dump["running_kernel"] == "10.0.20348" and dump["problems"] == []
    assert crash_dump_present(configuration=conf) is True
    on_disk = inspect_path(lab.lab.guests[lab.id("win")].root / "Windows" / "MEMORY.DMP")
    assert (on_disk.format, on_disk.complete, on_disk.nmi_panic) == (fmt, True, True)
    kinds = [e["kind"] for e in lab.events(name="win") if e["kind"] != "command"]
    assert kinds == ["nmi", "bugcheck", "dump-saved", "boot", "dump-written", "agent-online", "recovered"]
    # Today's panic_on_console reads Linux kernel messages only: a Windows console (EC2Launch
    # lines, no bugcheck text) never shows a "panic", so it is False after a real bugcheck.
    assert panic_on_console(configuration=conf) is False


def test_autoreboot_off_stays_on_the_blue_screen_until_recovered(make_lab):
    lab = make_lab([windows("bsod", auto_reboot=False)])
    with pytest.raises(Refused, match="auto_reboot: found 0"):
        hit(lab, "bsod")
    hit(lab, "bsod", allow_unarmed=True)
    conf = lab.configuration()
    assert recovered_within(1.5, configuration=conf) is False
    assert lab.lab.guests[lab.id("bsod")].phase == "hung"
    assert crash_dumps(configuration=conf)["instances"][lab.id("bsod")]["verdict"] == "unknown"
    done = recover_instances(configuration=conf)
    assert done["instances"][lab.id("bsod")] == {"actions": ["reboot"], "recovered": True}
    dump = crash_dumps(configuration=conf)["instances"][lab.id("bsod")]
    assert dump["verdict"] == "complete-dump" and dump["bugcheck"] == 0x80  # written by the next boot
    kinds = [e["kind"] for e in lab.events(name="bsod") if e["kind"] != "command"]
    assert kinds[:4] == ["nmi", "bugcheck", "dump-saved", "hung"] and "reboot" in kinds


def test_nmi_crash_dump_off_means_nothing_happens(make_lab):
    lab = make_lab([windows("calm", nmi_crash_dump=False)])
    hit(lab, "calm", allow_unarmed=True)
    conf = lab.configuration()
    assert crash_dumps(configuration=conf)["instances"][lab.id("calm")]["verdict"] == "no-dump"
    assert crash_dump_present(configuration=conf) is False
    assert recovered_within(1.5, configuration=conf) is False  # up, but in the same boot
    assert [e["kind"] for e in lab.events(name="calm") if e["kind"] != "command"] == [
        "nmi",
        "nmi-no-bugcheck",
    ]
    assert lab.lab.guests[lab.id("calm")].phase == "up"


def test_no_crash_dump_bugchecks_and_reboots_without_a_dump(make_lab):
    lab = make_lab([windows("nodump", crash_dump_enabled="none")])
    hit(lab, "nodump", allow_unarmed=True)
    conf = lab.configuration()
    assert recovered_within(30, configuration=conf) is True
    assert crash_dumps(configuration=conf)["instances"][lab.id("nodump")]["verdict"] == "no-dump"
    assert not (lab.lab.guests[lab.id("nodump")].root / "Windows" / "MEMORY.DMP").exists()
    assert lab.lab.guests[lab.id("nodump")].bugcheck_events  # event 1001 after the reboot


def test_the_crash_capture_experiment_runs_end_to_end_against_windows(make_lab, tmp_path):
    lab = make_lab([windows("win-a", tags={"role": "windows"}), windows("win-b", tags={"role": "windows"})])
    journal = run_experiment(
        lab,
        ROOT / "experiments" / "crash-capture.yaml",
        tmp_path / "journal.json",
        CHAOSEC2PANIC_TARGET_ROLE="windows",
    )
    assert len(lab.events("bugcheck")) == 1 and len(lab.events("dump-written")) == 1
    # Everything holds on Windows but the console probe, which reads Linux kernel messages only.
    assert failed_probes(journal) == {"nmi-panic-on-console"}


# kdump_settings.ps1: arm and restore CrashControl --------------------------------------------------
@pytest.mark.parametrize(
    "variables",
    [
        {"ACTION": "arm", "CRASH_DUMP_ENABLED": "2"},
        {"ACTION": "restore", "RESTORE": "crash_dump_enabled auto_reboot", "BEFORE_crash_dump_enabled": "0"},
        {"ACTION": "arm", "CRASH_DUMP_ENABLED": "3"},
        None,
    ],
)
def test_the_settings_interpretation_prints_every_key_of_its_ps1_in_order(variables):
    expected = ps1_lines("kdump_settings")
    text = interpret_windows_script("kdump_settings", facts(), variables)
    printed = [line.partition("=")[::2] for line in text.splitlines()]
    assert [k for k, _ in printed] == [k for k, _ in expected]
    for (key, value), (_, literal) in zip(printed, expected, strict=True):
        if literal is not None:
            assert value == literal, key
    script = guest.script(WINDOWS, "kdump_settings", variables)
    assert windows_script_name(script) == "kdump_settings"
    assert script_variables(script) == (variables or {})


def test_the_settings_interpretation_follows_the_ps1():
    ps1 = guest.script(WINDOWS, "kdump_settings")
    assert "'1', '2', '7'" in ps1 and "NMICrashDump = 1; AutoReboot = 1" in ps1
    action, after, error = crash_control_after(
        facts(crash_dump_enabled=0, auto_reboot=0), {"ACTION": "arm", "CRASH_DUMP_ENABLED": "7"}
    )
    assert (action, error, after) == (
        "arm",
        "",
        {"crash_dump_enabled": 7, "nmi_crash_dump": 1, "auto_reboot": 1},
    )
    _, after, error = crash_control_after(facts(), {"ACTION": "arm", "CRASH_DUMP_ENABLED": "3"})
    assert error == "CRASH_DUMP_ENABLED must be 1, 2 or 7, got '3'" and after["crash_dump_enabled"] == 7
    _, after, error = crash_control_after(
        facts(nmi_crash_dump=1),
        {"ACTION": "restore", "RESTORE": "nmi_crash_dump", "BEFORE_nmi_crash_dump": ""},
    )
    assert error == "" and after["nmi_crash_dump"] is None  # absent before: removed
    report = parse_report(
        interpret_windows_script("kdump_settings", facts(nmi_crash_dump=None), {"ACTION": "report"}),
        "kdump_settings",
    )
    assert report.complete and report.get("nmi_crash_dump_before") == "" and report.get("error") == ""


def test_a_small_dump_is_not_armed_and_an_absent_nmi_crash_dump_is(make_lab):
    lab = make_lab([windows("small"), windows("absent")])
    lab.lab.guests[lab.id("small")].crash_control["crash_dump_enabled"] = 3
    lab.lab.guests[lab.id("absent")].crash_control["nmi_crash_dump"] = None
    result = kdump_armed(tags={"chaos:nmi": "allowed"}, configuration=lab.configuration())
    small = result["instances"][lab.id("small")]
    assert small["verdict"] == "not-armed"
    assert small["checks"]["crash_dump_enabled"] == {
        "status": "fail",
        "found": "small (a minidump in %SystemRoot%\\Minidump, not the DumpFile)",
        "expected": "complete, kernel or automatic",
    }
    absent = result["instances"][lab.id("absent")]
    assert absent["verdict"] == "armed" and absent["checks"]["nmi_crash_dump"]["found"].startswith("absent")
