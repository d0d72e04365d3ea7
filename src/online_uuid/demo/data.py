"""Fast, deterministic bulk data for the demo tables: one set-based INSERT per table."""

from __future__ import annotations

from typing import Any, LiteralString

import psycopg
from psycopg import sql

from .schema import FOREIGN_KEYS, TABLES, ForeignKey, add_foreign_key, drop_foreign_key

# Share of the requested total that goes to each table.
RATIOS: dict[str, float] = {
    "mcp_connectors": 0.05,
    "connector_access": 0.20,
    "mcp_servers": 0.15,
    "mcp_server_tokens": 0.30,
    "mcp_server_tools": 0.30,
}

# Every statement sees: g (bigint, 1..n), r = a deterministic pseudo-random 31-bit integer of g
# (salted per table), %(start)s = rows already in the table (so names stay unique on a re-run),
# and for child tables %(np)s = the parent's row count; parents are picked by their rank `rn`
# in id order, so this works whatever the key type and whatever ids a sequence handed out.
_RAND: LiteralString = "(hashint8(g * 1000003 + %(salt)s) & 2147483647)"

_CONNECTORS: LiteralString = """
INSERT INTO {s}.mcp_connectors
    (name, kind, description, config, user_id, is_active, created_at, updated_at)
SELECT 'connector-' || lpad((%(start)s + g)::text, 7, '0'),
       (ARRAY['github', 'slack', 'jira', 'postgres', 'gdrive', 'notion', 'linear', 's3'])
           [1 + mod(r, 8)],
       'Connector number ' || (%(start)s + g),
       jsonb_build_object(
           'region', (ARRAY['eu-west-1', 'us-east-1', 'ap-south-1'])[1 + mod(r >> 3, 3)],
           'timeout_ms', 1000 + mod(r >> 5, 30) * 500,
           'retries', mod(r >> 7, 5)),
       1 + mod(r >> 9, 100000),
       mod(r >> 11, 20) <> 0,
       ts, ts + make_interval(secs => mod(r >> 13, 864000))
FROM (SELECT g, {rand} AS r,
             timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => mod(g * 7919, 40000000))
                 AS ts
      FROM generate_series(1::bigint, %(n)s) AS g) AS src
"""

_ACCESS: LiteralString = """
INSERT INTO {s}.connector_access (connector_id, user_id, role, granted_by, granted_at)
SELECT p.id,
       1 + k * 100000 + mod(r, 100000),
       CASE WHEN k = 0 THEN 'owner'
            ELSE (ARRAY['editor', 'viewer', 'viewer'])[1 + mod(r >> 17, 3)] END,
       1 + mod(r >> 3, 100000),
       timestamptz '2024-06-01 00:00:00+00' + make_interval(secs => mod(r >> 5, 30000000))
FROM (SELECT g, {rand} AS r, (g - 1) / %(np)s + %(start)s AS k, mod(g - 1, %(np)s) AS prn
      FROM generate_series(1::bigint, %(n)s) AS g) AS src
JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS rn FROM {s}.mcp_connectors) AS p
  ON p.rn = src.prn
"""

_SERVERS: LiteralString = """
INSERT INTO {s}.mcp_servers
    (connector_id, name, url, transport, config, status, created_at, updated_at)
SELECT p.id,
       'server-' || lpad((%(start)s + g)::text, 7, '0'),
       'https://mcp-' || (%(start)s + g) || '.example.internal/mcp',
       (ARRAY['stdio', 'sse', 'http', 'http'])[1 + mod(r >> 2, 4)],
       jsonb_build_object(
           'max_concurrency', 1 + mod(r >> 4, 16),
           'tags', jsonb_build_array('team-' || mod(r >> 8, 40), 'tier-' || mod(r >> 12, 3)),
           'cache', mod(r >> 14, 2) = 0),
       CASE WHEN mod(r >> 16, 10) = 0 THEN 'disabled' ELSE 'active' END,
       ts, ts + make_interval(secs => mod(r >> 18, 864000))
FROM (SELECT g, {rand} AS r,
             timestamptz '2024-02-01 00:00:00+00' + make_interval(secs => mod(g * 104729, 35000000))
                 AS ts
      FROM generate_series(1::bigint, %(n)s) AS g) AS src
JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS rn FROM {s}.mcp_connectors) AS p
  ON p.rn = mod(src.r, %(np)s)
"""

