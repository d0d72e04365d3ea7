"""The guide's CASCADE DELETE promise, shown on one connector and everything hanging off it."""

from __future__ import annotations

from typing import Any, LiteralString

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

CONNECTOR = "acme-github-cascade-demo"
GRANTED_BY = 4_242_424_242  # marks the demo connector's grants (loaded data use 1..100000)
KINDS: tuple[str, ...] = ("connectors", "servers", "grants", "tokens", "tools")

# Created after the workload sampled its names, so no application session ever touches these
# rows: deleting them cannot race an application insert into a server that is going away.
# Every child is found by its own marker, not through the foreign key being demonstrated.
_CREATE: tuple[LiteralString, ...] = (
    """INSERT INTO {s}.mcp_connectors (name, kind, description, user_id)
       VALUES (%(name)s, 'github', 'ACME GitHub (cascade demo)', 4242)""",
    """INSERT INTO {s}.mcp_servers (connector_id, name, url)
       SELECT c.id, %(name)s || '-server-' || g, 'https://acme-' || g || '.example.internal/mcp'
       FROM {s}.mcp_connectors AS c, generate_series(1, 3) AS g WHERE c.name = %(name)s""",
    """INSERT INTO {s}.connector_access (connector_id, user_id, role, granted_by)
       SELECT c.id, 900000000 + g, CASE WHEN g = 1 THEN 'owner' ELSE 'viewer' END, %(granted_by)s
       FROM {s}.mcp_connectors AS c, generate_series(1, 4) AS g WHERE c.name = %(name)s""",
    """INSERT INTO {s}.mcp_server_tokens (mcp_server_id, token_hash, label)
       SELECT s.id, encode(sha256(convert_to(s.name || '-token-' || g, 'UTF8')), 'hex'), %(name)s
       FROM {s}.mcp_servers AS s, generate_series(1, 4) AS g WHERE s.name LIKE %(servers)s""",
    """INSERT INTO {s}.mcp_server_tools (mcp_server_id, tool_name, description)
       SELECT s.id, 'acme_tool_' || g, %(name)s
       FROM {s}.mcp_servers AS s, generate_series(1, 5) AS g WHERE s.name LIKE %(servers)s""",
)

_COUNT: LiteralString = """
SELECT (SELECT count(*) FROM {s}.mcp_connectors WHERE name = %(name)s),
       (SELECT count(*) FROM {s}.mcp_servers WHERE name LIKE %(servers)s),
       (SELECT count(*) FROM {s}.connector_access WHERE granted_by = %(granted_by)s),
       (SELECT count(*) FROM {s}.mcp_server_tokens WHERE label = %(name)s),
       (SELECT count(*) FROM {s}.mcp_server_tools WHERE description = %(name)s)
"""

_DELETE: LiteralString = "DELETE FROM {s}.mcp_connectors WHERE name = %(name)s"


def _params(name: str) -> dict[str, Any]:
    return {"name": name, "servers": name + "-server-%", "granted_by": GRANTED_BY}


def create_family(conn: psycopg.Connection[Any], schema: str, name: str = CONNECTOR) -> None:
    """One connector with 3 servers, 4 grants, and 4 tokens and 5 tools per server."""
    s = sql.Identifier(schema)
    with conn.transaction():
        for stmt in _CREATE:
            conn.execute(sql.SQL(stmt).format(s=s), _params(name))


def family_counts(conn: psycopg.Connection[Any], schema: str, name: str = CONNECTOR) -> dict[str, int]:
    row = conn.execute(sql.SQL(_COUNT).format(s=sql.Identifier(schema)), _params(name)).fetchone()
    assert row is not None
    return dict(zip(KINDS, (int(n) for n in row), strict=True))


def try_delete(conn: psycopg.Connection[Any], schema: str, name: str = CONNECTOR) -> str | None:
    """Delete the connector but always roll back: the error that refused it, or None."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL(_DELETE).format(s=sql.Identifier(schema)), _params(name))
    except pgerrors.ForeignKeyViolation as exc:
        return (str(exc).strip().splitlines() or ["foreign key violation"])[0]
    return None


def delete(conn: psycopg.Connection[Any], schema: str, name: str = CONNECTOR) -> int:
    """Delete the connector for real; returns how many connector rows went."""
    with conn.transaction():
        cur = conn.execute(sql.SQL(_DELETE).format(s=sql.Identifier(schema)), _params(name))
        return cur.rowcount
