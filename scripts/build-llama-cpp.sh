#!/usr/bin/env bash
# Build the llama.cpp that the llama-cpp-python sdist on PyPI vendors, as a reference
# implementation for tests (logits of llama.cpp's `bitnet` architecture, TQ1_0/TQ2_0 files).
#
#   scripts/build-llama-cpp.sh            # GGML_NATIVE=ON (tuned for this machine)
#   LLAMA_PORTABLE=1 scripts/build-llama-cpp.sh
#                                         # GGML_NATIVE=OFF + explicit AVX2/AVX512 flags, for
#                                         # building on one host and running on another
#   LLAMA_BUILD_CLI=1 ...                 # also build llama-cli (pulls in the server code; slow)
#   LLAMA_BUILD_SERVER=1 ...              # also build llama-server (for scripts/bench-serve.sh; slow)
#   LLAMA_OUT=third_party/build-avx512 LLAMA_PORTABLE=1 ...
#                                         # a second build beside the default one (e.g. AVX-512
#                                         # binaries for the lent device host)
#
# Output (git-ignored): third_party/build/ (or $LLAMA_OUT)
#   llama.cpp/            the vendored source (from llama_cpp_python-$VERSION.tar.gz)
#   llama.cpp-build/bin/  libllama.so, libggml*.so, llama-simple, llama-completion, llama-bench,
#                         llama-tokenize, llama-quantize, and our own llama-logits-dump
#                         (compiled from scripts/llama_logits_dump.cpp); llama-server and
#                         llama-cli when asked for
#   env.sh                exports LLAMA_CPP_DIR / LLAMA_CPP_BIN
# Idempotent: a stamp keyed on the version, the options and the dumper's source makes a re-run
# take well under a second. Nothing here is committed; no llama.cpp code or binary is.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${LLAMA_OUT:-$ROOT/third_party/build}"
[[ "$OUT" == /* ]] || OUT="$ROOT/$OUT"
SRC="$OUT/llama.cpp"
BUILD="$OUT/llama.cpp-build"
JOBS="${JOBS:-$(nproc)}"
PORTABLE="${LLAMA_PORTABLE:-0}"
WITH_CLI="${LLAMA_BUILD_CLI:-0}"
WITH_SERVER="${LLAMA_BUILD_SERVER:-0}"

log() { echo "[build-llama-cpp +${SECONDS}s] $*" >&2; }

if [[ "$PORTABLE" == "1" ]]; then
    # Zen4 / Sapphire Rapids class; override with LLAMA_ARCH_FLAGS="..." for other hosts.
    ARCH_FLAGS="${LLAMA_ARCH_FLAGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON}"
else
    ARCH_FLAGS="-DGGML_NATIVE=ON"
fi

TARGETS=(llama llama-simple llama-completion llama-bench llama-tokenize llama-quantize)
CMAKE_FLAGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=ON
    -DGGML_OPENMP=ON
    -DLLAMA_CURL=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=ON
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
)
# llama-cli and llama-server both need the server code (LLAMA_BUILD_SERVER), which the default
# build leaves out: it is the slowest part of llama.cpp to compile and the tests need neither.
if [[ "$WITH_CLI" == "1" || "$WITH_SERVER" == "1" ]]; then
    CMAKE_FLAGS+=(-DLLAMA_BUILD_SERVER=ON)
    [[ "$WITH_CLI" == "1" ]] && TARGETS+=(llama-cli)
    [[ "$WITH_SERVER" == "1" ]] && TARGETS+=(llama-server)
else
    CMAKE_FLAGS+=(-DLLAMA_BUILD_SERVER=OFF)
fi
# shellcheck disable=SC2206
CMAKE_FLAGS+=($ARCH_FLAGS)

DUMPER_SRC="$ROOT/scripts/llama_logits_dump.cpp"
KEY="llama-cpp-python=$LLAMA_CPP_PYTHON_VERSION|${CMAKE_FLAGS[*]}|${TARGETS[*]}|$(sha256sum "$DUMPER_SRC" "$0" | cut -c1-16 | tr '\n' ' ')"
STAMP="$OUT/.stamp-llama-cpp"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$KEY" && -x "$BUILD/bin/llama-logits-dump" ]]; then
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
SRC_KEY="llama-cpp-python=$LLAMA_CPP_PYTHON_VERSION/2"
if [[ ! -f "$SRC/.source-stamp" || "$(cat "$SRC/.source-stamp")" != "$SRC_KEY" ]]; then
    DL="$OUT/download"
    SDIST="$DL/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
    if [[ ! -f "$SDIST" ]]; then
        log "downloading llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist from PyPI"
        mkdir -p "$DL"
        PIP="python3 -m pip"
        [[ -x "$ROOT/.venv/bin/python" ]] && PIP="$ROOT/.venv/bin/python -m pip"
        # --no-binary for this package only: `:all:` would also build the build backend's cmake
        # and ninja from source while pip prepares the metadata.
        $PIP download -q --disable-pip-version-check --no-deps \
            --no-binary llama-cpp-python -d "$DL" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    fi
    log "extracting the vendored llama.cpp"
    rm -rf "$SRC" "$OUT/extract"
    mkdir -p "$OUT/extract"
    P="llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
    tar -xzf "$SDIST" -C "$OUT/extract" "$P/vendor/llama.cpp" "$P/.git/modules/vendor/llama.cpp/HEAD"
    mv "$OUT/extract/$P/vendor/llama.cpp" "$SRC"
    # the upstream commit the sdist vendors (its git metadata is not in the sdist)
    cp "$OUT/extract/$P/.git/modules/vendor/llama.cpp/HEAD" "$SRC/.vendored-commit"
    rm -f "$SRC/.git"
    rm -rf "$OUT/extract" "$BUILD"
    echo "$SRC_KEY" > "$SRC/.source-stamp"
fi

# --- configure + build ----------------------------------------------------------------------
COMMIT="$(cut -c1-7 "$SRC/.vendored-commit" 2>/dev/null || echo unknown)"
CMAKE_FLAGS+=(-DLLAMA_BUILD_COMMIT="$COMMIT" -DLLAMA_BUILD_NUMBER=0)
log "configuring (${ARCH_FLAGS})"
cmake -S "$SRC" -B "$BUILD" -Wno-dev "${CMAKE_FLAGS[@]}" >"$OUT/cmake-configure.log" 2>&1 \
    || { tail -40 "$OUT/cmake-configure.log"; exit 1; }
log "building ${TARGETS[*]} with $JOBS jobs"
cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}" >"$OUT/cmake-build.log" 2>&1 \
    || { tail -60 "$OUT/cmake-build.log"; exit 1; }

# --- our logits dumper, against the built libllama -----------------------------------------
log "compiling llama-logits-dump"
g++ -O2 -std=c++17 -Wall -o "$BUILD/bin/llama-logits-dump" "$DUMPER_SRC" \
    -I"$SRC/include" -I"$SRC/ggml/include" -L"$BUILD/bin" -lllama -lggml -lggml-base \
    -Wl,-rpath,"$BUILD/bin"

cat > "$OUT/env.sh" <<EOF
export LLAMA_CPP_DIR="$SRC"
export LLAMA_CPP_BIN="$BUILD/bin"
EOF
echo "$KEY" > "$STAMP"
log "done in $(( $(date +%s) - T0 )) s: $BUILD/bin"
