#!/usr/bin/env bash
# Build the ik_llama.cpp that the ik-llama-cpp-python sdist on PyPI vendors: its llama-server
# (the serving benchmark's second reference, scripts/bench-serve.sh), llama-quantize (ik_llama.cpp
# reads no TQ2_0: it gets its own IQ2_BN copy of the same ternary weights, quantized from our
# I2_S file) and llama-bench.
#
#   scripts/build-ik-llama-cpp.sh          # CPU, GGML_NATIVE=ON (tuned for this machine), OpenMP
#   IK_PORTABLE=1 scripts/build-ik-llama-cpp.sh
#                                          # GGML_NATIVE=OFF + explicit AVX2/AVX-512 flags, to
#                                          # build on one host and run on another
#   IK_CUDA=1 scripts/build-ik-llama-cpp.sh
#                                          # + GGML_CUDA=ON (needs nvcc; on a GPU machine);
#                                          # IK_CUDA_ARCH=90 picks the CUDA architectures
#   IK_OUT=third_party/build-ik-avx512 IK_PORTABLE=1 ...
#                                          # a second build beside the default one
#   IK_TARGETS="llama-bench llama-quantize" ...
#                                          # only these targets (the GPU benchmark needs no
#                                          # server: minutes less of compiling)
#   IK_SOURCE=PATH ...                     # no download: the sdist, a tarball (.tar.gz/.tar.xz)
#                                          # whose top folder is ik_llama.cpp/, or that folder
#                                          # itself (for machines without network; docs/cuda.md
#                                          # shows how to repack the sdist small enough to carry)
#
# Output (git-ignored): third_party/build-ik/ (or $IK_OUT)
#   ik_llama.cpp/           the vendored source (from ik_llama_cpp_python-$VERSION.tar.gz)
#   ik_llama.cpp-build/bin/ llama-server, llama-quantize, llama-bench (static: no .so to carry)
#   env.sh                  exports IK_LLAMA_CPP_DIR / IK_LLAMA_CPP_BIN
# Idempotent: a stamp keyed on the version and the options makes a re-run take well under a
# second. Nothing here is committed; no ik_llama.cpp code or binary is.
#
# The sdist (ik-llama-cpp-python 0.1.5, 42 MB) vendors the whole ik_llama.cpp tree under
# vendor/ik_llama.cpp but not its git metadata, so the upstream commit is not known; the
# package version is what pins it.
set -euo pipefail

