"""Keyset walking over an integer column: batch bounds from an index walk, never OFFSET."""

from __future__ import annotations

import psycopg
from psycopg import sql

from ..model import TableRef


def read_bounds(conn: psycopg.Connection, table: TableRef, column: str) -> tuple[int | None, int | None]:
    row = conn.execute(
        sql.SQL("SELECT min({c}), max({c}) FROM {t}").format(c=sql.Identifier(column), t=table.ident)
    ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def build_upper_bound(table: TableRef, column: str) -> sql.Composed:
    """The key of the n-th row at or after lo (at most hi_max): one index walk of n entries.

    Parameters: lo, hi_max, n. Shared by the backfill's batches and verify's walk.
    """
    return sql.SQL(
        "SELECT max(k) FROM (SELECT {c} AS k FROM {t} WHERE {c} >= %s AND {c} <= %s ORDER BY {c} LIMIT %s) s"
    ).format(c=sql.Identifier(column), t=table.ident)


def read_upper_bound(
    conn: psycopg.Connection, table: TableRef, column: str, lo: int, hi_max: int, n: int
) -> int | None:
    row = conn.execute(build_upper_bound(table, column), (lo, hi_max, n)).fetchone()
    return None if row is None else row[0]
