"""A stream that fails at its first event is still retryable: nothing reached the client."""

from __future__ import annotations

import pytest

from faregate.config import Deployment
from faregate.errors import UpstreamError
from faregate.gateway.stream_meter import check_first_event

BASE = Deployment(model_name="m", provider="openai", upstream_model="u",
                  api_base="http://127.0.0.1:1/v1", api_key=None, input_femtos=1,
                  output_femtos=1, max_output_tokens=16, prompt_overhead_tokens=0,
                  per_message_overhead_tokens=0, timeout_s=1.0)


@pytest.mark.parametrize(("first", "says"), [
    (None, "ended the stream before its first event"),
    (b'data: {"id": "x", "choices": [\n\n', "malformed first stream event"),
    (b'data: {"error": {"message": "out of KV cache"}}\n\n', "out of KV cache"),
])
def test_a_bad_first_event_is_a_retryable_failure(first: bytes | None, says: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        check_first_event(BASE, first)
    assert caught.value.retryable and caught.value.status == 502
    assert says in caught.value.message


@pytest.mark.parametrize("first", [
    b'data: {"id": "x", "choices": [{"delta": {"content": "hi"}}]}\n\ndata: {"id": "x"',
    b": keep-alive\n\n",
    b'data: {"choices": [{"delta": {}}], "error": null}\n\n',
])
def test_a_good_first_event_passes(first: bytes) -> None:
    check_first_event(BASE, first)
