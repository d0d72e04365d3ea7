"""A design probe for issue 14: the backfill's batches run by a server-side procedure.

The procedure walks each table in batches of `--batch-rows` keys (one size or several, each run
alternating with a one-shot), runs the derived fill UPDATE
the backfill runs, moves the cursor in `online_uuid.backfill` and COMMITs after each batch: no
client round trip between batches, no VACUUM, no invariant. It is timed against the one-shot
`derive()` UPDATEs of `latency_curve.py` on identical copies, alternating, on durable settings.
This measures what the batches cost once the client is out of the loop; it is not the tool's code.

    .venv/bin/python bench/server_side_batches.py --scale 0.3
"""

from __future__ import annotations

import time
from typing import Any

import common
import latency_curve as curve
from psycopg import sql

from online_uuid.model import TableRef
from online_uuid.statements import derive_fn, derived_mismatch

# One table's walk: batches of n keys, each filled, counted in its job's cursor and committed.
WALK = """
  SELECT min(id), max(id) INTO lo, top FROM {table};
  WHILE lo <= top LOOP
    SELECT max(k) INTO hi FROM (SELECT id AS k FROM {table} WHERE id >= lo AND id <= top ORDER BY id LIMIT n) s;
    UPDATE {table} SET {shadow} = {derive}({source})
     WHERE id >= lo AND id <= hi AND (({shadow} IS NULL AND {source} IS NOT NULL) OR {wrong});
    GET DIAGNOSTICS r = ROW_COUNT;
    UPDATE online_uuid.backfill SET next_key = hi + 1, rows_done = rows_done + r
     WHERE migration_id = {mid} AND (kind = 'key') = {key_job};
    COMMIT;
    lo := hi + 1;
  END LOOP;
"""
PROCEDURE = """
CREATE PROCEDURE online_uuid.probe_fill(n int) LANGUAGE plpgsql AS $p$
DECLARE lo bigint; hi bigint; top bigint; r bigint;
BEGIN{parent}{child}END $p$
"""
ROUNDS = 2


def create_procedure(dsn: str) -> None:
    parent = TableRef("app", "parent")

    def walk(table: str, shadow: str, source: str, key_job: bool) -> sql.Composed:
        return sql.SQL(WALK).format(
            table=sql.Identifier("app", table),
            shadow=sql.Identifier(shadow),
            source=sql.Identifier(source),
            derive=derive_fn(parent, "id"),
            wrong=derived_mismatch(sql.Identifier(shadow), parent, "id", sql.Identifier(source)),
            mid=sql.Literal(curve.MID),
            key_job=sql.Literal(key_job),
        )

    with common.connect(dsn) as conn:
        conn.execute(
            sql.SQL(PROCEDURE).format(
                parent=walk("parent", "id_uuid", "id", True),
                child=walk("child", "parent_id_uuid", "parent_id", False),
            )
        )


def main() -> None:
    args = common.parse_args(
        __doc__ or "",
        [("--batch-rows", {"default": "2000", "help": "keys per batch, or several: 2000,8000,32000"})],
    )
    sizes = [int(n) for n in args.batch_rows.split(",")]
    common.quiet_logs()
    parents = common.scaled(curve.PARENTS, args.scale, 10_000)
    children = common.scaled(curve.CHILDREN, args.scale, 20_000)
    runs: list[dict[str, Any]] = []
    with common.bench_cluster(curve.DURABLE) as cluster:
        doc: dict[str, Any] = {"bench": "server_side_batches", "scale": args.scale, **common.header(cluster)}
        common.warm_up(cluster, parents + children)
        curve.build_template(cluster, parents, children)
        for i in range(ROUNDS * (1 + len(sizes))):
            size = sizes[i % (1 + len(sizes)) - 1] if i % (1 + len(sizes)) else 0
            label = f"procedure {size}" if size else "oneshot"
            dsn = curve.copy(cluster, f"copy{i}")
            common.settle(dsn)
            if size:
                create_procedure(dsn)
            with common.CpuMeter(cluster) as cpu:
                t0 = time.monotonic()
                if label == "oneshot":
                    curve.oneshot(dsn)
                else:
                    with common.connect(dsn) as conn:
                        conn.execute("CALL online_uuid.probe_fill(%s)", (size,))
                secs = time.monotonic() - t0
            rows = parents + children
            runs.append(
                {
                    "label": label,
                    "batch_rows": size or None,
                    "seconds": round(secs, 2),
                    "rows_per_s": round(rows / secs, 1),
                    **cpu.result,
                }
            )
            print(f"{label:>16}: {secs:.1f} s, {rows / secs:,.0f} rows/s", flush=True)
            curve.drop(cluster, f"copy{i}")
    doc.update({"parents": parents, "children": children, "batch_rows": sizes, "runs": runs})
    doc["procedure_vs_oneshot"] = ratios = _ratios(runs)
    print(f"procedure / one-shot speed, per batch size, one per round: {ratios}")
    print(f"wrote {common.write_results('server_side_batches', doc, args.out)}")


def _ratios(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each procedure run's speed over the one-shot of its own round (the run before it)."""
    ratios: dict[str, list[float]] = {}
    base = 0.0
    for run in runs:
        if run["batch_rows"] is None:
            base = run["seconds"]
        else:
            ratios.setdefault(str(run["batch_rows"]), []).append(round(base / run["seconds"], 3))
    return ratios


if __name__ == "__main__":
    main()
