"""The SSM Automation runbooks: one NMI to one instance, guarded (``runbook.yaml``), and the one
FIS starts, which resolves and caps the targets and runs the first on each (``fleet-runbook.yaml``)."""

from importlib.resources import files
from typing import Any, Dict, List

from ..guest import PLATFORMS, script
from .plan import Plan

__all__ = ["AUTOMATION_SCRIPT", "fleet_runbook", "instance_runbook"]

SCRIPT_RUNTIME = "python3.11"
AUTOMATION_SCRIPT = files(__package__).joinpath("automation.py").read_text(encoding="utf-8")


def _step(name: str, action: str, inputs: Dict[str, Any], **more: Any) -> Dict[str, Any]:
    return {"name": name, "action": action, "onFailure": "Abort", "inputs": inputs, **more}


def _script_step(
    name: str, handler: str, payload: Dict[str, Any], outputs: List[Dict[str, str]]
) -> Dict[str, Any]:
    inputs = {
        "Runtime": SCRIPT_RUNTIME,
        "Handler": handler,
        "Script": AUTOMATION_SCRIPT,
        "InputPayload": payload,
    }
    return _step(name, "aws:executeScript", inputs, outputs=outputs)


def _run_script(name: str, guest_script: str, timeout: int) -> Dict[str, Any]:
    inputs = {
        "DocumentName": PLATFORMS["linux"].document,
        "InstanceIds": ["{{ InstanceId }}"],
        "Parameters": {"commands": [script(PLATFORMS["linux"], guest_script)]},
    }
    return _step(name, "aws:runCommand", inputs, timeoutSeconds=timeout)


def _ec2(api: str, **inputs: Any) -> Dict[str, Any]:
    return {"Service": "ec2", "Api": api, **inputs}


def instance_runbook(p: Plan) -> Dict[str, Any]:
    key, value = p.opt_in
    alarm_checks = [
        _step(
            f"StopAlarm{n}Ok",
            "aws:assertAwsResourceProperty",
            {
                "Service": "cloudwatch",
                "Api": "DescribeAlarms",
                "AlarmNames": [name],
                "PropertySelector": "$.MetricAlarms[0].StateValue",
                "DesiredValues": ["OK", "INSUFFICIENT_DATA"] if name in p.insufficient_data_ok else ["OK"],
            },
        )
        for n, name in enumerate(p.alarms, 1)
    ]
    one = {"InstanceIds": ["{{ InstanceId }}"]}
    steps = [
        _step(
            "AssertOptIn",
            "aws:assertAwsResourceProperty",
            _ec2(
                "DescribeInstances",
                Filters=[
                    {"Name": "instance-id", "Values": ["{{ InstanceId }}"]},
                    {"Name": f"tag:{key}", "Values": [value]},
                ],
                PropertySelector="$.Reservations[0].Instances[0].InstanceId",
                DesiredValues=["{{ InstanceId }}"],
            ),
        ),
        _step(
            "AssertRunning",
            "aws:assertAwsResourceProperty",
            _ec2(
                "DescribeInstances",
                **one,
                PropertySelector="$.Reservations[0].Instances[0].State.Name",
                DesiredValues=["running"],
            ),
        ),
        _run_script("KdumpStatus", "kdump_status", 120),
        _script_step(
            "KdumpArmed",
            "armed",
            {"report": "{{ KdumpStatus.Output }}", "require_armed": p.require_armed},
            [
                {"Name": "BootId", "Selector": "$.Payload.boot_id", "Type": "String"},
                {"Name": "GuestNow", "Selector": "$.Payload.guest_now", "Type": "String"},
            ],
        ),
        *alarm_checks,
        _step(
            "SendNmi",
            "aws:executeAwsApi",
            _ec2("SendDiagnosticInterrupt", InstanceId="{{ InstanceId }}"),
            maxAttempts=1,
        ),
        _run_script("CrashDumps", "crash_dumps", p.batch_slo),
        _script_step(
            "NewBootWithDump",
            "rebooted",
            {
                "report": "{{ CrashDumps.Output }}",
                "boot_id_before": "{{ KdumpArmed.BootId }}",
                "guest_now_before": "{{ KdumpArmed.GuestNow }}",
                "require_dump": p.require_armed,
            },
            [
                {"Name": "BootId", "Selector": "$.Payload.boot_id", "Type": "String"},
                {"Name": "Dump", "Selector": "$.Payload.dump", "Type": "String"},
            ],
        ),
        *(
            _step(
                f"Wait{kind}Ok",
                "aws:waitForAwsResourceProperty",
                _ec2(
                    "DescribeInstanceStatus",
                    **one,
                    PropertySelector=f"$.InstanceStatuses[0].{kind}.Status",
                    DesiredValues=["ok"],
                ),
                timeoutSeconds=p.batch_slo,
            )
            for kind in ("InstanceStatus", "SystemStatus")
        ),
    ]
    return {
        "schemaVersion": "0.3",
        "description": f"chaosec2panic: one NMI to one opted-in instance, guarded ({p.title})",
        "assumeRole": "{{ AutomationAssumeRole }}",
        "parameters": {
            "InstanceId": {
                "type": "String",
                "description": "the instance to interrupt",
                "allowedPattern": "^i-([0-9a-f]{8}|[0-9a-f]{17})$",
            },
            "AutomationAssumeRole": {
                "type": "String",
                "default": "",
                "description": "the role Automation runs as",
            },
        },
        "mainSteps": steps,
        "outputs": [
            "KdumpStatus.Output",
            "KdumpArmed.BootId",
            "KdumpArmed.GuestNow",
            "CrashDumps.Output",
            "NewBootWithDump.BootId",
            "NewBootWithDump.Dump",
        ],
    }


