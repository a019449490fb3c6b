#!/usr/bin/env bash
# Side-by-side speed of bitnet-rs and llama.cpp on the SAME GGUF files: 2B4T shapes
# (30 layers, 2560/6912, 20/5 heads, vocab 128256, tied head) with random ternary weights,
# written by `bitnet fixture` in llama.cpp's `bitnet` architecture so both engines load them;
# one set per tied head: F16, Q8_0 (8.5 bits) and Q6_K (6.56 bits; HEADS="F16 Q8_0" to skip).
# Prints one table (threads, engine, format, head, pp, tg, our speed / theirs, peak resident
# memory) and the memory read bandwidth, the weight bytes read per generated token and the
# share of that bandwidth limit reached.
#
#   scripts/bench.sh                       # threads = physical cores, pp512 / tg128, 3 repetitions
#   THREADS=2 REPS=5 PP=512 TG=128 scripts/bench.sh
#   THREADS=1,2,4,8,16 PP=128 TG=32 scripts/bench.sh      # thread scaling
#   BITNET_CPP_BENCH=/path/to/bitnet.cpp/build/bin/llama-bench scripts/bench.sh   # adds bitnet.cpp
#   BITNET_BIN=... LLAMA_BENCH=... scripts/bench.sh        # prebuilt binaries (no cargo, no build)
#
# llama.cpp comes from scripts/build-llama-cpp.sh (the llama-cpp-python sdist). bitnet.cpp is
# never built by this repository: pass the path of a llama-bench you built from its source (with
# OpenMP: its own spinning thread pool collapses on small machines).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${BENCH_DIR:-$ROOT/target/bench}"
mkdir -p "$OUT"
THREADS="${THREADS:-$(lscpu -p=Core,Socket 2>/dev/null | grep -v '^#' | sort -u | wc -l)}"
REPS="${REPS:-3}"
PP="${PP:-512}"
TG="${TG:-128}"
HEADS="${HEADS:-F16 Q8_0 Q6_K}"
# Our engine runs both formats with the same kernels (both are repacked to the same rows);
# OURS_FORMATS=tq2_0 halves the time of a long thread sweep.
OURS_FORMATS="${OURS_FORMATS:-tq2_0 i2_s}"

if [[ -z "${BITNET_BIN:-}" ]]; then
    cargo build --release -p bitnet-cli --locked -q
    BITNET_BIN="$ROOT/target/release/bitnet"
fi
if [[ -z "${LLAMA_BENCH:-}" ]]; then
    bash "$ROOT/scripts/build-llama-cpp.sh"
    # shellcheck disable=SC1091
    source "$ROOT/third_party/build/env.sh"
    LLAMA_BENCH="$LLAMA_CPP_BIN/llama-bench"
fi

# The model file with ternary format $1 and tied head $2 (F16, Q8_0 or Q6_K).
model_file() {
    case "$2" in
        Q8_0) echo "$OUT/2b4t-$1-q8.gguf" ;;
        Q6_K) echo "$OUT/2b4t-$1-q6k.gguf" ;;
        *) echo "$OUT/2b4t-$1.gguf" ;;
    esac
}
# The same weights with each head (llama.cpp and bitnet.cpp read the 8-bit Q8_0 and the
# k-quant Q6_K embeddings as well).
for ty in $(printf '%s\n' tq2_0 $OURS_FORMATS ${BITNET_CPP_BENCH:+i2_s} | sort -u); do
    for head in $HEADS; do
        f="$(model_file "$ty" "$head")"
        [[ -f "$f" ]] || "$BITNET_BIN" fixture "$f" --shape 2b4t --arch bitnet --type "$ty" --embed "${head,,}" --seed 42
    done
done

RES="$OUT/results"
rm -rf "$RES"
mkdir -p "$RES"
MANIFEST="$RES/manifest.tsv"
n=0
# Peak resident memory (KiB) of a command, from the kernel's rusage of the child.
peak_kib() {
    python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)' "$@"
}
# One row: threads, engine, format, head, kind (ours|llama), binary, model file. Results and the
# peak resident memory (from a separate tg32 run) land in $RES.
row() {
    local t="$1" engine="$2" format="$3" head="$4" kind="$5" bin="$6" file="$7" json rss
    n=$((n + 1))
    json="$RES/$n.json"
    echo "running $engine $format ($head head), $t threads ..." >&2
    if [[ "$kind" == ours ]]; then
        "$bin" bench -m "$file" -p "$PP" -n "$TG" -r "$REPS" --threads-list "$t" --json >"$json"
        rss=$(peak_kib "$bin" bench -m "$file" -p 0 -n 32 -r 1 --threads-list "$t")
    else
        "$bin" -m "$file" -p "$PP" -n "$TG" -r "$REPS" -t "$t" -o json >"$json" 2>/dev/null
        rss=$(peak_kib "$bin" -m "$file" -p 0 -n 32 -r 1 -t "$t")
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$engine" "$format" "$head" "$kind" "$json" "$rss" >>"$MANIFEST"
}
for t in ${THREADS//,/ }; do
    for head in $HEADS; do
        for ty in $OURS_FORMATS; do
            row "$t" bitnet-rs "${ty^^}" "$head" ours "$BITNET_BIN" "$(model_file "$ty" "$head")"
        done
        row "$t" llama.cpp TQ2_0 "$head" llama "$LLAMA_BENCH" "$(model_file tq2_0 "$head")"
        if [[ -n "${BITNET_CPP_BENCH:-}" ]]; then
            row "$t" bitnet.cpp I2_S "$head" llama "$BITNET_CPP_BENCH" "$(model_file i2_s "$head")"
        fi
    done
    # The bandwidth probe runs on its own, after the engines, so it neither warms nor evicts
    # anything they read. Bytes per token: the file with each head.
    for head in $HEADS; do
        "$BITNET_BIN" bench -m "$(model_file tq2_0 "$head")" -p 0 -n 0 --threads-list "$t" --membw --json >"$RES/membw-$t-$head.json"
    done
done

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) logical CPUs; $("$BITNET_BIN" --version 2>/dev/null || true)"
python3 "$ROOT/scripts/bench_table.py" "$RES"
