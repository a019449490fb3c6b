#!/usr/bin/env bash
# Builds the Python bindings (crates/bitnet-py) into one abi3 wheel and installs it into .venv.
#
#   scripts/build-py.sh            # wheel in target/wheels/, installed into .venv
#
# The wheel is built through the package's own pyproject.toml (pip's PEP 517 path with the
# pinned maturin, release profile, Cargo.lock honoured), which is what
# `pip install ./crates/bitnet-py` does. A re-run with nothing changed takes a few seconds
# (cargo is incremental).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
WHEELS="$ROOT/target/wheels"
log() { echo "[build-py] $*" >&2; }

bash "$ROOT/scripts/setup-python.sh"
PIP=("$PY" -m pip --disable-pip-version-check -q)
export PIP_NO_INPUT=1
"${PIP[@]}" install --no-deps -r "$ROOT/scripts/requirements-build-py.lock"

T0=$(date +%s)
rm -rf "$WHEELS"
mkdir -p "$WHEELS"
# --no-build-isolation: the pinned maturin from .venv builds it (nothing is fetched at build
# time; its PEP 517 hooks run the `maturin` found on PATH). MATURIN_PEP517_ARGS: refuse to build with dependencies other than Cargo.lock's.
PATH="$ROOT/.venv/bin:$PATH" MATURIN_PEP517_ARGS="--locked" "${PIP[@]}" wheel --no-build-isolation --no-deps \
    -w "$WHEELS" "$ROOT/crates/bitnet-py"
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [[ ${#wheels[@]} -ne 1 || "${wheels[0]}" != *-cp39-abi3-*.whl ]]; then
    log "expected one cp39-abi3 wheel in $WHEELS, found: ${wheels[*]:-none}"
    exit 1
fi
"${PIP[@]}" install --no-deps --force-reinstall "${wheels[0]}"
"$PY" -c 'import bitnet, sys; print(f"[build-py] bitnet {bitnet.__version__} on Python {sys.version.split()[0]}", file=sys.stderr)'
log "$(basename "${wheels[0]}") built and installed in $(( $(date +%s) - T0 )) s"
