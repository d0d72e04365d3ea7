"""Column types and FK actions of the demo tables, and the closing summary table."""

from __future__ import annotations

from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

from .schema import FOREIGN_KEYS, TABLES

# (table, column): the five keys, then the four foreign key columns.
COLUMNS: tuple[tuple[str, str], ...] = (
    *((t, "id") for t in TABLES),
    *((fk.table, fk.column) for fk in FOREIGN_KEYS),
)
_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


def column_types(conn: psycopg.Connection[Any], schema: str) -> dict[tuple[str, str], str]:
    """e.g. ("mcp_servers", "connector_id") -> "uuid, ON DELETE CASCADE"; missing columns left out."""
    rows = conn.execute(
        """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               (SELECT string_agg(k.confdeltype::text, ',') FROM pg_constraint AS k
                WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.conkey = ARRAY[a.attnum])
        FROM pg_attribute AS a
        JOIN pg_class AS c ON c.oid = a.attrelid
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
        """,
        (schema, list(TABLES)),
    ).fetchall()
    wanted = set(COLUMNS)
    out: dict[tuple[str, str], str] = {}
    for table, column, type_, actions in rows:
        if (table, column) in wanted:
            on_delete = ", ".join(f"ON DELETE {_ACTIONS.get(a, a)}" for a in (actions or "").split(",") if a)
            out[(table, column)] = f"{type_}, {on_delete}" if on_delete else str(type_)
    return out


def not_uuid(types: dict[tuple[str, str], str]) -> list[str]:
    """Columns that are not uuid (or are gone)."""
    return [f"{t}.{c}" for t, c in COLUMNS if not types.get((t, c), "").startswith("uuid")]


def print_types(
    console: Console, before: dict[tuple[str, str], str], after: dict[tuple[str, str], str]
) -> None:
    table = Table(title="Key and foreign key columns", title_justify="left")
    for name in ("column", "before", "after"):
        table.add_column(name)
    for t, c in COLUMNS:
        table.add_row(f"{t}.{c}", before.get((t, c), "-"), after.get((t, c), "-"))
    console.print(table)


def print_summary(console: Console, lines: list[tuple[str, str]]) -> None:
    table = Table(title="Results", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("result")
    for what, result in lines:
        table.add_row(what, result)
    console.print(table)
