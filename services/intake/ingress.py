"""Signed ingress records: binding a Kafka record's CloudEvents `source` to the commune that sent it.

Kafka authenticates the producer (SASL) and its ACLs let a commune write only to the ingress topic, but a
consumer never learns which principal produced a record, and anything in a record (a header naming the sender
included) is written by that producer. So a commune signs each record with its API key: header `tthc-key-id`
names the key and `tthc-signature` carries HMAC-SHA256 of the record's value (hex) under the digest intake
stores for that key. A verified record is then authorised exactly as an HTTP request with that key: its
`source` must be the key's, and its dossier one of the key's units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from aiokafka import ConsumerRecord

from services.intake.keys import KeyCache, Principal, record_signature
from services.intake.pipeline import Item
from shared.contract.rejections import EventRefused, RejectionReason

KEY_HEADER = "tthc-key-id"
SIGNATURE_HEADER = "tthc-signature"


def sign(api_key: str, payload: bytes) -> list[tuple[str, bytes]]:
    """The headers a commune system sends with `payload` on the ingress topic."""
    signed = record_signature(api_key, payload)
    if signed is None:
        raise ValueError("not an API key of the form tthc_<key id>_<secret>")
    return [(KEY_HEADER, signed[0].encode()), (SIGNATURE_HEADER, signed[1].hex().encode())]


def _refused(item: Item, detail: str) -> Item:
    # Keeps the decoded event, so the rejection still names its id, source and dossier.
    return dataclasses.replace(item, refusal=item.refusal or EventRefused(RejectionReason.UNAUTHENTICATED, detail))


async def _signer(keys: KeyCache, record: ConsumerRecord[bytes, bytes], item: Item,
                  require_signature: bool) -> tuple[Principal | None, Item]:
    headers = {name: value for name, value in record.headers or ()}
    key_id, signature = headers.get(KEY_HEADER), headers.get(SIGNATURE_HEADER)
    if key_id is None and signature is None:
        if require_signature:
            return None, _refused(item, f"sign the record with headers {KEY_HEADER} and {SIGNATURE_HEADER}")
        return None, item
    try:
        principal = await keys.verify(key_id.decode(), bytes.fromhex(signature.decode()), item.payload) \
            if key_id and signature else None
    except ValueError:  # not UTF-8 or not hex
        principal = None
    if principal is None:
        return None, _refused(item, "the record's signature does not verify against an active key")
    return principal, item


async def signed_runs(keys: KeyCache, records: Sequence[ConsumerRecord[bytes, bytes]],
                      require_signature: bool) -> list[tuple[Principal | None, list[Item]]]:
    """The batch as runs of consecutive records with the same signer (None: unsigned or refused), so that each
    run is authorised as its key and the runs, handled in turn, keep the partitions' order."""
    runs: list[tuple[Principal | None, list[Item]]] = []
    for record in records:
        principal, item = await _signer(keys, record, Item.from_bytes(record.value or b""), require_signature)
        if runs and runs[-1][0] == principal:
            runs[-1][1].append(item)
        else:
            runs.append((principal, [item]))
    return runs
