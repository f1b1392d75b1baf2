"""A real Debian bookworm guest: Debian's kernel, systemd, GRUB and kdump-tools, armed by the
extension from unarmed, crashed by an NMI, its dump found where kdump-tools puts it.

One lab for the whole class, the tests in order (each step needs the one before). The image is
built once (mmdebstrap, about 90 s) and cached; the guest boots through its own GRUB under TCG.
These tests need root and the Debian packages that scripts/setup.sh installs.
"""

import shutil
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import ROOT, failed_probes, opted_in, run_experiment, start_lab, vary

from chaosec2panic.actions import arm_kdump
from chaosec2panic.lab.debian import DebianGuest
from chaosec2panic.probes import crash_dump_present, kdump_armed
from chaosec2panic.rollbacks import restore_kdump_settings

pytestmark = pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="mmdebstrap is not installed")

NAME = "debian-unarmed"


@pytest.fixture(scope="class")
def lab(tmp_path_factory):
    fleet = [opted_in(NAME, kind="debian", tags={"role": "unarmed"})]
    with pytest.MonkeyPatch.context() as monkeypatch:
        running = start_lab(fleet, tmp_path_factory.mktemp("ledger") / "ledger.json", monkeypatch)
        yield running
        running.server.stop()


def inside(lab, script: str) -> str:
    """What ``script`` prints in the guest, run as root by its agent."""
    answer = lab.lab.guests[lab.id(NAME)].run_command(script, timeout=60)
    assert answer.status == "Success", answer.stderr
    return answer.stdout


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
        listing = inside(lab, "ls /var/crash/*/")
        assert "dmesg." in listing and "dump-incomplete" not in listing
        assert crash_dump_present(instance_ids=[lab.id(NAME)], configuration=lab.configuration(**self.CONFIG))

    def test_restore_puts_the_unarmed_settings_back(self, lab):
        restore_kdump_settings(instance_ids=[lab.id(NAME)], configuration=lab.configuration(**self.CONFIG))
        assert "Not ready to kdump" in inside(lab, "kdump-config status")
        assert inside(lab, "sysctl -n kernel.unknown_nmi_panic").strip() == "0"
        assert "USE_KDUMP=0" in inside(lab, "grep ^USE_KDUMP= /etc/default/kdump-tools")
