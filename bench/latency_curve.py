"""The p99-against-speed curve, on durable settings: what each pacing costs the application.

For each case, an independent probe (the one of `oltp_probe.py`: its own process, 200 ops/s,
point reads, children reads and committed child INSERTs) runs while the backfill fills 1M
parents and 2M children (scale 1). Each case reports two ratios, both measured in this run:

- speed: the backfill's rows/s over the one-shot `UPDATE`s' rows/s on an identical copy;
- latency: the probe's p99 during the backfill over its p99 while idle (two idle windows, just
  before and just after the backfill, pooled).

Cases: the defaults, smaller batch targets, fixed rates, and the latency budget
(`max_latency_impact`) at F = 1.2, 1.5 and 2.0. The one-shot UPDATEs run with the probe too, so
they are a point of the curve (speed 1 by definition).

The cluster runs with fsync, synchronous_commit and full_page_writes **on** (the other benches
turn them off): every commit waits for its WAL flush, as on a production server. The tables are
built once in a template database, after `api.start`, and each case runs on a fresh copy
(`CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY`), dropped afterwards.

    .venv/bin/python bench/latency_curve.py --scale 0.05             # smoke: a few minutes
    .venv/bin/python bench/latency_curve.py --cases defaults,F=1.5   # a subset
    .venv/bin/python bench/plot_latency_curve.py                     # the PNG from the JSON
"""

from __future__ import annotations

import threading
import time
from typing import Any

import common
import oltp_probe
from psycopg import sql

from online_uuid import api
from online_uuid.backfill import run_backfill
from online_uuid.metrics import Metrics
from online_uuid.model import TableRef
from online_uuid.settings import BackfillSettings, StartSettings
from online_uuid.statements import derive_fn

PARENTS = 1_000_000
CHILDREN = 2_000_000
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
TEMPLATE = "curve_template"
MID = "curve"

# (label, BackfillSettings fields); "oneshot" is the one-shot UPDATEs.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("oneshot", {}),
    ("defaults", {}),
    ("batch 200 ms", {"target_batch_ms": 200}),
    ("batch 100 ms", {"target_batch_ms": 100}),
    ("batch 50 ms", {"target_batch_ms": 50}),
    ("batch 20 ms", {"target_batch_ms": 20}),
    ("batch 8 ms", {"target_batch_ms": 8}),
    ("2 workers", {"workers": 2}),
    ("2 workers batch 20 ms", {"workers": 2, "target_batch_ms": 20}),
    ("80k rows/s", {"max_rows_per_second": 80_000}),
    ("50k rows/s", {"max_rows_per_second": 50_000}),
    ("20k rows/s", {"max_rows_per_second": 20_000}),
    ("20k rows/s batch 8 ms", {"max_rows_per_second": 20_000, "target_batch_ms": 8}),
    ("F=2.0", {"max_latency_impact": 2.0}),
    ("F=1.5", {"max_latency_impact": 1.5}),
    ("F=1.5 batch 8 ms", {"max_latency_impact": 1.5, "target_batch_ms": 8}),
    ("F=1.2", {"max_latency_impact": 1.2}),
]
BUDGET_GAUGES = (
    "online_uuid_allowed_rows_per_second",
    "online_uuid_latency_impact_ratio",
    "online_uuid_canary_baseline_seconds",
)


def build_template(cluster: Any, parents: int, children: int) -> None:
    dsn = common.create_database(cluster, TEMPLATE)
    with common.connect(dsn) as conn:
        common.create_pair(conn, "app", parents, children)
        common.vacuum_analyze(conn, "app")
    api.start(
        dsn, ["app.parent"], migration=MID, settings=StartSettings(backfill=False, uuid_source="derived")
    )
    with common.connect(dsn) as conn:
        common.wait_vacuum_idle(conn)
        conn.execute("VACUUM (ANALYZE, FREEZE)")


def copy(cluster: Any, name: str) -> str:
    with common.connect(cluster.dsn) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    return cluster.dsn_for(name)


def drop(cluster: Any, name: str) -> None:
    with common.connect(cluster.dsn) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def oneshot(dsn: str) -> int:
    """The same fill as the backfill's, in one UPDATE per table: derive() of each row's own column
    (the template's migration is derived)."""
    derive = derive_fn(TableRef("app", "parent"), "id")
    with common.connect(dsn) as conn:
        n = conn.execute(sql.SQL("UPDATE app.parent SET id_uuid = {}(id)").format(derive)).rowcount
        n += conn.execute(
            sql.SQL("UPDATE app.child SET parent_id_uuid = {}(parent_id)").format(derive)
        ).rowcount
    return n


