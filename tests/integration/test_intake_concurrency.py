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
from tests.support import UNIT, cloudevent, dossier_code, eventually, received_data, waiting_for_a_lock

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


async def test_batches_sharing_events_and_codes_in_opposite_orders_all_go_through(
        intake: tuple[httpx.AsyncClient, str]) -> None:
    """No codes minted: each batch holds the same six events with their own codes, and six of its own received
    under those same codes, half of the batches the other way round. Each event is accepted once, and every
    answer carries the code the event came with. (Intake writes keys and codes sorted, as two multi-row inserts in
    opposite orders can each wait for the other; their windows are too short for this test to hit that.)"""
    client, source = intake
    codes = [dossier_code() for _ in range(6)]
    shared = [cloudevent(EventType.RECEIVED, code, received_data(), source=source) for code in codes]
    batches = []
    for turn in range(REQUESTS):
        own = [cloudevent(EventType.RECEIVED, code, received_data(), source=source) for code in codes]
        events = [event for pair in zip(shared, own, strict=True) for event in pair]
        batches.append(events if turn % 2 else events[::-1])

    replies = await asyncio.gather(*(client.post("/v1/events", content=json.dumps(batch)) for batch in batches))

    assert [reply.status_code for reply in replies] == [202] * REQUESTS, [reply.text[:300] for reply in replies]
    sent = {event["id"]: event["subject"] for batch in batches for event in batch}
    results = [result for reply in replies for result in reply.json()["results"]]
    assert {result["id"] for result in results if result["status"] == "accepted"} == set(sent)  # each once
    assert sum(result["status"] == "accepted" for result in results) == len(sent)
    assert all(result["dossier_code"] == sent[result["id"]] for result in results)


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
    # The same event again on a day with codes to spare is still the refused event, and takes no code there.
    next_day = datetime(2024, 3, 12, 9, tzinfo=VN)
    batch += [{**batch[1], "time": next_day.isoformat()},
              cloudevent(EventType.RECEIVED, None, received_data(), at=next_day, source=source)]

    results = (await client.post("/v1/events", content=json.dumps(batch))).json()["results"]

    assert [result["status"] for result in results] == ["accepted", "rejected", "rejected", "rejected", "accepted"]
    assert results[0]["dossier_code"] == f"{UNIT.agency_id}-240311-{DAILY_SEQUENCE_LIMIT}"
    assert results[4]["dossier_code"] == f"{UNIT.agency_id}-240312-0001"
    for result in results[1:4]:
        assert result["reason"] == RejectionReason.BAD_DOSSIER_CODE
        assert f"all {DAILY_SEQUENCE_LIMIT} dossier codes of 11/03/2024" in result["detail"]
    refused = [RejectionRecorded.model_validate_json(value) for value in await records_between(
        infra.bootstrap_servers, rejections_before, await end_offsets(infra.bootstrap_servers, topics.REJECTIONS))]
    assert sorted(r.event_id or "" for r in refused if r.source == source) == sorted(e["id"] for e in batch[1:4])
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT last FROM intake.code_sequences WHERE day = $1", next_day.date()) == 1
    finally:
        await conn.close()
    # A dossier that brings its own code is still received that day.
    own = cloudevent(EventType.RECEIVED, dossier_code(day), received_data(), at=day, source=source)
    assert (await client.post("/v1/events", content=json.dumps([own]))).json()["results"][0]["status"] == "accepted"


async def test_an_event_accepted_meanwhile_on_a_day_whose_codes_run_out_is_a_duplicate_not_a_refusal(
        intake: tuple[httpx.AsyncClient, str], database_url: str) -> None:
    """Another request holds the day's last code for this very event while this one asks for a code: once it
    commits, this one answers with its code, rather than refusing an event that was accepted."""
    client, source = intake
    day = datetime(2024, 3, 13, 9, tzinfo=VN)
    event = cloudevent(EventType.RECEIVED, None, received_data(), at=day, source=source)
    code = f"{UNIT.agency_id}-240313-{DAILY_SEQUENCE_LIMIT}"
    other, watcher = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            await other.execute("INSERT INTO intake.code_sequences (agency_id, day, last) VALUES ($1, $2, $3)",
                                UNIT.agency_id, day.date(), DAILY_SEQUENCE_LIMIT)
            await other.execute("INSERT INTO intake.received_events (source, event_id, dossier_code, accepted_at) "
                                "VALUES ($1, $2, $3, now())", source, event["id"], code)
            asking = asyncio.create_task(client.post("/v1/events", content=json.dumps([event])))

            await eventually(lambda: waiting_for_a_lock(watcher), timeout=30,
                             what="the request waiting for the day's sequence")
        answer = (await asking).json()["results"][0]
    finally:
        await other.close()
        await watcher.close()
    assert answer["status"] == "duplicate"
    assert answer["dossier_code"] == code
