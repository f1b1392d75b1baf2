"""Probes and the rollback against the lab: every situation a crash experiment meets."""

import json
import posixpath
import time
from datetime import timedelta

import pytest
from conftest import opted_in

from chaosec2panic.actions import send_nmi
from chaosec2panic.errors import Ec2PanicError, Refused
from chaosec2panic.ledger import Injection, Ledger
from chaosec2panic.probes import (
    crash_dump_present,
    crash_dumps,
    instance_healthy,
    kdump_armed,
    panic_on_console,
    recovered_within,
    recovery_seconds,
)
from chaosec2panic.recovery import iso, now_iso, parse_iso
from chaosec2panic.rollbacks import recover_instances


def hit(lab, name: str, **kw) -> None:
    send_nmi(instance_ids=[lab.id(name)], configuration=lab.configuration(), **kw)


def test_kdump_armed_per_instance_verdicts(make_lab):
    lab = make_lab(
        [
            opted_in("armed"),
            opted_in("bare", kdump=False),
            opted_in("calm", unknown_nmi_panic=0),
            opted_in("silent", agent=False),
        ]
    )
    result = kdump_armed(tags={"chaos:nmi": "allowed"}, configuration=lab.configuration())
    verdicts = {lab.lab.guests[i].spec.name: v["verdict"] for i, v in result["instances"].items()}
    assert verdicts == {"armed": "armed", "bare": "not-armed", "calm": "not-armed", "silent": "unknown"}
    assert result["armed"] is False
    armed = result["instances"][lab.id("armed")]
    assert armed["checks"]["crash_kernel_loaded"] == {"status": "pass", "found": "1", "expected": "1"}
    assert kdump_armed(instance_ids=[lab.id("armed")], configuration=lab.configuration())["armed"] is True


def test_instance_healthy_needs_status_ok_and_agent_online(make_lab):
    lab = make_lab([opted_in("ok"), opted_in("silent", agent=False)])
    assert instance_healthy(instance_ids=[lab.id("ok")], configuration=lab.configuration()) is True
    assert (
        instance_healthy(instance_ids=[lab.id("ok"), lab.id("silent")], configuration=lab.configuration())
        is False
    )


def test_before_any_nmi_the_after_probes_pass_at_once(make_lab):
    lab = make_lab([opted_in("web")])
    conf = lab.configuration()
    before = dict(lab.lab.calls)
    assert recovered_within(1, configuration=conf) is True
    assert crash_dump_present(configuration=conf) is True
    assert panic_on_console(configuration=conf) is True
    assert recovery_seconds(configuration=conf)["instances"] == {}
    assert dict(lab.lab.calls) == before  # answered from the ledger alone


def test_a_refused_nmi_leaves_nothing_to_verify_and_the_probes_say_so(make_lab):
    lab = make_lab([opted_in("bare", kdump=False)])
    with pytest.raises(Refused):
        hit(lab, "bare")
    for probe in (recovered_within, crash_dump_present, panic_on_console):
        args = (1,) if probe is recovered_within else ()
        with pytest.raises(Ec2PanicError, match="refused or not sent, so there is nothing to verify"):
            probe(*args, configuration=lab.configuration())


@pytest.mark.parametrize(
    ("os_name", "fmt", "dirname"),
    [
        ("amazon-linux-2023", "kdump-compressed", "127.0.0.1-"),
        ("rhel", "kdump-compressed", "127.0.0.1-"),
        ("ubuntu", "flattened", "/var/crash/20"),
        ("suse", "flattened", "/var/crash/20"),
    ],
)
def test_armed_instance_crashes_dumps_and_comes_back(make_lab, os_name, fmt, dirname):
    lab = make_lab([opted_in("web", os=os_name)])
    hit(lab, "web")
    conf = lab.configuration()
    assert recovered_within(30, configuration=conf) is True
    dump = crash_dumps(configuration=conf)["instances"][lab.id("web")]
    assert dump["verdict"] == "complete-dump" and dump["format"] == fmt and dirname in dump["path"]
    assert dump["path"] == lab.events("dump-written", "web")[0]["detail"]
    assert dump["dump_dir"] == "/var/crash"
    # Nothing wrong with it; what the first blocks cannot show is unchecked, not a problem.
    assert dump["problems"] == [] and dump["unchecked"]
    assert (dump["nmi_panic"], dump["panic_message"]) == (True, "NMI: Not continuing")
    # The dump's own account, from the dmesg kdump saved beside it (as each distribution names it).
    account = dump["crash_account"]
    assert (account["source"], dump["crash_account_reason"]) == ("dmesg-file", "")
    beside, name = posixpath.split(account["file"])
    assert beside == posixpath.dirname(dump["path"]) and name.startswith(("vmcore-dmesg.txt", "dmesg"))
    assert {k: account[k] for k in ("panic_message", "nmi_panic", "cpu", "pid", "comm")} == {
        "panic_message": "NMI: Not continuing",
        "nmi_panic": True,
        "cpu": 0,
        "pid": 0,
        "comm": "swapper/0",
    }
    assert json.loads(json.dumps(dump)) == dump
    if fmt == "kdump-compressed":
        assert dump["kernel_release"] == dump["running_kernel"] and dump["same_kernel"] is True
    assert crash_dump_present(configuration=conf) is True
    assert panic_on_console(configuration=conf) is True
    assert Ledger(lab.ledger).unrecovered() == {}


