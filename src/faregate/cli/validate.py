"""`faregate validate`: the runbook's §3 against any gateway (faregate or LiteLLM), step by step.

Mint a low- and a high-budget key, get a real completion with the high one, drive the low one
past its budget, and find the spend in the ledger. Prints PASS/FAIL per step; exit code 0 only
if every step passes. Uses only the standard library so it runs anywhere.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

LOW_BUDGET = 0.0002
HIGH_BUDGET = 5.0
MAX_LOW_CALLS = 200


class StepFailed(Exception):
    pass


def _http(method: str, url: str, key: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def run(base_url: str, master_key: str, model: str) -> int:
    base = base_url.rstrip("/")
    state: dict[str, Any] = {}

    def ready() -> str:
        status, body = _http("GET", f"{base}/health/readiness", master_key)
        if status != 200:
            raise StepFailed(f"readiness answered {status}: {body}")
        return f"db {body.get('db')}" if isinstance(body, dict) else "ok"

    def mint(name: str, budget: float) -> Callable[[], str]:
        def step() -> str:
            status, body = _http("POST", f"{base}/key/generate", master_key,
                                 {"models": [model], "max_budget": budget})
            if status != 200 or not str(body.get("key", "")).startswith("sk-"):
                raise StepFailed(f"/key/generate answered {status}: {body}")
            state[name] = body["key"]
            return f"{body['key'][:6]}... with max_budget ${budget}"
        return step

    def completion() -> str:
        status, body = _http("POST", f"{base}/v1/chat/completions", state["high"], {
            "model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 16})
        if status != 200 or not body.get("choices"):
            raise StepFailed(f"completion answered {status}: {body}")
        return f"{body.get('usage', {}).get('total_tokens')} tokens"

    def throttle() -> str:
        for call in range(1, MAX_LOW_CALLS + 1):
            status, body = _http("POST", f"{base}/v1/chat/completions", state["low"], {
                "model": model, "messages": [{"role": "user", "content": "ping"}],
                "max_tokens": 16})
            if status in (400, 429):
                message = str(body.get("error", {}).get("message", "")) \
                    if isinstance(body, dict) else str(body)
                if "budget" not in message.lower():
                    raise StepFailed(f"call {call} failed with {status} but not on budget: "
                                     f"{message}")
                return f"call {call} refused with HTTP {status}: {message[:60]}..."
            if status != 200:
                raise StepFailed(f"call {call} answered {status}: {body}")
            time.sleep(0.05)   # LiteLLM's spend lags; give it the chance the runbook gives it
        raise StepFailed(f"{MAX_LOW_CALLS} calls on a ${LOW_BUDGET} key were never refused")

    def ledger() -> str:
        deadline = time.monotonic() + 20
        while True:
            status, rows = _http("GET", f"{base}/spend/logs", master_key)
            if status != 200 or not isinstance(rows, list):
                raise StepFailed(f"/spend/logs answered {status}: {rows}")
            spent = sum(float(r.get("spend") or 0) for r in rows)
            if rows and spent > 0:
                return f"{len(rows)} rows, ${spent:.6f}"
            if time.monotonic() > deadline:
                raise StepFailed("no spend recorded within 20 s")
            time.sleep(0.5)

    def low_within_budget() -> str:
        status, body = _http("GET", f"{base}/key/info?key={state['low']}", master_key)
        spend = body.get("info", {}).get("spend") if isinstance(body, dict) else None
        if status != 200 or spend is None:
            raise StepFailed(f"/key/info answered {status}: {body}")
        if spend > LOW_BUDGET + 1e-12:
            raise StepFailed(f"the low key spent ${spend} of a ${LOW_BUDGET} budget")
        return f"spent ${spend:.6f} of ${LOW_BUDGET}"

    def cleanup() -> str:
        keys = [state[k] for k in ("low", "high") if k in state]
        status, body = _http("POST", f"{base}/key/delete", master_key, {"keys": keys})
        if status != 200:
            raise StepFailed(f"/key/delete answered {status}: {body}")
        return f"deleted {len(keys)} keys"

    steps: list[tuple[str, Callable[[], str]]] = [
        ("gateway is ready", ready),
        ("mint LOW key", mint("low", LOW_BUDGET)),
        ("mint HIGH key", mint("high", HIGH_BUDGET)),
        ("HIGH key gets a completion", completion),
        ("LOW key throttles on budget", throttle),
        ("spend is recorded in /spend/logs", ledger),
        ("LOW key spend stayed within its budget", low_within_budget),
        ("delete the keys", cleanup),
    ]
    failures = 0
    for name, step in steps:
        try:
            detail = step()
            print(f"PASS  {name}: {detail}", flush=True)
        except (StepFailed, KeyError, OSError, AttributeError, ValueError) as exc:
            failures += 1
            print(f"FAIL  {name}: {exc}", flush=True)
    print(f"{len(steps) - failures} passed, {failures} failed")
    return 0 if failures == 0 else 1
