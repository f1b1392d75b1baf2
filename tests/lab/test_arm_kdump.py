"""arm_kdump and restore_kdump_settings against the lab: the guest scripts change the simulated
guest's files for real, and the guest boots from them."""

import json

import pytest
from conftest import opted_in, sim_guest

from chaosec2panic import guest
from chaosec2panic.actions import arm_kdump, send_nmi
from chaosec2panic.errors import Ec2PanicError, InvalidRequest, Refused
from chaosec2panic.guest.parsers import parse_report, settings_change
from chaosec2panic.probes import crash_dump_present, kdump_armed, recovered_within
from chaosec2panic.rollbacks import restore_kdump_settings


def armed(lab, name: str) -> bool:
    return kdump_armed(instance_ids=[lab.id(name)], configuration=lab.configuration())["armed"]


@pytest.mark.parametrize("os_name", ["rhel", "amazon-linux-2", "ubuntu", "debian", "suse"])
def test_an_unarmed_guest_is_armed_rebooted_and_then_crashes_with_a_dump(make_lab, os_name):
    lab = make_lab([opted_in("bare", os=os_name, kdump=False, crashkernel_mib=0, unknown_nmi_panic=0)])
    conf = lab.configuration()
    assert not armed(lab, "bare")
    result = arm_kdump(instance_ids=[lab.id("bare")], timeout=60, configuration=conf)
    found = result["instances"][lab.id("bare")]
    assert result["armed"] and result["changed"] and found["rebooted"] and found["error"] == ""
    settings = found["settings"]
    assert settings["crashkernel"] == {
        "before": "",
        "after": "1G-4G:192M,4G-64G:256M,64G-:512M",
        "changed": True,
    }
    assert settings["unknown_nmi_panic"] == {"before": "0", "after": "1", "changed": True}
    assert settings["nmi_sysctl_file"] == {"before": "absent", "after": "1", "changed": True}
    assert settings["kdump_enabled"]["after"] == "enabled" and settings["packages"]["changed"]
    guest = lab.lab.guests[lab.id("bare")]
    assert (guest.crashkernel_mib, guest.crash_loaded, guest.unknown_nmi_panic) == (256, True, 1)
    assert len(lab.events("reboot", "bare")) == 1 and armed(lab, "bare")
    send_nmi(instance_ids=[lab.id("bare")], configuration=conf)
    assert recovered_within(30, configuration=conf) is True
    assert crash_dump_present(configuration=conf) is True


def test_a_second_arm_changes_nothing_and_says_so(make_lab):
    lab = make_lab([opted_in("bare", os="rhel", kdump=False)])
    conf = lab.configuration()
    first = arm_kdump(instance_ids=[lab.id("bare")], configuration=conf)["instances"][lab.id("bare")]
    # crash memory was reserved already: no reboot, the service is started at once
    assert first["changed"] and not first["rebooted"] and first["armed"]
    assert first["settings"]["crashkernel"] == {"before": "256M", "after": "256M", "changed": False}
    again = arm_kdump(instance_ids=[lab.id("bare")], configuration=conf)
    assert again["changed"] is False and again["armed"] is True
    assert not any(s["changed"] for s in again["instances"][lab.id("bare")]["settings"].values())
    assert lab.events("reboot") == []


def test_restore_undoes_exactly_what_arm_changed_and_is_idempotent(make_lab):
    lab = make_lab([opted_in("bare", os="ubuntu", kdump=False, crashkernel_mib=0, unknown_nmi_panic=0)])
    conf = lab.configuration()
    arm_kdump(instance_ids=[lab.id("bare")], configuration=conf)
    record = json.loads((lab.ledger.parent / f"{lab.ledger.stem}-kdump-settings.json").read_text())
    assert record["instances"][lab.id("bare")]["settings"]["crashkernel"]["before"] == ""
    done = restore_kdump_settings(configuration=conf)["instances"][lab.id("bare")]
    assert done["rebooted"] and done["back"] and done["error"] == ""
    assert done["settings"]["crashkernel"]["after"] == ""
    assert done["settings"]["unknown_nmi_panic"]["after"] == "0"
    assert done["settings"]["nmi_sysctl_file"]["after"] == "absent"
    assert done["settings"]["kdump_enabled"]["after"] == "disabled"
    assert done["packages_left_installed"] == ["kdump-tools"]
    guest = lab.lab.guests[lab.id("bare")]
    assert (guest.crashkernel, guest.crashkernel_mib, guest.crash_loaded, guest.unknown_nmi_panic) == (
        "",
        0,
        False,
        0,
    )
    assert not (guest.root / "etc/sysctl.d/99-chaosec2panic.conf").exists()
    assert len(lab.events("reboot", "bare")) == 2
    again = restore_kdump_settings(configuration=conf)
    assert again["instances"] == {}
    named = restore_kdump_settings(instance_ids=[lab.id("bare")], configuration=conf)
    assert named["instances"][lab.id("bare")]["note"] == "nothing recorded by arm_kdump"
    assert len(lab.events("reboot", "bare")) == 2


