#!/usr/bin/env bash
# Side-by-side speed of bitnet-rs and llama.cpp on the SAME GGUF files: 2B4T shapes
# (30 layers, 2560/6912, 20/5 heads, vocab 128256, tied f16 head) with random ternary weights,
# written by `bitnet fixture` in llama.cpp's `bitnet` architecture so both engines load them.
#
#   scripts/bench.sh                       # threads = physical cores, pp512 / tg128, 3 repetitions
#   THREADS=2 REPS=5 PP=512 TG=128 scripts/bench.sh
#   BITNET_CPP_BENCH=/path/to/bitnet.cpp/build/bin/llama-bench scripts/bench.sh   # adds bitnet.cpp
#
# llama.cpp comes from scripts/build-llama-cpp.sh (the llama-cpp-python sdist). bitnet.cpp is
# never built by this repository: pass the path of a llama-bench you built from its source.
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
done
# The same weights with an 8-bit (Q8_0) tied head: llama.cpp reads a Q8_0 token_embd as well.
f="$OUT/2b4t-tq2_0-q8.gguf"
[[ -f "$f" ]] || "$BITNET" fixture "$f" --shape 2b4t --arch bitnet --type tq2_0 --embed q8_0 --seed 42

rss() { /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -1; }

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) logical CPUs, threads used: $THREADS"
echo "files: $(ls -l "$OUT"/2b4t-tq2_0.gguf | awk '{printf "%.0f MiB", $5/1048576}') (TQ2_0), $(ls -l "$OUT"/2b4t-i2_s.gguf | awk '{printf "%.0f MiB", $5/1048576}') (I2_S)"
printf '\n| engine | format | test | t/s (mean ± sd) |\n|---|---|---|---|\n'
ours() {
    "$BITNET" bench -m "$OUT/2b4t-$1.gguf" -p "$PP" -n "$TG" -r "$REPS" --threads-list "$THREADS" --json |
        python3 "$ROOT/scripts/bench_table.py" ours bitnet-rs "$2"
}
theirs() {
    "$1" -m "$OUT/2b4t-$2.gguf" -p "$PP" -n "$TG" -r "$REPS" -t "$THREADS" -o json 2>/dev/null |
        python3 "$ROOT/scripts/bench_table.py" llama "$3" "$4"
}
ours tq2_0 TQ2_0
theirs "$LLAMA_CPP_BIN/llama-bench" tq2_0 "llama.cpp" TQ2_0
ours i2_s I2_S
ours tq2_0-q8 "TQ2_0, Q8_0 head"
theirs "$LLAMA_CPP_BIN/llama-bench" tq2_0-q8 "llama.cpp" "TQ2_0, Q8_0 head"
if [[ -n "${BITNET_CPP_BENCH:-}" ]]; then
    theirs "$BITNET_CPP_BENCH" i2_s "bitnet.cpp" I2_S
fi
printf '\npeak resident memory (KiB) for a tg32 run: bitnet-rs %s, llama.cpp %s\n' \
    "$(rss "$BITNET" bench -m "$OUT/2b4t-tq2_0.gguf" -p 0 -n 32 -r 1 --threads-list "$THREADS")" \
    "$(rss "$LLAMA_CPP_BIN/llama-bench" -m "$OUT/2b4t-tq2_0.gguf" -p 0 -n 32 -r 1 -t "$THREADS")"
