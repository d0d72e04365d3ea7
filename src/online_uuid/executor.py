"""Runs steps: short lock_timeout, retries with backoff and jitter, each step recorded in state."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import psycopg
import structlog
from psycopg import errors as pgerrors
from psycopg import sql
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay

from . import catalog, state
from .db import restore
from .errors import LockTimeoutError
from .model import TableRef
from .settings import LockSettings
from .statements import Query

log = structlog.get_logger("online_uuid")

T = TypeVar("T")

StepKind = Literal["ddl", "online"]
DDL: StepKind = "ddl"  # one transaction, short lock_timeout, retried on lock timeouts
ONLINE: StepKind = "online"  # autocommit, one statement at a time (CREATE INDEX CONCURRENTLY, VALIDATE)


@dataclass(frozen=True)
class Step:
    """A unit of work that is done exactly once per migration (its id is recorded when done)."""

    id: str
    statements: tuple[Query, ...]
    tables: tuple[TableRef, ...] = ()
    kind: StepKind = DDL
    description: str = ""
    index: tuple[TableRef, str] | None = None  # a concurrently built index to clean up if INVALID
    phase: str = ""


@dataclass
class Executor:
    """Executes steps on one autocommit connection for one migration."""

    conn: psycopg.Connection
    migration: str
    lock: LockSettings
    online_lock_timeout_ms: int = 600_000
    terminate_blockers: bool = False
    executed: list[str] = field(default_factory=list)
    terminated: list[int] = field(default_factory=list)

    def run_all(self, steps: Iterable[Step]) -> None:
        for step in steps:
            self.run(step)

    def run(self, step: Step) -> bool:
        """Run `step` unless already done; returns True when it ran now."""
        if state.step_done(self.conn, self.migration, step.id):
            return False
        started = time.monotonic()
        if step.kind == ONLINE:
            self._run_online(step)
        else:
            self._run_ddl(step)
        log.info("step done", step=step.id, seconds=round(time.monotonic() - started, 3))
        self.executed.append(step.id)
        return True

    def _run_ddl(self, step: Step) -> None:
        def attempt() -> None:
            with self.conn.transaction():
                self.conn.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(
                        sql.Literal(f"{self.lock.lock_timeout_ms}ms")
                    )
                )
                for stmt in step.statements:
                    self.conn.execute(stmt)
                state.mark_step(self.conn, self.migration, step.id)

        with_lock_retries(
            self.conn,
            self.lock,
            step.tables,
            attempt,
            what=step.description or step.id,
            terminate=self.terminate_blockers,
            terminated=self.terminated,
        )

    def _run_online(self, step: Step) -> None:
        if step.index is not None:
            self._drop_invalid_index(*step.index)
        self.conn.execute(
            sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{self.online_lock_timeout_ms}ms"))
        )
        try:
            for stmt in step.statements:
                self.conn.execute(stmt)
        finally:
            restore(self.conn, "lock_timeout")
        state.mark_step(self.conn, self.migration, step.id)

    def _drop_invalid_index(self, table: TableRef, index: str) -> None:
        oid = catalog.read_table_ref(self.conn, TableRef(table.schema, index))
        if oid is not None and catalog.read_index_invalid(self.conn, oid):
            log.warning("dropping an INVALID index left by an earlier attempt", index=index)
            self.conn.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(table.schema, index))
            )


LOCK_ERRORS = (pgerrors.LockNotAvailable, pgerrors.DeadlockDetected)
MAX_TERMINATED = 20  # backends one retry loop may end: new blockers forever can't keep it looping


def lock_backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt `attempt`: doubling from 0.2 up to 5, jittered down to half."""
    return min(5.0, 0.1 * 2.0 ** min(attempt, 6)) * random.uniform(0.5, 1.0)


