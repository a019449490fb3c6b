"""Bad input through the Python API raises an exception that says what is wrong, never crashes:
wrong types (TypeError), values the engine rejects (bitnet.InputError, also a ValueError),
missing, corrupt or truncated model files (bitnet.ModelError), a prompt longer than the context."""
from __future__ import annotations

import os

import pytest

import bitnet
from conftest import DEFAULT_MODEL, THREADS

LONG = "In the beginning God created the heaven and the earth. " * 4


def test_hierarchy():
    assert issubclass(bitnet.ModelError, bitnet.BitnetError)
    assert issubclass(bitnet.InputError, bitnet.BitnetError)
    assert issubclass(bitnet.InputError, ValueError)
    assert issubclass(bitnet.BitnetError, Exception)
    assert not issubclass(bitnet.ModelError, ValueError)
    assert bitnet.InputError.__module__ == "bitnet"


def test_missing_model_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(bitnet.ModelError, match="nope.gguf"):
        bitnet.Model(missing, threads=THREADS)


@pytest.mark.parametrize("content", [b"", b"GGUF", b"not a model at all\n" * 100,
                                     b"GGUF\x03\x00\x00\x00" + b"\xff" * 64])
def test_corrupt_model_file(tmp_path, content):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(bitnet.ModelError) as e:
        bitnet.Model(bad, threads=THREADS)
    assert str(e.value)
    with pytest.raises(bitnet.ModelError):
        bitnet.Model.from_bytes(content, threads=THREADS)


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_truncated_model_file(tmp_path, fraction):
    data = DEFAULT_MODEL.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(bitnet.ModelError):
        bitnet.Model(cut, threads=THREADS)


def test_folder_without_model(tmp_path):
    with pytest.raises(bitnet.ModelError):
        bitnet.Model(tmp_path, threads=THREADS)


@pytest.mark.parametrize("kwargs, match", [
    (dict(threads=0), "threads"),
    (dict(threads=-2), "threads"),
    (dict(ctx=0), "context"),
    (dict(ctx=1 << 40), "KV cache"),
    (dict(kv_type="q4"), "kv_type"),
])
def test_bad_model_settings(kwargs, match):
    kwargs.setdefault("threads", THREADS)
    with pytest.raises(bitnet.InputError, match=match):
        bitnet.Model(DEFAULT_MODEL, **kwargs)


@pytest.mark.parametrize("call", [
    lambda: bitnet.Model(123),
    lambda: bitnet.Model(DEFAULT_MODEL, threads="two"),
    lambda: bitnet.Model(DEFAULT_MODEL, kv_type=16),
    lambda: bitnet.Model.from_bytes("a str, not bytes"),
])
def test_wrong_types_at_load(call):
    with pytest.raises(TypeError):
        call()


@pytest.mark.parametrize("call, match", [
    (lambda m: m.generate(123), "prompt"),
    (lambda m: m.generate(None), "prompt"),
    (lambda m: m.generate([1, "x"]), "token ids"),
    (lambda m: m.generate("x", temperature="hot"), "temperature"),
    (lambda m: m.generate("x", max_tokens=2.5), "max_tokens"),
    (lambda m: m.generate("x", stop=5), "stop"),
    (lambda m: m.generate("x", ignore_eos="yes"), "ignore_eos"),
    (lambda m: m.generate("x", temprature=0), "temprature"),
    (lambda m: m.stream("x", bogus=1), "bogus"),
    (lambda m: m.chat([{"role": "user", "content": "hi"}], add_bos=True), "add_bos"),
    (lambda m: m.tokenize(5), None),
    (lambda m: m.detokenize("abc"), "token ids"),
    (lambda m: m.logits("In the beginning"), "token ids"),
    (lambda m: m.logits([0, 1.5]), "token ids"),
    (lambda m: m.chat("hello"), "messages"),
    (lambda m: m.chat({"role": "user", "content": "hi"}), "messages"),
    (lambda m: m.chat([{"role": "user"}]), r"messages\[0\]"),
    (lambda m: m.chat([{"role": "user", "content": 3}]), r"messages\[0\]"),
    (lambda m: m.chat(["user: hi"]), r"messages\[0\]"),
    (lambda m: m.perplexity(b"bytes"), None),
])
def test_wrong_types(model, call, match):
    with pytest.raises(TypeError, match=match):
        call(model)


@pytest.mark.parametrize("call, match", [
    (lambda m: m.generate("x", temperature=-1), "temperature"),
    (lambda m: m.generate("x", temperature=float("nan")), "temperature"),
    (lambda m: m.generate("x", top_p=0), "top_p"),
    (lambda m: m.generate("x", min_p=2), "min_p"),
    (lambda m: m.generate("x", top_k=-1), "top_k"),
    (lambda m: m.generate("x", max_tokens=-5), "max_tokens"),
    (lambda m: m.generate("x", seed=-1), "seed"),
    (lambda m: m.generate("x", repeat_penalty=0), "repeat_penalty"),
    (lambda m: m.generate([]), "empty prompt"),
    (lambda m: m.stream([]), "empty prompt"),
    (lambda m: m.generate([0, 4096]), "4096"),
    (lambda m: m.generate([0, -3]), "-3"),
    (lambda m: m.logits([0, 99999]), "99999"),
    (lambda m: m.logits([]), "empty prompt"),
    (lambda m: m.detokenize([0, 1 << 31]), str(1 << 31)),
    (lambda m: m.perplexity(""), "no tokens"),
    (lambda m: m.perplexity("text", chunk=0), "chunk"),
])
def test_bad_values(model, call, match):
    with pytest.raises(bitnet.InputError, match=match) as e:
        call(model)
    assert isinstance(e.value, ValueError)


def test_prompt_longer_than_context():
    small = bitnet.Model(DEFAULT_MODEL, threads=THREADS, ctx=16)
    n = len(small.tokenize(LONG))
    assert n > 16
    msg = f"the prompt has {n} tokens but the context holds 16"
    with pytest.raises(bitnet.InputError, match=msg):
        small.generate(LONG)
    with pytest.raises(bitnet.InputError, match=msg):
        small.stream(LONG)
    with pytest.raises(bitnet.InputError, match=msg):
        small.logits(small.tokenize(LONG))
    with pytest.raises(bitnet.InputError):
        small.chat([{"role": "user", "content": LONG}])
    # A prompt that fits still works afterwards; generation stops when the context is full.
    c = small.complete("In the beginning", max_tokens=64, temperature=0)
    assert c.finish_reason == "context_full"
    # Every token but the last sampled one went through the 16-position cache.
    assert len(small.tokenize("In the beginning")) + len(c.tokens) == 16 + 1


def test_chat_without_template(tmp_path):
    # A copy of the HF folder whose tokenizer_config has no chat template.
    import json

    from conftest import KJV

    folder = tmp_path / "kjv"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "model.safetensors"):
        os.symlink(KJV / name, folder / name)
    cfg = json.loads((KJV / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    m = bitnet.Model(folder, threads=THREADS)
    assert m.chat_template is None
    with pytest.raises(bitnet.BitnetError, match="no chat template"):
        m.chat([{"role": "user", "content": "hi"}])


def test_errors_leave_the_model_usable(model):
    for bad in ([], [0, 99999]):
        with pytest.raises(bitnet.InputError):
            model.generate(bad)
    assert model.generate("In the beginning", max_tokens=4, temperature=0)
