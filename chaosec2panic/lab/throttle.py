"""AWS's request throttling as the lab models it: token buckets per account, region and action.

EC2 (its API throttling documentation): each action has its own bucket, sized by its category:
mutating actions (SendDiagnosticInterrupt, RebootInstances, ...) 50 tokens refilled at 5 per
second; non-mutating ones (Describe*, Get*, List*, Search*) 100 and 20; DescribeInstances and
DescribeInstanceStatus called with neither a filter (Filters, InstanceIds) nor pagination
(MaxResults, NextToken) take from a smaller bucket of 50 and 10. DryRun calls take a token too.
SSM publishes no rates for its Run Command and fleet calls: the lab gives each SSM action a
bucket of 40 refilled at 20 per second, a model, not AWS's word. Buckets refill on the clock
they are given (the lab's own clock, the one its guests and signatures use): the guests' time
scale never scales them, since the clients the lab answers wait in real seconds.

A throttled call is answered as AWS answers it (:data:`THROTTLED_ANSWERS`): EC2 ``RequestLimitExceeded``
with HTTP 503 (botocore's legacy retry mode retries that code only with 503; its standard and
adaptive modes retry it by code), SSM ``ThrottlingException`` with HTTP 400 (the legacy mode's
``throttling_exception`` policy wants exactly that pair).
"""

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Tuple

__all__ = [
    "DEFAULT_BUCKETS",
    "THROTTLED_ANSWERS",
    "Bucket",
    "Throttle",
    "ThrottleError",
    "bucket_class",
    "parse_throttling",
]

NON_MUTATING_PREFIXES = ("Describe", "Get", "List", "Search")
UNFILTERED_ACTIONS = frozenset({"DescribeInstances", "DescribeInstanceStatus"})
FILTER_PARAMS = ("Filter", "InstanceId")
# What AWS answers a throttled call, by service: error code, message, HTTP status.
THROTTLED_ANSWERS = {
    "ec2": ("RequestLimitExceeded", "Request limit exceeded.", 503),
    "ssm": ("ThrottlingException", "Rate exceeded", 400),
}
PAGINATION_PARAMS = ("MaxResults", "NextToken")


class ThrottleError(ValueError):
    """The fleet file's throttling settings are wrong; the message names the class and field."""


@dataclass(frozen=True)
class Bucket:
    """A token bucket's size: at most ``capacity`` tokens, ``refill`` more each second."""

    capacity: float
    refill: float


DEFAULT_BUCKETS: Dict[str, Bucket] = {
    "mutating": Bucket(50, 5),
    "non-mutating": Bucket(100, 20),
    "unfiltered-describe": Bucket(50, 10),
    "ssm": Bucket(40, 20),
}


def bucket_class(service: str, operation: str, params: Mapping[str, Any]) -> str | None:
    """The bucket class a call takes from, or None for calls the lab does not throttle.

    ``params`` are the call's top-level parameter names (query keys such as ``Filter.1.Name``
    count by their first part)."""
    if service == "ssm":
        return "ssm"
    if service != "ec2":
        return None
    if not operation.startswith(NON_MUTATING_PREFIXES):
        return "mutating"
    heads = {str(k).split(".", 1)[0] for k in params}
    if operation in UNFILTERED_ACTIONS and not heads & {*FILTER_PARAMS, *PAGINATION_PARAMS}:
        return "unfiltered-describe"
    return "non-mutating"


@dataclass
class _State:
    tokens: float
    at: float


@dataclass
class Throttle:
    """The buckets of every account, region and action; ``take`` spends a token or says no."""

    buckets: Mapping[str, Bucket] = field(default_factory=lambda: dict(DEFAULT_BUCKETS))
    clock: Callable[[], float] = time.monotonic
    throttled: Dict[str, int] = field(default_factory=dict)
    taken: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._states: Dict[Tuple[str, str, str, str], _State] = {}
        self._lock = threading.Lock()

    def counts(self) -> Dict[str, Dict[str, int]]:
        """The calls each class let through and the ones it refused, so far."""
        with self._lock:
            return {"taken": dict(self.taken), "throttled": dict(self.throttled)}

    def take(self, account: str, region: str, operation: str, kind: str) -> bool:
        """Spend one token of ``kind``'s bucket for this action; False (nothing spent) when empty."""
        size = self.buckets[kind]
        key = (account, region, operation, kind)
        with self._lock:
            now = self.clock()
            state = self._states.setdefault(key, _State(size.capacity, now))
            state.tokens = min(size.capacity, state.tokens + (now - state.at) * size.refill)
            state.at = now
            counts = self.taken if state.tokens >= 1 else self.throttled
            counts[kind] = counts.get(kind, 0) + 1
            if state.tokens < 1:
                return False
            state.tokens -= 1
            return True


def parse_throttling(data: Any) -> Dict[str, Bucket] | None:
    """The buckets a fleet file's ``throttling`` entry asks for: absent or true gives AWS's
    defaults, false none (no throttling), a mapping overrides some classes, each as
    ``{capacity: N, refill: N}``."""
    if data is None or data is True:
        return dict(DEFAULT_BUCKETS)
    if data is False:
        return None
    if not isinstance(data, Mapping):
        raise ThrottleError(f"throttling is true, false or a mapping of classes, got {data!r}")
    buckets = dict(DEFAULT_BUCKETS)
    for kind, size in data.items():
        if kind not in DEFAULT_BUCKETS:
            raise ThrottleError(f"throttling: unknown class {kind!r}; valid: {sorted(DEFAULT_BUCKETS)}")
        if not isinstance(size, Mapping) or set(size) != {"capacity", "refill"}:
            raise ThrottleError(f"throttling.{kind}: expected {{capacity: N, refill: N}}, got {size!r}")
        values = [size["capacity"], size["refill"]]
        if any(isinstance(v, bool) or not isinstance(v, int | float) or v <= 0 for v in values):
            raise ThrottleError(f"throttling.{kind}: capacity and refill must be numbers > 0, got {size!r}")
        buckets[str(kind)] = Bucket(float(values[0]), float(values[1]))
    return buckets
