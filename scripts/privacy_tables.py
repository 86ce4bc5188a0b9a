#!/usr/bin/env python3
"""Markdown tables of the privacy and compression experiments.

  scripts/privacy_tables.py out/experiments/privacy

Reads every run folder's metrics.jsonl (one JSON object per round), wall_s
and, for the DP runs, the pre-clip "update norm X" of the worker logs
(logs/worker-*.log). Runs that did not finish are left out. Standard library
only; scripts/experiments_privacy.sh (stage table) runs it.
"""

import glob
import json
import math
import os
import re
import statistics
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else "out/experiments/privacy"


def load(name):
    d = os.path.join(OUT, name)
    try:
        with open(os.path.join(d, "metrics.jsonl")) as f:
            rows = [json.loads(l) for l in f if l.strip()]
        with open(os.path.join(d, "wall_s")) as f:
            wall = float(f.read())
    except (OSError, ValueError):
        return None
    return rows or None, wall


def isnum(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


def final(rows, key="server_eval_loss"):
    vals = [r.get(key) for r in rows if isnum(r.get(key))]
    return vals[-1] if vals else None


def num(v, f="{:.4f}"):
    return f.format(v) if isnum(v) else "n/a"


def rel(a, b, digits=2):
    if not (isnum(a) and isnum(b) and b):
        return "n/a"
    return f"{(a / b - 1) * 100:+.{digits}f}%"


def max_rel(rows, base_rows, key="server_eval_loss"):
    """Largest |relative difference| of `key` over the rounds both have."""
    a = {r.get("round"): r.get(key) for r in rows}
    b = {r.get("round"): r.get(key) for r in base_rows}
    d = [abs(a[k] / b[k] - 1) * 100 for k in a
         if k in b and isnum(a[k]) and isnum(b[k]) and b[k]]
    return f"{max(d):.3f}%" if d else "n/a"


def up_per_round(rows):
    return statistics.mean(r.get("bytes_up", 0) for r in rows)


def up_per_upload(rows):
    per = [v for r in rows for v in (r.get("bytes_up_workers") or {}).values()]
    return statistics.mean(per) if per else float("nan")


def norms(name):
    """Pre-clip update norms per round, over the workers' logs."""
    by_round = {}
    pat = re.compile(r"round (\d+):.*update norm ([0-9.eE+-]+)")
    for log in glob.glob(os.path.join(OUT, name, "logs", "worker-*.log")):
        for line in open(log, errors="replace"):
            m = pat.search(line)
            if m:
                by_round.setdefault(int(m.group(1)), []).append(float(m.group(2)))
    return by_round


def header(cols):
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))


# --- compression ---------------------------------------------------------------
comp = [("fp32", "fp32", "32", "no"), ("fp32_seed2", "fp32, federation.seed 2", "32", "no"),
        ("bits16", "16-bit", "16", "no"), ("bits8", "8-bit", "8", "no"),
        ("bits4", "4-bit", "4", "no"), ("bits4_ef", "4-bit + error feedback", "4", "yes"),
        ("bits2", "2-bit", "2", "no")]
base = load("fp32")
if base:
    b_rows = base[0]
    b_up = up_per_round(b_rows)
    print(f"### Compressed uploads, no DP ({len(b_rows)} rounds, 8 workers, block 256)\n")
    header(["run", "bits", "error feedback", "up KiB / round", "B / worker upload",
            "fp32 / this", "final server eval", "final vs fp32",
            "max per-round gap vs fp32", "wall s"])
    for name, label, bits, ef in comp:
        got = load(name)
        if not got:
            continue
        rows, wall = got
        # Every run against fp32 (seed 1); fp32_seed2's gap is the
        # seed-to-seed noise.
        r_rows = b_rows
        up, upl, ev = up_per_round(rows), up_per_upload(rows), final(rows)
        print(f"| {label} | {bits} | {ef} | {up / 1024:.1f} | {upl:.0f} | "
              f"{b_up / up:.2f}x | {num(ev, '{:.5f}')} | {rel(ev, final(r_rows), 3)} | "
              f"{max_rel(rows, r_rows)} | {wall:.0f} |")
    print()

# --- DP ------------------------------------------------------------------------
dp = [("dp_z0", "clip only", "0"), ("dp_z0.3", "DP", "0.3"),
      ("dp_z1", "DP", "1"), ("dp_z3", "DP", "3"),
      ("dp_adaptive_z1", "DP, adaptive C", "1 (1.155 on the sum)"),
      ("dp_z1_edges2", "DP, noise at 2 edges", "1")]


def at_round(name, rnd, key="server_eval_loss"):
    got = load(name)
    if not got:
        return None
    return next((r.get(key) for r in got[0] if r.get("round") == rnd), None)


printed = False
for name, label, z in dp:
    got = load(name)
    if not got:
        continue
    rows, wall = got
    last = rows[-1]
    R = last.get("round")
    nodp = at_round("fp32", R)
    if not printed:
        print(f"### User-level DP (8 users, q = 1, {R} rounds, FFA-LoRA, 8-bit uploads)\n")
        print(f"No DP at round {R}: full LoRA {num(nodp)} (fp32 run), "
              f"{num(at_round('bits8', R))} (8-bit run).\n")
        header(["run", "z", "answered / selected", "final epsilon", "delta",
                "clip norm first -> last", "unclipped fraction (mean)",
                f"server eval, round {R}", "vs no DP", "wall s"])
        printed = True
    eps = final(rows, "epsilon")
    eps_s = "inf" if name == "dp_z0" else num(eps, "{:.2f}")
    delta = last.get("delta")
    delta_s = f"{delta:g}" if isnum(delta) else "-"
    cn = [r.get("clip_norm") for r in rows if isnum(r.get("clip_norm"))]
    cn_s = f"{cn[0]:.3g} -> {cn[-1]:.3g}" if cn else "-"
    uf = [r.get("unclipped_fraction") for r in rows if isnum(r.get("unclipped_fraction"))]
    uf_s = f"{statistics.mean(uf):.2f}" if uf else "-"
    ans = f"{sum(r.get('answered', 0) for r in rows)}/{sum(r.get('selected', 0) for r in rows)}"
    ev = final(rows)
    print(f"| {label} | {z} | {ans} | {eps_s} | {delta_s} | {cn_s} | {uf_s} | "
          f"{num(ev)} | {rel(ev, nodp)} | {wall:.0f} |")
if printed:
    print()

# Pre-clip norms: probe (C = 1000, z = 0) and the DP runs.
runs = [n for n in ("probe_norms", "dp_z0", "dp_z0.3", "dp_z1", "dp_z3", "dp_adaptive_z1")
        if os.path.isdir(os.path.join(OUT, n))]
tab = {n: norms(n) for n in runs}
tab = {n: v for n, v in tab.items() if v}
if tab:
    print("### Pre-clip update norms (median over the 8 workers, per round)\n")
    rounds = sorted({r for v in tab.values() for r in v})
    header(["run"] + [f"r{r}" for r in rounds])
    for n, v in tab.items():
        print(f"| {n} | " + " | ".join(
            f"{statistics.median(v[r]):.2f}" if r in v else "" for r in rounds) + " |")
    print()
