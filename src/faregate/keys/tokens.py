"""Key format: `sk-` + 32 random url-safe characters. Only the SHA-256 of a key is stored.

A plain hash is enough (and what API-key systems use): keys carry ~190 bits of randomness, so
there is nothing to brute-force, and lookups must stay O(1) on the request path.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "sk-"
MAX_KEY_CHARS = 256      # longer is no key of ours: refused before it is hashed
_HEX = set("0123456789abcdef")


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_name(key: str) -> str:
    return f"{key[:3]}...{key[-4:]}"


def token_of(key_or_hash: str) -> str:
    """Admin APIs accept either the key itself or its hash, as LiteLLM's do."""
    if len(key_or_hash) == 64 and set(key_or_hash) <= _HEX:
        return key_or_hash
    return hash_key(key_or_hash)
