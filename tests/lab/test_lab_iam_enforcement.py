"""The lab refuses what an IAM user's policies do not allow, as AWS does; the project's policy is enough."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Dict

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from conftest import ROOT, failed_probes, opted_in, run_experiment

from chaosec2panic import cli
from chaosec2panic.iam import policy
from chaosec2panic.lab.iam import evaluate

CLI = str(Path(sys.executable).with_name("chaosec2panic"))
EXPERIMENT = ROOT / "experiments" / "crash-capture.yaml"
# How each service refuses (by protocol: EC2's own, JSON, query).
REFUSED = {
    "ec2": "UnauthorizedOperation",
    "ssm": "AccessDeniedException",
    "cloudwatch": "AccessDeniedException",
    "elasticloadbalancing": "AccessDenied",
}
TARGET_GROUP = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef"


def experiment_activities(path: Path) -> list:
    data = yaml.safe_load(path.read_text())
    steps = [*data["steady-state-hypothesis"]["probes"], *data["method"], *data.get("rollbacks", [])]
    return sorted({s["provider"]["func"] for s in steps})


def printed_policy(capsys, *args: str) -> Dict[str, Any]:
    """What ``chaosec2panic policy ARGS`` prints."""
    assert cli.main(["policy", *args]) == 0
    return json.loads(capsys.readouterr().out)


def iam_user(name: str, document: Dict[str, Any]) -> Dict[str, str]:
    """An IAM user of the lab holding ``document`` as a managed policy: its keys, as AWS_* variables."""
    iam = boto3.client("iam")
    iam.create_user(UserName=name)
    arn = iam.create_policy(PolicyName=f"{name}-policy", PolicyDocument=json.dumps(document))["Policy"]["Arn"]
    iam.attach_user_policy(UserName=name, PolicyArn=arn)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def as_user(keys: Dict[str, str], service: str) -> Any:
    return boto3.client(
        service,
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
    )


def answer(call: Callable[[], Any]) -> str:
    """The error code a call is answered with ("" when it succeeds)."""
    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    return ""


def one_call(keys: Dict[str, str], action: str, instance_id: str) -> Callable[[], Any]:
    """One direct call of ``action`` by the user (instance changes as DryRun)."""
    service = action.split(":")[0]
    client = as_user(
        keys, {"cloudwatch": "cloudwatch", "elasticloadbalancing": "elbv2"}.get(service, service)
    )
    command = str(uuid.uuid4())
    calls = {
        "cloudwatch:DescribeAlarms": lambda: client.describe_alarms(),
        "cloudwatch:ListTagsForResource": lambda: client.list_tags_for_resource(
            ResourceARN="arn:aws:cloudwatch:us-east-1:123456789012:alarm:errors"
        ),
        "ec2:DescribeInstanceStatus": lambda: client.describe_instance_status(),
        "ec2:DescribeInstanceTypes": lambda: client.describe_instance_types(InstanceTypes=["m5.large"]),
        "ec2:DescribeInstances": lambda: client.describe_instances(),
        "ec2:GetConsoleOutput": lambda: client.get_console_output(InstanceId=instance_id),
        "elasticloadbalancing:DescribeTargetHealth": lambda: client.describe_target_health(
            TargetGroupArn=TARGET_GROUP
        ),
        "ssm:DescribeInstanceInformation": lambda: client.describe_instance_information(),
        "ssm:GetCommandInvocation": lambda: client.get_command_invocation(
            CommandId=command, InstanceId=instance_id
        ),
        "ssm:ListCommandInvocations": lambda: client.list_command_invocations(CommandId=command),
        "ssm:ListCommands": lambda: client.list_commands(),
        "ec2:RebootInstances": lambda: client.reboot_instances(InstanceIds=[instance_id], DryRun=True),
        "ec2:StartInstances": lambda: client.start_instances(InstanceIds=[instance_id], DryRun=True),
        "ec2:StopInstances": lambda: client.stop_instances(InstanceIds=[instance_id], DryRun=True),
        "ec2:SendDiagnosticInterrupt": lambda: client.send_diagnostic_interrupt(
            InstanceId=instance_id, DryRun=True
        ),
        "ssm:SendCommand": lambda: client.send_command(
            InstanceIds=[instance_id], DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]}
        ),
    }
    return calls[action]


def test_a_user_with_the_printed_policy_runs_crash_capture_green(make_lab, tmp_path, capsys):
    lab = make_lab(
        [opted_in("a", tags={"role": "crash-capture"}), {"name": "bystander", "tags": {"role": "other"}}]
    )
    activities = experiment_activities(EXPERIMENT)
    document = printed_policy(capsys, *(a for name in activities for a in ("--activity", name)))
    keys = iam_user("chaos-runner", document)
    journal = run_experiment(lab, EXPERIMENT, tmp_path / "journal.json", **keys)
    assert journal["status"] == "completed" and journal["deviated"] is False, failed_probes(journal)
    assert lab.nmi_names() == ["a"]
    # The user's calls were evaluated, not waved through: it may not stop a bystander.
    refused = answer(lambda: as_user(keys, "ec2").stop_instances(InstanceIds=[lab.id("bystander")]))
    assert refused == "UnauthorizedOperation"


@pytest.mark.parametrize("removed", [None, "Read", "ActOnOptedInInstances", "RunGuestScripts"])
def test_each_statement_of_the_policy_is_needed(make_lab, capsys, removed):
    lab = make_lab([opted_in("a")])
    document = printed_policy(
        capsys, *(a for n in experiment_activities(EXPERIMENT) for a in ("--activity", n))
    )
    statements = {s["Sid"]: s for s in document["Statement"]}
    assert set(statements) == {"Read", "ActOnOptedInInstances", "RunGuestScripts"}
    kept = [s for sid, s in statements.items() if sid != removed]
    keys = iam_user("partial", {**document, "Statement": kept})
    for sid, statement in statements.items():
        for action in statement["Action"]:
            code = answer(one_call(keys, action, lab.id("a")))
            refusal = REFUSED[action.split(":")[0]]
            if sid == removed:
                assert code == refusal, f"{action} without {sid}"
            else:
                assert code != refusal, f"{action} refused with {sid}"


def test_the_opt_in_tag_condition_is_enforced(make_lab):
    lab = make_lab([opted_in("tagged"), {"name": "shy", "tags": {"role": "shy"}}])
    keys = iam_user("nmi-only", policy(["send_nmi"]))
    ec2 = as_user(keys, "ec2")
    with pytest.raises(ClientError) as refused:
        ec2.send_diagnostic_interrupt(InstanceId=lab.id("shy"))
    error = refused.value.response["Error"]
    assert error["Code"] == "UnauthorizedOperation"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert (
        "User: arn:aws:iam::123456789012:user/nmi-only is not authorized to perform: "
        "ec2:SendDiagnosticInterrupt on resource: "
        f"arn:aws:ec2:us-east-1:123456789012:instance/{lab.id('shy')}"
    ) in error["Message"]
    assert "Encoded authorization failure message: " in error["Message"]
    ec2.send_diagnostic_interrupt(InstanceId=lab.id("tagged"))
    lab.wait_for_event("nmi", "tagged")
    assert lab.nmi_names() == ["tagged"]
    # Tags are read when the call is evaluated: once opted in, the same user may.
    boto3.client("ec2").create_tags(
        Resources=[lab.id("shy")], Tags=[{"Key": "chaos:nmi", "Value": "allowed"}]
    )
    assert answer(lambda: ec2.send_diagnostic_interrupt(InstanceId=lab.id("shy"), DryRun=True)) == (
        "DryRunOperation"
    )


def test_dry_run_answers_unauthorized_to_a_user_without_the_permission(make_lab):
    lab = make_lab([opted_in("web")])
    reader = as_user(iam_user("reader", policy(["panic_on_console"])), "ec2")
    nmi = as_user(iam_user("nmi", policy(["send_nmi"])), "ec2")
    dry_run = {"InstanceId": lab.id("web"), "DryRun": True}
    assert answer(lambda: reader.send_diagnostic_interrupt(**dry_run)) == "UnauthorizedOperation"
    assert answer(lambda: nmi.send_diagnostic_interrupt(**dry_run)) == "DryRunOperation"
    assert lab.nmi_names() == []


def test_send_command_is_evaluated_on_the_document_too(make_lab):
    lab = make_lab([opted_in("web")])
    ssm = as_user(iam_user("scripts", policy(["kdump_armed"])), "ssm")
    with pytest.raises(ClientError) as refused:
        ssm.send_command(
            InstanceIds=[lab.id("web")],
            DocumentName="AWS-ApplyPatchBaseline",
            Parameters={"commands": ["true"]},
        )
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "on resource: arn:aws:ssm:us-east-1::document/AWS-ApplyPatchBaseline" in str(refused.value)


def test_preflight_reports_the_refusal_as_a_permission_problem(make_lab):
    lab = make_lab([opted_in("web")])
    # A policy for another opt-in tag: everything the preflight reads, but no NMI to this instance.
    keys = iam_user("preflight", policy(["ready_for_nmi"], opt_in=("team", "sre")))
    done = subprocess.run(
        [CLI, "preflight", "--instance-id", lab.id("web"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **keys},
    )
    assert done.returncode == 1, done.stderr
    [row] = json.loads(done.stdout)
    assert {c for c, why in row["checks"].items() if why} == {"permission"}
    assert row["checks"]["permission"].startswith("DryRun answered UnauthorizedOperation: ")
    assert "ec2:SendDiagnosticInterrupt" in row["checks"]["permission"]
    assert lab.nmi_names() == []


ARN = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"


def allow(**more: Any) -> Dict[str, Any]:
    statement = {"Effect": "Allow", "Action": "ec2:*", "Resource": "*", **more}
    return {k: v for k, v in statement.items() if v is not None}


@pytest.mark.parametrize(
    "statements, allowed",
    [
        ([allow()], True),
        ([allow(), {"Effect": "Deny", "Action": "ec2:Send*", "Resource": ARN}], False),
        ([allow(Action="ec2:Reboot*")], False),
        ([allow(Action=None, NotAction="ec2:SendDiagnosticInterrupt")], False),
        ([allow(Resource="arn:aws:ec2:*:*:instance/i-0123456789abcdef?")], True),
        ([allow(Resource="arn:aws:ec2:*:*:volume/*")], False),
        ([allow(Condition={"StringLike": {"ec2:ResourceTag/team": "s*"}})], True),
        ([allow(Condition={"StringEquals": {"aws:resourcetag/team": ["ops", "sre"]}})], True),
        ([allow(Condition={"StringEquals": {"aws:ResourceTag/owner": "sre"}})], False),
        ([allow(Condition={"StringNotEquals": {"aws:ResourceTag/owner": "sre"}})], True),
        ([allow(Condition={"StringEquals": {"aws:RequestedRegion": "eu-west-1"}})], False),
        ([allow(Condition={"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:user/c*"}})], True),
        ([allow(Condition={"NumericLessThan": {"aws:MultiFactorAuthAge": "3600"}})], False),  # fails closed
        (
            [allow(), {"Effect": "Deny", "Action": "*", "Resource": "*", "Condition": {"Foo": {"k": "v"}}}],
            False,
        ),
    ],
)
def test_evaluate(statements, allowed):
    context = {"aws:RequestedRegion": "us-east-1", "aws:PrincipalArn": "arn:aws:iam::123456789012:user/chaos"}
    resources = {ARN: {"aws:ResourceTag/team": "sre", "ec2:ResourceTag/team": "sre"}}
    decision = evaluate([{"Statement": statements}], "ec2:SendDiagnosticInterrupt", resources, context)
    assert decision.allowed is allowed
