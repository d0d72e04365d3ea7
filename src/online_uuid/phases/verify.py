"""verify: every shadow key filled and unique, every shadow FK equal to its parent's, read online."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .. import partitions
from ..backfill import ctid
from ..backfill.keyset import read_bounds, read_upper_bound
from ..catalog import ToolTrigger, read_table_ref, read_tool_triggers
from ..errors import StateError, TriggersChangedError, VerifyError
from ..model import ForeignKeyConversion, KeyConversion, Plan, TableRef
from ..statements import derive_fn, derived_mismatch, renamed
from . import invariant

BATCH = 50_000
HEAP_BLOCKS = 1_000  # blocks per batch when a table is walked by ctid ranges (8 MB)
SAMPLE = 5


@dataclass
class Check:
    """One column's verdict: rows looked at, rows wrong, and the first wrong ones."""

    table: str
    column: str
    rows: int = 0
    missing: int = 0
    duplicates: int = 0
    mismatched: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    enforced_by: str = ""  # a validated CHECK holds the invariant on every row: nothing was read

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.mismatched)


@dataclass
class VerifyReport:
    checks: list[Check]
    repaired: dict[str, int] | None = None  # verify --repair: rows fixed per table.column

    def failing(self) -> set[tuple[str, str]]:
        """(table, shadow column) of every check a repair can fix (missing or mismatched rows)."""
        return {(c.table, c.column) for c in self.checks if c.missing or c.mismatched}

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"ok": self.ok, "checks": [{**c.__dict__, "ok": c.ok} for c in self.checks]}
        if self.repaired is not None:
            doc["repaired"] = self.repaired
        return doc

    def first_problem(self) -> str:
        for c in self.checks:
            if not c.ok:
                what = (
                    f"{c.missing} rows without a UUID"
                    if c.missing
                    else f"{c.duplicates} duplicate UUIDs"
                    if c.duplicates
                    else f"{c.mismatched} rows whose UUID differs from the parent's (or the derived one)"
                )
                return f"{c.table}.{c.column}: {what}, first: {c.samples[:SAMPLE]}"
        return ""


def _walk(conn: psycopg.Connection, table: Any, column: str) -> list[tuple[int, int]]:
    if ctid.walks_heap(column):
        return ctid.ranges(conn, table, HEAP_BLOCKS)
    lo, hi_max = read_bounds(conn, table, column)
    ranges: list[tuple[int, int]] = []
    while lo is not None and hi_max is not None and lo <= hi_max:
        hi = read_upper_bound(conn, table, column, lo, hi_max, BATCH)
        if hi is None:
            break
        ranges.append((lo, hi))
        lo = hi + 1
    return ranges


def _range(column: str) -> sql.Composed:
    """A walk batch's bounds on child rows `c`: two parameters (see _range_params)."""
    if ctid.walks_heap(column):
        return ctid.build_range("c")
    return sql.SQL("c.{} BETWEEN %s AND %s").format(sql.Identifier(column))


def _range_params(column: str, lo: int, hi: int) -> tuple[Any, Any]:
    return ctid.range_params(lo, hi) if ctid.walks_heap(column) else (lo, hi)


def check_key(conn: psycopg.Connection, k: KeyConversion, shadow: str) -> Check:
    c = Check(str(k.table), shadow)
    key, sh = sql.Identifier(k.column), sql.Identifier(shadow)
    for lo, hi in _walk(conn, k.table, k.column):
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), count(*) FILTER (WHERE {s} IS NULL) FROM {t} WHERE {k} BETWEEN %s AND %s"
            ).format(s=sh, t=k.table.ident, k=key),
            (lo, hi),
        ).fetchone()
        assert row is not None
        c.rows += row[0]
        c.missing += row[1]
        if row[1] and len(c.samples) < SAMPLE:
            rows = conn.execute(
                sql.SQL("SELECT {k} FROM {t} WHERE {k} BETWEEN %s AND %s AND {s} IS NULL LIMIT 5").format(
                    k=key, t=k.table.ident, s=sh
                ),
                (lo, hi),
            ).fetchall()
            c.samples += [{k.column: r[0]} for r in rows]
    dup = conn.execute(
        sql.SQL(
            "SELECT {s}::text, count(*) FROM {t} WHERE {s} IS NOT NULL "
            "GROUP BY {s} HAVING count(*) > 1 LIMIT 5"
        ).format(s=sh, t=k.table.ident)
    ).fetchall()
    c.duplicates = len(dup)
    c.samples += [{shadow: d[0], "copies": d[1]} for d in dup]
    return c


