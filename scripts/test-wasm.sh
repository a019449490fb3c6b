#!/usr/bin/env bash
# The WebAssembly checks (scripts/test.sh runs this; it also works alone):
# 1. clippy on the wasm32 code (the SIMD128 kernels and the bindings' wasm32 parts only compile
#    there);
# 2. the kernel tests built for wasm32-wasip1 with +simd128 and run under Node's WASI
#    (scripts/wasi-run.mjs): every test compares the SIMD128 kernels with the scalar reference;
# 3. the browser module (scripts/build-wasm.sh) through its JS API in Node: the shared greedy
#    reference token for token, streaming, cancelling, bad input (tests/wasm-js);
# 4. the page in headless Chromium (tests/web-py/test_wasm_page.py; screenshot:
#    target/wasm-page.png). Needs .venv (scripts/setup-python.sh) for pytest; skipped with
#    WASM_NO_BROWSER=1.
# Extra arguments go to the kernel test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-wasm.sh
source scripts/wasm-env.sh

step() { printf '\n--- wasm: %s (%s)\n' "$1" "$(date +%T)"; }

step "clippy (SIMD128 kernels and their tests on wasm32-wasip1; the bindings on wasm32-unknown-unknown)"
# Tests only on wasip1: on wasm32-unknown-unknown proptest's getrandom has no random source.
/usr/bin/cargo clippy --locked --target wasm32-wasip1 -Zbuild-std=std,panic_abort,test --all-targets \
    -p bitnet-kernels -- -D warnings
/usr/bin/cargo clippy --locked --target wasm32-unknown-unknown "${BUILD_STD[@]}" \
    -p bitnet-kernels -p bitnet-wasm -- -D warnings

step "kernel tests on wasm32-wasip1 + simd128 under Node WASI"
/usr/bin/cargo test --locked --target wasm32-wasip1 -Zbuild-std=std,panic_abort,test \
    -p bitnet-kernels "$@"

step "module build (wasm32-unknown-unknown, wasm-bindgen --target web)"
scripts/build-wasm.sh

step "the module in Node (tests/wasm-js)"
node --test tests/wasm-js/

if [[ ${WASM_NO_BROWSER:-0} != 1 ]]; then
    step "the page in headless Chromium (tests/web-py/test_wasm_page.py)"
    scripts/setup-browser.sh
    .venv/bin/python -m pytest -q -p no:cacheprovider tests/web-py/test_wasm_page.py
fi
