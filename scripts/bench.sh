#!/usr/bin/env bash
# Side-by-side speed of bitnet-rs and llama.cpp on the SAME GGUF files: 2B4T shapes
# (30 layers, 2560/6912, 20/5 heads, vocab 128256, tied head) with random ternary weights,
# written by `bitnet fixture` in llama.cpp's `bitnet` architecture so both engines load them;
# one set with an F16 head, one with a Q8_0 (8-bit) head. Prints one table (engine, format,
# head, pp, tg, our speed / theirs, peak resident memory) and the memory read bandwidth, the
# weight bytes read per generated token and the share of that bandwidth limit each engine reaches.
#
#   scripts/bench.sh                       # threads = physical cores, pp512 / tg128, 3 repetitions
#   THREADS=2 REPS=5 PP=512 TG=128 scripts/bench.sh
#   BITNET_CPP_BENCH=/path/to/bitnet.cpp/build/bin/llama-bench scripts/bench.sh   # adds bitnet.cpp
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

cargo build --release -p bitnet-cli --locked -q
BITNET="$ROOT/target/release/bitnet"
bash "$ROOT/scripts/build-llama-cpp.sh"
# shellcheck disable=SC1091
source "$ROOT/third_party/build/env.sh"

for ty in tq2_0 i2_s; do
    f="$OUT/2b4t-$ty.gguf"
    [[ -f "$f" ]] || "$BITNET" fixture "$f" --shape 2b4t --arch bitnet --type "$ty" --seed 42
    # The same weights with an 8-bit (Q8_0) tied head: llama.cpp and bitnet.cpp read it as well.
    f="$OUT/2b4t-$ty-q8.gguf"
    [[ -f "$f" ]] || "$BITNET" fixture "$f" --shape 2b4t --arch bitnet --type "$ty" --embed q8_0 --seed 42
done

RES="$OUT/results"
rm -rf "$RES"
mkdir -p "$RES"
MANIFEST="$RES/manifest.tsv"
n=0
# One row: engine, format, head, kind (ours|llama), model file. Results and the peak resident
# memory (from a separate tg32 run under /usr/bin/time) land in $RES.
row() {
    local engine="$1" format="$2" head="$3" kind="$4" file="$5" json rss
    n=$((n + 1))
    json="$RES/$n.json"
    echo "running $engine $format ($head head) ..." >&2
    if [[ "$kind" == ours ]]; then
        "$BITNET" bench -m "$file" -p "$PP" -n "$TG" -r "$REPS" --threads-list "$THREADS" --json >"$json"
        rss=$(/usr/bin/time -f '%M' "$BITNET" bench -m "$file" -p 0 -n 32 -r 1 --threads-list "$THREADS" 2>&1 >/dev/null | tail -1)
    else
        "$BITNET_BENCH_BIN" -m "$file" -p "$PP" -n "$TG" -r "$REPS" -t "$THREADS" -o json >"$json" 2>/dev/null
        rss=$(/usr/bin/time -f '%M' "$BITNET_BENCH_BIN" -m "$file" -p 0 -n 32 -r 1 -t "$THREADS" 2>&1 >/dev/null | tail -1)
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$engine" "$format" "$head" "$kind" "$json" "$rss" >>"$MANIFEST"
}
for head in F16 Q8_0; do
    sfx=""
    [[ "$head" == Q8_0 ]] && sfx="-q8"
    row bitnet-rs TQ2_0 "$head" ours "$OUT/2b4t-tq2_0$sfx.gguf"
    row bitnet-rs I2_S "$head" ours "$OUT/2b4t-i2_s$sfx.gguf"
    BITNET_BENCH_BIN="$LLAMA_CPP_BIN/llama-bench" row llama.cpp TQ2_0 "$head" llama "$OUT/2b4t-tq2_0$sfx.gguf"
    if [[ -n "${BITNET_CPP_BENCH:-}" ]]; then
        BITNET_BENCH_BIN="$BITNET_CPP_BENCH" row bitnet.cpp I2_S "$head" llama "$OUT/2b4t-i2_s$sfx.gguf"
    fi
done
# The bandwidth probe runs last, on its own, so it neither warms nor evicts anything above.
"$BITNET" bench -m "$OUT/2b4t-tq2_0.gguf" -p 0 -n 0 --threads-list "$THREADS" --membw --json >"$RES/membw-f16.json"
"$BITNET" bench -m "$OUT/2b4t-tq2_0-q8.gguf" -p 0 -n 0 --threads-list "$THREADS" --membw --json >"$RES/membw-q8.json"

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) logical CPUs, threads used: $THREADS"
python3 "$ROOT/scripts/bench_table.py" "$MANIFEST" "$RES/membw-f16.json" "$RES/membw-q8.json"
