#!/usr/bin/env bash
# One-time set-up for the C API tests (crates/bitnet-ffi/tests/c_api.rs): Debian's gcc (the C
# programs), pkg-config (they are compiled through the installed bitnet.pc) and valgrind (they
# run under it: memory errors and definite leaks fail the test; libc6-dbg gives valgrind the
# loader symbols it redirects).
#
# Idempotent: a re-run is a no-op once the tools are present. Needs root (or sudo).
set -euo pipefail

have_all() {
    command -v gcc >/dev/null && command -v pkg-config >/dev/null && command -v valgrind >/dev/null &&
        dpkg -s libc6-dbg >/dev/null 2>&1
}

if have_all; then
    exit 0
fi

SUDO=
[[ $(id -u) -eq 0 ]] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
echo "setup-capi: apt-get update + install gcc pkg-config valgrind" >&2
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends gcc libc6-dev pkg-config valgrind libc6-dbg >/dev/null

have_all || { echo "setup-capi: gcc, pkg-config or valgrind still missing after install" >&2; exit 1; }
echo "setup-capi: ready ($(valgrind --version))" >&2
