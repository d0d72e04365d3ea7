"""Where a backfill's time goes: server time per statement kind against the wall time.

The backfill of `latency_curve.py`'s tables (derived mode, default settings, durable settings, no
probe) runs once with `log_min_duration_statement = 0`; the server log gives each statement's
duration, summed by kind (its first 60 characters; parse and bind steps apart). Wall time minus the server's time is what the
round trips and the client cost. The one-shot `UPDATE`s on an identical copy, timed the same way,
are the reference the latency curve divides by.

    .venv/bin/python bench/backfill_profile.py --scale 0.3
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import common
import latency_curve as curve

from online_uuid.backfill import run_backfill
from online_uuid.metrics import Metrics
from online_uuid.settings import BackfillSettings

DURATION = re.compile(r"duration: ([0-9.]+) ms\s+(statement|execute|parse|bind)[^:]*: (.*)")


def _log_statements(dsn: str, on: bool) -> None:
    with common.connect(dsn) as conn:
        if on:
            conn.execute("ALTER SYSTEM SET log_min_duration_statement = 0")
        else:
            conn.execute("ALTER SYSTEM RESET log_min_duration_statement")
        conn.execute("SELECT pg_reload_conf()")


def _by_kind(log_text: str) -> list[dict[str, Any]]:
    total: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for m in DURATION.finditer(log_text):
        step = "" if m.group(2) in ("statement", "execute") else f"({m.group(2)}) "
        kind = step + re.sub(r"\s+", " ", m.group(3))[:60]
        total[kind] += float(m.group(1)) / 1000
        count[kind] += 1
    return [
        {"statement": k, "seconds": round(s, 3), "calls": count[k], "ms_each": round(1000 * s / count[k], 2)}
        for k, s in total.most_common()
    ]


def main() -> None:
    args = common.parse_args(__doc__ or "", [])
    common.quiet_logs()
    parents = common.scaled(curve.PARENTS, args.scale, 10_000)
    children = common.scaled(curve.CHILDREN, args.scale, 20_000)
    with common.bench_cluster(curve.DURABLE) as cluster:
        doc: dict[str, Any] = {"bench": "backfill_profile", "scale": args.scale, **common.header(cluster)}
        common.warm_up(cluster, parents + children)
        curve.build_template(cluster, parents, children)
        oneshot_dsn, backfill_dsn = curve.copy(cluster, "oneshot"), curve.copy(cluster, "backfill")
        common.settle(oneshot_dsn)
        t0 = time.monotonic()
        rows = curve.oneshot(oneshot_dsn)
        doc["oneshot"] = {"rows": rows, "seconds": round(time.monotonic() - t0, 2)}
        common.settle(backfill_dsn)
        start = cluster.log_path.stat().st_size
        _log_statements(backfill_dsn, True)
        with common.CpuMeter(cluster) as cpu:
            t0 = time.monotonic()
            result = run_backfill(
                backfill_dsn, curve.MID, BackfillSettings(), metrics=Metrics(curve.MID), take_lock=True
            )
            wall = time.monotonic() - t0
        _log_statements(backfill_dsn, False)
        with cluster.log_path.open(errors="replace") as log:
            log.seek(start)
            kinds = _by_kind(log.read())
    server = sum(k["seconds"] for k in kinds)
    doc.update(
        {
            "parents": parents,
            "children": children,
            "backfill": {
                "rows": result.total_rows,
                "batches": result.batches,
                "seconds": round(wall, 2),
                "server_seconds": round(server, 2),
                "outside_server_seconds": round(wall - server, 2),
                **cpu.result,
                "by_statement": kinds,
            },
        }
    )
    doc["speed_ratio"] = round(
        (result.total_rows / wall) / (doc["oneshot"]["rows"] / doc["oneshot"]["seconds"]), 3
    )
    for k in kinds[:12]:
        print(f"{k['seconds']:8.2f} s {k['calls']:6d} x {k['ms_each']:8.2f} ms  {k['statement']}")
    print(
        f"backfill {wall:.1f} s wall ({server:.1f} s in the server, {wall - server:.1f} s outside), "
        f"{result.batches} batches; one-shot {doc['oneshot']['seconds']:.1f} s; "
        f"speed {doc['speed_ratio']:.2f} x one-shot"
    )
    print(f"wrote {common.write_results('backfill_profile', doc, args.out)}")


if __name__ == "__main__":
    main()
