"""Shared fixtures of the `bitnet` module's tests.

usage: .venv/bin/python -m pytest -q crates/bitnet-py/tests     (after scripts/build-py.sh;
scripts/test.sh runs both)

Models: the committed default model (models/, bitnet.cpp's I2_S GGUF) and the shared KJV model
(../shared/models/bitnet-b1.58-kjv: its HF folder, its own I2_S GGUF and reference outputs; its
README states the tolerances used here).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import bitnet

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MODEL = ROOT / "models" / "bitnet-b1.58-kjv-i2_s.gguf"
KJV = ROOT.parent / "shared" / "models" / "bitnet-b1.58-kjv"
KJV_GGUF = KJV / "gguf" / "bitnet-b1.58-kjv-i2_s.gguf"
THREADS = 2

# The shared model's README: compare token ids and greedy tokens exactly, logits within about
# 0.15 absolute (f16 KV cache, rounding flips of int8 activations).
LOGIT_TOL = 0.15
# With an f32 KV cache the engine's math is the reference's up to summation order (the Rust
# tests hold the lossless forms to this too; measured ~1e-5).
EXACT_TOL = 0.01


def reference() -> dict:
    return json.loads((KJV / "reference" / "reference.json").read_text())


def ref_prompt(name: str) -> dict:
    return next(p for p in reference()["prompts"] if p["name"] == name)


@pytest.fixture(scope="session")
def model() -> bitnet.Model:
    """The default model, shared by tests that do not depend on a fresh cache."""
    return bitnet.Model(DEFAULT_MODEL, threads=THREADS)


def bitnet_binary() -> Path:
    """The CLI (BITNET_BIN, else what `cargo test` / `cargo build` left in target/)."""
    if os.environ.get("BITNET_BIN"):
        return Path(os.environ["BITNET_BIN"])
    for p in (ROOT / "target" / "debug" / "bitnet", ROOT / "target" / "release" / "bitnet"):
        if p.exists():
            return p
    pytest.fail("no bitnet binary: build it with `cargo build -p bitnet-cli` or set BITNET_BIN")
