"""Notify's provider guards as pure logic: time is passed in, nothing waits."""

from __future__ import annotations

import pytest

from services.notify.delivery import backoff
from services.notify.guard import BreakerState, CircuitBreaker, TokenBucket

pytestmark = pytest.mark.unit


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert bucket.available(100.0) == 3
    assert all(bucket.take(100.0) for _ in range(3))
    assert not bucket.take(100.0)
    assert bucket.wait(100.0) == pytest.approx(0.5)
    assert bucket.available(100.4) == 0
    assert bucket.take(100.5)
    assert not bucket.take(100.5)
    assert bucket.available(110.0) == 3  # never more than the burst, however long it rested


def test_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.take(50.0)
    assert bucket.available(49.0) == 0
    assert bucket.available(51.0) == 1


def test_a_429_empties_the_bucket() -> None:
    bucket = TokenBucket(rate=10.0, burst=10)
    bucket.drain(5.0)
    assert bucket.available(5.0) == 0
    assert bucket.wait(5.0) == pytest.approx(0.1)
    assert bucket.available(5.35) == 3


def test_bucket_refuses_a_rate_that_would_never_refill() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(rate=0, burst=1)


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(threshold=3, cool_down=30.0)
    breaker.failed(1.0)
    breaker.failed(2.0)
    breaker.succeeded()  # a success in between starts the count again
    breaker.failed(3.0)
    breaker.failed(4.0)
    assert breaker.state(4.0) is BreakerState.CLOSED
    assert breaker.allowed(4.0) > 1000
    breaker.failed(5.0)
    assert breaker.state(5.0) is BreakerState.OPEN
    assert breaker.allowed(20.0) == 0
    assert breaker.wait(20.0) == pytest.approx(15.0)


def test_half_open_lets_one_probe_through_and_its_outcome_decides() -> None:
    breaker = CircuitBreaker(threshold=2, cool_down=10.0)
    breaker.failed(0.0)
    breaker.failed(0.0)
    assert breaker.state(10.0) is BreakerState.HALF_OPEN
    assert breaker.allowed(10.0) == 1
    breaker.started(10.0)
    assert breaker.allowed(10.5) == 0  # one probe at a time
    breaker.failed(11.0)  # the probe failed: another whole cool-down
    assert breaker.state(20.0) is BreakerState.OPEN
    assert breaker.state(21.0) is BreakerState.HALF_OPEN
    breaker.started(21.0)
    breaker.succeeded()
    assert breaker.state(21.0) is BreakerState.CLOSED
    assert breaker.wait(21.0) == 0.0
    breaker.failed(22.0)
    assert breaker.state(22.0) is BreakerState.CLOSED  # the count starts again after closing


def test_retries_back_off_exponentially_up_to_a_ceiling() -> None:
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert backoff(30).total_seconds() == 600
    assert backoff(3, base=0.5, ceiling=1.5).total_seconds() == 1.5
