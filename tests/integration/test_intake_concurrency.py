"""Intake's daily sequences of dossier codes, against the real broker and database: batches that share them, and
events, in opposite orders all go through, each event accepted once; a day whose codes are used up refuses, saying
why, the dossiers that come without a code."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg
import httpx
import pytest

from services.intake import keys
from services.intake.app import build_app as build_intake
from services.intake.settings import IntakeSettings
from shared.clock.deadline import LOCAL_ZONE as VN
from shared.contract import topics
from shared.contract.dossier_code import DAILY_SEQUENCE_LIMIT
from shared.contract.events import EventType
from shared.contract.rejections import RejectionReason, RejectionRecorded
from tests.conftest import Infra
from tests.integration.test_intake_fuzz import end_offsets, records_between, start_group_at_end
from tests.integration.test_services import service_env
from tests.support import UNIT, cloudevent, dossier_code, received_data

pytestmark = pytest.mark.integration
BATCH = "application/cloudevents-batch+json"
REQUESTS = 8


@pytest.fixture
async def intake(infra: Infra, database_url: str, data_keys: str, topics_ready: None,
                 ) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A client of an in-process intake, and the source its key speaks for."""
    source = f"urn:tthc:concurrent:{uuid.uuid4().hex[:8]}"
    group = f"intake-concurrent-{uuid.uuid4().hex[:8]}"
    await start_group_at_end(infra.bootstrap_servers, group, topics.INGRESS)
    app = build_intake(IntakeSettings.model_validate({**service_env(infra, database_url, data_keys),
                                                      "consumer_group": group}))
    # A failed request must come back as the 500 a client would see, not as an exception in the test.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app):  # intake's schema is there from here on
        conn = await asyncpg.connect(database_url)
        try:
            key = await keys.create(conn, source, [UNIT.code])
        finally:
            await conn.close()
        async with httpx.AsyncClient(transport=transport, base_url="http://intake", timeout=60,
                                     headers={"authorization": f"Bearer {key}", "content-type": BATCH}) as client:
            yield client, source


async def test_batches_minting_codes_on_the_same_days_in_opposite_orders_all_go_through(
        intake: tuple[httpx.AsyncClient, str]) -> None:
    """Each batch receives dossiers without codes on six days, so each reserves numbers of the same six daily
    sequences, and half of them list the days (and so the same events) the other way round. Taken in the order
    the batch gives, two such requests wait for each other, and PostgreSQL fails one."""
    client, source = intake
    days = [datetime(2024, 3, day, 9, tzinfo=VN) for day in range(4, 10)]
    shared = [cloudevent(EventType.RECEIVED, None, received_data(), at=day, source=source) for day in days]
    batches = []
    for turn in range(REQUESTS):
        own = [cloudevent(EventType.RECEIVED, None, received_data(), at=day, source=source) for day in days]
        events = [event for pair in zip(shared, own, strict=True) for event in pair]
        batches.append(events if turn % 2 else events[::-1])

    replies = await asyncio.gather(*(client.post("/v1/events", content=json.dumps(batch)) for batch in batches))

    assert [reply.status_code for reply in replies] == [202] * REQUESTS, [reply.text[:300] for reply in replies]
    results = [result for reply in replies for result in reply.json()["results"]]
    accepted = {result["id"]: result["dossier_code"] for result in results if result["status"] == "accepted"}
    assert len(accepted) == len(shared) + REQUESTS * len(days)  # every event once
    assert len(set(accepted.values())) == len(accepted)  # every code minted once
    for result in results:
        if result["status"] != "accepted":
            assert result["status"] == "duplicate"
            assert result["dossier_code"] == accepted[result["id"]]  # the code the event was accepted with


async def test_a_day_whose_codes_are_used_up_refuses_dossiers_without_a_code_and_says_why(
        intake: tuple[httpx.AsyncClient, str], database_url: str, infra: Infra) -> None:
    client, source = intake
    day = datetime(2024, 3, 11, 9, tzinfo=VN)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO intake.code_sequences (agency_id, day, last) VALUES ($1, $2, $3)",
                           UNIT.agency_id, day.date(), DAILY_SEQUENCE_LIMIT - 1)
    finally:
        await conn.close()
    rejections_before = await end_offsets(infra.bootstrap_servers, topics.REJECTIONS)
    batch = [cloudevent(EventType.RECEIVED, None, received_data(), at=day, source=source) for _ in range(3)]

    results = (await client.post("/v1/events", content=json.dumps(batch))).json()["results"]

    assert [result["status"] for result in results] == ["accepted", "rejected", "rejected"]
    assert results[0]["dossier_code"] == f"{UNIT.agency_id}-240311-{DAILY_SEQUENCE_LIMIT}"
    for result in results[1:]:
        assert result["reason"] == RejectionReason.BAD_DOSSIER_CODE
        assert f"all {DAILY_SEQUENCE_LIMIT} dossier codes of 11/03/2024" in result["detail"]
    refused = [RejectionRecorded.model_validate_json(value) for value in await records_between(
        infra.bootstrap_servers, rejections_before, await end_offsets(infra.bootstrap_servers, topics.REJECTIONS))]
    assert sorted(r.event_id or "" for r in refused if r.source == source) == sorted(e["id"] for e in batch[1:])
    # A dossier that brings its own code is still received that day.
    own = cloudevent(EventType.RECEIVED, dossier_code(day), received_data(), at=day, source=source)
    assert (await client.post("/v1/events", content=json.dumps([own]))).json()["results"][0]["status"] == "accepted"
