"""Real guests: a Debian kernel under QEMU that really panics, really dumps, really reboots.

Each class shares one lab of real guests (booting one costs seconds of TCG time). These tests
need root and the Debian packages that scripts/setup.sh installs.
"""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import boto3
import pytest
from conftest import (
    ROOT,
    failed_probes,
    lab_up_process,
    opted_in,
    run_experiment,
    sim_guest,
    start_lab,
    variant,
    vary,
    wait_for,
)

from chaosec2panic import guest
from chaosec2panic.analysis import summarise_log
from chaosec2panic.guest.parsers import dump_files, kdump_verdict, parse_report
from chaosec2panic.lab.qemuguest import QemuGuest
from chaosec2panic.probes import instance_healthy, kdump_armed
from chaosec2panic.recovery import parse_iso
from chaosec2panic.ssm import run_script

LINUX = guest.PLATFORMS["linux"]

SIGHTING_LAG = 3.0  # seconds the lab may see a real guest's console line or heartbeat after the fact


def real(name: str, role: str, **settings) -> dict:
    return opted_in(name, kind="qemu", tags={"role": role}, **settings)


@pytest.fixture(scope="class")
def lab(request, tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        running = start_lab(request.cls.FLEET, tmp_path_factory.mktemp("ledger") / "ledger.json", monkeypatch)
        yield running
        running.server.stop()


def run_failing(lab, tmp_path: Path, role: str, slo: float) -> tuple[dict, dict]:
    """Run crash-capture.yaml against ``role`` without the kdump guard; the journal and its outputs."""
    experiment = vary(variant(tmp_path, allow_unarmed=True), slo=slo, role=role)
    journal = run_experiment(lab, experiment, tmp_path / "journal.json", CHAOSEC2PANIC_POLL_INTERVAL="0.5")
    assert journal["deviated"] is True
    return journal, {r["activity"]["name"]: r["output"] for r in journal["run"]}


def checks(stdout: str) -> dict:
    verdict = kdump_verdict(parse_report(stdout, "kdump_status"), 1.0)
    return {"verdict": verdict.verdict, **{n: c.status for n, c in verdict.checks.items()}}


class TestArmedRealGuests:
    FLEET: ClassVar = [real("real-1", "crash-capture"), real("real-2", "crash-capture")]

    def test_two_guests_within_512_mib_each_on_one_vcpu(self, lab):
        guests = [g for g in lab.lab.guests.values() if isinstance(g, QemuGuest)]
        assert len(guests) == 2 and all(g.phase == "up" for g in guests)
        for g in guests:
            line = g.command_line()
            assert int(line[line.index("-m") + 1]) <= 512 and line[line.index("-smp") + 1] == "1"

    def test_guest_scripts_read_the_real_guest_as_they_read_the_simulated_one(self, lab, tmp_path):
        ssm = boto3.client("ssm")
        real_answer = run_script(ssm, {lab.id("real-1"): LINUX}, "kdump_status")[lab.id("real-1")]
        assert real_answer.ok, real_answer.error
        twin = sim_guest(
            tmp_path / "twin", os="amazon-linux-2023", memory_mib=384, crashkernel_mib=128, disk_free_gib=0.5
        )
        sim_answer = twin.run_command(guest.script(LINUX, "kdump_status"))
        assert (
            checks(real_answer.stdout)
            == checks(sim_answer.stdout)
            == {
                "verdict": "armed",
                "crash_kernel_loaded": "pass",
                "crashkernel_reserved": "pass",
                "unknown_nmi_panic": "pass",
                "kdump_service": "pass",
                "dump_space": "pass",
            }
        )
        real_report = parse_report(real_answer.stdout, "kdump_status")
        assert set(real_report.values) == set(parse_report(sim_answer.stdout, "kdump_status").values)
        assert real_report.get("kernel_release").startswith("6.")

    def test_kdump_armed_probe_on_real_guests(self, lab):
        result = kdump_armed(
            tags={"role": "crash-capture"}, configuration={"chaosec2panic_poll_interval": 0.2}
        )
        assert result["armed"] is True and len(result["instances"]) == 2

    def test_a_real_nmi_ends_in_a_complete_dump_and_a_recovered_guest(self, lab, tmp_path):
        journal = run_experiment(
            lab,
            ROOT / "experiments" / "crash-capture.yaml",
            tmp_path / "journal.json",
            CHAOSEC2PANIC_POLL_INTERVAL="0.3",
        )
        assert journal["status"] == "completed" and journal["deviated"] is False, failed_probes(journal)
        outputs = {r["activity"]["name"]: r["output"] for r in journal["run"]}
        [injection] = outputs["send-nmi-to-one-target"]["injections"]
        hit = lab.lab.guests[injection["instance_id"]]
        dump = outputs["crash-dumps"]["instances"][hit.instance_id]
        assert dump["verdict"] == "complete-dump" and dump["format"] == "kdump-compressed"
        assert (dump["nmi_panic"], dump["panic_message"]) == (
            True,
            "NMI: Not continuing",
        )  # real vmcore-dmesg
        assert dump["kernel_release"] == dump["running_kernel"] == hit.kit.kernel_release
        assert dump["path"].startswith("/var/crash/127.0.0.1-") and dump["path"].endswith("/vmcore")
        assert dump["size"] > 10_000_000
        [written] = lab.events("dump-written", hit.spec.name)
        assert written["detail"] == dump["path"]
        seconds = outputs["recovery-seconds"]["instances"][hit.instance_id]
        truth = (
            lab.events("recovered", hit.spec.name)[0]["epoch"] - lab.events("nmi", hit.spec.name)[0]["epoch"]
        )
        assert 5 < seconds < 120 and abs(seconds - truth) < 2.5
        assert lab.nmi_names() == [hit.spec.name]
        # Each milestone against the moment the lab saw it on the serial console or did it (host
        # clock): within a second beyond its error bar. The busybox guest sets its clock from the
        # hardware clock's whole seconds and TCG slows it further: a clock found outside its
        # command's window is the only contradiction allowed, and it is said.
        line = outputs["recovery-seconds"]["timelines"][hit.instance_id]
        skew = re.compile(r"^the guest's clock was [\d.]+s (behind|ahead of) the window its answer came in")
        assert all(skew.match(c) for c in line["conflicts"]), line["conflicts"]
        nmi = lab.events("nmi", hit.spec.name)[0]["epoch"]
        after = [e for e in lab.events(name=hit.spec.name) if e["epoch"] >= nmi]
        seen = {e["kind"]: e["epoch"] for e in reversed(after)}  # the first of each kind
        bar = line["evidence"]["nmi_sent"]
        assert abs(parse_iso(bar["at"]).timestamp() - seen["nmi"]) <= 1.0 + bar["uncertainty_s"], bar
        # The lab's other times are when the host saw the console line or the heartbeat: never
        # before the moment, and after it by the sighting's lag (a kernel's first lines reach the
        # serial port only once its console driver is up, and TCG on a busy machine slows both;
        # a clean-clone run saw the capture kernel's 1.7 s after the timeline's start).
        for milestone, kind in (
            ("capture_started", "capture-start"),
            ("kernel_back", "boot"),
            ("agent_online", "agent-online"),
        ):
            bar = line["evidence"][milestone]
            at = parse_iso(bar["at"]).timestamp()
            assert at - bar["uncertainty_s"] - 0.005 <= seen[kind], (milestone, bar, seen[kind])
            assert seen[kind] - at <= SIGHTING_LAG + bar["uncertainty_s"], (milestone, bar, seen[kind])
        assert line["evidence"]["capture_started"]["source"] == "console-printk"
        assert line["evidence"]["kernel_back"]["source"] == "boot-time"
        # The vmcore this guest's kdump wrote, read by `analyze` without symbols: copied off its
        # crash disk (mounted at /var/crash) with debugfs, which reads the image unmounted.
        ssm = boto3.client("ssm")  # first flush what the guest's new boot may hold of that disk
        synced = ssm.send_command(
            InstanceIds=[hit.instance_id],
            DocumentName="AWS-RunShellScript",
            Parameters={"commands": ["sync"]},
        )["Command"]["CommandId"]
        wait_for(
            lambda: ssm.list_commands(CommandId=synced)["Commands"][0]["Status"],
            lambda status: status not in ("Pending", "InProgress"),
            "sync on the guest",
            interval=0.2,
        )
        vmcore, dmesg = tmp_path / "vmcore", tmp_path / "vmcore-dmesg.txt"
        for name, out in (("vmcore", vmcore), ("vmcore-dmesg.txt", dmesg)):
            inside_disk = dump["path"].removeprefix("/var/crash").rsplit("/", 1)[0] + "/" + name
            done = subprocess.run(
                ["debugfs", "-R", f"dump {inside_disk} {out}", str(hit.disk)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert out.exists() and out.stat().st_size > 0, done.stderr
        done = subprocess.run(
            [str(Path(sys.executable).with_name("chaosec2panic")), "analyze", "--json", str(vmcore)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        told = json.loads(done.stdout)
        assert (told["format"], told["kernel_release"]) == ("kdump-compressed", hit.kit.kernel_release)
        assert (told["panic_message"], told["nmi_panic"]) == ("NMI: Not continuing", True)
        assert (told["cpu"], told["pid"], told["comm"]) == (0, 0, "swapper/0") and told["rip_function"]
        assert any("exc_nmi" in f or "unknown_nmi_error" in f for f in told["call_trace"]), told
        saved = summarise_log(dmesg.read_text().splitlines())  # what kdump saved beside it
        assert told["uptime_seconds"] == saved.uptime_seconds and told["panic_message"] == saved.panic_message

    def test_the_crashed_guest_lists_its_dump_as_the_simulated_one_does(self, lab, tmp_path):
        crashed = lab.nmi_names()[0]
        answer = run_script(
            boto3.client("ssm"), {lab.id(crashed): LINUX}, "crash_dumps", {"DUMP_DIR": "/var/crash"}
        )[lab.id(crashed)]
        real_files, problems = dump_files(parse_report(answer.stdout, "crash_dumps"))
        assert problems == [] and len(real_files) == 1 and real_files[0].head.startswith(b"KDUMP   ")
        twin = sim_guest(tmp_path / "twin", os="amazon-linux-2023")
        twin.nmi()
        wait_for(twin.status, lambda status: status == "ok", "the simulated twin back", interval=0.05)
        sim_files, _ = dump_files(
            parse_report(
                twin.run_command(guest.script(LINUX, "crash_dumps", {"DUMP_DIR": "/var/crash"})).stdout,
                "crash_dumps",
            )
        )
        assert [f.path.rsplit("/", 1)[1] for f in sim_files] == [f.path.rsplit("/", 1)[1] for f in real_files]


class TestFailingRealGuests:
    FLEET: ClassVar = [
        real("calm", "no-panic", unknown_nmi_panic=0),
        real("hang", "hang", kdump=False, panic_timeout=0),
        real("small", "small-crashkernel", crashkernel_mib=64, panic_timeout=5),
    ]

    def test_a_crashkernel_too_small_is_not_armed_and_reboots_without_a_dump(self, lab, tmp_path):
        verdict = kdump_armed(instance_ids=[lab.id("small")])["instances"][lab.id("small")]
        assert verdict["verdict"] == "not-armed"
        assert verdict["checks"]["crashkernel_reserved"]["status"] == "pass"
        assert verdict["checks"]["crash_kernel_loaded"]["status"] == "fail"
        journal, outputs = run_failing(lab, tmp_path, "small-crashkernel", slo=90)
        assert failed_probes(journal) == {"complete-dump-after-each-nmi"}
        assert outputs["recovery-seconds"]["recovered"] == 1
        assert outputs["crash-dumps"]["instances"][lab.id("small")]["verdict"] == "no-dump"

    def test_unknown_nmi_panic_off_reports_no_crash_and_deviates(self, lab, tmp_path):
        journal, outputs = run_failing(lab, tmp_path, "no-panic", slo=20)
        assert failed_probes(journal) == {"hit-instances-back-within-slo"}
        assert outputs["crash-dumps"]["instances"][lab.id("calm")]["verdict"] == "no-dump"
        assert [
            e["kind"] for e in lab.events(name="calm") if e["kind"] in ("nmi", "dazed", "panic", "boot")
        ] == ["boot", "nmi", "dazed"]

    def test_a_hang_misses_the_slo_and_the_rollback_brings_it_back(self, lab, tmp_path):
        journal, _ = run_failing(lab, tmp_path, "hang", slo=15)
        assert failed_probes(journal) == {"hit-instances-back-within-slo"}
        [rollback] = journal["rollbacks"]
        assert rollback["output"]["instances"][lab.id("hang")] == {"actions": ["reboot"], "recovered": True}
        kinds = [
            e["kind"] for e in lab.events(name="hang") if e["kind"] in ("nmi", "panic", "reboot", "recovered")
        ]
        assert kinds == ["nmi", "panic", "reboot", "recovered"]
        assert instance_healthy(instance_ids=[lab.id("hang")]) is True


class TestRealGuestLifecycle:
    FLEET: ClassVar = [real("life", "life")]

    def test_stop_and_start_through_ec2_boot_the_vm_again(self, lab):
        ec2 = boto3.client("ec2")
        before = kdump_armed(instance_ids=[lab.id("life")])["instances"][lab.id("life")]["boot_id"]
        ec2.stop_instances(InstanceIds=[lab.id("life")])
        # Through "stopping", as on AWS: a client waits for "stopped" before it may start again.
        ec2.get_waiter("instance_stopped").wait(
            InstanceIds=[lab.id("life")], WaiterConfig={"Delay": 1, "MaxAttempts": 300}
        )
        status = ec2.describe_instance_status(InstanceIds=[lab.id("life")], IncludeAllInstances=True)
        [stopped] = status["InstanceStatuses"]
        assert stopped["InstanceState"]["Name"] == "stopped"
        assert stopped["InstanceStatus"]["Status"] == "not-applicable"
        ec2.start_instances(InstanceIds=[lab.id("life")])
        wait_for(lambda: instance_healthy(instance_ids=[lab.id("life")]), bool, "healthy again", interval=1)
        after = kdump_armed(instance_ids=[lab.id("life")])["instances"][lab.id("life")]
        assert after["verdict"] == "armed" and after["boot_id"] != before
        kinds = [e["kind"] for e in lab.events(name="life") if e["kind"] in ("stop", "start", "boot")]
        assert kinds == ["boot", "stop", "start", "boot"]


def test_a_killed_lab_leaves_no_qemu_behind(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("instances:\n  - {name: orphan-check, kind: qemu}\n")
    proc, text = lab_up_process(fleet)
    instance_id = re.search(r"orphan-check\s+(i-\w+)", text).group(1)
    assert qemu_of(instance_id), text
    proc.kill()
    proc.wait(timeout=30)
    wait_for(lambda: qemu_of(instance_id), lambda left: left == [], "QEMU gone", timeout=10, interval=0.2)


def qemu_of(instance_id: str) -> list:
    found = subprocess.run(
        ["pgrep", "-f", f"process=chaosec2panic-{instance_id}"], capture_output=True, text=True, check=False
    )
    return found.stdout.split()
