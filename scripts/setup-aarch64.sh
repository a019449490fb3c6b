#!/usr/bin/env bash
# One-time set-up for cross-testing on aarch64 under qemu-user (used by scripts/test-aarch64.sh).
#
# rustup cannot fetch the aarch64 std here, so the cross build uses Debian's own toolchain instead:
# rustc-web + cargo-web 1.96 from bookworm-security, whose standard library is packaged per
# architecture (libstd-rust-web-dev is Multi-Arch: same). Installing libstd-rust-web-dev:arm64 puts
# the aarch64-unknown-linux-gnu rlibs in /usr/lib/rustlib, i.e. in /usr/bin/rustc's own sysroot.
# The rlibs must match that rustc exactly (apt pins both to the same version); rustup's 1.95 host
# toolchain can't use them. Also: the aarch64 GNU linker/libc and qemu-aarch64 to run the tests.
#
# Idempotent: re-runs are a no-op once the stamp exists and the tools are present. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

STAMP=target/aarch64/.setup-stamp
PKGS=(rustc-web cargo-web rust-web-clippy libstd-rust-web-dev:arm64 libc6:arm64 qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross)

have_all() {
    [[ -x /usr/bin/rustc && -x /usr/bin/cargo && -x /usr/bin/cargo-clippy && -x /usr/bin/qemu-aarch64 ]] \
        && command -v aarch64-linux-gnu-gcc >/dev/null && [[ -e /lib/ld-linux-aarch64.so.1 ]] \
        && compgen -G '/usr/lib/rustlib/aarch64-unknown-linux-gnu/lib/libstd-*.rlib' >/dev/null
}

if [[ -f $STAMP ]] && have_all; then
    exit 0
fi

SUDO=
[[ $(id -u) -eq 0 ]] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
fi
echo "setup-aarch64: apt-get update + install ${PKGS[*]}" >&2
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null

have_all || { echo "setup-aarch64: tools still missing after install" >&2; exit 1; }
/usr/bin/rustc --print sysroot >/dev/null
mkdir -p "$(dirname "$STAMP")"
{ /usr/bin/rustc -V; /usr/bin/qemu-aarch64 --version | head -1; } > "$STAMP"
echo "setup-aarch64: ready ($(head -1 "$STAMP"))" >&2
