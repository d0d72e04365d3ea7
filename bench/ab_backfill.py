"""A/B of the backfill itself: two git revisions of online-uuid on identical copies, alternating.

Each round runs, on fresh copies of `latency_curve.py`'s template (derived mode, durable settings,
no probe): the one-shot `derive()` UPDATEs, then the default backfill of every revision given. Each
revision runs in its own process from a detached worktree of that commit (`PYTHONPATH=<it>/src`),
so the code under test is exactly the commit's. Speed is reported against the one-shot of the same
round: on a VM whose speed drifts by a fifth within minutes, only neighbours compare.

    .venv/bin/python bench/ab_backfill.py --scale 0.3 --rounds 3 --revs cd66915,HEAD
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import latency_curve as curve

REPO = Path(__file__).resolve().parent.parent
# Runs in the revision's own process: the default backfill, its wall time and what it did.
RUNNER = """
import json, sys, time
from online_uuid.backfill import run_backfill
from online_uuid.metrics import Metrics
from online_uuid.settings import BackfillSettings
t0 = time.monotonic()
r = run_backfill(sys.argv[1], sys.argv[2], BackfillSettings(), metrics=Metrics(sys.argv[2]), take_lock=True)
print(json.dumps({"seconds": time.monotonic() - t0, "rows": r.total_rows, "batches": r.batches}))
"""


def worktree(rev: str, into: Path) -> Path:
    """A detached checkout of `rev` under `into` (`git worktree remove` takes it away afterwards)."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    path = into / sha
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), sha],
        check=True,
        capture_output=True,
    )
    return path


def backfill(src: Path, dsn: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src / "src"))
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, dsn, curve.MID], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"the backfill of {src.name} failed:\n{done.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    args = common.parse_args(
        __doc__ or "",
        [
            ("--revs", {"default": "HEAD~1,HEAD", "help": "comma-separated git revisions to compare"}),
            ("--rounds", {"type": int, "default": 3, "help": "rounds (one-shot, then each revision)"}),
        ],
    )
    common.quiet_logs()
    parents = common.scaled(curve.PARENTS, args.scale, 10_000)
    children = common.scaled(curve.CHILDREN, args.scale, 20_000)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ouuid-ab-") as tmp:
        trees = [worktree(rev, Path(tmp)) for rev in args.revs.split(",")]
        try:
            with common.bench_cluster(curve.DURABLE) as cluster:
                doc: dict[str, Any] = {"bench": "ab_backfill", "scale": args.scale, **common.header(cluster)}
                common.warm_up(cluster, parents + children)
                curve.build_template(cluster, parents, children)
                for round_no in range(1, args.rounds + 1):
                    base = 0.0
                    for tree in [None, *trees]:
                        dsn = curve.copy(cluster, "ab")
                        common.settle(dsn)
                        with common.CpuMeter(cluster) as cpu:
                            t0 = time.monotonic()
                            if tree is None:
                                run = {"rev": "oneshot", "rows": curve.oneshot(dsn)}
                                run["seconds"] = time.monotonic() - t0
                            else:
                                run = {"rev": tree.name, **backfill(tree, dsn)}
                        curve.drop(cluster, "ab")
                        base = base or run["seconds"]
                        run.update(
                            round=round_no, speed_vs_oneshot=round(base / run["seconds"], 3), **cpu.result
                        )
                        run["seconds"] = round(run["seconds"], 2)
                        runs.append(run)
                        print(
                            f"[{round_no}] {run['rev']:>8}: {run['seconds']:6.1f} s, "
                            f"{run['speed_vs_oneshot']:.2f} x one-shot",
                            flush=True,
                        )
        finally:
            for tree in trees:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False
                )
    doc.update({"parents": parents, "children": children, "revs": args.revs.split(","), "runs": runs})
    doc["median_speed_vs_oneshot"] = {
        t.name: statistics.median(r["speed_vs_oneshot"] for r in runs if r["rev"] == t.name) for t in trees
    }
    print(f"median speed vs one-shot: {doc['median_speed_vs_oneshot']}")
    print(f"wrote {common.write_results('ab_backfill', doc, args.out)}")


if __name__ == "__main__":
    main()
