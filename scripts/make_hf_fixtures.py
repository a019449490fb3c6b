#!/usr/bin/env python3
"""Tiny random-weight transformers BitNetForCausalLM fixtures with reference outputs.

usage: .venv/bin/python scripts/make_hf_fixtures.py --out target/fixtures/hf [--models a,b]

For each model NAME it writes
  OUT/NAME/config.json, model.safetensors, generation_config.json
        bf16 master weights, as save_pretrained writes them; quantization_config
        = bitnet / autobitlinear / online (transformers ternarizes on load)
  OUT/NAME/packed/config.json, model.safetensors
        the same model packed the way microsoft/bitnet-b1.58-2B-4T is stored: every
        BitLinear weight is uint8 [out/4, in] made by transformers' own
        integrations.bitnet.pack_weights, plus `<layer>.weight_scale` (float32, shape [1],
        MULTIPLIED by AutoBitLinear: = 1/(1/mean|W|), i.e. mean|W| up to 1 ulp);
        quantization_mode = offline. Embeddings, norms and an untied lm_head stay bf16.
  OUT/NAME/reference.json
        transformers' logits for 2 random token sequences (see the README for the keys)

Deterministic: fixed seeds, CPU, float32 compute, eager attention, TORCHDYNAMO_DISABLE=1
(transformers wraps its quantizers in torch.compile otherwise, which changes rounding).
"""
from __future__ import annotations

import os

os.environ["TORCHDYNAMO_DISABLE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import BitNetConfig, BitNetForCausalLM, GenerationConfig
from transformers.integrations.bitnet import pack_weights

FORMAT = "bitnet-rs-hf-fixture/1"
N_NEW = 12
SEQ_LENS = (7, 23)
MIN_MARGIN = 0.25
MAX_TRIES = 400
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

# Awkward sizes on purpose: nothing is a multiple of 128 or 256 except where noted.
MODELS = {
    # microsoft/bitnet-b1.58-2B-4T style: squared ReLU, GQA, tied embeddings, theta 500000.
    "relu2-gqa": dict(
        seed=1001, hidden_act="relu2", hidden_size=160, num_attention_heads=5,
        num_key_value_heads=1, head_dim=32, intermediate_size=200, num_hidden_layers=3,
        vocab_size=300, tie_word_embeddings=True, rope_theta=500000.0,
        max_position_embeddings=256, rms_norm_eps=1e-5),
    # 1bitLLM (bitnet_b1_58-*) family as transformers expresses it: gated SiLU, MHA,
    # untied lm_head, theta 10000.
    "silu-mha": dict(
        seed=2002, hidden_act="silu", hidden_size=192, num_attention_heads=6,
        num_key_value_heads=6, head_dim=32, intermediate_size=344, num_hidden_layers=2,
        vocab_size=333, tie_word_embeddings=False, rope_theta=10000.0,
        max_position_embeddings=256, rms_norm_eps=1e-5),
    # What llama.cpp's `bitnet` architecture can run (see make_llamacpp_fixtures.py): SiLU,
    # TIED head (llama.cpp has no output.weight for bitnet), rows multiple of 256 so TQ1_0 /
    # TQ2_0 apply (hidden 256, intermediate 512), GQA 4/2, head_dim 64.
    "silu-tied": dict(
        seed=3003, hidden_act="silu", hidden_size=256, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, intermediate_size=512, num_hidden_layers=2,
        vocab_size=320, tie_word_embeddings=True, rope_theta=10000.0,
        max_position_embeddings=256, rms_norm_eps=1e-5),
}

QUANT_ONLINE = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                "quantization_mode": "online", "modules_to_not_convert": None,
                "use_rms_norm": False, "rms_norm_eps": 1e-5}


