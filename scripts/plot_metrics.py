#!/usr/bin/env python3
"""SVG charts of fedpeft metrics.jsonl files, with the standard library only.

Each run is LABEL=PATH, PATH a metrics.jsonl (one JSON object per cloud
round) or the run's --out folder that holds one. Optionally LABEL=PATH:S
multiplies that run's x by S (e.g. S = κ edge rounds per cloud round, to
plot against edge rounds).

  # a line per run: server_eval_loss against the round
  scripts/plot_metrics.py --out docs/img/x.svg --title "eval loss" \\
      flat=out/a edges=out/b:2
  # cumulative upload bytes per round, as lines or as bars of the total
  scripts/plot_metrics.py --out up.svg --metric bytes_up --cumulative a=out/a
  scripts/plot_metrics.py --out up.svg --metric bytes_up --bars a=out/a
  # each run's % difference from a reference run, round by round
  scripts/plot_metrics.py --out gap.svg --relative-to out/a b=out/b c=out/c

Rounds where the metric is missing or not a number are skipped (a line
bridges them); bytes are shown in MiB.
"""

import argparse
import json
import math
import os
import sys
from xml.sax.saxutils import escape

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
          "#e377c2", "#7f7f7f"]
# Dashes tell apart lines that coincide (e.g. runs that agree exactly).
DASHES = ["", "7,4", "2,3", "10,3,2,3"]
W, H = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 36, 48


def load(path):
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def series(rows, metric, x_key, scale, cumulative):
    """(x, y) points of `metric`, x = x_key (cumulative when seconds)."""
    pts, total, t = [], 0.0, 0.0
    for i, r in enumerate(rows):
        v = r.get(metric)
        t += float(r.get("seconds") or 0)
        x = t if x_key == "seconds" else float(r.get("round", i + 1)) * scale
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        total += v
        pts.append((x, total if cumulative else float(v)))
    return pts


