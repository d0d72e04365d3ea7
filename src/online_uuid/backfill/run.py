"""Fills every shadow column in small keyset batches: keys, then a barrier, then foreign keys."""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import psycopg
import structlog

from .. import db, partitions, state
from ..errors import BackfillError, ConcurrentRunError, OnlineUuidError, StateError
from ..metrics import Metrics, table_label
from ..model import BackfillJob, Phase, TableRef, backfill_jobs
from ..naming import application_name
from ..phases import invariant
from ..settings import BackfillSettings, LockSettings
from . import barrier, batch, role
from .context import ERROR_KINDS, RunContext, Session
from .lock import LockHolder
from .progress import NullProgress, Progress
from .throttle import REASONS
from .worker import Worker

log = structlog.get_logger("online_uuid.backfill")

LOCK_WAIT_S = 15.0  # a killed run's session may linger a moment before the server notices
RESUME_HINT = "fix the cause and run `online-uuid backfill` to resume where it stopped"


@dataclass
class BackfillResult:
    """What one run did. `rows` counts rows this run changed, per job id."""

    migration_id: str
    phase: str
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    batches: int = 0
    retries: int = 0
    throttled_s: dict[str, float] = field(default_factory=dict)
    stopped: bool = False

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def _init_metrics(metrics: Metrics) -> None:
    """Every series exists from the start (dashboards and alerts need no `absent()` dance)."""
    for reason in REASONS:
        metrics.throttled.labels(reason=reason).set(0)
    for kind in ERROR_KINDS:
        metrics.errors.labels(kind=kind)
    metrics.paused.set(0)


def _enter(conn: psycopg.Connection, mid: str) -> Phase:
    """Move EXPANDED -> BACKFILLING (or resume BACKFILLING); any other phase is refused."""
    phase = state.load(conn, mid).phase
    if phase is Phase.BACKFILLED:
        return phase
    if phase is Phase.EXPANDED:
        with conn.transaction():
            state.move(conn, mid, Phase.EXPANDED, Phase.BACKFILLING)
    elif phase is Phase.BACKFILLING:
        state.event(conn, mid, "backfill_resumed", {})
    else:
        raise StateError(
            f"migration {mid} is in phase {phase}; the backfill runs after `online-uuid start` "
            "(phase expanded) and before cutover"
        )
    state.update(conn, mid, last_error=None)
    return Phase.BACKFILLING


def _run_stage(ctx: RunContext, jobs: list[BackfillJob]) -> bool:
    """Run independent jobs, `workers` at a time; True when all of them finished."""
    workers = [Worker(ctx, job) for job in jobs]
    n = min(ctx.settings.workers, len(workers))
    if n <= 1:
        for w in workers:
            if ctx.halted():
                break
            w.run()
        return all(w.finished for w in workers)
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="backfill") as pool:
        futures = [pool.submit(_guarded, ctx, w) for w in workers]
        for f in futures:
            f.result()
    return all(w.finished for w in workers)


def _guarded(ctx: RunContext, w: Worker) -> None:
    if ctx.halted():
        return
    try:
        w.run()
    except BaseException:
        ctx.abort.set()
        raise


def _register(ctx: RunContext, session: Session, jobs: list[BackfillJob]) -> None:
    for job in jobs:
        session.call(lambda c: batch.register(c, ctx.mid, job))  # noqa: B023 - called at once
    for row in session.call(lambda c: batch.load_all(c, ctx.mid)):
        left = 0 if row["finished_at"] else row["rows_estimate"]
        ctx.set_remaining(row["job_id"], left)
        table = table_label(TableRef(row["schema_name"], row["table_name"]))
        ctx.metrics.rows_remaining.labels(table=table, column=row["column_name"]).set(left)
        ctx.metrics.rows_backfilled.labels(table=table, column=row["column_name"])  # at 0 from the start


def _stages(ctx: RunContext, session: Session) -> bool:
    """Key jobs, the barrier, FK jobs; True when everything is filled, False when stopped.

    Derived mode reads no parent, so there is no barrier and every job runs in one stage.
    """
    jobs = backfill_jobs(ctx.plan)
    _register(ctx, session, jobs)
    if ctx.plan.derived:
        return _run_stage(ctx, jobs)
    keys = [j for j in jobs if j.kind == "key"]
    fks = [j for j in jobs if j.kind != "key"]
    if not _run_stage(ctx, keys):
        return False
    if fks and not barrier.wait(ctx, session):
        return False
    return not fks or _run_stage(ctx, fks)


