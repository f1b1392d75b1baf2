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
import re
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterator

import boto3
import pytest
import yaml
from conftest import ROOT, failed_probes, lab_up_process, opted_in, run_experiment, start_lab, vary

from chaosec2panic.actions import arm_kdump, send_nmi
from chaosec2panic.analysis import summarise_log
from chaosec2panic.lab.debian import DebianGuest
from chaosec2panic.probes import crash_dump_present, crash_dumps, kdump_armed, recovered_within
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


@dataclass
class Twin:
    """A simulated guest's lab, served by its own process: its instance id and the activities'
    configuration for it."""

    id: str
    config: Dict[str, Any]


@contextmanager
def simulated_twin(tmp_path: Path, **spec: Any) -> Iterator[Twin]:
    """One simulated Debian guest (``spec``: its fleet settings) in a lab of its own process
    (a lab resets moto's process-wide state), for the same activities to run on it and on the
    real one; this process's environment points at it meanwhile."""
    fleet = tmp_path / "twin.yaml"
    fleet.write_text(yaml.safe_dump({"instances": [opted_in("twin", os="debian", memory_mib=1536, **spec)]}))
    proc, text = lab_up_process(fleet, "--time-scale", "0.05")
    try:
        found = re.search(r"twin\s+(i-\w+)", text)
        assert found and text.splitlines()[-1].startswith("export "), text
        ledger = str(tmp_path / "twin-ledger.json")
        with pytest.MonkeyPatch.context() as monkeypatch:
            for key, value in re.findall(r"(\w+)=(\S+)", text.splitlines()[-1]):
                monkeypatch.setenv(key, value)
            boto3.DEFAULT_SESSION = None
            config = {"chaosec2panic_ledger_path": ledger, "chaosec2panic_poll_interval": 0.1}
            yield Twin(found.group(1), config)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        boto3.DEFAULT_SESSION = None  # its session held the twin's credentials


def checks_seen(verdict: Dict[str, Any], instance_id: str) -> Dict[str, Any]:
    """What ``kdump_armed`` concluded of one instance, check by check."""
    found = verdict["instances"][instance_id]
    return {"verdict": found["verdict"], **{k: c["status"] for k, c in found["checks"].items()}}


def dump_seen(dump: Dict[str, Any]) -> Dict[str, Any]:
    """What ``crash_dumps`` found of one dump, its file names as patterns (the minute differs)."""
    account = dump["crash_account"] or {}
    return {
        **{k: dump[k] for k in ("verdict", "format", "complete", "nmi_panic", "panic_message", "problems")},
        "path": re.sub(r"\d{12}", "YYYYMMDDHHMM", dump["path"]),
        "account": {k: account.get(k) for k in ("source", "panic_message", "nmi_panic")},
        "account_file": re.sub(r"\d{12}", "YYYYMMDDHHMM", account.get("file", "")),
        "evidence": sorted((m, e["source"]) for m, e in dump["evidence"].items()),
    }


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

    def test_the_simulated_debian_guest_judges_the_same_unarmed_settings_alike(self, lab, tmp_path):
        # The stand-in without kdump: true has no kdump-tools (as Debian's own cloud images);
        # given the real guest's reservation (kdump-tools' 128M) and sysctl, it fails alike.
        real = kdump_armed(instance_ids=[lab.id(NAME)], configuration=lab.configuration(**self.CONFIG))
        with simulated_twin(tmp_path, kdump=False, crashkernel_mib=128, unknown_nmi_panic=0) as twin:
            simulated = kdump_armed(instance_ids=[twin.id], configuration=twin.config)
        assert checks_seen(simulated, twin.id) == checks_seen(real, lab.id(NAME))

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

    def test_kdump_armed_says_armed_from_the_first_boot(self, armed_lab, tmp_path):
        assert "current state   : ready to kdump" in inside(armed_lab, "kdump-config status", ARMED)
        line = inside(armed_lab, "cat /proc/cmdline", ARMED)
        assert "crashkernel=384M-:128M" in line and "BOOT_IMAGE=/boot/vmlinuz-" in line
        asked = "sysctl -n kernel.unknown_nmi_panic kernel.panic kernel.panic_on_oops"
        assert inside(armed_lab, asked, ARMED).split() == ["1", "0", "1"]
        config = armed_lab.configuration(**self.CONFIG)
        verdict = kdump_armed(instance_ids=[armed_lab.id(ARMED)], configuration=config)
        assert verdict["armed"] is True, verdict
        assert verdict["instances"][armed_lab.id(ARMED)]["verdict"] == "armed", verdict
        with simulated_twin(tmp_path, kdump=True, crashkernel_mib=128) as twin:
            simulated = kdump_armed(instance_ids=[twin.id], configuration=twin.config)
        assert checks_seen(simulated, twin.id) == checks_seen(verdict, armed_lab.id(ARMED))

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
        # The simulated Debian guest, crashed alike, leaves a dump that reads as the real one.
        with simulated_twin(tmp_path, kdump=True, crashkernel_mib=128) as twin:
            send_nmi(instance_ids=[twin.id], configuration=twin.config)
            assert recovered_within(seconds=600, instance_ids=[twin.id], configuration=twin.config)
            simulated = crash_dumps(instance_ids=[twin.id], configuration=twin.config)["instances"]
        assert dump_seen(simulated[twin.id]) == dump_seen(found)
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
