"""Where the lab once answered more kindly than AWS, it now answers as AWS does (real boto3 over
HTTP): pagination and limits per the botocore model, filters, command statuses, id errors."""

import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import opted_in

UNCHECKED = Config(parameter_validation=False)  # what the lab does with what botocore would stop


def code(caught: pytest.ExceptionInfo) -> str:
    return caught.value.response["Error"]["Code"]


def test_describe_instances_without_max_results_answers_every_match(make_lab):
    make_lab([{**opted_in("web"), "count": 105}])
    ec2 = boto3.client("ec2")
    everything = ec2.describe_instances()
    assert sum(len(r["Instances"]) for r in everything["Reservations"]) == 105
    assert "NextToken" not in everything
    page = ec2.describe_instances(MaxResults=50)
    assert sum(len(r["Instances"]) for r in page["Reservations"]) == 50 and page["NextToken"]


def test_describe_instance_status_filters_and_limits(make_lab):
    lab = make_lab([opted_in("up"), opted_in("down", state="stopped"), opted_in("down2", state="stopped")])
    ec2 = boto3.client("ec2")
    stopped = ec2.describe_instance_status(
        IncludeAllInstances=True, Filters=[{"Name": "instance-state-name", "Values": ["stopped"]}]
    )["InstanceStatuses"]
    assert sorted(s["InstanceId"] for s in stopped) == sorted([lab.id("down"), lab.id("down2")])
    running = ec2.describe_instance_status(
        IncludeAllInstances=True, Filters=[{"Name": "instance-state-code", "Values": ["16"]}]
    )["InstanceStatuses"]
    assert [s["InstanceId"] for s in running] == [lab.id("up")]
    unchecked = boto3.client("ec2", config=UNCHECKED)
    for size in (4, 1001):
        with pytest.raises(ClientError) as caught:
            unchecked.describe_instance_status(MaxResults=size)
        assert code(caught) == "InvalidParameterValue"
    with pytest.raises(ClientError) as caught:
        ec2.describe_instance_status(Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
    assert code(caught) == "InvalidParameterValue"
    with pytest.raises(ClientError) as caught:
        ec2.describe_instance_status(InstanceIds=[lab.id("up")], MaxResults=5)
    assert code(caught) == "InvalidParameterCombination"


def test_describe_instance_information_filters_limits_and_agentless_instances(make_lab):
    lab = make_lab(
        [
            opted_in("linux", tags={"team": "a"}),
            opted_in("windows", os="windows-2022", tags={"team": "b"}),
            opted_in("no-agent", agent=False),
        ]
    )
    ssm = boto3.client("ssm")

    def ids(**params) -> list:
        return sorted(
            i["InstanceId"] for i in ssm.describe_instance_information(**params)["InstanceInformationList"]
        )

    assert ids() == sorted([lab.id("linux"), lab.id("windows")])  # never registered: not listed
    assert ids(Filters=[{"Key": "PlatformTypes", "Values": ["Windows"]}]) == [lab.id("windows")]
    assert ids(Filters=[{"Key": "tag:team", "Values": ["a"]}]) == [lab.id("linux")]
    assert ids(InstanceInformationFilterList=[{"key": "PingStatus", "valueSet": ["ConnectionLost"]}]) == []
    lab.control("/_lab/agent", {"name": "linux", "online": False})
    assert ids(Filters=[{"Key": "PingStatus", "Values": ["ConnectionLost"]}]) == [lab.id("linux")]
    with pytest.raises(ClientError) as caught:
        boto3.client("ssm", config=UNCHECKED).describe_instance_information(MaxResults=51)
    assert code(caught) == "InvalidParameterValue"


def test_list_commands_says_failed_for_a_failed_command(make_lab):
    lab = make_lab([opted_in("web")])
    ssm = boto3.client("ssm")
    sent = ssm.send_command(
        InstanceIds=[lab.id("web")], DocumentName="AWS-RunShellScript", Parameters={"commands": ["exit 3"]}
    )["Command"]["CommandId"]
    deadline = time.monotonic() + 120  # only ends a wait for what never comes
    while (status := ssm.list_commands(CommandId=sent)["Commands"][0]["Status"]) in ("Pending", "InProgress"):
        assert time.monotonic() < deadline, "the command never ended"
        time.sleep(0.1)
    assert status == "Failed"
    assert ssm.list_commands(CommandId=sent)["Commands"][0]["ErrorCount"] == 1


def test_a_malformed_instance_id_is_malformed_not_missing(make_lab):
    lab = make_lab([opted_in("web")])
    ec2 = boto3.client("ec2")
    for call in (ec2.describe_instances, ec2.reboot_instances):
        with pytest.raises(ClientError) as caught:
            call(InstanceIds=["i-nothex"])
        assert code(caught) == "InvalidInstanceID.Malformed"
        assert caught.value.response["Error"]["Message"] == 'Invalid id: "i-nothex"'
    with pytest.raises(ClientError) as caught:
        ec2.describe_instances(InstanceIds=["i-0123456789abcdef0"])
    assert code(caught) == "InvalidInstanceID.NotFound"
    assert ec2.describe_instances(InstanceIds=[lab.id("web")])["Reservations"]
