"""Clients nobody in this project wrote, against the lab: every answer read through botocore's own
output shapes, the fields real clients read, the AWS CLI v1, and chaostoolkit-aws's stock probes."""

import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, List

import boto3
import pytest
from botocore import xform_name
from botocore.exceptions import ClientError
from botocore.model import Shape
from chaosaws.ec2 import probes as stock_ec2
from conftest import opted_in, wait_for

AWS_CLI = shutil.which("aws", path=str(Path(sys.executable).parent))

TYPES = {
    "string": str,
    "integer": int,
    "long": int,
    "boolean": bool,
    "timestamp": datetime.datetime,
    "double": (int, float),
    "float": (int, float),
    "blob": bytes,
}
# Where AWS's answers are outside the model's own enum: DescribeInstances says "windows" ("This
# value is windows for Windows instances", EC2 API reference, Instance.Platform), the model's
# PlatformValues enum "Windows"; clients (this project's, the AWS CLI's) read "windows".
ENUMS_AS_AWS_ANSWERS = {"PlatformValues": {"windows"}}


def shape_problems(value: Any, shape: Shape, path: str) -> List[str]:
    """What is wrong with a parsed answer against its botocore shape: a required member missing,
    a value of the wrong type, a string outside its enum."""
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path} is {type(value).__name__}, not a structure"]
        problems = [f"{path}.{m} is missing" for m in shape.required_members if m not in value]
        for name, member in shape.members.items():
            if name in value:
                problems += shape_problems(value[name], member, f"{path}.{name}")
        return problems
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path} is {type(value).__name__}, not a list"]
        return [p for n, item in enumerate(value) for p in shape_problems(item, shape.member, f"{path}[{n}]")]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path} is {type(value).__name__}, not a map"]
        return [p for k, v in value.items() for p in shape_problems(v, shape.value, f"{path}[{k}]")]
    wanted = TYPES[kind]
    if not isinstance(value, wanted) or (kind != "boolean" and isinstance(value, bool)):
        return [f"{path} is {type(value).__name__} {value!r}, not {kind}"]
    if (
        kind == "string"
        and shape.enum
        and value not in {*shape.enum, *ENUMS_AS_AWS_ANSWERS.get(shape.name, ())}
    ):
        return [f"{path} is {value!r}, not one of its enum {sorted(shape.enum)}"]
    return []


def check(client: Any, operation: str, **params: Any) -> dict:
    """Call ``operation`` and assert its answer matches the operation's output shape."""
    answer = getattr(client, xform_name(operation))(**params)
    shape = client.meta.service_model.operation_model(operation).output_shape
    body = {k: v for k, v in answer.items() if k != "ResponseMetadata"}
    assert (shape_problems(body, shape, operation) if shape else list(body)) == []
    return answer


@pytest.fixture
def fleet(make_lab):
    lab = make_lab(
        [
            opted_in("linux", os="amazon-linux-2023"),
            opted_in("rhel", os="rhel"),
            opted_in("windows", os="windows-2022"),
        ]
    )
    return lab


def test_every_answer_matches_botocore_output_shapes(fleet):
    ec2, ssm = boto3.client("ec2"), boto3.client("ssm")
    linux, windows = fleet.id("linux"), fleet.id("windows")
    check(ec2, "DescribeInstances")
    check(ec2, "DescribeInstances", InstanceIds=[linux, windows])
    check(ec2, "DescribeInstanceStatus", IncludeAllInstances=True)
    check(ec2, "DescribeInstanceTypes", InstanceTypes=["m5.large"])
    check(ec2, "DescribeTags", Filters=[{"Name": "resource-id", "Values": [linux]}])
    check(ec2, "GetConsoleOutput", InstanceId=linux, Latest=True)
    check(ec2, "RebootInstances", InstanceIds=[windows])
    check(ssm, "DescribeInstanceInformation")
    sent = check(
        ssm,
        "SendCommand",
        InstanceIds=[linux],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["uname -r"]},
    )
    command = sent["Command"]["CommandId"]
    invocation = wait_for(
        lambda: check(ssm, "GetCommandInvocation", CommandId=command, InstanceId=linux),
        lambda a: a["Status"] not in ("Pending", "InProgress", "Delayed"),
        "the command's end",
    )
    assert invocation["Status"] == "Success"
    check(ssm, "ListCommands", CommandId=command)
    check(ssm, "ListCommandInvocations", CommandId=command, Details=True)
    check(boto3.client("sts"), "GetCallerIdentity")
    check(boto3.client("cloudwatch"), "DescribeAlarms")