def nice_ticks(lo, hi, n=5):
    """About n round-numbered ticks covering [lo, hi]."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, v = [], first
    while v < hi + step * 0.999:
        ticks.append(round(v, 10))
        v += step
    return ticks


def fmt(v):
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


class Svg:
    def __init__(self, title):
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" '
            f'height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" '
            'font-size="12">',
            f'<rect width="{W}" height="{H}" fill="white"/>',
            f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">'
            f'{escape(title)}</text>']

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, anchor="middle", extra=""):
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"'
                 f'{extra}>{escape(s)}</text>')

    def done(self):
        return "\n".join(self.parts + ["</svg>"]) + "\n"


def axes(svg, xticks, yticks, xlabel, ylabel, sx, sy, x_text=None):
    """Frame, grid, tick labels and axis titles; x_text overrides x labels."""
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP
    for v in yticks:
        y = sy(v)
        svg.add(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" '
                'stroke="#e0e0e0"/>')
        svg.text(x0 - 6, y + 4, fmt(v), "end")
    for i, v in enumerate(xticks):
        x = sx(v)
        svg.add(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 4}" '
                'stroke="black"/>')
        svg.text(x, y0 + 17, x_text[i] if x_text else fmt(v))
    svg.add(f'<polyline points="{x0},{y1} {x0},{y0} {x1},{y0}" fill="none" '
            'stroke="black"/>')
    svg.text((x0 + x1) / 2, H - 10, xlabel)
    svg.text(16, (y0 + y1) / 2, ylabel, "middle",
             f' transform="rotate(-90 16 {(y0 + y1) / 2:.1f})"')


def stroke(i):
    dash = DASHES[i % len(DASHES)]
    return (f'stroke="{COLORS[i % len(COLORS)]}" stroke-width="2"'
            + (f' stroke-dasharray="{dash}"' if dash else ""))


def legend(svg, labels, points=()):
    """Legend box in the plot corner that covers the fewest of `points`."""
    width = 28 + 7 * max(len(s) for s in labels)
    height = 16 * len(labels) + 6
    corners = [(W - RIGHT - 10 - width, TOP + 4),
               (W - RIGHT - 10 - width, H - BOTTOM - 8 - height),
               (LEFT + 10, TOP + 4), (LEFT + 10, H - BOTTOM - 8 - height)]

    def covered(corner):
        x0, y0 = corner
        return sum(x0 - 8 <= px <= x0 + width + 8 and y0 - 8 <= py <= y0 + height + 8
                   for px, py in points)
    x0, y0 = min(corners, key=covered)
    svg.add(f'<rect x="{x0 - 6}" y="{y0 - 2}" width="{width + 12}" '
            f'height="{height}" fill="white" stroke="#ccc"/>')
    for i, s in enumerate(labels):
        yy = y0 + 16 * i + 10
        svg.add(f'<line x1="{x0}" y1="{yy}" x2="{x0 + 18}" y2="{yy}" '
                f'{stroke(i)}/>')
        svg.text(x0 + 24, yy + 4, s, "start")


def line_chart(runs, title, xlabel, ylabel):
    xs = [p[0] for _, pts in runs for p in pts]
    ys = [p[1] for _, pts in runs for p in pts]
    ylo, yhi = min(ys), max(ys)
    pad = (yhi - ylo) * 0.05 or 0.05 * abs(yhi) or 1.0
    # Never below 0 for data that is not (bytes, cumulative sums).
    yticks = nice_ticks(max(ylo - pad, 0.0) if ylo >= 0 else ylo - pad,
                        yhi + pad)
    xticks = nice_ticks(min(0.0, min(xs)), max(xs), 6)
    x_lo, x_hi, y_lo, y_hi = xticks[0], xticks[-1], yticks[0], yticks[-1]

    def sx(v):
        return LEFT + (v - x_lo) / (x_hi - x_lo) * (W - LEFT - RIGHT)

    def sy(v):
        return H - BOTTOM - (v - y_lo) / (y_hi - y_lo) * (H - TOP - BOTTOM)

    svg = Svg(title)
    axes(svg, xticks, yticks, xlabel, ylabel, sx, sy)
    drawn = []  # screen points on the lines, to place the legend
    for i, (_, pts) in enumerate(runs):
        c = COLORS[i % len(COLORS)]
        p = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        svg.add(f'<polyline points="{p}" fill="none" {stroke(i)}/>')
        for x, y in pts:
            svg.add(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" '
                    f'fill="{c}"/>')
        for (xa, ya), (xb, yb) in zip(pts, pts[1:] + pts[-1:]):
            drawn += [(sx(xa + (xb - xa) * f / 8), sy(ya + (yb - ya) * f / 8))
                      for f in range(8)]
    legend(svg, [label for label, _ in runs], drawn)
    return svg.done()


def bar_chart(runs, title, ylabel):
    """One bar per run: its last point (a total when cumulative)."""
    values = [pts[-1][1] if pts else 0.0 for _, pts in runs]
    yticks = nice_ticks(0.0, max(values) * 1.08 or 1.0)
    y_hi = yticks[-1]
    n = len(runs)
    slot = (W - LEFT - RIGHT) / n

    def sy(v):
        return H - BOTTOM - v / y_hi * (H - TOP - BOTTOM)

    svg = Svg(title)
    centers = [i + 0.5 for i in range(n)]
    axes(svg, centers, yticks, "", ylabel,
         lambda v: LEFT + v * slot, sy, [label for label, _ in runs])
    for i, v in enumerate(values):
        x = LEFT + i * slot + slot * 0.2
        svg.add(f'<rect x="{x:.1f}" y="{sy(v):.1f}" width="{slot * 0.6:.1f}" '
                f'height="{sy(0) - sy(v):.1f}" '
                f'fill="{COLORS[i % len(COLORS)]}"/>')
        svg.text(x + slot * 0.3, sy(v) - 4, f"{v:.3g}")
    return svg.done()


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="LABEL=PATH[:XSCALE]")
    ap.add_argument("--out", required=True, help="the .svg to write")
    ap.add_argument("--metric", default="server_eval_loss")
    ap.add_argument("--x", choices=["round", "seconds"], default="round",
                    help="round (times XSCALE) or cumulative wall seconds")
    ap.add_argument("--xlabel", help="default: from --x")
    ap.add_argument("--ylabel", help="default: the metric")
    ap.add_argument("--title", default="")
    ap.add_argument("--cumulative", action="store_true",
                    help="plot the running sum of the metric")
    ap.add_argument("--relative-to", metavar="PATH",
                    help="plot each run's difference from this run, in %% "
                    "of its value, at the x both have")
    ap.add_argument("--bars", action="store_true",
                    help="one bar per run: the total (the last value "
                    "without --cumulative)")
    a = ap.parse_args()

    is_bytes = a.metric.startswith("bytes") and not a.relative_to
    ref = None
    if a.relative_to:
        ref = dict(series(load(a.relative_to), a.metric, a.x, 1.0,
                          a.cumulative or a.bars))
    runs = []
    for spec in a.runs:
        label, sep, rest = spec.rpartition("=")  # labels may hold "="
        if not sep:
            sys.exit(f"plot_metrics.py: expected LABEL=PATH, got '{spec}'")
        path, _, scale = rest.partition(":")
        pts = series(load(path), a.metric, a.x, float(scale or 1),
                     a.cumulative or a.bars)
        if ref is not None:
            pts = [(x, (y / ref[x] - 1) * 100) for x, y in pts
                   if ref.get(x)]
        if is_bytes:
            pts = [(x, y / 1048576.0) for x, y in pts]
        if not pts:
            sys.exit(f"plot_metrics.py: {path}: no values of '{a.metric}'")
        runs.append((label, pts))

    ylabel = a.ylabel or (("cumulative " if a.cumulative or a.bars else "")
                          + a.metric + (" (MiB)" if is_bytes else "")
                          + (" vs reference (%)" if ref is not None else ""))
    if a.bars:
        text = bar_chart(runs, a.title, ylabel)
    else:
        xlabel = a.xlabel or ("wall time (s)" if a.x == "seconds"
                              else "round")
        text = line_chart(runs, a.title, xlabel, ylabel)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
