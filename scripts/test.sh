#!/usr/bin/env bash
# Everything CI checks, from a fresh clone: formatting, lints, and all tests, including the
# cross-checks against transformers and llama.cpp, whose set-up this script performs
# (scripts/make-fixtures.sh: a Python venv from PyPI, llama.cpp from the llama-cpp-python sdist).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "rustfmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "reference fixtures: transformers tiny models, llama.cpp build and its logits"
LLAMACPP=1 scripts/make-fixtures.sh

step "C API test tools: gcc, pkg-config, valgrind (crates/bitnet-ffi/tests/c_api.rs)"
scripts/setup-capi.sh

step "NVRTC from PyPI: the CUDA kernels compile-checked without a GPU (scripts/setup-nvrtc.sh)"
eval "$(scripts/setup-nvrtc.sh)"

step "cargo test (kernels, formats, shared reference model, transformers, llama.cpp, bad input, C API under valgrind)"
cargo test --workspace --locked -- --include-ignored

step "cargo install, then bitnet run from elsewhere: the built-in default model (scripts/test-installed.sh)"
scripts/test-installed.sh

step "OpenAI Python client against bitnet serve (tests/server-py)"
# On the binary `cargo test` just built for bitnet-cli's tests (a separate `cargo build` would
# resolve features without dev-dependencies and rebuild half the tree). pytest's exit code 5
# (no tests collected) is non-zero, so it fails this step like any failure.
test -x target/debug/bitnet
BITNET_BIN=target/debug/bitnet .venv/bin/python -m pytest -q -p no:cacheprovider tests/server-py

step "Python bindings: abi3 wheel built into .venv (scripts/build-py.sh), pytest crates/bitnet-py/tests"
# Reference outputs, transformers in-process, the CLI's greedy/sampled text (the binary
# `cargo test` built), bad input; see crates/bitnet-py/tests/conftest.py.
scripts/build-py.sh
BITNET_BIN=target/debug/bitnet .venv/bin/python -m pytest -q -p no:cacheprovider crates/bitnet-py/tests

step "serving load generator: offline self-test of its HTTP/SSE parsing and statistics"
python3 scripts/loadgen.py --self-test

step "GPU side-by-side script offline: its table parsers, and the line it prints for a missing engine"
python3 scripts/bench_cuda_table.py --self-test
ENGINES=ik-cuda IK_OUT=target/no-ik-build BITNET=target/debug/bitnet BENCH_DIR=target/bench-cuda-selftest \
    bash scripts/bench-cuda.sh | grep "^not in the table: ik-cuda: no ik_llama.cpp build" >/dev/null

step "chat page in headless Chromium (tests/web-py/test_chat_page.py; screenshot: target/web-chat.png)"
scripts/setup-browser.sh
BITNET_BIN=target/debug/bitnet .venv/bin/python -m pytest -q -p no:cacheprovider tests/web-py/test_chat_page.py

step "nginx in front of two replicas, one stopped under load; deploy/ files checked (tests/web-py)"
scripts/setup-nginx.sh
BITNET_BIN=target/debug/bitnet .venv/bin/python -m pytest -q -p no:cacheprovider \
    tests/web-py/test_nginx.py tests/web-py/test_deploy_files.py

step "aarch64: kernel and codec tests cross-built and run under qemu-user (scalar, NEON, NEON + dotprod)"
scripts/test-aarch64.sh

step "WebAssembly: SIMD128 kernel tests under Node WASI, the module in Node, the page in Chromium (scripts/test-wasm.sh)"
scripts/test-wasm.sh

step "done"
