"""Metrics' partition ownership: a take-over that failed during a rebalance is retried by the next batch."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from services.metrics.app import Ownership

pytestmark = pytest.mark.unit
TOPIC = "tthc.dossier-lifecycle.v1"


class Takes:
    """What the ownership asks of the database and memory, recorded; the first `failures` take-overs fail."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.loaded: set[int] = set()
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()

    async def take(self, topic: str, parts: list[int]) -> dict[int, int]:
        assert topic == TOPIC
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the database is restarting")
        self.loaded |= set(parts)
        return {part: 7 for part in parts}

    def drop(self, topic: str, parts: set[int]) -> None:
        self.loaded -= parts


def assigned(*parts: int) -> list[TopicPartition]:
    return [TopicPartition(TOPIC, part) for part in parts]


async def test_a_take_over_that_failed_at_assignment_is_done_by_the_next_batch() -> None:
    takes = Takes(failures=1)
    owner = Ownership(TOPIC, takes.take, takes.drop)
    await owner.on_partitions_assigned(assigned(0, 1))  # logged, not raised: Kafka would only log it
    assert owner.expected({0, 1}) == {0: None, 1: None}
    assert owner.untaken == {0, 1}
    await owner.take_untaken({1})
    assert owner.expected({0, 1}) == {0: None, 1: 7}
    assert takes.loaded == {1}
    await owner.take_untaken({0, 1})
    assert owner.expected({0, 1}) == {0: 7, 1: 7}
    assert owner.untaken == set()
    assert takes.loaded == {0, 1}


async def test_a_take_over_overtaken_by_a_rebalance_keeps_nothing_it_loaded() -> None:
    takes = Takes(failures=1)
    owner = Ownership(TOPIC, takes.take, takes.drop)
    await owner.on_partitions_assigned(assigned(0, 1))
    takes.gate = asyncio.Event()
    retry = asyncio.create_task(owner.take_untaken({0, 1}))
    await takes.waiting.wait()  # the retry is inside its take-over, waiting on the database
    await owner.on_partitions_revoked(assigned(1))
    takes.gate.set()
    await retry
    assert takes.loaded == set()
    assert owner.expected({0, 1}) == {0: None, 1: None}
    assert owner.untaken == {0}  # still this instance's, taken with its next batch
    await owner.take_untaken({0})
    assert owner.expected({0}) == {0: 7}
    assert takes.loaded == {0}
