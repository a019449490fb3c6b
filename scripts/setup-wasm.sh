#!/usr/bin/env bash
# One-time set-up for the WebAssembly build and tests (scripts/build-wasm.sh, scripts/test-wasm.sh).
#
# rustup cannot download the wasm32 standard library here, so the build uses Debian's own
# toolchain and builds std itself:
# - rustc-web + cargo-web 1.96 (bookworm-security; /usr/bin), whose LLVM has the WebAssembly
#   backend, and rust-web-src, the standard library's source (with its vendored dependencies) at
#   /usr/lib/rustlib/src/rust, which `cargo -Zbuild-std` compiles for the target (RUSTC_BOOTSTRAP=1
#   unlocks the nightly flag on this stable toolchain);
# - lld-22 for wasm-ld, the WebAssembly linker (rustc-web ships no rust-lld);
# - wasi-libc, the C library the wasm32-wasip1 kernel test binaries link against;
# - wasm-bindgen-cli from crates.io, at exactly the wasm-bindgen version in Cargo.lock (the CLI
#   refuses modules built with any other), into cargo's bin directory;
# - Node >= 20 must already be there (it runs the tests: WASI and the module's JS).
#
# Idempotent: a re-run is a no-op once everything is present. Needs root (or sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(rustc-web cargo-web rust-web-src lld-22 wasi-libc)
WASM_LD=/usr/lib/llvm-22/bin/wasm-ld
BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
[[ -n $BINDGEN_VERSION ]] || { echo "setup-wasm: no wasm-bindgen in Cargo.lock" >&2; exit 1; }
BIN=${CARGO_HOME:-$HOME/.cargo}/bin

have_apt() {
    [[ -x /usr/bin/rustc && -x /usr/bin/cargo && -x $WASM_LD && -e /usr/lib/wasm32-wasi/libc.a ]] \
        && [[ -e /usr/lib/rustlib/src/rust/library/std/Cargo.toml ]]
}
have_bindgen() {
    [[ $("$BIN/wasm-bindgen" --version 2>/dev/null) == "wasm-bindgen $BINDGEN_VERSION" ]]
}

command -v node >/dev/null || { echo "setup-wasm: node (>= 20) is needed to run the tests" >&2; exit 1; }
node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' \
    || { echo "setup-wasm: node $(node --version) is too old (>= 20 needed)" >&2; exit 1; }

if ! have_apt; then
    SUDO=
    [[ $(id -u) -eq 0 ]] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    echo "setup-wasm: apt-get update + install ${PKGS[*]}" >&2
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
    have_apt || { echo "setup-wasm: toolchain still incomplete after install" >&2; exit 1; }
fi

if ! have_bindgen; then
    # Not --locked: the CLI's own lock names a webpki-roots release the registry does not serve.
    echo "setup-wasm: cargo install wasm-bindgen-cli $BINDGEN_VERSION (a few minutes)" >&2
    cargo install --quiet wasm-bindgen-cli --version "$BINDGEN_VERSION"
    have_bindgen || { echo "setup-wasm: wasm-bindgen $BINDGEN_VERSION not installed" >&2; exit 1; }
fi
echo "setup-wasm: ready ($(/usr/bin/rustc -V), $("$BIN/wasm-bindgen" --version), node $(node --version))" >&2
