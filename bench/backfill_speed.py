"""Backfill speed on an idle database vs the one-shot UPDATEs on an identical copy.

Target: the backfill (default BackfillSettings) of 1M parents + 2M children runs at >= 0.8 x the
rows/s of `UPDATE parent SET id_uuid = gen_random_uuid()` plus the one-shot join
`UPDATE child SET parent_id_uuid = p.id_uuid FROM parent p WHERE p.id = child.parent_id`.

Three identical copies, each in its own database: `oneshot` (plain uuid columns added, no
triggers), `backfill` (api.start without backfill, then api.backfill timed, default settings) and
`backfill_novacuum` (the same with vacuum_every_pct=0, i.e. --vacuum-every 0). All are VACUUM
ANALYZEd after loading; before each timing autovacuum is let finish and a CHECKPOINT runs.
pg_total_relation_size of both tables is reported before and after.

`--uuid-source derived` starts the two backfill copies in derived mode (the default of the tool)
and adds issue 12's target: the FK job's rows/s >= 0.9 x the key job's rows/s (jobs run one at a
time, workers=1, so each job's rows/s is its own). The parent and the child differ in shape (the
child's rows are wider and its second index is in random order, so even the one-shot UPDATE is
slower per row on it), so derived mode adds a fourth copy, `child_key`, in which the child's own
key is converted (its FK dropped): the FK job and a key job on the same table (`fk_vs_key_same_table`). `--durable` turns fsync, synchronous_commit and
full_page_writes on. The results file is named after the mode (`backfill_speed_derived[_durable]`);
the plain name stays the random-mode, cheap-settings run.
"""

from __future__ import annotations

import time
from typing import Any

import common

from online_uuid import api
from online_uuid.settings import BackfillSettings, StartSettings

PARENTS = 1_000_000
CHILDREN = 2_000_000
TARGET = 0.8
TARGET_FK_VS_KEY = 0.9
SAME_TABLE = "child_key"  # derived mode: the child's own key converted, to compare jobs on one table
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def sizes(dsn: str) -> dict[str, int]:
    with common.connect(dsn) as conn:
        return {t: common.total_size(conn, "app", t) for t in ("parent", "child")}


def run_oneshot(cluster: Any, dsn: str) -> dict[str, Any]:
    common.settle(dsn)
    with common.connect(dsn) as conn, common.CpuMeter(cluster) as cpu:
        t0 = time.monotonic()
        n_parent = conn.execute("UPDATE app.parent SET id_uuid = gen_random_uuid()").rowcount
        t1 = time.monotonic()
        n_child = conn.execute(
            "UPDATE app.child SET parent_id_uuid = p.id_uuid FROM app.parent p WHERE p.id = child.parent_id"
        ).rowcount
        t2 = time.monotonic()
    return {
        "rows": n_parent + n_child,
        "parent_s": round(t1 - t0, 3),
        "child_s": round(t2 - t1, 3),
        "seconds": round(t2 - t0, 3),
        "rows_per_s": round((n_parent + n_child) / (t2 - t0), 1),
        **cpu.result,
    }


def run_backfill(cluster: Any, dsn: str, mid: str, settings: BackfillSettings) -> dict[str, Any]:
    common.settle(dsn)
    with common.CpuMeter(cluster) as cpu:
        t0 = time.monotonic()
        r = api.backfill(dsn, mid, settings=settings)
        secs = time.monotonic() - t0
    with common.connect(dsn) as conn:
        jobs = conn.execute(
            "SELECT job_id, kind, rows_done, batches, extract(epoch FROM finished_at - started_at)::float8 "
            "FROM online_uuid.backfill WHERE migration_id = %s ORDER BY started_at",
            (mid,),
        ).fetchall()
    return {
        "rows": r.total_rows,
        "seconds": round(secs, 3),
        "rows_per_s": round(r.total_rows / secs, 1),
        "batches": r.batches,
        "retries": r.retries,
        "throttled_s": {k: round(v, 2) for k, v in r.throttled_s.items()},
        "phase": r.phase,
        "jobs": {
            str(j): {
                "kind": str(k),
                "rows": int(n),
                "batches": int(b),
                "seconds": round(float(s), 2),
                "rows_per_s": round(n / s, 1),
            }
            for j, k, n, b, s in jobs
        },
        **cpu.result,
    }