def check_fk(
    conn: psycopg.Connection,
    plan: Plan,
    f: ForeignKeyConversion,
    fk_shadow: str,
    key_shadow: str,
    fk_column: str,
    key_column: str,
    batch_column: str,
    table: TableRef | None = None,
) -> Check:
    """Child rows whose shadow FK is not the parent's shadow key, by join in keyset batches.

    `table`: a leaf partition of the partitioned child `f.table`, checked on its own.
    """
    child = table or f.table
    c = Check(str(child), fk_shadow)
    b = sql.Identifier("c", batch_column)
    where = _range(batch_column)
    q = sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE c.{cs} IS DISTINCT FROM p.{ps}) FROM {ct} c "
        "LEFT JOIN {pt} p ON p.{pk} = c.{fk} WHERE {w}"
    ).format(
        w=where,
        cs=sql.Identifier(fk_shadow),
        ps=sql.Identifier(key_shadow),
        ct=child.ident,
        pt=f.ref_table.ident,
        pk=sql.Identifier(key_column),
        fk=sql.Identifier(fk_column),
    )
    for lo, hi in _walk(conn, child, batch_column):
        params = _range_params(batch_column, lo, hi)
        row = conn.execute(q, params).fetchone()
        assert row is not None
        c.rows += row[0]
        c.mismatched += row[1]
        if row[1] and len(c.samples) < SAMPLE:
            bad = conn.execute(
                sql.SQL(
                    "SELECT {b}, c.{fk}, c.{cs}::text, p.{ps}::text "
                    "FROM {ct} c LEFT JOIN {pt} p ON p.{pk} = c.{fk} "
                    "WHERE {w} AND c.{cs} IS DISTINCT FROM p.{ps} LIMIT 5"
                ).format(
                    b=b,
                    w=where,
                    fk=sql.Identifier(fk_column),
                    cs=sql.Identifier(fk_shadow),
                    ps=sql.Identifier(key_shadow),
                    ct=child.ident,
                    pt=f.ref_table.ident,
                    pk=sql.Identifier(key_column),
                ),
                params,
            ).fetchall()
            c.samples += [{batch_column: r[0], f.column: r[1], "shadow": r[2], "parent": r[3]} for r in bad]
    return c


def _derived_sample(batch: str, column: str, key: bool, r: tuple[Any, ...]) -> dict[str, Any]:
    """Shaped like the join checks' samples: a missing key shows its key only."""
    out: dict[str, Any] = {batch: r[0]}
    if column != batch:
        out[column] = r[1]
    if r[2] is None and key:
        return out
    return {**out, "shadow": r[2], "derived" if key else "parent": r[3]}


def check_derived(
    conn: psycopg.Connection,
    table: TableRef,
    column: str,
    shadow: str,
    source: tuple[TableRef, str],
    batch: str,
    key: bool = False,
) -> Check:
    """Derived mode: rows whose shadow is not derive(column), table by table with no join.

    Uniqueness of key UUIDs is not checked here: the unique index cutover builds proves it.
    """
    c = Check(str(table), shadow)
    b, sh, col = sql.Identifier(batch), sql.Identifier(shadow), sql.Identifier(column)
    wrong = derived_mismatch(sh, *source, col)
    derive = derive_fn(*source)
    q = sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE {w}), "
        "count(*) FILTER (WHERE {s} IS NULL AND {c} IS NOT NULL) FROM {t} c WHERE {r}"
    ).format(w=wrong, s=sh, c=col, t=table.ident, r=_range(batch))
    sample = sql.SQL(
        "SELECT {b}, {c}, {s}::text, {d}({c})::text FROM {t} c WHERE {r} AND {w} LIMIT 5"
    ).format(b=b, c=col, s=sh, d=derive, t=table.ident, r=_range(batch), w=wrong)
    for lo, hi in _walk(conn, table, batch):
        row = conn.execute(q, _range_params(batch, lo, hi)).fetchone()
        assert row is not None
        c.rows += row[0]
        missing = row[2] if key else 0  # as the join checks count: a NULL shadow FK is a mismatch
        c.missing += missing
        c.mismatched += row[1] - missing
        if row[1] and len(c.samples) < SAMPLE:
            bad = conn.execute(sample, _range_params(batch, lo, hi)).fetchall()
            c.samples += [_derived_sample(batch, column, key, r) for r in bad]
    return c


