"""Notify's provider guards as pure logic: time is passed in, nothing waits."""

from __future__ import annotations

import pytest

from services.notify.delivery import BATCH, CLAIM_EVERY_SECONDS, ROUND_SECONDS, ProviderGuard, backoff
from services.notify.guard import BreakerState, CircuitBreaker, TokenBucket
from services.notify.settings import NotifySettings

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


def sms_guard(rate: float = 10.0, burst: int = 10) -> ProviderGuard:
    return ProviderGuard("sms", NotifySettings(rate_per_second={"sms": rate}, rate_burst={"sms": burst}))


def send_backlog(guard: ProviderGuard, waiting: int, now: float = 0.0) -> tuple[int, list[float]]:
    """The deliverer's rounds for one channel on a simulated clock, as `Deliverer._run` plays them: after a round
    that sent, the next comes a round's length later; after one that could not, when the guard says it may.
    (claims made, when each message was sent)."""
    claims, sent = 0, []
    while waiting:
        room = guard.room(now)
        if not room:
            now += guard.wait(now) + 1e-9
            continue
        got = min(room, waiting)
        waiting -= got
        claims += 1
        guard.claimed(room, got)
        for _ in range(got):
            assert guard.bucket.take(now), "sent beyond the provider's rate"
            sent.append(now)
        now += ROUND_SECONDS
    return claims, sent


def test_a_channel_held_back_by_its_rate_is_claimed_from_in_gathered_batches_at_the_same_pace() -> None:
    guard = sms_guard()
    claims, sent = send_backlog(guard, 200)
    # The burst, then one claim per half second of rate (5 messages) rather than one per message.
    assert claims <= 1 + (200 - 10) / 5
    ideal = (200 - 10) / 10  # the burst at once, the rest at 10 a second
    assert ideal <= sent[-1] <= ideal + CLAIM_EVERY_SECONDS


def test_after_a_backlog_a_message_waits_at_most_the_gathering_time() -> None:
    guard = sms_guard()
    _, sent = send_backlog(guard, 30)  # its last claim took all it asked for, emptying the bucket
    last = sent[-1]
    assert guard.held_back
    assert guard.wait(last) == pytest.approx(CLAIM_EVERY_SECONDS)
    claims, sent = send_backlog(guard, 1, now=last + ROUND_SECONDS)
    assert claims == 1
    assert sent[0] == pytest.approx(last + CLAIM_EVERY_SECONDS)
    assert not guard.held_back  # it asked for more than was waiting
    arrives = sent[0] + 0.1
    _, sent = send_backlog(guard, 1, now=arrives)
    assert sent == [pytest.approx(arrives)]  # a lone message goes at once while the bucket has a token


def test_a_fast_provider_is_claimed_from_in_full_batches_without_waiting() -> None:
    guard = sms_guard(rate=1000.0, burst=1000)
    claims, sent = send_backlog(guard, 10 * BATCH)
    assert claims == 10
    assert sent[-1] == pytest.approx(9 * ROUND_SECONDS)


def test_a_half_open_circuit_still_lets_its_probe_through_while_the_channel_is_held_back() -> None:
    guard = sms_guard()
    send_backlog(guard, 30)
    for _ in range(guard.breaker.threshold):
        guard.breaker.failed(5.0)
    assert guard.room(5.0 + guard.breaker.cool_down - 1) == 0
    assert guard.room(5.0 + guard.breaker.cool_down) == 1
