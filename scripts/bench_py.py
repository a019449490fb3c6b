#!/usr/bin/env python3
"""Per-token cost of the Python binding against the Rust API: greedy generation of the same
tokens from the same prompt, on the same model and thread count.

  cargo build --release -p bitnet-inference --example generate_bench
  scripts/build-py.sh
  .venv/bin/python scripts/bench_py.py [--model M] [--threads T] [--tokens N] [--rounds R]

Each round runs, back to back, the Rust example (`Session::generate`, one process, `--runs`
timed runs after a warm-up) and, in this process, `Model.complete` (the whole generation in one
call) and `Model.stream` (a Python iteration per piece of text), each `--runs` times after a
warm-up; rounds interleave so that the machine's drift hits all three alike. Reported: median
milliseconds per generated token of each, and the Python paths' difference to Rust in
microseconds per token (negative values are noise)."""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rust_runs(binary: Path, model: str, threads: int, tokens: int, runs: int, prompt: str):
    out = subprocess.run([str(binary), model, str(threads), str(tokens), str(runs), prompt],
                         capture_output=True, text=True, check=True)
    per = []
    for line in out.stdout.split("\n"):
        if line.strip():
            wall, n = line.split()
            per.append(float(wall) / int(n))
    return per


def py_runs(call, runs: int):
    call()  # warm-up (and the prompt into the cache, as the Rust side does)
    per = []
    for _ in range(runs):
        t = time.perf_counter()
        n = call()
        per.append((time.perf_counter() - t) / n)
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "bitnet-b1.58-kjv-i2_s.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt", default="In the beginning")
    ap.add_argument("--rust-bin", type=Path,
                    default=ROOT / "target" / "release" / "examples" / "generate_bench")
    a = ap.parse_args()

    import bitnet

    model = bitnet.Model(a.model, threads=a.threads)
    opts = dict(max_tokens=a.tokens, temperature=0, ignore_eos=True)

    def complete() -> int:
        return len(model.complete(a.prompt, **opts).tokens)

    def stream() -> int:
        s = model.stream(a.prompt, **opts)
        for _ in s:
            pass
        return len(s.completion.tokens)

    rust, comp, strm = [], [], []
    for r in range(a.rounds):
        rust += rust_runs(a.rust_bin, a.model, a.threads, a.tokens, a.runs, a.prompt)
        comp += py_runs(complete, a.runs)
        strm += py_runs(stream, a.runs)
        print(f"round {r + 1}/{a.rounds}: ms/token rust {statistics.median(rust) * 1e3:.3f} "
              f"complete {statistics.median(comp) * 1e3:.3f} "
              f"stream {statistics.median(strm) * 1e3:.3f}", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in
           (("rust", rust), ("complete", comp), ("stream", strm))}
    print(f"model {Path(a.model).name}, {a.threads} threads, {a.tokens} greedy tokens, "
          f"{a.rounds} rounds x {a.runs} runs (medians)")
    print("| path | ms/token | tokens/s | vs Rust, us/token |")
    print("|---|---|---|---|")
    for name, label in (("rust", "Rust `Session::generate`"),
                        ("complete", "Python `Model.complete`"),
                        ("stream", "Python `Model.stream` (iterated)")):
        over = "" if name == "rust" else f"{(med[name] - med['rust']) * 1e6:+.1f}"
        print(f"| {label} | {med[name] * 1e3:.3f} | {1 / med[name]:.1f} | {over} |")


if __name__ == "__main__":
    main()
