"""Demo schema, bulk data and the natural-key workload, including across a crude key swap."""

from __future__ import annotations

import time
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import sql

from online_uuid.demo import data, schema
from online_uuid.demo.workload import KINDS, Workload

SCRATCH = "Demo Schema"
Conn = psycopg.Connection[Any]


def _scalar(conn: Conn, query: sql.Composed | LiteralString, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _key_info(conn: Conn, schema_name: str, table: str) -> tuple[str, str, str | None]:
    """(data type, identity kind, default) of table.id."""
    row = conn.execute(
        """
        SELECT format_type(a.atttypid, a.atttypmod), a.attidentity, pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute AS a
        LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = %s::regclass AND a.attname = 'id'
        """,
        (sql.Identifier(schema_name, table).as_string(conn),),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _foreign_keys(conn: Conn, schema_name: str) -> dict[str, tuple[str, str, str]]:
    """constraint name -> (child table, parent table, confdeltype)."""
    rows = conn.execute(
        """
        SELECT c.conname, t.relname, p.relname, c.confdeltype
        FROM pg_constraint AS c
        JOIN pg_class AS t ON t.oid = c.conrelid
        JOIN pg_class AS p ON p.oid = c.confrelid
        JOIN pg_namespace AS n ON n.oid = t.relnamespace
        WHERE c.contype = 'f' AND n.nspname = %s
        """,
        (schema_name,),
    ).fetchall()
    return {name: (child, parent, action) for name, child, parent, action in rows}


def _orphans(conn: Conn, schema_name: str) -> int:
    total = 0
    for fk in schema.FOREIGN_KEYS:
        total += _scalar(
            conn,
            sql.SQL(
                "SELECT count(*) FROM {} AS c LEFT JOIN {} AS p ON p.id = c.{} WHERE p.id IS NULL"
            ).format(
                sql.Identifier(schema_name, fk.table),
                sql.Identifier(schema_name, fk.parent),
                sql.Identifier(fk.column),
            ),
        )
    return int(total)


@pytest.mark.parametrize("schema_name", ["public", SCRATCH])
def test_create_schema(conn: Conn, schema_name: str) -> None:
    schema.create_schema(conn, schema_name)

    keys = {table: _key_info(conn, schema_name, table) for table in schema.TABLES}
    assert {info[0] for info in keys.values()} == {"integer"}
    identity = [t for t, info in keys.items() if info[1] == "d"]
    serial = [t for t, info in keys.items() if info[1] == "" and "nextval" in (info[2] or "")]
    assert identity and serial and len(identity) + len(serial) == len(schema.TABLES)

    assert _foreign_keys(conn, schema_name) == {
        "fk_connector_access_connector_id": ("connector_access", "mcp_connectors", "c"),
        "fk_mcp_servers_connector_id": ("mcp_servers", "mcp_connectors", "c"),
        "fk_mcp_server_tokens_mcp_server_id": ("mcp_server_tokens", "mcp_servers", "a"),
        "fk_mcp_server_tools_mcp_server_id": ("mcp_server_tools", "mcp_servers", "a"),
    }
    nullable = _scalar(
        conn,
        """
        SELECT count(*) FROM information_schema.columns
        WHERE table_schema = %s AND column_name IN ('connector_id', 'mcp_server_id')
          AND is_nullable = 'YES'
        """,
        (schema_name,),
    )
    assert nullable == 0

    schema.drop_schema(conn, schema_name)
    left = _scalar(
        conn,
        "SELECT count(*) FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = ANY(%s)",
        (schema_name, list(schema.TABLES)),
    )
    assert left == 0
    schema_left = _scalar(conn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema_name,))
    assert schema_left == (1 if schema_name == "public" else 0)


def test_both_schemas_side_by_side(conn: Conn) -> None:
    schema.create_schema(conn, "public")
    schema.create_schema(conn, SCRATCH)
    data.load(conn, SCRATCH, rows=2_000)
    assert _scalar(conn, "SELECT count(*) FROM public.mcp_connectors") == 0
    assert _scalar(conn, 'SELECT count(*) FROM "Demo Schema".mcp_connectors') == 100


def test_load_counts_and_foreign_keys(conn: Conn) -> None:
    schema.create_schema(conn, SCRATCH)
    started = time.perf_counter()
    counts = data.load(conn, SCRATCH, rows=20_000)
    elapsed = time.perf_counter() - started

    assert set(counts) == set(schema.TABLES)
    for table, target in data.targets(20_000).items():
        assert abs(counts[table] - target) <= 0.1 * target, (table, counts[table], target)
    assert abs(sum(counts.values()) - 20_000) <= 2_000
    assert _orphans(conn, SCRATCH) == 0
    # The foreign keys came back exactly as created, and ANALYZE ran.
    assert len(_foreign_keys(conn, SCRATCH)) == 4
    analyzed = _scalar(
        conn,
        "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = %s AND last_analyze IS NOT NULL",
        (SCRATCH,),
    )
    assert analyzed == 5
    assert elapsed < 30


def test_load_is_deterministic(conn: Conn) -> None:
    digest = """
        SELECT md5(string_agg(s.name || ':' || c.name || ':' || s.config::text, ',' ORDER BY s.name))
        FROM {s}.mcp_servers AS s JOIN {s}.mcp_connectors AS c ON c.id = s.connector_id
    """
    digests = []
    for name in ("a", "b"):
        schema.create_schema(conn, name)
        data.load(conn, name, rows=5_000)
        digests.append(_scalar(conn, sql.SQL(digest).format(s=sql.Identifier(name))))
    assert digests[0] == digests[1]


@pytest.mark.concurrency
def test_workload_runs_without_errors(conn: Conn, dsn: str) -> None:
    schema.create_schema(conn, SCRATCH)
    data.load(conn, SCRATCH, rows=20_000)

    workload = Workload(dsn, SCRATCH, writers=3).start()
    time.sleep(2)
    report = workload.stop()

    assert report.errors == 0, report.error_messages
    assert report.operations > 0
    assert set(report.ops_by_kind) == set(KINDS)
    assert 0 < report.p50_ms <= report.p99_ms <= report.max_ms == report.worst_stall_ms
    assert report.mark("start") < report.mark("stop")
    assert _orphans(conn, SCRATCH) == 0


@pytest.mark.concurrency
def test_workload_rate_limit(conn: Conn, dsn: str) -> None:
    schema.create_schema(conn)
    data.load(conn, rows=2_000)
    with Workload(dsn, writers=2, rate_per_writer=20) as workload:
        time.sleep(1.5)
    report = workload.stop()
    assert report.errors == 0, report.error_messages
    assert 30 <= report.operations <= 70


def _swap_connector_key(conn: Conn, schema_name: str) -> None:
    """Crude blocking swap of mcp_connectors.id (and the two FKs to it) to uuid, in one transaction."""
    s = sql.Identifier(schema_name)
    steps: tuple[LiteralString, ...] = (
        # Children before the parent: the order the workload's statements lock in.
        "LOCK TABLE {s}.mcp_servers, {s}.connector_access, {s}.mcp_connectors IN ACCESS EXCLUSIVE MODE",
        "ALTER TABLE {s}.mcp_connectors ADD COLUMN id_uuid uuid NOT NULL DEFAULT gen_random_uuid()",
        "ALTER TABLE {s}.mcp_servers ADD COLUMN connector_id_uuid uuid",
        "ALTER TABLE {s}.connector_access ADD COLUMN connector_id_uuid uuid",
        "UPDATE {s}.mcp_servers AS x SET connector_id_uuid = c.id_uuid"
        " FROM {s}.mcp_connectors AS c WHERE c.id = x.connector_id",
        "UPDATE {s}.connector_access AS x SET connector_id_uuid = c.id_uuid"
        " FROM {s}.mcp_connectors AS c WHERE c.id = x.connector_id",
        "ALTER TABLE {s}.mcp_servers DROP CONSTRAINT fk_mcp_servers_connector_id",
        "ALTER TABLE {s}.connector_access DROP CONSTRAINT fk_connector_access_connector_id",
        "ALTER TABLE {s}.mcp_connectors DROP CONSTRAINT mcp_connectors_pkey",
        "ALTER TABLE {s}.mcp_connectors DROP COLUMN id",
        "ALTER TABLE {s}.mcp_connectors RENAME COLUMN id_uuid TO id",
        "ALTER TABLE {s}.mcp_connectors ADD CONSTRAINT mcp_connectors_pkey PRIMARY KEY (id)",
        "ALTER TABLE {s}.mcp_servers DROP COLUMN connector_id",
        "ALTER TABLE {s}.mcp_servers RENAME COLUMN connector_id_uuid TO connector_id",
        "ALTER TABLE {s}.mcp_servers ALTER COLUMN connector_id SET NOT NULL",
        "ALTER TABLE {s}.mcp_servers ADD CONSTRAINT fk_mcp_servers_connector_id"
        " FOREIGN KEY (connector_id) REFERENCES {s}.mcp_connectors (id) ON DELETE CASCADE",
        "CREATE INDEX ix_mcp_servers_connector_id ON {s}.mcp_servers (connector_id)",
        "ALTER TABLE {s}.connector_access DROP COLUMN connector_id",
        "ALTER TABLE {s}.connector_access RENAME COLUMN connector_id_uuid TO connector_id",
        "ALTER TABLE {s}.connector_access ALTER COLUMN connector_id SET NOT NULL",
        "ALTER TABLE {s}.connector_access ADD CONSTRAINT uq_connector_access_connector_user"
        " UNIQUE (connector_id, user_id)",
        "ALTER TABLE {s}.connector_access ADD CONSTRAINT fk_connector_access_connector_id"
        " FOREIGN KEY (connector_id) REFERENCES {s}.mcp_connectors (id) ON DELETE CASCADE",
    )
    with conn.transaction():
        for step in steps:
            conn.execute(sql.SQL(step).format(s=s))


@pytest.mark.concurrency
def test_workload_survives_a_key_swap(conn: Conn, dsn: str) -> None:
    schema.create_schema(conn, SCRATCH)
    data.load(conn, SCRATCH, rows=20_000)

    workload = Workload(dsn, SCRATCH, writers=3).start()
    time.sleep(1.0)
    before = workload.operations
    t0 = workload.mark("swap-start")
    _swap_connector_key(conn, SCRATCH)
    t1 = workload.mark("swap-done")
    swapped_at = _scalar(conn, "SELECT clock_timestamp()")
    time.sleep(1.5)
    report = workload.stop()

    assert report.errors == 0, report.error_messages
    assert before > 0
    assert sum(1 for start in report.start_times if start > t1) > 100
    assert report.stall_between(t0, t1) <= report.max_ms
    assert _key_info(conn, SCRATCH, "mcp_connectors")[0] == "uuid"
    types = conn.execute(
        "SELECT table_name, data_type FROM information_schema.columns"
        " WHERE table_schema = %s AND column_name = 'connector_id'",
        (SCRATCH,),
    ).fetchall()
    assert dict(types) == {"mcp_servers": "uuid", "connector_access": "uuid"}
    assert _orphans(conn, SCRATCH) == 0
    # The workload kept creating servers under connectors found by name, now with uuid keys.
    new_servers = _scalar(
        conn,
        sql.SQL(
            "SELECT count(*) FROM {}.mcp_servers AS s JOIN {}.mcp_connectors AS c ON c.id = s.connector_id"
            " WHERE s.name LIKE 'wl-server-%%' AND s.created_at > %s"
        ).format(sql.Identifier(SCRATCH), sql.Identifier(SCRATCH)),
        (swapped_at,),
    )
    assert new_servers > 0
