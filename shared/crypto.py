"""Sealing personal data with AES-256-GCM under a rotating keyring, its data keys wrapped by a master key.

A sealed value reads `v1.<key id>.<base64url(nonce || ciphertext)>`. The first key in the ring seals; every
key in the ring opens, so a key is rotated by putting the new one first and keeping the old one until no
sealed value uses it. The associated data binds a sealed value to its dossier, so it cannot be moved to
another one.

The key hierarchy: a master key (key-encryption key, `TTHC_MASTER_KEY` or a file named by
`TTHC_MASTER_KEY_FILE`) wraps the data keys with AES-256-GCM, the key id as associated data, so a data key
is configured as `id:wrapped:base64url(nonce || wrapped key)` and never sits in plaintext in the
configuration. Plaintext entries (`id:base64key`) still work and may be mixed with wrapped ones while
migrating. The keyring unwraps every entry when it is built, so a wrong master key stops a service at
start-up, not at its first sealed value. Rotating the master key re-wraps the same data keys, so every
sealed value stays readable:

    TTHC_MASTER_KEY_FILE=old.key TTHC_DATA_KEYS=... python -m shared.crypto rewrap --new-master-key-file new.key

prints the new `TTHC_DATA_KEYS` (every entry wrapped under the new master key; plaintext ones too, which is
how a deployment migrates). `python -m shared.crypto new-master-key` prints a fresh master key and
`python -m shared.crypto new-data-key [ID]` a fresh data key entry, wrapped when a master key is configured.
Keys that must differ per purpose are derived from the data keys with HKDF (`Keyring.subkeys`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from shared.settings import CommonSettings

_PREFIX = "v1"
_WRAPPED = "wrapped"
_KEY_BYTES = 32
_NONCE_BYTES = 12


class SealError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _decode_key(encoded: str, what: str) -> bytes:
    try:
        key = _unb64(encoded.strip())
    except (binascii.Error, ValueError) as error:
        raise SealError(f"{what} is not base64url") from error
    if len(key) != _KEY_BYTES:
        raise SealError(f"{what} is not 32 bytes")
    return key


def _wrap_context(key_id: str) -> bytes:
    return f"tthc data key v1 {key_id}".encode()


def new_master_key() -> str:
    """A fresh master key for TTHC_MASTER_KEY (base64url of 32 random bytes)."""
    return _b64(AESGCM.generate_key(bit_length=256))


def parse_master_key(encoded: str) -> bytes:
    return _decode_key(encoded, "the master key")


def wrap_key(key_id: str, key: bytes, master: bytes) -> str:
    """The `id:wrapped:...` entry of a data key wrapped under a master key, bound to its id."""
    nonce = os.urandom(_NONCE_BYTES)
    return f"{key_id}:{_WRAPPED}:{_b64(nonce + AESGCM(master).encrypt(nonce, key, _wrap_context(key_id)))}"


def unwrap_key(key_id: str, wrapped: str, master: bytes) -> bytes:
    try:
        raw = _unb64(wrapped)
        key = AESGCM(master).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _wrap_context(key_id))
    except (InvalidTag, binascii.Error, ValueError) as error:
        raise SealError(f"data key {key_id!r} does not unwrap under the master key "
                        "(wrong TTHC_MASTER_KEY, or the entry belongs to another key id)") from error
    if len(key) != _KEY_BYTES:
        raise SealError(f"data key {key_id!r} unwraps to {len(key)} bytes, not 32")
    return key


def new_key_spec(key_id: str | None = None, master: bytes | None = None) -> str:
    """A fresh `id:base64key` entry for TTHC_DATA_KEYS, or `id:wrapped:...` under a master key."""
    key_id = key_id or secrets.token_hex(4)
    key = AESGCM.generate_key(bit_length=256)
    return wrap_key(key_id, key, master) if master is not None else f"{key_id}:{_b64(key)}"


@dataclass(frozen=True)
class Keyring:
    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, spec: str, master: bytes | None = None) -> Keyring:
        """From `id:base64key` and `id:wrapped:base64` entries separated by commas, the sealing key first.

        Wrapped entries are unwrapped now, under `master`: a wrong or missing master key fails here."""
        keys = []
        for entry in filter(None, (part.strip() for part in spec.split(","))):
            key_id, _, encoded = entry.partition(":")
            if not key_id.isalnum():
                raise SealError("each key is `id:base64url(32 bytes)` or `id:wrapped:base64url(...)` "
                                "with an alphanumeric id")
            if encoded.startswith(f"{_WRAPPED}:"):
                if master is None:
                    raise SealError(f"data key {key_id!r} is wrapped: TTHC_MASTER_KEY or TTHC_MASTER_KEY_FILE "
                                    "is required")
                key = unwrap_key(key_id, encoded.removeprefix(f"{_WRAPPED}:"), master)
            else:
                key = _decode_key(encoded, f"data key {key_id!r}")
            keys.append((key_id, key))
        if not keys:
            raise SealError("the keyring is empty")
        if len({key_id for key_id, _ in keys}) != len(keys):
            raise SealError("two keys in the keyring share an id")
        return cls(tuple(keys))

    def wrapped_spec(self, master: bytes) -> str:
        """TTHC_DATA_KEYS with every key of this ring wrapped under `master`, in the same order."""
        return ",".join(wrap_key(key_id, key, master) for key_id, key in self.keys)

    def subkeys(self, info: str) -> list[bytes]:
        """One key per data key, derived with HKDF-SHA256 for one purpose, in ring order (the first signs)."""
        return [HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=info.encode()).derive(key)
                for _, key in self.keys]

    def seal(self, plaintext: bytes, context: str) -> str:
        key_id, key = self.keys[0]
        nonce = os.urandom(_NONCE_BYTES)
        return f"{_PREFIX}.{key_id}.{_b64(nonce + AESGCM(key).encrypt(nonce, plaintext, context.encode()))}"

    def open(self, sealed: str, context: str) -> bytes:
        prefix, key_id, body = ([*sealed.split(".", 2), "", ""])[:3]
        key = dict(self.keys).get(key_id)
        if prefix != _PREFIX or key is None:
            raise SealError("sealed with an unknown key")
        raw = _unb64(body)
        try:
            return AESGCM(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
        except Exception as error:
            raise SealError("sealed value does not open under its key and context") from error


def load_master_key(master_key: str | None, master_key_file: str | Path | None) -> bytes | None:
    """The master key from its value or from a file holding it; None when neither is configured."""
    if master_key and master_key_file:
        raise SealError("set TTHC_MASTER_KEY or TTHC_MASTER_KEY_FILE, not both")
    if master_key_file:
        return load_keyfile(master_key_file)
    return parse_master_key(master_key) if master_key else None


def load_keyfile(path: str | Path) -> bytes:
    try:
        return parse_master_key(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise SealError(f"{path}: {error.strerror}") from error


def load_keyring(data_keys: str, *, master_key: str | None = None,
                 master_key_file: str | Path | None = None) -> Keyring:
    return Keyring.parse(data_keys, load_master_key(master_key, master_key_file))


def keyring_from_settings(settings: CommonSettings, needed_for: str) -> Keyring:
    """The service's keyring, every wrapped key unwrapped now: a missing or wrong key stops start-up."""
    if settings.data_keys is None:
        raise SystemExit(f"TTHC_DATA_KEYS is required: {needed_for}")
    master = settings.master_key.get_secret_value() if settings.master_key else None
    try:
        return load_keyring(settings.data_keys.get_secret_value(), master_key=master,
                            master_key_file=settings.master_key_file)
    except SealError as error:
        raise SystemExit(f"TTHC_DATA_KEYS: {error}") from error


