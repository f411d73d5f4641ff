"""Both kinds of relayed stream keep a checkpoint while open (spend/checkpoints.py): an OpenAI
chat stream and a /v1/messages stream passed through to an Anthropic model. What a crash does
with the file is tests/faults/test_streams_at_crash.py's; here, what the relay writes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from api.conftest import RunningGateway, serve
from support import MASTER_KEY, env_for, free_port, stop, wait_for_port, write_config

from faregate import config
from faregate.app import Faregate

ANTHROPIC_KEY = "ak-test-anthropic-checkpoints"
PRICES = {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}


@pytest.fixture(scope="module")
def mock_anthropic() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "faregate", "mock-anthropic", "--port",
                             str(port), "--api-key", ANTHROPIC_KEY], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture
async def gateway(db_url: str, mock_upstream: str, mock_anthropic: str, tmp_path: Path
                  ) -> AsyncIterator[RunningGateway]:
    cfg = write_config(tmp_path / "config.yaml", mock_upstream, extra_models=[
        {"model_name": "slow", "litellm_params": {
            "model": "openai/slow-20", "api_base": mock_upstream, **PRICES}},
        {"model_name": "claude-haiku", "litellm_params": {
            "model": "anthropic/claude-3-5-haiku-20241022", "api_base": mock_anthropic,
            "api_key": ANTHROPIC_KEY, **PRICES}}])
    settings = config.load({**os.environ, **env_for(db_url, tmp_path)}, cfg)
    async with serve(Faregate.from_settings(settings)) as running:
        yield running


def records(gw: RunningGateway) -> list[list[Any]]:
    (path,) = gw.app.settings.spend_buffer_dir.glob("*.streams")
    # The file is mapped: the room after its last record is zeros.
    return [orjson.loads(line) for line in path.read_bytes().rstrip(b"\0").splitlines()]


async def test_an_open_chat_stream_is_checkpointed_and_closed_after_its_row(
        gateway: RunningGateway) -> None:
    key = await gateway.new_key(models=[])
    body = {"model": "slow", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "count slowly"}]}
    async with gateway.http.stream("POST", "/v1/chat/completions", json=body,
                                   headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status_code == 200
        request_id = resp.headers["x-request-id"]
        seen, lines = 0, resp.aiter_lines()
        async for line in lines:
            seen += line.startswith("data: {")
            if seen == 5:
                break
        # Open: charged its prompt (at its bound) and what it has delivered, if cut now.
        (checkpoint,) = [r for r in records(gateway) if r[1] == request_id]
        assert checkpoint[0] == "open" and checkpoint[12] == "interrupted"   # status; payers after
        assert checkpoint[7] > 0 and 1 <= checkpoint[8] <= seen      # prompt, chunks
        assert gateway.app.checkpoints.open_streams == 1
        async for _ in lines:
            pass
    await gateway.app.ledger.flush()
    assert records(gateway)[-1] == ["closed", request_id]
    assert gateway.app.checkpoints.open_streams == 0


async def test_a_passed_through_anthropic_stream_is_checkpointed_too(
        gateway: RunningGateway) -> None:
    key = await gateway.new_key(models=[])
    body = {"model": "claude-haiku", "max_tokens": 20, "stream": True,
            "messages": [{"role": "user", "content": "hello there"}]}
    resp = await gateway.http.post("/v1/messages", json=body, headers={"x-api-key": key})
    assert resp.status_code == 200 and b"message_stop" in resp.content
    request_id = resp.headers["x-request-id"]
    mine = [r for r in records(gateway) if r[1] == request_id]
    assert [r[0] for r in mine] == ["open", "closed"]
    assert mine[0][6] == "anthropic_messages" and mine[0][7] > 0   # call type, prompt bound
    assert gateway.app.checkpoints.open_streams == 0
    assert MASTER_KEY not in str(mine)
