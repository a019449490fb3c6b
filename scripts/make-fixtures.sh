#!/usr/bin/env bash
# One entry point for CI and developers: everything the fixture-based tests need.
#
#   scripts/make-fixtures.sh [OUT]            # default OUT = target/fixtures
#       .venv (scripts/setup-python.sh), then OUT/hf (scripts/make_hf_fixtures.py)
#   LLAMACPP=1 scripts/make-fixtures.sh [OUT]
#       also builds llama.cpp (scripts/build-llama-cpp.sh, ~7 min on 2 cores the first time)
#       and writes OUT/llamacpp (scripts/make_llamacpp_fixtures.py)
#
# Idempotent: each step has a stamp keyed on its inputs; a re-run takes about a second.
# Ends with tests/fixtures-py/check_fixtures.py ('N passed, M failed').
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/target/fixtures}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="$ROOT/.venv/bin/python"

bash "$ROOT/scripts/setup-python.sh"

key() { cat "$@" "$ROOT/scripts/requirements-py.lock" | sha256sum | cut -c1-32; }

HF_KEY="$(key "$ROOT/scripts/make_hf_fixtures.py")"
if [[ "$(cat "$OUT/hf/.stamp" 2>/dev/null)" != "$HF_KEY" ]]; then
    rm -rf "$OUT/hf"
    "$PY" "$ROOT/scripts/make_hf_fixtures.py" --out "$OUT/hf"
    echo "$HF_KEY" > "$OUT/hf/.stamp"
fi

if [[ "${LLAMACPP:-0}" == "1" ]]; then
    bash "$ROOT/scripts/build-llama-cpp.sh"
    LC_KEY="$HF_KEY $(key "$ROOT/scripts/make_llamacpp_fixtures.py" "$ROOT/third_party/build/.stamp-llama-cpp")"
    if [[ "$(cat "$OUT/llamacpp/.stamp" 2>/dev/null)" != "$LC_KEY" ]]; then
        rm -rf "$OUT/llamacpp"
        "$PY" "$ROOT/scripts/make_llamacpp_fixtures.py" --out "$OUT" --hf "$OUT/hf"
        echo "$LC_KEY" > "$OUT/llamacpp/.stamp"
    fi
fi

"$PY" "$ROOT/tests/fixtures-py/check_fixtures.py" "$OUT"
