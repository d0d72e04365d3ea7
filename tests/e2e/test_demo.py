"""`online-uuid demo` end to end at small scale: on a throwaway server, and in a scratch schema."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import psycopg
import pytest

from online_uuid import naming
from online_uuid.demo.report import COLUMNS
from online_uuid.embedded import find_pg_bin, pgserver_available

ROWS = "20000"
TIMEOUT_S = 180


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process (it configures logging and may start a server)."""
    env = {**os.environ, "COLUMNS": "160", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "online_uuid.cli", "demo", "--rows", ROWS, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
        check=False,
    )


def assert_succeeded(done: subprocess.CompletedProcess[str]) -> str:
    """Exit 0 and a summary that shows zero workload errors, uuid columns and the cascade."""
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr}"
    assert "error:" not in done.stderr, done.stderr
    assert re.search(r"application workload\s*│\s*[\d,]+ operations in \d+ s, 0 errors", out), out
    for table, column in COLUMNS:
        row = re.search(rf"│ {table}\.{column}\s*│ integer[^│]*│ uuid", out)
        assert row, f"{table}.{column} is not shown going from integer to uuid:\n{out}"
    for kind, before in (("servers", 3), ("grants", 4), ("tokens", 12), ("tools", 15)):
        assert re.search(rf"{kind}\s+before\s+{before}\s+after\s+0\b", out), f"cascade of {kind}:\n{out}"
    assert re.search(r"cutover lock held\s*│\s*[\d.,]+ ms", out), out
    return out


def scratch_schemas(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    rows = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'online\\_uuid%%' ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def test_demo_on_a_throwaway_server() -> None:
    if find_pg_bin() is None and not pgserver_available():
        pytest.skip("no local PostgreSQL binaries and no pgserver: the demo cannot start a server")
    out = assert_succeeded(run_demo())
    assert "Throwaway server stopped and deleted." in out


def test_demo_in_a_scratch_schema_is_dropped_afterwards(
    dsn: str, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    out = assert_succeeded(run_demo("--dsn", dsn))
    assert re.search(r"Dropped schema online_uuid_demo_[0-9a-f]{8}\.", out), out
    assert scratch_schemas(conn) == [], "the demo left its schema or the state schema behind"


def test_demo_with_keep_leaves_the_converted_tables(
    dsn: str, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    conn.execute("CREATE SCHEMA online_uuid_demo_unrelated")  # someone else's: must survive
    out = assert_succeeded(run_demo("--dsn", dsn, "--keep"))
    match = re.search(r"Kept schema (online_uuid_demo_[0-9a-f]{8}) \(migration (demo_[0-9a-f]{8})\)", out)
    assert match, out
    schema, migration = match.groups()
    assert set(scratch_schemas(conn)) == {schema, "online_uuid", "online_uuid_demo_unrelated"}
    types = conn.execute(
        """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid
        WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
        """,
        (schema,),
    ).fetchall()
    found = {(str(t), str(c)): str(ty) for t, c, ty in types}
    assert {col: found.get(col) for col in COLUMNS} == dict.fromkeys(COLUMNS, "uuid")
    assert not [col for col in found if col[1].endswith((naming.RETIRED_SUFFIX, naming.SHADOW_SUFFIX))], found
    phase = conn.execute("SELECT phase FROM online_uuid.migrations WHERE id = %s", (migration,)).fetchone()
    assert phase == ("finalized",)
    connectors = conn.execute(
        f"SELECT count(*) FROM {schema}.mcp_connectors WHERE name = 'acme-github-cascade-demo'"  # noqa: S608
    ).fetchone()
    assert connectors == (0,)
