"""API keys for commune systems: `tthc_<key id>_<secret>`, stored as the key id and a digest of the secret.

The secret has 256 bits of entropy, so a plain SHA-256 digest cannot be brute-forced and keeps checks cheap
on every request; comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from services.intake.store import SCHEMA
from shared.db import Connection

PREFIX = "tthc"


@dataclass(frozen=True)
class Principal:
    """Who is speaking: the source a key speaks for and the units whose dossiers it may speak for."""

    key_id: str
    source: str
    units: frozenset[str]


@dataclass(frozen=True)
class StoredKey:
    principal: Principal
    digest: bytes


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def record_signature(api_key: str, payload: bytes) -> tuple[str, bytes] | None:
    """(key id, HMAC-SHA256 of `payload`) with which a commune signs an ingress record: the key is the stored
    digest of the API key's secret, so intake can verify without holding the secret itself."""
    parts = split(api_key)
    if parts is None:
        return None
    return parts[0], hmac.new(_digest(parts[1]), payload, hashlib.sha256).digest()


def new_key() -> tuple[str, str, bytes]:
    """(key id, the key as given to the commune, digest to store)."""
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    return key_id, f"{PREFIX}_{key_id}_{secret}", _digest(secret)


def split(key: str) -> tuple[str, str] | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


async def create(conn: Connection, source: str, units: list[str]) -> str:
    key_id, key, digest = new_key()
    await conn.execute(f"INSERT INTO {SCHEMA}.api_keys VALUES ($1, $2, $3, $4, $5, NULL)",
                       key_id, source, sorted(set(units)), digest, datetime.now(UTC))
    return key


async def revoke(conn: Connection, source: str, key_id: str | None = None) -> int:
    """Revoke a source's keys (or one of them); returns how many."""
    done = await conn.execute(
        f"UPDATE {SCHEMA}.api_keys SET revoked_at = $3 WHERE source = $1 AND revoked_at IS NULL "
        "AND ($2::text IS NULL OR key_id = $2)", source, key_id, datetime.now(UTC))
    return int(done.split()[-1])


async def rotate(conn: Connection, source: str) -> str:
    """A new key with the same units; the source's previous keys are revoked in the same transaction."""
    async with conn.transaction():
        units = await conn.fetchval(
            f"SELECT array_agg(DISTINCT u) FROM {SCHEMA}.api_keys, unnest(units) u "
            "WHERE source = $1 AND revoked_at IS NULL", source)
        if not units:
            raise LookupError(f"no active key for {source!r}")
        await revoke(conn, source)
        return await create(conn, source, list(units))


class KeyCache:
    """Active keys, re-read every `ttl` seconds: a revocation takes effect within that time. A key id not in
    the cache is looked up at once (a new key works immediately); an id found missing is not looked up again
    for `miss_ttl` seconds, so made-up keys cannot hammer the database."""

    def __init__(self, pool: asyncpg.Pool, ttl: float = 5.0, miss_ttl: float = 5.0) -> None:
        self.pool = pool
        self.ttl = ttl
        self.miss_ttl = miss_ttl
        self._keys: dict[str, StoredKey] = {}
        self._missing: dict[str, float] = {}
        self._loaded_at = float("-inf")

    async def _load(self, key_id: str | None = None) -> dict[str, StoredKey]:
        rows = await self.pool.fetch(
            f"SELECT key_id, source, units, digest FROM {SCHEMA}.api_keys WHERE revoked_at IS NULL "
            "AND ($1::text IS NULL OR key_id = $1)", key_id)
        return {row["key_id"]: StoredKey(Principal(row["key_id"], row["source"], frozenset(row["units"])),
                                         bytes(row["digest"])) for row in rows}

    async def _lookup(self, key_id: str) -> StoredKey | None:
        now = time.monotonic()
        if now - self._loaded_at >= self.ttl:
            self._keys, self._loaded_at = await self._load(), now
            self._missing.clear()
        if key_id not in self._keys and now - self._missing.get(key_id, float("-inf")) >= self.miss_ttl:
            found = await self._load(key_id)
            self._keys.update(found)
            if not found:
                if len(self._missing) > 10_000:
                    self._missing.clear()
                self._missing[key_id] = now
        return self._keys.get(key_id)

    async def verify(self, key_id: str, signature: bytes, payload: bytes) -> Principal | None:
        """The principal whose active key made `signature` over `payload`, or None."""
        stored = await self._lookup(key_id)
        if stored is None or not hmac.compare_digest(
                signature, hmac.new(stored.digest, payload, hashlib.sha256).digest()):
            return None
        return stored.principal

    async def authenticate(self, authorization: str | None) -> Principal | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        parts = split(authorization.removeprefix("Bearer ").strip())
        if parts is None:
            return None
        stored = await self._lookup(parts[0])
        if stored is None or not hmac.compare_digest(stored.digest, _digest(parts[1])):
            return None
        return stored.principal
