"""Run every benchmark, one after the other, each on its own throwaway cluster.

    .venv/bin/python bench/run_all.py --scale 1       # the sizes of the targets (~15-20 min on 2 cores)
    .venv/bin/python bench/run_all.py --scale 0.01    # smoke run, under 2 minutes

Results land in bench/results/<name>.json (smoke runs with --scale < 1 go to bench/results/scale-<s>/
unless --out-dir says otherwise, so they never overwrite the committed full-scale numbers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
BENCHES = ("trigger_overhead", "cutover_lock", "backfill_speed", "oltp_probe")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--only", nargs="*", choices=BENCHES, default=list(BENCHES))
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args()
    out_dir = args.out_dir or (
        BENCH_DIR / "results" if args.scale >= 1 else BENCH_DIR / "results" / f"scale-{args.scale:g}"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, str]] = {}
    failed: list[str] = []
    t0 = time.monotonic()
    for name in args.only:
        print(f"=== {name} (scale {args.scale:g}) ===", flush=True)
        t = time.monotonic()
        out = out_dir / f"{name}.json"
        rc = subprocess.call(
            [sys.executable, str(BENCH_DIR / f"{name}.py"), "--scale", str(args.scale), "--out", str(out)]
        )
        print(f"--- {name}: {time.monotonic() - t:.0f}s, exit {rc}", flush=True)
        if rc != 0:
            failed.append(name)
            continue
        doc = json.loads(out.read_text())
        summary[name] = {k: v["verdict"] for k, v in doc.get("targets", {}).items()}
    print(
        f"\n=== summary ({time.monotonic() - t0:.0f}s total, scale {args.scale:g}, results in {out_dir}) ==="
    )
    for name, verdicts in summary.items():
        for target, verdict in verdicts.items():
            print(f"  {name:18s} {target:22s} {verdict}")
    for name in failed:
        print(f"  {name:18s} ERROR (the bench itself failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
