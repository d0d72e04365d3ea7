"""verify --repair: the columns verify found wrong are walked again by the backfill's own jobs.

Each job's UPDATE touches only rows that disagree (a NULL key UUID, a shadow FK unlike its parent's),
so a repair fixes exactly those, in keyset batches of their own short transactions, throttled,
paused and resumed like the backfill, with its cursor saved in every batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import db, partitions, state
from ..errors import StateError
from ..model import BackfillJob, Phase, Plan, backfill_jobs
from ..naming import application_name
from ..settings import BackfillSettings
from . import batch
from .run import run_backfill


def jobs_to_redo(plan: Plan, failing: set[tuple[str, str]]) -> list[BackfillJob]:
    """Jobs of the failing (table, shadow column) pairs, plus the FK jobs under a redone key."""
    jobs = backfill_jobs(plan)
    redo = [j for j in jobs if (str(j.table), j.shadow) in failing]
    keys = {j.table for j in redo if j.kind == "key"}
    redo += [j for j in jobs if j.kind == "fk" and j.ref_table in keys and j not in redo]
    return redo


def run_repair(
    dsn: str,
    mid: str,
    failing: set[tuple[str, str]],
    settings: BackfillSettings,
    *,
    metrics: Any = None,
    progress: Any = None,
) -> dict[str, int]:
    """Rows fixed per `table.shadow_column`; the caller holds the migration's advisory lock."""
    with db.connect(dsn, application_name(mid, "repair")) as conn:
        m = state.load(conn, mid)
        if m.phase not in (Phase.BACKFILLED, Phase.BACKFILLING):
            raise StateError(
                f"migration {mid} is {m.phase}; verify --repair runs after the backfill and before "
                "cutover (after a cutover: `online-uuid rollback` first)"
            )
        jobs = jobs_to_redo(partitions.refresh(conn, m.plan), failing)
        if not jobs:
            return {}
        with conn.transaction():
            for job in jobs:
                batch.reset(conn, mid, job.job_id)
            if m.phase is Phase.BACKFILLED:
                state.move(conn, mid, Phase.BACKFILLED, Phase.BACKFILLING)
            state.event(conn, mid, "repair", {"jobs": [j.job_id for j in jobs]})
    quiet = dataclasses.replace(settings, vacuum_every_pct=0)  # a few rows: no VACUUM every 5%
    result = run_backfill(dsn, mid, quiet, metrics=metrics, progress=progress)
    return {f"{j.table}.{j.shadow}": result.rows.get(j.job_id, 0) for j in jobs}
