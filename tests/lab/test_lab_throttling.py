"""The lab throttles as AWS does, over HTTP with real boto3: EC2 RequestLimitExceeded (503, EC2's
XML error) and SSM ThrottlingException (400, JSON) once a bucket is empty, buckets refilled on
the lab's own clock, and a game day over a fleet larger than the bucket loses no injection."""

import time
from datetime import datetime
from typing import Any, Dict, List

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from chaosec2panic.actions import send_nmi
from chaosec2panic.aws import client, without_sdk_retries
from chaosec2panic.pacing import clear_sends, sends
from tests.conftest import opted_in


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class SteppedClock:
    """The lab's clock: the wall clock plus what the test adds, so refills happen when the test
    says (steps stay well within the 15 minutes a signature may be off)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def bare(service: str) -> Any:
    """A client that never retries: each call is one request, its answer as the lab gave it."""
    return boto3.client(service, config=Config(retries={"mode": "standard", "total_max_attempts": 1}))


def dry_runs(ec2: Any, instance_id: str, n: int) -> List[ClientError]:
    answers = []
    for _ in range(n):
        with pytest.raises(ClientError) as caught:
            ec2.send_diagnostic_interrupt(InstanceId=instance_id, DryRun=True)
        answers.append(caught.value)
    return answers


def codes(errors: List[ClientError]) -> List[str]:
    return [e.response["Error"]["Code"] for e in errors]


SLOW = {"capacity": 3, "refill": 0.02}  # one token every 50 s of the lab's clock


def test_a_burst_beyond_the_bucket_is_refused_as_aws_refuses_it(make_lab):
    lab = make_lab([opted_in("web")], throttling={"mutating": SLOW, "ssm": SLOW})
    ec2, ssm = bare("ec2"), bare("ssm")
    web = lab.id("web")
    answers = dry_runs(ec2, web, 4)
    assert codes(answers) == ["DryRunOperation"] * 3 + ["RequestLimitExceeded"]
    refused = answers[-1].response
    assert refused["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert refused["Error"]["Message"] == "Request limit exceeded."
    # Another action has its own bucket; a non-mutating one is not touched.
    assert ec2.describe_instances(InstanceIds=[web])["Reservations"]
    for _ in range(3):
        ssm.describe_instance_information()
    with pytest.raises(ClientError) as caught:
        ssm.describe_instance_information()
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert caught.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == (
        "ThrottlingException"
    )
    counts = lab.control("/_lab/throttling")
    assert counts["throttled"] == {"mutating": 1, "ssm": 1}
    assert counts["taken"]["mutating"] == 3 and counts["taken"]["non-mutating"] == 1


@pytest.mark.parametrize("mode", ["legacy", "standard", "adaptive"])
def test_botocore_retries_a_throttled_call_in_every_retry_mode(make_lab, mode):
    """What botocore keys on (code and HTTP status in legacy mode, the code in standard and
    adaptive): a client that may retry gets through once the bucket has a token again."""
    clock = SteppedClock()
    lab = make_lab([opted_in("web")], throttling={"mutating": SLOW}, clock=clock)
    web = lab.id("web")
    assert codes(dry_runs(bare("ec2"), web, 4))[-1] == "RequestLimitExceeded"
    refused: List[str] = []

    def refill(response: Any = None, **kwargs: Any) -> None:
        """On each refusal, let the lab's clock pass one token's worth before the retry."""
        if response and response[1].get("Error", {}).get("Code") == "RequestLimitExceeded":
            refused.append(response[1]["Error"]["Code"])
            clock.offset += 50

    ec2 = boto3.client("ec2", config=Config(retries={"mode": mode, "total_max_attempts": 3}))
    ec2.meta.events.register_first("needs-retry.ec2.SendDiagnosticInterrupt", refill)
    answers = dry_runs(ec2, web, 1)
    assert codes(answers) == ["DryRunOperation"]
    assert refused == ["RequestLimitExceeded"]
    assert answers[0].response["ResponseMetadata"]["RetryAttempts"] == 1


def test_the_bucket_refills_on_the_lab_clock(make_lab):
    clock = SteppedClock()
    lab = make_lab([opted_in("web")], throttling={"mutating": SLOW}, clock=clock)
    ec2, web = bare("ec2"), lab.id("web")
    assert codes(dry_runs(ec2, web, 4)) == ["DryRunOperation"] * 3 + ["RequestLimitExceeded"]
    clock.offset += 50  # one token's worth
    assert codes(dry_runs(ec2, web, 2)) == ["DryRunOperation", "RequestLimitExceeded"]
    clock.offset += 500  # ten tokens' worth, but the bucket holds three
    assert codes(dry_runs(ec2, web, 4)) == ["DryRunOperation"] * 3 + ["RequestLimitExceeded"]


def test_a_game_day_over_a_fleet_larger_than_the_bucket_loses_no_injection(make_lab):
    """Twelve instances against a SendDiagnosticInterrupt bucket of 5 refilled at 2 a second:
    12 DryRuns and 12 NMIs take 24 tokens, so most calls wait for a refill, and all arrive."""
    n = 12
    lab = make_lab(
        [{**opted_in("web", tags={"role": "web"}), "count": n}],
        throttling={"mutating": {"capacity": 5, "refill": 2}},
    )
    result: Dict[str, Any] = send_nmi(
        tags={"role": "web"},
        max_instances=n,
        max_concurrency=10,
        configuration=lab.configuration(),
    )
    outcomes = [r["outcome"] for r in result["injections"]]
    assert outcomes == ["sent"] * n
    assert len(lab.nmi_names()) == n
    # Each NMI is dated by the requests that could have made it, after the waits for a token and
    # the retries of throttled ones: the lab's NMI lies between the first such request leaving
    # and its answer.
    landed = {e["instance_id"]: e["epoch"] for e in lab.events("nmi")}
    for r in result["injections"]:
        assert epoch(r["sent_at"]) - 0.002 <= landed[r["instance_id"]] <= epoch(r["answered_at"]) + 0.002
    counts = lab.control("/_lab/throttling")
    assert counts["taken"]["mutating"] == 2 * n


def test_a_call_is_dated_by_its_requests_that_were_not_throttled(make_lab):
    """What sends() tells of a paced call: when its request left, after any wait for a token; a
    request AWS refused as throttled (before acting) is left out."""
    lab = make_lab([opted_in("web")], throttling={"mutating": SLOW})
    ec2 = without_sdk_retries(client("ec2", lab.configuration(), None))  # one request per call
    web = lab.id("web")
    answers = []
    for _ in range(4):  # the lab's bucket holds three tokens: the fourth call is throttled
        clear_sends()
        began = time.time()
        with pytest.raises(ClientError) as caught:
            ec2.send_diagnostic_interrupt(InstanceId=web, DryRun=True)
        answers.append((caught.value.response["Error"]["Code"], began, sends(), time.time()))
    assert [a[0] for a in answers] == ["DryRunOperation"] * 3 + ["RequestLimitExceeded"]
    for _, began, left, answered in answers[:3]:
        assert len(left) == 1 and began <= left[0] <= answered
    assert answers[3][2] == []
