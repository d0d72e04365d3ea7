"""Plot bench/results/latency_curve.json as the p99-against-speed curve (a PNG beside it).

With several rounds (`latency_curve.py --rounds`), each case is drawn at the median of its rounds,
and every round as a faint point of the same marker: the spread is part of the result.

.venv/bin/pip install -e '.[bench]'       # matplotlib
.venv/bin/python bench/plot_latency_curve.py [results.json] [--out curve.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "latency_curve.json"
STYLE = {  # kind -> (marker, colour, legend)
    "oneshot": ("s", "tab:gray", "one-shot UPDATE"),
    "pacing": ("o", "tab:blue", "pacing (defaults, batch targets, rows/s limits)"),
    "budget": ("D", "tab:red", "latency budget --max-latency-impact F"),
}


def plot(doc: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    seen: set[str] = set()
    by_label: dict[str, list[dict[str, Any]]] = {}
    for case in doc["cases"]:
        by_label.setdefault(case["label"], []).append(case)
    for label, runs in by_label.items():
        # Every round as a faint point, the median of the rounds as the labelled one.
        marker, colour, legend = STYLE[runs[0]["kind"]]
        xs, ys = [r["speed_ratio"] for r in runs], [r["p99_ratio"] for r in runs]
        if len(runs) > 1:
            ax.scatter(xs, ys, marker=marker, color=colour, s=18, alpha=0.35)
        x, y = statistics.median(xs), statistics.median(ys)
        ax.scatter(x, y, marker=marker, color=colour, s=55, label=None if runs[0]["kind"] in seen else legend)
        seen.add(runs[0]["kind"])
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    for case in doc["cases"]:
        if case["kind"] == "budget":
            f = case["settings"]["max_latency_impact"]
            ax.axhline(f, color="tab:red", lw=0.6, ls=":", alpha=0.6)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xlabel("backfill speed / one-shot UPDATE speed")
    ax.set_ylabel("probe p99 during backfill / idle p99")
    rounds = max((c.get("round", 1) for c in doc["cases"]), default=1)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    m = doc.get("machine", {})
    other = doc.get("max_other_cores", 0)
    ax.set_title(
        f"online-uuid backfill: application p99 against speed (durable settings)\n"
        f"{doc.get('parents', 0):,} parents + {doc.get('children', 0):,} children, "
        f"{m.get('nproc')} vCPU, other work on the machine up to {other:.2f} cores"
        + (f", median of {rounds} rounds" if rounds > 1 else ""),
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results", nargs="?", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    doc = json.loads(args.results.read_text())
    out = args.out or args.results.with_suffix(".png")
    plot(doc, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
