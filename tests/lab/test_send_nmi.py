"""send_nmi against the lab over HTTP: what reaches an instance, and what never does."""

import os
import re
import subprocess
import sys

import boto3
import pytest
from conftest import opted_in

from chaosec2panic.actions import send_nmi
from chaosec2panic.errors import Ec2PanicError, InvalidRequest, Refused
from chaosec2panic.ledger import Ledger
from chaosec2panic.probes import recovery_seconds
from chaosec2panic.recovery import parse_iso
from chaosec2panic.rollbacks import recover_instances


def fault(lab, **spec) -> None:
    lab.lab.faults.append({"count": 1, **spec})


def throttle(lab, times: int) -> None:
    """EC2 answers the next ``times`` real (not DryRun) interrupts with RequestLimitExceeded."""
    fault(
        lab,
        operation="SendDiagnosticInterrupt",
        dry_run=False,
        code="RequestLimitExceeded",
        status=503,
        count=times,
    )


def test_one_nmi_reaches_the_chosen_instance_and_is_recorded(make_lab):
    lab = make_lab([opted_in("web")])
    boot_before = lab.lab.guests[lab.id("web")].boot_id
    result = send_nmi(instance_ids=[lab.id("web")], configuration=lab.configuration())
    [record] = result["injections"]
    assert record["instance_id"] == lab.id("web") and record["outcome"] == "sent"
    assert lab.nmi_names() == ["web"]
    [entry] = Ledger(lab.ledger).entries()
    assert (entry.outcome, entry.sent_at) == ("sent", record["sent_at"])  # settled, at the request's time
    assert entry.boot_id_before == boot_before
    assert entry.console_anchor.endswith("web login:")


def epoch(text: str) -> float:
    return parse_iso(text).timestamp()


def test_measured_recovery_matches_the_lab_truth(make_lab):
    lab = make_lab([opted_in("web")])
    sent = send_nmi(instance_ids=[lab.id("web")], configuration=lab.configuration())["injections"][0]
    measured = recovery_seconds(timeout=30, configuration=lab.configuration())
    [truth] = lab.events("recovered", "web")
    [nmi] = lab.events("nmi", "web")
    true_seconds = truth["epoch"] - nmi["epoch"]
    assert measured["recovered"] == 1 and measured["pending"] == []
    # The truth lies within the stated error bars: the NMI's (half its round trip) either side,
    # and up to the healthy milestone's (the lag since the look before: a busy machine looks
    # less often) after it. Never a fixed wall-clock margin.
    line = measured["timelines"][lab.id("web")]
    healthy = max(("kernel_back", "status_ok", "agent_online"), key=lambda m: line["milestones"][m])
    nmi_bar = line["evidence"]["nmi_sent"]["uncertainty_s"]
    healthy_bar = line["evidence"][healthy]["uncertainty_s"]
    error = measured["instances"][lab.id("web")] - true_seconds
    assert -nmi_bar - 0.005 <= error <= nmi_bar + healthy_bar + 0.005, (error, healthy, line["evidence"])
    # The NMI landed while its request was in flight (ISO times keep whole milliseconds).
    assert epoch(sent["sent_at"]) <= nmi["epoch"] <= epoch(sent["answered_at"]) + 0.001


def test_duplicate_ids_send_one_nmi(make_lab):
    lab = make_lab([opted_in("web")])
    send_nmi(instance_ids=[lab.id("web"), lab.id("web")], configuration=lab.configuration())
    assert lab.nmi_names() == ["web"]


def test_count_and_percent_select_within_the_cap_and_record_the_seed(make_lab):
    lab = make_lab(
        [opted_in("web", count=6, tags={"role": "web"}), {"name": "bystander", "tags": {"role": "web2"}}]
    )
    result = send_nmi(tags={"role": "web"}, percent=50, max_instances=3, configuration=lab.configuration())
    assert len(result["selection"]["chosen"]) == 3 and len(result["selection"]["matched"]) == 6
    assert isinstance(result["selection"]["seed"], int)
    assert sorted(lab.lab.guests[i].spec.name for i in result["selection"]["chosen"]) == lab.nmi_names()
    assert "bystander" not in lab.nmi_names()