def with_lock_retries(
    conn: psycopg.Connection,
    lock: LockSettings,
    tables: Iterable[TableRef],
    attempt: Callable[[], T],
    *,
    what: str,
    gave_up: str = "",
    hint: str = "",
    terminate: bool = False,
    terminated: list[int] | None = None,
    on_busy: Callable[[Exception], None] | None = None,
) -> tuple[T, int]:
    """Call `attempt()` until it gets its locks; returns its result and the attempts it took.

    The one lock-retry loop, for DDL steps and for the cutover swap alike: `attempt` sets its own
    short lock_timeout; on a lock timeout or deadlock it is retried after `lock_backoff`, until
    `lock.max_attempts` or `lock.retry_for_s`, then LockTimeoutError names the blockers.
    With `terminate`, backends whose transaction began before the failed attempt did (the ones it
    waited for) are cancelled, then terminated, and the next attempt follows at once; short
    application transactions that queued behind ours never are.
    """
    tables = list(tables)
    ended: list[int] = []  # by the last failed attempt
    all_ended = terminated if terminated is not None else []

    def once() -> T:
        ended.clear()
        started = time.monotonic()
        try:
            return attempt()
        except LOCK_ERRORS as exc:
            if on_busy is not None:
                on_busy(exc)
            log.info(
                "lock busy",
                what=what,
                lock_timeout_ms=lock.lock_timeout_ms,
                blockers=describe_blockers(blockers_of(conn, tables)),
            )
            if terminate and len(all_ended) < MAX_TERMINATED:
                ended.extend(terminate_long_blockers(conn, tables, time.monotonic() - started))
                all_ended.extend(ended)
            raise

    give_up = stop_after_attempt(lock.max_attempts) | stop_after_delay(lock.retry_for_s)
    retrying = Retrying(
        retry=retry_if_exception_type(LOCK_ERRORS),
        stop=lambda rs: not ended and give_up(rs),  # blockers just ended: take the lock now
        wait=lambda rs: 0.0 if ended else lock_backoff(rs.attempt_number),
        reraise=False,
    )
    try:
        result = retrying(once)
    except RetryError as exc:
        attempts = exc.last_attempt.attempt_number
        blockers = blockers_of(conn, tables)
        where = ", ".join(str(t) for t in tables) or "the tables"
        raise LockTimeoutError(
            f"{gave_up or f'gave up waiting for locks on {where} for {what}'} after {attempts} attempts "
            f"of {lock.lock_timeout_ms} ms; blocked by {describe_blockers(blockers)}; nothing was "
            f"changed: retry when they finish{hint}",
            blockers,
        ) from None
    return result, int(retrying.statistics.get("attempt_number", 1))


def blockers_of(conn: psycopg.Connection, tables: Iterable[TableRef]) -> list[catalog.Blocker]:
    oids = [oid for t in tables if (oid := catalog.read_table_ref(conn, t)) is not None]
    return catalog.read_blockers(conn, oids) if oids else []


def old_blockers(blockers: list[catalog.Blocker], older_than_s: float) -> list[int]:
    """Pids whose transaction began before our attempt did: the ones that made it time out.

    Sessions that queued behind our lock request hold locks too, but they are the application.
    The age is rounded to 0.1 s, hence the margin.
    """
    return [b.pid for b in blockers if (b.xact_age_s or 0) > older_than_s + 0.1]


def terminate_long_blockers(
    conn: psycopg.Connection, tables: Iterable[TableRef], older_than_s: float
) -> list[int]:
    """Cancel, then terminate, only the old transactions holding locks on these tables."""
    tables = list(tables)
    pids = old_blockers(blockers_of(conn, tables), older_than_s)
    for pid in pids:
        conn.execute("SELECT pg_cancel_backend(%s)", (pid,))
    if pids:
        time.sleep(0.2)
        still = {b.pid for b in blockers_of(conn, tables)}
        for pid in pids:
            if pid in still:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        log.warning("terminated blocking backends", pids=pids)
    return pids


def describe_blockers(blockers: list[catalog.Blocker]) -> str:
    if not blockers:
        return "no backend visible now"
    parts = [
        f"pid {b.pid} ({b.application_name or '-'}, {b.state}, "
        f"transaction {b.xact_age_s} s old: {(b.query or '')[:80]!r})"
        for b in blockers[:3]
    ]
    more = f" and {len(blockers) - 3} more" if len(blockers) > 3 else ""
    return "; ".join(parts) + more


def render_steps(conn: psycopg.Connection | None, steps: Iterable[Step], title: str) -> str:
    """The SQL text of `steps`, as `plan --sql` prints it; nothing is executed."""
    out = [f"-- {title}"]
    for step in steps:
        mode = "outside a transaction" if step.kind == ONLINE else "one transaction, SET LOCAL lock_timeout"
        out.append(f"-- step {step.id} ({mode})")
        out.extend(s.as_string(conn).rstrip().rstrip(";") + ";" for s in step.statements)
    return "\n".join(out) + "\n"
