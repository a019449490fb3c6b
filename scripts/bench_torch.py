#!/usr/bin/env python3
"""PyTorch/transformers reference speed for issue 11's side-by-side table: BitNetForCausalLM of
the 2B4T architecture (random weights, the same shapes as `bitnet fixture --shape 2b4t`), bf16,
on a GPU (or the CPU with a small shape, for a smoke run).

  python3 scripts/bench_torch.py                         # 2B4T shape on cuda:0, both variants
  python3 scripts/bench_torch.py --device cpu --shape tiny --pp 16 --tg 8    # smoke run

Two variants, one table row each:
- `bf16`: every linear layer a dense bf16 matmul (what `microsoft/bitnet-b1.58-2B-4T-bf16` runs
  in transformers without a quantization config: the cost of the same model as a dense one);
- `bitlinear`: transformers' own BitNet b1.58 arithmetic (`quant_method: bitnet`, online
  quantization: weights ternarized and activations int8-quantized on every call, as the shared
  KJV model's config does) - the exact model, at its dequantize-on-the-fly cost.

pp: one forward pass over a `--pp`-token prompt, best of `--reps`. tg: `--tg` greedy tokens after
a one-token prompt through `generate` (KV cache on, no early stop), best of `--reps`, tokens per
second of the decode steps (the first forward is timed apart and left out). CUDA timings
synchronize before reading the clock.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
from transformers import BitNetConfig, BitNetForCausalLM  # noqa: E402

SHAPES = {
    # microsoft/bitnet-b1.58-2B-4T (and crates/bitnet-models/src/fixture.rs `config_2b4t`)
    "2b4t": dict(
        hidden_size=2560,
        intermediate_size=6912,
        num_hidden_layers=30,
        num_attention_heads=20,
        num_key_value_heads=5,
        head_dim=128,
        vocab_size=128256,
        max_position_embeddings=4096,
    ),
    # the shared KJV model's shape: for a quick run on a CPU
    "tiny": dict(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=4096,
        max_position_embeddings=1024,
    ),
}


def build(shape: str, variant: str, device: str) -> BitNetForCausalLM:
    kw = dict(
        SHAPES[shape],
        hidden_act="relu2",
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
    )
    config = BitNetConfig(**kw)
    torch.manual_seed(42)
    with torch.device(device):
        model = BitNetForCausalLM(config)
    if variant == "bitlinear":
        # What from_pretrained does for a config with `quant_method: bitnet`: every linear layer
        # but the head becomes an AutoBitLinear (created on the meta device), then materialized
        # here with random weights (the values do not change the cost).
        from transformers import BitNetQuantConfig
        from transformers.integrations.bitnet import replace_with_bitnet_linear

        qc = BitNetQuantConfig(linear_class="autobitlinear", quantization_mode="online")
        model = replace_with_bitnet_linear(model, ["lm_head"], qc)
        model = model.to_empty(device=device)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02)
        if hasattr(model, "tie_weights"):
            model.tie_weights()
    return model.to(dtype=torch.bfloat16).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_pp(model, n: int, reps: int, device: str, vocab: int) -> float:
    ids = torch.randint(2, vocab, (1, n), device=device)
    best = float("inf")
    with torch.no_grad():
        for _ in range(reps + 1):  # the first is a warm-up
            sync(device)
            t0 = time.perf_counter()
            model(ids, use_cache=False)
            sync(device)
            best = min(best, time.perf_counter() - t0)
    return n / best


def bench_tg(model, n: int, reps: int, device: str) -> float:
    ids = torch.tensor([[5]], device=device)
    best = float("inf")
    with torch.no_grad():
        for _ in range(reps + 1):
            sync(device)
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            sync(device)
            t1 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=n + 1, min_new_tokens=n + 1, do_sample=False)
            sync(device)
            t2 = time.perf_counter()
            if out.shape[1] != n + 2:
                raise SystemExit(f"generate stopped after {out.shape[1] - 1} tokens, not {n + 1}")
            # the second call's first token costs what the whole first call did
            best = min(best, (t2 - t1) - (t1 - t0))
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="2b4t")
    ap.add_argument("--variants", default="bf16,bitlinear")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    name = torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else "cpu"
    print(f"transformers BitNetForCausalLM, shape {a.shape}, bf16, {name}, torch {torch.__version__}")
    print("| variant | weights GB | pp%d tokens/s | tg%d tokens/s |" % (a.pp, a.tg))
    print("|---|---:|---:|---:|")
    for v in a.variants.split(","):
        model = build(a.shape, v, a.device)
        gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
        pp = bench_pp(model, a.pp, a.reps, a.device, model.config.vocab_size)
        tg = bench_tg(model, a.tg, a.reps, a.device)
        print(f"| {v} | {gb:.2f} | {pp:.1f} | {tg:.1f} |", flush=True)
        del model
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
