"""Partitioned children as the catalog has them now: partitions created, attached or detached since
the plan was made.

The plan records each partitioned child's tree as it was; every phase works from `refresh(conn,
plan)`, so a partition created since (`CREATE TABLE ... PARTITION OF`, or `ATTACH PARTITION` of a
table given the shadow column first) gets its backfill job, its check, its index twins and its
foreign key like the others. A partition detached since keeps a shadow column that no trigger keeps
any more: `detached` names it, and verify and cutover refuse until it is re-attached or its shadow
column dropped.
"""

from __future__ import annotations

from dataclasses import replace

import psycopg

from . import catalog, naming
from .errors import StateError
from .model import ForeignKeyConversion, IndexTwin, PartitionIndex, PartitionNode, Plan, TableRef


def _oid(conn: psycopg.Connection, table: TableRef) -> int:
    oid = catalog.read_table_ref(conn, table)
    if oid is None:
        raise StateError(f"table {table} is gone since the migration started; run `online-uuid rollback`")
    return oid


def node(row: catalog.PartitionRow, live: catalog.TableFk | None, batch: str, **found: str) -> PartitionNode:
    """One partition as the plan and every phase record it, with `live`, its foreign key on the
    converted column (None when it has none), and `found`, the run-time constraint names."""
    return PartitionNode(
        table=row.ref,
        parent=row.parent,
        leaf=row.leaf,
        level=row.level,
        constraint=live.conname if live else "",
        inherited=bool(live and live.inherited),
        batch_column=batch,
        rows=row.rows,
        **found,
    )


def _fk(conn: psycopg.Connection, f: ForeignKeyConversion) -> ForeignKeyConversion:
    known = {p.table: p for p in f.partitions}
    ref_oid = _oid(conn, f.ref_table)
    nodes: list[PartitionNode] = []
    for row in catalog.read_partitions(conn, _oid(conn, f.table)):
        fks = {k.column: k for k in catalog.read_table_fks(conn, row.oid, ref_oid)}
        live = fks.get(f.column)
        was = known.get(row.ref)
        batch = ""
        if row.leaf:
            batch = (
                was.batch_column if was is not None and was.batch_column else _walk(conn, row.oid, f.column)
            )
        nodes.append(
            node(
                row,
                live,
                batch,
                shadow_constraint=fks[f.shadow].conname if f.shadow in fks else "",
                retired_constraint=fks[f.retired].conname if f.retired in fks else "",
            )
        )
    return replace(f, partitions=tuple(nodes))


def _walk(conn: psycopg.Connection, oid: int, column: str) -> str:
    """A partition that joined since the plan: its integer key or an index on the column, else its heap."""
    from .backfill import ctid  # the backfill package reads plans refreshed here

    col = catalog.read_column(conn, oid, column)
    found = catalog.read_batch_column(conn, oid, col.attnum) if col is not None else None
    return found or ctid.CTID


def _index(conn: psycopg.Connection, ix: IndexTwin) -> IndexTwin:
    """The partitions' indexes under the partitioned index now, and the twin each has (if built)."""
    oid = _oid(conn, TableRef(ix.table.schema, ix.name))
    twin_oid = catalog.read_table_ref(conn, TableRef(ix.table.schema, ix.twin))
    twins: dict[TableRef, str] = {}
    if twin_oid is not None:
        twins = {p.table: p.name for p in catalog.read_index_partitions(conn, twin_oid)}
    parts = [
        PartitionIndex(
            p.table, p.name, twins.get(p.table) or naming.twin_index(p.name), p.parent, p.leaf, p.level
        )
        for p in catalog.read_index_partitions(conn, oid)
    ]
    return replace(ix, partitions=tuple(parts))


def refresh(conn: psycopg.Connection, plan: Plan) -> Plan:
    """The plan with every partitioned child's tree (and partitioned index) as the catalog has it now."""
    if not any(f.partitioned for f in plan.foreign_keys):
        return plan
    fks = tuple(_fk(conn, f) if f.partitioned else f for f in plan.foreign_keys)
    indexes = tuple(_index(conn, ix) if ix.partitioned else ix for ix in plan.indexes)
    return replace(plan, foreign_keys=fks, indexes=indexes)


def detached(
    conn: psycopg.Connection, planned: Plan, now: Plan, also: dict[str, set[TableRef]] | None = None
) -> list[str]:
    """One line per partition that left its tree since the plan and still holds part of the migration:
    the shadow (or retired) column, which no trigger maintains any more, or its foreign key to the
    converted key, which the swap would break.

    `also`: per foreign key, the partitions the backfill registered jobs for (some joined after the plan).
    """
    problems: list[str] = []
    for f, g in zip(planned.foreign_keys, now.foreign_keys, strict=True):
        if not f.partitioned:
            continue
        current = {p.table for p in g.partitions}
        was = {p.table for p in f.partitions} | (also or {}).get(f.key, set())
        ref_oid = catalog.read_table_ref(conn, f.ref_table)
        for table in sorted(was - current):
            oid = catalog.read_table_ref(conn, table)
            if oid is None:
                continue  # dropped: nothing of it is left
            kept = [c for c in (f.shadow, f.retired) if catalog.read_column(conn, oid, c) is not None]
            fks = catalog.read_table_fks(conn, oid, ref_oid) if ref_oid is not None else []
            held = [k.conname for k in fks if k.column == f.column]
            if not kept and not held:
                continue
            what = " and ".join(
                [f"its {c} column (no trigger maintains it any more)" for c in kept]
                + [f"its foreign key {n} to {f.ref_table} (the swap would break it)" for n in held]
            )
            drop = ", ".join(
                [f"DROP COLUMN {sql_name(c)}" for c in kept]
                + [f"DROP CONSTRAINT {sql_name(n)}" for n in held]
            )
            problems.append(
                f"partition {table} was detached from {f.table} during the migration and keeps {what}: "
                f"re-attach it (ALTER TABLE {f.table} ATTACH PARTITION {table} FOR VALUES ...), or let it go "
                f"(ALTER TABLE {table} {drop}), then run the command again"
            )
    return problems


def sql_name(name: str) -> str:
    """An identifier as SQL needs it written (quoted when needed), for messages."""
    return TableRef("x", name).display().split(".", 1)[1]


def registered(conn: psycopg.Connection, mid: str) -> dict[str, set[TableRef]]:
    """Per partitioned foreign key, the partitions its backfill jobs walk (`fk:<key>@<partition>`)."""
    from .backfill import batch

    out: dict[str, set[TableRef]] = {}
    for r in batch.load_all(conn, mid) if mid else []:
        if r["kind"] == "fk" and "@" in r["job_id"]:
            key = r["job_id"][len("fk:") :].split("@", 1)[0]
            out.setdefault(key, set()).add(TableRef(r["schema_name"], r["table_name"]))
    return out
