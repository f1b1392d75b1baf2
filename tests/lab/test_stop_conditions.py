"""Stop conditions: CloudWatch alarms checked before every injection and while the run goes on."""

import json
import re
import threading
import time

import boto3
import pytest
import yaml
from conftest import ROOT, make_alarm, opted_in, run_experiment

from chaosec2panic.actions import send_nmi
from chaosec2panic.errors import InvalidRequest, StopConditionMet
from chaosec2panic.ledger import Ledger
from chaosec2panic.stopconditions import stop_reason


def nmi(lab, stop: dict, **configuration) -> dict:
    return send_nmi(
        instance_ids=[lab.id("web")],
        configuration=lab.configuration(chaosec2panic_stop_alarms=stop, **configuration),
    )


def test_quiet_alarms_let_the_nmi_through(make_lab):
    lab = make_lab([opted_in("web")])
    arn = make_alarm("checkout-5xx")
    make_alarm("queue-depth", tags={"chaos-stop": "yes"})
    nmi(lab, {"names": ["checkout-5xx"], "arns": [arn], "tags": {"chaos-stop": "yes"}})
    assert lab.nmi_names() == ["web"]


@pytest.mark.parametrize(
    ("setup", "stop", "needle"),
    [
        ({"checkout-5xx": "ALARM"}, {"names": ["checkout-5xx"]}, "alarm checkout-5xx is in ALARM since"),
        (
            {"checkout-5xx": "OK"},
            {"names": ["checkout-5xx", "typo-alarm"]},
            "stop alarm not found: typo-alarm",
        ),
        ({"tagged": "ALARM"}, {"tags": {"chaos-stop": "yes"}}, "alarm tagged is in ALARM"),
        ({"untagged": "OK"}, {"tags": {"chaos-stop": "yes"}}, "not found: tags {'chaos-stop': 'yes'}"),
    ],
)
def test_a_firing_or_missing_alarm_stops_the_nmi(make_lab, setup, stop, needle):
    lab = make_lab([opted_in("web")])
    for name, state in setup.items():
        make_alarm(name, state, tags={"chaos-stop": "yes"} if name == "tagged" else None)
    with pytest.raises(StopConditionMet, match=needle):
        nmi(lab, stop)
    assert lab.nmi_names() == []
    assert [e.outcome for e in Ledger(lab.ledger).entries()] == ["refused"]


def test_an_alarm_without_data_stops_the_nmi_unless_it_is_named_as_allowed_to_be(make_lab):
    lab = make_lab([opted_in("web")])
    make_alarm("checkout-5xx", "INSUFFICIENT_DATA")
    make_alarm("payment-errors", "INSUFFICIENT_DATA")
    stop = {"names": ["checkout-5xx", "payment-errors"]}
    allowed = "chaosec2panic_stop_alarms_insufficient_data_ok"
    for allow in ([], ["payment-errors"]):
        with pytest.raises(StopConditionMet, match="alarm checkout-5xx is in INSUFFICIENT_DATA since"):
            nmi(lab, stop, **{allowed: allow})
    assert lab.nmi_names() == []
    nmi(lab, stop, **{allowed: ["checkout-5xx", "payment-errors"]})
    assert lab.nmi_names() == ["web"]


def test_an_allowed_alarm_in_alarm_still_stops_the_nmi(make_lab):
    lab = make_lab([opted_in("web")])
    make_alarm("payment-errors", "ALARM")
    with pytest.raises(StopConditionMet, match="alarm payment-errors is in ALARM"):
        nmi(
            lab,
            {"names": ["payment-errors"]},
            chaosec2panic_stop_alarms_insufficient_data_ok=["payment-errors"],
        )
    assert lab.nmi_names() == []


@pytest.mark.parametrize("value", ["payment-errors", [""], [3], {"names": []}])
def test_a_bad_insufficient_data_allowance_is_refused(make_lab, value):
    lab = make_lab([opted_in("web")])
    make_alarm("payment-errors")
    with pytest.raises(InvalidRequest, match="chaosec2panic_stop_alarms_insufficient_data_ok must be a list"):
        nmi(lab, {"names": ["payment-errors"]}, chaosec2panic_stop_alarms_insufficient_data_ok=value)
    assert lab.nmi_names() == []


def test_every_state_but_ok_stops_by_the_same_rule():
    def state(value: str) -> dict:
        return {"name": "a", "state": value, "since": "then", "reason": "why", "arn": ""}

    assert stop_reason([state("OK")]) is None
    assert stop_reason([state("INSUFFICIENT_DATA")], ("a",)) is None
    for value in ("ALARM", "INSUFFICIENT_DATA", "NOT_FOUND", "UNKNOWN", "ok", ""):
        assert stop_reason([state(value)]), value
    assert stop_reason([state("ALARM")], ("a",))


