"""The IAM policy holds exactly the AWS operations the activities perform against the lab."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
from conftest import make_alarm, opted_in

from chaosec2panic import actions, probes, rollbacks
from chaosec2panic.controls import alarms
from chaosec2panic.iam import activity_actions, policy

CLI = str(Path(sys.executable).with_name("chaosec2panic"))


SIGNING_TO_IAM = {"monitoring": "cloudwatch"}  # CloudWatch signs as "monitoring"
S3_TO_IAM = {"HeadBucket": "ListBucket", "ListObjectsV2": "ListBucket"}  # S3 actions named otherwise
# What collect_crash_dump's instances call with their own role (s3:PutObject), not the caller.
INSTANCE_ROLE_CALLS = {
    "s3:PutObject",
    "s3:CreateMultipartUpload",
    "s3:UploadPart",
    "s3:CompleteMultipartUpload",
}


def calls_of(lab, run) -> set:
    """The IAM actions of the AWS calls the lab answered while ``run`` ran."""
    before = dict(lab.lab.calls)
    run()
    changed = [k.split(":", 1) for k, v in lab.lab.calls.items() if v > before.get(k, 0)]
    return {
        f"{SIGNING_TO_IAM.get(service, service)}:{S3_TO_IAM.get(operation, operation)}"
        for service, operation in changed
    }


def test_every_activity_calls_only_what_it_declares_and_the_policy_covers_them_all(make_lab):
    lab = make_lab(
        [
            opted_in("web"),
            opted_in("stuck", kdump=False, panic_timeout=0, acpi_reboot=False),
            opted_in("bare", kdump=False, crashkernel_mib=0),
        ]
    )
    conf = lab.configuration()
    web, stuck, bare = [lab.id("web")], [lab.id("stuck")], [lab.id("bare")]
    make_alarm("errors", tags={"chaos-stop": "yes"})
    guarded = {**conf, "chaosec2panic_stop_alarms": {"names": ["errors"]}}
    boto3.client("s3").create_bucket(Bucket="crash-dumps")
    runs = {
        "instance_healthy": lambda: probes.instance_healthy(instance_ids=web, configuration=conf),
        "kdump_armed": lambda: probes.kdump_armed(instance_ids=web, configuration=conf),
        "send_nmi": lambda: actions.send_nmi(instance_ids=web, configuration=guarded),
        "stop_alarms": lambda: (
            alarms.configure_control(conf, None, tags={"chaos-stop": "yes"}, interval=60),
            alarms.cleanup_control(),
        ),
        "recovery_seconds": lambda: probes.recovery_seconds(timeout=30, configuration=conf),
        "recovered_within": lambda: probes.recovered_within(30, configuration=conf),
        "panic_on_console": lambda: probes.panic_on_console(configuration=conf),
        "crash_dump_present": lambda: probes.crash_dump_present(configuration=conf),
        "crash_dumps": lambda: probes.crash_dumps(configuration=conf),
        "collect_crash_dump": lambda: actions.collect_crash_dump("crash-dumps", configuration=conf),
        "arm_kdump": lambda: actions.arm_kdump(instance_ids=bare, timeout=60, configuration=conf),
        "restore_kdump_settings": lambda: rollbacks.restore_kdump_settings(
            instance_ids=bare, timeout=60, configuration=conf
        ),
    }
    observed = {}
    for name, run in runs.items():
        observed[name] = calls_of(lab, run)
    uploaded = observed["collect_crash_dump"] & INSTANCE_ROLE_CALLS
    assert "s3:CompleteMultipartUpload" in uploaded  # the instance uploaded its dump, through the lab
    observed["collect_crash_dump"] -= INSTANCE_ROLE_CALLS
    # More crashes of the same instance: a listing longer than the 2,500 characters that
    # ListCommandInvocations shows, so the full output is read with GetCommandInvocation.
    for _ in range(3):
        time.sleep(1.1)
        actions.send_nmi(instance_ids=web, configuration=conf)
        probes.recovered_within(30, configuration=conf)
    # Real page data is compressed, so a real dump's first blocks are long to send: past the
    # 2,500 characters ListCommandInvocations shows, they are read with GetCommandInvocation.
    newest = max(
        (lab.lab.guests[web[0]].root / "var/crash").glob("*/vmcore"), key=lambda f: f.stat().st_mtime
    )
    with open(newest, "r+b") as dump:
        dump.seek(8192)
        dump.write(os.urandom(56 * 1024))
    observed["crash_dumps"] |= calls_of(lab, lambda: probes.crash_dumps(configuration=conf))
    assert "ssm:GetCommandInvocation" in observed["crash_dumps"]
    # An application check through a load balancer's target group.
    elbv2 = boto3.client("elbv2")
    vpc = boto3.client("ec2").describe_vpcs()["Vpcs"][0]["VpcId"]
    group = elbv2.create_target_group(Name="web", Protocol="HTTP", Port=80, VpcId=vpc)["TargetGroups"][0]
    elbv2.register_targets(TargetGroupArn=group["TargetGroupArn"], Targets=[{"Id": web[0]}])
    balanced = {"target_group": group["TargetGroupArn"]}
    observed["recovery_seconds"] |= calls_of(
        lab, lambda: probes.recovery_seconds(timeout=30, app_check=balanced, configuration=conf)
    )
    observed["recovered_within"] |= calls_of(
        lab, lambda: probes.recovered_within(30, app_check=balanced, configuration=conf)
    )
    assert "elasticloadbalancing:DescribeTargetHealth" in observed["recovered_within"]
    actions.send_nmi(instance_ids=stuck, allow_unarmed=True, configuration=conf)
    observed["recover_instances"] = calls_of(
        lab, lambda: rollbacks.recover_instances(timeout=2, configuration=conf)
    )

    declared = activity_actions()
    for name, seen in observed.items():
        assert seen <= set(declared[name]), f"{name} called {sorted(seen - set(declared[name]))} undeclared"
    everything = set().union(*observed.values())
    in_policy = {a for s in policy()["Statement"] for a in s["Action"]}
    assert everything == in_policy  # the policy covers every call, and nothing more


def test_the_policy_scopes_instance_actions_to_the_opt_in_tag_or_to_named_instances():
    statements = {s["Sid"]: s for s in policy(["send_nmi"])["Statement"]}
    act = statements["ActOnOptedInInstances"]
    assert act["Action"] == ["ec2:SendDiagnosticInterrupt"]
    assert act["Condition"] == {"StringEquals": {"aws:ResourceTag/chaos:nmi": "allowed"}}
    arn = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"
    named = {s["Sid"]: s for s in policy(["send_nmi"], instance_arns=[arn])["Statement"]}[
        "ActOnOptedInInstances"
    ]
    assert named["Resource"] == [arn] and "Condition" not in named
    assert "ec2:RebootInstances" not in json.dumps(policy(["send_nmi", "kdump_armed"]))


def test_policy_command(tmp_path):
    done = subprocess.run(
        [CLI, "policy", "--activity", "panic_on_console", "--opt-in-tag", "team=sre"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert json.loads(done.stdout)["Statement"] == [
        {"Sid": "Read", "Effect": "Allow", "Action": ["ec2:GetConsoleOutput"], "Resource": "*"}
    ]
    bad = subprocess.run(
        [CLI, "policy", "--activity", "nope"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 2 and "unknown activities ['nope']" in bad.stderr
