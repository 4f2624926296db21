"""Protecting providers from us and us from providers: a token bucket per provider (their contracts cap our
send rate) and a circuit breaker (a provider that keeps failing is left alone for a while instead of being
hammered, and the deliveries wait in the queue). Pure: every call takes `now`, in seconds on any monotonic
clock, so the logic is tested without waiting."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


@dataclass
class TokenBucket:
    """`rate` sends per second on average, at most `burst` at once."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    updated: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least one")
        self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        if self.updated is None or now > self.updated:
            self.updated = now

    def available(self, now: float) -> int:
        """How many sends may start now."""
        self._refill(now)
        return max(0, int(self.tokens))

    def take(self, now: float, count: int = 1) -> bool:
        self._refill(now)
        if self.tokens < count:
            return False
        self.tokens -= count
        return True

    def wait(self, now: float, count: int = 1) -> float:
        """Seconds until `count` sends (at most the burst) may start."""
        self._refill(now)
        return 0.0 if self.tokens >= count else (count - self.tokens) / self.rate

    def drain(self, now: float) -> None:
        """The provider said we were too fast (HTTP 429): start again from an empty bucket."""
        self._refill(now)
        self.tokens = min(self.tokens, 0.0)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass
class CircuitBreaker:
    """Opens after `threshold` consecutive temporary failures; after `cool_down` seconds lets one probe through
    (half-open): its success closes the circuit, its failure opens it for another cool-down."""

    threshold: int
    cool_down: float
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    def state(self, now: float) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if now - self.opened_at < self.cool_down:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allowed(self, now: float) -> int:
        """How many sends may start now: any number when closed, one probe at a time when half-open."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return 1 << 30
        if state is BreakerState.HALF_OPEN and not self.probing:
            return 1
        return 0

    def started(self, now: float) -> None:
        if self.state(now) is BreakerState.HALF_OPEN:
            self.probing = True

    def succeeded(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at = now
        self.probing = False

    def wait(self, now: float) -> float:
        """Seconds until the circuit lets a send through again (0 if it does now)."""
        if self.state(now) is not BreakerState.OPEN or self.opened_at is None:
            return 0.0
        return self.cool_down - (now - self.opened_at)
