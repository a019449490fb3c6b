"""Turns `bitnet bench --json` lines or `llama-bench -o json` output (stdin) into table rows.

    bitnet bench ... --json | python3 scripts/bench_table.py ours "bitnet-rs" TQ2_0
    llama-bench ... -o json | python3 scripts/bench_table.py llama "llama.cpp" TQ2_0
"""
import json
import sys

kind, engine, fmt = sys.argv[1:4]
text = sys.stdin.read()
if kind == "ours":
    results = [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = [(r["test"], r["tps_mean"], r["tps_std"]) for r in results]
else:
    rows = []
    for r in json.loads(text):
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        rows.append((test, r["avg_ts"], r["stddev_ts"]))
for test, mean, sd in rows:
    print(f"| {engine} | {fmt} | {test} | {mean:.2f} ± {sd:.2f} |")
