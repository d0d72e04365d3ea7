"""--uuid v7: time-ordered RFC 9562 UUIDs, natively on 18 and from our SQL function before."""

from __future__ import annotations

import uuid

import psycopg

from online_uuid import api
from online_uuid.settings import StartSettings


def test_v7_keys_are_version_7_and_time_ordered(dsn: str, conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE t (id serial PRIMARY KEY, n int)")
    conn.execute("INSERT INTO t (n) SELECT g FROM generate_series(1, 500) g")
    api.start(dsn, ["t"], settings=StartSettings(uuid_version="v7"))
    conn.execute("INSERT INTO t (n) SELECT g FROM generate_series(501, 600) g")
    rows = conn.execute("SELECT id_uuid FROM t ORDER BY id").fetchall()
    ids = [r[0] for r in rows]
    assert all(isinstance(u, uuid.UUID) and u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    stamps = [u.int >> 80 for u in ids]  # 48-bit Unix milliseconds
    assert stamps == sorted(stamps)
    import time

    assert abs(stamps[-1] / 1000 - time.time()) < 60
    expected = "uuidv7()" if conn.info.server_version >= 180000 else '"online_uuid".uuid_v7()'
    default = conn.execute(
        "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef d JOIN pg_attribute a "
        "ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE a.attrelid = 't'::regclass AND a.attname = 'id_uuid'"
    ).fetchone()
    assert default is not None and default[0].replace('"', "") == expected.replace('"', "")


def test_rollback_keeps_the_v7_function_while_another_migration_uses_it(
    dsn: str, conn: psycopg.Connection
) -> None:
    import pytest

    if conn.info.server_version >= 180000:
        pytest.skip("PostgreSQL 18 has uuidv7(): no function of ours")
    from online_uuid.model import Phase

    conn.execute(
        "CREATE TABLE a (id serial PRIMARY KEY, n int); CREATE TABLE b (id serial PRIMARY KEY, n int)"
    )
    conn.execute("INSERT INTO a (n) VALUES (1); INSERT INTO b (n) VALUES (1)")
    v7 = StartSettings(uuid_version="v7")
    api.start(dsn, ["a"], migration="ma", settings=v7)
    api.start(dsn, ["b"], migration="mb", settings=v7)
    assert api.rollback(dsn, "ma") == Phase.ROLLED_BACK
    fn = "SELECT to_regprocedure('online_uuid.uuid_v7()') IS NOT NULL"
    assert conn.execute(fn).fetchone() == (True,)
    row = conn.execute("INSERT INTO b (n) VALUES (2) RETURNING id_uuid").fetchone()
    assert row is not None and row[0].version == 7
    assert api.rollback(dsn, "mb") == Phase.ROLLED_BACK
    assert conn.execute(fn).fetchone() == (False,)
