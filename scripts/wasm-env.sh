# Sourced by scripts/build-wasm.sh and scripts/test-wasm.sh: Debian's rustc-web/cargo-web with
# std built from source for the wasm32 targets (see scripts/setup-wasm.sh), in target/wasm32 so
# the host build in target/ is never invalidated.
export PATH=/usr/bin:/bin:$PATH
unset RUSTUP_TOOLCHAIN RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER RUSTFLAGS
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
# -Zbuild-std on the stable 1.96 toolchain.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=target/wasm32
export CARGO_TERM_COLOR=never
BUILD_STD=(-Zbuild-std=std,panic_abort)
WASM_LD=/usr/lib/llvm-22/bin/wasm-ld
# The browser/Node module. SIMD128: every current browser and Node >= 16.
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=$WASM_LD
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+simd128"
# The kernel tests, as WASI command programs: Debian's wasi-libc (not the self-contained one a
# rustup target would bring) with its start file, and the pthread functions it lacks left as
# imports that scripts/wasi-run.mjs provides.
export CARGO_TARGET_WASM32_WASIP1_LINKER=$WASM_LD
export CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-C target-feature=+simd128 -C link-self-contained=no \
-L /usr/lib/wasm32-wasi -C link-arg=/usr/lib/wasm32-wasi/crt1-command.o -C link-arg=--allow-undefined"
export CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $PWD/scripts/wasi-run.mjs"
