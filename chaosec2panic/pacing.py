"""Client-side pacing: send EC2 and SSM calls no faster than AWS's token buckets let them through.

EC2 throttles each action per account and region with a token bucket (mutating actions such as
SendDiagnosticInterrupt, DryRun or not, 50 tokens refilled at 5 a second; non-mutating ones 100
and 20; DescribeInstances and DescribeInstanceStatus with neither filter nor pagination 50 and
10). Retrying throttled calls alone wastes requests and, with a fixed number of attempts, loses
calls once many threads compete for a refill. Each client from :func:`chaosec2panic.aws.client`
therefore takes a token from a bucket of the same size in this process before each call (shared
by every client for the same endpoint, region and action), and empties it when AWS still answers
a throttling error, so that every thread then waits for AWS's refill rate (other callers in the
account spend the same tokens). SSM publishes no rates: its buckets are the lab's model.

A paced call may wait long before its request leaves: :func:`sends` says when each request of
this thread's calls since :func:`clear_sends` left that was not refused as throttled (AWS
refuses those before acting), so that a call's moment (an NMI's) is told from the requests that
could have made it, not from its waits.
"""

import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Tuple

from .lab.throttle import DEFAULT_BUCKETS, Bucket, bucket_class

__all__ = ["THROTTLING_CODES", "Pacer", "clear_sends", "pace", "pacer_for", "sends"]

THROTTLING_CODES = frozenset(
    {"RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException"}
)
# The API parameters that EC2's query protocol names Filter.N and InstanceId.N.
SERIALIZED = {"Filters": "Filter", "InstanceIds": "InstanceId"}
CONTEXT_KEY = "chaosec2panic_pacer"
EPSILON = 1e-9  # a token's worth short by rounding is a token
MIN_PAUSE = 0.001


class Pacer:
    """A token bucket on this side: ``wait`` blocks until a token is there and takes it."""

    def __init__(
        self,
        size: Bucket,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.size = size
        self.clock = clock
        self.sleep = sleep
        self.tokens = float(size.capacity)
        self.at = clock()
        self.waited = 0.0
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.size.capacity, self.tokens + (now - self.at) * self.size.refill)
        self.at = now

    def wait(self) -> float:
        """Take a token, first waiting for one if need be; the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                self._refill(self.clock())
                if self.tokens >= 1 - EPSILON:
                    self.tokens -= 1
                    self.waited += waited
                    return waited
                pause = max(MIN_PAUSE, (1 - self.tokens) / self.size.refill)
            self.sleep(pause)
            waited += pause

    def drain(self) -> None:
        """AWS throttled a call: its bucket is empty whatever this one counted."""
        with self._lock:
            self._refill(self.clock())
            self.tokens = min(self.tokens, 0.0)


_SENDS = threading.local()  # [epoch left, throttled] per request of this thread, since clear_sends


def clear_sends() -> None:
    """Forget this thread's requests sent so far."""
    _SENDS.at = []


def sends() -> List[float]:
    """When each request of this thread left since :func:`clear_sends` (retries included) and was
    not answered with a throttling error, in epoch seconds, oldest first."""
    return [at for at, throttled in getattr(_SENDS, "at", []) if not throttled]


def _sent(**kwargs: Any) -> None:
    if hasattr(_SENDS, "at"):
        _SENDS.at.append([time.time(), False])


_PACERS: Dict[Tuple[str, str, str, str], Pacer] = {}
_PACERS_LOCK = threading.Lock()


def pacer_for(endpoint: str, region: str, operation: str, kind: str) -> Pacer:
    """The one pacer of this process for an endpoint, region, action and bucket class."""
    key = (endpoint, region, operation, kind)
    with _PACERS_LOCK:
        if key not in _PACERS:
            _PACERS[key] = Pacer(DEFAULT_BUCKETS[kind])
        return _PACERS[key]


def pace(aws: Any) -> Any:
    """Make ``aws`` (an EC2 or SSM boto3 client) wait for a token before each call and empty its
    bucket when the answer is still a throttling error; other clients are left as they are."""
    service = aws.meta.service_model.service_id.hyphenize()
    if service not in ("ec2", "ssm"):
        return aws
    endpoint, region = aws.meta.endpoint_url, aws.meta.region_name or ""

    def before(params: Mapping[str, Any], model: Any, context: Dict[str, Any], **kwargs: Any) -> None:
        names = {SERIALIZED.get(k, k): v for k, v in params.items()}
        kind = bucket_class(service, model.name, names)
        if kind is not None:
            context[CONTEXT_KEY] = pacer = pacer_for(endpoint, region, model.name, kind)
            pacer.wait()

    def after(response: Any = None, request_dict: Any = None, **kwargs: Any) -> None:
        code = response[1].get("Error", {}).get("Code") if response else None
        pacer = (request_dict or {}).get("context", {}).get(CONTEXT_KEY)
        if code in THROTTLING_CODES and pacer is not None:
            pacer.drain()
        if code in THROTTLING_CODES and getattr(_SENDS, "at", None):
            _SENDS.at[-1][1] = True

    aws.meta.events.register(f"before-parameter-build.{service}", before)
    aws.meta.events.register(f"before-send.{service}", _sent)
    aws.meta.events.register_first(f"needs-retry.{service}", after)
    return aws