def main() -> None:
    args = common.parse_args(
        __doc__ or "",
        [
            ("--uuid-source", {"choices": ("random", "derived"), "default": "random"}),
            ("--durable", {"action": "store_true", "help": "fsync, synchronous_commit, full_page_writes on"}),
        ],
    )
    common.quiet_logs()
    parents = common.scaled(PARENTS, args.scale, 10_000)
    children = common.scaled(CHILDREN, args.scale, 20_000)
    t_start = time.monotonic()
    with common.bench_cluster(DURABLE if args.durable else None) as cluster:
        doc = common.mode_header("backfill_speed", args, cluster)
        result_name = doc["bench"]
        names = ["oneshot", "backfill", "backfill_novacuum"]
        if args.uuid_source == "derived":
            names.append(SAME_TABLE)
        dsns = {name: common.create_database(cluster, name) for name in names}
        mids: dict[str, str] = {}
        for name, dsn in dsns.items():
            with common.connect(dsn) as conn:
                common.create_pair(conn, "app", parents, children)
                if name == SAME_TABLE:  # the child alone, its own key converted
                    conn.execute("ALTER TABLE app.child DROP CONSTRAINT child_parent_id_fkey")
                common.vacuum_analyze(conn, "app")
                if name == "oneshot":
                    conn.execute("ALTER TABLE app.parent ADD COLUMN id_uuid uuid")
                    conn.execute("ALTER TABLE app.child ADD COLUMN parent_id_uuid uuid")
            if name != "oneshot":
                mids[name] = api.start(
                    dsn,
                    ["app.child" if name == SAME_TABLE else "app.parent"],
                    migration=name,
                    settings=StartSettings(backfill=False, uuid_source=args.uuid_source),
                )
        print(f"three identical copies of {parents:,} parents + {children:,} children loaded", flush=True)
        before = {name: sizes(dsn) for name, dsn in dsns.items()}
        oneshot = run_oneshot(cluster, dsns["oneshot"])
        print(
            f"one-shot UPDATEs: {oneshot['rows']:,} rows in {oneshot['seconds']:.2f}s "
            f"= {oneshot['rows_per_s']:,.0f} rows/s",
            flush=True,
        )
        default = run_backfill(cluster, dsns["backfill"], mids["backfill"], BackfillSettings())
        print(
            f"backfill (default settings): {default['rows']:,} rows in {default['seconds']:.2f}s "
            f"= {default['rows_per_s']:,.0f} rows/s, {default['batches']} batches",
            flush=True,
        )
        novac = run_backfill(
            cluster,
            dsns["backfill_novacuum"],
            mids["backfill_novacuum"],
            BackfillSettings(vacuum_every_pct=0),
        )
        print(
            f"backfill (--vacuum-every 0): {novac['rows']:,} rows in {novac['seconds']:.2f}s "
            f"= {novac['rows_per_s']:,.0f} rows/s",
            flush=True,
        )
        same = None
        if SAME_TABLE in dsns:
            same = run_backfill(cluster, dsns[SAME_TABLE], mids[SAME_TABLE], BackfillSettings())
            print(f"backfill of the child's own key: {same['rows_per_s']:,.0f} rows/s", flush=True)
        after = {name: sizes(dsn) for name, dsn in dsns.items()}
        report = api.verify(dsns["backfill"], mids["backfill"])
    ratio = default["rows_per_s"] / oneshot["rows_per_s"]
    size_table = {
        name: {
            "before_bytes": before[name],
            "after_bytes": after[name],
            "growth": {t: round(after[name][t] / before[name][t], 3) for t in ("parent", "child")},
        }
        for name in dsns
    }
    targets = {
        "backfill_speed": {
            "target": f"backfill rows/s >= {TARGET} x one-shot UPDATEs rows/s (default settings)",
            "backfill_rows_per_s": default["rows_per_s"],
            "oneshot_rows_per_s": oneshot["rows_per_s"],
            "ratio": round(ratio, 3),
            "verdict": common.verdict(ratio >= TARGET),
        },
    }
    for label, run in (("default", default), ("vacuum_every_0", novac)):
        kinds: dict[str, list[float]] = {}
        for job in run["jobs"].values():
            kinds.setdefault("key" if job["kind"] == "key" else "fk", []).append(job["rows_per_s"])
        if kinds.get("key") and kinds.get("fk"):
            key_rps, fk_rps = min(kinds["key"]), min(kinds["fk"])
            targets[f"fk_vs_key_{label}"] = {
                "target": f"FK job rows/s >= {TARGET_FK_VS_KEY} x key job rows/s ({args.uuid_source} mode)",
                "key_rows_per_s": key_rps,
                "fk_rows_per_s": fk_rps,
                "ratio": round(fk_rps / key_rps, 3),
                "verdict": common.verdict(fk_rps / key_rps >= TARGET_FK_VS_KEY),
            }
    if same is not None:
        fk_rps = next(j["rows_per_s"] for j in default["jobs"].values() if j["kind"] == "fk")
        key_rps = next(iter(same["jobs"].values()))["rows_per_s"]
        targets["fk_vs_key_same_table"] = {
            "target": f"FK job rows/s >= {TARGET_FK_VS_KEY} x key job rows/s on the same table (the "
            "child: its FK column in `backfill`, its own key in `child_key`)",
            "key_rows_per_s": key_rps,
            "fk_rows_per_s": fk_rps,
            "ratio": round(fk_rps / key_rps, 3),
            "verdict": common.verdict(fk_rps / key_rps >= TARGET_FK_VS_KEY),
        }
    doc.update(
        {
            "parents": parents,
            "child_key": same,
            "children": children,
            "oneshot": oneshot,
            "backfill_default": default,
            "backfill_vacuum_every_0": novac,
            "ratio_vacuum_every_0": round(novac["rows_per_s"] / oneshot["rows_per_s"], 3),
            "sizes": size_table,
            "verify_ok": report.ok,
            "targets": targets,
            "wall_s": round(time.monotonic() - t_start, 1),
        }
    )
    path = common.write_results(result_name, doc, args.out)
    for name, v in size_table.items():
        print(
            f"  size {name:18s} parent {common.fmt_bytes(v['before_bytes']['parent'])} -> "
            f"{common.fmt_bytes(v['after_bytes']['parent'])}, "
            f"child {common.fmt_bytes(v['before_bytes']['child'])}"
            f" -> {common.fmt_bytes(v['after_bytes']['child'])}"
        )
    print(
        f"backfill {default['rows_per_s']:,.0f} rows/s vs one-shot {oneshot['rows_per_s']:,.0f} rows/s: "
        f"ratio {ratio:.3f} (target >= {TARGET}) -> {targets['backfill_speed']['verdict']}; "
        f"with --vacuum-every 0: {doc['ratio_vacuum_every_0']:.3f}; verify ok={report.ok}"
    )
    for key, v in targets.items():
        if key.startswith("fk_vs_key"):
            print(
                f"{key}: FK job {v['fk_rows_per_s']:,.0f} rows/s vs key job {v['key_rows_per_s']:,.0f} "
                f"rows/s: ratio {v['ratio']:.3f} -> {v['verdict']}"
            )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
