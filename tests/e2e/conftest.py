"""Real processes: `faregate serve` against the mock upstream, over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import MASTER_KEY, env_for, free_port, stop, wait_for_port, write_config


@dataclass
class ServedGateway:
    proc: subprocess.Popen
    base_url: str
    env: dict[str, str]
    log: Path

    def output(self) -> str:
        return self.log.read_text()


def start_gateway(tmp_path: Path, env: dict[str, str], args: list[str],
                  cwd: Path | None = None) -> ServedGateway:
    port = free_port()
    log = tmp_path / f"gateway-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "faregate", "serve", "--host",
                                 "127.0.0.1", "--port", str(port), *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        wait_for_port(port, proc=proc)
    except Exception:
        stop(proc)
        raise RuntimeError(f"gateway did not start:\n{log.read_text()}") from None
    return ServedGateway(proc, f"http://127.0.0.1:{port}", env, log)


@pytest.fixture
def serve(db_url: str, mock_upstream: str, tmp_path: Path) -> Iterator[ServedGateway]:
    """`faregate serve --config config.yaml` on each database backend."""
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    env = {**os.environ, **env_for(db_url, tmp_path)}
    gateway = start_gateway(tmp_path, env, ["--config", str(cfg)])
    yield gateway
    stop(gateway.proc)


__all__ = ["MASTER_KEY", "ServedGateway", "start_gateway"]
