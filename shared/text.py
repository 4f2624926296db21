"""Vietnamese text helpers."""

from __future__ import annotations

import unicodedata


def without_diacritics(text: str) -> str:
    """Vietnamese without its marks (`Hồ sơ` → `Ho so`), for SMS gateways and addresses that need ASCII."""
    stripped = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    return stripped.replace("đ", "d").replace("Đ", "D")
