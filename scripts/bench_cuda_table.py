#!/usr/bin/env python3
"""Renders scripts/bench-cuda.sh results as one Markdown table (engine, file, pp t/s, tg t/s).

    python3 scripts/bench_cuda_table.py MANIFEST PP TG
    python3 scripts/bench_cuda_table.py --self-test      # offline check of the three parsers

MANIFEST rows (tab-separated): engine label, file label, kind, results file. Kinds:
- `ours`: `bitnet bench --json` lines ({"test": "pp512", "tps_mean", "tps_std", ...});
- `llama`: `llama-bench -o json` output (a list of {"n_prompt", "n_gen", "avg_ts", "stddev_ts",
  "cuda", "flash_attn", "samples_ts", ...}); a build without CUDA is named as such in the row,
  since its numbers are then the CPU's. A first repetition below half the median of the others
  is a cold start (ik_llama.cpp's first pp512 on a fresh process: 3,428 against 28,902 and
  29,049): it is left out of the mean and shown in the cell;
- `torch`: scripts/bench_torch.py's stdout (Markdown rows `| variant | GB | pp | tg |`, best of
  its repetitions: no spread).
"""
from __future__ import annotations

import json
import sys


def parse(engine: str, kind: str, text: str, pp: str, tg: str):
    """[(engine label, {test: (mean, sd or None)})] for one results file."""
    if kind == "ours":
        res = {}
        for line in text.splitlines():
            if line.strip():
                j = json.loads(line)
                res[j["test"]] = (j["tps_mean"], j["tps_std"])
        return [(engine, res)]
    if kind == "llama":
        res, extra = {}, ""
        for j in json.loads(text):
            test = f"pp{j['n_prompt']}" if j["n_prompt"] else f"tg{j['n_gen']}"
            res[test] = warm(j)
            if not j.get("cuda", True):
                extra = " (NOT a CUDA build: CPU numbers)"
            elif "flash_attn" in j and not extra:
                extra = f", fa {int(j['flash_attn'])}"
        return [(engine + extra, res)]
    if kind == "torch":
        rows = []
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 4 or cells[0] in ("variant", "") or cells[0].startswith("-"):
                continue
            label = engine if cells[0] == "bf16" else f"transformers, {cells[0]}"
            rows.append((label, {pp: (float(cells[2]), None), tg: (float(cells[3]), None)}))
        return rows
    raise ValueError(f"unknown kind {kind!r}")


def warm(j):
    """(mean, sd[, cold first repetition]) of one llama-bench result."""
    s = j.get("samples_ts") or []
    rest = sorted(s[1:])
    if len(s) >= 3 and s[0] < 0.5 * rest[len(rest) // 2]:
        m = sum(s[1:]) / len(rest)
        sd = (sum((x - m) ** 2 for x in s[1:]) / (len(rest) - 1)) ** 0.5
        return (m, sd, s[0])
    return (j["avg_ts"], j["stddev_ts"])


def fmt(v) -> str:
    if v is None:
        return "-"
    mean, sd = v[0], v[1]
    cell = f"{mean:,.1f}" if sd is None else f"{mean:,.1f} ± {sd:,.1f}"
    if len(v) > 2:
        cell += f" (1st rep {v[2]:,.1f}: cold, left out)"
    return cell


def table(manifest_rows, pp: str, tg: str) -> str:
    out = [f"| engine | file | {pp} t/s | {tg} t/s |", "|---|---|---:|---:|"]
    for engine, file, kind, text in manifest_rows:
        for label, res in parse(engine, kind, text, pp, tg):
            out.append(f"| {label} | {file} | {fmt(res.get(pp))} | {fmt(res.get(tg))} |")
    return "\n".join(out)


def self_test() -> None:
    ours = "\n".join(
        json.dumps({"test": t, "tps_mean": m, "tps_std": s, "device": "cuda:0"})
        for t, m, s in [("pp512", 22129.63, 7.24), ("tg128", 471.2, 26.1)]
    )
    ik = json.dumps([
        {"n_prompt": 512, "n_gen": 0, "avg_ts": 1000.5, "stddev_ts": 3.25, "cuda": True, "flash_attn": True,
         "samples_ts": [997.0, 1003.0, 1001.5]},
        {"n_prompt": 0, "n_gen": 128, "avg_ts": 300.0, "stddev_ts": 1.0, "cuda": True, "flash_attn": True},
    ])
    # The H200 run's first pp512 repetition was a cold start.
    ik_cold = json.dumps([
        {"n_prompt": 512, "n_gen": 0, "avg_ts": 20459.7, "stddev_ts": 14750.2, "cuda": True, "flash_attn": True,
         "samples_ts": [3427.81, 28901.8, 29049.4]},
        {"n_prompt": 0, "n_gen": 128, "avg_ts": 300.0, "stddev_ts": 1.0, "cuda": True, "flash_attn": True},
    ])
    ik_cpu = json.dumps([{"n_prompt": 0, "n_gen": 128, "avg_ts": 20.0, "stddev_ts": 0.5, "cuda": False}])
    torch = (
        "transformers BitNetForCausalLM, shape 2b4t, bf16, NVIDIA H200, torch 2.11\n"
        "| variant | weights GB | pp512 tokens/s | tg128 tokens/s |\n|---|---:|---:|---:|\n"
        "| bf16 | 4.83 | 20870.1 | 36.3 |\n| bitlinear | 4.83 | 4437.0 | 8.3 |\n"
    )
    got = table([
        ("bitnet-rs --device cuda", "I2_S", "ours", ours),
        ("ik_llama.cpp CUDA", "IQ2_BN", "llama", ik),
        ("ik_llama.cpp CUDA", "IQ2_BN", "llama", ik_cold),
        ("ik_llama.cpp", "IQ2_BN", "llama", ik_cpu),
        ("transformers bf16", "same shape", "torch", torch),
    ], "pp512", "tg128").splitlines()
    want = [
        "| engine | file | pp512 t/s | tg128 t/s |",
        "|---|---|---:|---:|",
        "| bitnet-rs --device cuda | I2_S | 22,129.6 ± 7.2 | 471.2 ± 26.1 |",
        "| ik_llama.cpp CUDA, fa 1 | IQ2_BN | 1,000.5 ± 3.2 | 300.0 ± 1.0 |",
        "| ik_llama.cpp CUDA, fa 1 | IQ2_BN | 28,975.6 ± 104.4 (1st rep 3,427.8: cold, left out) | 300.0 ± 1.0 |",
        "| ik_llama.cpp (NOT a CUDA build: CPU numbers) | IQ2_BN | - | 20.0 ± 0.5 |",
        "| transformers bf16 | same shape | 20,870.1 | 36.3 |",
        "| transformers, bitlinear | same shape | 4,437.0 | 8.3 |",
    ]
    if got != want:
        for g, w in zip(got + [""] * len(want), want + [""] * len(got)):
            if g != w:
                print(f"got  {g!r}\nwant {w!r}", file=sys.stderr)
        sys.exit("bench_cuda_table self-test FAILED")
    print("bench_cuda_table self-test: ok")


def main() -> None:
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    manifest, pp, tg = sys.argv[1], f"pp{sys.argv[2]}", f"tg{sys.argv[3]}"
    rows = []
    with open(manifest) as f:
        for line in f:
            engine, file, kind, path = line.rstrip("\n").split("\t")
            with open(path) as r:
                rows.append((engine, file, kind, r.read()))
    print(table(rows, pp, tg))


if __name__ == "__main__":
    main()
