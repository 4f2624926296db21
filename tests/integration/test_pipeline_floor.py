"""The pipeline's floor (bench/pipeline_floor.py) does the work it claims, against the real broker and
database: every record through every stage, each stage's rows in the services' own tables, with one process
per stage or several sharing the partitions, consuming with bare aiokafka consumers or through FastStream as the
services do."""

from __future__ import annotations

import json
from collections import Counter

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import pipeline_floor
from tests.conftest import Infra

pytestmark = pytest.mark.integration
PARTITIONS = 3


async def lifecycle_values(bootstrap: str, run: str, count: int) -> Counter[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(pipeline_floor.topic(run, pipeline_floor.LIFECYCLE), partition)
                         for partition in range(PARTITIONS)])
        seen: Counter[bytes] = Counter()
        while sum(seen.values()) < count:
            batches = await consumer.getmany(timeout_ms=10_000)
            assert batches, "the lifecycle topic holds fewer records than were sent"
            seen.update(record.value for records in batches.values() for record in records if record.value)
        return seen
    finally:
        await consumer.stop()


@pytest.mark.parametrize(("instances", "through"), [(1, "aiokafka"), (2, "aiokafka"), (1, "faststream")])
async def test_every_record_goes_through_every_stage(infra: Infra, database_url: str, instances: int,
                                                     through: str) -> None:
    dossiers = [f"000.00.24.00001-261126-FL{n:06d}" for n in range(40)]
    records = [(code.encode(), json.dumps({"dossier": code, "step": step}).encode())
               for step in range(3) for code in dossiers]

    result = await pipeline_floor.measure(infra.bootstrap_servers, database_url, records, PARTITIONS, {}, instances,
                                          through=through)

    assert result["through"] == through
    assert result["events"] == len(records)
    assert result["events_per_s"] > 0
    assert {"floor source", "floor intake", "floor resolution", "floor metrics", "floor notify"} \
        <= result["cpu_us_per_event"].keys()
    assert await lifecycle_values(infra.bootstrap_servers, result["run"], len(records)) \
        == Counter(value for _, value in records)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM floor_intake.received_events") == len(records)
        assert await conn.fetchval("SELECT count(*) FROM floor_resolution.events") == len(records)
        assert await conn.fetchval("SELECT count(*) FROM floor_resolution.timeline") == len(records)
        assert await conn.fetchval("SELECT count(*) FROM floor_resolution.outbox") == 0
        # Each dossier's snapshot is its last record: per-dossier order survives both hops.
        snapshots = await conn.fetch("SELECT code, snapshot FROM floor_resolution.dossiers")
        assert {row["code"]: json.loads(row["snapshot"])["step"] for row in snapshots} \
            == dict.fromkeys(dossiers, 2)
        assert await conn.fetchval("SELECT count(*) FROM floor_metrics.dossier_progress") == len(dossiers)
        assert await conn.fetchval("SELECT sum(value) FROM floor_metrics.counters") == len(records)
        assert await conn.fetchval("SELECT count(*) FROM floor_notify.deliveries") == len(records)
        # Notify's counting triggers ran, as they do for the service.
        assert await conn.fetchval("SELECT sum(n) FROM floor_notify.delivery_counts") == len(records)
    finally:
        await conn.close()


async def test_through_faststream_a_stage_runs_as_one_process(infra: Infra, database_url: str) -> None:
    # Its consumer group, not the floor, splits the partitions: the floor could not tell each process its count.
    with pytest.raises(ValueError, match="one process each"):
        await pipeline_floor.measure(infra.bootstrap_servers, database_url, [(b"k", b"{}")], PARTITIONS, {}, 2,
                                     through="faststream")