@pytest.mark.parametrize(
    ("target", "expected", "needle"),
    [
        ({"instance_ids": ["i-0123456789abcdef0"]}, InvalidRequest, "InvalidInstanceID.NotFound"),
        ({"instance_ids": ["i-nothex"]}, InvalidRequest, "malformed instance ids"),
        ({"instance_ids": ["web"]}, InvalidRequest, "malformed instance ids"),
        ({"tags": {"role": "nobody"}}, Refused, "no instance matches"),
        ({"filters": [{"Name": "instance-type", "Values": ["c5.24xlarge"]}]}, Refused, "no instance matches"),
        ({"tags": {"role": "web"}, "count": 0}, InvalidRequest, "count must be"),
        ({"tags": {"role": "web"}, "percent": 0}, InvalidRequest, "percent must be"),
        ({"tags": {"role": "web"}, "percent": 150}, InvalidRequest, "percent must be"),
        ({}, InvalidRequest, "name the targets"),
    ],
)
def test_bad_targets_are_refused_and_nothing_is_sent(make_lab, target, expected, needle):
    lab = make_lab([opted_in("web", tags={"role": "web"})])
    with pytest.raises(expected, match=needle):
        send_nmi(**target, configuration=lab.configuration())
    assert lab.nmi_names() == []
    assert [e.outcome for e in Ledger(lab.ledger).entries()] == ["refused"]


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"name": "stopped", "state": "stopped"}, "state is stopped, not running"),
        ({"name": "xen", "instance_type": "t2.large"}, "xen hypervisor"),
        ({"name": "arm", "instance_type": "a1.large"}, r"\(A1\) does not support"),
        ({"name": "graviton", "instance_type": "c6g.large"}, "arm64"),
    ],
)
def test_ineligible_instances_are_refused(make_lab, entry, needle):
    lab = make_lab([opted_in(entry["name"], **{k: v for k, v in entry.items() if k != "name"})])
    with pytest.raises(Refused, match=needle):
        send_nmi(instance_ids=[lab.id(entry["name"])], configuration=lab.configuration())
    assert lab.nmi_names() == []


def test_missing_opt_in_tag_refuses_every_target(make_lab):
    lab = make_lab([opted_in("ok", tags={"app": "web"}), {"name": "shy", "tags": {"app": "web"}}])
    with pytest.raises(Refused, match=re.escape(f"{lab.id('shy')}: missing opt-in tag chaos:nmi=allowed")):
        send_nmi(tags={"app": "web"}, count=1, configuration=lab.configuration())
    assert lab.nmi_names() == []


def test_terminated_instance_is_refused(make_lab):
    lab = make_lab([opted_in("gone")])
    boto3.client("ec2").terminate_instances(InstanceIds=[lab.id("gone")])
    with pytest.raises(Refused, match=r"state is (terminated|shutting-down)"):
        send_nmi(instance_ids=[lab.id("gone")], configuration=lab.configuration())
    assert lab.nmi_names() == []


def test_selection_over_max_instances_is_refused(make_lab):
    lab = make_lab([opted_in("web", count=3, tags={"role": "web"})])
    with pytest.raises(Refused, match="more than max_instances=2"):
        send_nmi(tags={"role": "web"}, max_instances=2, configuration=lab.configuration())
    assert lab.nmi_names() == []


def test_no_region_is_refused(make_lab, monkeypatch):
    lab = make_lab([opted_in("web")])
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(InvalidRequest, match="region"):
        send_nmi(instance_ids=[lab.id("web")], configuration=lab.configuration())
    assert lab.nmi_names() == []


def test_dry_run_denied_is_refused(make_lab):
    lab = make_lab([opted_in("web")])
    fault(
        lab,
        operation="SendDiagnosticInterrupt",
        dry_run=True,
        code="UnauthorizedOperation",
        message="You are not authorized to perform this operation.",
        status=403,
    )
    with pytest.raises(Refused, match="DryRun answered UnauthorizedOperation"):
        send_nmi(instance_ids=[lab.id("web")], configuration=lab.configuration())
    assert lab.nmi_names() == []


def test_unarmed_kdump_is_refused_unless_allowed(make_lab):
    lab = make_lab([opted_in("bare", kdump=False)])
    with pytest.raises(Refused, match="crash_kernel_loaded: found 0"):
        send_nmi(instance_ids=[lab.id("bare")], configuration=lab.configuration())
    assert lab.nmi_names() == []
    send_nmi(instance_ids=[lab.id("bare")], allow_unarmed=True, configuration=lab.configuration())
    assert lab.nmi_names() == ["bare"]