def fleet_runbook(p: Plan) -> Dict[str, Any]:
    params = p.request.describe_params()
    key, value = p.opt_in
    opt_in = {"Name": f"tag:{key}", "Values": [value]}
    filters = params.get("Filters", [])
    params["Filters"] = filters if opt_in in filters else [*filters, opt_in]
    r = p.request
    choose = {
        "ids": "{{ Resolve.InstanceIds }}",
        "count": r.count or 0,
        "percent": r.percent or 0,
        "seed": -1 if r.seed is None else r.seed,
        "max_instances": p.max_instances,
    }
    return {
        "schemaVersion": "0.3",
        "description": f"chaosec2panic: {p.title}. Resolve, cap, run {p.name('instance')} on each",
        "assumeRole": "{{ AutomationAssumeRole }}",
        "parameters": {
            "AutomationAssumeRole": {
                "type": "String",
                "default": "",
                "description": "the role Automation runs as",
            },
        },
        "mainSteps": [
            _step(
                "Resolve",
                "aws:executeAwsApi",
                _ec2("DescribeInstances", **params),
                outputs=[
                    {
                        "Name": "InstanceIds",
                        "Selector": "$.Reservations..Instances..InstanceId",
                        "Type": "StringList",
                    }
                ],
            ),
            _script_step(
                "Select",
                "select",
                choose,
                [
                    {"Name": "InstanceIds", "Selector": "$.Payload.ids", "Type": "StringList"},
                    {"Name": "Seed", "Selector": "$.Payload.seed", "Type": "Integer"},
                ],
            ),
            _step(
                "NmiEach",
                "aws:executeAutomation",
                {
                    "DocumentName": p.name("instance"),
                    "TargetParameterName": "InstanceId",
                    "Targets": [{"Key": "ParameterValues", "Values": "{{ Select.InstanceIds }}"}],
                    "MaxConcurrency": p.concurrency,
                    "MaxErrors": "0",
                    "RuntimeParameters": {"AutomationAssumeRole": ["{{ AutomationAssumeRole }}"]},
                },
            ),
        ],
        "outputs": ["Select.InstanceIds", "Select.Seed", "NmiEach.ExecutionId", "NmiEach.Status"],
    }