class Trace:
    """The latency budget's gauges, sampled every second while the backfill runs."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics, self.stop = metrics, threading.Event()
        self.points: list[dict[str, float]] = []
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            point = {"t": round(time.monotonic() - self.t0, 1)}
            for name in BUDGET_GAUGES:
                point[name.removeprefix("online_uuid_")] = round(
                    self.metrics.registry.get_sample_value(name) or 0.0, 6
                )
            self.points.append(point)

    def finish(self) -> list[dict[str, float]]:
        self.stop.set()
        self.thread.join(5)
        return self.points


def run_case(
    cluster: Any, label: str, fields: dict[str, Any], parents: int, idle_s: float, max_s: float
) -> dict[str, Any]:
    """One case on a fresh copy; a backfill still running after `max_s` is stopped (its rate stands)."""
    name = "case_" + "".join(ch if ch.isalnum() else "_" for ch in label.lower())
    dsn = copy(cluster, name)
    try:
        idle: list[list[oltp_probe.Sample]] = []
        others: list[float] = []
        io_stalled: list[float] = []

        def idle_window() -> None:
            samples, meter = oltp_probe.quiet_window(cluster, dsn, parents, idle_s)
            other = meter["other_cores"]
            io_stalled.append(meter.get("io_stalled", 0.0))
            idle.append(samples)
            others.append(other)

        idle_window()
        probe = oltp_probe.Probe(dsn, parents)
        metrics = Metrics(MID)
        trace = Trace(metrics)
        stopped = False
        with common.CpuMeter(cluster) as cpu:
            t0 = time.monotonic()
            if label == "oneshot":
                rows, throttled = oneshot(dsn), {}
            else:
                stop = threading.Event()
                timer = threading.Timer(max_s, stop.set)
                timer.start()
                result = run_backfill(
                    dsn, MID, BackfillSettings(**fields), metrics=metrics, stop=stop, take_lock=True
                )
                timer.cancel()
                rows, throttled, stopped = result.total_rows, result.throttled_s, result.stopped
            secs = time.monotonic() - t0
        during = [s for s in probe.finish(terminate=True) if s[0] <= secs]
        points = trace.finish()
        idle_window()
    finally:
        drop(cluster, name)
    out: dict[str, Any] = {
        "label": label,
        "kind": "oneshot"
        if label == "oneshot"
        else ("budget" if "max_latency_impact" in fields else "pacing"),
        "settings": fields,
        "rows": rows,
        "stopped_after_max_s": stopped,
        "seconds": round(secs, 2),
        "rows_per_s": round(rows / secs, 1),
        "throttled_s": {k: round(v, 2) for k, v in throttled.items()},
        "idle": {**oltp_probe.summarize(idle), "other_cores": max(others), "io_stalled": io_stalled},
        "idle_windows_p99_ms": [oltp_probe.summarize([w])["p99_ms"] for w in idle],
        "during": {**oltp_probe.summarize([during]), **cpu.result},
    }
    out["p99_ratio"] = round(out["during"]["p99_ms"] / out["idle"]["p99_ms"], 3)
    out["p50_ratio"] = round(out["during"]["p50_ms"] / out["idle"]["p50_ms"], 3)
    if "max_latency_impact" in fields:
        out["budget_trace"] = points
    return out


def main() -> None:
    args = common.parse_args(
        __doc__ or "",
        [
            (
                "--cases",
                {
                    "default": None,
                    "help": "comma-separated labels (default: all): " + ", ".join(c for c, _ in CASES),
                },
            ),
            (
                "--rounds",
                {
                    "type": int,
                    "default": 1,
                    "help": "run the cases this many times, each round with its own one-shot reference",
                },
            ),
            (
                "--max-case-s",
                {
                    "type": float,
                    "default": 180.0,
                    "help": "stop a backfill after this long (its rate stands)",
                },
            ),
        ],
    )
    common.quiet_logs()
    wanted = set(args.cases.split(",")) if args.cases else {c for c, _ in CASES}
    unknown = wanted - {c for c, _ in CASES}
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(sorted(unknown))}")
    wanted.add("oneshot")  # the speed reference
    parents = common.scaled(PARENTS, args.scale, 10_000)
    children = common.scaled(CHILDREN, args.scale, 20_000)
    idle_s = max(5.0, round(20 * min(1.0, args.scale**0.5)))
    t_start = time.monotonic()
    with common.bench_cluster(DURABLE) as cluster:
        doc: dict[str, Any] = {"bench": "latency_curve", "scale": args.scale, **common.header(cluster)}
        doc["warm_up_s"] = round(common.warm_up(cluster, parents + children), 1)
        build_template(cluster, parents, children)
        cases: list[dict[str, Any]] = []
        for round_no in range(1, args.rounds + 1):
            base = 0.0
            for label, fields in CASES:
                if label not in wanted:
                    continue
                r = run_case(cluster, label, fields, parents, idle_s, args.max_case_s)
                base = base or r["rows_per_s"]  # "oneshot" comes first in CASES
                r["round"], r["speed_ratio"] = round_no, round(r["rows_per_s"] / base, 3)
                cases.append(r)
                print(f"[{round_no}] {_line(r)}", flush=True)
    doc.update(
        {
            "parents": parents,
            "children": children,
            "max_case_s": args.max_case_s,
            "probe": {"ops_per_s": oltp_probe.RATE, "threads": oltp_probe.THREADS, "idle_window_s": idle_s},
            "cases": cases,
            "wall_s": round(time.monotonic() - t_start, 1),
        }
    )
    path = common.write_results("latency_curve", doc, args.out)
    print(f"wrote {path}")


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['label']:>12}: {r['rows']:,} rows in {r['seconds']:.1f}s ({r['rows_per_s']:,.0f} rows/s, "
        f"{r['speed_ratio']:.2f}x one-shot); probe p99 idle {r['idle']['p99_ms']:.2f} ms, "
        f"during {r['during']['p99_ms']:.2f} ms = {r['p99_ratio']:.2f}x; other cores {r['during']['other_cores']:.2f}; "
        f"I/O stalled {r['during'].get('io_stalled', 0):.0%} of the time (idle windows "
        f"{', '.join(f'{x:.0%}' for x in r['idle'].get('io_stalled', []))})"
    )


if __name__ == "__main__":
    main()