_TOKENS: LiteralString = """
INSERT INTO {s}.mcp_server_tokens
    (mcp_server_id, token_hash, label, scopes, created_at, expires_at, last_used_at)
SELECT p.id,
       encode(sha256(convert_to('demo-token-' || (%(start)s + g), 'UTF8')), 'hex'),
       (ARRAY['ci', 'laptop', 'agent', 'staging', 'prod'])[1 + mod(r >> 3, 5)] || '-' || g,
       CASE WHEN mod(r >> 6, 3) = 0 THEN ARRAY['tools:read']
            ELSE ARRAY['tools:read', 'tools:call'] END,
       ts,
       CASE WHEN mod(r >> 9, 4) = 0 THEN NULL ELSE ts + interval '365 days' END,
       CASE WHEN mod(r >> 11, 3) = 0 THEN NULL
            ELSE ts + make_interval(secs => mod(r >> 13, 2000000)) END
FROM (SELECT g, {rand} AS r,
             timestamptz '2024-03-01 00:00:00+00' + make_interval(secs => mod(g * 15485863, 30000000))
                 AS ts
      FROM generate_series(1::bigint, %(n)s) AS g) AS src
JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS rn FROM {s}.mcp_servers) AS p
  ON p.rn = mod(src.r, %(np)s)
"""

_TOOLS: LiteralString = """
INSERT INTO {s}.mcp_server_tools
    (mcp_server_id, tool_name, description, input_schema, enabled, created_at)
SELECT p.id,
       (ARRAY['search', 'fetch', 'read_file', 'write_file', 'list_issues', 'create_issue',
              'run_query', 'send_message', 'summarize', 'translate'])[1 + mod(k, 10)]
           || CASE WHEN k >= 10 THEN '_v' || (k / 10) ELSE '' END,
       'Tool ' || g || ' of the demo catalogue',
       jsonb_build_object(
           'type', 'object',
           'properties', jsonb_build_object('query', jsonb_build_object('type', 'string'),
                                            'limit', jsonb_build_object('type', 'integer')),
           'required', jsonb_build_array('query')),
       mod(r >> 4, 15) <> 0,
       timestamptz '2024-04-01 00:00:00+00' + make_interval(secs => mod(r >> 6, 25000000))
FROM (SELECT g, {rand} AS r, (g - 1) / %(np)s + %(start)s AS k, mod(g - 1, %(np)s) AS prn
      FROM generate_series(1::bigint, %(n)s) AS g) AS src
JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS rn FROM {s}.mcp_servers) AS p
  ON p.rn = src.prn
"""

_ACTIONS = {"c": "CASCADE", "a": "NO ACTION"}

# table -> (statement, parent table or None)
_LOADERS: dict[str, tuple[LiteralString, str | None]] = {
    "mcp_connectors": (_CONNECTORS, None),
    "connector_access": (_ACCESS, "mcp_connectors"),
    "mcp_servers": (_SERVERS, "mcp_connectors"),
    "mcp_server_tokens": (_TOKENS, "mcp_servers"),
    "mcp_server_tools": (_TOOLS, "mcp_servers"),
}


def targets(rows: int) -> dict[str, int]:
    """How many rows `load(rows=...)` aims for in each table (at least one parent row)."""
    out = {t: round(rows * RATIOS[t]) for t in TABLES}
    out["mcp_connectors"] = max(out["mcp_connectors"], 1)
    out["mcp_servers"] = max(out["mcp_servers"], 1)
    return out


def _count(cur: psycopg.Cursor[Any], schema: str, table: str) -> int:
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


def _present_foreign_keys(cur: psycopg.Cursor[Any], schema: str) -> list[ForeignKey]:
    """The demo's foreign keys as they are now (ON DELETE may have changed since creation)."""
    cur.execute(
        """
        SELECT c.conname, c.confdeltype
        FROM pg_constraint AS c
        JOIN pg_class AS t ON t.oid = c.conrelid
        JOIN pg_namespace AS n ON n.oid = t.relnamespace
        WHERE c.contype = 'f' AND n.nspname = %s AND t.relname = ANY(%s)
        """,
        (schema, list(TABLES)),
    )
    actions = {name: _ACTIONS.get(code) for name, code in cur.fetchall()}
    return [
        fk._replace(on_delete=action) for fk in FOREIGN_KEYS if (action := actions.get(fk.name)) is not None
    ]


def load(conn: psycopg.Connection[Any], schema: str = "public", rows: int = 1_000_000) -> dict[str, int]:
    """Add about `rows` rows in total to the five tables, ANALYZE them, return each table's count.

    The data are a pure function of `rows` and of what the tables already hold.
    """
    s = sql.Identifier(schema)
    with conn.cursor() as cur:
        with conn.transaction():
            # Checking foreign keys row by row costs a third of the time; one validating join
            # when the constraints come back is much cheaper. Same names, same definitions.
            cur.execute("SET LOCAL jit = off")
            fks = _present_foreign_keys(cur, schema)
            for fk in fks:
                cur.execute(drop_foreign_key(schema, fk))
            for salt, (table, n) in enumerate(targets(rows).items()):
                stmt, parent = _LOADERS[table]
                params = {
                    "n": n,
                    "salt": 7 + salt,
                    "start": _count(cur, schema, table),
                    "np": _count(cur, schema, parent) if parent else 0,
                }
                cur.execute(sql.SQL(stmt).format(s=s, rand=sql.SQL(_RAND)), params)
            for fk in fks:
                cur.execute(add_foreign_key(schema, fk))
        for table in TABLES:
            cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))
        return {table: _count(cur, schema, table) for table in TABLES}