def test_a_capture_kernel_the_next_boot_pushed_off_the_console_counts_once_the_watch_read_it(make_lab):
    lab = make_lab([opted_in("watched", os="debian"), opted_in("unwatched", os="debian")])
    conf = lab.configuration()
    hit(lab, "watched")
    assert recovered_within(30, configuration=conf) is True
    # A console holds its last 64 KiB: the new boot's own lines have pushed the capture kernel out.
    assert "elfcorehdr=" not in lab.lab.guests[lab.id("watched")].console_output()
    [entry] = Ledger(lab.ledger).entries()
    assert entry.timeline["evidence"]["capture_started"]["source"] == "console-printk"
    assert panic_on_console(instance_ids=[lab.id("watched")], configuration=conf) is True
    # Nobody watched this one while its capture kernel was on the console: nothing shows it now.
    hit(lab, "unwatched")
    lab.wait_for_event("recovered", "unwatched", timeout=60)
    assert "elfcorehdr=" not in lab.lab.guests[lab.id("unwatched")].console_output()
    assert panic_on_console(instance_ids=[lab.id("unwatched")], configuration=conf) is False


@pytest.mark.parametrize("os_name", ["amazon-linux-2023", "ubuntu", "suse"])
def test_dumps_are_found_where_the_kdump_configuration_puts_them(make_lab, os_name):
    lab = make_lab([opted_in("web", os=os_name)])
    g = lab.lab.guests[lab.id("web")]
    config = g.root / g._kdump_package()[3]  # kdump.conf, kdump-tools or sysconfig/kdump
    config.write_text(config.read_text().replace("/var/crash", "/srv/dumps"))
    hit(lab, "web")
    conf = lab.configuration()
    assert recovered_within(30, configuration=conf) is True
    written = lab.events("dump-written", "web")[0]["detail"]
    assert written.startswith("/srv/dumps/") and not list((g.root / "var" / "crash").iterdir())
    dump = crash_dumps(configuration=conf)["instances"][lab.id("web")]
    assert (dump["verdict"], dump["dump_dir"], dump["path"]) == ("complete-dump", "/srv/dumps", written)
    assert (dump["nmi_panic"], dump["problems"]) == (True, [])
    assert crash_dump_present(configuration=conf) is True
    # A directory the caller names wins, even where kdump does not write.
    named = crash_dumps(dump_dir="/var/crash", configuration=conf)["instances"][lab.id("web")]
    assert (named["verdict"], named["dump_dir"]) == ("no-dump", "/var/crash")
    assert crash_dump_present(dump_dir="/var/crash", configuration=conf) is False


def test_unknown_nmi_panic_off_means_no_crash_and_every_check_fails(make_lab):
    lab = make_lab([opted_in("calm", unknown_nmi_panic=0)])
    hit(lab, "calm", allow_unarmed=True)
    conf = lab.configuration()
    assert panic_on_console(configuration=conf) is False
    assert crash_dump_present(configuration=conf) is False
    assert crash_dumps(configuration=conf)["instances"][lab.id("calm")]["verdict"] == "no-dump"
    assert recovered_within(1.5, configuration=conf) is False
    assert [e["kind"] for e in lab.events(name="calm") if e["kind"] != "command"] == ["nmi", "dazed"]


