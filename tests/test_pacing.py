"""Client-side pacing: a token bucket that makes callers wait instead of being throttled."""

from chaosec2panic.lab.throttle import Bucket
from chaosec2panic.pacing import Pacer


class Time:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_full_bucket_then_the_refill_rate():
    t = Time()
    pacer = Pacer(Bucket(50, 5), t.clock, t.sleep)
    waits = [pacer.wait() for _ in range(60)]
    assert waits[:50] == [0.0] * 50
    assert abs(t.now - 10 / 5) < 1e-6  # ten more tokens at 5 a second
    assert abs(pacer.waited - 2.0) < 1e-6


def test_a_throttled_answer_empties_the_bucket():
    t = Time()
    pacer = Pacer(Bucket(50, 5), t.clock, t.sleep)
    pacer.wait()
    pacer.drain()
    assert abs(pacer.wait() - 1 / 5) < 1e-6
    t.now += 100  # refilled, never past capacity
    assert [pacer.wait() for _ in range(50)] == [0.0] * 50
    assert pacer.wait() > 0
