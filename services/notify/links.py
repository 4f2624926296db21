"""Links in citizens' messages that act for one dossier (answer its survey, stop its optional notices).

A link carries the dossier code and an HMAC of it, so nobody can act for a dossier whose message they did
not receive, and nothing has to be stored to check it. The HMAC keys are derived (HKDF, `Keyring.subkeys`)
from the data keyring, the same whether its keys are configured wrapped or plain: the sealing key signs,
every key in the ring verifies, so a link in an old message keeps working through a key rotation until the
old key leaves the ring. Each purpose has its own derived key: a survey link cannot be replayed as an opt-out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from enum import StrEnum
from urllib.parse import quote

from shared.crypto import Keyring

TOKEN_BYTES = 16  # 128 bits: not guessable, short enough for an SMS


class Purpose(StrEnum):
    SURVEY = "survey"
    OPT_OUT = "opt-out"


class LinkSigner:
    def __init__(self, keyring: Keyring) -> None:
        self._keys = {purpose: keyring.subkeys(f"tthc notify link v1 {purpose.value}") for purpose in Purpose}

    @staticmethod
    def _mac(key: bytes, code: str) -> str:
        digest = hmac.new(key, code.encode(), hashlib.sha256).digest()[:TOKEN_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def token(self, purpose: Purpose, code: str) -> str:
        return self._mac(self._keys[purpose][0], code)

    def verify(self, purpose: Purpose, code: str, token: str) -> bool:
        matched = False
        for key in self._keys[purpose]:  # every key, so the answer takes as long whichever key matches
            matched |= hmac.compare_digest(self._mac(key, code).encode(), token.encode())
        return matched

    def url(self, base: str, purpose: Purpose, code: str) -> str:
        return f"{base.rstrip('/')}/{quote(code, safe='')}/{self.token(purpose, code)}"