def test_too_small_crashkernel_leaves_an_incomplete_dump(make_lab):
    lab = make_lab([opted_in("small", crashkernel_mib=64)])
    hit(lab, "small")
    conf = lab.configuration()
    assert recovered_within(30, configuration=conf) is True
    dump = crash_dumps(configuration=conf)["instances"][lab.id("small")]
    assert dump["verdict"] == "incomplete-dump"
    assert dump["path"].endswith("/vmcore-incomplete")
    assert dump["problems"][0] == "status at offset 424: expected incomplete flag 0x8 clear, found 0xa"
    assert dump["problems"][-1] == "name: vmcore-incomplete (makedumpfile did not finish)"
    assert crash_dump_present(configuration=conf) is False


def test_no_kdump_with_panic_timeout_reboots_without_a_dump(make_lab):
    lab = make_lab([opted_in("bare", kdump=False, panic_timeout=10)])
    hit(lab, "bare", allow_unarmed=True)
    conf = lab.configuration()
    assert recovered_within(30, configuration=conf) is True
    assert crash_dumps(configuration=conf)["instances"][lab.id("bare")]["verdict"] == "no-dump"
    assert panic_on_console(configuration=conf) is True


def test_older_dumps_do_not_count_for_a_new_nmi(make_lab):
    lab = make_lab([opted_in("web")])
    hit(lab, "web")
    assert recovered_within(30, configuration=lab.configuration()) is True
    time.sleep(1.1)  # dump times have whole seconds; a dump in the NMI's own second counts as after it
    # An NMI AWS accepted but that never reached the kernel: only the first crash's dump is there.
    Ledger(lab.ledger).record([Injection(lab.id("web"), now_iso(), "sent")])
    found = crash_dumps(instance_ids=[lab.id("web")], configuration=lab.configuration())["instances"]
    assert found[lab.id("web")]["verdict"] == "only-older-dumps"
    assert found[lab.id("web")]["older"] == [lab.events("dump-written", "web")[0]["detail"]]


def test_hang_fails_recovery_and_the_rollback_reboots_it(make_lab):
    lab = make_lab([opted_in("hang", kdump=False, panic_timeout=0)])
    hit(lab, "hang", allow_unarmed=True)
    conf = lab.configuration()
    assert recovered_within(1.0, configuration=conf) is False
    result = recover_instances(timeout=30, configuration=conf)
    assert result["instances"][lab.id("hang")] == {"actions": ["reboot"], "recovered": True}
    assert [e["kind"] for e in lab.events(name="hang") if e["kind"] in ("reboot", "boot")] == [
        "reboot",
        "boot",
    ]
    assert instance_healthy(instance_ids=[lab.id("hang")], configuration=conf) is True
    assert recover_instances(timeout=30, configuration=conf) == {"instances": {}}
    assert len(lab.events("reboot", "hang")) == 1


def test_a_rollback_leaves_another_runs_fresh_hit_to_that_run(make_lab):
    """Another run's instance, down since its NMI, may be writing its dump: a reboot now would
    destroy it. Its own runner rolls it back; one hit an hour ago or more is taken for gone."""
    lab = make_lab([opted_in(n, kdump=False, panic_timeout=0) for n in ("fresh", "stale")])
    long_ago = iso(parse_iso(now_iso()) - timedelta(hours=2))
    for name, sent in (("fresh", now_iso()), ("stale", long_ago)):
        lab.lab.guests[lab.id(name)].nmi()  # hangs: down until reset
        Ledger(lab.ledger).record([Injection(lab.id(name), sent, "sent", run_id="another-run")])
    conf = lab.configuration()
    result = recover_instances(timeout=30, configuration=conf)
    assert result["instances"] == {lab.id("stale"): {"actions": ["reboot"], "recovered": True}}
    [(left, by)] = result["left_to_their_runs"].items()
    assert left == lab.id("fresh") and by["run_id"] == "another-run" and by["sent_at"] > long_ago
    assert lab.events("reboot", "fresh") == [] and len(lab.events("reboot", "stale")) == 1
    # Asked by name, or told not to wait, it acts whichever run hit it.
    result = recover_instances(timeout=30, others_after=0, configuration=conf)
    assert result == {"instances": {lab.id("fresh"): {"actions": ["reboot"], "recovered": True}}}


