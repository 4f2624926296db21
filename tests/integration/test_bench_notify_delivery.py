"""The notify delivery benchmark (bench/notify_delivery.py) sends what it counts: every owed message reaches the
sinks once, through notify's own delivery rounds, against the real database."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench import notify_delivery
from shared.infra.sinks import read_mail

pytestmark = pytest.mark.integration


async def test_every_owed_message_reaches_its_provider_once(database_url: str, tmp_path: Path) -> None:
    result = await notify_delivery.measure(database_url, 10, tmp_path)

    # Ten receipts and ten results, by email to everyone and by SMS to the half who chose it.
    assert result["by_channel"] == {"email": 20, "sms": 10}
    assert result["delivered"] == result["messages"] == 30
    assert result["statuses"] == {"delivered": 30}
    assert result["messages_per_s"] > 0
    assert {"notify (this process)", "sinks"} <= result["cpu_ms_per_message"].keys()
    mails = read_mail(tmp_path / "outbox" / "mail")
    assert len({mail["message_id"] for mail in mails}) == len(mails) == 20
    assert all(mail["to"].startswith("nhung.nguyen") for mail in mails)
    texts = Counter(json.loads(line)["payload"]["idempotency_key"]
                    for line in (tmp_path / "outbox" / "gateway.jsonl").read_text(encoding="utf-8").splitlines())
    assert len(texts) == 10
    assert set(texts.values()) == {1}