def test_agent_offline_means_kdump_unknown_and_refused(make_lab):
    lab = make_lab([opted_in("silent", agent=False)])
    with pytest.raises(Refused, match="kdump unknown: not checked: AgentOffline"):
        send_nmi(instance_ids=[lab.id("silent")], configuration=lab.configuration())
    assert lab.nmi_names() == []


def test_an_instance_hit_and_not_back_is_not_hit_again_unless_forced(make_lab):
    lab = make_lab([opted_in("hang", kdump=False, panic_timeout=0)])
    target = {"instance_ids": [lab.id("hang")], "allow_unarmed": True, "configuration": lab.configuration()}
    send_nmi(**target)
    with pytest.raises(Refused, match="not seen back since"):
        send_nmi(**target)
    assert lab.nmi_names() == ["hang"]
    send_nmi(**target, force=True)
    assert lab.nmi_names() == ["hang", "hang"]


def test_max_instances_counts_the_instances_still_down_from_earlier_nmis(make_lab):
    lab = make_lab([opted_in("hang", count=3, kdump=False, panic_timeout=0)])
    conf = lab.configuration()
    send_nmi(instance_ids=[lab.id("hang-1")], allow_unarmed=True, configuration=conf)
    with pytest.raises(Refused, match=r"max_instances=1 caps the instances down at once") as refused:
        send_nmi(instance_ids=[lab.id("hang-2")], allow_unarmed=True, configuration=conf)
    assert (
        lab.id("hang-1") in refused.value.reasons
        and "not seen back" in refused.value.reasons[lab.id("hang-1")]
    )
    assert lab.nmi_names() == ["hang-1"]
    send_nmi(instance_ids=[lab.id("hang-2")], max_instances=2, allow_unarmed=True, configuration=conf)
    assert lab.nmi_names() == ["hang-1", "hang-2"]
    recover_instances(timeout=30, configuration=conf)  # both back: they no longer count
    send_nmi(instance_ids=[lab.id("hang-3")], allow_unarmed=True, configuration=conf)
    assert lab.nmi_names() == ["hang-1", "hang-2", "hang-3"]


def test_an_instance_back_since_its_last_hit_can_be_hit_again(make_lab):
    lab = make_lab([opted_in("web")])
    send_nmi(instance_ids=[lab.id("web")], configuration=lab.configuration())
    recovery_seconds(timeout=30, configuration=lab.configuration())
    send_nmi(instance_ids=[lab.id("web")], configuration=lab.configuration())
    assert lab.nmi_names() == ["web", "web"]


def test_a_server_error_is_never_retried_into_a_second_nmi(make_lab):
    lab = make_lab([opted_in("web")])
    fault(lab, operation="SendDiagnosticInterrupt", dry_run=False, code="InternalError", status=500)
    result = send_nmi(instance_ids=[lab.id("web")], configuration=lab.configuration())
    assert result["injections"][0]["outcome"] == "unknown"
    assert lab.lab.calls["ec2:SendDiagnosticInterrupt"] == 2  # the DryRun and the one real request
    assert Ledger(lab.ledger).unrecovered()  # an unknown outcome counts as a hit


def test_throttling_beyond_the_budget_fails_that_instance_without_a_duplicate(make_lab):
    lab = make_lab([opted_in("web")])
    throttle(lab, times=10)
    with pytest.raises(Ec2PanicError, match=r"no NMI was sent.*RequestLimitExceeded"):
        send_nmi(
            instance_ids=[lab.id("web")], configuration=lab.configuration(chaosec2panic_retry_attempts=3)
        )
    assert lab.lab.calls["ec2:SendDiagnosticInterrupt"] == 1 + 3
    assert lab.nmi_names() == []
    assert [e.outcome for e in Ledger(lab.ledger).entries()] == ["failed"]


def test_throttling_within_the_budget_sends_once(make_lab):
    lab = make_lab([opted_in("web")])
    throttle(lab, times=2)
    result = send_nmi(instance_ids=[lab.id("web")], configuration=lab.configuration())
    assert result["injections"][0]["outcome"] == "sent"
    assert lab.nmi_names() == ["web"]


def test_missing_credentials_are_named_and_nothing_is_sent(make_lab, tmp_path):
    lab = make_lab([opted_in("web")])
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") or k in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
    }
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
        CHAOSEC2PANIC_LEDGER=str(lab.ledger),
    )
    script = f"from chaosec2panic.actions import send_nmi; send_nmi(instance_ids=['{lab.id('web')}'])"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode != 0 and "no AWS credentials" in done.stderr
    assert lab.nmi_names() == []
