"""What the backfill's workers share: sessions with retry, the throttle board, totals and metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from .. import db, state
from ..errors import OnlineUuidError, RefusedError
from ..metrics import Metrics
from ..model import Plan
from ..naming import application_name
from ..settings import BackfillSettings
from .canary import LatencyGuard
from .lock import LockHolder
from .progress import Progress
from .signals import SignalReader
from .throttle import HOLD_REASONS, REASONS, Decision, RateMeter, RatePacer, Signals, eta_seconds

log = structlog.get_logger("online_uuid.backfill")
T = TypeVar("T")

PUBLISH_EVERY_S = 5.0
WARN_EVERY_S = 60.0
ERROR_KINDS = (
    "lock_lost",
    "stalled",
    "deadlock",
    "serialization",
    "lock_timeout",
    "canceled",
    "server_restart",
    "connection",
    "other",
)


def statement_timeout_ms(lim: BackfillSettings) -> int:
    """Generous per-batch statement timeout: a runaway batch is cancelled, shrunk and retried."""
    return max(10_000, 25 * lim.target_batch_ms)


class ReconnectFailed(psycopg.OperationalError):
    """Connecting failed (server restarting, network): transient, retried like a lost session."""


@dataclass
class Totals:
    """What this run did, for BackfillResult; updated by every worker."""

    rows: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    retries: int = 0
    throttled_s: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_batch(self, job_id: str, rows: int) -> None:
        with self.lock:
            self.rows[job_id] = self.rows.get(job_id, 0) + rows
            self.batches += 1

    def add_retry(self) -> None:
        with self.lock:
            self.retries += 1

    def add_throttle(self, reasons: list[str], seconds: float) -> None:
        with self.lock:
            for r in reasons:
                self.throttled_s[r] = self.throttled_s.get(r, 0.0) + seconds


class RunContext:
    """One backfill run: settings, shared pacing, signals and reporting for all workers."""

    def __init__(
        self,
        dsn: str,
        mid: str,
        settings: BackfillSettings,
        plan: Plan,
        metrics: Metrics,
        progress: Progress,
        stop: threading.Event,
    ) -> None:
        self.dsn, self.mid, self.settings, self.plan = dsn, mid, settings, plan
        self.metrics, self.progress, self.stop = metrics, progress, stop
        self.abort = threading.Event()  # a worker failed: the others stop after their batch
        self.reader = SignalReader(lambda d: self.connect(d))
        self.pacer = RatePacer()
        self.meter = RateMeter()
        self.totals = Totals()
        self.board = Board(self)
        self.replica = False  # sessions on the primary SET session_replication_role = replica
        self.latency = LatencyGuard(mid, dsn, metrics)
        self.lock: LockHolder | None = None  # set when the run holds the migration's lock
        self._remaining: dict[str, int] = {}
        self._lock = threading.Lock()

    def connect(self, dsn: str | None = None, role: str = "backfill") -> psycopg.Connection:
        try:
            conn = db.connect(dsn or self.dsn, application_name(self.mid, role))
        except RefusedError:
            raise
        except OnlineUuidError as exc:
            raise ReconnectFailed(str(exc)) from None
        # One core at most: parallel workers (index vacuum, scans) would take the application's.
        conn.execute("SET max_parallel_workers_per_gather = 0")
        conn.execute("SET max_parallel_maintenance_workers = 0")
        conn.execute("SET row_security = off")  # an error, never rows silently hidden by a policy
        if self.replica and dsn is None:  # the application's triggers and rules stay quiet (role.py)
            conn.execute("SET session_replication_role = replica")
        return conn

    def call_deadline_s(self) -> float:
        """How long any call of the run may wait for an answer: a batch's statement timeout, plus
        `stall_timeout_s` for the network."""
        return statement_timeout_ms(self.settings) / 1000 + self.settings.stall_timeout_s

    def halted(self) -> bool:
        return self.stop.is_set() or self.abort.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop/abort; True if the run should end."""
        end = time.monotonic() + seconds
        while not self.halted():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.stop.wait(min(left, 0.2))
        return True

    def set_remaining(self, job_id: str, rows: int, batch_rows: int = 0) -> None:
        """Rows left in a job; the overall ETA follows from all jobs and the recent rate."""
        with self._lock:
            self._remaining[job_id] = rows
            rate = self.meter.add(batch_rows) if batch_rows else self.meter.rate
            eta = eta_seconds(sum(self._remaining.values()), rate)
        if eta is not None:
            self.metrics.eta.set(eta)

    def ensure_lock(self) -> None:
        """Before writing on a new session or after an error: the migration's lock is (again) ours."""
        if self.lock is not None:
            self.lock.ensure()

    def lock_ref(self) -> tuple[int, str] | None:
        return self.lock.ref() if self.lock is not None else None

    def close(self) -> None:
        self.latency.close()
        self.reader.close()
        if self.lock is not None:
            self.lock.close()


