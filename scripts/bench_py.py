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
milliseconds per generated token of each (wall time of the call, or of the whole iteration),
the difference to Rust in microseconds per token (between runs, so it carries the machine's
run-to-run noise), and within each run the wall time less the engine's own timing of the same
generation (`Completion.prompt_seconds + generation_seconds`): what the call costs beyond the
engine's work, free of that noise. Prompts are token ids on both sides (tokenizing is not timed)."""
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
            wall, engine, n = line.split()
            per.append((float(wall) / int(n), (float(wall) - float(engine)) / int(n)))
    return per


def py_runs(call, runs: int):
    call()  # warm-up (and the prompt into the cache, as the Rust side does)
    per = []
    for _ in range(runs):
        t = time.perf_counter()
        c = call()
        wall = time.perf_counter() - t
        n = len(c.tokens)
        per.append((wall / n, (wall - c.prompt_seconds - c.generation_seconds) / n))
    return per


def median(pairs, i: int) -> float:
    return statistics.median(p[i] for p in pairs)


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

    ids = model.tokenize(a.prompt)

    def complete():
        return model.complete(ids, **opts)

    def stream():
        s = model.stream(ids, **opts)
        for _ in s:
            pass
        return s.completion

    rust, comp, strm = [], [], []
    for r in range(a.rounds):
        rust += rust_runs(a.rust_bin, a.model, a.threads, a.tokens, a.runs, a.prompt)
        comp += py_runs(complete, a.runs)
        strm += py_runs(stream, a.runs)
        print(f"round {r + 1}/{a.rounds}: ms/token rust {median(rust, 0) * 1e3:.3f} "
              f"complete {median(comp, 0) * 1e3:.3f} "
              f"stream {median(strm, 0) * 1e3:.3f}", file=sys.stderr)
    runs = {"rust": rust, "complete": comp, "stream": strm}
    wall = {k: median(v, 0) for k, v in runs.items()}
    print(f"model {Path(a.model).name}, {a.threads} threads, {a.tokens} greedy tokens, "
          f"{a.rounds} rounds x {a.runs} runs (medians)")
    print("| path | ms/token | tokens/s | vs Rust, us/token | wall - engine time, us/token |")
    print("|---|---|---|---|---|")
    for name, label in (("rust", "Rust `Session::generate`"),
                        ("complete", "Python `Model.complete`"),
                        ("stream", "Python `Model.stream` (iterated)")):
        vs = "" if name == "rust" else f"{(wall[name] - wall['rust']) * 1e6:+.1f}"
        print(f"| {label} | {wall[name] * 1e3:.3f} | {1 / wall[name]:.1f} | {vs} "
              f"| {median(runs[name], 1) * 1e6:.2f} |")


if __name__ == "__main__":
    main()
