"""spend/row_error.py: the error a ledger row keeps is short, storable and holds no secret,
whatever the upstream put in its error body."""

from __future__ import annotations

import asyncio

from faregate.errors import InvalidRequest, UpstreamError
from faregate.spend.row_error import ERROR_CHARS, MESSAGE_CHARS, row_error


def test_type_and_code_then_the_message() -> None:
    exc = UpstreamError("The upstream failed with HTTP 503: overloaded", code="upstream_error")
    assert row_error(exc) == "upstream_error: The upstream failed with HTTP 503: overloaded"
    refused = UpstreamError("bad", status=400, type="invalid_request_error", code="400")
    assert row_error(refused) == "invalid_request_error/400: bad"
    assert row_error(InvalidRequest("no")) == "invalid_request_error: no"


def test_not_a_gateway_error() -> None:
    assert row_error(ValueError("boom")) == "ValueError: boom"
    assert row_error(asyncio.CancelledError()).startswith("cancelled: ")


def test_unstorable_characters_and_huge_text_are_bounded() -> None:
    message = "a\x00b\ud800c\nd\te\x7f" + "é" * 100_000
    text = row_error(UpstreamError(message, code="upstream_error"))
    assert text.startswith("upstream_error: a\ufffdb\ufffdc d e ")
    assert len(text) == len("upstream_error: ") + MESSAGE_CHARS <= ERROR_CHARS
    text.encode("utf-8")                      # valid Unicode: no lone surrogate left
    assert "\x00" not in text and text.isprintable()


def test_a_long_label_is_cut_too() -> None:
    exc = UpstreamError("m" * 1000, type="t" * 500, code="c" * 500)
    assert len(row_error(exc)) <= ERROR_CHARS


def test_secrets_and_credential_shapes_are_redacted() -> None:
    key = "upstream-key-1234567890"
    message = (f"Invalid key {key} at https://user:pw@up.example/v1?key={key}; "
               "Authorization: Bearer abc.DEF-123 and sk-proj-ABCdef0123456789, "
               'body {"api_key": "plain-secret", "x-api-key":"other-secret"} '
               "Basic dXNlcjpwYXNz")
    text = row_error(UpstreamError(message), [key, "https://user:pw@up.example/v1?key=" + key])
    for secret in (key, "abc.DEF-123", "sk-proj-ABCdef0123456789", "plain-secret",
                   "other-secret", "dXNlcjpwYXNz", "user:pw"):
        assert secret not in text, (secret, text)
    assert "Authorization: [redacted] and" in text and "Basic [redacted]" in text
    assert '"api_key": "[redacted]"' in text          # the names stay: what was there


def test_a_secret_that_straddles_the_cut_is_redacted_not_cut() -> None:
    key = "S" * 40
    message = "x" * (MESSAGE_CHARS - 10) + key
    text = row_error(UpstreamError(message), [key])
    assert "SSSS" not in text and text.endswith("[redacted]"[:10])
