"""The Python API: every command of the CLI as a function, usable from deploy scripts or Alembic.

Each function takes a DSN (or "" for libpq's PG* variables), opens its own sessions, and, except
`plan`, `status` and `verify`, works under the migration's advisory lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg

from . import sessions, state
from .db import connect
from .errors import StateError, VerifyError
from .executor import render_steps
from .metrics import CUTOVER_OUTCOMES, Metrics
from .model import Phase, Plan
from .naming import application_name
from .phases import cutover as cutover_phase
from .phases import finalize as finalize_phase
from .phases import invariant
from .phases import rollback as rollback_phase
from .phases import start as start_phase
from .phases.verify import VerifyReport, read_guard, run_verify
from .plan import build_plan
from .settings import BackfillSettings, CutoverSettings, LockSettings, StartSettings

if TYPE_CHECKING:
    from .backfill import BackfillResult

__all__ = [
    "backfill",
    "cutover",
    "cutover_check",
    "cutover_sessions_at_risk",
    "finalize",
    "pause",
    "plan",
    "plan_sql",
    "plan_subscriber_sql",
    "resume",
    "rollback",
    "start",
    "status",
    "throttle",
    "verify",
]


@contextmanager
def _session(
    dsn: str, migration: str | None, role: str, lock: bool = True, latest_ok: bool = False
) -> Iterator[tuple[psycopg.Connection, str]]:
    """A control connection with the migration resolved and (optionally) its advisory lock held."""
    conn = connect(dsn, application_name(migration or "-", role))
    try:
        mid = state.resolve(conn, migration, latest_ok=latest_ok)
        if mid != migration:  # opened as online-uuid/-/<role>: name the migration for DBAs
            conn.execute("SELECT set_config('application_name', %s, false)", (application_name(mid, role),))
        if not lock:
            yield conn, mid
            return
        with state.migration_lock(conn, mid):
            yield conn, mid
    finally:
        conn.close()


def _check_throttle_query(conn: psycopg.Connection, query: str | None) -> None:
    """--throttle-query must be exactly one statement returning a value (exit 2 otherwise)."""
    if query:
        from .backfill.signals import check_throttle_query

        check_throttle_query(conn, query)


def plan(
    dsn: str,
    tables: Sequence[str],
    *,
    uuid_version: str = "v4",
    cascade_deletes: bool = False,
    key_from: Sequence[str] = (),
    uuid_source: str | None = None,
) -> Plan:
    """Discover what converting `tables` touches; raises PlanError (exit 2) on anything unsafe."""
    with connect(dsn, "online-uuid/plan") as conn:
        return build_plan(
            conn,
            tables,
            uuid_version=uuid_version,
            cascade_deletes=cascade_deletes,
            key_from=key_from,
            uuid_source=uuid_source,
        )


def plan_subscriber_sql(dsn: str, p: Plan) -> str:
    """What each subscriber of a publication carrying these tables runs before `start`."""
    from .replication import subscriber_script

    with connect(dsn, "online-uuid/plan") as conn:
        return subscriber_script(conn, p)


def plan_sql(dsn: str, p: Plan) -> str:
    """Every statement start, cutover and finalize would run, in order; nothing is executed."""
    with connect(dsn, "online-uuid/plan") as conn:
        parts = [
            render_steps(conn, start_phase.start_steps(p), "start: expand (shadow columns, triggers)"),
            "-- backfill: batched UPDATEs in keyset order, cursor saved with each batch (not shown)\n",
            *(
                [render_steps(conn, invariant.steps(p), "backfill, when it finishes: the derived invariant")]
                if p.derived
                else []
            ),
            render_steps(
                conn, cutover_phase.prepare_steps(p, cutover_phase.FORWARD), "cutover: online preparation"
            ),
            _swap_sql(conn, p),
            render_steps(conn, cutover_phase.post_steps(p, cutover_phase.FORWARD), "cutover: after the swap"),
            render_steps(conn, finalize_phase.finalize_steps(p), "finalize"),
        ]
    return "\n".join(parts)


def _swap_sql(conn: psycopg.Connection, p: Plan) -> str:
    """The swap transaction as cutover sends it with its default settings (views as they are now)."""
    sent = [
        *cutover_phase.swap_prologue(p, LockSettings()),
        *cutover_phase.swap_body(conn, p, cutover_phase.FORWARD),
    ]
    return (
        "-- cutover: the swap, one transaction (its lock_timeout and statement_timeout follow\n"
        "-- --lock-timeout and --statement-timeout; the migration's phase moves in it too)\nBEGIN;\n"
        + "\n".join(st.as_string(conn) + ";" for st in sent)
        + "\nCOMMIT;\n"
    )


def start(
    dsn: str,
    tables: Sequence[str],
    *,
    migration: str | None = None,
    settings: StartSettings | None = None,
    lock: LockSettings | None = None,
    backfill_settings: BackfillSettings | None = None,
    metrics: Metrics | None = None,
    progress: Any = None,
) -> str:
    """Expand (shadow columns + triggers), then backfill unless settings.backfill is False.

    Resumes an unfinished migration of the same tables, so rerunning after a crash is safe.
    """
    settings = settings or StartSettings()
    lock = lock or LockSettings()
    conn = connect(dsn, application_name(migration or "-", "start"))
    try:
        if settings.backfill and backfill_settings is not None:
            _check_throttle_query(conn, backfill_settings.throttle_query)
        mid, p, _resumed = start_phase.prepare_migration(conn, tables, migration, settings)
        with state.migration_lock(conn, mid):
            if metrics:
                metrics.set_info(p.uuid_source)
                metrics.set_phase(Phase.EXPANDING)
            expanding = state.load(conn, mid).phase == Phase.EXPANDING
            start_phase.run_expand(conn, mid, p, lock)
            if expanding:  # new columns: prepared `SELECT *` of these sessions would fail from now on
                sessions.reset(conn, settings.reset_sessions)
            if metrics:
                metrics.set_phase(state.load(conn, mid).phase)
            if settings.backfill:
                _run_backfill(dsn, mid, backfill_settings or BackfillSettings(), metrics, progress, conn)
    finally:
        conn.close()
    return mid


def _run_backfill(
    dsn: str,
    mid: str,
    settings: BackfillSettings,
    metrics: Metrics | None,
    progress: Any,
    lock_conn: psycopg.Connection,
) -> BackfillResult:
    from .backfill import run_backfill

    return run_backfill(dsn, mid, settings, metrics=metrics, progress=progress, lock_conn=lock_conn)


def backfill(
    dsn: str,
    migration: str | None = None,
    *,
    settings: BackfillSettings | None = None,
    metrics: Metrics | None = None,
    progress: Any = None,
) -> BackfillResult:
    """Run or resume the backfill until every shadow column is filled (or paused, or stopped)."""
    settings = settings or BackfillSettings()
    with _session(dsn, migration, "control") as (conn, mid):
        _check_throttle_query(conn, settings.throttle_query)
        return _run_backfill(dsn, mid, settings, metrics, progress, conn)


def verify(
    dsn: str,
    migration: str | None = None,
    *,
    repair: bool = False,
    settings: BackfillSettings | None = None,
    metrics: Metrics | None = None,
    progress: Any = None,
) -> VerifyReport:
    """Check the shadow data online; the report's `ok` is True only when everything holds.

    `repair=True` (before cutover) then walks the failing columns again with the backfill's jobs,
    fixing exactly the rows that disagree, and checks again; `report.repaired` says how many.
    """
    if not repair:
        with _session(dsn, migration, "verify", lock=False) as (conn, mid):
            m = state.load(conn, mid)
            cut_over = m.phase in (Phase.CUT_OVER, Phase.REVERTING)
            return run_verify(conn, m.plan, cut_over=cut_over, derived=_derived(conn, m), mid=mid)
    from .backfill.repair import run_repair

    with _session(dsn, migration, "verify") as (conn, mid):
        m = state.load(conn, mid)
        if m.phase not in (Phase.BACKFILLED, Phase.BACKFILLING):
            raise StateError(
                f"migration {mid} is {m.phase}; verify --repair runs after the backfill and before "
                "cutover (after a cutover: `online-uuid rollback` first)"
            )
        report = run_verify(conn, m.plan, derived=_derived(conn, m), mid=mid)
        fixed = {}
        if report.failing():
            fixed = run_repair(
                dsn, mid, report.failing(), settings or BackfillSettings(), metrics=metrics, progress=progress
            )
            report = run_verify(conn, m.plan, derived=_derived(conn, m), mid=mid)
        report.repaired = fixed
        return report


def _derived(conn: psycopg.Connection, m: state.Migration) -> bool:
    """Every shadow is still derive(column): derived mode, never cut over.

    After a rollback that swapped back, rows made while cut over carry generated UUIDs, so the
    forward triggers are the lookup ones and verify checks by join.
    """
    return m.plan.derived and not state.was_cut_over(conn, m.id)


def cutover_check(
    dsn: str, migration: str | None = None, settings: CutoverSettings | None = None
) -> list[str]:
    """What would block a cutover now; takes no lock."""
    with _session(dsn, migration, "cutover", lock=False) as (conn, mid):
        return cutover_phase.check(conn, mid, state.load(conn, mid).plan, settings or CutoverSettings())


def cutover_sessions_at_risk(dsn: str, migration: str | None = None) -> list[dict[str, Any]]:
    """Sessions whose prepared statements on the converted tables would fail after the swap."""
    with _session(dsn, migration, "cutover", lock=False) as (conn, mid):
        return sessions.at_risk(conn, state.load(conn, mid).plan)


def cutover(
    dsn: str,
    migration: str | None = None,
    *,
    settings: CutoverSettings | None = None,
    metrics: Metrics | None = None,
) -> cutover_phase.SwapResult:
    """Verify, prepare online, then swap keys in one short transaction."""
    settings = settings or CutoverSettings()
    with _session(dsn, migration, "cutover") as (conn, mid):
        m = state.load(conn, mid)
        guard = None
        if m.phase in (Phase.BACKFILLED, Phase.PREPARING):
            guard = read_guard(conn, m.plan)  # before the verify: compared again under the swap's lock
            report = run_verify(conn, m.plan, derived=_derived(conn, m), mid=mid)
            if not report.ok:
                raise VerifyError(
                    f"verify failed, cutover refused: {report.first_problem()}", report.to_json()
                )
        if metrics:
            metrics.set_info(m.plan.uuid_source)
            for outcome in CUTOVER_OUTCOMES:
                metrics.cutover_attempts.labels(outcome=outcome)  # every series exists at 0
        result = cutover_phase.run_cutover(conn, mid, m.plan, settings, metrics, guard=guard)
        if metrics:
            metrics.set_phase(Phase.CUT_OVER)
        return result


def rollback(
    dsn: str,
    migration: str | None = None,
    *,
    lock: LockSettings | None = None,
    settings: CutoverSettings | None = None,
) -> Phase:
    """Before cutover: remove everything start made. After cutover: swap back to the integer keys."""
    lock = lock or LockSettings()
    settings = settings or CutoverSettings(lock=lock)
    with _session(dsn, migration, "rollback") as (conn, mid):
        return rollback_phase.run_rollback(conn, mid, lock, settings)


def finalize(dsn: str, migration: str | None = None, *, lock: LockSettings | None = None) -> None:
    """Drop the retired integer columns and every helper object; the state keeps the history."""
    with _session(dsn, migration, "finalize") as (conn, mid):
        finalize_phase.run_finalize(conn, mid, lock or LockSettings())


def status(dsn: str, migration: str | None = None) -> dict[str, Any]:
    with _session(dsn, migration, "status", lock=False, latest_ok=True) as (conn, mid):
        from .status import status

        return status(conn, mid)


def pause(dsn: str, migration: str | None = None) -> None:
    with _session(dsn, migration, "control", lock=False) as (conn, mid):
        from .backfill import control

        control.pause(conn, mid)


def resume(dsn: str, migration: str | None = None) -> None:
    with _session(dsn, migration, "control", lock=False) as (conn, mid):
        from .backfill import control

        control.resume(conn, mid)


def throttle(dsn: str, migration: str | None = None, **limits: Any) -> None:
    with _session(dsn, migration, "control", lock=False) as (conn, mid):
        from .backfill import control

        _check_throttle_query(conn, limits.get("throttle_query"))
        control.set_throttle(conn, mid, **limits)
