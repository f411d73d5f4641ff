"""Peers measured in the same run: LiteLLM's proxy, the gateway faregate replaces.

`python -m bench --peer litellm` installs `litellm[proxy]` from PyPI on first use into its own
virtual environment outside the repository (`$FAREGATE_WHEEL_CACHE/../litellm-venv`, by default
~/.cache/faregate/litellm-venv), never at test time, and runs its proxy in its cheapest
configuration: no database, the master key only, the same mock upstream and model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from bench.run_support import free_port, process

LITELLM_SPEC = "litellm[proxy]"


def litellm_venv() -> Path:
    wheels = Path(os.environ.get("FAREGATE_WHEEL_CACHE",
                                 Path.home() / ".cache" / "faregate" / "wheels"))
    return wheels.parent / "litellm-venv"


def ensure_litellm() -> Path:
    """The `litellm` command of the peer's virtual environment, installed if missing."""
    venv = litellm_venv()
    command = venv / "bin" / "litellm"
    if command.exists():
        return command
    print(f"bench: installing {LITELLM_SPEC} into {venv} (once; a few minutes)", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", LITELLM_SPEC],
                   check=True)
    if not command.exists():
        raise RuntimeError(f"{LITELLM_SPEC} installed no `litellm` command in {venv}")
    return command


def litellm_version(command: Path) -> str:
    out = subprocess.run([str(command.parent / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "?"


@contextmanager
def litellm_proxy(command: Path, mock_port: int, master_key: str, tmp: Path,
                  env: dict[str, str]) -> Iterator[tuple[int, int]]:
    """LiteLLM's proxy on the mock: (port, pid). No DATABASE_URL: its cheapest path."""
    cfg = tmp / "litellm.yaml"
    cfg.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "bench-model", "litellm_params": {
            "model": "openai/bench-model", "api_base": f"http://127.0.0.1:{mock_port}/v1",
            "api_key": "sk-mock"}}],
        "general_settings": {"master_key": master_key},
        "litellm_settings": {"telemetry": False, "drop_params": True}}))
    port = free_port()
    peer_env = {k: v for k, v in env.items()
                if k not in ("DATABASE_URL", "REDIS_URL", "FAREGATE_MASTER_KEY")}
    # Its bundled cost map, not a download at start-up; no telemetry, quiet logs.
    peer_env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR",
                    LITELLM_TELEMETRY="False")
    args = [str(command), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]
    with process(args, peer_env, f"http://127.0.0.1:{port}/health/liveliness",
                 timeout_s=180) as pid:
        yield port, pid
