"""The lab's throttling model: token buckets on an injected clock, classes as EC2 documents them."""

import pytest

from chaosec2panic.lab.throttle import (
    DEFAULT_BUCKETS,
    Bucket,
    Throttle,
    ThrottleError,
    bucket_class,
    parse_throttling,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def takes(
    throttle: Throttle, n: int, operation: str = "SendDiagnosticInterrupt", kind: str = "mutating"
) -> int:
    return sum(throttle.take("111122223333", "us-east-1", operation, kind) for _ in range(n))


def test_a_mutating_bucket_gives_50_then_5_a_second():
    clock = Clock()
    throttle = Throttle(clock=clock)
    assert takes(throttle, 60) == 50
    clock.now = 1.0
    assert takes(throttle, 10) == 5
    clock.now = 100.0  # refilled, never past capacity
    assert takes(throttle, 60) == 50
    assert throttle.throttled["mutating"] == 10 + 5 + 10


def test_500_nmis_take_at_least_90_seconds():
    clock = Clock()
    throttle = Throttle(clock=clock)
    sent = 0
    while sent < 500:
        sent += takes(throttle, 1)
        clock.now += 0.01
    assert clock.now == pytest.approx((500 - 50) / 5, abs=0.05)


def test_each_action_region_and_account_has_its_own_bucket():
    throttle = Throttle(clock=Clock())
    assert takes(throttle, 50) == 50
    assert takes(throttle, 1) == 0
    assert takes(throttle, 1, "RebootInstances") == 1
    assert throttle.take("111122223333", "eu-west-1", "SendDiagnosticInterrupt", "mutating")
    assert throttle.take("444455556666", "us-east-1", "SendDiagnosticInterrupt", "mutating")


@pytest.mark.parametrize(
    ("service", "operation", "params", "kind"),
    [
        ("ec2", "SendDiagnosticInterrupt", {"InstanceId": "i-1", "DryRun": "true"}, "mutating"),
        ("ec2", "RebootInstances", {"InstanceId.1": "i-1"}, "mutating"),
        ("ec2", "DescribeInstances", {}, "unfiltered-describe"),
        ("ec2", "DescribeInstanceStatus", {"IncludeAllInstances": "true"}, "unfiltered-describe"),
        ("ec2", "DescribeInstances", {"Filter.1.Name": "tag:role"}, "non-mutating"),
        ("ec2", "DescribeInstanceStatus", {"InstanceId.1": "i-1"}, "non-mutating"),
        ("ec2", "DescribeInstances", {"MaxResults": "5"}, "non-mutating"),
        ("ec2", "GetConsoleOutput", {"InstanceId": "i-1"}, "non-mutating"),
        ("ec2", "DescribeInstanceTypes", {}, "non-mutating"),
        ("ssm", "SendCommand", {}, "ssm"),
        ("sts", "GetCallerIdentity", {}, None),
    ],
)
def test_classes(service, operation, params, kind):
    assert bucket_class(service, operation, params) == kind


def test_fleet_settings():
    assert parse_throttling(None) == DEFAULT_BUCKETS
    assert parse_throttling(False) is None
    bigger = parse_throttling({"mutating": {"capacity": 1000, "refill": 500}})
    assert bigger["mutating"] == Bucket(1000, 500) and bigger["ssm"] == DEFAULT_BUCKETS["ssm"]
    for wrong, said in [
        ({"mutate": {"capacity": 1, "refill": 1}}, "unknown class"),
        ({"mutating": {"capacity": 1}}, "expected"),
        ({"mutating": {"capacity": 0, "refill": 1}}, "> 0"),
        ("fast", "true, false or a mapping"),
    ]:
        with pytest.raises(ThrottleError, match=said):
            parse_throttling(wrong)
