"""Derived mode's invariant, shadow = derive(column), as CHECK constraints the server enforces.

The backfill adds them NOT VALID (every new row is checked at once) and validates them when it
finishes: the scan a verify would make, done online while nothing waits on it. From then until the
swap no write can break the invariant, so the cutover's verify reads pg_constraint instead of every
row. The swap drops them (rows made after it get generated UUIDs); a rollback drops them with the
shadow columns. The price: each row the application writes meanwhile costs one more derive().
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import structlog
from psycopg import errors as pgerrors

from .. import naming, state
from .. import statements as s
from ..catalog import read_table_ref, read_validated_constraints
from ..executor import DDL, ONLINE, Executor, Step
from ..model import Plan, TableRef
from ..settings import LockSettings
from ..statements import Query

log = structlog.get_logger("online_uuid")

STEP_PREFIX = "invariant:"


@dataclass(frozen=True)
class Invariant:
    """shadow IS NOT DISTINCT FROM derive(column) on one table, held by constraint `name`."""

    table: TableRef
    column: str
    shadow: str
    source: tuple[TableRef, str]  # the key whose derive functions give the shadow: its own or the parent's
    name: str
    batch: str  # the column (or heap) a verify of this table walks
    key: bool


def invariants(plan: Plan) -> list[Invariant]:
    """One per converted column of a derived plan, keys first (none on the lookup path)."""
    if not plan.derived:
        return []
    out = [
        Invariant(
            k.table,
            k.column,
            k.shadow,
            (k.table, k.column),
            naming.derived_check(k.table, k.column),
            k.column,
            key=True,
        )
        for k in plan.keys
    ]
    for f in plan.foreign_keys:
        parent = plan.key_for(f.ref_table)
        assert parent is not None
        name = naming.derived_check(f.table, f.column)
        source = (parent.table, parent.column)
        out.append(Invariant(f.table, f.column, f.shadow, source, name, f.batch_column, key=False))
    return out


def _steps(inv: Invariant) -> tuple[Step, Step]:
    at = f"{inv.table}.{inv.column}"
    add = s.build_derived_check(inv.table, inv.shadow, inv.column, inv.source, inv.name)
    drop = s.build_drop_constraint(inv.table, inv.name, if_exists=True)
    return (
        Step(f"{STEP_PREFIX}add:{at}", (drop, add), (inv.table,), DDL, f"CHECK {inv.name} NOT VALID"),
        Step(
            f"{STEP_PREFIX}valid:{at}",
            (s.build_validate(inv.table, inv.name),),
            (inv.table,),
            ONLINE,
            f"validate {inv.name}",
        ),
    )


def steps(plan: Plan) -> list[Step]:
    return [step for inv in invariants(plan) for step in _steps(inv)]


def enforce(conn: psycopg.Connection, mid: str, plan: Plan, lock: LockSettings) -> list[str]:
    """Add and validate every invariant the catalog does not show validated; returns the names of
    the constraints some row breaks.

    The catalog decides, not the recorded steps: a constraint dropped or left NOT VALID by an
    earlier run is added again and validated. A broken one stays NOT VALID (it still checks new
    rows): the cutover's verify then reads that table row by row and names the rows, and
    `verify --repair` runs this again.
    """
    held = read_enforced(conn, plan)
    ex = Executor(conn, mid, lock)
    broken: list[str] = []
    for inv in invariants(plan):
        if (inv.table, inv.shadow) in held:
            continue
        add, validate = _steps(inv)
        state.forget_step(conn, mid, add.id)
        state.forget_step(conn, mid, validate.id)
        try:
            ex.run(add)
            ex.run(validate)
        except pgerrors.CheckViolation as exc:
            broken.append(inv.name)
            log.warning(
                "a row breaks the derived invariant; verify will name it", constraint=inv.name, error=str(exc)
            )
            state.event(conn, mid, "invariant_broken", {"constraint": inv.name, "table": str(inv.table)})
    return broken


def read_enforced(conn: psycopg.Connection, plan: Plan) -> set[tuple[TableRef, str]]:
    """(table, shadow) of every invariant validated now: no row of that table can break it."""
    wanted = {(inv.table, inv.name): inv for inv in invariants(plan)}
    if not wanted:
        return set()
    oids = {t: oid for t in {t for t, _ in wanted} if (oid := read_table_ref(conn, t)) is not None}
    by_oid = {oid: t for t, oid in oids.items()}
    valid = read_validated_constraints(conn, list(by_oid), [name for _, name in wanted])
    return {
        (by_oid[oid], wanted[(by_oid[oid], name)].shadow)
        for oid, name in valid
        if (by_oid[oid], name) in wanted
    }


def drop_statements(plan: Plan) -> list[Query]:
    """For the swap: catalog only, under the lock it already holds."""
    return [s.build_drop_constraint(inv.table, inv.name, if_exists=True) for inv in invariants(plan)]
