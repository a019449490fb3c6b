#!/usr/bin/env python3
"""Self-checks of the generated fixtures (not of the Rust engine).

usage: .venv/bin/python tests/fixtures-py/check_fixtures.py [DIR]     (default target/fixtures)

Checks DIR/hf/<model>/ (scripts/make_hf_fixtures.py) and, if present, DIR/llamacpp/
(scripts/make_llamacpp_fixtures.py). Independent of transformers: the packed weights are
unpacked with the rule in shared/notes/formats.md and compared with the absmean
ternarization of the bf16 master weights. Ends with 'N passed, M failed'.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
DIR = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "fixtures"
REF_KEYS = {"format", "model", "generator", "versions", "settings", "config", "files",
            "sequences", "packed_vs_online", "weight_quant"}
SEQ_KEYS = {"name", "input_ids", "logits", "greedy_new_token_ids", "greedy_logits",
            "greedy_min_margin", "greedy_top1_minus_top2_margins", "checks"}
passed, failed = 0, 0


def check(cond: bool, what: str) -> None:
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}")


def unpack(p: torch.Tensor) -> torch.Tensor:
    r = p.shape[0]
    out = torch.empty((4 * r, p.shape[1]), dtype=torch.int8)
    for i in range(4):
        out[i * r:(i + 1) * r] = ((p.to(torch.int16) >> (2 * i)) & 3).to(torch.int8) - 1
    return out


def check_hf(mdir: Path) -> None:
    name = mdir.name
    ref = json.loads((mdir / "reference.json").read_text())
    cfg = json.loads((mdir / "config.json").read_text())
    check(set(ref) == REF_KEYS, f"{name}: reference.json keys {sorted(ref)}")
    V = cfg["vocab_size"]
    check(cfg["quantization_config"]["quantization_mode"] == "online", f"{name}: online config")
    for s in ref["sequences"]:
        check(set(s) == SEQ_KEYS, f"{name}/{s.get('name')}: sequence keys")
        T, N = len(s["input_ids"]), len(s["greedy_new_token_ids"])
        lg, gl = np.array(s["logits"], dtype=np.float32), np.array(s["greedy_logits"], dtype=np.float32)
        check(lg.shape == (T, V) and gl.shape == (T + N, V), f"{name}/{s['name']}: shapes {lg.shape} {gl.shape}")
        check(np.isfinite(lg).all() and lg.std() > 0.3, f"{name}/{s['name']}: non-degenerate logits")
        # the same rows computed in a longer batch: equal up to float noise, which an int8
        # rounding flip can amplify to the recorded noise floor
        floor = s["checks"]["noise_floor"]["max_abs_diff_greedy_logits"]
        d = float(np.abs(lg - gl[:T]).max())
        check(d <= max(1e-3, 2 * floor), f"{name}/{s['name']}: prompt rows of greedy_logits vs logits {d}")
        check(s["greedy_min_margin"] >= 0.25, f"{name}/{s['name']}: greedy margin {s['greedy_min_margin']}")
        check(gl[T - 1:T - 1 + N].argmax(-1).tolist() == s["greedy_new_token_ids"],
              f"{name}/{s['name']}: greedy ids are the argmax of greedy_logits")
    pv = ref["packed_vs_online"]
    check(pv["greedy_new_token_ids_equal"] and pv["max_abs_diff_logits"] < 0.2,
          f"{name}: packed vs online {pv}")
    # packed layout, independently of transformers
    sd = load_file(str(mdir / "model.safetensors"))
    pk = load_file(str(mdir / "packed" / "model.safetensors"))
    pcfg = json.loads((mdir / "packed" / "config.json").read_text())
    check(pcfg["quantization_config"]["quantization_mode"] == "offline", f"{name}: offline config")
    n_lin = 0
    for k, w in sd.items():
        scale_key = k[:-len(".weight")] + ".weight_scale" if k.endswith(".weight") else None
        if scale_key not in pk:
            check(k in pk and torch.equal(pk[k], w), f"{name}: {k} copied unchanged")
            continue
        n_lin += 1
        wf = w.float()
        m = wf.abs().mean().clamp(min=1e-5)
        t = (wf * (1.0 / m)).round().clamp(-1, 1).to(torch.int8)
        p = pk[k]
        check(p.dtype == torch.uint8 and p.shape == (w.shape[0] // 4, w.shape[1]), f"{name}: {k} packed shape")
        check(torch.equal(unpack(p), t), f"{name}: {k} unpacks to the absmean ternarization")
        sc = pk[scale_key]
        check(sc.dtype == torch.float32 and sc.shape == (1,) and abs(float(sc) / float(m) - 1) < 1e-6,
              f"{name}: {k} weight_scale == mean|W|")
    check(n_lin == 7 * cfg["num_hidden_layers"], f"{name}: {n_lin} packed BitLinear weights")


def check_llamacpp(ldir: Path) -> None:
    summ = json.loads((ldir / "summary.json").read_text())
    for t, v in summ["types"].items():
        check((ldir / v["gguf"]).exists(), f"llamacpp {t}: gguf exists")
        out = json.loads((ldir / v["gguf"].replace(".gguf", ".logits.json")).read_text())
        check(set(out) >= {"n_vocab", "sequences", "comparison"}, f"llamacpp {t}: keys")
        check(v["greedy_equal"], f"llamacpp {t}: greedy tokens equal transformers'")
        # llama.cpp skips (f32/f16) or block-quantizes (tq) the int8 activations: ~0.1-0.3
        check(v["max"]["vs_transformers_prompt"] < 0.5, f"llamacpp {t}: vs transformers {v['max']}")
        # ... and matches transformers with the same activation/scale treatment: f32 exactly,
        # f16 to f16 rounding; quantized types row by row to ~1e-3 except rows hit by an int8
        # rounding flip (a value on a .5 boundary), which move by up to ~0.15
        emu_max = v["max"]["vs_matching_emulation_prompt_plus_greedy"]
        emu_med = v["median_row_max"]["vs_matching_emulation_prompt_plus_greedy"]
        if t == "f32":
            check(emu_max < 1e-4, f"llamacpp {t}: vs matching emulation {emu_max}")
        elif t == "f16":
            check(emu_max < 0.01, f"llamacpp {t}: vs matching emulation {emu_max}")
        else:
            within = v["rows_within_0.005_of_matching_emulation"]
            check(emu_max < 0.3 and within >= 0.25,
                  f"llamacpp {t}: vs matching emulation max {emu_max}, median row {emu_med}, rows within {within}")


def main() -> int:
    hf = DIR / "hf"
    models = sorted(p for p in hf.glob("*") if (p / "reference.json").exists()) if hf.exists() else []
    check(len(models) >= 3, f"HF fixtures in {hf}: {[m.name for m in models]}")
    for m in models:
        check_hf(m)
    if (DIR / "llamacpp" / "summary.json").exists():
        check_llamacpp(DIR / "llamacpp")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
