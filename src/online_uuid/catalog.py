"""Read-only pg_catalog queries: keys, foreign keys, indexes, dependents, privileges, blockers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .model import TableRef

INTEGER_TYPES = {"smallint", "integer", "bigint"}


@dataclass(frozen=True)
class TableInfo:
    oid: int
    ref: TableRef
    relkind: str
    is_partition: bool
    has_inheritance: bool
    rows: int
    bytes: int
    owned: bool  # current user may ALTER it (owner, member of owner role, or superuser)


def _rows(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def _one(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> dict[str, Any] | None:
    rows = _rows(conn, query, params)
    return rows[0] if rows else None


_TABLE_SQL = """
SELECT c.oid::int8 AS oid, n.nspname, c.relname, c.relkind::text, c.relispartition,
       EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid OR i.inhparent = c.oid) AS inh,
       greatest(c.reltuples, 0)::int8 AS rows,
       pg_total_relation_size(c.oid)::int8 AS bytes,
       pg_has_role(current_user, c.relowner, 'USAGE') AS owned
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = %s
"""


def read_table_by_oid(conn: psycopg.Connection, oid: int) -> TableInfo:
    r = _one(conn, _TABLE_SQL, (oid,))
    assert r is not None, oid
    return TableInfo(
        oid=r["oid"],
        ref=TableRef(r["nspname"], r["relname"]),
        relkind=r["relkind"],
        is_partition=r["relispartition"],
        has_inheritance=r["inh"],
        rows=r["rows"],
        bytes=r["bytes"],
        owned=r["owned"],
    )


def resolve_table(conn: psycopg.Connection, name: str) -> int | None:
    """The table's oid, parsing `name` exactly as SQL would (quotes, schema, search_path)."""
    try:
        r = _one(conn, "SELECT to_regclass(%s)::oid::int8 AS oid", (name,))
    except psycopg.errors.InvalidName:
        return None
    except psycopg.Error:
        return None
    return None if r is None or r["oid"] is None else int(r["oid"])


def read_table_ref(conn: psycopg.Connection, ref: TableRef) -> int | None:
    r = _one(
        conn,
        "SELECT c.oid::int8 AS oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (ref.schema, ref.name),
    )
    return None if r is None else int(r["oid"])


def read_primary_key(conn: psycopg.Connection, oid: int) -> dict[str, Any] | None:
    """The primary key: name, columns, and for a single column its type, identity, default, sequence."""
    return _one(
        conn,
        """
        SELECT con.conname, con.conkey::int2[] AS conkey,
               array_agg(a.attname ORDER BY k.ord) AS columns,
               array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord) AS types,
               min(a.attidentity::text) AS identity,
               min(pg_get_expr(d.adbin, d.adrelid)) AS default_expr,
               min(pg_get_serial_sequence(con.conrelid::regclass::text, a.attname)) AS sequence
          FROM pg_constraint con
          CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE con.conrelid = %s AND con.contype = 'p'
         GROUP BY con.conname, con.conkey
        """,
        (oid,),
    )


def read_column(conn: psycopg.Connection, oid: int, name: str) -> dict[str, Any] | None:
    return _one(
        conn,
        "SELECT attnum, format_type(atttypid, atttypmod) AS type, attnotnull, attidentity::text AS identity "
        "FROM pg_attribute WHERE attrelid = %s AND attname = %s AND NOT attisdropped",
        (oid, name),
    )


def read_column_by_num(conn: psycopg.Connection, oid: int, attnum: int) -> dict[str, Any]:
    r = _one(
        conn,
        "SELECT attname, format_type(atttypid, atttypmod) AS type, attnotnull "
        "FROM pg_attribute WHERE attrelid = %s AND attnum = %s",
        (oid, attnum),
    )
    assert r is not None
    return r


def read_referencing_fks(conn: psycopg.Connection, oid: int, attnum: int) -> list[dict[str, Any]]:
    """Every FK in the database whose referenced columns include the key column (any schema)."""
    return _rows(
        conn,
        """
        SELECT con.conname, con.conrelid::int8 AS child_oid, con.conkey::int2[] AS conkey,
               con.confkey::int2[] AS confkey, con.confdeltype::text AS on_delete,
               con.confupdtype::text AS on_update, con.condeferrable, con.condeferred,
               con.convalidated, con.confmatchtype::text AS match
          FROM pg_constraint con
         WHERE con.contype = 'f' AND con.confrelid = %s AND %s = ANY (con.confkey)
         ORDER BY con.conrelid::regclass::text, con.conname
        """,
        (oid, attnum),
    )