def rewrap(data_keys: str, new_master: bytes, old_master: bytes | None = None) -> str:
    """TTHC_DATA_KEYS re-wrapped under a new master key: the same data keys (so every sealed value stays
    readable), each wrapped, plaintext entries included."""
    return Keyring.parse(data_keys, old_master).wrapped_spec(new_master)


def main(argv: Sequence[str] | None = None) -> int:
    from shared.settings import CommonSettings  # only the command line reads the environment

    parser = argparse.ArgumentParser(prog="python -m shared.crypto", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("new-master-key", help="print a fresh master key")
    new_data_key = commands.add_parser("new-data-key", help="print a data key entry, wrapped under the master key")
    new_data_key.add_argument("key_id", nargs="?")
    rewrapping = commands.add_parser("rewrap", help="print TTHC_DATA_KEYS re-wrapped under a new master key")
    rewrapping.add_argument("--new-master-key-file", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.command == "new-master-key":
        print(new_master_key())
        return 0
    settings = CommonSettings()
    try:
        master = load_master_key(settings.master_key.get_secret_value() if settings.master_key else None,
                                 settings.master_key_file)
        if args.command == "new-data-key":
            print(new_key_spec(args.key_id, master))
            return 0
        if settings.data_keys is None:
            print("TTHC_DATA_KEYS is required", file=sys.stderr)
            return 2
        print(rewrap(settings.data_keys.get_secret_value(), load_keyfile(args.new_master_key_file), master))
    except SealError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
