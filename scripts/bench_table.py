"""Renders scripts/bench.sh results as one Markdown table.

    python3 scripts/bench_table.py RESULTS_DIR

RESULTS_DIR/manifest.tsv rows (tab-separated): threads, engine, format, head, kind (ours |
llama), results file, peak RSS in KiB. `ours` files hold `bitnet bench --json` lines, `llama`
files `llama-bench -o json` output. RESULTS_DIR/membw-THREADS-HEAD.json are `bitnet bench
--membw --json` outputs (bandwidth and weight bytes per token for the file with that head).
"""
import json
import os
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


res_dir = sys.argv[1]
rows = []
with open(os.path.join(res_dir, "manifest.tsv")) as f:
    for line in f:
        threads, engine, fmt, head, kind, path, rss = line.rstrip("\n").split("\t")
        rss = int(rss) if rss.strip().isdigit() else None
        rows.append((int(threads), engine, fmt, head, kind, load(kind, path), rss))
probes = {
    (t, head): membw(os.path.join(res_dir, f"membw-{t}-{head}.json"))
    for t, _, _, head, _, _, _ in rows
}
# Bandwidth is the machine's, not the file's: with one probe per head and thread count, the
# best of them is the estimate (a probe that ran while the host was busy reads low).
best_bw = {}
for (t, _), r in probes.items():
    best_bw[t] = max(best_bw.get(t, 0.0), r["bytes_per_s"])
limits = {
    (t, head): {
        "bytes_per_s": best_bw[t],
        "bytes_per_token": r["bytes_per_token"],
        "limit_tps": best_bw[t] / max(r["bytes_per_token"], 1),
    }
    for (t, head), r in probes.items()
}

tests = sorted({t for r in rows for t in r[5]}, key=lambda t: (not t.startswith("pp"), t))
tg = [t for t in tests if t.startswith("tg")]


def best_ours(threads, head, test):
    vals = [r[5][test][0] for r in rows
            if r[4] == "ours" and r[0] == threads and r[3] == head and test in r[5]]
    return max(vals) if vals else None


header = ["threads", "engine", "format", "head"]
for t in tests:
    header += [f"{t} t/s", f"ours / this {t}"]
header += [f"{t} % of bw limit" for t in tg] + ["peak RSS MiB"]
print("| " + " | ".join(header) + " |")
print("|" + "|".join("---" for _ in header) + "|")
for threads, engine, fmt, head, kind, res, rss in rows:
    cells = [str(threads), engine, fmt, head]
    for t in tests:
        if t in res:
            m, sd = res[t]
            ours = best_ours(threads, head, t)
            cells += [f"{m:.2f} ± {sd:.2f}", f"{ours / m:.2f}x" if ours and m > 0 else "-"]
        else:
            cells += ["-", "-"]
    for t in tg:
        lim = limits[(threads, head)]["limit_tps"]
        cells.append(f"{100 * res[t][0] / lim:.0f}%" if t in res else "-")
    cells.append(f"{rss / 1024:.0f}" if rss else "-")
    print("| " + " | ".join(cells) + " |")

print()
for (threads, head), r in sorted(limits.items()):
    print(
        f"{threads} threads, {head} head: read bandwidth {r['bytes_per_s'] / 1e9:.1f} GB/s, "
        f"{r['bytes_per_token'] / 1e6:.0f} MB of weights read per generated token "
        f"-> decode limit {r['limit_tps']:.1f} t/s"
    )
print("'ours / this': the best bitnet-rs row with the same threads and head divided by this row "
      "(above 1: we are faster). Bytes per token are bitnet-rs's (2 bits per ternary weight).")