def test_instances_carry_the_fields_real_clients_read(fleet):
    ec2 = boto3.client("ec2")
    answer = ec2.describe_instances()
    instances = {i["InstanceId"]: i for r in answer["Reservations"] for i in r["Instances"]}
    products = {
        fleet.id("linux"): ("Linux/UNIX", "RunInstances"),
        fleet.id("rhel"): ("Red Hat Enterprise Linux", "RunInstances:0010"),
        fleet.id("windows"): ("Windows", "RunInstances:0002"),
    }
    zones = {z["ZoneName"]: z["ZoneId"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
    for instance_id, (details, operation) in products.items():
        i = instances[instance_id]
        assert (i["PlatformDetails"], i["UsageOperation"]) == (details, operation)
        assert i["UsageOperationUpdateTime"] == i["LaunchTime"]
        assert i["Placement"]["AvailabilityZoneId"] == zones[i["Placement"]["AvailabilityZone"]]
        assert i["CpuOptions"] == {"CoreCount": 1, "ThreadsPerCore": 2}  # m5.large: 2 vCPUs
        assert i["CurrentInstanceBootMode"] == "legacy-bios"
        interface_groups = [g for n in i["NetworkInterfaces"] for g in n["Groups"]]
        assert i["SecurityGroups"] == interface_groups and interface_groups


def test_one_request_id_in_header_and_body_for_every_answer(fleet):
    ec2 = boto3.client("ec2")
    seen = []
    for answer in (
        ec2.describe_instances(),  # moto's, rewritten
        ec2.reboot_instances(InstanceIds=[fleet.id("linux")]),  # moto's, then the guests'
        ec2.describe_instance_status(),  # the lab's own
        ec2.describe_instance_types(InstanceTypes=["m5.large"]),
    ):
        meta = answer["ResponseMetadata"]
        assert meta["RequestId"] == meta["HTTPHeaders"]["x-amzn-requestid"]
        seen.append(meta["RequestId"])
    assert len(set(seen)) == len(seen) and all(len(r) == 36 for r in seen)  # UUIDs, one per request


def test_errors_of_moto_keep_their_own_shape(fleet):
    with pytest.raises(ClientError) as refused:
        boto3.client("ec2").describe_instances(InstanceIds=["i-0123456789abcdef0"])
    assert refused.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"
    assert refused.value.response["ResponseMetadata"]["RequestId"]


def test_the_aws_cli_v1_drives_the_lab(fleet):
    assert AWS_CLI, "the AWS CLI v1 is missing: it comes with the test extra (pip install -e '.[test]')"
    env = {**os.environ, **fleet.server.environment()}
    url = env["AWS_ENDPOINT_URL"]

    def aws(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [AWS_CLI, "--endpoint-url", url, "--output", "json", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    listed = aws("ec2", "describe-instances", "--filters", "Name=tag:role,Values=linux")
    assert listed.returncode == 0, listed.stderr
    [instance] = [i for r in json.loads(listed.stdout)["Reservations"] for i in r["Instances"]]
    assert instance["InstanceId"] == fleet.id("linux") and instance["PlatformDetails"] == "Linux/UNIX"
    dry = aws("ec2", "send-diagnostic-interrupt", "--instance-id", fleet.id("linux"), "--dry-run")
    assert dry.returncode != 0 and "DryRunOperation" in dry.stderr
    assert fleet.nmi_names() == []
    sent = aws(
        "ssm",
        "send-command",
        "--document-name",
        "AWS-RunShellScript",
        "--instance-ids",
        fleet.id("linux"),
        "--parameters",
        '{"commands": ["uname -r; . /etc/os-release; echo $ID"]}',
    )
    assert sent.returncode == 0, sent.stderr
    command = json.loads(sent.stdout)["Command"]["CommandId"]
    ended = wait_for(
        lambda: aws(
            "ssm", "get-command-invocation", "--command-id", command, "--instance-id", fleet.id("linux")
        ),
        lambda done: done.returncode == 0 and json.loads(done.stdout)["Status"] == "Success",
        "the CLI's command",
    )
    release, os_id = json.loads(ended.stdout)["StandardOutputContent"].split()
    guest = fleet.lab.guests[fleet.id("linux")]
    assert release == guest.spec.family.kernel_release != os.uname().release  # the guest's, not the host's
    assert os_id == "amzn"


def test_chaostoolkit_aws_stock_ec2_probes_count_and_describe_the_fleet(fleet):
    filters = [{"Name": "tag:chaos:nmi", "Values": ["allowed"]}]
    assert stock_ec2.count_instances(filters=filters) == 3
    described = stock_ec2.describe_instances(filters=filters)
    ids = sorted(i["InstanceId"] for r in described["Reservations"] for i in r["Instances"])
    assert ids == sorted(fleet.id(n) for n in ("linux", "rhel", "windows"))
    assert stock_ec2.instance_state("running", instance_ids=[fleet.id("linux")]) is True
