"""Sealing: authenticated encryption of stored credentials under the salt key."""

from __future__ import annotations

import base64

import pytest

from faregate.catalog.sealing import NoSaltKey, Sealer, SealingError, is_sealed, key_id, key_id_of
from faregate.secret import Secret

OLD = Secret("old-salt-key-0123456789abcdef")
NEW = Secret("new-salt-key-fedcba9876543210")
PLAIN = "sk-upstream-credential-42"


def test_round_trip_and_the_stored_form() -> None:
    sealer = Sealer(NEW)
    sealed = sealer.seal(PLAIN, "row-1", "api_key")
    version, kid, _payload = sealed.split(":", 2)
    assert (version, kid) == ("fg1", key_id(NEW)) and len(kid) == 8
    assert PLAIN not in sealed and NEW.reveal() not in sealed
    assert is_sealed(sealed) and key_id_of(sealed) == kid
    assert sealer.open(sealed, "row-1", "api_key") == PLAIN


def test_every_seal_uses_a_fresh_nonce() -> None:
    sealer = Sealer(NEW)
    assert sealer.seal(PLAIN, "r", "api_key") != sealer.seal(PLAIN, "r", "api_key")


def test_key_ids_differ_per_key_and_are_stable() -> None:
    assert key_id(OLD) != key_id(NEW)
    assert key_id(NEW) == key_id(Secret(NEW.reveal()))


def test_wrong_key_is_refused_naming_the_settings() -> None:
    sealed = Sealer(OLD).seal(PLAIN, "row-1", "api_key")
    with pytest.raises(SealingError) as info:
        Sealer(NEW).open(sealed, "row-1", "api_key")
    message = str(info.value)
    assert key_id(OLD) in message
    assert "FAREGATE_SALT_KEY" in message and "FAREGATE_SALT_KEY_PREVIOUS" in message
    assert OLD.reveal() not in message and NEW.reveal() not in message and PLAIN not in message


def test_previous_key_still_opens_but_sealing_uses_the_current_one() -> None:
    sealed_old = Sealer(OLD).seal(PLAIN, "row-1", "api_key")
    rotating = Sealer(NEW, [OLD])
    assert rotating.open(sealed_old, "row-1", "api_key") == PLAIN
    assert key_id_of(rotating.seal(PLAIN, "row-1", "api_key")) == key_id(NEW)
    assert rotating.key_ids == {key_id(OLD), key_id(NEW)}


def test_tampered_ciphertext_fails_the_integrity_check() -> None:
    sealer = Sealer(NEW)
    sealed = sealer.seal(PLAIN, "row-1", "api_key")
    prefix, payload = sealed.rsplit(":", 1)
    raw = bytearray(base64.urlsafe_b64decode(payload))
    raw[-1] ^= 1
    tampered = f"{prefix}:{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    with pytest.raises(SealingError, match="integrity"):
        sealer.open(tampered, "row-1", "api_key")


def test_a_ciphertext_moved_to_another_row_or_field_does_not_open() -> None:
    sealer = Sealer(NEW)
    sealed = sealer.seal(PLAIN, "row-1", "api_key")
    with pytest.raises(SealingError, match="another model"):
        sealer.open(sealed, "row-2", "api_key")
    with pytest.raises(SealingError):
        sealer.open(sealed, "row-1", "aws_secret_access_key")


def test_a_relabelled_key_id_does_not_open() -> None:
    """The key id is in the associated data: editing it cannot steer which key is tried."""
    sealer = Sealer(NEW, [OLD])
    sealed = sealer.seal(PLAIN, "row-1", "api_key")
    relabelled = sealed.replace(key_id(NEW), key_id(OLD), 1)
    with pytest.raises(SealingError):
        sealer.open(relabelled, "row-1", "api_key")


def test_unknown_key_id_and_foreign_forms() -> None:
    sealer = Sealer(NEW)
    with pytest.raises(SealingError, match="salt key id deadbeef"):
        sealer.open("fg1:deadbeef:AAAA", "row-1", "api_key")
    with pytest.raises(SealingError, match="not in the fg1"):
        sealer.open("plain-text-key", "row-1", "api_key")
    with pytest.raises(SealingError, match="not base64"):
        sealer.open(f"fg1:{key_id(NEW)}:***", "row-1", "api_key")


def test_no_salt_key_refuses_to_seal() -> None:
    sealer = Sealer(None)
    assert not sealer.configured and sealer.current_key_id is None
    with pytest.raises(NoSaltKey, match="FAREGATE_SALT_KEY"):
        sealer.seal(PLAIN, "row-1", "api_key")
