#!/usr/bin/env bash
# Builds the browser/Node module (crates/bitnet-wasm) and the page around it:
#   target/wasm32/pkg/    bitnet_wasm.js + bitnet_wasm_bg.wasm (wasm-bindgen --target web)
#   target/wasm32/site/   crates/bitnet-wasm/www + pkg/ + the default model: serve it as is,
#                         e.g. python3 -m http.server -d target/wasm32/site
# Needs scripts/setup-wasm.sh (run here first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-wasm.sh
source scripts/wasm-env.sh

/usr/bin/cargo build --locked --release --target wasm32-unknown-unknown "${BUILD_STD[@]}" -p bitnet-wasm
"${CARGO_HOME:-$HOME/.cargo}/bin/wasm-bindgen" --target web --out-dir target/wasm32/pkg \
    target/wasm32/wasm32-unknown-unknown/release/bitnet_wasm.wasm

site=target/wasm32/site
rm -rf "$site"
mkdir -p "$site"
cp -r crates/bitnet-wasm/www/. "$site/"
cp -r target/wasm32/pkg "$site/pkg"
cp models/bitnet-b1.58-kjv-i2_s.gguf "$site/"
echo "build-wasm: $(du -h target/wasm32/pkg/bitnet_wasm_bg.wasm | cut -f1) module; page in $site" >&2
