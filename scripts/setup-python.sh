#!/usr/bin/env bash
# Create .venv at the repo root (git-ignored) with the pinned Python tools the fixture
# scripts need: torch (CPU use), transformers, tokenizers, safetensors, numpy, accelerate,
# sentencepiece; and, for the server tests, the openai client and pytest. Idempotent: a stamp
# keyed on the pins makes a re-run take well under 1 s.
#
#   scripts/setup-python.sh                 # default: torch without its CUDA wheels (~1.4 GB)
#   BITNET_TORCH_FULL=1 scripts/setup-python.sh
#                                           # torch with all its nvidia-* deps (~4.6 GB)
#   PYTHON=python3.11 scripts/setup-python.sh
#
# Why the default works: PyPI's torch wheel for Linux is a CUDA build whose libraries are
# linked against libcublas, libcudnn, ... (about 3 GB of nvidia-* wheels, plus triton).
# download.pytorch.org's CPU-only wheels are not reachable here. So all packages are
# installed with --no-deps from scripts/requirements-py.lock, the CUDA runtime (1 MB) for
# real, and scripts/torch_cpu_stubs.py puts small stub libraries (that abort if called)
# in place of the others. CPU results are those of the same libtorch_cpu.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
LOCK="$ROOT/scripts/requirements-py.lock"
PYTHON="${PYTHON:-python3}"
FULL="${BITNET_TORCH_FULL:-0}"
STAMP="$VENV/.bitnet-rs-stamp"

KEY="full=$FULL $(cat "$LOCK" "$0" "$ROOT/scripts/torch_cpu_stubs.py" | sha256sum | cut -c1-32)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$KEY" && -x "$VENV/bin/python" ]]; then
    exit 0
fi

log() { echo "[setup-python] $*" >&2; }
T0=$(date +%s)

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
export PIP_NO_INPUT=1

log "installing pinned packages (--no-deps) from scripts/requirements-py.lock"
"${PIP[@]}" install --no-deps -r "$LOCK"

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [[ "$FULL" == "1" ]]; then
    log "BITNET_TORCH_FULL=1: installing torch's CUDA dependencies for real"
    "$VENV/bin/python" - "$SITE" <<'EOF'
import sys
from pathlib import Path
lib = Path(sys.argv[1], "torch", "lib")
for p in lib.glob("*.so*"):
    if p.stat().st_size < (4 << 20) and b"bitnet-rs torch CPU stub" in p.read_bytes():
        p.unlink()
EOF
    "${PIP[@]}" install "torch==$(grep -E '^torch==' "$LOCK" | cut -d= -f3)"
else
    log "writing CUDA stub libraries into torch/lib"
    "$VENV/bin/python" "$ROOT/scripts/torch_cpu_stubs.py" "$SITE" >/dev/null
fi

log "smoke test"
TORCHDYNAMO_DISABLE=1 "$VENV/bin/python" - <<'EOF'
import torch, transformers, tokenizers, safetensors, numpy, accelerate, sentencepiece
import openai, pytest
from transformers import BitNetConfig, BitNetForCausalLM
assert not torch.cuda.is_available()
cfg = BitNetConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                   num_attention_heads=2, num_key_value_heads=1,
                   bos_token_id=0, eos_token_id=1)
m = BitNetForCausalLM(cfg).eval()
with torch.no_grad():
    y = m(torch.tensor([[1, 2, 3]])).logits
assert y.shape == (1, 3, 32) and torch.isfinite(y).all()
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"tokenizers {tokenizers.__version__}, numpy {numpy.__version__}")
EOF

echo "$KEY" > "$STAMP"
log "done in $(( $(date +%s) - T0 )) s; $(du -sh "$VENV" | cut -f1) in $VENV"
