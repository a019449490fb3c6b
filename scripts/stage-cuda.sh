#!/usr/bin/env bash
# Stage the GPU tests and benchmarks for a machine that has a GPU but no Rust toolchain (the lent
# H200): builds here, copies the stripped binaries, the shared KJV model's GGUF files and
# reference outputs, and a runner into DIR (default device-bin, git-ignored), and prints its size.
#
#   scripts/stage-cuda.sh [DIR]          # here; then carry DIR (docs/cuda.md)
#   bash DIR/check.sh [quick]            # there: GPU tests, then the speed runs (quick: tests only)
#
# The test binaries' names carry a hash (target/release/deps/cuda_forward-<hash>); cargo's JSON
# messages say which, so the right ones are copied even with older builds lying around.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-device-bin}"
KJV=../shared/models/bitnet-b1.58-kjv
[[ -f "$KJV/reference/reference.json" ]] || { echo "stage-cuda: no shared KJV model at $KJV" >&2; exit 1; }
# (with a trailing slash: .gitignore's /device-bin*/ matches folders, and DIR may not exist yet)
if ! git check-ignore -q "${DIR%/}/"; then
    echo "stage-cuda: $DIR is not git-ignored (the device run copies the tracked tree)" >&2
    exit 1
fi

# (cargo's JSON on stdout; its progress and any build error still reach the terminal)
tests=$(cargo test --release --locked -p bitnet-cuda --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
')
cargo build --release --locked -p bitnet-cuda --examples
cargo build --release --locked -p bitnet-cli

rm -rf "$DIR"
mkdir -p "$DIR/shared/models/bitnet-b1.58-kjv/reference" "$DIR/shared/models/bitnet-b1.58-kjv/gguf"
while read -r name exe; do
    [[ "$name" == cuda_ops || "$name" == cuda_forward ]] && cp "$exe" "$DIR/$name"
done <<<"$tests"
for t in cuda_ops cuda_forward; do
    [[ -f "$DIR/$t" ]] || { echo "stage-cuda: test binary $t not built" >&2; exit 1; }
done
cp target/release/examples/cuda_generate target/release/examples/cuda_bench target/release/bitnet "$DIR/"
strip "$DIR"/cuda_ops "$DIR"/cuda_forward "$DIR"/cuda_generate "$DIR"/cuda_bench "$DIR"/bitnet
# xz-packed (38 -> ~12 MB), so the folder leaves room in a call's 64 MiB for A/B binaries
# (scripts/stage-cuda-ab.sh); check.sh unpacks them
xz -T0 -6 "$DIR"/cuda_ops "$DIR"/cuda_forward "$DIR"/cuda_generate "$DIR"/cuda_bench "$DIR"/bitnet
cp scripts/unpack-xz.py "$DIR/"
D="$DIR/shared/models/bitnet-b1.58-kjv"
cp "$KJV"/gguf/*.gguf "$D/gguf/"
cp "$KJV/reference/reference.json" "$D/reference/"
cp "$KJV"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json} "$D/"

cat >"$DIR/check.sh" <<'EOF'
#!/usr/bin/env bash
# On the GPU machine, from the repository root with this folder carried: the GPU tests (a missing
# GPU is a failure), then whole-model speed (a 2B4T-shaped fixture made in memory) and
# `bitnet bench` on the same shape as a file. `quick`: the tests only.
set -uo pipefail
B="$(cd "$(dirname "$0")" && pwd)"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export BITNET_REQUIRE_CUDA=1 BITNET_SHARED_DIR="$B/shared"
# The binaries come xz-packed (unpack-xz.py: the GPU machine may have no xz).
python3 "$B/unpack-xz.py" "$B"
rc=0
"$B/cuda_ops" --include-ignored 2>&1 | grep -E "^test |test result|panicked" || rc=1
"$B/cuda_forward" --test-threads 1 --nocapture 2>&1 |
    grep -E "^test |test result|panicked|max \||differ|flash vs" || rc=1
[[ "${1:-}" == quick ]] && exit $rc
"$B/cuda_generate" --head q8_0 --pp 512 --tg 128 --reps 3 --batch 16,64 2>&1 | tail -12
F="${TMPDIR:-/tmp}/2b4t-i2_s-q8_0.gguf"
"$B/bitnet" fixture "$F" --shape 2b4t --arch bitnet-b1.58 --type i2_s --embed q8_0 --seed 42 >/dev/null
"$B/bitnet" bench -m "$F" --device cuda -p 512 -n 128 -r 3 --parallel 1,16,64 2>&1 | tail -9
rm -f "$F"
exit $rc
EOF
chmod +x "$DIR/check.sh"
du -sh "$DIR"
echo "carry [\"$DIR\"]; run: bash $DIR/check.sh   (the tracked tree plus carried files must stay under 64 MiB)"