def test_a_hang_that_ignores_reboot_is_stopped_and_started(make_lab):
    lab = make_lab([opted_in("stuck", kdump=False, panic_timeout=0, acpi_reboot=False)])
    hit(lab, "stuck", allow_unarmed=True)
    result = recover_instances(timeout=2, configuration=lab.configuration())
    assert result["instances"][lab.id("stuck")] == {"actions": ["reboot", "stop", "start"], "recovered": True}
    kinds = [e["kind"] for e in lab.events(name="stuck") if e["kind"] != "command"]
    assert kinds == [
        "nmi",
        "panic",
        "hung",
        "reboot-ignored",
        "stop",
        "start",
        "boot",
        "agent-online",
        "recovered",
    ]


def test_recover_named_instances_leaves_healthy_ones_alone(make_lab):
    lab = make_lab([opted_in("web")])
    hit(lab, "web")
    assert recovered_within(30, configuration=lab.configuration()) is True
    result = recover_instances(instance_ids=[lab.id("web")], timeout=5, configuration=lab.configuration())
    assert result["instances"][lab.id("web")] == {"actions": [], "recovered": True}
    assert lab.events("reboot") == []


def test_an_instance_that_survived_its_nmi_is_left_alone_and_may_be_hit_again(make_lab):
    lab = make_lab([opted_in("calm", unknown_nmi_panic=0)])
    hit(lab, "calm", allow_unarmed=True)
    assert recover_instances(timeout=5, configuration=lab.configuration())["instances"] == {
        lab.id("calm"): {"actions": [], "recovered": True}
    }
    assert lab.events("reboot") == []
    hit(lab, "calm", allow_unarmed=True)
    assert lab.nmi_names() == ["calm", "calm"]


def test_a_dump_of_another_crash_does_not_prove_the_nmi(make_lab):
    lab = make_lab([opted_in("web")])
    hit(lab, "web")
    assert recovered_within(30, configuration=lab.configuration()) is True
    dmesg = next((lab.lab.guests[lab.id("web")].root / "var" / "crash").glob("*/vmcore-dmesg.txt"))
    dmesg.write_text(
        "[  12.0] BUG: kernel NULL pointer dereference\n"
        "[  12.1] Kernel panic - not syncing: Fatal exception\n"
    )
    dump = crash_dumps(configuration=lab.configuration())["instances"][lab.id("web")]
    assert dump["verdict"] == "complete-dump"
    assert (dump["nmi_panic"], dump["panic_message"]) == (False, "Fatal exception")
    assert dump["crash_account"]["panic_message"] == "Fatal exception"
    assert crash_dump_present(configuration=lab.configuration()) is False


def test_a_dump_without_its_account_does_not_prove_the_nmi(make_lab):
    lab = make_lab([opted_in("web", os="debian")])
    hit(lab, "web")
    assert recovered_within(30, configuration=lab.configuration()) is True
    [dmesg] = (lab.lab.guests[lab.id("web")].root / "var" / "crash").glob("*/dmesg.*")
    dmesg.unlink()  # and the lab's guests have no makedumpfile to read the log out of the dump
    dump = crash_dumps(configuration=lab.configuration())["instances"][lab.id("web")]
    assert dump["verdict"] == "complete-dump" and dump["crash_account"] is None
    assert dump["crash_account_reason"] == (
        "not read: no dmesg file beside the dump, and makedumpfile "
        "(to read the log out of it) is not installed"
    )
    assert (dump["nmi_panic"], dump["panic_message"]) == (None, "")
    assert crash_dump_present(configuration=lab.configuration()) is False


def test_an_nmi_that_failed_everywhere_leaves_nothing_to_verify(make_lab):
    lab = make_lab([opted_in("web")])
    lab.lab.faults.append(
        {
            "operation": "SendDiagnosticInterrupt",
            "dry_run": False,
            "code": "RequestLimitExceeded",
            "status": 503,
            "count": 10,
        }
    )
    with pytest.raises(Ec2PanicError, match="no NMI was sent"):
        send_nmi(
            instance_ids=[lab.id("web")], configuration=lab.configuration(chaosec2panic_retry_attempts=2)
        )
    with pytest.raises(Ec2PanicError, match=r"refused or not sent[\s\S]*RequestLimitExceeded"):
        crash_dump_present(configuration=lab.configuration())