def f32(x: float) -> float:
    """Shortest decimal that round-trips the float32 value (keeps the JSON small)."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-")) if np.isfinite(x) else x


def rows(t: torch.Tensor) -> list[list[float]]:
    a = t.detach().to(torch.float32).cpu().numpy()
    return [[f32(v) for v in r] for r in a]


def make_config(spec: dict) -> BitNetConfig:
    cfg = BitNetConfig(
        vocab_size=spec["vocab_size"], hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"], num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"], head_dim=spec["head_dim"],
        hidden_act=spec["hidden_act"], max_position_embeddings=spec["max_position_embeddings"],
        rms_norm_eps=spec["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": spec["rope_theta"]},
        tie_word_embeddings=spec["tie_word_embeddings"], attention_bias=False,
        attention_dropout=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=None,
        initializer_range=0.02, use_cache=True,
    )
    cfg.architectures = ["BitNetForCausalLM"]
    return cfg


def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Explicit, transformers-version-independent init (fixed order, own generator)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                # non-trivial norms: around 1, spread 0.25
                p.copy_(1.0 + 0.25 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
            elif name.endswith(".weight"):
                # different std per matrix, so absmean scales differ
                std = 0.02 + 0.06 * torch.rand((), generator=g).item()
                p.copy_(std * torch.randn(p.shape, generator=g))
            else:
                raise RuntimeError(f"unexpected parameter {name}")


def fix_config_json(path: Path, spec: dict, quant: dict) -> None:
    d = json.loads(path.read_text())
    d["quantization_config"] = quant
    # legacy top-level keys that other loaders (and llama.cpp's converter) read
    d["rope_theta"] = spec["rope_theta"]
    d["head_dim"] = spec["head_dim"]
    d["torch_dtype"] = "bfloat16"
    d["dtype"] = "bfloat16"
    path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def load(path: Path) -> BitNetForCausalLM:
    return BitNetForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                             attn_implementation="eager").eval()


@torch.no_grad()
def run_model(model, seqs: list[list[int]]) -> list[dict]:
    out = []
    for ids in seqs:
        x = torch.tensor([ids])
        logits = model(x).logits[0]
        gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=N_NEW, min_new_tokens=0,
                                   eos_token_id=None, pad_token_id=0, bos_token_id=None)
        g = model.generate(x, generation_config=gen_cfg, attention_mask=torch.ones_like(x),
                           output_logits=True, return_dict_in_generate=True)
        new = g.sequences[0, len(ids):].tolist()
        assert len(new) == N_NEW, new
        step_logits = torch.stack([s[0] for s in g.logits])  # logits seen by generate (KV cache)
        full = torch.tensor([ids + new])
        tf = model(full).logits[0]  # teacher-forced over prompt + continuation
        # greedy consistency: every generated token is the argmax of the teacher-forced row
        tf_argmax = tf[len(ids) - 1: len(ids) - 1 + N_NEW].argmax(-1).tolist()
        top2 = tf[len(ids) - 1: len(ids) - 1 + N_NEW].topk(2, dim=-1).values
        margins = (top2[:, 0] - top2[:, 1]).tolist()
        out.append(dict(
            ids=ids, logits=logits, new=new, tf=tf, margins=margins,
            tf_argmax_equals_generate=(tf_argmax == new),
            generate_vs_teacher_forced=float((step_logits - tf[len(ids) - 1: len(ids) - 1 + N_NEW]).abs().max()),
        ))
    return out


@torch.no_grad()
def greedy_min_margin(model, ids: list[int], stop_below: float = -1.0) -> float:
    x = list(ids)
    margins = []
    for _ in range(N_NEW):
        last = model(torch.tensor([x])).logits[0, -1]
        top2 = last.topk(2).values
        margins.append(float(top2[0] - top2[1]))
        if margins[-1] < stop_below:
            break  # a near-tie: this input is rejected anyway
        x.append(int(last.argmax()))
    return min(margins)


@torch.no_grad()
def pick_inputs(model, spec: dict) -> tuple[list[list[int]], list[int]]:
    """Random token ids (fixed seeds), but skip inputs whose greedy continuation has a
    near-tie: every greedy step must win by >= MIN_MARGIN, well above the rounding-flip noise
    floor of these models (~0.1), so that another engine's greedy tokens should agree."""
    seqs, tries = [], []
    for n in SEQ_LENS:
        best = None
        for k in range(MAX_TRIES):
            rng = np.random.default_rng([spec["seed"], n, k])
            ids = [int(v) for v in rng.integers(3, spec["vocab_size"], size=n)]
            m = greedy_min_margin(model, ids, stop_below=MIN_MARGIN)
            if best is None or m > best[0]:
                best = (m, ids, k)
            if m >= MIN_MARGIN:
                break
        seqs.append(best[1])
        tries.append(best[2])
    return seqs, tries