def run_verify_derived(conn: psycopg.Connection, plan: Plan) -> VerifyReport:
    """Table by table; a column whose invariant the server holds (phases/invariant.py) is not read."""
    enforced = invariant.read_enforced(conn, plan)
    checks: list[Check] = []
    for inv in invariant.invariants(plan):
        if (inv.table, inv.shadow) in enforced:
            checks.append(Check(str(inv.table), inv.shadow, enforced_by=inv.name))
            continue
        f = (
            None
            if inv.key
            else next(f for f in plan.foreign_keys if (f.table, f.column) == (inv.table, inv.column))
        )
        for table, batch in _walked(f) if f is not None else [(inv.table, inv.batch)]:
            checks.append(check_derived(conn, table, inv.column, inv.shadow, inv.source, batch, key=inv.key))
    return VerifyReport(checks)


def _walked(f: ForeignKeyConversion) -> list[tuple[TableRef, str]]:
    """The tables a foreign key's check walks: the child, or each leaf partition of a partitioned one."""
    if f.partitioned:
        return [(p.table, p.batch_column) for p in f.leaves()]
    return [(f.table, f.batch_column)]


def run_verify(
    conn: psycopg.Connection, plan: Plan, cut_over: bool = False, derived: bool = False, mid: str = ""
) -> VerifyReport:
    """Before cutover the shadows are the uuid side; after it, the retired integer side is checked.

    `derived`: the shadows are still all derived (derived mode, never cut over), checked by derive().
    """
    conn.execute("SET row_security = off")  # an error, never rows silently hidden by a policy
    planned, plan = plan, partitions.refresh(conn, plan)  # partitions created or attached since count
    problems = partitions.detached(conn, planned, plan, partitions.registered(conn, mid))
    if problems:
        raise StateError(problems[0])
    if derived and not cut_over:
        return run_verify_derived(conn, plan)
    checks: list[Check] = []
    for k in plan.keys:
        if not cut_over:
            checks.append(check_key(conn, k, k.shadow))
    for f in plan.foreign_keys:
        parent = plan.key_for(f.ref_table)
        assert parent is not None
        for table, walk in _walked(f):
            if cut_over:
                batch = renamed(plan, f.table, walk, "retired")
                checks.append(
                    check_fk(conn, plan, f, f.retired, parent.retired, f.column, parent.column, batch, table)
                )
            else:
                checks.append(
                    check_fk(conn, plan, f, f.shadow, parent.shadow, f.column, parent.column, walk, table)
                )
    return VerifyReport(checks)


@dataclass(frozen=True)
class TriggerGuard:
    """The tool's triggers as they were when a verify began (oid, xmin, tgenabled of each).

    Rows written while a trigger is disabled escape it; disabling (or dropping, or re-creating) a
    trigger changes its pg_trigger row. So a cutover reads this before its verify and compares under
    the swap's lock: catalog only, nothing that grows with the tables.
    """

    oids: tuple[int, ...]
    rows: tuple[ToolTrigger, ...]


REPAIR_HINT = "run `online-uuid verify --repair`, then `online-uuid cutover` again"


def read_guard(conn: psycopg.Connection, plan: Plan) -> TriggerGuard:
    """Snapshot the tool's triggers; a disabled one is refused at once (writes go past it now)."""
    tables = plan.tables() + [t for f in partitions.refresh(conn, plan).foreign_keys for t in f.fk_tables()]
    oids = tuple(dict.fromkeys(o for t in tables if (o := read_table_ref(conn, t)) is not None))
    rows = tuple(read_tool_triggers(conn, list(oids)))
    for t in rows:
        if t.enabled == "D":
            quoted = sql.Identifier(t.name).as_string(None)
            raise VerifyError(
                f"trigger {t.name} on {t.table} is disabled, so writes go past it; ALTER TABLE {t.table} "
                f"ENABLE ALWAYS TRIGGER {quoted}, then {REPAIR_HINT}"
            )
    return TriggerGuard(oids, rows)


def check_guard(conn: psycopg.Connection, guard: TriggerGuard) -> None:
    """Under the swap's lock: raise TriggersChangedError if any trigger changed since read_guard."""
    now = {t.oid: t for t in read_tool_triggers(conn, list(guard.oids))}
    for was in guard.rows:
        cur = now.get(was.oid)
        if cur is None or (cur.xmin, cur.enabled) != (was.xmin, was.enabled):
            raise TriggersChangedError(
                f"trigger {was.name} on {was.table} was disabled, dropped or altered since cutover's verify, "
                f"so rows written meanwhile were not checked; nothing was swapped: {REPAIR_HINT}"
            )
