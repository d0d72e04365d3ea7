"""The whole life of a migration under a live workload, checked after every step.

start -> rollback -> start -> backfill -> cutover -> rollback -> cutover -> finalize, with writer
threads on natural keys throughout; run in `public` and in a mixed-case non-public schema.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from online_uuid import api, naming
from online_uuid.demo.data import load
from online_uuid.demo.schema import TABLES, create_schema
from online_uuid.demo.workload import Workload
from online_uuid.model import Phase
from online_uuid.settings import BackfillSettings, StartSettings

pytestmark = pytest.mark.concurrency


def _snapshot(conn: psycopg.Connection, schema: str) -> dict[str, Any]:
    """What a user checks: relationships by natural key, original integer ids, row counts."""
    s = sql.Identifier(schema)
    servers = dict(
        conn.execute(
            sql.SQL(
                "SELECT sv.name, c.name FROM {s}.mcp_servers sv JOIN {s}.mcp_connectors c ON c.id = sv.connector_id"
            ).format(s=s)
        ).fetchall()
    )
    access = set(
        conn.execute(
            sql.SQL(
                "SELECT c.name, a.user_id FROM {s}.connector_access a JOIN {s}.mcp_connectors c ON c.id = a.connector_id"
            ).format(s=s)
        ).fetchall()
    )
    tokens = dict(
        conn.execute(
            sql.SQL(
                "SELECT t.token_hash, sv.name FROM {s}.mcp_server_tokens t JOIN {s}.mcp_servers sv ON sv.id = t.mcp_server_id"
            ).format(s=s)
        ).fetchall()
    )
    counts = {
        t: conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(s, sql.Identifier(t))).fetchone()[0]  # type: ignore[index]
        for t in TABLES
    }
    return {"servers": servers, "access": access, "tokens": tokens, "counts": counts}


def _int_ids(conn: psycopg.Connection, schema: str, column: str) -> dict[str, int]:
    return dict(
        conn.execute(
            sql.SQL("SELECT name, {} FROM {}.mcp_connectors").format(
                sql.Identifier(column), sql.Identifier(schema)
            )
        ).fetchall()
    )


def _nothing_lost(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Connectors, servers and grants are never deleted by the workload: every old pair must remain."""
    for name, connector in before["servers"].items():
        assert after["servers"].get(name) == connector, f"server {name} lost or moved"
    assert before["access"] <= after["access"]
    for token, server in before["tokens"].items():
        assert after["tokens"].get(token, server) == server, f"token {token} moved"
    for table in ("mcp_connectors", "connector_access", "mcp_servers"):
        assert after["counts"][table] >= before["counts"][table]


def _types(conn: psycopg.Connection, schema: str) -> set[tuple[str, str, str]]:
    return set(
        conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND (column_name = 'id' OR column_name LIKE '%%\\_id' OR column_name LIKE '%%\\_uuid' "
            "OR column_name LIKE '%%\\_int')",
            (schema,),
        ).fetchall()
    )


@pytest.mark.parametrize(
    ("schema", "source"),
    [
        ("public", "derived"),
        ("App Data", "derived"),
        ("public", "random"),
        pytest.param("App Data", "random", marks=pytest.mark.slow),
    ],
)
def test_full_lifecycle_under_load(dsn: str, conn: psycopg.Connection, schema: str, source: str) -> None:
    create_schema(conn, schema)
    load(conn, schema, rows=20_000)
    tables = [sql.Identifier(schema, t).as_string(conn) for t in TABLES]
    original_types = _types(conn, schema)
    original_ids = _int_ids(conn, schema, "id")
    fast = BackfillSettings(initial_batch_size=500, max_batch_size=2_000)
    workload = Workload(dsn, schema, writers=2, rate_per_writer=50).start()
    try:
        snap = _snapshot(conn, schema)

        api.start(
            dsn, tables, settings=StartSettings(backfill=False, cascade_deletes=True, uuid_source=source)
        )
        assert api.status(dsn)["phase"] == Phase.EXPANDED
        assert api.rollback(dsn) == Phase.ROLLED_BACK
        assert _types(conn, schema) == original_types
        _nothing_lost(snap, snap := _snapshot(conn, schema))

        mid = api.start(
            dsn,
            tables,
            settings=StartSettings(cascade_deletes=True, uuid_source=source),
            backfill_settings=fast,
        )
        assert api.status(dsn, mid)["phase"] == Phase.BACKFILLED
        assert api.status(dsn, mid)["uuid_source"] == source
        report = api.verify(dsn)
        assert report.ok, report.first_problem()
        _nothing_lost(snap, snap := _snapshot(conn, schema))

        t0 = workload.mark("cutover")
        result = api.cutover(dsn)
        t1 = workload.mark("cutover done")
        assert result.lock_held_s < 1.0
        assert workload.errors_between(t0, t1) == 0
        assert ("mcp_connectors", "id", "uuid") in _types(conn, schema)
        _nothing_lost(snap, snap := _snapshot(conn, schema))
        assert api.verify(dsn).ok  # the retired integer side is kept right by the reverse triggers

        assert api.rollback(dsn) == Phase.BACKFILLED
        assert ("mcp_connectors", "id", "integer") in _types(conn, schema)
        after_rollback = _int_ids(conn, schema, "id")
        assert {k: after_rollback[k] for k in original_ids} == original_ids  # original integer ids back
        _nothing_lost(snap, snap := _snapshot(conn, schema))

        api.cutover(dsn)
        api.finalize(dsn)
        _nothing_lost(snap, snap := _snapshot(conn, schema))
    finally:
        report_w = workload.stop()
    assert report_w.errors == 0, report_w.error_messages
    assert report_w.operations > 0
    final = _types(conn, schema)
    assert {
        (t, c) for t, c, ty in final if ty != "uuid" and c in ("id", "connector_id", "mcp_server_id")
    } == set()
    assert not any(c.endswith((naming.RETIRED_SUFFIX, naming.SHADOW_SUFFIX)) for _, c, _ in final)
    leftovers = conn.execute(
        "SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE NOT t.tgisinternal AND c.relnamespace = to_regnamespace(%s)",
        (sql.Identifier(schema).as_string(conn),),
    ).fetchall()
    assert leftovers == []
    # the guide's CASCADE DELETE promise, after the migration
    some = conn.execute(
        sql.SQL(
            "SELECT c.name FROM {s}.mcp_connectors c JOIN {s}.mcp_servers sv ON sv.connector_id = c.id "
            "JOIN {s}.mcp_server_tokens t ON t.mcp_server_id = sv.id LIMIT 1"
        ).format(s=sql.Identifier(schema))
    ).fetchone()
    assert some is not None
    conn.execute(
        sql.SQL("DELETE FROM {}.mcp_connectors WHERE name = %s").format(sql.Identifier(schema)), some
    )
    orphans = conn.execute(
        sql.SQL(
            "SELECT count(*) FROM {s}.mcp_server_tokens t LEFT JOIN {s}.mcp_servers sv ON sv.id = t.mcp_server_id "
            "WHERE sv.id IS NULL"
        ).format(s=sql.Identifier(schema))
    ).fetchone()
    assert orphans == (0,)