@torch.no_grad()
def noise_floor(model, seqs_with_new: list[list[int]], seed: int, trials: int = 3, rel: float = 1e-6) -> list[dict]:
    """How far the logits move when every BitLinear input gets a 1e-6 relative perturbation
    (float noise of the size a different summation order makes): int8 rounding flips of
    values on a .5 boundary. An engine cannot be expected to agree more closely than this."""
    import transformers.integrations.bitnet as tb
    orig = tb.ActQuant.forward
    g = torch.Generator().manual_seed(seed)

    def noisy(ctx, x):
        x = x.float() * (1 + rel * torch.randn(x.shape, generator=g))
        scale = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp_(min=1e-5)
        return (x * scale).round().clamp(-128, 127) / scale

    res = []
    for ids in seqs_with_new:
        x = torch.tensor([ids])
        base = model(x).logits[0]
        worst = torch.zeros(len(ids))
        tb.ActQuant.forward = staticmethod(noisy)
        try:
            for _ in range(trials):
                worst = torch.maximum(worst, (model(x).logits[0] - base).abs().max(-1).values)
        finally:
            tb.ActQuant.forward = orig
        res.append({"relative_input_noise": rel, "trials": trials,
                    "max_abs_diff_greedy_logits": f32(float(worst.max())),
                    "rows_moved_over_0.005": f32(float((worst > 0.005).float().mean()))})
    return res


