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
"$ROOT/scripts/nvidia-wheel.sh" nvidia-cuda-nvrtc-cu12 "$VERSION" "$OUT" nvidia/cuda_nvrtc/lib/libnvrtc.so.12
echo "export LD_LIBRARY_PATH=\"$LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\" BITNET_REQUIRE_NVRTC=1"
