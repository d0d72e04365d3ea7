"""Logical replication around a migration: publications carrying converted tables, subscriptions here.

A publication sends rows by column name: a subscriber that lacks a column the publisher now has
stops applying (`missing replicated column`), and its slot keeps the publisher's WAL until it is
fixed. So each subscriber must have the shadow columns before `start` adds them here.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from .model import Plan, PublicationUse, TableRef
from .naming import STATE_SCHEMA
from .templates import render

ALL_TABLES = "FOR ALL TABLES"


def read_publications(conn: psycopg.Connection, tables: list[TableRef]) -> list[PublicationUse]:
    """Every publication of this database that carries one of `tables` (FOR ALL TABLES and FOR
    TABLES IN SCHEMA included: pg_publication_tables expands them)."""
    rows = conn.execute(
        """
        SELECT p.pubname,
               CASE WHEN p.puballtables THEN 'FOR ALL TABLES'
                    WHEN EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid
                                   JOIN pg_namespace n ON n.oid = c.relnamespace
                                  WHERE r.prpubid = p.oid AND n.nspname = t.schemaname
                                    AND c.relname = t.tablename) THEN 'FOR TABLE'
                    ELSE 'FOR TABLES IN SCHEMA' END,
               t.schemaname, t.tablename
          FROM pg_publication p JOIN pg_publication_tables t ON t.pubname = p.pubname
         WHERE (t.schemaname, t.tablename) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
         ORDER BY 1, 3, 4
        """,
        ([t.schema for t in tables], [t.name for t in tables]),
    ).fetchall()
    found: dict[str, tuple[str, list[TableRef]]] = {}
    for name, scope, schema, table in rows:
        found.setdefault(name, (scope, []))[1].append(TableRef(schema, table))
    return [PublicationUse(name, scope, tuple(ts)) for name, (scope, ts) in found.items()]


def read_subscriptions(conn: psycopg.Connection) -> list[str]:
    """Subscriptions of this database (it is itself a subscriber: its tables receive rows)."""
    rows = conn.execute(
        "SELECT subname FROM pg_subscription WHERE subdbid = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def subscriber_ddl(plan: Plan, pub: PublicationUse) -> list[sql.Composed]:
    """What each subscriber of `pub` must run before `start`: the shadow columns of its tables
    (no default: the values arrive from the publisher)."""
    carried = set(pub.tables)
    cols = [(k.table, k.shadow) for k in plan.keys if k.table in carried]
    cols += [(f.table, f.shadow) for f in plan.foreign_keys if f.table in carried]
    return [
        sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} uuid").format(t.ident, sql.Identifier(c))
        for t, c in cols
    ]


def carries_state_schema(plan: Plan) -> bool:
    """A FOR ALL TABLES publication also sends the rows of online-uuid's own state tables."""
    return any(p.scope == ALL_TABLES for p in plan.publications)


def build_subscriber_state_schema() -> sql.Composed:
    """online-uuid's state tables for a subscriber: the rows (meta's included) come from the publisher."""
    from .state import SCHEMA_VERSION

    return sql.Composed(
        [
            render(
                "state_schema.sql", schema=sql.Identifier(STATE_SCHEMA), version=sql.Literal(SCHEMA_VERSION)
            ),
            sql.SQL("\nDELETE FROM {};\n").format(sql.Identifier(STATE_SCHEMA, "meta")),
        ]
    )


def subscriber_script(conn: psycopg.Connection, plan: Plan) -> str:
    """Everything each subscriber runs before `start`, as `plan --subscriber-sql` prints it."""
    out = []
    for pub in plan.publications:
        out.append(f"-- subscribers of publication {pub.name} ({pub.scope})")
        out += [st.as_string(conn) + ";" for st in subscriber_ddl(plan, pub)]
    if carries_state_schema(plan):
        out.append(f"-- {ALL_TABLES} also carries online-uuid's state tables (schema {STATE_SCHEMA})")
        out.append("BEGIN;\n" + build_subscriber_state_schema().as_string(conn) + "COMMIT;")
    return "\n".join(out) + "\n"
