"""What a user compares before and after: pg_dump, catalog and state snapshots, constraints."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

_RESTRICT = re.compile(r"^\\(un)?restrict \S+$")


def schema_dump(pg_bin: Path, dsn: str, *extra: str) -> str:
    """`pg_dump --schema-only` of the database, minus the random `\\restrict` key of newer pg_dumps."""
    done = subprocess.run(
        [str(pg_bin / "pg_dump"), "--schema-only", *extra, "-d", dsn],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return "\n".join(line for line in done.stdout.splitlines() if not _RESTRICT.match(line)) + "\n"


def catalog_snapshot(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """User-visible catalog: columns, constraints, indexes, triggers, functions (any user schema)."""
    user = "n.nspname <> ALL (%(system)s)"
    q = {
        "columns": """
            SELECT n.nspname, c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                   a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity
              FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace
              LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE USER_SCHEMAS AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY 1, 2, 3""",
        "constraints": """
            SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid)
              FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace WHERE USER_SCHEMAS ORDER BY 1, 2, 3""",
        "indexes": """
            SELECT n.nspname, c.relname, pg_get_indexdef(c.oid) FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE USER_SCHEMAS AND c.relkind = 'i' ORDER BY 1, 2""",
        "triggers": """
            SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
              FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE USER_SCHEMAS AND NOT t.tgisinternal ORDER BY 1, 2, 3""",
        "functions": """
            SELECT n.nspname, p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
              JOIN pg_namespace n ON n.oid = p.pronamespace WHERE USER_SCHEMAS ORDER BY 1, 2""",
    }
    system = {"system": ["pg_catalog", "information_schema", "pg_toast"]}
    return {
        k: [tuple(r) for r in conn.execute(v.replace("USER_SCHEMAS", user), system).fetchall()]
        for k, v in q.items()
    }


_VOLATILE_PLAN_FIELDS = {"rows", "bytes", "table_rows", "database"}


def _strip(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _strip(v) for k, v in doc.items() if k not in _VOLATILE_PLAN_FIELDS}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    return doc


def state_snapshot(conn: psycopg.Connection) -> dict[str, Any]:
    """The online_uuid state: each migration's phase, plan (minus estimates), options, steps, tables."""
    exists = conn.execute("SELECT to_regclass('online_uuid.migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    out: dict[str, Any] = {}
    for mid, phase, plan, options, paused, last_error in conn.execute(
        "SELECT id, phase, plan, options, paused, last_error FROM online_uuid.migrations ORDER BY id"
    ).fetchall():
        steps = [
            r[0]
            for r in conn.execute(
                "SELECT step_id FROM online_uuid.steps WHERE migration_id = %s ORDER BY step_id", (mid,)
            ).fetchall()
        ]
        tables = [
            tuple(r)
            for r in conn.execute(
                "SELECT schema_name, table_name, active FROM online_uuid.migration_tables "
                "WHERE migration_id = %s ORDER BY 1, 2",
                (mid,),
            ).fetchall()
        ]
        out[mid] = {
            "phase": phase,
            "plan": _strip(plan),
            "options": options,
            "paused": paused,
            "last_error": last_error,
            "steps": steps,
            "tables": tables,
        }
    return out


def phase_of(conn: psycopg.Connection, mid: str) -> str | None:
    row = conn.execute("SELECT to_regclass('online_uuid.migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    got = conn.execute("SELECT phase FROM online_uuid.migrations WHERE id = %s", (mid,)).fetchone()
    return str(got[0]) if got else None


def steps_done(conn: psycopg.Connection, mid: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT step_id FROM online_uuid.steps WHERE migration_id = %s ORDER BY done_at, step_id", (mid,)
        ).fetchall()
    ]


def constraint_defs(conn: psycopg.Connection, schema: str = "public") -> dict[tuple[str, str], str]:
    """(table, constraint) -> definition for a schema.

    PostgreSQL 18 shows NOT NULL as constraints: a retired `_int` key keeps its own until finalize,
    which is expected and left out here.
    """
    rows = conn.execute(
        "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k "
        "JOIN pg_class c ON c.oid = k.conrelid WHERE c.relnamespace = to_regnamespace(%s)",
        (sql.Identifier(schema).as_string(None),),
    ).fetchall()
    return {(str(t), str(n)): str(d) for t, n, d in rows if not str(n).endswith("_int_not_null")}
