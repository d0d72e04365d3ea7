"""What the swap drops or renames keeps its metadata: privileges, comments, defaults, triggers, rules.

Read under the swap's lock (catalog only: four queries whatever the plan's size) and put back in the
same transaction:
- a converted column's grants and comment follow its name to the column that takes the name (the
  retired column keeps its grants, so reverse triggers of column-privileged roles still read it;
  rolling back takes them off the uuid column again, which start created without any);
- a recreated view gets back its ACL (WITH GRANT OPTION included), comment, column comments, column
  grants and defaults, its triggers (INSTEAD OF) with their enabled state, and its rules;
- recreated primary keys, foreign keys, unique constraints and indexes keep their comments, and the
  indexes their storage options (fillfactor...; ALTER INDEX SET changes the catalog only);
- a converted column's statistics target follows its name like its comment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from .. import catalog
from .. import statements as s
from ..model import DependentView, ForeignKeyConversion, KeyConversion, Plan, Side, TableRef
from ..statements import Query

Item = KeyConversion | ForeignKeyConversion
Acl = list[tuple[str | None, str, bool]]  # (grantee or None for PUBLIC, privilege, grantable)


def _acl(raw: Any) -> Acl:
    return [(g, p, bool(o)) for g, p, o in (raw or [])]


@dataclass
class Metadata:
    """Captured under the lock; `statements()` puts it back after the renames and re-creations."""

    columns: list[tuple[Item, catalog.ColumnMeta, catalog.ColumnMeta]] = field(default_factory=list)
    views: dict[TableRef, catalog.ViewMeta] = field(default_factory=dict)
    constraints: list[tuple[TableRef, str, str | None]] = field(default_factory=list)
    indexes: list[tuple[TableRef, str, catalog.RelationMeta]] = field(default_factory=list)


def capture(conn: psycopg.Connection, plan: Plan, side: Side) -> Metadata:
    """`side` names the columns coming in (as in cutover.swap_statements)."""
    items: list[Item] = [*plan.keys, *plan.foreign_keys]
    pairs: list[tuple[TableRef, str]] = []
    for it in items:
        pairs += [(it.table, it.column), (it.table, s.col_on(it, side))]
    rows = catalog.read_columns_meta(conn, pairs)
    meta = Metadata(columns=[(it, rows[2 * i], rows[2 * i + 1]) for i, it in enumerate(items)])
    found = catalog.read_views_meta(conn, [v.view for v in plan.views])
    meta.views = {
        v.view: found[v.view.ident.as_string(conn)]
        for v in plan.views
        if v.view.ident.as_string(conn) in found
    }
    cons = [(k.table, k.constraint) for k in plan.keys] + [(f.table, f.name) for f in plan.foreign_keys]
    cons += [(ix.table, ix.constraint) for ix in plan.indexes if ix.constraint]
    comments = catalog.read_constraint_comments(conn, cons)
    meta.constraints = [(t, n, c) for (t, n), c in zip(cons, comments, strict=True) if c is not None]
    idx = [(k.table, k.constraint) for k in plan.keys] + [(ix.table, ix.name) for ix in plan.indexes]
    found_idx = catalog.read_relations_meta(conn, [TableRef(t.schema, n) for t, n in idx])
    meta.indexes = [(t, n, m) for (t, n), m in zip(idx, found_idx, strict=True) if m.comment or m.options]
    return meta


def _column_statements(
    item: Item, live: catalog.ColumnMeta, incoming: catalog.ColumnMeta, side: Side
) -> list[Query]:
    """After the renames `item.column` is the incoming column and `col_on(item, out)` the outgoing one."""
    out_name = s.col_on(item, "retired" if side == "shadow" else "shadow")
    st: list[Query] = []
    have = set(_acl(incoming.acl))
    for grantee, priv, grantable in _acl(live.acl):
        if (grantee, priv, grantable) not in have:
            st.append(s.build_privilege(item.table, priv, grantee, grantable, item.column))
    if side == "retired":  # back to a shadow: as start made it, with no privileges of its own
        for grantee, priv, _ in _acl(live.acl):
            st.append(s.build_privilege(item.table, priv, grantee, False, out_name, revoke=True))
    if live.comment != incoming.comment:
        st.append(s.build_column_comment(item.table, item.column, live.comment))
        st.append(s.build_column_comment(item.table, out_name, incoming.comment))
    if live.stattarget != incoming.stattarget:
        st.append(s.build_statistics_target(item.table, item.column, live.stattarget))
        st.append(s.build_statistics_target(item.table, out_name, incoming.stattarget))
    return st


def view_statements(v: DependentView, m: catalog.ViewMeta) -> list[Query]:
    """Everything DROP VIEW took with it, for the view just recreated (owner and options aside)."""
    st: list[Query] = [s.build_privilege(v.view, p, g, o) for g, p, o in _acl(m.acl)]
    if m.comment is not None:
        st.append(s.build_comment("VIEW", v.view.ident, m.comment))
    for name, comment, acl, default in m.columns or []:
        if comment is not None:
            st.append(s.build_column_comment(v.view, name, comment))
        st += [s.build_privilege(v.view, p, g, o, name) for g, p, o in _acl(acl)]
        if default is not None:
            st.append(s.build_view_column_default(v.view, name, default))
    for definition, name, enabled in m.triggers or []:
        st.append(psycopg.sql.SQL(definition))  # pg_get_triggerdef: the server's own text
        state = s.build_trigger_state(v.view, name, enabled)
        if state is not None:
            st.append(state)
    st += [psycopg.sql.SQL(rule.rstrip().rstrip(";")) for rule in m.rules or []]
    return st


def statements(plan: Plan, side: Side, meta: Metadata) -> list[Query]:
    """Run last in the swap: columns renamed, constraints, indexes and views recreated."""
    st: list[Query] = []
    for item, live, incoming in meta.columns:
        st += _column_statements(item, live, incoming, side)
    for v in sorted(plan.views, key=lambda v: v.depth):
        if v.view in meta.views:
            st += view_statements(v, meta.views[v.view])
    st += [s.build_constraint_comment(t, n, c) for t, n, c in meta.constraints]
    for t, n, m in meta.indexes:
        if m.comment is not None:
            st.append(s.build_comment("INDEX", psycopg.sql.Identifier(t.schema, n), m.comment))
        if m.options:
            st.append(s.build_index_options(TableRef(t.schema, n), m.options))
    return st