IK_LLAMA_CPP_PYTHON_VERSION="${IK_LLAMA_CPP_PYTHON_VERSION:-0.1.5}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${IK_OUT:-$ROOT/third_party/build-ik}"
[[ "$OUT" == /* ]] || OUT="$ROOT/$OUT"
SRC="$OUT/ik_llama.cpp"
BUILD="$OUT/ik_llama.cpp-build"
JOBS="${JOBS:-$(nproc)}"
PORTABLE="${IK_PORTABLE:-0}"
CUDA="${IK_CUDA:-0}"
IK_SOURCE="${IK_SOURCE:-}"
if [[ -n "$IK_SOURCE" ]]; then
    [[ -e "$IK_SOURCE" ]] || { echo "IK_SOURCE=$IK_SOURCE does not exist" >&2; exit 1; }
    IK_SOURCE="$(cd "$(dirname "$IK_SOURCE")" && pwd)/$(basename "$IK_SOURCE")"
fi

log() { echo "[build-ik-llama-cpp +${SECONDS}s] $*" >&2; }

if [[ "$PORTABLE" == "1" ]]; then
    # Zen4 / Sapphire Rapids class; override with IK_ARCH_FLAGS="..." for other hosts.
    ARCH_FLAGS="${IK_ARCH_FLAGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON}"
else
    ARCH_FLAGS="-DGGML_NATIVE=ON"
fi

# shellcheck disable=SC2206
TARGETS=(${IK_TARGETS:-llama-server llama-quantize llama-bench})
CMAKE_FLAGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_OPENMP=ON
    -DLLAMA_CURL=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=ON
    -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_SERVER_SSL=OFF
    # Flash-attention kernels for every quantized KV type: many minutes of compiling for
    # caches the benchmark does not use (it runs the default f16 KV cache).
    -DGGML_IQK_FA_ALL_QUANTS=OFF
)
if [[ "$CUDA" == "1" ]]; then
    # CUDA images often keep nvcc out of PATH; CMake's CUDA detection needs it there
    if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
        export PATH="/usr/local/cuda/bin:$PATH"
    fi
    command -v nvcc >/dev/null 2>&1 || { log "IK_CUDA=1 needs nvcc (CUDA toolkit) on PATH"; exit 1; }
    CMAKE_FLAGS+=(-DGGML_CUDA=ON)
    [[ -n "${IK_CUDA_ARCH:-}" ]] && CMAKE_FLAGS+=(-DCMAKE_CUDA_ARCHITECTURES="$IK_CUDA_ARCH")
fi
# shellcheck disable=SC2206
CMAKE_FLAGS+=($ARCH_FLAGS)

KEY="ik-llama-cpp-python=$IK_LLAMA_CPP_PYTHON_VERSION|${CMAKE_FLAGS[*]}|${TARGETS[*]}|$(sha256sum "$0" | cut -c1-16)"
STAMP="$OUT/.stamp-ik-llama-cpp"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$KEY" && -x "$BUILD/bin/${TARGETS[0]}" ]]; then
    log "up to date ($BUILD/bin)"
    exit 0
fi

T0=$(date +%s)
mkdir -p "$OUT"

# --- cmake ----------------------------------------------------------------------------------
if ! command -v cmake >/dev/null 2>&1; then
    if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing cmake with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y -qq --no-install-recommends cmake >/dev/null 2>&1; then
            apt-get update -qq >/dev/null
            apt-get install -y -qq --no-install-recommends cmake >/dev/null
        fi
    else
        log "cmake missing and not root: install cmake (apt-get install cmake, or pip install cmake)"
        exit 1
    fi
fi

# --- sources --------------------------------------------------------------------------------
SRC_KEY="ik-llama-cpp-python=$IK_LLAMA_CPP_PYTHON_VERSION/2"
# A carried archive gets a new mtime on every copy: its content, not its date, says whether the
# extracted tree (and the build made from it) is still current.
if [[ -f "$IK_SOURCE" ]]; then
    SRC_KEY="$SRC_KEY|$(sha256sum "$IK_SOURCE" | cut -c1-16)"
elif [[ -n "$IK_SOURCE" ]]; then
    SRC_KEY="$SRC_KEY|$IK_SOURCE"
fi
if [[ ! -f "$SRC/.source-stamp" || "$(cat "$SRC/.source-stamp")" != "$SRC_KEY" ]]; then
    DL="$OUT/download"
    SDIST="$DL/ik_llama_cpp_python-$IK_LLAMA_CPP_PYTHON_VERSION.tar.gz"
    P="ik_llama_cpp_python-$IK_LLAMA_CPP_PYTHON_VERSION"
    rm -rf "$SRC" "$OUT/extract" "$BUILD"
    mkdir -p "$OUT/extract"
    if [[ -d "$IK_SOURCE" ]]; then
        log "copying the ik_llama.cpp tree from $IK_SOURCE"
        cp -a "$IK_SOURCE/." "$OUT/extract/ik_llama.cpp"
    elif [[ -n "$IK_SOURCE" ]] && tar -tf "$IK_SOURCE" "ik_llama.cpp/CMakeLists.txt" >/dev/null 2>&1; then
        log "extracting the repacked ik_llama.cpp tree $IK_SOURCE"
        tar -xf "$IK_SOURCE" -C "$OUT/extract" ik_llama.cpp
    else
        [[ -n "$IK_SOURCE" ]] && SDIST="$IK_SOURCE"
        if [[ ! -f "$SDIST" ]]; then
            log "downloading ik-llama-cpp-python==$IK_LLAMA_CPP_PYTHON_VERSION sdist from PyPI"
            mkdir -p "$DL"
            PIP="python3 -m pip"
            [[ -x "$ROOT/.venv/bin/python" ]] && PIP="$ROOT/.venv/bin/python -m pip"
            # --no-binary for this package only (`:all:` would also build the build backend's
            # cmake and ninja from source while pip prepares the metadata); --no-deps: numpy is
            # for its Python bindings, which are not built here.
            $PIP download -q --disable-pip-version-check --no-deps \
                --no-binary ik-llama-cpp-python -d "$DL" "ik-llama-cpp-python==$IK_LLAMA_CPP_PYTHON_VERSION"
        fi
        log "extracting the vendored ik_llama.cpp from $SDIST"
        if ! tar -xzf "$SDIST" -C "$OUT/extract" "$P/vendor/ik_llama.cpp"; then
            log "the sdist has no vendor/ik_llama.cpp: this version does not vendor ik_llama.cpp"
            exit 1
        fi
        mv "$OUT/extract/$P/vendor/ik_llama.cpp" "$OUT/extract/ik_llama.cpp"
    fi
    mv "$OUT/extract/ik_llama.cpp" "$SRC"
    rm -rf "$OUT/extract"
    # The sdist leaves out common/cmake/build-info-gen-cpp.cmake, which the build runs to write
    # common/build-info.cpp (from git, which the tree does not have). Write a stand-in that
    # writes the same file, with the package version as the commit.
    if [[ ! -f "$SRC/common/cmake/build-info-gen-cpp.cmake" ]]; then
        mkdir -p "$SRC/common/cmake"
        cat > "$SRC/common/cmake/build-info-gen-cpp.cmake" <<EOF
# written by bitnet-rs scripts/build-ik-llama-cpp.sh (missing from the sdist)
set(BUILD_NUMBER 0)
set(BUILD_COMMIT "ik-llama-cpp-python-$IK_LLAMA_CPP_PYTHON_VERSION")
set(BUILD_COMPILER "\${CMAKE_C_COMPILER_ID} \${CMAKE_C_COMPILER_VERSION}")
set(BUILD_TARGET "unknown")
configure_file("\${CMAKE_CURRENT_SOURCE_DIR}/common/build-info.cpp.in"
               "\${CMAKE_CURRENT_SOURCE_DIR}/common/build-info.cpp")
EOF
    fi
    echo "$SRC_KEY" > "$SRC/.source-stamp"
fi

# --- configure + build ----------------------------------------------------------------------
log "configuring (${ARCH_FLAGS}$([[ "$CUDA" == 1 ]] && echo ", CUDA"))"
cmake -S "$SRC" -B "$BUILD" -Wno-dev "${CMAKE_FLAGS[@]}" >"$OUT/cmake-configure.log" 2>&1 \
    || { tail -40 "$OUT/cmake-configure.log"; exit 1; }
log "building ${TARGETS[*]} with $JOBS jobs (log: $OUT/cmake-build.log)"
cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}" >"$OUT/cmake-build.log" 2>&1 \
    || { tail -60 "$OUT/cmake-build.log"; exit 1; }

cat > "$OUT/env.sh" <<EOF
export IK_LLAMA_CPP_DIR="$SRC"
export IK_LLAMA_CPP_BIN="$BUILD/bin"
EOF
echo "$KEY" > "$STAMP"
log "done in $(( $(date +%s) - T0 )) s: $BUILD/bin"
