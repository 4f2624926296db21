"""The end-to-end benchmark's split of each probe's latency by leg, read back from the real broker's topics."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer

from bench.end_to_end import probe_legs
from shared.kafka import ensure_topics
from tests.conftest import Infra

pytestmark = pytest.mark.integration


def canonical(code: str, sequence: int, recorded_at: float) -> bytes:
    return json.dumps({"dossier_code": code, "sequence": sequence,
                       "recorded_at": datetime.fromtimestamp(recorded_at, UTC).isoformat()}).encode()


async def test_each_probe_is_split_at_its_accepted_and_canonical_records(infra: Infra) -> None:
    # Topics of its own: these records are not events the services could read, and other tests' services
    # consume the contract's topics on this broker from their beginning.
    run = uuid.uuid4().hex[:8]
    accepted_topic, lifecycle_topic = f"test.probe-legs.{run}.accepted", f"test.probe-legs.{run}.lifecycle"
    await ensure_topics(infra.bootstrap_servers, 3, names=(accepted_topic, lifecycle_topic))
    whole, partial, other = (f"000.00.24.PROBE-{run}-{n}" for n in range(3))
    sent = time.time() - 60  # a minute ago, as a probe of the run just ended
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers)
    await producer.start()
    try:
        def at(seconds: float) -> int:
            return round((sent + seconds) * 1000)

        await producer.send_and_wait(accepted_topic, b"{}", key=whole.encode(), timestamp_ms=at(0.2))
        await producer.send_and_wait(accepted_topic, b"{}", key=partial.encode(), timestamp_ms=at(0.1))
        await producer.send_and_wait(accepted_topic, b"{}", key=other.encode(), timestamp_ms=at(9.0))
        await producer.send_and_wait(lifecycle_topic, canonical(whole, 1, sent + 0.7), key=whole.encode(),
                                     timestamp_ms=at(0.9))
        # A later event of the same dossier is not the probe's reception.
        await producer.send_and_wait(lifecycle_topic, canonical(whole, 2, sent + 5.0), key=whole.encode(),
                                     timestamp_ms=at(5.5))
        await producer.send_and_wait(lifecycle_topic, canonical(other, 1, sent + 9.5), key=other.encode(),
                                     timestamp_ms=at(9.9))
    finally:
        await producer.stop()

    legs = await probe_legs(infra.bootstrap_servers, {whole: (sent, 2.0), partial: (sent, 1.0)},
                            accepted_topic, lifecycle_topic)

    intake, waiting, resolving, counting = (legs[leg] for leg in
                                             ("intake", "waiting for resolution", "resolution and its relay",
                                              "metrics and the probe's poll"))
    assert intake["probes"] == 2
    assert intake["max"] == pytest.approx(0.2, abs=0.002)
    # The partial probe has no canonical record yet: only its intake leg is known.
    assert (waiting["probes"], resolving["probes"], counting["probes"]) == (1, 1, 1)
    assert waiting["max"] == pytest.approx(0.5, abs=0.002)
    assert resolving["max"] == pytest.approx(0.2, abs=0.002)
    assert counting["max"] == pytest.approx(1.1, abs=0.002)
