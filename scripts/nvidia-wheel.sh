#!/usr/bin/env bash
# Unpacks one of NVIDIA's CUDA component wheels from PyPI into a git-ignored folder (not
# installed: the GPU-less machines here need a file or two from it), once per version.
#
#   scripts/nvidia-wheel.sh PACKAGE VERSION OUT FILE    # FILE: a path under OUT the wheel must hold
#
# Used by setup-nvrtc.sh (libnvrtc) and kernel-registers.sh (ptxas). Prints nothing on stdout.
set -euo pipefail
[[ $# -eq 4 ]] || { sed -n '5p' "$0" >&2; exit 2; }
PKG="$1" VERSION="$2" OUT="$3" FILE="$4"
if [[ ! -e "$OUT/$FILE" || "$(cat "$OUT/.version" 2>/dev/null)" != "$VERSION" ]]; then
    echo "${PKG}==$VERSION from PyPI" >&2
    rm -rf "$OUT" && mkdir -p "$OUT/download"
    python3 -m pip download --quiet --no-deps --only-binary :all: \
        --platform manylinux2014_x86_64 --python-version 3 \
        -d "$OUT/download" "${PKG}==$VERSION" >&2
    python3 -m zipfile -e "$OUT"/download/"${PKG//-/_}"-*.whl "$OUT"
    rm -rf "$OUT/download"
    [[ -e "$OUT/$FILE" ]] || { echo "nvidia-wheel: no $FILE in ${PKG}==$VERSION" >&2; exit 1; }
    echo "$VERSION" >"$OUT/.version"
fi
