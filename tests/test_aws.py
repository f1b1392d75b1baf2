"""The one retry policy and the chunking helper."""

import random

import pytest
from botocore.exceptions import ClientError

from chaosec2panic.aws import RetryPolicy, chunks


def error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "SendDiagnosticInterrupt")


class Flaky:
    def __init__(self, *codes: str):
        self.codes = list(codes)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.codes:
            raise error(self.codes.pop(0))
        return "done"


def policy(attempts: int = 4) -> tuple[RetryPolicy, list]:
    slept: list = []
    return RetryPolicy(attempts, 0.5, 10.0, slept.append, random.Random(1)), slept


def test_throttling_is_retried_with_growing_jittered_delays():
    retry, slept = policy()
    call = Flaky("RequestLimitExceeded", "Throttling")
    assert retry.call(call) == "done"
    assert call.calls == 3
    assert 0 <= slept[0] <= 1.0 and 0 <= slept[1] <= 2.0


def test_other_errors_are_not_retried():
    retry, slept = policy()
    call = Flaky("InternalError")
    with pytest.raises(ClientError):
        retry.call(call)
    assert call.calls == 1 and slept == []


def test_the_budget_ends_the_retries():
    retry, _ = policy(attempts=3)
    call = Flaky(*["RequestLimitExceeded"] * 5)
    with pytest.raises(ClientError, match="RequestLimitExceeded"):
        retry.call(call)
    assert call.calls == 3


def test_chunks():
    assert list(chunks(list(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks([], 3)) == []
