"""bitnet against transformers' BitNetForCausalLM on the shared HF folder, in the same process, on
prompts outside the reference set: token ids, logits at every position of prompt plus greedy
continuation (the largest difference within CONTINUATION_MAX_TOL, the mean within MEAN_TOL), and that
transformers' greedy choice at every step is the token we generated.

transformers runs float32 eager (TORCHDYNAMO_DISABLE=1, as the shared reference: its compiled
quantizer differs by an ulp, see the model's README)."""
from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, BitNetForCausalLM  # noqa: E402

import bitnet  # noqa: E402
from conftest import KJV, THREADS  # noqa: E402

PROMPTS = [
    "For God so loved the world, that he gave",
    "Now the serpent was more subtil than any beast",
    "Vanity of vanities, saith the Preacher",
]
NEW_TOKENS = 24
# Logits over whole sequences: the README's 0.15 for the largest difference. A rounding flip of
# an int8 activation at one position (measured: 0.05-0.15) reaches every later position through
# attention, so over a continuation the mean is ~1e-2 (measured 0.010-0.013) where it is ~1e-6
# before the first flip; 0.05 still fails anything systematic (a wrong RoPE, norm or scale moves
# logits by whole units).
MEAN_TOL = 0.05
# The largest difference over a continuation is one flip's effect, and which activations flip
# depends on both sides' float rounding, transformers' included (its BLAS picks kernels by CPU):
# 0.05-0.15 measured on one machine, 0.158 on an AVX-512 Xeon ("Vanity of vanities", 2026-12-03).
# The README's 0.15 holds for the fixed reference files (test_reference.py); here the mean above
# and transformers' greedy agreement below are the systematic checks, and 0.25 still fails a
# wrong RoPE, norm or scale by a wide margin.
CONTINUATION_MAX_TOL = 0.25


@pytest.fixture(scope="module")
def hf():
    torch.set_num_threads(THREADS)
    tok = AutoTokenizer.from_pretrained(str(KJV))
    model = BitNetForCausalLM.from_pretrained(str(KJV), dtype=torch.float32).eval()
    return tok, model


@pytest.fixture(scope="module")
def ours() -> bitnet.Model:
    return bitnet.Model(KJV, threads=THREADS, kv_type="f32")


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_logits_and_greedy_path_match_transformers(hf, ours, prompt):
    tok, model = hf
    ids = tok(prompt)["input_ids"]
    assert ours.tokenize(prompt) == ids
    gen = ours.complete(ids, max_tokens=NEW_TOKENS, temperature=0).tokens
    assert ours.detokenize(gen, skip_special=True) == tok.decode(gen, skip_special_tokens=True)

    # One teacher-forced pass over the prompt and our continuation: the logits at every position,
    # and whether transformers' greedy choice at each step is the token we generated (so that
    # its own greedy decoding would take the same path).
    path = ids + gen
    want = hf_logits(model, path)
    got = ours.logits(path)
    assert got.shape == want.shape
    diff = np.abs(got - want)
    print(f"{prompt!r}: {len(path)} positions, |logit diff| max {diff.max():.2e} "
          f"mean {diff.mean():.2e}")
    assert diff.max() <= CONTINUATION_MAX_TOL
    assert diff.mean() <= MEAN_TOL
    for step, token in enumerate(gen):
        row = len(ids) - 1 + step
        best = int(want[row].argmax())
        if best != token:
            # A near tie that the measured difference at this position explains.
            margin = want[row, best] - want[row, token]
            assert margin <= 2 * diff[row].max(), (step, token, best, margin)
    if len(gen) < NEW_TOKENS:
        # We stopped at an end-of-sequence token: transformers' choice there too.
        assert int(want[-1].argmax()) in ours.eos_ids
