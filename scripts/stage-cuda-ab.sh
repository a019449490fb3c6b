#!/usr/bin/env bash
# A/B of CUDA kernel variants for a machine with a GPU but no Rust toolchain (the lent H200):
# builds `cuda_generate` here once per variant of the kernel sources and writes a runner that
# times the variants in turn, round after round, in one device call. Runs minutes apart on a
# shared GPU differ by more than most kernel changes; interleaved rounds agreed within ~5 us a
# token (docs/cuda.md, "Batch-1 decode, ninth session").
#
#   scripts/stage-cuda-ab.sh DIR NAME=SOURCE [NAME=SOURCE ...]   # here
#   bash DIR/ab.sh [ROUNDS [cuda_generate arguments]]             # there, DIR carried
#
# SOURCE is a git revision (its crates/bitnet-cuda/kernels/*.cu and *.cuh) or a folder holding
# kernel files that replace this tree's (those it lacks are this tree's). Only the kernels vary:
# the Rust side is this tree's, so a variant must keep the kernels' names and arguments. For a
# change on the host side too, SOURCE @REV builds the whole tree at REV (a git worktree, its own
# target folder: $AB_TARGET_DIR, default target/stage-ab-rev; the first build takes minutes). The
# kernels are compiled by NVRTC when the binary starts (`include_str!`), so each variant is a
# binary of its own (~6.5 MB, carried xz-packed at ~1.7 MB; `run` takes 64 MiB with the tracked
# tree). DIR must be git-ignored (device-bin*). The runner's default arguments: --head q8_0
# --pp 512 --tg 128 --reps 2 --batch 0, with BITNET_CUDA_PROFILE=1 (the persistent step's
# per-stage breakdown).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || { sed -n '2,20p' "$0" >&2; exit 2; }
DIR="$1"
shift
if ! git check-ignore -q "${DIR%/}/"; then
    echo "stage-cuda-ab: $DIR is not git-ignored (the device run copies the tracked tree)" >&2
    exit 1
fi
K=crates/bitnet-cuda/kernels
SAVED=$(mktemp -d)
cp "$K"/* "$SAVED/"
# The tree's own kernels come back however this ends.
restore() { cp "$SAVED"/* "$K/"; rm -rf "$SAVED"; }
trap restore EXIT

rm -rf "$DIR"
mkdir -p "$DIR"
for spec in "$@"; do
    name="${spec%%=*}" src="${spec#*=}"
    if [[ "$name" == "$spec" || ! "$name" =~ ^[A-Za-z0-9_-]+$ ]]; then
        echo "stage-cuda-ab: '$spec' is not NAME=SOURCE (NAME: letters, digits, _ or -)" >&2
        exit 2
    fi
    if [[ "$src" == @* ]]; then
        rev="${src#@}"
        git rev-parse --verify -q "$rev^{commit}" >/dev/null ||
            { echo "stage-cuda-ab: $rev is not a revision" >&2; exit 2; }
        echo "stage-cuda-ab: building $name (the whole tree at $rev)" >&2
        wt="$(mktemp -d)"
        git worktree add -q --detach "$wt" "$rev"
        target="${AB_TARGET_DIR:-$PWD/target/stage-ab-rev}"
        (cd "$wt" && CARGO_TARGET_DIR="$target" \
            cargo build --release --locked -q -p bitnet-cuda --example cuda_generate) ||
            { git worktree remove --force "$wt"; exit 1; }
        git worktree remove --force "$wt"
        cp "$target/release/examples/cuda_generate" "$DIR/cg_$name"
        strip "$DIR/cg_$name"
        xz -T0 -6 "$DIR/cg_$name"
        continue
    fi
    cp "$SAVED"/* "$K/"
    if [[ -d "$src" ]]; then
        cp "$src"/*.cu* "$K/"
    else
        git rev-parse --verify -q "$src^{commit}" >/dev/null ||
            { echo "stage-cuda-ab: $src is neither a folder nor a revision" >&2; exit 2; }
        for f in "$SAVED"/*; do
            f=$(basename "$f")
            git show "$src:$K/$f" >"$K/$f" 2>/dev/null || cp "$SAVED/$f" "$K/$f"
        done
    fi
    echo "stage-cuda-ab: building $name ($src)" >&2
    cargo build --release --locked -q -p bitnet-cuda --example cuda_generate
    cp target/release/examples/cuda_generate "$DIR/cg_$name"
    strip "$DIR/cg_$name"
    # xz: 6.5 -> 1.7 MB, so a call carries several times more variants; ab.sh unpacks them
    xz -T0 -6 "$DIR/cg_$name"
done

cp scripts/unpack-xz.py "$DIR/"
cat >"$DIR/ab.sh" <<'EOF'
#!/usr/bin/env bash
# Every variant in turn, ROUNDS times (default 2); the rest of the arguments go to cuda_generate.
set -uo pipefail
B="$(cd "$(dirname "$0")" && pwd)"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
rounds="${1:-2}"
shift || true
args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(--head q8_0 --pp 512 --tg 128 --reps 2 --batch 0)
# The binaries come xz-packed (unpack-xz.py: the GPU machine may have no xz).
python3 "$B/unpack-xz.py" "$B"
for ((r = 1; r <= rounds; r++)); do
    for bin in "$B"/cg_*; do
        echo "== ${bin##*/cg_} round $r"
        BITNET_CUDA_PROFILE=1 "$bin" "${args[@]}" 2>&1 |
            grep -E "^pp[0-9]+|graph|persistent step|sequences|error" || echo "(no timings)"
    done
done
EOF
chmod +x "$DIR/ab.sh"
echo "stage-cuda-ab: $(du -sh "$DIR" | cut -f1) in $DIR; carry [\"$DIR\"]; run: bash $DIR/ab.sh" >&2
