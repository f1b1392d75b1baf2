"""arm_kdump and restore_kdump_settings against the lab: the guest scripts change the simulated
guest's files for real, and the guest boots from them."""

import json
import re
import time
from typing import List

import pytest
from conftest import opted_in, sim_guest

from chaosec2panic import guest
from chaosec2panic.actions import arm_kdump, send_nmi
from chaosec2panic.errors import Ec2PanicError, InvalidRequest, Refused
from chaosec2panic.guest.parsers import parse_report, settings_change
from chaosec2panic.probes import crash_dump_present, kdump_armed, recovered_within
from chaosec2panic.rollbacks import restore_kdump_settings

# What kdump-tools' /etc/default/grub.d/kdump-tools.cfg appends to GRUB_CMDLINE_LINUX_DEFAULT.
KDUMP_TOOLS_DEFAULT = {
    "ubuntu": "2G-4G:320M,4G-32G:512M,32G-64G:1024M,64G-128G:2048M,128G-:4096M",
    "debian": "384M-:128M",
}
GRUB_DROPIN = "etc/default/grub.d/zz-chaosec2panic-crashkernel.cfg"


def armed(lab, name: str) -> bool:
    return kdump_armed(instance_ids=[lab.id(name)], configuration=lab.configuration())["armed"]


def reboot_and_wait(guest) -> None:
    """Reboot a guest by hand (not through arm_kdump) and wait until its agent is back."""
    boot_id = guest.boot_id
    guest.reboot()
    deadline = time.monotonic() + 30
    while not (guest.agent_online() and guest.boot_id != boot_id):
        assert time.monotonic() < deadline, "the guest did not come back"
        time.sleep(0.02)


