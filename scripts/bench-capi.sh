#!/usr/bin/env bash
# Per-token overhead of the C API against the Rust API: the same greedy decoding of the same
# model through crates/bitnet-ffi/examples/c/bench.c (C, linked against the release
# libbitnet_ffi.so) and examples/bench_rust.rs (Rust), run alternately ROUNDS times; prints
# each run's medians and a summary (median over rounds).
#
#   scripts/bench-capi.sh [MODEL] [N_TOKENS] [REPS] [THREADS] [ROUNDS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-$root/models/bitnet-b1.58-kjv-i2_s.gguf}
n=${2:-256}
reps=${3:-5}
threads=${4:-2}
rounds=${5:-3}
work=${TMPDIR:-/tmp}/bitnet-bench-capi
mkdir -p "$work"

cargo build --release --locked -p bitnet-ffi --lib --example bench_rust --manifest-path "$root/Cargo.toml" >&2
"$root/scripts/install-capi.sh" "$work/prefix" "$root/target/release"
export PKG_CONFIG_PATH=$work/prefix/lib/pkgconfig
# shellcheck disable=SC2046
gcc -std=c11 -O2 "$root/crates/bitnet-ffi/examples/c/bench.c" -o "$work/bench-c" \
    $(pkg-config --cflags --libs bitnet) -Wl,-rpath,"$work/prefix/lib"

echo "model $model, $n tokens, $reps reps per run, $threads threads, $rounds rounds; $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
: > "$work/results"
for r in $(seq "$rounds"); do
    "$work/bench-c" "$model" "$n" "$reps" "$threads" | tee -a "$work/results" | paste -sd' '
    "$root/target/release/examples/bench_rust" "$model" "$n" "$reps" "$threads" | tee -a "$work/results" | paste -sd' '
done
python3 - "$work/results" <<'PY'
import statistics, sys
runs, cur = [], {}
for line in open(sys.argv[1]):
    k, v = line.split()
    if k == "api" and cur:
        runs.append(cur); cur = {}
    cur[k] = v
runs.append(cur)
def med(api, key):
    return statistics.median(float(r[key]) for r in runs if r["api"] == api and key in r)
print("\n| path | Rust ms/token | C ms/token | C - Rust |")
print("|---|---|---|---|")
for key, name in [("generate_ms_per_token", "generate (callback per piece)"), ("loop_ms_per_token", "eval + sample per token")]:
    r, c = med("rust", key), med("c", key)
    print(f"| {name} | {r:.4f} | {c:.4f} | {(c - r) * 1e3:+.1f} µs ({(c / r - 1) * 100:+.2f}%) |")
print(f"\nfixed cost of one C call (bitnet_session_get_info): {med('c', 'call_ns'):.0f} ns")
PY
