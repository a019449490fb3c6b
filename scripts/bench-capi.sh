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
# The same program on the static library: code in a shared object pays for position-independent
# calls and thread-locals (the kernels' thread pool reads some per loop), which is not the API's cost.
# shellcheck disable=SC2046
gcc -std=c11 -O2 "$root/crates/bitnet-ffi/examples/c/bench.c" -o "$work/bench-c-static" \
    $(pkg-config --cflags --static --libs bitnet | sed 's/-lbitnet_ffi/-l:libbitnet_ffi.a/')

echo "model $model, $n tokens, $reps reps per run, $threads threads, $rounds rounds; $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
: > "$work/results"
run_c() { "$work/bench-c" "$model" "$n" "$reps" "$threads"; }
run_static() { "$work/bench-c-static" "$model" "$n" "$reps" "$threads" | sed 's/^api c$/api c-static/'; }
run_rust() { "$root/target/release/examples/bench_rust" "$model" "$n" "$reps" "$threads"; }
for r in $(seq "$rounds"); do
    # A different order each round, so that a drift in the machine's speed favours no one.
    case $((r % 3)) in
        0) order="run_c run_static run_rust" ;;
        1) order="run_rust run_c run_static" ;;
        2) order="run_static run_rust run_c" ;;
    esac
    for f in $order; do
        $f | tee -a "$work/results" | paste -sd' '
    done
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
def pct(c, r):
    return f"{(c - r) * 1e3:+.1f} µs ({(c / r - 1) * 100:+.1f}%)"
print("\n| ms per token | Rust | C, static lib | C, shared lib | static - Rust | shared - Rust |")
print("|---|---|---|---|---|---|")
for key, name in [("generate_ms_per_token", "generate (callback per piece)"), ("loop_ms_per_token", "eval + sample per token")]:
    r, s, c = med("rust", key), med("c-static", key), med("c", key)
    print(f"| {name} | {r:.4f} | {s:.4f} | {c:.4f} | {pct(s, r)} | {pct(c, r)} |")
r, s, c = med("rust", "sample_us"), med("c-static", "sample_us"), med("c", "sample_us")
print(f"| one greedy sample (argmax) | {r * 1e-3:.4f} | {s * 1e-3:.4f} | {c * 1e-3:.4f} | {s - r:+.2f} µs | {c - r:+.2f} µs |")
print(f"\nfixed cost of one C call (bitnet_session_get_info): {med('c', 'call_ns'):.0f} ns")
print(f"C API overhead per token (loop: one sample's extra + one eval call's fixed cost): {c - r + med('c', 'call_ns') * 1e-3:.2f} µs")
PY
