"""Renders scripts/bench-serve.sh results as Markdown tables, one per model.

    python3 scripts/bench_serve_table.py RESULTS_DIR

RESULTS_DIR/manifest.tsv rows (tab-separated): model, engine, model file, loadgen --json file
(empty when the server did not come up), the server's peak RSS in KiB (may be empty), and for
bitnet-rs a `bitnet bench --json` file with its single-stream decode speed (may be empty).
"""
import json
import os
import sys

OURS = "bitnet-rs"


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def bench_tg(path):
    """Mean tg t/s from `bitnet bench --json` lines (None when absent)."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                if str(r.get("test", "")).startswith("tg"):
                    return r.get("tps_mean")
    return None


def main(res_dir):
    runs = {}    # model -> [(engine, info or None, rss KiB, tg)]
    with open(os.path.join(res_dir, "manifest.tsv")) as f:
        for line in f:
            if not line.strip():
                continue
            model, engine, _file, js, rss, tg = (line.rstrip("\n").split("\t") + [""] * 6)[:6]
            info = None
            if js and os.path.exists(js):
                with open(js) as jf:
                    info = json.load(jf)
            runs.setdefault(model, []).append(
                (engine, info, int(rss) if rss.strip().isdigit() else None, bench_tg(tg)))

    for model, rows in runs.items():
        ours = next((info for e, info, _, _ in rows if e == OURS and info), None)
        ours_by_n = {s["clients"]: s for s in ours["levels"]} if ours else {}
        prompt = next((info.get("prompt_tokens_calibrated") for _, info, _, _ in rows
                       if info and info.get("prompt_tokens_calibrated")), None)
        print(f"\n### {model}" + (f" (prompt {prompt} tokens" if prompt else " (")
              + f", max_tokens {next((i['max_tokens'] for _, i, _, _ in rows if i), '-')})\n")
        print("| engine | N | agg tok/s | ours / this | req/s | TTFT p50 ms | TTFT p99 ms "
              "| ITL p50 ms | ITL p99 ms | stream tok/s | errors |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        notes = []
        for engine, info, rss, tg in rows:
            if not info:
                print(f"| {engine} | - | did not run | | | | | | | | |")
                continue
            for s in info["levels"]:
                n = s["clients"]
                r = None
                if engine != OURS and n in ours_by_n:
                    r = ratio(ours_by_n[n]["agg_tok_s"], s["agg_tok_s"])
                print(f"| {engine} | {n} | {fmt(s['agg_tok_s'])} | "
                      f"{fmt(r, 2) + 'x' if r is not None else ''} | {fmt(s['req_s'], 2)} | "
                      f"{fmt(s['ttft_ms']['p50'])} | {fmt(s['ttft_ms']['p99'])} | "
                      f"{fmt(s['itl_ms']['p50'], 2)} | {fmt(s['itl_ms']['p99'], 2)} | "
                      f"{fmt(s['stream_tok_s']['p50'])} | {s['errors']} |")
                for msg in s.get("error_samples", [])[:2]:
                    notes.append(f"{engine} N={n}: {msg}")
                if s.get("stopped_early"):
                    notes.append(f"{engine} N={n}: {s['stopped_early']} requests ended before "
                                 f"max_tokens (counted as received)")
        print()
        # scaling: N=16 / N=1 (the target), else the largest N / the smallest
        for engine, info, rss, tg in rows:
            if not info or not info["levels"]:
                continue
            by_n = {s["clients"]: s for s in info["levels"]}
            lo = 1 if 1 in by_n else min(by_n)
            hi = 16 if 16 in by_n else max(by_n)
            parts = []
            sc = ratio(by_n[hi]["agg_tok_s"], by_n[lo]["agg_tok_s"])
            if hi != lo:
                parts.append(f"N={hi} / N={lo} aggregate {fmt(sc, 2)}x")
            top = max(by_n)
            if top not in (hi, lo):
                parts.append(f"N={top} / N={lo} {fmt(ratio(by_n[top]['agg_tok_s'], by_n[lo]['agg_tok_s']), 2)}x")
            if rss:
                parts.append(f"peak RSS {rss / 1024:.0f} MiB")
            if tg is not None and 1 in by_n:
                one = by_n[1]["stream_tok_s"]["p50"]
                parts.append(f"single stream {fmt(one)} tok/s vs `bitnet bench` tg {fmt(tg)} "
                             f"({fmt(ratio(one, tg) * 100 if ratio(one, tg) else None, 0)}%)")
            print(f"- {engine}: " + "; ".join(parts))
        for n in notes[:12]:
            print(f"- note: {n}")
    print("\nagg tok/s: generated tokens per second while all N clients were busy; "
          "ours / this: bitnet-rs's agg tok/s divided by that row's; stream tok/s: median "
          "decode speed of one request after its first token.")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
