#!/usr/bin/env bash
# Installs the C API under a prefix: include/bitnet.h, lib/libbitnet_ffi.so.N (N = the ABI
# version, the library's SONAME) with its libbitnet_ffi.so link, lib/libbitnet_ffi.a, and
# lib/pkgconfig/bitnet.pc. Then: cc prog.c $(PKG_CONFIG_PATH=PREFIX/lib/pkgconfig pkg-config --cflags --libs bitnet)
#
#   scripts/install-capi.sh PREFIX [BUILD_DIR]
#
# BUILD_DIR holds an already built libbitnet_ffi.so and .a (the tests pass cargo's test build);
# without it the release build is made first (cargo build --release -p bitnet-ffi).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[[ $# -ge 1 && $# -le 2 ]] || { echo "usage: $0 PREFIX [BUILD_DIR]" >&2; exit 2; }
prefix=$(mkdir -p "$1" && cd "$1" && pwd)
build=${2:-}
if [[ -z $build ]]; then
    cargo build --release --locked -p bitnet-ffi --manifest-path "$root/Cargo.toml"
    build=$root/target/release
fi
for f in libbitnet_ffi.so libbitnet_ffi.a; do
    [[ -f $build/$f ]] || { echo "install-capi: $build/$f not found" >&2; exit 1; }
done
abi=$(sed -n 's/^pub const BITNET_API_VERSION: u32 = \([0-9][0-9]*\);$/\1/p' "$root/crates/bitnet-ffi/src/abi.rs")
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml")
[[ -n $abi && -n $version ]] || { echo "install-capi: cannot read the ABI or package version" >&2; exit 1; }

install -d "$prefix/include" "$prefix/lib/pkgconfig"
install -m 644 "$root/crates/bitnet-ffi/include/bitnet.h" "$prefix/include/bitnet.h"
install -m 755 "$build/libbitnet_ffi.so" "$prefix/lib/libbitnet_ffi.so.$abi"
ln -sfn "libbitnet_ffi.so.$abi" "$prefix/lib/libbitnet_ffi.so"
install -m 644 "$build/libbitnet_ffi.a" "$prefix/lib/libbitnet_ffi.a"
# The archive carries the debug info of the whole Rust dependency tree (hundreds of MB in a
# debug build); programs linked against it need none of it.
if command -v strip >/dev/null; then
    strip --strip-debug "$prefix/lib/libbitnet_ffi.a"
fi
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" \
    "$root/crates/bitnet-ffi/bitnet.pc.in" > "$prefix/lib/pkgconfig/bitnet.pc"
echo "install-capi: C API $version (ABI $abi) installed under $prefix" >&2
