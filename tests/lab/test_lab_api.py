"""The lab speaks the AWS APIs as boto3 calls them: request and response shapes checked by botocore."""

import boto3
import pytest
from botocore.exceptions import ClientError, WaiterError
from conftest import make_alarm, opted_in


@pytest.fixture
def lab(make_lab):
    return make_lab([opted_in("up"), opted_in("down", state="stopped"), opted_in("suse", os="suse")])


def test_sts_and_cloudwatch_pass_through_to_moto(lab):
    assert boto3.client("sts").get_caller_identity()["Account"].isdigit()
    cw = boto3.client("cloudwatch")
    make_alarm("cpu")
    cw.set_alarm_state(AlarmName="cpu", StateValue="ALARM", StateReason="test")
    assert cw.describe_alarms(AlarmNames=["cpu"])["MetricAlarms"][0]["StateValue"] == "ALARM"


def test_describe_instance_status_running_only_unless_all(lab):
    ec2 = boto3.client("ec2")
    running = ec2.describe_instance_status()["InstanceStatuses"]
    assert {s["InstanceId"] for s in running} == {lab.id("up"), lab.id("suse")}
    everything = ec2.describe_instance_status(IncludeAllInstances=True)["InstanceStatuses"]
    down = next(s for s in everything if s["InstanceId"] == lab.id("down"))
    assert down["InstanceState"]["Name"] == "stopped" and down["InstanceStatus"]["Status"] == "not-applicable"
    with pytest.raises(ClientError, match=r"InvalidInstanceID\.NotFound"):
        ec2.describe_instance_status(InstanceIds=["i-0123456789abcdef0"])
    with pytest.raises(ClientError, match=r"InvalidInstanceID\.Malformed"):
        ec2.describe_instance_status(InstanceIds=["i-zz"])


def test_paginated_describe_instance_status(lab):
    pages = (
        boto3.client("ec2")
        .get_paginator("describe_instance_status")
        .paginate(IncludeAllInstances=True, PaginationConfig={"PageSize": 5})
    )
    assert sum(len(p["InstanceStatuses"]) for p in pages) == 3


def test_console_output_is_base64_decoded_by_boto3(lab):
    out = boto3.client("ec2").get_console_output(InstanceId=lab.id("up"), Latest=True)
    assert out["InstanceId"] == lab.id("up") and "up login:" in out["Output"]


def test_diagnostic_interrupt_errors_as_aws_answers_them(lab):
    ec2 = boto3.client("ec2")
    with pytest.raises(ClientError, match="IncorrectInstanceState"):
        ec2.send_diagnostic_interrupt(InstanceId=lab.id("down"))
    with pytest.raises(ClientError, match="DryRunOperation"):
        ec2.send_diagnostic_interrupt(InstanceId=lab.id("up"), DryRun=True)
    assert lab.nmi_names() == []


def test_ssm_errors_as_aws_answers_them(lab):
    ssm = boto3.client("ssm")
    with pytest.raises(ClientError, match="InvalidInstanceId"):
        ssm.send_command(
            InstanceIds=["i-0123456789abcdef0"],
            DocumentName="AWS-RunShellScript",
            Parameters={"commands": ["true"]},
        )
    with pytest.raises(ClientError, match="InvocationDoesNotExist"):
        ssm.get_command_invocation(CommandId="0b5a4b4e-0000-0000-0000-000000000000", InstanceId=lab.id("up"))
    with pytest.raises(ClientError, match="InvalidDocument"):
        ssm.send_command(
            InstanceIds=[lab.id("up")], DocumentName="AWS-Nope", Parameters={"commands": ["true"]}
        )


def test_a_command_runs_under_sh_on_the_guest(lab):
    ssm = boto3.client("ssm")
    command = ssm.send_command(
        InstanceIds=[lab.id("up")],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["echo $((6 * 7)); exit 3"]},
    )["Command"]
    with pytest.raises(WaiterError):  # the command_executed waiter fails on a non-zero exit
        ssm.get_waiter("command_executed").wait(
            CommandId=command["CommandId"],
            InstanceId=lab.id("up"),
            WaiterConfig={"Delay": 1, "MaxAttempts": 10},
        )
    found = ssm.get_command_invocation(CommandId=command["CommandId"], InstanceId=lab.id("up"))
    assert (found["Status"], found["ResponseCode"], found["StandardOutputContent"]) == ("Failed", 3, "42\n")


def test_agents_of_stopped_instances_are_connection_lost(lab):
    infos = boto3.client("ssm").describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [lab.id("up"), lab.id("down")]}]
    )["InstanceInformationList"]
    status = {i["InstanceId"]: (i["PingStatus"], i["PlatformType"]) for i in infos}
    assert status == {lab.id("up"): ("Online", "Linux"), lab.id("down"): ("ConnectionLost", "Linux")}
