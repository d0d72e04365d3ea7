"""Heap walking by ctid ranges (TID Range Scan, PostgreSQL 14+): for tables with no integer key to walk.

A batch covers the heap blocks [lo, hi]: `ctid >= '(lo,0)' AND ctid < '(hi+1,0)'` reads exactly those
pages and nothing else. The cursor is a block number, so it fits the keyset walker's columns
(min_key/max_key/next_key) and progress is the share of blocks walked. Blocks appended after the walk
began hold only rows written since, which the triggers filled; a row an UPDATE moves into an
already-walked block is filled by the trigger that fires on every update of such a table (see
statements.build_fk_move_trigger).
"""

from __future__ import annotations

import math

import psycopg
from psycopg import sql

from ..model import TableRef

CTID = "ctid"  # a system column: no user column can have this name, so it marks the heap walk
MIN_SERVER = 140000  # TID Range Scan


def walks_heap(column: str) -> bool:
    return column == CTID


def read_block_bounds(conn: psycopg.Connection, table: TableRef) -> tuple[int | None, int | None]:
    """(0, last block) of the table as it is now, or (None, None) when it has no block."""
    row = conn.execute(
        "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int8",
        (table.ident.as_string(conn),),
    ).fetchone()
    blocks = int(row[0]) if row else 0
    return (0, blocks - 1) if blocks > 0 else (None, None)


def blocks_for(rows: int, rows_estimate: int, first: int, last: int) -> int:
    """How many blocks hold about `rows` rows, from the table's row estimate spread over its blocks."""
    per_block = max(1.0, rows_estimate / max(1, last - first + 1))
    return max(1, math.ceil(rows / per_block))


def tid(block: int) -> str:
    """The first tuple slot of a block, as tid input text."""
    return f"({block},0)"


def build_range(alias: str | None = None) -> sql.Composed:
    """`ctid >= %s::tid AND ctid < %s::tid`; parameters: tid(lo), tid(hi + 1)."""
    col = sql.Identifier(alias, CTID) if alias else sql.Identifier(CTID)
    return sql.SQL("{c} >= %s::pg_catalog.tid AND {c} < %s::pg_catalog.tid").format(c=col)


def range_params(lo: int, hi: int) -> tuple[str, str]:
    return tid(lo), tid(hi + 1)


def ranges(conn: psycopg.Connection, table: TableRef, blocks: int) -> list[tuple[int, int]]:
    """Block ranges of at most `blocks` blocks covering the table as it is now (for verify)."""
    first, last = read_block_bounds(conn, table)
    if first is None or last is None:
        return []
    return [(lo, min(lo + blocks - 1, last)) for lo in range(first, last + 1, blocks)]
