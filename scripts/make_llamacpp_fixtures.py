#!/usr/bin/env python3
"""GGUF files written by llama.cpp's own converter, and llama.cpp's logits for them.

usage: .venv/bin/python scripts/make_llamacpp_fixtures.py --out target/fixtures
                        [--hf target/fixtures/hf] [--types f32,f16,tq2_0,tq1_0]
                        [--negative-controls]

Needs: scripts/setup-python.sh, scripts/build-llama-cpp.sh, and the HF fixtures of
scripts/make_hf_fixtures.py (in --hf, default OUT/hf).

Writes OUT/llamacpp/:
  silu-tied-<type>.gguf          convert_hf_to_gguf.py (vendored llama.cpp + its gguf-py)
  silu-tied-<type>.logits.json   llama-logits-dump output (scripts/llama_logits_dump.cpp)
                                 plus a "comparison" block (see the README)
  summary.json                   all comparisons, versions, timings
  stage/silu-tied/               what the converter read (see below)

Only `silu-tied` can be converted: llama.cpp's `bitnet` architecture is gated SiLU with
sub-norms and a tied head (no output.weight), and its converter (gguf-py tensor_mapping)
knows the 1bitLLM tensor names `self_attn.inner_attn_ln` / `mlp.ffn_layernorm`, not
transformers' `self_attn.attn_sub_norm` / `mlp.ffn_sub_norm`. The stage copy therefore
renames those two tensors (nothing else changes) and adds a SentencePiece tokenizer.model
(the converter's BitnetModel.set_vocab() calls _set_vocab_sentencepiece()), trained here
deterministically on a fixed synthetic corpus, 300 pieces with byte fallback; the converter
pads the vocabulary to the model's 320 with [PAD] tokens. Token ids, not text, are compared.
"""
from __future__ import annotations

import os

os.environ["TORCHDYNAMO_DISABLE"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LLAMA_DIR = ROOT / "third_party" / "build" / "llama.cpp"
LLAMA_BIN = ROOT / "third_party" / "build" / "llama.cpp-build" / "bin"
DUMPER = LLAMA_BIN / "llama-logits-dump"
N_NEW = 12
MODEL = "silu-tied"
RENAMES = {"self_attn.attn_sub_norm": "self_attn.inner_attn_ln", "mlp.ffn_sub_norm": "mlp.ffn_layernorm"}


def train_tokenizer(path: Path) -> None:
    import sentencepiece as spm
    words = ("the of and to in is that for it as with was on be by at this are from or an have "
             "not but which all were they one we their there been if more when will would who so "
             "no light land water earth heaven day night").split()
    rng = random.Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(2000)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(path.with_suffix("")), vocab_size=300,
        model_type="bpe", byte_fallback=True, num_threads=1, character_coverage=1.0,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2)
    path.with_suffix(".vocab").unlink(missing_ok=True)


def stage_model(hf: Path, stage: Path) -> None:
    from safetensors.torch import load_file, save_file
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    shutil.copy(hf / "config.json", stage / "config.json")
    sd = load_file(str(hf / "model.safetensors"))
    renamed = {}
    for k, v in sd.items():
        for a, b in RENAMES.items():
            k = k.replace(a, b)
        renamed[k] = v
    save_file(renamed, str(stage / "model.safetensors"), metadata={"format": "pt"})
    train_tokenizer(stage / "tokenizer.model")


