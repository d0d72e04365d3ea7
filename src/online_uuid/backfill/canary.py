"""The canary: a small transaction of the backfill's own, timed at a fixed rate, and the latency guard.

With `--max-latency-impact F`, a thread on a connection of its own runs, every `INTERVAL_S`, a
read of the migration's row and a committed write of its heartbeat row in the state schema. Its
latency counts from the scheduled start, so a stall also counts for the beats queued behind it.
Samples taken while no batch ran (for `SETTLE_S`) teach the idle baseline; the others feed the
`LatencyBudget`, whose rate the workers then pace to.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import structlog
from psycopg import sql

from .. import state
from ..errors import OnlineUuidError
from ..metrics import Metrics
from ..naming import STATE_SCHEMA
from ..settings import BackfillSettings
from .budget import Baseline, LatencyBudget, Step
from .throttle import Clock, Signals

log = structlog.get_logger("online_uuid.canary")

INTERVAL_S = 0.02  # 50 beats per second
SETTLE_S = 1.0  # a beat counts as idle once no batch has run for this long
BASELINE_SAMPLES = 200  # idle beats each baseline measurement takes (4 s at 50 Hz)
TIMEOUT_MS = 5000  # a beat that takes longer is cancelled and counted as this long
MAX_BACKLOG_S = 1.0  # beats queued behind a stall longer than this are dropped, not run in a burst
INITIAL_RATE = 1000.0  # rows/s the budget starts from (it doubles while under budget)
DECISION_SAMPLES = 150  # the budget decides on at least this many fresh beats...
DECISION_MIN_S = 2.0  # ...and at least this often


def beat(conn: psycopg.Connection, mid: str) -> None:
    """One canary transaction: a read and a committed write (a non-autocommit connection)."""
    conn.execute(
        sql.SQL("SELECT phase FROM {} WHERE id = %s").format(sql.Identifier(STATE_SCHEMA, "migrations")),
        (mid,),
    ).fetchone()
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} AS c (migration_id, beats, at) VALUES (%s, 1, clock_timestamp()) "
            "ON CONFLICT (migration_id) DO UPDATE SET beats = c.beats + 1, at = excluded.at"
        ).format(t=sql.Identifier(STATE_SCHEMA, "canary")),
        (mid,),
    )
    conn.commit()


class LatencyGuard:
    """Runs the canary while a latency budget is set and turns its samples into a rate limit."""

    def __init__(
        self,
        mid: str,
        connect: Callable[[], psycopg.Connection],
        metrics: Metrics,
        clock: Clock = time.monotonic,
    ) -> None:
        self.mid, self._connect, self.metrics, self.clock = mid, connect, metrics, clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline = Baseline()
        self.budget: LatencyBudget | None = None
        self.measuring = False  # holding the backfill to measure the idle baseline
        self.baseline_at: float | None = None
        self._inflight = 0
        self._last_busy = float("-inf")
        self._warned = float("-inf")

    # -- hooks for the workers ---------------------------------------------------------------

    def apply(self, eff: BackfillSettings) -> BackfillSettings:
        """The settings a batch runs with: the budget's rate as --max-rows-per-second when lower."""
        factor = eff.max_latency_impact or 0.0
        with self._lock:
            if factor <= 0:
                self.budget, self.measuring = None, False
                self.metrics.latency_budget.set(0)
                return eff
            floor = float(eff.min_batch_size)
            if self.budget is None:
                self.budget = LatencyBudget(
                    factor,
                    floor,
                    max(INITIAL_RATE, floor),
                    ceiling=eff.max_rows_per_second,
                    min_samples=DECISION_SAMPLES,
                    min_interval_s=DECISION_MIN_S,
                    clock=self.clock,
                )
            self.budget.retune(factor, floor, eff.max_rows_per_second)
            self.metrics.latency_budget.set(factor)
            if not self.measuring and self.budget.wants_baseline(self.baseline_at):
                self.measuring = True
                self.baseline.begin()
            rate = self.budget.rate
        self._ensure_thread()
        return dataclasses.replace(eff, max_rows_per_second=rate)

    def annotate(self, sig: Signals) -> None:
        """Mark the signals: a baseline hold, pacing by the budget, and the report for `status`."""
        with self._lock:
            if self.budget is None:
                return
            ceiling = self.budget.ceiling
            sig.latency_baseline = self.measuring
            sig.latency_bound = not ceiling or self.budget.rate < ceiling
            sig.latency_budget = self._report()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Around a batch or a VACUUM: canary beats meanwhile are not idle ones."""
        with self._lock:
            self._inflight += 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
                self._last_busy = self.clock()

    def add_rows(self, rows: int) -> None:
        with self._lock:
            if self.budget is not None:
                self.budget.add_rows(rows)

    # -- the canary thread ---------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="online-uuid-canary", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        conn: psycopg.Connection | None = None
        due = self.clock()
        while not self._stop.is_set():
            with self._lock:
                active = self.budget is not None
            if not active:  # the budget was turned off at runtime: no session, no beats
                conn = self._drop(conn)
                self._stop.wait(0.2)
                due = self.clock()
                continue
            wait = due - self.clock()
            if wait > 0:
                self._stop.wait(wait)
            try:
                if conn is None or conn.closed:
                    conn = self._open()
                idle = self._idle()
                beat(conn, self.mid)
                self._sample(self.clock() - due, idle and self._idle())
            except (psycopg.Error, OnlineUuidError) as exc:
                self._warn(exc)
                conn = self._drop(conn)
                self._stop.wait(1.0)
            # Beats queued behind a slow one run at once and count their wait, as an application's
            # requests would; after a long gap (an error, a reconnect) the schedule starts afresh.
            due += INTERVAL_S
            if self.clock() - due > MAX_BACKLOG_S:
                due = self.clock()
        self._forget(conn)

    def _open(self) -> psycopg.Connection:
        conn = self._connect()
        conn.autocommit = True
        state.ensure_schema(conn)  # a migration started by an older online-uuid has no canary table
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(TIMEOUT_MS),))
        conn.autocommit = False
        return conn

    @staticmethod
    def _drop(conn: psycopg.Connection | None) -> None:
        if conn is not None and not conn.closed:
            conn.close()

    def _forget(self, conn: psycopg.Connection | None) -> None:
        """The run ends: remove its heartbeat row (best effort) and close the session."""
        if conn is not None and not conn.closed:
            try:
                conn.rollback()
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE migration_id = %s").format(
                        sql.Identifier(STATE_SCHEMA, "canary")
                    ),
                    (self.mid,),
                )
                conn.commit()
            except psycopg.Error:
                pass
        self._drop(conn)

    def _warn(self, exc: Exception) -> None:
        if isinstance(exc, psycopg.errors.QueryCanceled):
            self._sample(TIMEOUT_MS / 1000, False)
        now = self.clock()
        if now - self._warned >= 60:
            self._warned = now
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("canary transaction failed; retrying", error=first)

    def _idle(self) -> bool:
        with self._lock:
            return self._inflight == 0 and self.clock() - self._last_busy >= SETTLE_S

    def _sample(self, latency_s: float, idle: bool) -> None:
        with self._lock:
            budget = self.budget
            if budget is None:
                return
            if idle:
                self.baseline.add(latency_s)
                if self.measuring and self.baseline.fresh >= BASELINE_SAMPLES:
                    self._baseline_done(budget)
                return
            budget.add(latency_s)
            step = budget.update(self.baseline.value)
        if step is not None:
            self._publish(step)

    def _baseline_done(self, budget: LatencyBudget) -> None:
        self.measuring = False
        self.baseline_at = self.clock()
        budget.restart_window()
        value = self.baseline.value
        if value is not None:
            self.metrics.canary_baseline.set(value)
            log.info("canary idle baseline measured", p99_ms=round(1000 * value, 3))

    def _publish(self, step: Step) -> None:
        m = self.metrics
        m.canary_p99.set(step.p99_s)
        m.latency_impact_ratio.set(step.ratio)
        m.allowed_rate.set(step.rate)
        log.debug(
            "latency budget step", ratio=round(step.ratio, 2), rate=round(step.rate), action=step.action
        )

    def _report(self) -> dict[str, Any]:
        """The budget's state for `status` (call with the lock held)."""
        assert self.budget is not None
        base, last = self.baseline.value, self.budget.last
        return {
            "factor": self.budget.factor,
            "baseline_p99_ms": None if base is None else round(1000 * base, 3),
            "canary_p99_ms": None if last is None else round(1000 * last.p99_s, 3),
            "ratio": None if last is None else round(last.ratio, 3),
            "allowed_rows_per_s": round(self.budget.rate, 1),
            "measuring_baseline": self.measuring,
        }

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