def _record_error(dsn: str, mid: str, message: str) -> None:
    try:
        with db.connect(dsn, application_name(mid, "backfill")) as conn:
            state.update(conn, mid, last_error=message)
            state.event(conn, mid, "backfill_failed", {"error": message})
    except Exception as exc:
        log.warning("could not record the error in the state schema", error=str(exc))


def _finish(ctx: RunContext, session: Session) -> None:
    if ctx.plan.derived:  # the invariant the cutover's verify then reads from the catalog
        ctx.progress.note("validating the derived invariant (one read of each table)", migration=ctx.mid)
        session.call(lambda c: invariant.enforce(c, ctx.mid, ctx.plan, LockSettings()), deadline_s=None)

    def move(conn: psycopg.Connection) -> None:
        with conn.transaction():
            state.move(conn, ctx.mid, Phase.BACKFILLING, Phase.BACKFILLED)

    session.call(move)
    session.call(lambda c: ctx.board.note(c, barrier_waiting_on=[]))
    ctx.metrics.set_phase(Phase.BACKFILLED.value)
    ctx.metrics.eta.set(0)
    ctx.progress.note("backfill complete", migration=ctx.mid)


def _execute(ctx: RunContext) -> bool:
    session = Session(ctx, "control")
    try:
        done = _stages(ctx, session)
        if done:
            _finish(ctx, session)
        return done
    finally:
        session.close()


def run_backfill(
    dsn: str,
    migration_id: str,
    settings: BackfillSettings,
    *,
    metrics: Metrics | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    take_lock: bool = False,
    lock_conn: psycopg.Connection | None = None,
) -> BackfillResult:
    """Fill every shadow column of the migration; resumable at any point (also after kill -9).

    The caller normally holds the migration's advisory lock on `lock_conn` (the API does);
    `take_lock=True` takes it here instead, waiting a few seconds for the session of a killed run
    to go away. Either way, a lock lost with its session (a server restart) is taken again before
    the run writes anything more.
    """
    t0 = time.monotonic()
    metrics = metrics or Metrics(migration_id)
    _init_metrics(metrics)
    with db.connect(dsn, application_name(migration_id, "backfill")) as conn:
        if state.load(conn, migration_id).phase is Phase.BACKFILLED:
            metrics.set_phase(Phase.BACKFILLED.value)
            return BackfillResult(migration_id, Phase.BACKFILLED.value)
        with state.migration_lock(conn, migration_id, wait_s=LOCK_WAIT_S) if take_lock else nullcontext():
            m = state.load(conn, migration_id)
            replica = role.check(conn, m.plan, bool(m.options.get("allow_trigger_side_effects")))
            phase = _enter(conn, migration_id)
            metrics.set_phase(phase.value)
            if phase is Phase.BACKFILLED:
                return BackfillResult(migration_id, phase.value)
            plan = partitions.refresh(conn, state.load(conn, migration_id).plan)  # + partitions since
            metrics.set_info(plan.uuid_source)
            if plan.derived and state.was_cut_over(conn, migration_id):
                # verify --repair after a rollback that swapped back: rows made while cut over
                # have generated UUIDs, so shadows are looked up like the forward triggers do.
                plan = dataclasses.replace(plan, uuid_source="random")
            ctx = RunContext(
                dsn,
                migration_id,
                settings,
                plan,
                metrics,
                progress or NullProgress(),
                stop or threading.Event(),
            )
            ctx.replica = replica
            holder = conn if take_lock else lock_conn
            if holder is not None:
                ctx.lock = LockHolder(lambda: ctx.connect(role="control"), migration_id, holder)
            done = _guard_errors(ctx)
    t = ctx.totals
    return BackfillResult(
        migration_id,
        (Phase.BACKFILLED if done else Phase.BACKFILLING).value,
        dict(t.rows),
        time.monotonic() - t0,
        t.batches,
        t.retries,
        dict(t.throttled_s),
        stopped=not done,
    )


def _guard_errors(ctx: RunContext) -> bool:
    """Run, turning any failure into a recorded, resumable BackfillError."""
    try:
        return _execute(ctx)
    except ConcurrentRunError:
        raise  # the lock is another run's now: write nothing, not even the error
    except OnlineUuidError as exc:
        _record_error(ctx.dsn, ctx.mid, str(exc))
        raise
    except Exception as exc:
        kind = db.error_kind(exc)
        ctx.metrics.errors.labels(kind=kind).inc()
        message = f"backfill of migration {ctx.mid} stopped: {db.first_line(exc)}; {RESUME_HINT}"
        _record_error(ctx.dsn, ctx.mid, message)
        raise BackfillError(message) from exc
    finally:
        ctx.close()
