#!/usr/bin/env bash
# Issue 11's side-by-side on one NVIDIA GPU, in one run on one machine: the same 2B4T-shaped
# random ternary weights (30 layers, 2560/6912, 20/5 heads, vocab 128256, tied Q8_0 head) in
#   - bitnet-rs `--device cuda`          (I2_S file from `bitnet fixture --arch bitnet-b1.58`)
#   - ik_llama.cpp built with CUDA       (the same file, quantized to IQ2_BN by its own
#                                         llama-quantize; `llama-bench -ngl 99`)
#   - PyTorch/transformers bf16          (BitNetForCausalLM at the same shape, random weights:
#                                         scripts/bench_torch.py)
#   - bitnet-rs on the host's CPU cores  (the I2_S file, `--device cpu`)
# and prints one Markdown table (engine, file, pp t/s, tg t/s; mean +- sd over the repetitions,
# best of them for transformers). Raw outputs and the exact commands land in $BENCH_DIR/results.
#
#   BITNET=target/release/bitnet scripts/bench-cuda.sh
#   BITNET=... IK_BIN=third_party/build-ik-cuda/ik_llama.cpp-build/bin scripts/bench-cuda.sh
#   IK_BUILD=1 scripts/bench-cuda.sh        # build ik_llama.cpp with CUDA first (minutes)
#   ENGINES="bitnet-cuda ik-cuda" PP=512 TG=128 REPS=5 scripts/bench-cuda.sh
#
# Knobs (environment):
#   BITNET        the bitnet binary [target/release/bitnet; built with cargo when missing and
#                 cargo is there]. Without it there is no model file, so only transformers runs.
#   IK_BIN        folder with ik_llama.cpp's llama-bench and llama-quantize [from
#                 $IK_OUT/env.sh, IK_OUT defaulting to third_party/build-ik-cuda]
#   IK_BUILD=1    when there is no ik_llama.cpp build, make one: IK_CUDA=1
#                 IK_CUDA_ARCH=${IK_CUDA_ARCH:-90} IK_TARGETS="llama-bench llama-quantize"
#                 scripts/build-ik-llama-cpp.sh into $IK_OUT (IK_SOURCE passes through)
#   ENGINES       any of "bitnet-cuda ik-cuda torch bitnet-cpu" [all four, in this order]
#   PP / TG       prompt tokens and generated tokens [512 / 128]
#   REPS          repetitions of each test [3]
#   THREADS       CPU threads of the bitnet-cpu row and of llama-quantize [physical cores]
#   TORCH_VARIANTS  bench_torch.py --variants [bf16]; "bf16,bitlinear" adds transformers'
#                 online BitLinear (about a minute more: ~8 tokens/s decode)
#   PYTHON        python with torch + transformers [python3]
#   RUN_TIMEOUT   seconds any one engine's run may take [900]
#   BENCH_DIR     working folder: model files, results/ [target/bench-cuda]
#
# An engine whose prerequisite is missing (no GPU, no binary, no torch) is skipped with a line
# saying why; one that fails is reported with its log and the others still run (exit status 1).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${BENCH_DIR:-$ROOT/target/bench-cuda}"
[[ "$OUT" == /* ]] || OUT="$ROOT/$OUT"
PP="${PP:-512}"
TG="${TG:-128}"
REPS="${REPS:-3}"
THREADS="${THREADS:-$(lscpu -p=Core,Socket 2>/dev/null | grep -v '^#' | sort -u | wc -l)}"
ENGINES="${ENGINES:-bitnet-cuda ik-cuda torch bitnet-cpu}"
TORCH_VARIANTS="${TORCH_VARIANTS:-bf16}"
PYTHON="${PYTHON:-python3}"
RUN_TIMEOUT="${RUN_TIMEOUT:-900}"
IK_OUT="${IK_OUT:-$ROOT/third_party/build-ik-cuda}"
[[ "$IK_OUT" == /* ]] || IK_OUT="$ROOT/$IK_OUT"

log() { echo "[bench-cuda +${SECONDS}s] $*" >&2; }
has_engine() { [[ " $ENGINES " == *" $1 "* ]]; }
for e in $ENGINES; do
    case "$e" in
        bitnet-cuda | ik-cuda | torch | bitnet-cpu) ;;
        *) log "unknown engine '$e' (bitnet-cuda, ik-cuda, torch, bitnet-cpu)"; exit 2 ;;
    esac
done

RES="$OUT/results"
rm -rf "$RES"
mkdir -p "$RES"
MANIFEST="$RES/manifest.tsv"
: >"$MANIFEST"
COMMANDS="$RES/commands.txt"
: >"$COMMANDS"
SKIPPED="$RES/skipped.txt"
: >"$SKIPPED"
FAILED=0
skip() { log "SKIP $1: $2"; printf '%s: %s\n' "$1" "$2" >>"$SKIPPED"; }

# The CUDA libraries (libcuda from the driver, libnvrtc for bitnet-rs's run-time kernels) are
# often outside the loader's default path on CUDA images.
if [[ -d /usr/local/cuda/lib64 && ":${LD_LIBRARY_PATH:-}:" != *":/usr/local/cuda/lib64:"* ]]; then
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
GPU=""
if command -v nvidia-smi >/dev/null 2>&1; then
    GPU="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)"
fi

LOAD0="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"

# --- binaries ---------------------------------------------------------------------------------
BITNET="${BITNET:-${BITNET_BIN:-}}"
if [[ -z "$BITNET" ]]; then
    if [[ -x "$ROOT/target/release/bitnet" ]]; then
        BITNET="$ROOT/target/release/bitnet"
    elif command -v cargo >/dev/null 2>&1; then
        cargo build --release -p bitnet-cli --locked -q
        BITNET="$ROOT/target/release/bitnet"
    fi
fi
if [[ -n "$BITNET" && ! -x "$BITNET" ]]; then
    log "BITNET=$BITNET is not an executable"
    exit 2
fi

IK_BENCH="" IK_QUANTIZE=""
if has_engine ik-cuda; then
    if [[ -z "${IK_BIN:-}" && ! -f "$IK_OUT/env.sh" && "${IK_BUILD:-0}" == 1 ]]; then
        log "building ik_llama.cpp with CUDA into $IK_OUT"
        IK_OUT="$IK_OUT" IK_CUDA=1 IK_CUDA_ARCH="${IK_CUDA_ARCH:-90}" \
            IK_TARGETS="llama-bench llama-quantize" bash "$ROOT/scripts/build-ik-llama-cpp.sh"
    fi
    if [[ -z "${IK_BIN:-}" && -f "$IK_OUT/env.sh" ]]; then
        # shellcheck disable=SC1091
        IK_BIN="$(source "$IK_OUT/env.sh" && echo "$IK_LLAMA_CPP_BIN")"
    fi
    if [[ -n "${IK_BIN:-}" && -x "$IK_BIN/llama-bench" && -x "$IK_BIN/llama-quantize" ]]; then
        IK_BENCH="$IK_BIN/llama-bench"
        IK_QUANTIZE="$IK_BIN/llama-quantize"
    fi
fi

# --- what runs --------------------------------------------------------------------------------
if has_engine bitnet-cuda; then
    if [[ -z "$BITNET" ]]; then skip bitnet-cuda "no bitnet binary (set BITNET=path)"
    elif [[ -z "$GPU" ]]; then skip bitnet-cuda "no NVIDIA GPU (nvidia-smi lists none)"
    fi
fi
if has_engine ik-cuda; then
    if [[ -z "$IK_BENCH" ]]; then
        skip ik-cuda "no ik_llama.cpp build (IK_BIN=folder with llama-bench + llama-quantize, or $IK_OUT/env.sh; IK_BUILD=1 builds one with CUDA)"
    elif [[ -z "$BITNET" ]]; then skip ik-cuda "no bitnet binary to write the model file (set BITNET=path)"
    elif [[ -z "$GPU" ]]; then skip ik-cuda "no NVIDIA GPU (nvidia-smi lists none)"
    fi
fi
if has_engine torch; then
    if [[ -z "$GPU" ]]; then skip torch "no NVIDIA GPU (nvidia-smi lists none)"
    elif ! "$PYTHON" -c 'import torch, transformers; assert torch.cuda.is_available()' >/dev/null 2>&1; then
        skip torch "$PYTHON has no torch + transformers that sees a CUDA GPU"
    fi
fi
if has_engine bitnet-cpu && [[ -z "$BITNET" ]]; then
    skip bitnet-cpu "no bitnet binary (set BITNET=path)"
fi
runs() { has_engine "$1" && ! grep -q "^$1:" "$SKIPPED"; }

# --- model files ------------------------------------------------------------------------------
mkdir -p "$OUT"
I2S="$OUT/2b4t-i2_s-q8_0.gguf"
IQ2BN="$OUT/2b4t-iq2_bn-q8_0.gguf"
# One command per line in commands.txt, so the README can quote what ran.
record() { printf '%q ' "$@" >>"$COMMANDS"; echo >>"$COMMANDS"; }
if runs bitnet-cuda || runs ik-cuda || runs bitnet-cpu; then
    if [[ ! -f "$I2S" ]]; then
        log "writing $I2S"
        record "$BITNET" fixture "$I2S" --shape 2b4t --arch bitnet-b1.58 --type i2_s --embed q8_0 --seed 42
        "$BITNET" fixture "$I2S" --shape 2b4t --arch bitnet-b1.58 --type i2_s --embed q8_0 --seed 42 >&2
    fi
fi
if runs ik-cuda && [[ ! -f "$IQ2BN" ]]; then
    # ik_llama.cpp reads bitnet.cpp's `bitnet-b1.58` architecture and dequantizes I2_S; IQ2_BN
    # is its own 2-bit ternary type (a scale per row), the one its CUDA kernels run. The tied
    # head keeps Q8_0.
    log "quantizing to IQ2_BN with ik_llama.cpp's llama-quantize"
    cmd=("$IK_QUANTIZE" --allow-requantize --token-embedding-type q8_0 --output-tensor-type q8_0
         "$I2S" "$IQ2BN.tmp" IQ2_BN "$THREADS")
    record "${cmd[@]}"
    if timeout "$RUN_TIMEOUT" "${cmd[@]}" >"$RES/ik-quantize.log" 2>&1; then
        mv "$IQ2BN.tmp" "$IQ2BN"
    else
        log "FAILED ik-cuda: llama-quantize exited $? (log: $RES/ik-quantize.log)"
        tail -20 "$RES/ik-quantize.log" >&2
        printf 'ik-cuda: llama-quantize failed (%s)\n' "$RES/ik-quantize.log" >>"$SKIPPED"
        rm -f "$IQ2BN.tmp"
        FAILED=1
    fi
fi

# --- the runs ---------------------------------------------------------------------------------
# row ENGINE-LABEL FILE-LABEL KIND(ours|llama|torch) RESULT-FILE COMMAND...: runs the command
# under a time limit, stdout to the result file, stderr to a log beside it.
n=0
row() {
    local engine="$1" file="$2" kind="$3" res="$4"
    shift 4
    n=$((n + 1))
    log "running $engine ..."
    record "$@"
    local rc=0
    timeout "$RUN_TIMEOUT" "$@" >"$res" 2>"${res%.*}.log" || rc=$?
    if [[ "$rc" != 0 ]]; then
        log "FAILED $engine: exit $rc (log: ${res%.*}.log)"
        tail -20 "${res%.*}.log" >&2
        printf '%s: failed, exit %s (%s)\n' "$engine" "$rc" "${res%.*}.log" >>"$SKIPPED"
        FAILED=1
        return 0
    fi
    printf '%s\t%s\t%s\t%s\n' "$engine" "$file" "$kind" "$res" >>"$MANIFEST"
}
size_gb() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.2f GB", b / 1e9 }'; }

if runs bitnet-cuda; then
    row "bitnet-rs --device cuda" "I2_S, Q8_0 head ($(size_gb "$I2S"))" ours "$RES/bitnet-cuda.json" \
        "$BITNET" bench -m "$I2S" --device cuda -p "$PP" -n "$TG" -r "$REPS" --json
fi
if runs ik-cuda; then
    row "ik_llama.cpp CUDA, llama-bench -ngl 99" "IQ2_BN, Q8_0 head ($(size_gb "$IQ2BN"))" llama "$RES/ik-cuda.json" \
        "$IK_BENCH" -m "$IQ2BN" -ngl 99 -p "$PP" -n "$TG" -r "$REPS" -o json
fi
if runs torch; then
    row "transformers bf16" "BitNetForCausalLM, same shape, random bf16" torch "$RES/torch.md" \
        env PYTHONUNBUFFERED=1 "$PYTHON" "$ROOT/scripts/bench_torch.py" --variants "$TORCH_VARIANTS" \
        --pp "$PP" --tg "$TG" --reps "$REPS"
fi
if runs bitnet-cpu; then
    row "bitnet-rs --device cpu, $THREADS threads" "I2_S, Q8_0 head ($(size_gb "$I2S"))" ours "$RES/bitnet-cpu.json" \
        "$BITNET" bench -m "$I2S" --device cpu -t "$THREADS" -p "$PP" -n "$TG" -r "$REPS" --json
fi

# --- the table --------------------------------------------------------------------------------
{
    echo "GPU: ${GPU:-none}; CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) logical CPUs;" \
        "load average before the runs: $LOAD0 (anything beside the benchmark skews the CPU row" \
        "and the launch-bound decode rows)"
    [[ -n "$BITNET" ]] && echo "bitnet: $("$BITNET" --version 2>/dev/null || echo "$BITNET")"
    echo
    python3 "$ROOT/scripts/bench_cuda_table.py" "$MANIFEST" "$PP" "$TG"
    if [[ -s "$SKIPPED" ]]; then
        echo
        sed 's/^/not in the table: /' "$SKIPPED"
    fi
} | tee "$RES/table.md"
log "raw outputs, logs and commands: $RES"
exit "$FAILED"
