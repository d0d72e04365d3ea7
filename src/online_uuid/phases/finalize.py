"""Finalize: drop the retired integer columns, their sequences and reverse triggers; close the migration."""

from __future__ import annotations

import psycopg
import structlog

from .. import naming, state
from .. import statements as s
from ..catalog import read_table_ref
from ..errors import OnlineUuidError, StateError
from ..executor import ONLINE, Executor, Step
from ..model import Phase, Plan, TableRef
from ..settings import LockSettings

log = structlog.get_logger("online_uuid")


def matview_steps(plan: Plan) -> list[Step]:
    """Each materialized view built anew on the uuid columns (online, under a temporary name), then
    swapped in by one short transaction: no reader ever sees it unpopulated."""
    steps: list[Step] = []
    for mv in plan.matviews:
        temp = naming.matview_rebuild(mv.view.name)
        build = (
            s.build_drop_matview(TableRef(mv.view.schema, temp), if_exists=True),  # an interrupted build
            s.build_create_matview(mv, temp),
            *(s.build_matview_index(mv, ix, temp) for ix in mv.indexes),
        )
        steps += [
            Step(f"finalize:matview:build:{mv.view}", build, kind=ONLINE, description=f"rebuild {mv.view}"),
            Step(
                f"finalize:matview:swap:{mv.view}",
                tuple(s.build_matview_swap(mv)),
                (mv.view,),
                description=f"swap in the rebuilt {mv.view}",
            ),
        ]
    return steps


def _dropped_by_user(conn: psycopg.Connection, mid: str, plan: Plan, step: Step) -> bool:
    """A materialized view the user dropped since the plan (e.g. one that can't be rebuilt): skip it."""
    mv = next(m for m in plan.matviews if step.id.endswith(f":{m.view}"))
    if state.step_done(conn, mid, step.id) or read_table_ref(conn, mv.view) is not None:
        return False
    swapped = f"finalize:matview:swap:{mv.view}"
    if state.step_done(conn, mid, swapped):
        return False
    with conn.transaction():
        state.mark_step(conn, mid, step.id)
        state.event(conn, mid, "matview_gone", {"view": str(mv.view), "step": step.id})
    log.info("materialized view dropped since the plan; not rebuilt", view=str(mv.view))
    return True


def finalize_steps(plan: Plan) -> list[Step]:
    """Materialized views first (they read the retired columns), then the children's retired FK
    columns, then the keys' (their sequences go with them)."""
    steps = matview_steps(plan)
    steps += [
        Step(
            f"finalize:fk:{f.key}",
            (*s.build_drop_fk_triggers(f), s.build_drop_column(f.table, f.retired)),
            (f.table,),
            description=f"drop {f.table}.{f.retired}",
        )
        for f in plan.foreign_keys
    ]
    steps += [
        Step(
            f"finalize:key:{k.key}",
            (
                s.build_drop_column(k.table, k.retired),
                *([s.build_drop_retired_sequence(k)] if k.app_assigned else []),
            ),
            (k.table,),
            description=f"drop {k.table}.{k.retired}",
        )
        for k in plan.keys
    ]
    if plan.derived:
        steps.append(drop_derive_step(plan, "finalize:derive"))
    return steps


def drop_derive_step(plan: Plan, step_id: str) -> Step:
    """The derive functions (and with them the secret in their bodies) once no trigger uses them."""
    stmts = tuple(stmt for k in plan.keys for stmt in s.build_drop_derive_function(k))
    return Step(step_id, stmts, description="drop derive functions")


def run_finalize(conn: psycopg.Connection, mid: str, lock: LockSettings) -> None:
    m = state.load(conn, mid)
    if m.phase == Phase.CUT_OVER:
        state.move(conn, mid, Phase.CUT_OVER, Phase.FINALIZING)
    elif m.phase != Phase.FINALIZING:
        raise StateError(
            f"migration {mid} is {m.phase}; finalize only follows a cutover (`online-uuid cutover` first)"
        )
    executor = Executor(conn, mid, lock)
    for step in matview_steps(m.plan):
        if _dropped_by_user(conn, mid, m.plan, step):
            continue
        try:
            executor.run(step)
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise OnlineUuidError(
                f"{step.description} on the uuid columns failed: {first}; nothing was dropped and it still "
                "reads the retired integer columns: change or drop it, then run `online-uuid finalize` again"
            ) from exc
    executor.run_all(finalize_steps(m.plan))
    if m.plan.derived:
        state.forget_secret(conn, mid)
    state.move(conn, mid, Phase.FINALIZING, Phase.FINALIZED)
    log.info("finalized", migration=mid)
