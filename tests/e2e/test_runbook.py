"""The runbook's §3, unchanged, against `faregate serve` as a process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import httpx
import openai
import pytest
from e2e.conftest import ServedGateway
from support import MASTER_KEY


def test_faregate_validate_passes(serve: ServedGateway) -> None:
    result = subprocess.run([sys.executable, "-m", "faregate", "validate", "--base-url",
                             serve.base_url, "--master-key", MASTER_KEY, "--model",
                             "qwen-local"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("PASS") for line in lines) == 8
    assert "8 passed, 0 failed" in lines


def test_faregate_validate_fails_against_a_wrong_master_key(serve: ServedGateway) -> None:
    result = subprocess.run([sys.executable, "-m", "faregate", "validate", "--base-url",
                             serve.base_url, "--master-key", "sk-wrong-master-key",
                             "--model", "qwen-local"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert "FAIL  mint LOW key" in result.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="the runbook's commands need curl")
def test_runbook_section_3_curl_commands_unchanged(serve: ServedGateway) -> None:
    script = textwrap.dedent("""
        set -eu
        LOW=$(curl -s $BASE/key/generate -H "Authorization: Bearer $MASTER" \\
          -H 'Content-Type: application/json' -d '{"models":["qwen-local"],"max_budget":0.0003}' \\
          | python3 -c 'import sys,json;print(json.load(sys.stdin)["key"])')
        HIGH=$(curl -s $BASE/key/generate -H "Authorization: Bearer $MASTER" \\
          -H 'Content-Type: application/json' -d '{"models":["qwen-local"],"max_budget":5}' \\
          | python3 -c 'import sys,json;print(json.load(sys.stdin)["key"])')
        curl -s $BASE/v1/chat/completions -H "Authorization: Bearer $HIGH" \\
          -H 'Content-Type: application/json' \\
          -d '{"model":"qwen-local","messages":[{"role":"user","content":"ping"}],"max_tokens":16}'
        echo
        for i in $(seq 1 30); do
          curl -s -o /dev/null -w '%{http_code}\\n' $BASE/v1/chat/completions \\
          -H "Authorization: Bearer $LOW" -H 'Content-Type: application/json' \\
          -d '{"model":"qwen-local","messages":[{"role":"user","content":"ping"}],"max_tokens":16}'
        done
        sleep 1
        curl -s $BASE/spend/logs -H "Authorization: Bearer $MASTER"
    """)
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                            env={"BASE": serve.base_url, "MASTER": MASTER_KEY,
                                 "PATH": "/usr/bin:/bin:/usr/local/bin"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert '"chat.completion"' in lines[0]                     # HIGH: a real completion
    codes = lines[1:31]
    assert codes[0] == "200" and codes[-1] == "429"           # LOW throttles on budget
    assert set(codes) == {"200", "429"}
    assert '"spend"' in lines[31]                              # the ledger has the calls
    spend_rows = httpx.get(f"{serve.base_url}/spend/logs",
                           headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()
    assert len(spend_rows) == 1 + codes.count("200")


def test_openai_sdk_streams_through_the_process(serve: ServedGateway) -> None:
    key = httpx.post(f"{serve.base_url}/key/generate", json={"max_budget": 1},
                     headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()["key"]
    with openai.OpenAI(api_key=key, base_url=serve.base_url + "/v1", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model="qwen-local", messages=[{"role": "user", "content": "ping"}], max_tokens=5,
            stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "mock mock mock mock mock"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
        reply = sdk.chat.completions.create(
            model="qwen-local", messages=[{"role": "user", "content": "ping"}], max_tokens=2)
        assert reply.choices[0].message.content == "mock mock"