def pack_checkpoint(src: Path, dst: Path, spec: dict) -> dict:
    """Pack every BitLinear weight with transformers' pack_weights; returns weight stats."""
    sd = load_file(str(src / "model.safetensors"))
    out: dict[str, torch.Tensor] = {}
    stats = {}
    for name, t in sd.items():
        base = name[:-len(".weight")] if name.endswith(".weight") else None
        if base and any(base.endswith(l) for l in LINEARS):
            w = t.float()
            # exactly transformers' WeightQuant (online) math
            scale = 1.0 / w.abs().mean().clamp_(min=1e-5)
            tern = (w * scale).round().clamp(-1, 1)
            assert w.shape[0] % 4 == 0, (name, w.shape)
            packed = pack_weights(tern.clone())
            assert packed.dtype == torch.uint8 and packed.shape == (w.shape[0] // 4, w.shape[1])
            out[name] = packed.contiguous()
            out[base + ".weight_scale"] = (1.0 / scale).reshape(1).to(torch.float32)
            stats[name] = {
                "absmean": f32(float(w.abs().mean())),
                "weight_scale": f32(float(1.0 / scale)),
                "counts_neg_zero_pos": [int((tern == -1).sum()), int((tern == 0).sum()),
                                        int((tern == 1).sum())],
            }
        else:
            out[name] = t
    dst.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = dict(QUANT_ONLINE, quantization_mode="offline")
    (dst / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return stats


def make_model(name: str, spec: dict, out: Path) -> dict:
    t0 = time.time()
    mdir = out / name
    mdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec["seed"])
    cfg = make_config(spec)
    model = BitNetForCausalLM(cfg)  # plain nn.Linear: only used to hold and save weights
    init_weights(model, spec["seed"])
    model = model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(str(mdir))
    fix_config_json(mdir / "config.json", spec, QUANT_ONLINE)
    GenerationConfig(bos_token_id=1, eos_token_id=2, do_sample=False,
                     max_new_tokens=N_NEW).save_pretrained(str(mdir))
    del model

    stats = pack_checkpoint(mdir, mdir / "packed", spec)

    online = load(mdir)
    # sanity: the quantizer really is active and the linear layers are ternarized online
    q = online.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "AutoBitLinear" and q.online_quant, type(q)
    seqs, tries = pick_inputs(online, spec)
    res = run_model(online, seqs)
    floors = noise_floor(online, [r["ids"] + r["new"] for r in res], spec["seed"] + 11)
    del online

    packed = load(mdir / "packed")
    q = packed.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "AutoBitLinear" and not q.online_quant, type(q)
    res_p = run_model(packed, seqs)
    del packed

    seq_names = ["short", "long"]
    ref_seqs = []
    packed_diffs = []
    for sname, r, rp, fl in zip(seq_names, res, res_p, floors):
        d_logits = float((r["logits"] - rp["logits"]).abs().max())
        d_tf = float((r["tf"] - rp["tf"]).abs().max())
        packed_diffs.append(dict(name=sname, max_abs_diff_logits=d_logits,
                                 max_abs_diff_greedy_logits=d_tf,
                                 greedy_new_token_ids_equal=(r["new"] == rp["new"])))
        ref_seqs.append({
            "name": sname,
            "input_ids": r["ids"],
            "logits": rows(r["logits"]),
            "greedy_new_token_ids": r["new"],
            "greedy_logits": rows(r["tf"]),
            "greedy_min_margin": f32(min(r["margins"])),
            "greedy_top1_minus_top2_margins": [f32(m) for m in r["margins"]],
            "checks": {
                "teacher_forced_argmax_equals_generate": r["tf_argmax_equals_generate"],
                "max_abs_diff_generate_kv_cache_vs_teacher_forced": r["generate_vs_teacher_forced"],
                "packed": packed_diffs[-1],
                "noise_floor": fl,
            },
        })
    ref = {
        "format": FORMAT,
        "model": name,
        "generator": "scripts/make_hf_fixtures.py",
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "safetensors": safetensors.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "settings": {"device": "cpu", "dtype": "float32", "attn_implementation": "eager",
                     "TORCHDYNAMO_DISABLE": "1", "seed": spec["seed"],
                     "weights_on_disk": "bfloat16", "n_new_tokens": N_NEW,
                     "greedy": "argmax, no EOS stop (generate with eos_token_id=None)",
                     "input_ids": f"numpy default_rng([seed, length, k]).integers(3, vocab); the first k "
                                  f"whose 12 greedy steps all have top1-top2 >= {MIN_MARGIN}",
                     "input_ids_k": tries},
        "config": {k: v for k, v in spec.items() if k != "seed"},
        "files": {"online": "config.json + model.safetensors (bf16 master weights, quantization_mode online)",
                  "packed": "packed/config.json + packed/model.safetensors (uint8 [out/4,in] + float32 weight_scale, quantization_mode offline)"},
        "sequences": ref_seqs,
        "packed_vs_online": {
            "max_abs_diff_logits": max(p["max_abs_diff_logits"] for p in packed_diffs),
            "max_abs_diff_greedy_logits": max(p["max_abs_diff_greedy_logits"] for p in packed_diffs),
            "greedy_new_token_ids_equal": all(p["greedy_new_token_ids_equal"] for p in packed_diffs),
        },
        "weight_quant": stats,
    }
    (mdir / "reference.json").write_text(json.dumps(ref, separators=(",", ":")) + "\n")
    pv = ref["packed_vs_online"]
    print(f"{name}: {time.time() - t0:.1f} s; packed vs online max|dlogit| "
          f"{pv['max_abs_diff_logits']:.3g} (prompt) {pv['max_abs_diff_greedy_logits']:.3g} "
          f"(prompt+greedy), greedy equal {pv['greedy_new_token_ids_equal']}; "
          f"min greedy margin {min(s['greedy_min_margin'] for s in ref_seqs):.3g}; noise floor "
          f"{max(s['checks']['noise_floor']['max_abs_diff_greedy_logits'] for s in ref_seqs):.3g}", flush=True)
    return ref


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)  # tiny matrices: 1 thread is faster, and deterministic
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in args.models.split(","):
        if name not in MODELS:
            print(f"unknown model {name}", file=sys.stderr)
            return 2
        make_model(name, MODELS[name], args.out)
    print(f"wrote {args.out} in {time.time() - t0:.1f} s "
          f"(transformers {transformers.__version__}, torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
