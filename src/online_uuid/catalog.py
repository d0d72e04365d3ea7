"""Read-only pg_catalog queries: keys, foreign keys, indexes, dependents, privileges, blockers.

Every row comes back as a frozen dataclass (psycopg's `class_row`): its fields are the query's
column names, so a renamed column fails loudly instead of reading None.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from .model import SessionSetting, TableRef

INTEGER_TYPES = {"smallint", "integer", "bigint"}

R = TypeVar("R")


def _rows(
    conn: psycopg.Connection, row: type[R], query: str, params: tuple[Any, ...] | list[Any] = ()
) -> list[R]:
    with conn.cursor(row_factory=class_row(row)) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def _one(
    conn: psycopg.Connection, row: type[R], query: str, params: tuple[Any, ...] | list[Any] = ()
) -> R | None:
    rows = _rows(conn, row, query, params)
    return rows[0] if rows else None


def _the_one(
    conn: psycopg.Connection, row: type[R], query: str, params: tuple[Any, ...] | list[Any] = ()
) -> R:
    """The row of an object known to exist (its oid was read a moment ago)."""
    r = _one(conn, row, query, params)
    assert r is not None, (row.__name__, params)
    return r


def _scalar(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> Any:
    got = conn.execute(query, params).fetchone()
    return None if got is None else got[0]


@dataclass(frozen=True)
class TableInfo:
    oid: int
    schema: str
    name: str
    relkind: str
    is_partition: bool
    has_inheritance: bool
    rows: int
    bytes: int
    owned: bool  # current user may ALTER it (owner, member of owner role, or superuser)

    @property
    def ref(self) -> TableRef:
        return TableRef(self.schema, self.name)


@dataclass(frozen=True)
class PrimaryKey:
    conname: str
    conkey: list[int]
    columns: list[str]
    types: list[str]
    identity: str | None  # '' (none), 'a' (ALWAYS) or 'd' (BY DEFAULT) for a single column
    default_expr: str | None
    sequence: str | None


@dataclass(frozen=True)
class Column:
    attnum: int
    attname: str
    type: str  # format_type(), e.g. "bigint"
    attnotnull: bool
    identity: str


@dataclass(frozen=True)
class ReferencingFk:
    conname: str
    child_oid: int
    conkey: list[int]
    confkey: list[int]
    on_delete: str
    on_update: str
    condeferrable: bool
    condeferred: bool
    convalidated: bool
    match: str
    inherited: bool = False  # a partition's clone of its partitioned parent's constraint


@dataclass(frozen=True)
class OwnFk:
    conname: str
    target: str  # the referenced table, as regclass text


@dataclass(frozen=True)
class Dependent:
    catalog: str  # the catalog of the dependent object, e.g. pg_class, pg_constraint
    objid: int
    objsubid: int
    deptype: str
    description: str


@dataclass(frozen=True)
class Index:
    name: str
    method: str
    indisunique: bool
    indisprimary: bool
    nkey: int
    indkey: list[int]
    indoption: list[int]
    has_exprs: bool
    predicate: str | None
    table_oid: int
    opclasses: list[str | None]
    collations: list[str | None]
    conname: str | None
    contype: str | None
    condeferrable: bool | None
    condeferred: bool | None
    columns: list[str | None] = field(default_factory=list)  # None for an expression


@dataclass(frozen=True)
class Constraint:
    conname: str
    contype: str
    table_oid: int
    index_oid: int
    ref_oid: int


@dataclass(frozen=True)
class RewriteRule:
    rulename: str
    oid: int  # the relation the rule belongs to
    relkind: str
    nspname: str
    relname: str


@dataclass(frozen=True)
class View:
    nspname: str
    relname: str
    relkind: str
    definition: str
    options: list[str]
    acl: list[str]
    owner: str


@dataclass(frozen=True)
class Blocker:
    pid: int
    application_name: str | None
    state: str | None
    usename: str | None
    xact_age_s: float | None
    query: str | None


@dataclass(frozen=True)
class LockHolder:
    pid: int
    application_name: str | None
    age_s: float


_TABLE_SQL = """
SELECT c.oid::int8 AS oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS relkind,
       c.relispartition AS is_partition,
       EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid OR i.inhparent = c.oid)
         AS has_inheritance,
       greatest(c.reltuples, 0)::int8 AS rows,
       pg_total_relation_size(c.oid)::int8 AS bytes,
       pg_has_role(current_user, c.relowner, 'USAGE') AS owned
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = %s
"""


@dataclass(frozen=True)
class UpdateTrigger:
    nspname: str
    relname: str
    name: str
    kind: str  # trigger | rule
    enabled: str  # O origin, A always, R replica


@dataclass(frozen=True)
class ToolTrigger:
    oid: int
    xmin: str
    enabled: str
    table: str  # schema-qualified, quoted where needed
    name: str


Acl = list[list[Any]]  # [grantee or None for PUBLIC, privilege, grantable] per aclexplode row


@dataclass(frozen=True)
class ColumnMeta:
    i: int
    comment: str | None
    acl: Acl | None
    stattarget: int | None  # ALTER COLUMN SET STATISTICS; None (or -1 before 17) is the default


@dataclass(frozen=True)
class RelationMeta:
    comment: str | None
    options: list[str] | None  # reloptions, e.g. fillfactor=70


@dataclass(frozen=True)
class ViewMeta:
    rel: str
    comment: str | None
    acl: Acl | None
    columns: list[list[Any]] | None  # [name, comment, acl, default]
    triggers: list[list[Any]] | None  # [definition, name, tgenabled]
    rules: list[str] | None


@dataclass(frozen=True)
class RowSecurity:
    enabled: bool
    forced: bool
    bypass: bool


def read_table_by_oid(conn: psycopg.Connection, oid: int) -> TableInfo:
    return _the_one(conn, TableInfo, _TABLE_SQL, (oid,))


def _regclass(conn: psycopg.Connection, name: str) -> int | None:
    value = _scalar(conn, "SELECT to_regclass(%s)::oid::int8", (name,))
    return None if value is None else int(value)


def resolve_table(conn: psycopg.Connection, name: str) -> int | None:
    """The oid of a name the user typed, parsed exactly as SQL would (quotes, schema, search_path)."""
    try:
        return _regclass(conn, name)
    except psycopg.Error:  # e.g. InvalidName: unbalanced quotes
        return None


def read_table_ref(conn: psycopg.Connection, ref: TableRef) -> int | None:
    """The oid of a relation (table, index, view) we know by schema and name; None when gone.

    The one way to look up an oid: the same to_regclass as for typed names, on the quoted name.
    """
    return _regclass(conn, ref.ident.as_string(conn))


def read_primary_key(conn: psycopg.Connection, oid: int) -> PrimaryKey | None:
    """The primary key: name, columns, and for a single column its type, identity, default, sequence."""
    return _one(
        conn,
        PrimaryKey,
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


_COLUMN_SQL = (
    "SELECT attnum::int AS attnum, attname, format_type(atttypid, atttypmod) AS type, attnotnull, "
    "attidentity::text AS identity FROM pg_attribute WHERE attrelid = %s AND NOT attisdropped "
)


def read_column(conn: psycopg.Connection, oid: int, name: str) -> Column | None:
    return _one(conn, Column, _COLUMN_SQL + "AND attname = %s", (oid, name))


def read_column_by_num(conn: psycopg.Connection, oid: int, attnum: int) -> Column:
    return _the_one(conn, Column, _COLUMN_SQL + "AND attnum = %s", (oid, attnum))


def read_referencing_fks(conn: psycopg.Connection, oid: int, attnum: int) -> list[ReferencingFk]:
    """Every FK in the database whose referenced columns include the key column (any schema)."""
    return _rows(
        conn,
        ReferencingFk,
        """
        SELECT con.conname, con.conrelid::int8 AS child_oid, con.conkey::int2[] AS conkey,
               con.confkey::int2[] AS confkey, con.confdeltype::text AS on_delete,
               con.confupdtype::text AS on_update, con.condeferrable, con.condeferred,
               con.convalidated, con.confmatchtype::text AS match, con.conparentid <> 0 AS inherited
          FROM pg_constraint con
         WHERE con.contype = 'f' AND con.confrelid = %s AND %s = ANY (con.confkey)
         ORDER BY con.conrelid::regclass::text, con.conname
        """,
        (oid, attnum),
    )


def read_fks_from(conn: psycopg.Connection, oid: int, attnum: int) -> list[OwnFk]:
    """FKs whose own (referencing) columns include this column."""
    return _rows(
        conn,
        OwnFk,
        "SELECT conname, confrelid::regclass::text AS target FROM pg_constraint "
        "WHERE contype = 'f' AND conrelid = %s AND %s = ANY (conkey)",
        (oid, attnum),
    )


def read_batch_column(conn: psycopg.Connection, oid: int, fk_attnum: int) -> str | None:
    """An integer column the backfill can walk: the single-column integer PK, else an index on the FK."""
    pk = read_primary_key(conn, oid)
    if pk and len(pk.columns) == 1 and pk.types[0] in INTEGER_TYPES:
        return pk.columns[0]
    name = _scalar(
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
    return None if name is None else str(name)


def read_column_dependents(conn: psycopg.Connection, oid: int, attnum: int) -> list[Dependent]:
    """Everything pg_depend says depends on the column, described by the server itself."""
    return _rows(
        conn,
        Dependent,
        """
        SELECT d.classid::regclass::text AS catalog, d.objid::int8 AS objid, d.objsubid::int AS objsubid,
               d.deptype::text AS deptype,
               pg_describe_object(d.classid, d.objid, d.objsubid) AS description
          FROM pg_depend d
         WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s AND d.refobjsubid = %s
           AND d.deptype IN ('n', 'a', 'i')
         ORDER BY 1, 2
        """,
        (oid, attnum),
    )


def read_index(conn: psycopg.Connection, index_oid: int) -> Index:
    """An index's shape: method, key and INCLUDE columns, options, opclasses, collations, predicate."""
    r = _the_one(
        conn,
        Index,
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
    columns = [None if n == 0 else read_column_by_num(conn, r.table_oid, n).attname for n in r.indkey]
    return replace(r, columns=columns)


def read_constraint(conn: psycopg.Connection, con_oid: int) -> Constraint:
    return _the_one(
        conn,
        Constraint,
        "SELECT conname, contype::text AS contype, conrelid::int8 AS table_oid, conindid::int8 AS index_oid, "
        "confrelid::int8 AS ref_oid FROM pg_constraint WHERE oid = %s",
        (con_oid,),
    )


def read_rewrite_view(conn: psycopg.Connection, rewrite_oid: int) -> RewriteRule:
    """The relation a rewrite rule belongs to (a view's _RETURN rule, or a real rule)."""
    return _the_one(
        conn,
        RewriteRule,
        "SELECT r.rulename, r.ev_class::int8 AS oid, c.relkind::text AS relkind, n.nspname, c.relname "
        "FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.oid = %s",
        (rewrite_oid,),
    )


def read_view(conn: psycopg.Connection, view_oid: int) -> View:
    """A view's definition, options, ACL and owner, captured before the swap renames columns."""
    return _the_one(
        conn,
        View,
        "SELECT n.nspname, c.relname, c.relkind::text AS relkind, pg_get_viewdef(c.oid) AS definition, "
        "coalesce(c.reloptions, '{}') AS options, coalesce(c.relacl::text[], '{}') AS acl, "
        "pg_get_userbyid(c.relowner) AS owner "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        (view_oid,),
    )


def read_views_on_view(conn: psycopg.Connection, view_oid: int) -> list[int]:
    """Views that read another view (any column): they must be dropped and recreated with it."""
    rows = conn.execute(
        "SELECT DISTINCT r.ev_class::int8 AS oid FROM pg_depend d "
        "JOIN pg_rewrite r ON r.oid = d.objid "
        "WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass "
        "AND d.refobjid = %s AND r.ev_class <> %s",
        (view_oid, view_oid),
    ).fetchall()
    return [int(r[0]) for r in rows]


def read_publication_columns(conn: psycopg.Connection, oid: int, attnum: int) -> list[str]:
    """Publications whose column list names the column (PostgreSQL 15+)."""
    if conn.info.server_version < 150000:
        return []
    rows = conn.execute(
        "SELECT p.pubname FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid "
        "WHERE pr.prrelid = %s AND pr.prattrs IS NOT NULL AND %s = ANY (pr.prattrs::int2[])",
        (oid, attnum),
    ).fetchall()
    return [str(r[0]) for r in rows]


@dataclass(frozen=True)
class Routine:
    """A user function or procedure that may use a converted table (see routines.py)."""

    signature: str  # regprocedure text, e.g. get_customer_balance(integer,timestamp with time zone)
    name: str
    kind: str  # f (function), p (procedure), a (aggregate), w (window)
    language: str
    source: str | None  # prosrc
    definition: str | None  # pg_get_functiondef, for PL/pgSQL (its parser needs the CREATE text)
    arg_names: list[str]  # input arguments, "" when unnamed
    arg_types: list[str]
    arg_type_oids: list[int]
    returns: str
    returns_oid: int
    returns_set: bool


def read_routines(conn: psycopg.Connection, names: list[str], row_types: list[int]) -> list[Routine]:
    """User routines whose source mentions one of these table names, or that take or return one
    of these row types (extension members and the tool's own functions excluded)."""
    if not names and not row_types:
        return []
    return _rows(
        conn,
        Routine,
        """
        SELECT p.oid::regprocedure::text AS signature, p.proname AS name, p.prokind::text AS kind,
               l.lanname AS language, p.prosrc AS source,
               CASE WHEN l.lanname = 'plpgsql' THEN pg_get_functiondef(p.oid) END AS definition,
               ARRAY(SELECT coalesce(p.proargnames[a.ord], '')
                       FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) WITH ORDINALITY a(t, ord)
                      WHERE coalesce(p.proargmodes[a.ord], 'i') IN ('i', 'b', 'v')
                      ORDER BY a.ord) AS arg_names,
               ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY a(t, ord)
                      ORDER BY a.ord) AS arg_types,
               ARRAY(SELECT t::int8 FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY a(t, ord)
                      ORDER BY a.ord) AS arg_type_oids,
               format_type(p.prorettype, NULL) AS returns, p.prorettype::int8 AS returns_oid,
               p.proretset AS returns_set
          FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace
          JOIN pg_language l ON l.oid = p.prolang
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'online_uuid')
           AND n.nspname NOT LIKE 'pg\\_%%'
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                            AND d.objid = p.oid AND d.deptype = 'e')
           AND (p.prosrc ILIKE ANY (%s::text[]) OR p.prorettype = ANY (%s::oid[])
                OR p.proargtypes::oid[] && %s::oid[])
         ORDER BY 1
        """,
        (["%" + n + "%" for n in names], row_types, row_types),
    )


def read_row_types(conn: psycopg.Connection, oids: list[int]) -> dict[int, TableRef]:
    """The composite type of each table: a routine taking or returning it sees the key change type."""
    rows = conn.execute(
        "SELECT c.reltype::int8, n.nspname, c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY (%s::oid[])",
        (oids,),
    ).fetchall()
    return {int(t): TableRef(str(s), str(r)) for t, s, r in rows}


def read_before_row_triggers(conn: psycopg.Connection, table: TableRef) -> list[str]:
    """Names of the application's BEFORE ROW INSERT or UPDATE triggers on `table` (ours excluded)."""
    rows = conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal "
        "AND tgtype::int & 3 = 3 AND tgtype::int & 20 <> 0 AND tgname !~ '^~ou_'",
        (table.ident.as_string(conn),),
    ).fetchall()
    return [str(r[0]) for r in rows]


