#!/usr/bin/env bash
# `cargo install` of the CLI, then `bitnet run` without -m from an empty directory with an empty
# HOME: the default model built into the binary must give the reference greedy text
# (../shared/models/bitnet-b1.58-kjv/reference/reference.json, compared exactly). It reuses
# `cargo test`'s build (--profile test --target-dir target), so after that step it costs a link.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(mktemp -d)
work=$(mktemp -d)
trap 'rm -rf "$root" "$work"' EXIT
cargo install --path crates/bitnet-cli --root "$root" --profile test --target-dir target \
    --locked --offline --quiet
want=$(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print(next(p["greedy_text"] for p in r["prompts"] if p["name"] == "in_the_beginning"))' \
    ../shared/models/bitnet-b1.58-kjv/reference/reference.json)
got=$(cd "$work" && env -u BITNET_MODEL -u BITNET_CONFIG HOME="$work" \
    "$root/bin/bitnet" run --greedy -n 32 -q --no-echo -p "In the beginning")
if [ "$got" != "$want" ]; then
    printf 'installed bitnet printed:\n%s\nexpected:\n%s\n' "$got" "$want" >&2
    exit 1
fi
echo "installed bitnet (run from $work) printed the reference greedy text"
