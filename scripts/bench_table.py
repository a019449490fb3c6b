"""Renders scripts/bench.sh results as one Markdown table.

    python3 scripts/bench_table.py MANIFEST MEMBW_F16_JSON MEMBW_Q8_JSON

MANIFEST rows (tab-separated): engine, format, head, kind (ours | llama), results file, peak RSS
in KiB. `ours` files hold `bitnet bench --json` lines, `llama` files `llama-bench -o json` output.
The membw files are `bitnet bench --membw --json` output for the F16-head and Q8_0-head files.
"""
import json
import sys


def load(kind, path):
    """{test: (mean t/s, sd)} for one results file."""
    with open(path) as f:
        text = f.read()
    out = {}
    if kind == "ours":
        for line in text.splitlines():
            if line.strip():
                r = json.loads(line)
                out[r["test"]] = (r["tps_mean"], r["tps_std"])
    else:
        for r in json.loads(text):
            test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
            out[test] = (r["avg_ts"], r["stddev_ts"])
    return out


def membw(path):
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if r["test"] == "membw":
                    return r
    raise SystemExit(f"{path}: no membw result")


manifest, bw_f16, bw_q8 = sys.argv[1:4]
rows = []
with open(manifest) as f:
    for line in f:
        engine, fmt, head, kind, path, rss = line.rstrip("\n").split("\t")
        rows.append((engine, fmt, head, kind, load(kind, path), int(rss) if rss.isdigit() else None))
limits = {"F16": membw(bw_f16), "Q8_0": membw(bw_q8)}

tests = sorted({t for r in rows for t in r[4]}, key=lambda t: (not t.startswith("pp"), t))
pp = [t for t in tests if t.startswith("pp")]
tg = [t for t in tests if t.startswith("tg")]


def best_ours(head, test):
    vals = [r[4][test][0] for r in rows if r[3] == "ours" and r[2] == head and test in r[4]]
    return max(vals) if vals else None


header = ["engine", "format", "head"]
for t in tests:
    header += [f"{t} t/s", f"ours / this {t}"]
header += [f"{t} % of bw limit" for t in tg] + ["peak RSS MiB"]
print("| " + " | ".join(header) + " |")
print("|" + "|".join("---" for _ in header) + "|")
for engine, fmt, head, kind, res, rss in rows:
    cells = [engine, fmt, head]
    for t in tests:
        if t in res:
            m, sd = res[t]
            ours = best_ours(head, t)
            cells += [f"{m:.2f} ± {sd:.2f}", f"{ours / m:.2f}x" if ours and m > 0 else "-"]
        else:
            cells += ["-", "-"]
    for t in tg:
        lim = limits[head]["limit_tps"]
        cells.append(f"{100 * res[t][0] / lim:.0f}%" if t in res else "-")
    cells.append(f"{rss / 1024:.0f}" if rss else "-")
    print("| " + " | ".join(cells) + " |")

print()
for head, r in limits.items():
    print(
        f"{head} head: memory read bandwidth {r['bytes_per_s'] / 1e9:.1f} GB/s ({r['threads']} threads), "
        f"{r['bytes_per_token'] / 1e6:.0f} MB of weights read per generated token "
        f"-> decode limit {r['limit_tps']:.1f} t/s"
    )
print("'ours / this': the best bitnet-rs row with the same head divided by this row (above 1: we are faster).")
