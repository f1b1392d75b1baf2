"""A real Debian bookworm guest: Debian's kernel, systemd, GRUB and kdump-tools, armed by the
extension from unarmed (or armed by its own files from the first boot), crashed by an NMI, its
dump found where kdump-tools puts it.

One lab for each class, the tests in order (each step needs the one before). The image is
built once (mmdebstrap, about 90 s) and cached; the guest boots through its own GRUB under TCG.
These tests need root and the Debian packages that scripts/setup.sh installs.
"""

import base64
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import ROOT, failed_probes, opted_in, run_experiment, start_lab, vary

from chaosec2panic.actions import arm_kdump
from chaosec2panic.analysis import summarise_log
from chaosec2panic.lab.debian import DebianGuest
from chaosec2panic.probes import crash_dump_present, crash_dumps, kdump_armed
from chaosec2panic.recovery import parse_iso
from chaosec2panic.rollbacks import restore_kdump_settings

pytestmark = pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="mmdebstrap is not installed")

CLI = str(Path(sys.executable).with_name("chaosec2panic"))
NAME = "debian-unarmed"
ARMED = "debian-armed"
SIGHTING_LAG = 3.0  # seconds the lab may see a real guest's heartbeat after it was sent


def debian_lab(tmp_path_factory, entry: dict):
    with pytest.MonkeyPatch.context() as monkeypatch:
        running = start_lab([entry], tmp_path_factory.mktemp("ledger") / "ledger.json", monkeypatch)
        yield running
        running.server.stop()


@pytest.fixture(scope="class")
def lab(tmp_path_factory):
    yield from debian_lab(tmp_path_factory, opted_in(NAME, kind="debian", tags={"role": "unarmed"}))


@pytest.fixture(scope="class")
def armed_lab(tmp_path_factory):
    entry = opted_in(ARMED, kind="debian", kdump=True, tags={"role": "crash-capture"})
    yield from debian_lab(tmp_path_factory, entry)


def inside(lab, script: str, name: str = NAME) -> str:
    """What ``script`` prints in the guest ``name``, run as root by its agent."""
    answer = lab.lab.guests[lab.id(name)].run_command(script, timeout=60)
    assert answer.status == "Success", answer.stderr
    return answer.stdout


def assert_nmi_account(dump: dict, dmesg: str) -> None:
    """The dump's own account of its crash, read on the instance from the dmesg kdump-tools saved
    beside it: the NMI panic, with the NMI handler in the top of its call trace."""
    account = dump["crash_account"]
    assert account is not None, dump["crash_account_reason"]
    assert (account["source"], account["file"]) == ("dmesg-file", dmesg), account
    assert (account["panic_message"], account["nmi_panic"]) == ("NMI: Not continuing", True), account
    assert account["cpu"] is not None and account["comm"], account
    functions = {frame.removeprefix("? ").split("+")[0].split(".")[0] for frame in account["call_trace"]}
    assert functions & {"exc_nmi", "unknown_nmi_error"}, account
    assert 0 < len(account["call_trace"]) <= 12, account


class TestDebianGuest:
    CONFIG: ClassVar = {"chaosec2panic_poll_interval": 0.5}

    def test_it_is_debian_booted_by_its_own_grub(self, lab):
        guest = lab.lab.guests[lab.id(NAME)]
        assert isinstance(guest, DebianGuest) and "-kernel" not in guest.command_line()
        assert "BOOT_IMAGE=/boot/vmlinuz-" in inside(lab, "cat /proc/cmdline")
        assert "VERSION_CODENAME=bookworm" in inside(lab, "cat /etc/os-release")

    def test_kdump_armed_says_not_armed_and_why(self, lab):
        verdict = kdump_armed(instance_ids=[lab.id(NAME)], configuration=lab.configuration(**self.CONFIG))
        found = verdict["instances"][lab.id(NAME)]
        assert verdict["armed"] is False and found["verdict"] == "not-armed"
        assert found["checks"]["crash_kernel_loaded"]["status"] == "fail"
        assert found["checks"]["unknown_nmi_panic"]["found"] == "0"
        assert "not-operational" in found["checks"]["kdump_service"]["found"]
        assert "Not ready to kdump" in inside(lab, "kdump-config status")

    def test_arm_kdump_arms_it_as_kdump_config_sees_it(self, lab):
        done = arm_kdump(instance_ids=[lab.id(NAME)], configuration=lab.configuration(**self.CONFIG))
        assert done["instances"][lab.id(NAME)].get("error") in (None, ""), done
        assert "ready to kdump" in inside(lab, "kdump-config status")
        assert "crashkernel=" in inside(lab, "cat /proc/cmdline")
        verdict = kdump_armed(instance_ids=[lab.id(NAME)], configuration=lab.configuration(**self.CONFIG))
        assert verdict["armed"] is True, verdict

    def test_an_nmi_through_the_chaos_cli_leaves_a_flattened_dump_where_debian_puts_it(self, lab, tmp_path):
        experiment = Path(shutil.copy(ROOT / "experiments" / "crash-capture.yaml", tmp_path / "e.yaml"))
        vary(experiment, slo=600, role="unarmed")
        journal = run_experiment(lab, experiment, tmp_path / "journal.json", CHAOSEC2PANIC_POLL_INTERVAL="1")
        assert journal["deviated"] is False, failed_probes(journal)
        outputs = {r["activity"]["name"]: r["output"] for r in journal["run"]}
        dump = outputs["crash-dumps"]["instances"][lab.id(NAME)]
        assert dump["verdict"] == "complete-dump" and dump["format"] == "flattened", dump
        assert dump["nmi_panic"] is True
        assert dump["path"].startswith("/var/crash/2") and "/dump.2" in dump["path"]
        assert_nmi_account(dump, dump["path"].replace("/dump.", "/dmesg."))
        listing = inside(lab, "ls /var/crash/*/")
        assert "dmesg." in listing and "dump-incomplete" not in listing
        assert crash_dump_present(instance_ids=[lab.id(NAME)], configuration=lab.configuration(**self.CONFIG))

    def test_restore_puts_the_unarmed_settings_back(self, lab):
        restore_kdump_settings(instance_ids=[lab.id(NAME)], configuration=lab.configuration(**self.CONFIG))
        assert "Not ready to kdump" in inside(lab, "kdump-config status")
        assert inside(lab, "sysctl -n kernel.unknown_nmi_panic").strip() == "0"
        assert "USE_KDUMP=0" in inside(lab, "grep ^USE_KDUMP= /etc/default/kdump-tools")


