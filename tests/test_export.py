"""`chaosec2panic export fis`: the catalogue's NMI experiments as SSM Automation runbooks, an AWS FIS
experiment template, an EventBridge Scheduler schedule and a CloudFormation stack. Each request is
held to botocore's own parameter validation, the stack to cfn-lint, and the runbooks' checks to
what the project's guest scripts print on a simulated guest."""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

import botocore.session
import pytest
import yaml
from botocore.validate import validate_parameters
from conftest import sim_guest

from chaosec2panic import guest
from chaosec2panic.export import FILES, ExportRefused, automation, export_fis
from chaosec2panic.guest.parsers import kdump_verdict, parse_report
from chaosec2panic.targets import choose

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("chaosec2panic"))
CFN_LINT = str(Path(sys.executable).with_name("cfn-lint"))
ALARM = "arn:aws:cloudwatch:us-east-1:111122223333:alarm:api-5xx"
# The catalogue experiments that send NMIs, and what the export needs beyond the file.
EXPORTED = {"crash-capture": [], "recovery-slo": [], "fleet-game-day": [ALARM]}
SESSION = botocore.session.get_session()


def experiment(name: str) -> Dict[str, Any]:
    return yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text())


def exported(name: str) -> Dict[str, str]:
    return export_fis(experiment(name), name, EXPORTED[name], "us-east-1", "111122223333")


def validate(service: str, operation: str, params: Dict[str, Any]) -> None:
    """botocore's validation of ``params`` as ``operation``'s input, with the idempotency tokens
    the SDK (and the AWS CLI) fill in when a request leaves them out."""
    shape = SESSION.get_service_model(service).operation_model(operation).input_shape
    tokens = {k: "0" * 36 for k, m in shape.members.items() if m.metadata.get("idempotencyToken")}
    validate_parameters({**tokens, **params}, shape)


