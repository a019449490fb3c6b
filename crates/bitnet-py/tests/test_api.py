"""The Python API's behaviour beyond the reference numbers: properties, round trips, streaming and
cancelling, stop strings, seeds, cache reuse, the GIL released while computing, several threads
on one model, loading from bytes, and type stubs that describe the module."""
from __future__ import annotations

import ast
import importlib.metadata
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

import bitnet
from conftest import DEFAULT_MODEL, THREADS, ref_prompt

PROMPT = "In the beginning"
GREEDY = dict(temperature=0)


def test_properties(model):
    assert model.vocab_size == 4096
    assert model.ctx == 1024  # the model's trained context
    assert model.threads == THREADS
    assert model.bos_id == 0
    assert set(model.eos_ids) == {1, 4}
    assert "Assistant" in model.chat_template
    assert "threads=2" in repr(model) and "ctx=1024" in repr(model)
    assert bitnet.__version__


def test_tokenize_round_trip(model):
    text = "And God said, Let there be light: and there was light.\n"
    ids = model.tokenize(text)
    assert ids[0] == model.bos_id
    assert model.tokenize(text, add_bos=False) == ids[1:]
    assert model.detokenize(ids) == "<|begin_of_text|>" + text
    assert model.detokenize(ids, skip_special=True) == text
    assert model.detokenize(np.array(ids, dtype=np.int32)) == model.detokenize(ids)


def test_logits_shapes(model):
    ids = ref_prompt("jesus_said")["token_ids"]
    all_rows = model.logits(ids)
    last = model.logits(ids, last_only=True)
    assert all_rows.shape == (len(ids), model.vocab_size) and all_rows.dtype == np.float32
    assert last.shape == (model.vocab_size,)
    # Only the LM head's summation order differs between one row and a tile of rows (the
    # engine's README: within 1e-4).
    assert np.abs(all_rows[-1] - last).max() <= 1e-4
    assert model.logits(tuple(ids), last_only=True).shape == last.shape


def test_generate_complete_and_stream_agree(model):
    text = model.generate(PROMPT, max_tokens=40, **GREEDY)
    c = model.complete(PROMPT, max_tokens=40, **GREEDY)
    s = model.stream(PROMPT, max_tokens=40, **GREEDY)
    assert s.completion is None
    pieces = list(s)
    assert c.text == text == "".join(pieces)
    assert s.completion.tokens == c.tokens and len(c.tokens) == 40
    assert c.finish_reason == "length" and s.completion.finish_reason == "length"
    assert c.prompt_seconds >= 0 and c.generation_seconds > 0
    assert list(s) == []  # exhausted


def test_leaving_a_stream_early_stops_it(model):
    s = model.stream(PROMPT, max_tokens=500, ignore_eos=True, **GREEDY)
    first = [next(s), next(s)]
    assert all(isinstance(p, str) and p for p in first)
    s.close()
    s.close()
    assert list(s) == []
    assert s.completion is None
    for piece in model.stream(PROMPT, max_tokens=500, ignore_eos=True, **GREEDY):
        break
    # The model still gives the same text, streamed or not.
    assert model.generate(PROMPT, max_tokens=8, **GREEDY) == "".join(
        list(model.stream(PROMPT, max_tokens=8, **GREEDY)))


def test_stop_strings(model):
    full = model.generate(PROMPT, max_tokens=32, **GREEDY)
    assert "LORD" in full
    c = model.complete(PROMPT, max_tokens=32, stop=["LORD", "never there"], **GREEDY)
    assert c.finish_reason == "stop"
    assert c.text == full[: full.index("LORD")]


