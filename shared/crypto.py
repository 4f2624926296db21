"""Sealing personal data with AES-256-GCM under a rotating keyring.

A sealed value reads `v1.<key id>.<base64url(nonce || ciphertext)>`. The first key in the ring seals; every
key in the ring opens, so a key is rotated by putting the new one first and keeping the old one until no
sealed value uses it. The associated data binds a sealed value to its dossier, so it cannot be moved to
another one.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PREFIX = "v1"


class SealError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key_spec(key_id: str | None = None) -> str:
    """A fresh `id:base64key` entry for TTHC_DATA_KEYS."""
    return f"{key_id or secrets.token_hex(4)}:{_b64(AESGCM.generate_key(bit_length=256))}"


@dataclass(frozen=True)
class Keyring:
    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        """From `id:base64key[,id:base64key...]`, the sealing key first."""
        keys = []
        for entry in filter(None, (part.strip() for part in spec.split(","))):
            key_id, _, encoded = entry.partition(":")
            key = _unb64(encoded)
            if not key_id.isalnum() or len(key) != 32:
                raise SealError("each key is `id:base64url(32 bytes)` with an alphanumeric id")
            keys.append((key_id, key))
        if not keys:
            raise SealError("the keyring is empty")
        return cls(tuple(keys))

    def seal(self, plaintext: bytes, context: str) -> str:
        key_id, key = self.keys[0]
        nonce = os.urandom(12)
        return f"{_PREFIX}.{key_id}.{_b64(nonce + AESGCM(key).encrypt(nonce, plaintext, context.encode()))}"

    def open(self, sealed: str, context: str) -> bytes:
        prefix, key_id, body = ([*sealed.split(".", 2), "", ""])[:3]
        key = dict(self.keys).get(key_id)
        if prefix != _PREFIX or key is None:
            raise SealError("sealed with an unknown key")
        raw = _unb64(body)
        try:
            return AESGCM(key).decrypt(raw[:12], raw[12:], context.encode())
        except Exception as error:
            raise SealError("sealed value does not open under its key and context") from error
