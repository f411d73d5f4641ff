"""The Dockerfile. No Docker engine here: its rules are read from the file, and its builder
stage's RUN steps are run as written in a clean virtual environment (slow_install)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import venv
from pathlib import Path

import pytest
from deploy.conftest import ROOT
from support import free_port, stop, wait_for_port

DOCKERFILE = ROOT / "Dockerfile"
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cc|python3-dev|libc6-dev)\b")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), args
    return value


def test_dockerfile_is_multi_stage_slim_non_root_without_compilers() -> None:
    text = DOCKERFILE.read_text()
    builder, final = stages(text)
    args = dict(a.split("=", 1) for w, a in instructions(text) if w == "ARG" and "=" in a)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder")
    assert final[0] == ("FROM", "${PYTHON_IMAGE}")
    # the final stage gets the built environment, not the source, and installs no toolchain
    copies = [a for w, a in final if w == "COPY"]
    assert copies == ["--from=builder /opt/faregate /opt/faregate"]
    for word, arg in final:
        if word == "RUN":
            assert not COMPILERS.search(arg), arg
            assert "pip install" not in arg and "apt-get" not in arg, arg
    user = [a for w, a in final if w == "USER"]
    assert user and user[-1].split(":")[0] not in {"0", "root"}
    assert user[-1].split(":")[0].isdigit()                 # runAsNonRoot can verify a UID
    assert ("EXPOSE", "4000") in final
    assert exec_form(dict(final)["ENTRYPOINT"]) == ["faregate"]
    assert exec_form(dict(final)["CMD"]) == ["serve", "--config", "/etc/faregate/config.yaml",
                                             "--port", "4000"]
    health = dict(final)["HEALTHCHECK"]
    command = exec_form(health.split(" CMD ", 1)[1])
    assert command[0] == "python" and "/health/liveliness" in command[-1]
    assert "curl" not in health and "wget" not in health


def test_dockerignore_keeps_the_context_to_what_the_build_copies() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    builder = stages(DOCKERFILE.read_text())[0]
    copied = {src.rstrip("/") for w, a in builder if w == "COPY"
              for src in a.split()[:-1] if not src.startswith("--")}
    assert copied == allowed == {"pyproject.toml", "README.md", "src"}


def builder_steps() -> tuple[list[str], list[str]]:
    """The builder stage's COPY sources and RUN commands, as written."""
    builder = stages(DOCKERFILE.read_text())[0]
    copied = [src for w, a in builder if w == "COPY" for src in a.split()[:-1]]
    runs = [a for w, a in builder if w == "RUN"]
    return copied, runs


@pytest.mark.slow_install
def test_builder_steps_install_a_working_faregate_into_a_clean_venv(tmp_path: Path) -> None:
    """The builder's RUN lines, run as written with the image paths moved under tmp: the
    wheel builds from the copied files alone, installs with binary-only dependencies from
    PyPI, and the installed `faregate` runs, migrates SQLite and answers the HEALTHCHECK."""
    context = tmp_path / "src-copy"
    context.mkdir()
    copied, runs = builder_steps()
    for name in copied:                                     # COPY: only what the image gets
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, context / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.egg-info", "*.pyc"))
        else:
            shutil.copy2(src, context / name)
    # A clean interpreter environment stands in for the base image's `python`.
    base = tmp_path / "base"
    venv.EnvBuilder(with_pip=True).create(base)
    wheels, prefix = tmp_path / "wheels", tmp_path / "opt-faregate"
    env = {"PATH": f"{base / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for run in runs:
        command = run.replace("/opt/faregate", str(prefix)).replace("/wheels", str(wheels))
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=context,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    assert len(list(wheels.glob("faregate-*.whl"))) == 1
    faregate = prefix / "bin" / "faregate"

    help_out = subprocess.run([str(faregate), "--help"], capture_output=True, text=True,
                              timeout=60)
    assert help_out.returncode == 0 and "migrate" in help_out.stdout

    data = tmp_path / "data"
    data.mkdir()
    run_env = {"PATH": f"{prefix / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
               "FAREGATE_DATA_DIR": str(data), "FAREGATE_MASTER_KEY": "sk-image-test-key",
               "DATABASE_URL": f"sqlite:///{data / 'faregate.db'}"}
    migrated = subprocess.run([str(faregate), "migrate"], env=run_env, capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert "schema is at revision" in migrated.stdout
    assert (data / "faregate.db").stat().st_size > 0

    # The image's default command (config path and port moved), then its HEALTHCHECK.
    final = dict(stages(DOCKERFILE.read_text())[1])
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text("model_list:\n  - model_name: m\n    litellm_params:\n"
                      "      model: openai/m\n      api_base: http://127.0.0.1:9/v1\n"
                      "      input_cost_per_token: 0.000001\n"
                      "      output_cost_per_token: 0.000002\n")
    cmd = [a.replace("/etc/faregate/config.yaml", str(config)).replace("4000", str(port))
           for a in exec_form(final["CMD"])]
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(faregate), *cmd, "--host", "127.0.0.1"],
                                env={**run_env, "DISABLE_SCHEMA_UPDATE": "true"},
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for_port(port, proc=proc)
        check = exec_form(final["HEALTHCHECK"].split(" CMD ", 1)[1])
        check = [str(prefix / "bin" / "python")] + [a.replace("4000", str(port))
                                                     for a in check[1:]]
        assert subprocess.run(check, timeout=30).returncode == 0, log.read_text()
        proc.terminate()
        assert proc.wait(40) == 0, log.read_text()
    finally:
        stop(proc)
    # nothing of the test runner's own environment leaked into the clean install
    assert not any(p.name.startswith("pytest") for p in
                   (prefix / "lib").glob("python3*/site-packages/*"))
