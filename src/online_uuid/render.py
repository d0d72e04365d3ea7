"""Human output for the terminal: the plan as tables in dependency order, reports as short lines."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from .model import ACTION_SQL, Plan

# Rough rates measured on a 2-core machine (bench/); only for the plan's estimate.
KEY_ROWS_PER_S = 60_000
FK_ROWS_PER_S = 40_000


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_seconds(s: float) -> str:
    s = int(s)
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{s // 60} min"
    return f"{s // 3600} h {(s % 3600) // 60} min"


def estimate_backfill_s(plan: Plan) -> float:
    keys = sum(k.rows for k in plan.keys) / KEY_ROWS_PER_S
    fks = sum(f.table_rows for f in plan.foreign_keys) / FK_ROWS_PER_S
    return keys + fks


def plan_json(plan: Plan) -> dict[str, Any]:
    doc = plan.to_json()
    doc["order"] = [str(k.table) for k in plan.keys]
    doc["estimated_backfill_seconds"] = round(estimate_backfill_s(plan), 1)
    return doc


def print_plan(plan: Plan, console: Console) -> None:
    keys = Table(title="Keys to convert (dependency order)", title_justify="left")
    for col in ("#", "table", "key", "type", "rows", "size", "primary key", "default"):
        keys.add_column(col)
    for i, k in enumerate(plan.keys, 1):
        indent = "  " * k.level + ("└ " if k.level else "")
        default = "identity" if k.identity else (k.default or "-")
        keys.add_row(
            str(i),
            indent + str(k.table),
            k.column,
            k.type,
            f"{k.rows:,}",
            human_bytes(k.bytes),
            k.constraint,
            default,
        )
    console.print(keys)
    fks = Table(title="Foreign key columns that follow", title_justify="left")
    for col in ("constraint", "column", "references", "on delete", "after cutover", "deferrable", "not null"):
        fks.add_column(col)
    for f in plan.foreign_keys:
        fks.add_row(
            f.name,
            f"{f.table}.{f.column}",
            f"{f.ref_table}.{f.ref_column}",
            ACTION_SQL[f.on_delete],
            ACTION_SQL[f.final_on_delete or f.on_delete],
            "yes" if f.deferrable else "no",
            "yes" if f.not_null else "no",
        )
    console.print(fks if plan.foreign_keys else "No foreign key references these keys.")
    if plan.indexes:
        idx = Table(title="Indexes and constraints rebuilt on the new columns", title_justify="left")
        for col in ("table", "index", "columns", "kind"):
            idx.add_column(col)
        for ix in plan.indexes:
            kind = {"p": "primary key", "u": "unique constraint"}.get(
                ix.constraint_type, "unique index" if ix.unique else "index"
            )
            idx.add_row(str(ix.table), ix.name, ", ".join(ix.columns), kind)
        console.print(idx)
    for v in plan.views:
        console.print(f"view {v.view} is recreated in the cutover transaction (grants and options kept)")
    for w in plan.warnings:
        console.print(f"[yellow]warning[/yellow]: {w.object}: {w.message}")
    console.print(
        f"UUIDs: {plan.uuid_version} ({plan.generator}); "
        f"cascade deletes: {'yes, every converted FK' if plan.cascade_deletes else 'no, actions kept'}; "
        f"estimated backfill: {human_seconds(estimate_backfill_s(plan))}"
    )
