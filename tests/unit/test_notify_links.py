"""Links that act for a dossier: only the dossier's own, for one purpose, through a key rotation."""

from __future__ import annotations

import pytest

from services.notify.links import LinkSigner, Purpose
from shared.crypto import Keyring, new_key_spec

pytestmark = pytest.mark.unit
CODE = "000.00.24.07420-260210-0001"


def test_a_link_acts_for_its_dossier_and_purpose_only() -> None:
    signer = LinkSigner(Keyring.parse(new_key_spec("a")))
    token = signer.token(Purpose.SURVEY, CODE)
    assert len(token) == 22
    assert signer.verify(Purpose.SURVEY, CODE, token)
    assert not signer.verify(Purpose.SURVEY, "000.00.24.07420-260210-0002", token)
    assert not signer.verify(Purpose.OPT_OUT, CODE, token)
    assert not signer.verify(Purpose.SURVEY, CODE, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not signer.verify(Purpose.SURVEY, CODE, "")
    assert not signer.verify(Purpose.SURVEY, CODE, "đ" * 22)
    assert signer.url("https://x.gov.vn/khao-sat/", Purpose.SURVEY, CODE) == f"https://x.gov.vn/khao-sat/{CODE}/{token}"


def test_old_links_keep_working_through_a_key_rotation() -> None:
    old, new = new_key_spec("old"), new_key_spec("new")
    before = LinkSigner(Keyring.parse(old)).token(Purpose.OPT_OUT, CODE)
    rotated = LinkSigner(Keyring.parse(f"{new},{old}"))
    assert rotated.verify(Purpose.OPT_OUT, CODE, before)
    assert rotated.token(Purpose.OPT_OUT, CODE) != before
    assert not LinkSigner(Keyring.parse(new)).verify(Purpose.OPT_OUT, CODE, before)