class Session:
    """A connection of the run that reconnects and retries transient errors with backoff."""

    def __init__(self, ctx: RunContext, name: str, on_retry: Callable[[str], None] | None = None):
        self.ctx, self.name, self._on_retry = ctx, name, on_retry
        self.conn: psycopg.Connection | None = None
        self._check_lock = True

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = self.ctx.connect()
            self._check_lock = True
        if self._check_lock:  # a new session, or the last call failed: was the server restarted?
            self.ctx.ensure_lock()
            self._check_lock = False
        return self.conn

    def call(self, fn: Callable[[psycopg.Connection], T], deadline_s: float | None = -1.0) -> T:
        """fn(connection), retried on transient errors; a call that gets no answer within
        `deadline_s` (default: RunContext.call_deadline_s; None: no limit)
        is cut off as stalled and retried on a new session."""
        limit = self.ctx.call_deadline_s() if deadline_s is not None and deadline_s < 0 else deadline_s
        for attempt in Retrying(
            retry=retry_if_exception(db.is_transient),
            wait=wait_exponential(multiplier=0.2, max=10.0) + wait_random(0, 0.3),
            stop=stop_after_delay(self.ctx.settings.retry_for_s),
            before_sleep=self._before_sleep,
            reraise=True,
        ):
            with attempt:
                conn = self._connection()
                with db.deadline(conn, limit):
                    return fn(conn)
        raise AssertionError("unreachable")

    def _before_sleep(self, rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        kind = db.error_kind(exc) if exc else "other"
        self.ctx.metrics.errors.labels(kind=kind).inc()
        self.ctx.totals.add_retry()
        self._check_lock = True
        first = str(exc).strip().splitlines()[0] if exc and str(exc).strip() else kind
        log.warning(
            "transient error, retrying", session=self.name, kind=kind, error=first, attempt=rs.attempt_number
        )
        if kind in ("connection", "server_restart", "stalled") or (
            self.conn is not None and self.conn.broken
        ):
            self.close()
        if self._on_retry:
            self._on_retry(kind)

    def close(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.close()
        self.conn = None


class Board:
    """Merges every worker's throttle decision into metrics, logs and `throttle_state`."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._decisions: dict[str, Decision] = {}
        self._rates: dict[str, float] = {}
        self._extra: dict[str, Any] = {}
        self._published: tuple[float, tuple[str, ...]] = (float("-inf"), ())
        self._warned = float("-inf")

    def post(
        self, conn: psycopg.Connection, job_id: str, dec: Decision, sig: Signals, rate: float | None
    ) -> None:
        with self._lock:
            self._decisions[job_id] = dec
            if rate is not None:
                self._rates[job_id] = rate
            self._extra["replication_lag_s"] = sig.replication_lag_s
            self._extra["wal_rate_bytes"] = sig.wal_rate_bytes
            self._extra["long_transactions"] = sig.long_transactions
            self._extra["latency_budget"] = sig.latency_budget
            doc = self._document_if_due()
        self._report_lag(sig)
        self._warn_long(sig)
        if doc is not None:
            state.update(conn, self.ctx.mid, throttle_state=doc)

    def note(self, conn: psycopg.Connection, **extra: Any) -> None:
        """Publish run-level facts now (barrier waiters, a job that ended)."""
        with self._lock:
            self._extra.update(extra)
            doc = self._document_if_due(force=True)
        if doc is not None:
            state.update(conn, self.ctx.mid, throttle_state=doc)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._decisions.pop(job_id, None)

    def _document_if_due(self, force: bool = False) -> dict[str, Any] | None:
        details: dict[str, Any] = {}
        for dec in self._decisions.values():
            details.update(dec.details)
        reasons = tuple(r for r in REASONS if r in details)
        for r in REASONS:
            self.ctx.metrics.throttled.labels(reason=r).set(1 if r in reasons else 0)
        at, before = self._published
        now = time.monotonic()
        holds = [r for r in reasons if r in HOLD_REASONS]
        if holds != [r for r in before if r in HOLD_REASONS]:
            log.info(
                "backfill held" if holds else "backfill hold released",
                reasons=holds,
                details={r: details[r] for r in holds},
            )
        elif reasons != before:
            log.debug("backfill throttle reasons", reasons=list(reasons), details=details)
        if not force and reasons == before and now - at < PUBLISH_EVERY_S:
            return None
        self._published = (now, reasons)
        return {
            "throttled": bool(reasons),
            "reasons": list(reasons),
            "details": details,
            "rates": dict(self._rates),
            "rate_rows_per_s": self.ctx.meter.rate,
            "updated_at": datetime.now(UTC).isoformat(),
            **self._extra,
        }

    def _report_lag(self, sig: Signals) -> None:
        for name, lag in sig.replication_lag_s.items():
            self.ctx.metrics.replication_lag.labels(replica=name).set(lag)

    def _warn_long(self, sig: Signals) -> None:
        now = time.monotonic()
        if sig.long_transactions and now - self._warned >= WARN_EVERY_S:
            self._warned = now
            log.warning(
                "long transactions hold back vacuum (not throttling)", transactions=sig.long_transactions
            )
