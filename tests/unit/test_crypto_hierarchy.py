"""The key hierarchy: data keys configured wrapped under a master key, and the master key rotated."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.intake.app import build_app
from services.intake.settings import IntakeSettings
from services.notify.links import TOKEN_BYTES, LinkSigner, Purpose
from services.notify.settings import NotifySettings
from shared.crypto import (
    Keyring,
    SealError,
    keyring_from_settings,
    load_keyring,
    main,
    new_key_spec,
    new_master_key,
    parse_master_key,
    rewrap,
)

CODE = "000.00.01.H29-250101-0001"


def _wrapped(plain_spec: str, master: str) -> str:
    return Keyring.parse(plain_spec).wrapped_spec(parse_master_key(master))


def test_wrapped_keys_open_what_plaintext_keys_sealed() -> None:
    plain = new_key_spec("k1")
    master = new_master_key()
    sealed = Keyring.parse(plain).seal(b"001203004567", CODE)
    wrapped = _wrapped(plain, master)
    assert wrapped.startswith("k1:wrapped:")
    assert plain.split(":", 1)[1] not in wrapped, "the data key must not appear in the wrapped configuration"
    keyring = load_keyring(wrapped, master_key=master)
    assert keyring.open(sealed, CODE) == b"001203004567"
    assert Keyring.parse(plain).open(keyring.seal(b"x", CODE), CODE) == b"x"


def test_wrong_master_key_fails_at_start_up(tmp_path: Path) -> None:
    wrapped = _wrapped(new_key_spec("k1"), new_master_key())
    with pytest.raises(SealError, match="does not unwrap under the master key"):
        load_keyring(wrapped, master_key=new_master_key())
    with pytest.raises(SealError, match="TTHC_MASTER_KEY"):
        Keyring.parse(wrapped)  # wrapped but no master key configured
    # A service refuses to build, before it serves or consumes anything.
    key_file = tmp_path / "master.key"
    key_file.write_text(new_master_key() + "\n")
    settings = NotifySettings.model_validate({"TTHC_DATA_KEYS": wrapped, "TTHC_MASTER_KEY_FILE": str(key_file)})
    with pytest.raises(SystemExit, match="TTHC_DATA_KEYS: data key 'k1' does not unwrap"):
        keyring_from_settings(settings, "test")


def test_wrapped_key_is_bound_to_its_id() -> None:
    master = new_master_key()
    entry = _wrapped(new_key_spec("k1"), master)
    with pytest.raises(SealError, match="does not unwrap"):
        load_keyring(entry.replace("k1:", "k2:", 1), master_key=master)


def test_master_key_from_file_or_value_not_both(tmp_path: Path) -> None:
    master = new_master_key()
    key_file = tmp_path / "master.key"
    key_file.write_text(master + "\n")
    wrapped = _wrapped(new_key_spec("k1"), master)
    assert load_keyring(wrapped, master_key_file=key_file).keys == load_keyring(wrapped, master_key=master).keys
    with pytest.raises(SealError, match="not both"):
        load_keyring(wrapped, master_key=master, master_key_file=key_file)
    with pytest.raises(SealError, match="32 bytes"):
        load_keyring(wrapped, master_key="c2hvcnQ")


def test_master_key_rotation_keeps_every_sealed_value_readable() -> None:
    old_master, new_master = new_master_key(), new_master_key()
    plain = f"{new_key_spec('k2')},{new_key_spec('k1')}"
    first = Keyring.parse(plain)
    sealed = [first.seal(b"a", "A-1"), Keyring(first.keys[1:]).seal(b"b", "B-2")]
    under_old = _wrapped(plain, old_master)
    under_new = rewrap(under_old, parse_master_key(new_master), parse_master_key(old_master))
    assert under_new != under_old
    rotated = load_keyring(under_new, master_key=new_master)
    assert [rotated.open(value, context) for value, context in zip(sealed, ["A-1", "B-2"], strict=True)] == [
        b"a", b"b"]
    assert rotated.keys == first.keys
    with pytest.raises(SealError):
        load_keyring(under_new, master_key=old_master)


def test_wrapped_and_plaintext_entries_mix_during_migration() -> None:
    master = new_master_key()
    old_plain, new_plain = new_key_spec("old"), new_key_spec("new")
    sealed_old = Keyring.parse(old_plain).seal(b"0912345678", CODE)
    mixed = f"{_wrapped(new_plain, master)},{old_plain}"
    keyring = load_keyring(mixed, master_key=master)
    assert keyring.open(sealed_old, CODE) == b"0912345678"
    assert keyring.seal(b"x", CODE).startswith("v1.new.")
    # Finishing the migration: every entry wrapped, plaintext ones included.
    finished = rewrap(mixed, parse_master_key(master), parse_master_key(master))
    assert all(entry.split(":")[1] == "wrapped" for entry in finished.split(","))
    assert load_keyring(finished, master_key=master).keys == keyring.keys
    # Plaintext only, no master key: unchanged.
    assert Keyring.parse(old_plain).open(sealed_old, CODE) == b"0912345678"


def test_duplicate_ids_are_refused() -> None:
    master = new_master_key()
    with pytest.raises(SealError, match="share an id"):
        load_keyring(f"{_wrapped(new_key_spec('k1'), master)},{new_key_spec('k1')}", master_key=master)


def test_notify_links_derive_the_same_keys_from_wrapped_and_plaintext_rings() -> None:
    plain = new_key_spec("k1")
    master = new_master_key()
    token = LinkSigner(Keyring.parse(plain)).token(Purpose.SURVEY, CODE)
    assert LinkSigner(load_keyring(_wrapped(plain, master), master_key=master)).verify(Purpose.SURVEY, CODE, token)
    # The derivation is the one links always used, so links already sent keep working.
    key = Keyring.parse(plain).keys[0][1]
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tthc notify link v1 survey").derive(key)
    expected = base64.urlsafe_b64encode(hmac.new(derived, CODE.encode(), hashlib.sha256).digest()[:TOKEN_BYTES])
    assert token == expected.rstrip(b"=").decode()


def test_rewrap_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    old_master, new_master = new_master_key(), new_master_key()
    plain = new_key_spec("k1")
    sealed = Keyring.parse(plain).seal(b"a", "A-1")
    new_file = tmp_path / "new.key"
    new_file.write_text(new_master)
    monkeypatch.setenv("TTHC_DATA_KEYS", _wrapped(plain, old_master))
    monkeypatch.setenv("TTHC_MASTER_KEY", old_master)
    monkeypatch.delenv("TTHC_MASTER_KEY_FILE", raising=False)
    assert main(["rewrap", "--new-master-key-file", str(new_file)]) == 0
    printed = capsys.readouterr().out.strip()
    assert load_keyring(printed, master_key=new_master).open(sealed, "A-1") == b"a"
    monkeypatch.setenv("TTHC_MASTER_KEY", new_master_key())
    assert main(["rewrap", "--new-master-key-file", str(new_file)]) == 1
    assert "does not unwrap" in capsys.readouterr().err


def test_a_service_with_a_wrong_master_key_does_not_build() -> None:
    wrapped = _wrapped(new_key_spec("k1"), new_master_key())
    settings = IntakeSettings.model_validate({"TTHC_DATA_KEYS": wrapped, "TTHC_MASTER_KEY": new_master_key()})
    with pytest.raises(SystemExit, match="does not unwrap under the master key"):
        build_app(settings)
