"""An api_base may carry credentials (user:password@, ?key=): no error, log line, health
report or ledger row shows them."""

from __future__ import annotations

import dataclasses

import pytest
from support import free_port

from faregate.config import Deployment, without_credentials
from faregate.errors import UpstreamError
from faregate.providers.base import pooled_session
from faregate.providers.openai_compat import OpenAICompatible


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:hunter2@10.0.0.1:8000/v1?api_key=abc", "http://10.0.0.1:8000/v1"),
    ("https://token@example.com/v1", "https://example.com/v1"),
    ("http://[::1]:9/v1", "http://[::1]:9/v1"),
    ("http://plain:80/v1", "http://plain:80/v1"),
    ("http://bad:port/v1", "(unparseable)"),
])
def test_without_credentials(url: str, shown: str) -> None:
    assert without_credentials(url) == shown


async def test_a_refused_connection_names_the_upstream_without_its_credentials() -> None:
    d = Deployment(model_name="m", provider="openai", upstream_model="m",
                   api_base=f"http://user:hunter2@127.0.0.1:{free_port()}/v1?key=s3cret",
                   api_key=None, input_femtos=1, output_femtos=1, max_output_tokens=10,
                   prompt_overhead_tokens=0, per_message_overhead_tokens=0, timeout_s=5)
    client = OpenAICompatible()
    client.use(session := pooled_session())
    try:
        with pytest.raises(UpstreamError) as caught:
            await client.send(d, "/chat/completions", b"{}")
    finally:
        await session.close()
    message = caught.value.body().decode()
    assert "127.0.0.1" in message and "hunter2" not in message and "s3cret" not in message
    assert d.shown_base == dataclasses.replace(d).shown_base     # cached per instance
