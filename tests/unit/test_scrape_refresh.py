"""A gauge read from the database at scrape time says NaN while the database cannot be asked."""

from __future__ import annotations

import math

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, Gauge

from shared.http import refreshed_or_nan

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("failure", [ConnectionRefusedError(), asyncpg.InterfaceError("pool is closed"),
                                     asyncpg.PostgresError(), RuntimeError("the database is not open")])
async def test_a_gauge_the_database_cannot_refresh_says_nan_not_its_last_value(failure: Exception) -> None:
    registry = CollectorRegistry()
    gauge = Gauge("read_at_scrape", "a value read from the database", registry=registry)

    async def counted() -> None:
        gauge.set(7)

    async def unanswered() -> None:
        raise failure

    await refreshed_or_nan(gauge, counted)
    assert registry.get_sample_value("read_at_scrape") == 7
    await refreshed_or_nan(gauge, unanswered)
    assert math.isnan(registry.get_sample_value("read_at_scrape") or 0.0)


async def test_an_error_that_is_not_the_database_s_is_not_hidden() -> None:
    gauge = Gauge("read_at_scrape", "a value read from the database", registry=CollectorRegistry())

    async def broken() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await refreshed_or_nan(gauge, broken)
