"""The Python binding generates what the `bitnet` CLI generates, on the same model and threads:
greedy and seeded sampling, plain prompts and the chat template, prompts beyond the reference
set and continuations longer than its 32 tokens.

The CLI prints text, so the check is that the binding's token ids decode to exactly the CLI's
output (`run --no-echo` prints the generated text and a newline)."""
from __future__ import annotations

import subprocess

import pytest

from conftest import DEFAULT_MODEL, ROOT, THREADS, bitnet_binary

PROMPTS = [
    "In the beginning",
    "And the LORD spake unto Moses, saying",
    "Blessed are the meek: for they",
    "The LORD is my shepherd; I shall not want.",
]


def cli(*args: str) -> str:
    cmd = [str(bitnet_binary()), "run", "-m", str(DEFAULT_MODEL), "-t", str(THREADS),
           "-q", "--no-echo", *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("\n")
    return out.stdout[:-1]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_cli(model, prompt):
    want = cli("--greedy", "-n", "64", "-p", prompt)
    c = model.complete(prompt, max_tokens=64, temperature=0)
    assert model.detokenize(c.tokens, skip_special=True) == want
    assert c.text == want


@pytest.mark.parametrize("seed", [1, 7])
def test_seeded_sampling_equals_cli(model, seed):
    opts = dict(temperature=0.9, top_k=50, top_p=0.9, min_p=0.02, seed=seed)
    want = cli("--temp", "0.9", "--top-k", "50", "--top-p", "0.9", "--min-p", "0.02",
               "--seed", str(seed), "-n", "48", "-p", PROMPTS[1])
    assert model.generate(PROMPTS[1], max_tokens=48, **opts) == want


def test_chat_template_equals_cli(model):
    want = cli("--greedy", "-n", "48", "--chat-template", "-p", "Who made the heaven and the earth?")
    got = model.chat([{"role": "user", "content": "Who made the heaven and the earth?"}],
                     max_tokens=48, temperature=0)
    assert got == want


def test_stop_string_equals_cli(model):
    want = cli("--greedy", "-n", "64", "--stop", "God", "-p", PROMPTS[0])
    c = model.complete(PROMPTS[0], max_tokens=64, temperature=0, stop="God")
    assert c.text == want and c.finish_reason == "stop"
    assert "God" not in c.text