def test_seeds(model):
    opts = dict(max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = model.generate(PROMPT, seed=3, **opts)
    assert a == model.generate(PROMPT, seed=3, **opts)
    others = {model.generate(PROMPT, seed=s, **opts) for s in range(4, 10)}
    assert len(others | {a}) > 1


def test_eos_ends_generation(model):
    # "bos_only" is the one reference prompt that does not run on to 32 tokens without an
    # end-of-turn: generation past an EOS is possible only with ignore_eos.
    c = model.complete([0], max_tokens=2000, **GREEDY)
    assert c.finish_reason in ("eos", "length", "context_full")
    if c.finish_reason == "eos":
        longer = model.complete([0], max_tokens=len(c.tokens) + 5, ignore_eos=True, **GREEDY)
        assert len(longer.tokens) == len(c.tokens) + 5


def test_cache_reuse_gives_the_same_tokens():
    m = bitnet.Model(DEFAULT_MODEL, threads=THREADS)
    first = m.complete(PROMPT, max_tokens=16, **GREEDY)
    prompt = m.tokenize(PROMPT) + first.tokens + m.tokenize(" And", add_bos=False)
    again = m.complete(prompt, max_tokens=16, **GREEDY)
    # Only what follows the cached tokens was computed ...
    assert again.prompt_tokens < len(prompt)
    # ... and the result is a fresh model's.
    fresh = bitnet.Model(DEFAULT_MODEL, threads=THREADS).complete(prompt, max_tokens=16, **GREEDY)
    assert again.tokens == fresh.tokens and fresh.prompt_tokens == len(prompt)


def test_from_bytes_equals_file(model):
    m = bitnet.Model.from_bytes(DEFAULT_MODEL.read_bytes(), threads=THREADS)
    assert m.generate(PROMPT, max_tokens=32, **GREEDY) == ref_prompt("in_the_beginning")["greedy_text"]
    ids = ref_prompt("jesus_said")["token_ids"]
    assert np.array_equal(m.logits(ids), model.logits(ids))


@pytest.mark.parametrize("work", ["generate", "logits", "perplexity", "load"])
def test_gil_is_released_while_computing(model, work):
    """With a 100 s switch interval the interpreter never takes the GIL from a thread by itself: the
    main thread runs Python code while the worker is inside the engine call only if that call
    released the GIL. The worker raises `done` right after the call, so the main thread seeing
    it unset proves it ran during the call."""
    ids = model.tokenize("And God said, Let there be light: and there was light. " * 8)
    calls = {
        "generate": lambda: model.generate(PROMPT, max_tokens=64, **GREEDY),
        "logits": lambda: model.logits(ids),
        "perplexity": lambda: model.perplexity("And God said, Let there be light.\n" * 40),
        "load": lambda: bitnet.Model(DEFAULT_MODEL, threads=THREADS),
    }
    started, done, seen = threading.Event(), [False], []

    def worker() -> None:
        started.set()
        calls[work]()
        done[0] = True

    old = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        t = threading.Thread(target=worker)
        t.start()
        started.wait()  # blocks, so the worker runs; it releases the GIL only inside the call
        seen.append(done[0])
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert seen == [False] and done[0]


def test_threads_share_a_model(model):
    prompts = ["In the beginning", "And Jesus said unto him", "Blessed are the meek", "The LORD"]
    want = {p: model.generate(p, max_tokens=24, **GREEDY) for p in prompts}
    got: dict[str, list[str]] = {p: [] for p in prompts}

    def run(p: str) -> None:
        for _ in range(2):
            got[p].append(model.generate(p, max_tokens=24, **GREEDY))

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {p: [w, w] for p, w in want.items()}


def stub_names(tree: ast.Module) -> dict[str, set[str]]:
    """Classes of the stub and the public names each defines (module level under "")."""
    out: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[""].add(node.name)
            out[node.name] = {n.name for n in node.body
                              if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
        elif isinstance(node, (ast.AnnAssign, ast.Assign)):
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            if isinstance(target, ast.Name) and not target.id[0].isupper():
                out[""].add(target.id)
    return out


def test_stubs_describe_the_module():
    # maturin installs the extension as the package bitnet/, bitnet.pyi as its __init__.pyi.
    files = {str(f): f for f in importlib.metadata.files("bitnet-rs") or []}
    assert "bitnet/py.typed" in files and "bitnet/__init__.pyi" in files
    tree = ast.parse(Path(files["bitnet/__init__.pyi"].locate()).read_text())
    stubs = stub_names(tree)
    # (The package also holds its extension submodule, bitnet.bitnet, which is no API.)
    runtime = {"": {n for n in dir(bitnet) if not n.startswith("_")
                    and not isinstance(getattr(bitnet, n), types.ModuleType)} | {"__version__"}}
    for cls in stubs[""] & runtime[""]:
        obj = getattr(bitnet, cls)
        if isinstance(obj, type) and not issubclass(obj, BaseException):
            runtime[cls] = {n for n in vars(obj) if not n.startswith("_")}
    assert stubs[""] == runtime[""]
    for cls, names in stubs.items():
        if cls:
            assert names == runtime.get(cls, set()), cls


def test_docstrings(model):
    for name in ("generate", "stream", "chat", "logits", "perplexity", "tokenize", "complete"):
        assert getattr(bitnet.Model, name).__doc__, name
    assert "GGUF" in bitnet.Model.__doc__
    assert "temperature" in bitnet.Model.generate.__doc__