def read_fks_from(conn: psycopg.Connection, oid: int, attnum: int) -> list[dict[str, Any]]:
    """FKs whose own (referencing) columns include this column."""
    return _rows(
        conn,
        "SELECT conname, confrelid::regclass::text AS target FROM pg_constraint "
        "WHERE contype = 'f' AND conrelid = %s AND %s = ANY (conkey)",
        (oid, attnum),
    )


def read_batch_column(conn: psycopg.Connection, oid: int, fk_attnum: int) -> str | None:
    """An integer column the backfill can walk: the single-column integer PK, else an index on the FK."""
    pk = read_primary_key(conn, oid)
    if pk and len(pk["columns"]) == 1 and pk["types"][0] in INTEGER_TYPES:
        return str(pk["columns"][0])
    r = _one(
        conn,
        """
        SELECT a.attname FROM pg_index i
          JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = %s AND i.indkey[0] = %s AND am.amname = 'btree'
           AND i.indisvalid AND i.indpred IS NULL
         LIMIT 1
        """,
        (oid, fk_attnum),
    )
    return None if r is None else str(r["attname"])


def read_column_dependents(conn: psycopg.Connection, oid: int, attnum: int) -> list[dict[str, Any]]:
    """Everything pg_depend says depends on the column, described by the server itself."""
    return _rows(
        conn,
        """
        SELECT d.classid::regclass::text AS catalog, d.objid::int8 AS objid, d.objsubid,
               d.deptype::text AS deptype,
               pg_describe_object(d.classid, d.objid, d.objsubid) AS description
          FROM pg_depend d
         WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s AND d.refobjsubid = %s
           AND d.deptype IN ('n', 'a', 'i')
         ORDER BY 1, 2
        """,
        (oid, attnum),
    )


def read_index(conn: psycopg.Connection, index_oid: int) -> dict[str, Any]:
    """An index's shape: method, key and INCLUDE columns, options, opclasses, collations, predicate."""
    r = _one(
        conn,
        """
        SELECT ic.relname AS name, am.amname AS method, i.indisunique, i.indisprimary,
               i.indnkeyatts::int AS nkey, i.indkey::int2[] AS indkey, i.indoption::int2[] AS indoption,
               i.indexprs IS NOT NULL AS has_exprs,
               pg_get_expr(i.indpred, i.indrelid) AS predicate,
               i.indrelid::int8 AS table_oid,
               ARRAY(SELECT CASE WHEN oc.opcdefault THEN NULL
                                 ELSE quote_ident(ocn.nspname) || '.' || quote_ident(oc.opcname) END
                       FROM unnest(i.indclass::oid[]) WITH ORDINALITY AS c(oid, ord)
                       JOIN pg_opclass oc ON oc.oid = c.oid
                       JOIN pg_namespace ocn ON ocn.oid = oc.opcnamespace ORDER BY c.ord) AS opclasses,
               ARRAY(SELECT CASE WHEN c.oid = 0 OR c.oid = att.attcollation THEN NULL
                                 ELSE c.oid::regcollation::text END
                       FROM unnest(i.indcollation::oid[]) WITH ORDINALITY AS c(oid, ord)
                       LEFT JOIN pg_attribute att ON att.attrelid = i.indrelid
                            AND att.attnum = (i.indkey::int2[])[c.ord - 1]
                      ORDER BY c.ord) AS collations,
               con.conname, con.contype::text AS contype, con.condeferrable, con.condeferred
          FROM pg_index i
          JOIN pg_class ic ON ic.oid = i.indexrelid
          JOIN pg_am am ON am.oid = ic.relam
          LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
               AND con.contype IN ('p', 'u', 'x')
         WHERE i.indexrelid = %s
        """,
        (index_oid,),
    )
    assert r is not None
    r["columns"] = [
        None if n == 0 else read_column_by_num(conn, r["table_oid"], n)["attname"] for n in r["indkey"]
    ]
    return r


def read_constraint(conn: psycopg.Connection, con_oid: int) -> dict[str, Any]:
    r = _one(
        conn,
        "SELECT conname, contype::text, conrelid::int8 AS table_oid, conindid::int8 AS index_oid, "
        "confrelid::int8 AS ref_oid FROM pg_constraint WHERE oid = %s",
        (con_oid,),
    )
    assert r is not None
    return r


