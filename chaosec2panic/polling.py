"""The one polling engine: call ``observe`` until ``done`` holds or the deadline passes.

Polling is data (what to observe, when it is done, how often or at what pace, how long); on
a timeout the
caller gets the last observation, so it can say what was last seen.
"""

import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

__all__ = ["Poll", "PollResult", "poll"]

T = TypeVar("T")


@dataclass(frozen=True)
class Poll(Generic[T]):
    observe: Callable[[], T]
    done: Callable[[T], bool]
    timeout: float
    interval: float = 2.0
    max_interval: float = 10.0
    backoff: float = 1.0
    pace: Callable[[T], float] | None = None  # the next interval, from what was just seen


@dataclass(frozen=True)
class PollResult(Generic[T]):
    last: T
    done: bool
    elapsed: float
    attempts: int


def poll(
    spec: Poll[T], clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
) -> PollResult[T]:
    """Run ``spec``: observe at least once, never sleep past the deadline."""
    start = clock()
    deadline = start + spec.timeout
    interval = spec.interval
    attempts = 0
    while True:
        last = spec.observe()
        attempts += 1
        now = clock()
        if spec.done(last):
            return PollResult(last, True, now - start, attempts)
        if now >= deadline:
            return PollResult(last, False, now - start, attempts)
        if spec.pace is not None:
            interval = spec.pace(last)
        sleep(min(interval, deadline - now))
        interval = min(spec.max_interval, interval * spec.backoff)
