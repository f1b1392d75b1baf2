"""The thin AWS shell: clients, the one retry policy, chunking and pagination.

Clients come from ``chaosaws.aws_client``, so ``aws_region``, ``aws_profile_name``,
``aws_assume_role_arn`` and the ``aws`` secrets behave exactly as in chaostoolkit-aws;
the endpoint comes from boto3's own ``AWS_ENDPOINT_URL`` (that is how the lab is reached).
"""

import logging
import os
import random
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Sequence, TypeVar

from botocore.exceptions import ClientError
from chaosaws import aws_client
from chaoslib.exceptions import InterruptExecution
from chaoslib.types import Configuration, Secrets

from .errors import InvalidRequest
from .pacing import THROTTLING_CODES, pace

__all__ = [
    "DESCRIBE_STATUS_CHUNK",
    "SSM_CHUNK",
    "THROTTLING_CODES",
    "RetryPolicy",
    "chunks",
    "client",
    "error_code",
    "paginate",
    "without_sdk_retries",
]

logger = logging.getLogger("chaostoolkit")
T = TypeVar("T")

DESCRIBE_STATUS_CHUNK = 100
SSM_CHUNK = 50
SDK_ATTEMPTS = 10


def client(service: str, configuration: Configuration, secrets: Secrets) -> Any:
    """A boto3 client for ``service``, configured as chaostoolkit-aws configures its own.

    Unless ``AWS_RETRY_MODE`` and ``AWS_MAX_ATTEMPTS`` say otherwise, botocore's adaptive retry
    mode with up to 10 attempts: throttled calls are retried and the client slows its own rate
    while AWS throttles it. EC2 and SSM calls are paced to AWS's token buckets
    (:mod:`.pacing`), so that a fleet's worth of calls waits for tokens rather than for retries.
    """
    os.environ.setdefault("AWS_RETRY_MODE", "adaptive")
    os.environ.setdefault("AWS_MAX_ATTEMPTS", str(SDK_ATTEMPTS))
    try:
        return pace(aws_client(service, configuration, secrets))
    except InterruptExecution as exc:
        raise InvalidRequest(
            f"{exc}: set aws_region in the configuration, or AWS_REGION in the environment. Nothing was sent."
        ) from exc


def without_sdk_retries(ec2: Any) -> Any:
    """Remove botocore's own retries from ``ec2``: a request that reached AWS is never sent again.

    botocore retries 5xx answers and dropped connections, which for SendDiagnosticInterrupt
    could mean a second NMI. Only :class:`RetryPolicy` retries, and only on throttling,
    which AWS answers before acting.
    """
    service = ec2.meta.service_model.service_id.hyphenize()
    ec2.meta.events.unregister(f"needs-retry.{service}", unique_id=f"retry-config-{service}")
    return ec2


def error_code(exc: BaseException) -> str:
    """The AWS error code of ``exc``, or its class name when it is not an AWS error."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


class RetryPolicy:
    """Retry a call on throttling only, with full-jitter exponential backoff."""

    def __init__(
        self,
        attempts: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.rng = rng or random.Random()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        attempt = 1
        while True:
            try:
                return fn(*args, **kwargs)
            except ClientError as exc:
                if error_code(exc) not in THROTTLING_CODES or attempt >= self.attempts:
                    raise
                delay = self.rng.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
                logger.debug("throttled (%s), retry %d in %.2fs", error_code(exc), attempt, delay)
                self.sleep(delay)
                attempt += 1


def chunks(items: Sequence[T], size: int) -> Iterator[List[T]]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def paginate(aws: Any, operation: str, key: str, **params: Any) -> Iterable[Dict[str, Any]]:
    """Every item under ``key`` across all pages of ``operation``."""
    for page in aws.get_paginator(operation).paginate(**params):
        yield from page.get(key, [])
