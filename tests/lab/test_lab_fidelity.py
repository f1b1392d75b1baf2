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


class SteppedClock:
    """The lab's clock: the wall clock plus what the test adds (well within the 15 minutes a
    signature may be off), so a transient state ends when the test says."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_instances_pass_through_transient_states_and_a_terminated_one_stays_gone(make_lab):
    clock = SteppedClock()
    lab = make_lab([opted_in("a"), opted_in("b")], time_scale=10.0, clock=clock)  # 30 s per 3 model s
    ec2 = boto3.client("ec2")
    a, b = lab.id("a"), lab.id("b")

    def described(instance_id: str) -> dict:
        return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]

    def state(instance_id: str) -> str:
        name = described(instance_id)["State"]["Name"]
        [status] = ec2.describe_instance_status(InstanceIds=[instance_id], IncludeAllInstances=True)[
            "InstanceStatuses"
        ]
        assert status["InstanceState"]["Name"] == name  # both views say the same
        return name

    first_launch = described(a)["LaunchTime"]
    ec2.stop_instances(InstanceIds=[a])
    assert state(a) == "stopping"
    clock.offset += 31
    assert state(a) == "stopped"
    with pytest.raises(ClientError) as caught:
        ec2.send_diagnostic_interrupt(InstanceId=a)
    assert code(caught) == "IncorrectInstanceState"
    clock.offset += 60
    ec2.start_instances(InstanceIds=[a])
    assert state(a) == "pending"
    assert (described(a)["LaunchTime"] - first_launch).total_seconds() >= 90  # renewed at the start
    clock.offset += 51
    assert state(a) == "running"

    ec2.terminate_instances(InstanceIds=[b])
    assert state(b) == "shutting-down"
    clock.offset += 31
    assert state(b) == "terminated"
    for call, verb in ((ec2.start_instances, "started"), (ec2.stop_instances, "stopped")):
        with pytest.raises(ClientError) as caught:
            call(InstanceIds=[b])
        assert code(caught) == "IncorrectInstanceState"
        assert caught.value.response["Error"]["Message"] == (
            f"The instance '{b}' is not in a state from which it can be {verb}."
        )
    ec2.terminate_instances(InstanceIds=[b])  # asking again changes nothing
    assert state(b) == "terminated"
    assert lab.lab.guests[b].state == "stopped"  # the guest stays down


def test_a_failing_status_check_says_since_when_it_failed(make_lab):
    # InstanceStatusDetails.ImpairedSince, as AWS documents it: when the check failed, only
    # while it fails. The lab's check fails at once (AWS's runs each minute: still a model).
    clock = SteppedClock()
    lab = make_lab([opted_in("a")], time_scale=10.0, clock=clock)  # a crash cycle of minutes
    ec2 = boto3.client("ec2")
    a = lab.id("a")

    def reachability() -> tuple[str, dict]:
        [status] = ec2.describe_instance_status(InstanceIds=[a])["InstanceStatuses"]
        return status["InstanceStatus"]["Status"], status["InstanceStatus"]["Details"][0]

    status, detail = reachability()
    assert (status, detail["Status"]) == ("ok", "passed") and "ImpairedSince" not in detail
    ec2.send_diagnostic_interrupt(InstanceId=a)
    status, detail = reachability()
    nmi = next(e["epoch"] for e in lab.events(name="a") if e["kind"] == "nmi")
    assert (status, detail["Status"]) == ("impaired", "failed")
    assert abs(detail["ImpairedSince"].timestamp() - nmi) < 0.001
    clock.offset += 600  # past the capture, the reboot and the agent
    status, detail = reachability()
    assert (status, detail["Status"]) == ("ok", "passed") and "ImpairedSince" not in detail
