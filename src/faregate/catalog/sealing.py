"""Sealing: authenticated encryption of the credentials stored in the database.

A salt key (any string; `FAREGATE_SALT_KEY`) is stretched with HKDF-SHA256 into an AES-256-GCM
key and, separately, a short key id. A sealed value reads

    fg1:<key id>:<base64url(12-byte random nonce || ciphertext || 16-byte tag)>

The key id tells which salt key sealed it, so a rotation can accept the previous keys for
opening while sealing only under the current one. The associated data binds the value to its
row and field (`fg1:<key id>:<row id>:<field>`): a ciphertext copied into another model's row,
or into another field, fails to open instead of lending that row someone else's credential.

Errors name the setting to fix and never carry the salt key or the plaintext.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from faregate.secret import Secret

VERSION = "fg1"
_SALT = b"faregate sealing v1"      # fixed: the salt key itself carries the entropy
_NONCE_BYTES = 12
_TAG_BYTES = 16
SALT_KEY_SETTING = "FAREGATE_SALT_KEY"
PREVIOUS_SETTING = "FAREGATE_SALT_KEY_PREVIOUS"


class SealingError(Exception):
    """A sealed value cannot be opened (or made). The message says which setting to fix."""


class NoSaltKey(SealingError):
    pass


def _derive(salt_key: str, purpose: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_SALT,
                info=purpose).derive(salt_key.encode())


class _Key:
    __slots__ = ("aead", "key_id")

    def __init__(self, salt_key: Secret) -> None:
        value = salt_key.reveal()
        self.aead = AESGCM(_derive(value, b"faregate credential encryption", 32))
        # An independent derivation: the id identifies the key without revealing anything of it.
        self.key_id = _derive(value, b"faregate key id", 4).hex()


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(VERSION + ":")


def key_id_of(sealed: str) -> str:
    """The id of the salt key a value was sealed under."""
    return _parts(sealed)[1]


def key_id(salt_key: Secret) -> str:
    return _Key(salt_key).key_id


def _parts(sealed: str) -> tuple[str, str, str]:
    parts = sealed.split(":", 2)
    if len(parts) != 3 or parts[0] != VERSION:
        raise SealingError(f"a stored credential is not in the {VERSION}:<key id>:<data> form; "
                           "it was not written by this faregate")
    return parts[0], parts[1], parts[2]


class Sealer:
    """Seals under the current salt key; opens under it or any previous one."""

    def __init__(self, current: Secret | None, previous: Sequence[Secret] = ()) -> None:
        self._current = _Key(current) if current is not None else None
        self._keys: dict[str, _Key] = {}
        for secret in previous:
            key = _Key(secret)
            self._keys[key.key_id] = key
        if self._current is not None:
            self._keys[self._current.key_id] = self._current

    @property
    def configured(self) -> bool:
        return self._current is not None

    @property
    def current_key_id(self) -> str | None:
        return self._current.key_id if self._current is not None else None

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def seal(self, plaintext: str, row_id: str, field: str) -> str:
        if self._current is None:
            raise NoSaltKey(f"no salt key is configured: set {SALT_KEY_SETTING} (or "
                            "LITELLM_SALT_KEY) to store credentials in the database; they are "
                            "never stored in plain text")
        nonce = os.urandom(_NONCE_BYTES)
        kid = self._current.key_id
        data = self._current.aead.encrypt(nonce, plaintext.encode(), _aad(kid, row_id, field))
        return f"{VERSION}:{kid}:{base64.urlsafe_b64encode(nonce + data).decode()}"

    def open(self, sealed: str, row_id: str, field: str) -> str:
        _, kid, payload = _parts(sealed)
        key = self._keys.get(kid)
        if key is None:
            raise SealingError(
                f"a stored credential was sealed under salt key id {kid}, which is neither "
                f"{SALT_KEY_SETTING} nor one of {PREVIOUS_SETTING} (ids known here: "
                f"{', '.join(sorted(self._keys)) or 'none'}); set the salt key it was sealed "
                "with")
        try:
            raw = base64.urlsafe_b64decode(payload.encode())
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) < _NONCE_BYTES + _TAG_BYTES:
            raise SealingError("a stored credential is damaged (not base64 of nonce, "
                               "ciphertext and tag)")
        try:
            plain = key.aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:],
                                     _aad(kid, row_id, field))
        except InvalidTag:
            raise SealingError(
                f"a stored credential under salt key id {kid} failed its integrity check: it "
                "was altered, or copied from another model's row") from None
        return plain.decode()


def _aad(kid: str, row_id: str, field: str) -> bytes:
    return f"{VERSION}:{kid}:{row_id}:{field}".encode()