def crashkernels(guest) -> List[str]:
    """The crashkernel= values on the running kernel's command line, in order."""
    cmdline = guest.root.joinpath("proc/cmdline").read_text()
    return [w.split("=", 1)[1] for w in cmdline.split() if w.startswith("crashkernel=")]


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
    guest = lab.lab.guests[lab.id("bare")]
    grub_before = (guest.root / "etc/default/grub").read_text()
    arm_kdump(instance_ids=[lab.id("bare")], configuration=conf)
    record = json.loads((lab.ledger.parent / f"{lab.ledger.stem}-kdump-settings.json").read_text())
    assert record["instances"][lab.id("bare")]["settings"]["crashkernel"]["before"] == ""
    assert (guest.root / GRUB_DROPIN).is_file()
    done = restore_kdump_settings(configuration=conf)["instances"][lab.id("bare")]
    assert done["rebooted"] and done["back"] and done["error"] == ""
    # arm_kdump's grub.d file is gone; kdump-tools stays installed, and its grub.d file with it
    assert done["settings"]["crashkernel"]["after"] == KDUMP_TOOLS_DEFAULT["ubuntu"]
    assert done["settings"]["unknown_nmi_panic"]["after"] == "0"
    assert done["settings"]["nmi_sysctl_file"]["after"] == "absent"
    assert done["settings"]["kdump_enabled"]["after"] == "disabled"
    assert done["packages_left_installed"] == ["kdump-tools"]
    assert not (guest.root / GRUB_DROPIN).exists()
    assert (guest.root / "etc/default/grub").read_text() == grub_before
    assert (guest.crashkernel, guest.crash_loaded, guest.unknown_nmi_panic) == (
        KDUMP_TOOLS_DEFAULT["ubuntu"],
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


@pytest.mark.parametrize("os_name", ["ubuntu", "debian"])
def test_an_explicit_crashkernel_wins_over_kdump_tools_grub_default(make_lab, os_name):
    # kdump-tools' grub.d file is read after /etc/default/grub and appends its crashkernel= to
    # GRUB_CMDLINE_LINUX_DEFAULT, after GRUB_CMDLINE_LINUX: the kernel takes the last one.
    lab = make_lab([opted_in("deb", os=os_name, kdump=False, crashkernel_mib=0, unknown_nmi_panic=0)])
    conf = lab.configuration()
    guest = lab.lab.guests[lab.id("deb")]
    assert guest.run_command("apt-get -y install kdump-tools").code == 0  # the package's postinst
    default = KDUMP_TOOLS_DEFAULT[os_name]
    package_cfg = (guest.root / "etc/default/grub.d/kdump-tools.cfg").read_text()
    assert package_cfg == f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel={default}"\n'
    reboot_and_wait(guest)
    assert guest.crashkernel == default and guest.crashkernel_mib > 0
    grub_before = (guest.root / "etc/default/grub").read_text()

    result = arm_kdump(instance_ids=[lab.id("deb")], crashkernel="256M", configuration=conf)
    found = result["instances"][lab.id("deb")]
    assert found["error"] == "" and found["rebooted"] and result["armed"]
    assert found["settings"]["crashkernel"] == {"before": default, "after": "256M", "changed": True}
    status = kdump_armed(instance_ids=[lab.id("deb")], configuration=conf)["instances"][lab.id("deb")]
    assert status["verdict"] == "armed"
    assert "(crashkernel=256M)" in status["checks"]["crashkernel_reserved"]["found"]
    assert crashkernels(guest) == [default, "256M"]  # both on the command line, ours the last
    assert (guest.crashkernel, guest.crashkernel_mib, guest.crash_loaded) == ("256M", 256, True)
    assert (guest.root / "etc/default/grub.d/kdump-tools.cfg").read_text() == package_cfg
    assert (guest.root / "etc/default/grub").read_text() == grub_before
    assert "crashkernel=256M" in (guest.root / GRUB_DROPIN).read_text()
    dropin = (guest.root / GRUB_DROPIN).read_text()

    again = arm_kdump(instance_ids=[lab.id("deb")], crashkernel="256M", configuration=conf)
    assert again["changed"] is False and again["armed"] is True
    assert not any(s["changed"] for s in again["instances"][lab.id("deb")]["settings"].values())
    assert (guest.root / GRUB_DROPIN).read_text() == dropin
    assert len(lab.events("reboot", "deb")) == 2  # ours by hand, then arm_kdump's

    done = restore_kdump_settings(configuration=conf)["instances"][lab.id("deb")]
    assert done["error"] == "" and done["rebooted"] and done["back"]
    assert done["settings"]["crashkernel"] == {"before": "256M", "after": default, "changed": True}
    assert not (guest.root / GRUB_DROPIN).exists()
    assert (guest.root / "etc/default/grub.d/kdump-tools.cfg").read_text() == package_cfg
    assert (guest.root / "etc/default/grub").read_text() == grub_before
    assert crashkernels(guest) == [default] and guest.crashkernel == default


def test_without_a_size_the_reservation_there_was_is_kept(make_lab):
    # The image's reservation lives in kdump-tools.cfg (where Canonical's guide changes it).
    lab = make_lab([opted_in("deb", os="ubuntu", kdump=True, crashkernel_mib=384, unknown_nmi_panic=0)])
    guest = lab.lab.guests[lab.id("deb")]
    result = arm_kdump(instance_ids=[lab.id("deb")], configuration=lab.configuration())
    found = result["instances"][lab.id("deb")]
    assert found["settings"]["crashkernel"] == {"before": "384M", "after": "384M", "changed": False}
    assert result["armed"] and not found["rebooted"] and not (guest.root / GRUB_DROPIN).exists()


# The record is a file on this machine: what it holds is checked before it reaches a root shell ---
RUN = "echo pwned >/pwned"  # a builtin: guests have few tools


@pytest.mark.parametrize(
    ("spec", "setting", "planted", "why"),
    [
        # a sourced /etc/default/grub.d file, re-read by every update-grub
        ({"os": "ubuntu"}, "crashkernel", f'256M"; {RUN}; x="', "is not a crashkernel= value"),
        # a sed program: GNU sed's e command runs the shell
        ({"os": "debian"}, "nmi_sysctl_file", f"0/;1e {RUN};#", "is not absent, none or a whole number"),
        ({"os": "ubuntu"}, "unknown_nmi_panic", "0\n", "is not a whole number, or empty"),
        ({"os": "ubuntu"}, "kdump_enabled", f"$({RUN})", "is not a systemctl state"),
        (
            {"os": "windows-2022", "crash_dump_enabled": "none"},
            "crash_dump_enabled",
            "0; Stop-Computer",
            "is not a whole number, or empty for absent",
        ),
    ],
)
def test_a_planted_before_value_is_refused_and_nothing_is_sent(make_lab, spec, setting, planted, why):
    linux = {"kdump": False, "crashkernel_mib": 0, "unknown_nmi_panic": 0}
    lab = make_lab([opted_in("bare", **spec, **({} if spec["os"].startswith("windows") else linux))])
    conf, bare = lab.configuration(), lab.id("bare")
    arm_kdump(instance_ids=[bare], configuration=conf)
    path = lab.ledger.parent / f"{lab.ledger.stem}-kdump-settings.json"
    document = json.loads(path.read_text())
    document["instances"][bare]["settings"].setdefault(setting, {"armed": ""})["before"] = planted
    path.write_text(json.dumps(document))
    sent = lab.lab.calls["ssm:SendCommand"]
    guest = lab.lab.guests[bare]
    with pytest.raises(Refused, match=re.escape(f"{bare}: {setting}: before {planted!r} {why}")) as refused:
        restore_kdump_settings(configuration=conf)
    assert str(refused.value).endswith("Nothing was sent.") and str(path) in str(refused.value)
    assert lab.lab.calls["ssm:SendCommand"] == sent
    assert json.loads(path.read_text()) == document  # kept, to be fixed by hand
    assert not (guest.root / "pwned").exists()


@pytest.mark.parametrize("crashkernel", ["256M\n", "-256M", "256M,high\n", "1G-4G:192M,high", "256M@"])
def test_a_crashkernel_the_kernel_would_not_read_is_refused_before_anything_runs(make_lab, crashkernel):
    lab = make_lab([opted_in("a", kdump=False)])
    with pytest.raises(
        InvalidRequest, match="crashkernel must be a crashkernel= value as the kernel reads it"
    ):
        arm_kdump(instance_ids=[lab.id("a")], crashkernel=crashkernel, configuration=lab.configuration())
    assert lab.lab.calls["ssm:SendCommand"] == 0 and lab.events("command") == []


def test_restore_refuses_an_instance_id_with_a_trailing_newline(tmp_path):
    with pytest.raises(InvalidRequest, match="malformed instance ids"):
        restore_kdump_settings(
            instance_ids=["i-0123456789abcdef0\n"],
            configuration={"chaosec2panic_ledger_path": str(tmp_path / "ledger.json")},
        )
