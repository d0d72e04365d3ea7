"""Rollback: before cutover, remove everything start made; after cutover, swap back losslessly."""

from __future__ import annotations

import psycopg
import structlog

from .. import naming, state
from .. import statements as s
from ..catalog import read_function_in_use
from ..errors import StateError
from ..executor import Executor, Step
from ..model import Phase, Plan
from ..settings import CutoverSettings, LockSettings
from . import cutover
from .finalize import drop_derive_step

log = structlog.get_logger("online_uuid")

BEFORE_CUTOVER = {Phase.EXPANDING, Phase.EXPANDED, Phase.BACKFILLING, Phase.BACKFILLED, Phase.PREPARING}


def teardown_steps(plan: Plan) -> list[Step]:
    """Children first (their FKs point at the parents' shadow keys), then keys, then helpers."""
    steps: list[Step] = []
    for f in plan.foreign_keys:
        # A partitioned child's shadow FKs (on the root and its partitions) go with the column.
        prepared = (
            []
            if f.partitioned
            else [s.build_drop_constraint(f.table, naming.shadow_fk(f.name), if_exists=True)]
        )
        stmts = [
            *prepared,
            *s.build_drop_fk_triggers(f),
            s.build_drop_constraint(f.table, naming.not_null_check(f.table, f.column), if_exists=True),
            s.build_drop_column(f.table, f.shadow),
        ]
        steps.append(
            Step(f"rollback:fk:{f.key}", tuple(stmts), (f.table,), description=f"drop shadow of {f.name}")
        )
    for k in plan.keys:
        stmts = [
            *s.build_drop_key_triggers(k),
            s.build_drop_constraint(k.table, naming.not_null_check(k.table, k.column), if_exists=True),
            s.build_drop_column(k.table, k.shadow),
            *([s.build_drop_retired_sequence(k)] if k.app_assigned else []),
        ]
        steps.append(
            Step(f"rollback:key:{k.key}", tuple(stmts), (k.table,), description=f"drop shadow of {k.table}")
        )
    if plan.derived:
        steps.append(drop_derive_step(plan, "rollback:derive"))
    return steps


def run_rollback(conn: psycopg.Connection, mid: str, lock: LockSettings, cut: CutoverSettings) -> Phase:
    """Undo the migration as far as its phase allows; returns the phase it ends in."""
    m = state.load(conn, mid)
    if m.phase in (Phase.CUT_OVER, Phase.REVERTING):
        cutover.run_revert(conn, mid, m.plan, cut)
        return Phase.BACKFILLED
    if m.phase in BEFORE_CUTOVER:
        state.move(conn, mid, m.phase, Phase.ROLLING_BACK)
    elif m.phase != Phase.ROLLING_BACK:
        raise StateError(f"migration {mid} is {m.phase}; there is nothing to roll back")
    Executor(conn, mid, lock).run_all(teardown_steps(m.plan))
    if s.uses_v7_function(m.plan) and not read_function_in_use(conn, "online_uuid.uuid_v7()"):
        conn.execute(s.build_drop_uuid_v7_function())  # else another migration's default
    state.move(conn, mid, Phase.ROLLING_BACK, Phase.ROLLED_BACK)
    state.delete(conn, mid)
    log.info("rolled back", migration=mid)
    return Phase.ROLLED_BACK
