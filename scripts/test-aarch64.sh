#!/usr/bin/env bash
# Build the kernel and quantization tests for aarch64-unknown-linux-gnu and run them under
# qemu-user, so the non-x86 paths (scalar, NEON, NEON + dotprod) are exercised on an x86-64 machine.
# Extra arguments go to the test binaries, e.g. scripts/test-aarch64.sh -- --include-ignored
#
# qemu-user is weaker than the Arm memory model in one place that matters here: on an x86 host it
# lets an `stlr` (a SeqCst store) pass a later `ldar` (a SeqCst load), so a store-then-load
# handshake must use a read-modify-write (a locked host instruction) to hold under these tests;
# see bitnet-kernels' pool.rs, whose loop opening and closing are swaps for that reason.
#
# Uses Debian's rustc-web/cargo-web (/usr/bin), not rustup: see scripts/setup-aarch64.sh.
# Output goes to target/aarch64 so it never invalidates the host build in target/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-aarch64.sh

# Debian's toolchain first, so neither cargo nor rustc resolves to a rustup proxy.
export PATH=/usr/bin:/bin:$PATH
unset RUSTUP_TOOLCHAIN RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_DIR=target/aarch64
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# Run against the multiarch libc6:arm64 in /lib (qemu's default root), NOT the cross sysroot: with
# "-L /usr/aarch64-linux-gnu" (libc6-arm64-cross 2.36-8cross1) every pthread_create spins forever
# under bookworm's qemu 7.2, even in a plain C program; /lib's libc6:arm64 2.36-9+deb12u14 works.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
unset QEMU_LD_PREFIX
export CARGO_TERM_COLOR=never

# The NEON code only compiles for aarch64, so this is where clippy sees it.
/usr/bin/cargo clippy --locked --target aarch64-unknown-linux-gnu --all-targets \
    -p bitnet-kernels -p bitnet-quantization -- -D warnings
/usr/bin/cargo test --locked --target aarch64-unknown-linux-gnu \
    -p bitnet-kernels -p bitnet-quantization "$@"