class TestArmedDebianGuest:
    """Armed by its own files as a Debian admin arms kdump-tools: ready from the first boot."""

    CONFIG: ClassVar = {"chaosec2panic_poll_interval": 0.5}

    def test_kdump_armed_says_armed_from_the_first_boot(self, armed_lab):
        assert "current state   : ready to kdump" in inside(armed_lab, "kdump-config status", ARMED)
        line = inside(armed_lab, "cat /proc/cmdline", ARMED)
        assert "crashkernel=384M-:128M" in line and "BOOT_IMAGE=/boot/vmlinuz-" in line
        asked = "sysctl -n kernel.unknown_nmi_panic kernel.panic kernel.panic_on_oops"
        assert inside(armed_lab, asked, ARMED).split() == ["1", "0", "1"]
        config = armed_lab.configuration(**self.CONFIG)
        verdict = kdump_armed(instance_ids=[armed_lab.id(ARMED)], configuration=config)
        assert verdict["armed"] is True, verdict
        assert verdict["instances"][armed_lab.id(ARMED)]["verdict"] == "armed", verdict

    def test_the_stock_crash_capture_experiment_passes_through_the_chaos_cli(self, armed_lab, tmp_path):
        experiment = ROOT / "experiments" / "crash-capture.yaml"
        journal = run_experiment(
            armed_lab, experiment, tmp_path / "journal.json", CHAOSEC2PANIC_POLL_INTERVAL="1"
        )
        assert journal["deviated"] is False, failed_probes(journal)
        outputs = {r["activity"]["name"]: r["output"] for r in journal["run"]}
        dump = outputs["crash-dumps"]["instances"][armed_lab.id(ARMED)]
        assert dump["verdict"] == "complete-dump" and dump["format"] == "flattened", dump
        assert dump["path"].startswith("/var/crash/2") and "/dump.2" in dump["path"]
        assert "dump-incomplete" not in inside(armed_lab, "ls /var/crash/*/", ARMED)
        # The agent is dated by its own systemd unit (lab-agent.service here, amazon-ssm-agent on
        # an instance): from below, never after the lab saw its first heartbeat of the new boot.
        [line] = [
            o["timelines"][armed_lab.id(ARMED)]
            for o in outputs.values()
            if isinstance(o, dict) and "timelines" in o
        ]
        agent = line["evidence"]["agent_online"]
        assert agent["source"] == "agent-start" and agent["lower_bound"] is True, agent
        nmi = armed_lab.events("nmi", ARMED)[0]["epoch"]
        online = next(e["epoch"] for e in armed_lab.events("agent-online", ARMED) if e["epoch"] > nmi)
        started = parse_iso(agent["at"]).timestamp()
        assert started - 0.005 <= online, (agent, online)
        assert online - started <= SIGHTING_LAG + line["evidence"]["kernel_back"]["uncertainty_s"], (
            agent,
            online,
        )

    def test_crash_dumps_and_inspect_name_the_nmi_panic(self, armed_lab, tmp_path):
        config = armed_lab.configuration(**self.CONFIG)
        dump = crash_dumps(instance_ids=[armed_lab.id(ARMED)], configuration=config)["instances"]
        found = dump[armed_lab.id(ARMED)]
        assert found["verdict"] == "complete-dump" and found["nmi_panic"] is True, found
        assert "NMI" in found["panic_message"], found
        assert_nmi_account(found, found["path"].replace("/dump.", "/dmesg."))
        dmesg = tmp_path / "dmesg.txt"
        # gzipped: Run Command keeps only the first 24,000 characters of its output
        packed = inside(armed_lab, "gzip -9c /var/crash/2*/dmesg.2* | base64 -w 0", ARMED)
        dmesg.write_bytes(gzip.decompress(base64.b64decode(packed)))
        done = subprocess.run(
            [CLI, "inspect", "--json", str(dmesg)], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        [read] = json.loads(done.stdout)
        assert (read["kind"], read["nmi_panic"]) == ("dmesg", True), read
        assert read["panic_message"] == found["panic_message"], read
        # The account the instance sent is the top of the whole log's own trace.
        whole = summarise_log(dmesg.read_text().splitlines())
        frames = [f.strip() for f in whole.call_trace if f.startswith(" ")]  # not the registers
        assert found["crash_account"]["call_trace"] == frames[:12], whole
