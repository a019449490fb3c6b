#!/usr/bin/env bash
# Registers, stack and spills of every CUDA kernel, without a GPU: the kernels are compiled to
# PTX by NVRTC with the options of crates/bitnet-cuda/src/compile.rs (libnvrtc from
# scripts/setup-nvrtc.sh), then assembled by ptxas from NVIDIA's nvidia-cuda-nvcc-cu12 wheel
# (PyPI; unpacked, not installed). A kernel launched with 1,024 threads gets at most 64
# registers, and a spill in a decode kernel's inner loop is a memory round trip per use, so
# this is worth a look after a kernel change. The driver on the GPU machine assembles the PTX
# itself (its own ptxas version), so its counts can differ by a few registers.
#
#   scripts/kernel-registers.sh [sm_90]        # one line per kernel
#
# Output (git-ignored): third_party/build-ptxas/. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SM="${1:-sm_90}"
[[ "$SM" =~ ^sm_[0-9]+a?$ ]] || { echo "kernel-registers: '$SM' is not sm_NN" >&2; exit 2; }
eval "$("$ROOT/scripts/setup-nvrtc.sh")"
# ptxas of the same CUDA release as the NVRTC that setup-nvrtc.sh unpacked.
VERSION="$(cat "$ROOT/third_party/build-nvrtc/.version")"
OUT="$ROOT/third_party/build-ptxas"
PTXAS="$OUT/nvidia/cuda_nvcc/bin/ptxas"
"$ROOT/scripts/nvidia-wheel.sh" nvidia-cuda-nvcc-cu12 "$VERSION" "$OUT" nvidia/cuda_nvcc/bin/ptxas
chmod +x "$PTXAS"
K="$ROOT/crates/bitnet-cuda/kernels"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
for src in ternary forward; do
    # NVRTC through ctypes: the same source (common.cuh first) and options as compile.rs.
    python3 - "$K" "$src" "$WORK/$src.ptx" "compute_${SM#sm_}" <<'EOF'
import ctypes, sys
kernels, name, out, arch = sys.argv[1:]
lib = ctypes.CDLL("libnvrtc.so.12")
src = open(f"{kernels}/common.cuh").read() + open(f"{kernels}/{name}.cu").read()
opts = [f"--gpu-architecture={arch.rstrip('a')}", "--std=c++17", "-default-device"]
prog = ctypes.c_void_p()
if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), f"{name}.cu".encode(), 0, None, None):
    sys.exit("nvrtcCreateProgram failed")
rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts]))
n = ctypes.c_size_t()
if rc:
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    sys.exit(f"{name}.cu:\n{log.value.decode()}")
lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
ptx = ctypes.create_string_buffer(n.value)
lib.nvrtcGetPTX(prog, ptx)
open(out, "w").write(ptx.value.decode())
EOF
    "$PTXAS" -v --gpu-name "$SM" "$WORK/$src.ptx" -o "$WORK/$src.cubin" 2>&1 |
        awk -v src="$src.cu" '
            /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); k = substr($0, RSTART + 1, RLENGTH - 2) }
            /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
            /Used [0-9]+ registers/ {
                match($0, /Used [0-9]+ registers/); r = substr($0, RSTART + 5, RLENGTH - 15)
                printf "%-12s %-28s %4d registers  stack %4d  spill stores %4d  loads %4d\n", src, k, r, stack, st, ld
            }'
done