def test_an_alarm_arn_is_checked_by_its_name(make_lab):
    lab = make_lab([opted_in("web")])
    arn = make_alarm("by-arn", "ALARM")
    with pytest.raises(StopConditionMet, match="alarm by-arn is in ALARM"):
        nmi(lab, {"arns": [arn]})
    with pytest.raises(InvalidRequest, match="not CloudWatch alarm ARNs"):
        nmi(lab, {"arns": ["by-arn"]})
    assert lab.nmi_names() == []


def experiment_with_control(tmp_path, **arguments) -> str:
    data = yaml.safe_load((ROOT / "experiments" / "crash-capture.yaml").read_text())
    data["controls"] = [
        {
            "name": "stop-on-alarms",
            "provider": {"type": "python", "module": "chaosec2panic.controls.alarms", "arguments": arguments},
        }
    ]
    path = tmp_path / "with-control.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_an_alarm_already_firing_keeps_the_run_from_injecting(make_lab, tmp_path):
    lab = make_lab([opted_in("web", tags={"role": "crash-capture"})])
    make_alarm("checkout-5xx", "ALARM")
    journal = run_experiment(
        lab, experiment_with_control(tmp_path, names=["checkout-5xx"]), tmp_path / "journal.json"
    )
    assert journal["status"] == "interrupted" and journal["run"] == []
    assert lab.nmi_names() == []


def test_the_control_keeps_a_run_from_injecting_while_an_alarm_has_no_data(make_lab, tmp_path):
    lab = make_lab([opted_in("web", tags={"role": "crash-capture"})])
    make_alarm("checkout-5xx", "INSUFFICIENT_DATA")
    journal = run_experiment(
        lab, experiment_with_control(tmp_path, names=["checkout-5xx"]), tmp_path / "journal.json"
    )
    assert journal["status"] == "interrupted" and journal["run"] == []
    assert lab.nmi_names() == []


def test_an_alarm_firing_during_the_run_interrupts_it_and_the_rollbacks_still_run(make_lab, tmp_path):
    lab = make_lab([opted_in("hang", kdump=False, panic_timeout=0, tags={"role": "crash-capture"})])
    make_alarm("checkout-5xx", "OK")
    data = yaml.safe_load(experiment_with_control(tmp_path, names=["checkout-5xx"], interval=0.5).read_text())
    data["steady-state-hypothesis"]["probes"] = [
        p for p in data["steady-state-hypothesis"]["probes"] if p["name"] != "kdump-armed-on-targets"
    ]
    data["method"][0]["provider"]["arguments"]["allow_unarmed"] = True
    data["method"][1]["provider"]["arguments"]["timeout"] = 60
    experiment = tmp_path / "firing.yaml"
    experiment.write_text(yaml.safe_dump(data))

    def fire_after_the_nmi() -> None:
        deadline = time.monotonic() + 60
        while not lab.events("nmi") and time.monotonic() < deadline:
            time.sleep(0.1)
        boto3.client("cloudwatch").set_alarm_state(
            AlarmName="checkout-5xx", StateValue="ALARM", StateReason="5xx above threshold"
        )

    firing = threading.Thread(target=fire_after_the_nmi)
    firing.start()
    started = time.monotonic()
    journal = run_experiment(lab, experiment, tmp_path / "journal.json")
    firing.join()
    assert time.monotonic() - started < 40  # interrupted, not left to its 60 s recovery wait
    assert journal["status"] == "interrupted"
    [stop] = [e["stop_condition"] for e in journal.get("extensions", []) if e.get("name") == "chaosec2panic"]
    assert "alarm checkout-5xx is in ALARM" in stop["reason"] and "5xx above threshold" in stop["reason"]
    [rollback] = journal["rollbacks"]
    assert rollback["output"]["instances"][lab.id("hang")] == {"actions": ["reboot"], "recovered": True}
    assert json.dumps(journal)  # the journal stays JSON


def test_an_alarm_that_cannot_be_read_stops_the_nmi(make_lab):
    lab = make_lab([opted_in("web")])
    make_alarm("checkout-5xx")
    lab.lab.faults.append(
        {
            "operation": "DescribeAlarms",
            "code": "AccessDenied",
            "status": 403,
            "count": 5,
            "message": "not authorized to perform cloudwatch:DescribeAlarms",
        }
    )
    with pytest.raises(StopConditionMet, match=re.escape("stop alarms cannot be read (AccessDenied")):
        nmi(lab, {"names": ["checkout-5xx"]})
    assert lab.nmi_names() == []
