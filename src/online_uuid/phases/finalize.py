"""Finalize: drop the retired integer columns, their sequences and reverse triggers; close the migration."""

from __future__ import annotations

import psycopg
import structlog

from .. import state
from .. import statements as s
from ..errors import StateError
from ..executor import Executor, Step
from ..model import Phase, Plan
from ..settings import LockSettings

log = structlog.get_logger("online_uuid")


def finalize_steps(plan: Plan) -> list[Step]:
    """Children's retired FK columns first, then the keys' (their sequences go with them)."""
    steps = [
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
            (s.build_drop_column(k.table, k.retired),),
            (k.table,),
            description=f"drop {k.table}.{k.retired}",
        )
        for k in plan.keys
    ]
    return steps


def run_finalize(conn: psycopg.Connection, mid: str, lock: LockSettings) -> None:
    m = state.load(conn, mid)
    if m.phase == Phase.CUT_OVER:
        state.move(conn, mid, Phase.CUT_OVER, Phase.FINALIZING)
    elif m.phase != Phase.FINALIZING:
        raise StateError(
            f"migration {mid} is {m.phase}; finalize only follows a cutover (`online-uuid cutover` first)"
        )
    Executor(conn, mid, lock).run_all(finalize_steps(m.plan))
    state.move(conn, mid, Phase.FINALIZING, Phase.FINALIZED)
    log.info("finalized", migration=mid)