def read_rewrite_view(conn: psycopg.Connection, rewrite_oid: int) -> dict[str, Any]:
    """The relation a rewrite rule belongs to (a view's _RETURN rule, or a real rule)."""
    r = _one(
        conn,
        "SELECT r.rulename, r.ev_class::int8 AS oid, c.relkind::text, n.nspname, c.relname "
        "FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.oid = %s",
        (rewrite_oid,),
    )
    assert r is not None
    return r


def read_view(conn: psycopg.Connection, view_oid: int) -> dict[str, Any]:
    """A view's definition, options, ACL and owner, captured before the swap renames columns."""
    r = _one(
        conn,
        "SELECT n.nspname, c.relname, c.relkind::text, pg_get_viewdef(c.oid) AS definition, "
        "coalesce(c.reloptions, '{}') AS options, coalesce(c.relacl::text[], '{}') AS acl, "
        "pg_get_userbyid(c.relowner) AS owner "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        (view_oid,),
    )
    assert r is not None
    return r


def read_views_on_view(conn: psycopg.Connection, view_oid: int) -> list[int]:
    """Views that read another view (any column): they must be dropped and recreated with it."""
    rows = _rows(
        conn,
        "SELECT DISTINCT r.ev_class::int8 AS oid FROM pg_depend d "
        "JOIN pg_rewrite r ON r.oid = d.objid "
        "WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass "
        "AND d.refobjid = %s AND r.ev_class <> %s",
        (view_oid, view_oid),
    )
    return [int(r["oid"]) for r in rows]


def read_publication_columns(conn: psycopg.Connection, oid: int, attnum: int) -> list[str]:
    """Publications whose column list names the column (PostgreSQL 15+)."""
    if conn.info.server_version < 150000:
        return []
    rows = _rows(
        conn,
        "SELECT p.pubname FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid "
        "WHERE pr.prrelid = %s AND pr.prattrs IS NOT NULL AND %s = ANY (pr.prattrs::int2[])",
        (oid, attnum),
    )
    return [str(r["pubname"]) for r in rows]


def read_functions_naming(conn: psycopg.Connection, names: list[str]) -> list[str]:
    """User functions whose source text mentions any of these names (invisible to pg_depend)."""
    if not names:
        return []
    rows = _rows(
        conn,
        """
        SELECT p.oid::regprocedure::text AS fn, p.prosrc
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'online_uuid')
           AND n.nspname NOT LIKE 'pg\\_%%'
           AND p.prosrc ILIKE ANY (%s::text[])
         ORDER BY 1
        """,
        (["%" + n + "%" for n in names],),
    )
    words = [re.compile(r"(?<![A-Za-z0-9_$])" + re.escape(n) + r"(?![A-Za-z0-9_$])", re.I) for n in names]
    return [str(r["fn"]) for r in rows if any(w.search(r["prosrc"] or "") for w in words)]


def read_writer_without_read(conn: psycopg.Connection, child_oid: int, parent_oid: int) -> str | None:
    """A role that may write the child table but not read the parent (the trigger must then be DEFINER)."""
    r = _one(
        conn,
        """
        SELECT r.rolname FROM pg_roles r
         WHERE r.rolname !~ '^pg_'
           AND (has_table_privilege(r.oid, %s::oid, 'INSERT')
                OR has_table_privilege(r.oid, %s::oid, 'UPDATE'))
           AND NOT has_table_privilege(r.oid, %s::oid, 'SELECT')
         ORDER BY 1 LIMIT 1
        """,
        (child_oid, child_oid, parent_oid),
    )
    return None if r is None else str(r["rolname"])


def read_can_create_schema(conn: psycopg.Connection) -> bool:
    r = _one(
        conn,
        "SELECT has_database_privilege(current_database(), 'CREATE') "
        "OR EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'online_uuid' "
        "AND has_schema_privilege(oid, 'CREATE')) AS ok",
    )
    return bool(r and r["ok"])


def read_blockers(conn: psycopg.Connection, table_oids: list[int]) -> list[dict[str, Any]]:
    """Backends holding or waiting for locks on these tables, with what a DBA needs to decide."""
    return _rows(
        conn,
        """
        SELECT DISTINCT a.pid, a.application_name, a.state, a.usename,
               round(extract(epoch FROM clock_timestamp() - a.xact_start)::numeric, 1)::float8 AS xact_age_s,
               left(a.query, 200) AS query
          FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'relation' AND l.relation = ANY (%s::oid[]) AND l.granted
           AND a.pid <> pg_backend_pid()
         ORDER BY xact_age_s DESC NULLS LAST
        """,
        (table_oids,),
    )
