"""Dossier codes (mã số hồ sơ).

Two official shapes are accepted:
- Circular 01/2018/TT-VPCP art. 19: `<agency id>-YYMMDD-XXXX`, a 4-digit daily sequence;
- Circular 04/2025/TT-VPCP (centralised national systems): `<agency id>-YYMMDD-AAXXXX`, two characters of the
  owning agency's identifier and a daily sequence of at least 4 digits.
The agency identifier follows QCVN 102:2016/BTTTT: dot-separated blocks of digits and capital letters, such as
`000.00.01.H56` or `H56.123.45`.
"""

from __future__ import annotations

import re
from datetime import date

_CODE = re.compile(
    r"^(?P<agency>[0-9A-Z]{1,6}(?:\.[0-9A-Z]{1,6}){1,4})"
    r"-(?P<yymmdd>\d{6})"
    r"-(?P<sequence>\d{4}|[0-9A-Z]{2}\d{4,8})$"
)
MAX_LENGTH = 64


class InvalidDossierCode(ValueError):
    pass


def validate_dossier_code(code: str) -> str:
    """The code itself when it is in one of the official shapes; otherwise InvalidDossierCode says why."""
    if len(code) > MAX_LENGTH:
        raise InvalidDossierCode(f"longer than {MAX_LENGTH} characters")
    match = _CODE.match(code)
    if match is None:
        raise InvalidDossierCode(
            "expected <agency id>-YYMMDD-XXXX (Circular 01/2018) or <agency id>-YYMMDD-AAXXXX (Circular 04/2025)"
        )
    yymmdd = match["yymmdd"]
    try:
        date(2000 + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:]))
    except ValueError:
        raise InvalidDossierCode(f"{yymmdd} is not a date (YYMMDD)") from None
    return code


DAILY_SEQUENCE_LIMIT = 9999
"""Circular 01/2018 numbers an agency's dossiers of a day in four digits."""


def mint_dossier_code(agency_id: str, received_on: date, sequence: int) -> str:
    """A code in the Circular 01/2018 shape, for a dossier a commune sent without one."""
    if not 1 <= sequence <= DAILY_SEQUENCE_LIMIT:
        raise ValueError("the Circular 01/2018 daily sequence has 4 digits")
    return validate_dossier_code(f"{agency_id}-{received_on:%y%m%d}-{sequence:04d}")