def test_restore_leaves_what_was_there_before(make_lab):
    lab = make_lab([opted_in("half", os="suse", kdump=False, unknown_nmi_panic=0)])
    conf = lab.configuration()
    arm_kdump(instance_ids=[lab.id("half")], configuration=conf)
    done = restore_kdump_settings(configuration=conf)["instances"][lab.id("half")]
    assert done["settings"]["crashkernel"] == {"before": "256M", "after": "256M", "changed": False}
    assert not done["rebooted"] and lab.events("reboot") == []
    guest = lab.lab.guests[lab.id("half")]
    assert (guest.crash_loaded, guest.unknown_nmi_panic, guest.crashkernel_mib) == (False, 0, 256)


def test_the_default_fleet_unarmed_guest_becomes_armed(make_lab):
    lab = make_lab([opted_in("rhel-unarmed", os="rhel", kdump=False)])
    assert not armed(lab, "rhel-unarmed")
    assert arm_kdump(tags={"role": "rhel-unarmed"}, configuration=lab.configuration())["armed"]
    assert armed(lab, "rhel-unarmed")


def test_an_explicit_crashkernel_replaces_the_reservation_and_reboots(make_lab):
    lab = make_lab([opted_in("small", os="amazon-linux-2023", crashkernel_mib=64)])
    result = arm_kdump(instance_ids=[lab.id("small")], crashkernel="256M", configuration=lab.configuration())
    found = result["instances"][lab.id("small")]
    assert found["settings"]["crashkernel"] == {"before": "64M", "after": "256M", "changed": True}
    assert found["rebooted"] and lab.lab.guests[lab.id("small")].crashkernel_mib == 256


def test_guardrails_and_arguments_are_checked_before_anything_runs(make_lab):
    lab = make_lab(
        [
            opted_in("a", kdump=False),
            opted_in("b", kdump=False),
            {"name": "c", "kdump": False, "tags": {"role": "c"}},
        ]
    )
    conf = lab.configuration()
    with pytest.raises(Refused, match="more than max_instances=1"):
        arm_kdump(tags={"chaos:nmi": "allowed"}, configuration=conf)
    with pytest.raises(Refused, match="missing opt-in tag"):
        arm_kdump(instance_ids=[lab.id("c")], configuration=conf)
    with pytest.raises(InvalidRequest, match="crashkernel must be"):
        arm_kdump(instance_ids=[lab.id("a")], crashkernel="256M; reboot", configuration=conf)
    with pytest.raises(InvalidRequest, match="unknown windows_dump_type 'small'"):
        arm_kdump(instance_ids=[lab.id("a")], windows_dump_type="small", configuration=conf)
    assert lab.events("command") == []


def test_an_unsupported_system_is_refused_and_nothing_changes(make_lab):
    lab = make_lab([opted_in("odd", os="rhel", kdump=False)])
    guest = lab.lab.guests[lab.id("odd")]
    for tool in ("dnf", "yum"):
        (guest.root / "sim-bin" / tool).unlink()
    with pytest.raises(
        Ec2PanicError, match=r"no package manager .* to install kexec-tools; nothing was changed"
    ):
        arm_kdump(instance_ids=[lab.id("odd")], configuration=lab.configuration())
    assert not guest.crash_loaded and lab.events("reboot") == []


def test_no_reboot_leaves_it_pending(make_lab):
    lab = make_lab([opted_in("bare", os="fedora", kdump=False, crashkernel_mib=0)])
    result = arm_kdump(instance_ids=[lab.id("bare")], reboot=False, configuration=lab.configuration())
    found = result["instances"][lab.id("bare")]
    assert found["pending_reboot"] and not found["rebooted"] and result["armed"] is False
    assert lab.events("reboot") == []


def test_windows_crashcontrol_is_armed_and_restored(make_lab):
    lab = make_lab([opted_in("win", os="windows-2022", crash_dump_enabled="none", auto_reboot=False)])
    conf = lab.configuration()
    result = arm_kdump(instance_ids=[lab.id("win")], windows_dump_type="kernel", configuration=conf)
    found = result["instances"][lab.id("win")]
    assert found["settings"] == {
        "crash_dump_enabled": {"before": "0", "after": "2", "changed": True},
        "nmi_crash_dump": {"before": "1", "after": "1", "changed": False},
        "auto_reboot": {"before": "0", "after": "1", "changed": True},
    }
    assert found["rebooted"] and found["armed"]
    guest = lab.lab.guests[lab.id("win")]
    assert guest.effective == {"crash_dump_enabled": 2, "nmi_crash_dump": 1, "auto_reboot": 1}
    again = arm_kdump(instance_ids=[lab.id("win")], windows_dump_type="kernel", configuration=conf)
    assert again["changed"] is False and len(lab.events("reboot", "win")) == 1
    done = restore_kdump_settings(configuration=conf)["instances"][lab.id("win")]
    assert done["rebooted"] and guest.crash_control == {
        "crash_dump_enabled": 0,
        "nmi_crash_dump": 1,
        "auto_reboot": 0,
    }


def test_the_real_guests_system_is_refused_by_the_script(tmp_path):
    # A simulated guest with the QEMU guests' own system: an os the script does not know.
    g = sim_guest(tmp_path / "root", os="crashlab", kdump=False)
    out = g.run_command(guest.script(guest.PLATFORMS["linux"], "kdump_settings", {"ACTION": "arm"}))
    change = settings_change(parse_report(out.stdout, "kdump_settings"))
    assert out.code == 0 and change.changed == []
    assert change.error.startswith("unsupported system crashlab") and change.error.endswith(
        "nothing was changed"
    )
