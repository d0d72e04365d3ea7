"""The consistency barrier: FK backfill starts only once no transaction predates the key UUIDs.

A child row written by a transaction that read its parent before the parent's UUID was committed
holds a NULL (stale) shadow FK; such a transaction may commit after the FK pass went by. So after
the last key batch we note `barrier_at` with the virtualxid of every transaction open then (read
from pg_locks, which every role may read: a tool without pg_read_all_stats sees other roles' too),
and wait, as CREATE INDEX CONCURRENTLY does, until each of them has ended.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg import sql

from .. import state
from ..errors import BackfillError
from ..naming import STATE_SCHEMA
from . import batch, control
from .context import RunContext, Session
from .signals import read_barrier_waiters, read_open_transactions
from .throttle import apply_overrides

log = structlog.get_logger("online_uuid.backfill")

REPORT_EVERY_S = 5.0
POLL_S = 0.5


def _set_barrier(conn: psycopg.Connection, mid: str) -> tuple[datetime, list[str]]:
    with conn.transaction():
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        vxids = read_open_transactions(conn)
        state.update(conn, mid, barrier_at=row[0])
        state.event(conn, mid, "barrier", {"at": row[0].isoformat(), "vxids": vxids})
    return row[0], vxids


def _stored_vxids(conn: psycopg.Connection, mid: str) -> list[str] | None:
    """The transactions noted with the barrier; None if it was set without them (then: all open now)."""
    row = conn.execute(
        sql.SQL(
            "SELECT detail -> 'vxids' FROM {}.events WHERE migration_id = %s AND kind = 'barrier' "
            "ORDER BY id DESC LIMIT 1"
        ).format(sql.Identifier(STATE_SCHEMA)),
        (mid,),
    ).fetchone()
    return [str(v) for v in row[0]] if row and isinstance(row[0], list) else None


def _barrier_time(session: Session, mid: str) -> tuple[datetime, list[str] | None, bool]:
    """The barrier to wait for, the transactions open at it, and whether an earlier run passed it."""
    rows = session.call(lambda c: batch.load_all(c, mid))
    latest = max((r["finished_at"] for r in rows if r["kind"] == "key"), default=None)
    fk_started = any(r["kind"] == "fk" and r["started_at"] for r in rows)
    at = session.call(lambda c: state.load(c, mid)).barrier_at
    if at is None or (latest is not None and latest > at):
        at, vxids = session.call(lambda c: _set_barrier(c, mid))
        return at, vxids, False
    return at, session.call(lambda c: _stored_vxids(c, mid)), fk_started


def _timeout_s(ctx: RunContext, session: Session) -> float:
    rt = session.call(lambda c: control.read_runtime(c, ctx.mid))
    try:
        return apply_overrides(ctx.settings, rt.throttle).barrier_timeout_s
    except Exception:
        return ctx.settings.barrier_timeout_s


def _describe(waiters: list[dict[str, Any]]) -> str:
    shown = ", ".join(
        f"pid {w['pid']} ({w['user'] or '-'}, {w['application_name'] or 'no application_name'}, "
        f"{w['state']}, {w['age_s']:.0f}s)"
        for w in waiters[:5]
    )
    more = f" and {len(waiters) - 5} more" if len(waiters) > 5 else ""
    return shown + more


def wait(ctx: RunContext, session: Session) -> bool:
    """Block until the barrier is passed: True; False if the run was stopped meanwhile."""
    at, vxids, passed = _barrier_time(session, ctx.mid)
    if passed:
        return True
    if vxids is None:  # noted by an earlier version: those still open are among the ones open now
        vxids = session.call(read_open_transactions)
    timeout = _timeout_s(ctx, session)
    deadline = time.monotonic() + timeout
    reported = float("-inf")
    while True:
        waiters = session.call(lambda c: read_barrier_waiters(c, at, vxids))
        if not waiters:
            session.call(lambda c: ctx.board.note(c, barrier_waiting_on=[]))
            session.call(lambda c: state.event(c, ctx.mid, "barrier_passed", {}))
            log.info("consistency barrier passed; filling foreign keys")
            return True
        now = time.monotonic()
        if now >= deadline:
            raise BackfillError(
                f"gave up after {timeout:.0f}s waiting for transactions "
                f"begun before the key backfill ended: {_describe(waiters)}; end them (or raise "
                "barrier_timeout_s) and run `online-uuid backfill` again to resume"
            )
        if now - reported >= REPORT_EVERY_S:
            reported = now
            session.call(lambda c: ctx.board.note(c, barrier_waiting_on=waiters))  # noqa: B023
            log.info("consistency barrier: waiting for older transactions", waiting_on=waiters)
            ctx.progress.note("waiting for older transactions to end", on=_describe(waiters))
        if ctx.sleep(POLL_S):
            return False