def steps(document: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {s["name"]: s for s in document["mainSteps"]}


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_each_request_passes_botocore_validation(name):
    files = exported(name)
    assert tuple(files) == FILES
    for document in ("runbook.yaml", "fleet-runbook.yaml"):
        params = {
            "Name": "d",
            "Content": files[document],
            "DocumentType": "Automation",
            "DocumentFormat": "YAML",
        }
        validate("ssm", "CreateDocument", params)
    validate("fis", "CreateExperimentTemplate", json.loads(files["experiment-template.json"]))
    schedule = json.loads(files["schedule.json"])
    validate("scheduler", "CreateSchedule", schedule)
    assert schedule["Target"]["Arn"] == "arn:aws:scheduler:::aws-sdk:fis:startExperiment"
    validate("fis", "StartExperiment", json.loads(schedule["Target"]["Input"]))


def test_botocore_validation_catches_a_bad_request():
    template = json.loads(exported("crash-capture")["experiment-template.json"])
    del template["roleArn"]
    with pytest.raises(Exception, match="roleArn"):
        validate("fis", "CreateExperimentTemplate", template)


def test_every_stack_is_cfn_lint_clean(tmp_path):
    paths = []
    for name in sorted(EXPORTED):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "stack.yaml")
        paths[-1].write_text(exported(name)["stack.yaml"])
    done = subprocess.run([CFN_LINT, *map(str, paths)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # CloudFormation takes a template of up to 51,200 bytes without an S3 upload.
    assert all(len(p.read_bytes()) < 51_200 for p in paths)


def test_the_stack_carries_the_very_runbooks_and_template():
    files = exported("fleet-game-day")
    stack = yaml.safe_load(files["stack.yaml"])["Resources"]
    assert stack["InstanceRunbook"]["Properties"]["Content"] == yaml.safe_load(files["runbook.yaml"])
    assert stack["FleetRunbook"]["Properties"]["Content"] == yaml.safe_load(files["fleet-runbook.yaml"])
    fis = stack["ExperimentTemplate"]["Properties"]
    template = json.loads(files["experiment-template.json"])
    assert fis["StopConditions"][0]["Source"] == template["stopConditions"][0]["source"]
    assert fis["Actions"]["SendNmiRunbook"]["ActionId"] == "aws:ssm:start-automation-execution"
    trust = {k: v["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"]
             for k, v in stack.items() if v["Type"] == "AWS::IAM::Role"}  # fmt: skip
    assert trust == {
        "AutomationRole": "ssm.amazonaws.com",
        "FisRole": "fis.amazonaws.com",
        "SchedulerRole": "scheduler.amazonaws.com",
    }
    nmi = stack["AutomationRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    scoped = next(s for s in nmi if "ec2:SendDiagnosticInterrupt" in s["Action"])
    assert scoped["Condition"] == {"StringEquals": {"aws:ResourceTag/chaos:nmi": "allowed"}}


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_the_runbook_runs_the_projects_own_guest_scripts(name):
    runbook = steps(yaml.safe_load(exported(name)["runbook.yaml"]))
    linux = guest.PLATFORMS["linux"]
    for step, script in (("KdumpStatus", "kdump_status"), ("CrashDumps", "crash_dumps")):
        inputs = runbook[step]["inputs"]
        assert runbook[step]["action"] == "aws:runCommand"
        assert inputs["DocumentName"] == "AWS-RunShellScript"
        assert inputs["Parameters"]["commands"] == [guest.script(linux, script)]
    order = list(runbook)
    assert order.index("KdumpArmed") < order.index("SendNmi") < order.index("CrashDumps")
    assert runbook["SendNmi"]["inputs"] == {
        "Service": "ec2",
        "Api": "SendDiagnosticInterrupt",
        "InstanceId": "{{ InstanceId }}",
    }
    assert runbook["SendNmi"]["maxAttempts"] == 1
    assert (
        runbook["KdumpArmed"]["inputs"]["Script"] == (ROOT / "chaosec2panic/export/automation.py").read_text()
    )


def test_the_selection_is_the_opt_in_tag_and_the_experiments_tags():
    files = exported("fleet-game-day")
    fleet = steps(yaml.safe_load(files["fleet-runbook.yaml"]))
    assert fleet["Resolve"]["inputs"]["Filters"] == [
        {"Name": "tag:role", "Values": ["game-day"]},
        {"Name": "tag:chaos:nmi", "Values": ["allowed"]},
    ]
    assert fleet["Select"]["inputs"]["InputPayload"]["max_instances"] == 8
    run = fleet["NmiEach"]["inputs"]
    assert (run["MaxConcurrency"], run["MaxErrors"], run["TargetParameterName"]) == ("2", "0", "InstanceId")
    runbook = steps(yaml.safe_load(files["runbook.yaml"]))
    assert {"Name": "tag:chaos:nmi", "Values": ["allowed"]} in runbook["AssertOptIn"]["inputs"]["Filters"]
    assert runbook["StopAlarm1Ok"]["inputs"]["AlarmNames"] == ["api-5xx"]
    # FIS's start-automation-execution takes no targets: the selection is the runbook's.
    template = json.loads(files["experiment-template.json"])
    assert template["targets"] == {}
    assert template["stopConditions"] == [{"source": "aws:cloudwatch:alarm", "value": ALARM}]


def test_a_changed_opt_in_tag_is_the_one_required():
    changed = experiment("crash-capture")
    changed["configuration"]["chaosec2panic_opt_in_tag_key"] = "chaos:crash"
    files = export_fis(changed, "crash-capture")
    runbook = steps(yaml.safe_load(files["runbook.yaml"]))
    assert {"Name": "tag:chaos:crash", "Values": ["allowed"]} in runbook["AssertOptIn"]["inputs"]["Filters"]
    nmi = yaml.safe_load(files["stack.yaml"])["Resources"]["AutomationRole"]["Properties"]["Policies"][0]
    assert "aws:ResourceTag/chaos:crash" in json.dumps(nmi)


def test_select_picks_as_send_nmi_does():
    ids = [f"i-{n:017x}" for n in range(12)]
    picked = automation.select({"ids": ids, "count": 3, "percent": 0, "seed": 7, "max_instances": 3}, None)
    assert picked == {"ids": choose(ids, 3, None, 7)[0], "seed": 7}
    with pytest.raises(Exception, match="more than max_instances=8"):
        automation.select({"ids": ids, "count": 0, "percent": 0, "seed": -1, "max_instances": 8}, None)


def test_the_runbook_checks_agree_with_the_guest_on_a_simulated_instance(tmp_path):
    """The runbook's scripts run on a simulated guest; its checks read their output as the
    extension's parsers do: armed before, a new boot and a fresh dump after the NMI."""
    runbook = steps(yaml.safe_load(exported("crash-capture")["runbook.yaml"]))
    g = sim_guest(tmp_path / "root")
    before = g.run_command(runbook["KdumpStatus"]["inputs"]["Parameters"]["commands"][0]).stdout
    assert kdump_verdict(parse_report(before, "kdump_status"), 0.0).verdict == "armed"
    facts = automation.armed({"report": before, "require_armed": True}, None)
    g.nmi()
    deadline = time.monotonic() + 60
    while not g.agent_online():
        assert time.monotonic() < deadline, "the simulated guest did not come back"
        time.sleep(0.05)
    after = g.run_command(runbook["CrashDumps"]["inputs"]["Parameters"]["commands"][0]).stdout
    back = automation.rebooted(
        {"report": after, "boot_id_before": facts["boot_id"], "guest_now_before": facts["guest_now"],
         "require_dump": True},
        None,
    )  # fmt: skip
    assert back["boot_id"] != facts["boot_id"] and back["dump"].startswith("/var/crash/")
    with pytest.raises(Exception, match="no new boot"):
        automation.rebooted({"report": before, "boot_id_before": facts["boot_id"]}, None)


def test_an_unarmed_guest_is_refused_before_the_nmi(tmp_path):
    g = sim_guest(tmp_path / "root", kdump=False)
    report = g.run_command(guest.script(guest.PLATFORMS["linux"], "kdump_status")).stdout
    with pytest.raises(Exception, match=r"crash_kernel_loaded.*kdump_service"):
        automation.armed({"report": report, "require_armed": True}, None)
    assert automation.armed({"report": report, "require_armed": False}, None)["boot_id"]


@pytest.mark.parametrize(
    "name, change, why",
    [
        ("preflight-readiness", {}, "sends no NMI"),
        ("windows-memory-dump", {}, "targets Windows"),
        ("fleet-game-day", {}, r"found by their tags .* \(--stop-alarm-arn\)"),
        ("crash-capture", {"batch_pause": 30}, "batch_pause"),
        ("crash-capture", {"tags": {"role": "${nowhere}"}}, r"\$\{nowhere\} is not in the experiment"),
        ("crash-capture", {"count": 1, "percent": 10}, "count or percent, not both"),
        ("crash-capture", {"shuffle": True}, "shuffle: not a send_nmi argument"),
    ],
)
def test_what_cannot_be_exported_is_refused_with_why(name, change, why):
    data = experiment(name)
    for activity in data["method"]:
        if activity["provider"].get("func") == "send_nmi":
            activity["provider"]["arguments"].update(change)
    with pytest.raises(ExportRefused, match=why):
        export_fis(data, name)


def test_the_cli_writes_the_files_and_refuses_clearly(tmp_path):
    out = tmp_path / "out"
    args = [CLI, "export", "fis", str(ROOT / "experiments/fleet-game-day.yaml"), "-o", str(out)]
    done = subprocess.run([*args, "--stop-alarm-arn", ALARM], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert done.stdout.split() == [str(out / f) for f in FILES]
    assert json.loads((out / "experiment-template.json").read_text())["stopConditions"][0]["value"] == ALARM
    refused = subprocess.run(args, capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert "is not exported" in refused.stderr and "--stop-alarm-arn" in refused.stderr