def convert(stage: Path, outtype: str, outfile: Path) -> float:
    t0 = time.time()
    cmd = [sys.executable, str(LLAMA_DIR / "convert_hf_to_gguf.py"), str(stage),
           "--outtype", outtype, "--outfile", str(outfile)]
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # use the vendored gguf-py
    r = subprocess.run(cmd, cwd=LLAMA_DIR, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py --outtype {outtype} failed:\n{r.stderr[-3000:]}")
    return time.time() - t0


def dump(gguf: Path, ids_json: Path, out_json: Path) -> dict:
    cmd = [str(DUMPER), "-m", str(gguf), "-i", str(ids_json), "-o", str(out_json),
           "-n", str(N_NEW), "-t", "1", "--kv", "f32"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama-logits-dump failed:\n{r.stderr[-3000:]}")
    return json.loads(out_json.read_text())


class Emulator:
    """transformers' BitNetForCausalLM with the quantizers swapped for what llama.cpp does."""

    def __init__(self, hf: Path):
        import torch
        import transformers.integrations.bitnet as tb
        from transformers import BitNetForCausalLM
        torch.set_num_threads(1)
        self.torch, self.tb = torch, tb
        self.act0, self.w0 = tb.ActQuant.forward, tb.WeightQuant.forward
        self.model = BitNetForCausalLM.from_pretrained(str(hf), dtype=torch.float32,
                                                       attn_implementation="eager").eval()

    def logits(self, ids: list[int], mode: str) -> np.ndarray:
        torch, tb = self.torch, self.tb

        def no_act(ctx, x):
            return x

        def q8_k(ctx, x):  # ggml quantize_row_q8_K: int8 per 256-element block, absmax scale
            shp = x.shape
            xb = x.float().reshape(*shp[:-1], shp[-1] // 256, 256)
            iscale = 127.0 / xb.abs().max(-1, keepdim=True).values.clamp(min=1e-30)
            return ((xb * iscale).round().clamp(-127, 127) / iscale).reshape(shp)

        def w_f16_scale(ctx, w):  # TQ1_0/TQ2_0 block scale d is fp16
            w = w.float()
            s = 1.0 / w.abs().mean().clamp(min=1e-5)
            return (w * s).round().clamp(-1, 1) * (1.0 / s).half().float()

        act, wq = {"transformers": (self.act0, self.w0),
                   "no_act_quant": (no_act, self.w0),
                   "q8_k_blocks_f16_scale": (q8_k, w_f16_scale)}[mode]
        tb.ActQuant.forward, tb.WeightQuant.forward = staticmethod(act), staticmethod(wq)
        try:
            with torch.no_grad():
                return self.model(torch.tensor([ids])).logits[0].numpy()
        finally:
            tb.ActQuant.forward, tb.WeightQuant.forward = staticmethod(self.act0), staticmethod(self.w0)


def diff(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a - b)
    row = d.max(-1)
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
            "median_row_max_abs_diff": float(np.median(row)),
            "rows_within_0.005": float((row < 0.005).mean()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).mean())}


def compare(ref: dict, out: dict, emu: Emulator, outtype: str) -> dict:
    mode = "q8_k_blocks_f16_scale" if outtype.startswith("tq") else "no_act_quant"
    res = {"matching_emulation": mode, "sequences": []}
    for rs, ls in zip(ref["sequences"], out["sequences"]):
        assert rs["input_ids"] == ls["input_ids"]
        ids = rs["input_ids"]
        lc_full = np.array(ls["logits_full"])
        lc_prompt = np.array(ls["logits"])
        # what llama.cpp computes, emulated in transformers, over llama.cpp's own continuation
        emu_full = emu.logits(ids + ls["greedy_new_token_ids"], mode)
        res["sequences"].append({
            "name": rs["name"],
            "greedy_new_token_ids_equal_transformers": ls["greedy_new_token_ids"] == rs["greedy_new_token_ids"],
            "vs_transformers_prompt": diff(lc_prompt, np.array(rs["logits"])),
            "vs_transformers_prompt_plus_greedy": diff(lc_full, np.array(rs["greedy_logits"]))
            if ls["greedy_new_token_ids"] == rs["greedy_new_token_ids"] else None,
            "vs_matching_emulation_prompt_plus_greedy": diff(lc_full, emu_full),
        })
    keys = ["vs_transformers_prompt", "vs_matching_emulation_prompt_plus_greedy"]
    res["max"] = {k: max(s[k]["max_abs_diff"] for s in res["sequences"]) for k in keys}
    res["median_row_max"] = {k: max(s[k]["median_row_max_abs_diff"] for s in res["sequences"]) for k in keys}
    res["rows_within_0.005_of_matching_emulation"] = min(
        s["vs_matching_emulation_prompt_plus_greedy"]["rows_within_0.005"] for s in res["sequences"])
    res["greedy_equal"] = all(s["greedy_new_token_ids_equal_transformers"] for s in res["sequences"])
    return res


def negative_controls(hf_root: Path, work: Path, ids_of) -> dict:
    """What happens with the other two HF fixtures (nothing is kept but this report)."""
    rep = {}
    for name in ("silu-mha", "relu2-gqa"):
        st = work / "stage" / name
        stage_model(hf_root / name, st)
        g = work / f"{name}-f32.gguf"
        try:
            convert(st, "f32", g)
        except RuntimeError as e:
            rep[name] = {"converts": False, "error": str(e).strip().splitlines()[-1]}
            shutil.rmtree(st)
            continue
        ref = json.loads((hf_root / name / "reference.json").read_text())
        ids = work / f"{name}.ids.json"
        ids.write_text(json.dumps(ids_of(ref)))
        out = dump(g, ids, work / f"{name}-f32.logits.json")
        d = [diff(np.array(ls["logits"]), np.array(rs["logits"]))
             for rs, ls in zip(ref["sequences"], out["sequences"])]
        rep[name] = {"converts": True, "vs_transformers_prompt": d,
                     "note": "llama.cpp's bitnet graph always uses SiLU (LLM_FFN_SILU); this model is relu2"}
        for p in (g, ids, work / f"{name}-f32.logits.json"):
            p.unlink()
        shutil.rmtree(st)
    return rep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--hf", type=Path, default=None)
    ap.add_argument("--types", default="f32,f16,tq2_0,tq1_0")
    ap.add_argument("--negative-controls", action="store_true",
                    help="also try silu-mha (untied) and relu2-gqa (relu2) and report")
    args = ap.parse_args()
    t0 = time.time()
    args.out = args.out.resolve()
    hf_root = (args.hf or (args.out / "hf")).resolve()
    if not (hf_root / MODEL / "reference.json").exists():
        print(f"missing {hf_root / MODEL}: run scripts/make_hf_fixtures.py --out {hf_root}", file=sys.stderr)
        return 2
    if not DUMPER.exists():
        print(f"missing {DUMPER}: run scripts/build-llama-cpp.sh", file=sys.stderr)
        return 2
    work = args.out / "llamacpp"
    work.mkdir(parents=True, exist_ok=True)

    ref = json.loads((hf_root / MODEL / "reference.json").read_text())

    def ids_of(r):
        return [s["input_ids"] for s in r["sequences"]]

    stage = work / "stage" / MODEL
    stage_model(hf_root / MODEL, stage)
    ids_json = work / f"{MODEL}.ids.json"
    ids_json.write_text(json.dumps(ids_of(ref)))
    emu = Emulator(hf_root / MODEL)

    import transformers
    summary = {
        "format": "bitnet-rs-llamacpp-fixture/1",
        "model": MODEL,
        "llama_cpp": {"source": "llama-cpp-python sdist (PyPI), vendor/llama.cpp",
                      "commit": (LLAMA_DIR / ".vendored-commit").read_text().strip()
                      if (LLAMA_DIR / ".vendored-commit").exists() else "unknown",
                      "converter": "convert_hf_to_gguf.py + vendored gguf-py",
                      "dumper": "scripts/llama_logits_dump.cpp (-t 1 --kv f32, flash attention off)"},
        "transformers": transformers.__version__,
        "stage_changes": {"renamed_tensors": RENAMES,
                          "tokenizer.model": "sentencepiece BPE, 300 pieces, byte fallback, trained in this script"},
        "types": {},
    }
    for t in args.types.split(","):
        gguf = work / f"{MODEL}-{t}.gguf"
        tc = convert(stage, t, gguf)
        out_json = work / f"{MODEL}-{t}.logits.json"
        t1 = time.time()
        out = dump(gguf, ids_json, out_json)
        td = time.time() - t1
        cmp_ = compare(ref, out, emu, t)
        out["comparison"] = cmp_
        out["model"] = gguf.name
        out_json.write_text(json.dumps(out, separators=(",", ":")) + "\n")
        summary["types"][t] = {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size,
                               "convert_s": round(tc, 2), "dump_s": round(td, 2), **{k: cmp_[k] for k in ("matching_emulation", "max", "median_row_max",
                                                         "rows_within_0.005_of_matching_emulation", "greedy_equal")}}
        m = cmp_["max"]
        print(f"{MODEL}-{t}: {gguf.stat().st_size} B, convert {tc:.1f} s; llama.cpp vs transformers "
              f"max|d| {m['vs_transformers_prompt']:.4f}; vs {cmp_['matching_emulation']} "
              f"{m['vs_matching_emulation_prompt_plus_greedy']:.2g} (median row "
              f"{cmp_['median_row_max']['vs_matching_emulation_prompt_plus_greedy']:.2g}); "
              f"greedy equal {cmp_['greedy_equal']}",
              flush=True)
    if args.negative_controls:
        summary["negative_controls"] = negative_controls(hf_root, work, ids_of)
        for k, v in summary["negative_controls"].items():
            print(f"negative control {k}: {json.dumps(v)[:300]}")
    summary["total_s"] = round(time.time() - t0, 1)
    (work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {work} in {summary['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