def read_writer_without_read(conn: psycopg.Connection, child_oid: int, parent_oid: int) -> str | None:
    """A role that may write the child table but not read the parent (the trigger must then be DEFINER)."""
    name = _scalar(
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
    return None if name is None else str(name)


def read_function_in_use(conn: psycopg.Connection, signature: str) -> bool:
    """Whether anything (a column default of another migration) depends on the function."""
    return bool(
        _scalar(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_depend WHERE refclassid = 'pg_proc'::regclass "
            "AND refobjid = to_regprocedure(%s) AND deptype = 'n')",
            (signature,),
        )
    )


def read_can_set_replica_role(conn: psycopg.Connection) -> bool:
    """May this session SET session_replication_role (superuser, or GRANT SET ON PARAMETER on 15+)?"""
    if conn.info.server_version >= 150000:
        q = "SELECT has_parameter_privilege('session_replication_role', 'SET') AS ok"
    else:
        q = "SELECT rolsuper AS ok FROM pg_roles WHERE rolname = current_user"
    return bool(_scalar(conn, q))


def read_update_triggers(conn: psycopg.Connection, table_oids: list[int]) -> list[UpdateTrigger]:
    """User triggers and rules an UPDATE of a new column fires on these tables (the backfill's UPDATE).

    `UPDATE OF` triggers are left out (they name older columns), and so are the tool's own triggers.
    `enabled` is pg_trigger.tgenabled / pg_rewrite.ev_enabled: O origin, A always, R replica.
    """
    return _rows(
        conn,
        UpdateTrigger,
        """
        SELECT n.nspname, c.relname, t.tgname AS name, 'trigger' AS kind, t.tgenabled::text AS enabled
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_proc f ON f.oid = t.tgfoid JOIN pg_namespace fn ON fn.oid = f.pronamespace
         WHERE t.tgrelid = ANY (%s::oid[]) AND NOT t.tgisinternal AND t.tgenabled <> 'D'
           AND (t.tgtype & 16) <> 0 AND coalesce(array_length(t.tgattr::int2[], 1), 0) = 0
           AND fn.nspname <> 'online_uuid'
        UNION ALL
        SELECT n.nspname, c.relname, r.rulename, 'rule', r.ev_enabled::text
          FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE r.ev_class = ANY (%s::oid[]) AND r.ev_type = '2' AND r.ev_enabled <> 'D'
         ORDER BY 1, 2, 4, 3
        """,
        (table_oids, table_oids),
    )


def read_tool_triggers(conn: psycopg.Connection, table_oids: list[int]) -> list[ToolTrigger]:
    """The tool's triggers on these tables, with their catalog row's xmin.

    ENABLE/DISABLE TRIGGER, DROP and re-CREATE all change a row's xmin or oid: comparing two reads
    tells, from the catalog alone, whether writes may have gone past the triggers in between.
    """
    return _rows(
        conn,
        ToolTrigger,
        "SELECT t.oid::int8 AS oid, t.xmin::text AS xmin, t.tgenabled::text AS enabled, "
        "format('%%I.%%I', cn.nspname, c.relname) AS table, t.tgname AS name "
        "FROM pg_trigger t JOIN pg_proc f ON f.oid = t.tgfoid "
        "JOIN pg_namespace n ON n.oid = f.pronamespace JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace cn ON cn.oid = c.relnamespace "
        "WHERE t.tgrelid = ANY (%s::oid[]) AND n.nspname = 'online_uuid' AND NOT t.tgisinternal "
        "ORDER BY 1",
        (table_oids,),
    )


def read_columns_meta(conn: psycopg.Connection, columns: list[tuple[TableRef, str]]) -> list[ColumnMeta]:
    """Per (table, column), in order: its privileges [grantee|None, privilege, grantable] and comment."""
    if not columns:
        return []
    rels = [t.ident.as_string(conn) for t, _ in columns]
    return _rows(
        conn,
        ColumnMeta,
        """
        SELECT x.i::int AS i, col_description(a.attrelid, a.attnum) AS comment,
               nullif(a.attstattarget::int, -1) AS stattarget,
               (SELECT json_agg(json_build_array(pg_get_userbyid(nullif(e.grantee, 0)), e.privilege_type,
                                                 e.is_grantable) ORDER BY e.grantee, e.privilege_type)
                  FROM aclexplode(a.attacl) e) AS acl
          FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS x(rel, col, i)
          LEFT JOIN pg_attribute a ON a.attrelid = to_regclass(x.rel) AND a.attname = x.col
         ORDER BY x.i
        """,
        (rels, [c for _, c in columns]),
    )


def read_views_meta(conn: psycopg.Connection, views: list[TableRef]) -> dict[str, ViewMeta]:
    """What DROP VIEW takes with it, per view (quoted name): ACL, comments, column ACLs and defaults,
    triggers (INSTEAD OF...) and rules other than _RETURN."""
    if not views:
        return {}
    rows = _rows(
        conn,
        ViewMeta,
        """
        SELECT x.rel, obj_description(c.oid, 'pg_class') AS comment,
               (SELECT json_agg(json_build_array(pg_get_userbyid(nullif(e.grantee, 0)), e.privilege_type,
                                                 e.is_grantable) ORDER BY e.grantee, e.privilege_type)
                  FROM aclexplode(c.relacl) e) AS acl,
               (SELECT json_agg(json_build_array(
                         a.attname, col_description(c.oid, a.attnum),
                         (SELECT json_agg(json_build_array(pg_get_userbyid(nullif(e.grantee, 0)),
                                                           e.privilege_type, e.is_grantable)
                                          ORDER BY e.grantee, e.privilege_type)
                            FROM aclexplode(a.attacl) e),
                         pg_get_expr(d.adbin, d.adrelid)) ORDER BY a.attnum)
                  FROM pg_attribute a
                  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
               (SELECT json_agg(json_build_array(pg_get_triggerdef(t.oid), t.tgname, t.tgenabled)
                                ORDER BY t.tgname)
                  FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal) AS triggers,
               (SELECT json_agg(pg_get_ruledef(r.oid) ORDER BY r.rulename) FROM pg_rewrite r
                 WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN') AS rules
          FROM unnest(%s::text[]) AS x(rel) JOIN pg_class c ON c.oid = to_regclass(x.rel)
        """,
        ([v.ident.as_string(conn) for v in views],),
    )
    return {r.rel: r for r in rows}


def read_constraint_comments(conn: psycopg.Connection, items: list[tuple[TableRef, str]]) -> list[str | None]:
    """Comments of these constraints (table, name), in order (None where none or no such constraint)."""
    if not items:
        return []
    rels = [t.ident.as_string(conn) for t, _ in items]
    q = (
        "SELECT (SELECT obj_description(k.oid, 'pg_constraint') FROM pg_constraint k "
        "WHERE k.conrelid = to_regclass(x.rel) AND k.conname = x.name) AS comment "
        "FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS x(rel, name, i) ORDER BY x.i"
    )
    return [r[0] for r in conn.execute(q, (rels, [n for _, n in items])).fetchall()]


def read_relations_meta(conn: psycopg.Connection, rels: list[TableRef]) -> list[RelationMeta]:
    """Comment and reloptions of these relations (indexes), in order; None where none or no such one."""
    if not rels:
        return []
    return _rows(
        conn,
        RelationMeta,
        "SELECT obj_description(c.oid, 'pg_class') AS comment, c.reloptions::text[] AS options "
        "FROM unnest(%s::text[]) WITH ORDINALITY AS x(rel, i) LEFT JOIN pg_class c "
        "ON c.oid = to_regclass(x.rel) ORDER BY x.i",
        ([t.ident.as_string(conn) for t in rels],),
    )


def read_row_security(conn: psycopg.Connection, oid: int) -> RowSecurity:
    """RLS of a table (enabled, forced) and whether the current user bypasses it (superuser, BYPASSRLS)."""
    r = _one(
        conn,
        RowSecurity,
        "SELECT c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced, "
        "(SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user) AS bypass "
        "FROM pg_class c WHERE c.oid = %s",
        (oid,),
    )
    assert r is not None
    return r


def read_can_create_schema(conn: psycopg.Connection) -> bool:
    return bool(
        _scalar(
            conn,
            "SELECT has_database_privilege(current_database(), 'CREATE') "
            "OR EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'online_uuid' "
            "AND has_schema_privilege(oid, 'CREATE')) AS ok",
        )
    )


def read_blockers(conn: psycopg.Connection, table_oids: list[int]) -> list[Blocker]:
    """Backends holding or waiting for locks on these tables, with what a DBA needs to decide."""
    return _rows(
        conn,
        Blocker,
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


def read_not_null_names(conn: psycopg.Connection, oid: int, columns: list[str]) -> dict[str, str]:
    """Column -> name of its NOT NULL constraint (PostgreSQL 18 records them in pg_constraint)."""
    rows = conn.execute(
        "SELECT a.attname, c.conname FROM pg_constraint c JOIN pg_attribute a "
        "ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
        "WHERE c.contype = 'n' AND c.conrelid = %s AND a.attname = ANY(%s)",
        (oid, columns),
    ).fetchall()
    return {str(column): str(name) for column, name in rows}


def read_view_definition(conn: psycopg.Connection, oid: int) -> str | None:
    """pg_get_viewdef as it is now (the swap recreates the view from it)."""
    value = _scalar(conn, "SELECT pg_get_viewdef(%s::oid)", (oid,))
    return None if value is None else str(value)


def read_index_invalid(conn: psycopg.Connection, oid: int) -> bool:
    """Whether the index is INVALID: left by an interrupted CREATE INDEX CONCURRENTLY."""
    return bool(_scalar(conn, "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = %s", (oid,)))


def read_validated_constraints(
    conn: psycopg.Connection, oids: list[int], names: list[str]
) -> list[tuple[int, str]]:
    """(table oid, name) of the validated CHECK constraints among these names on these tables."""
    rows = conn.execute(
        "SELECT conrelid::int8, conname FROM pg_constraint WHERE contype = 'c' AND convalidated "
        "AND conrelid = ANY (%s::oid[]) AND conname = ANY (%s::text[])",
        (oids, names),
    ).fetchall()
    return [(int(oid), str(name)) for oid, name in rows]


def read_lagging_standbys(conn: psycopg.Connection, over_s: float) -> list[tuple[str, float]]:
    """(application_name, replay lag in seconds) of the standbys lagging more than `over_s`."""
    rows = conn.execute(
        "SELECT application_name, extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication "
        "WHERE replay_lag > make_interval(secs => %s)",
        (over_s,),
    ).fetchall()
    return [(str(name), float(secs)) for name, secs in rows]


def read_old_lock_holders(
    conn: psycopg.Connection, table_oids: list[int], older_than_s: float
) -> list[LockHolder]:
    """Other sessions holding a lock on these tables in a transaction older than `older_than_s`."""
    return _rows(
        conn,
        LockHolder,
        "SELECT DISTINCT a.pid, a.application_name, "
        "extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS age_s "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.relation = ANY(%s::oid[]) "
        "AND l.granted AND a.pid <> pg_backend_pid() "
        "AND a.xact_start < clock_timestamp() - make_interval(secs => %s)",
        (table_oids, older_than_s),
    )


@dataclass(frozen=True)
class Session:
    pid: int
    application_name: str | None


def read_advisory_holder(conn: psycopg.Connection, key: str) -> Session | None:
    """The session holding the advisory lock on hashtext(key), if any."""
    return _one(
        conn,
        Session,
        "SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'advisory' AND l.objid = (hashtext(%s)::bigint & 4294967295)::oid "
        "AND l.granted LIMIT 1",
        (key,),
    )


def read_session_settings(conn: psycopg.Connection, names: list[str]) -> list[SessionSetting]:
    """Settings among `names` that ALTER DATABASE/ROLE give this session (pg_db_role_setting)."""
    return _rows(
        conn,
        SessionSetting,
        """
        SELECT CASE WHEN s.setdatabase = 0 THEN 'role ' || quote_ident(r.rolname)
                    WHEN s.setrole = 0 THEN 'database ' || quote_ident(d.datname)
                    ELSE 'role ' || quote_ident(r.rolname) || ' in database ' || quote_ident(d.datname)
               END AS scope,
               split_part(c.cfg, '=', 1) AS name, substr(c.cfg, strpos(c.cfg, '=') + 1) AS value
          FROM pg_db_role_setting s
          LEFT JOIN pg_database d ON d.oid = s.setdatabase
          LEFT JOIN pg_roles r ON r.oid = s.setrole
          CROSS JOIN LATERAL unnest(s.setconfig) AS c(cfg)
         WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
           AND (s.setrole = 0 OR pg_has_role(current_user, s.setrole, 'MEMBER'))
           AND split_part(c.cfg, '=', 1) = ANY (%s)
         ORDER BY s.setrole <> 0, s.setdatabase = 0, 1, 2
        """,
        (names,),
    )


@dataclass(frozen=True)
class MatViewRow:
    nspname: str
    relname: str
    definition: str
    populated: bool
    options: list[str]
    acl: list[str]
    owner: str
    comment: str | None
    column_comments: list[list[str]]
    columns: list[str]


@dataclass(frozen=True)
class MatViewIndexRow:
    name: str
    unique: bool
    definition: str
    head: str  # what pg_get_indexdef prints before the method: CREATE [UNIQUE] INDEX name ON view USING
    comment: str | None


def _qualified(conn: psycopg.Connection, read: Any) -> Any:
    """Run `read` with search_path = pg_catalog, so pg_get_viewdef/indexdef qualify every name
    (the text is run again later, maybe from another session with another search_path)."""
    with conn.transaction():
        conn.execute("SELECT set_config('search_path', 'pg_catalog, pg_temp', true)")
        return read()


def read_matview(conn: psycopg.Connection, oid: int) -> MatViewRow:
    """A materialized view's definition (every name qualified), state, options, grants, owner, comments."""
    r: MatViewRow | None = _qualified(conn, lambda: _one(conn, MatViewRow, _MATVIEW_SQL, (oid,)))
    assert r is not None
    return r


_MATVIEW_SQL = """
        SELECT n.nspname, c.relname, pg_get_viewdef(c.oid) AS definition, c.relispopulated AS populated,
               coalesce(c.reloptions, '{}') AS options, coalesce(c.relacl::text[], '{}') AS acl,
               pg_get_userbyid(c.relowner) AS owner, obj_description(c.oid, 'pg_class') AS comment,
               ARRAY(SELECT ARRAY[a.attname::text, d.description] FROM pg_attribute a
                       JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass
                            AND d.objsubid = a.attnum
                      WHERE a.attrelid = c.oid AND a.attnum > 0 ORDER BY a.attnum) AS column_comments,
               ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                        AND NOT a.attisdropped ORDER BY a.attnum) AS columns
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = %s
"""


def read_matview_indexes(conn: psycopg.Connection, oid: int) -> list[MatViewIndexRow]:
    rows: list[MatViewIndexRow] = _qualified(
        conn, lambda: _rows(conn, MatViewIndexRow, _MATVIEW_INDEX_SQL, (oid,))
    )
    return rows


_MATVIEW_INDEX_SQL = """
        SELECT ic.relname AS name, i.indisunique AS unique, pg_get_indexdef(i.indexrelid) AS definition,
               'CREATE ' || CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END || 'INDEX '
                 || quote_ident(ic.relname) || ' ON ' || i.indrelid::regclass::text || ' USING ' AS head,
               obj_description(i.indexrelid, 'pg_class') AS comment
          FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
         WHERE i.indrelid = %s
         ORDER BY ic.relname
"""


def read_dependents_of_relation(conn: psycopg.Connection, oid: int) -> list[str]:
    """Views, materialized views and rules that read a relation (described by the server)."""
    rows = conn.execute(
        "SELECT DISTINCT pg_describe_object('pg_class'::regclass, r.ev_class, 0) FROM pg_depend d "
        "JOIN pg_rewrite r ON r.oid = d.objid "
        "WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass "
        "AND d.refobjid = %s AND r.ev_class <> %s ORDER BY 1",
        (oid, oid),
    ).fetchall()
    return [str(r[0]) for r in rows]


def read_rule_constraint_dependencies(conn: psycopg.Connection, rel_oid: int) -> list[str]:
    """Constraints a view's query relies on (a GROUP BY that uses a primary key's functional dependency)."""
    rows = conn.execute(
        "SELECT DISTINCT pg_describe_object(d.refclassid, d.refobjid, 0) FROM pg_depend d "
        "JOIN pg_rewrite r ON r.oid = d.objid "
        "WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_constraint'::regclass "
        "AND r.ev_class = %s ORDER BY 1",
        (rel_oid,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def read_nulls_and_duplicates(conn: psycopg.Connection, table: TableRef, column: str) -> tuple[int, int]:
    """(rows with NULL, extra copies of repeated values) in one column: one scan, read only."""
    row = conn.execute(
        sql.SQL(
            "SELECT count(*) FILTER (WHERE {c} IS NULL), count({c}) - count(DISTINCT {c}) FROM {t}"
        ).format(c=sql.Identifier(column), t=table.ident)
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def read_partition_root(conn: psycopg.Connection, oid: int) -> TableRef:
    """The partitioned table at the top of a partition tree (the table itself when it is the root)."""
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = coalesce(pg_partition_root(%s::oid), %s::oid)",
        (oid, oid),
    ).fetchone()
    assert row is not None
    return TableRef(str(row[0]), str(row[1]))


def read_partition_root_oid(conn: psycopg.Connection, oid: int) -> int:
    """The oid of the partitioned table at the top of a partition tree (the table itself if a root)."""
    return int(_scalar(conn, "SELECT coalesce(pg_partition_root(%s::oid), %s::oid)::int8", (oid, oid)))


@dataclass(frozen=True)
class PartitionRow:
    oid: int
    schema: str
    name: str
    relkind: str
    parent_schema: str
    parent_name: str
    leaf: bool
    level: int
    rows: int
    owned: bool

    @property
    def ref(self) -> TableRef:
        return TableRef(self.schema, self.name)

    @property
    def parent(self) -> TableRef:
        return TableRef(self.parent_schema, self.parent_name)


def read_partitions(conn: psycopg.Connection, root_oid: int) -> list[PartitionRow]:
    """The root and every partition under it at any depth (pg_partition_tree), root first, by level."""
    return _rows(
        conn,
        PartitionRow,
        """
        SELECT t.relid::oid::int8 AS oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS relkind,
               pn.nspname AS parent_schema, pc.relname AS parent_name,
               c.relkind <> 'p' AS leaf, t.level::int AS level, greatest(c.reltuples, 0)::int8 AS rows,
               pg_has_role(current_user, c.relowner, 'USAGE') AS owned
          FROM pg_partition_tree(%s::oid::regclass) t
          JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_class pc ON pc.oid = coalesce(t.parentrelid, t.relid)
          JOIN pg_namespace pn ON pn.oid = pc.relnamespace
         ORDER BY t.level, n.nspname, c.relname
        """,
        (root_oid,),
    )


@dataclass(frozen=True)
class TableFk:
    conname: str
    column: str  # its first referencing column
    ncolumns: int
    inherited: bool  # a clone of the partitioned parent's constraint (conparentid <> 0)


def read_table_fks(conn: psycopg.Connection, oid: int, ref_oid: int) -> list[TableFk]:
    """The foreign keys of one table that reference `ref_oid`, with their column."""
    return _rows(
        conn,
        TableFk,
        "SELECT k.conname, a.attname AS column, array_length(k.conkey, 1) AS ncolumns, "
        "k.conparentid <> 0 AS inherited FROM pg_constraint k "
        "JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1] "
        "WHERE k.contype = 'f' AND k.conrelid = %s AND k.confrelid = %s ORDER BY k.conname",
        (oid, ref_oid),
    )


@dataclass(frozen=True)
class IndexPartition:
    schema: str
    table_name: str
    name: str
    parent: str
    leaf: bool
    level: int

    @property
    def table(self) -> TableRef:
        return TableRef(self.schema, self.table_name)


def read_index_partitions(conn: psycopg.Connection, index_oid: int) -> list[IndexPartition]:
    """The indexes attached to a partitioned index, at every depth, with the table of each."""
    return _rows(
        conn,
        IndexPartition,
        """
        SELECT n.nspname AS schema, tc.relname AS table_name, ic.relname AS name, pic.relname AS parent,
               ic.relkind = 'i' AS leaf, t.level::int AS level
          FROM pg_partition_tree(%s::oid::regclass) t
          JOIN pg_class ic ON ic.oid = t.relid JOIN pg_index i ON i.indexrelid = t.relid
          JOIN pg_class tc ON tc.oid = i.indrelid JOIN pg_namespace n ON n.oid = tc.relnamespace
          JOIN pg_class pic ON pic.oid = t.parentrelid
         WHERE t.level > 0
         ORDER BY t.level, 1, 2
        """,
        (index_oid,),
    )


def read_index_has_parent(conn: psycopg.Connection, index_oid: int) -> bool:
    """Whether the index is attached to a partitioned table's index."""
    return bool(_scalar(conn, "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = %s)", (index_oid,)))


def read_partition_key(conn: psycopg.Connection, oid: int) -> tuple[list[int], str]:
    """A partitioned table's key: its column numbers (0 for an expression) and its definition text."""
    row = conn.execute(
        "SELECT partattrs::int2[], pg_get_partkeydef(partrelid) FROM pg_partitioned_table "
        "WHERE partrelid = %s",
        (oid,),
    ).fetchone()
    return ([], "") if row is None else ([int(a) for a in row[0]], str(row[1]))
