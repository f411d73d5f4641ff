"""Audit: the master key is compared in constant time and never shown by a repr."""

from __future__ import annotations

import hmac

import pytest

from faregate.secret import Secret


def test_matches_goes_through_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert Secret("sk-master-1").matches("sk-master-1")
    assert not Secret("sk-master-1").matches("sk-master-2")
    assert calls == [(b"sk-master-1", b"sk-master-1"), (b"sk-master-1", b"sk-master-2")]


def test_non_ascii_candidates_are_compared_not_raised() -> None:
    # compare_digest refuses non-ASCII str: a header with such bytes must be a plain mismatch
    assert not Secret("sk-master-1").matches("sk-mästér-1")


def test_repr_and_str_hide_the_value() -> None:
    secret = Secret("sk-very-secret-value")
    assert "very-secret" not in repr(secret) and "very-secret" not in str(secret)
    assert "very-secret" not in f"{[secret]} {dict(k=secret)}"
