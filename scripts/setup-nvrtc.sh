#!/usr/bin/env bash
# NVRTC without a GPU, for the kernel compile check in `cargo test`
# (bitnet-cuda's `kernels_compile_with_nvrtc`): CUDA kernels are compiled at run time, so CI,
# which has no GPU, would otherwise never compile them. NVIDIA's nvidia-cuda-nvrtc-cu12 wheel
# (PyPI) carries libnvrtc.so.12; it is unpacked, not installed.
#
#   eval "$(scripts/setup-nvrtc.sh)"    # exports LD_LIBRARY_PATH and BITNET_REQUIRE_NVRTC=1
#
# Output (git-ignored): third_party/build-nvrtc/. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${NVRTC_VERSION:-12.9.86}"
OUT="$ROOT/third_party/build-nvrtc"
LIB="$OUT/nvidia/cuda_nvrtc/lib"
if [[ ! -e "$LIB/libnvrtc.so.12" || "$(cat "$OUT/.version" 2>/dev/null)" != "$VERSION" ]]; then
    echo "setup-nvrtc: nvidia-cuda-nvrtc-cu12==$VERSION from PyPI" >&2
    rm -rf "$OUT" && mkdir -p "$OUT/download"
    python3 -m pip download --quiet --no-deps --only-binary :all: \
        --platform manylinux2014_x86_64 --python-version 3 \
        -d "$OUT/download" "nvidia-cuda-nvrtc-cu12==$VERSION" >&2
    python3 -m zipfile -e "$OUT"/download/nvidia_cuda_nvrtc_cu12-*.whl "$OUT"
    rm -rf "$OUT/download"
    [[ -e "$LIB/libnvrtc.so.12" ]] || { echo "setup-nvrtc: no libnvrtc.so.12 in the wheel" >&2; exit 1; }
    echo "$VERSION" >"$OUT/.version"
fi
echo "export LD_LIBRARY_PATH=\"$LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\" BITNET_REQUIRE_NVRTC=1"
