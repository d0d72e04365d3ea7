"""Walks one backfill job batch by batch: throttle gate, adaptive size, retries, vacuum."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
import structlog

from .. import catalog
from ..errors import BackfillError, RefusedError, StateError
from ..metrics import table_label
from ..model import BackfillJob, Phase, TableRef
from ..settings import BackfillSettings
from ..statements import generator
from . import batch, control
from .context import RunContext, Session, statement_timeout_ms
from .progress import JobProgress
from .signals import read_dead_tuples
from .throttle import (
    BatchSizer,
    RateMeter,
    Signals,
    apply_overrides,
    batch_cap,
    decide,
    eta_seconds,
    key_fraction,
)

log = structlog.get_logger("online_uuid.backfill")

DEAD_TUPLES_EVERY_S = 30.0


@dataclass
class _Last:
    """What the previous batch left for the throttle gate."""

    pacing_s: float = 0.0
    elapsed_s: float = 0.0
    blocked: int = 0


class Worker:
    """One job, one connection; returns when the job is done or the run is stopped."""

    def __init__(self, ctx: RunContext, job: BackfillJob) -> None:
        self.ctx, self.job = ctx, job
        self.session = Session(ctx, job.job_id, on_retry=self._on_retry)
        self.label = f"{job.table.display()}.{job.shadow}"
        s = ctx.settings
        self.sizer = BatchSizer(
            s.target_batch_ms / 1000, s.min_batch_size, s.max_batch_size, s.initial_batch_size
        )
        self.meter = RateMeter()
        self.update = (
            batch.derived_update_sql(job) if ctx.plan.derived else batch.update_sql(job, generator(ctx.plan))
        )
        self.finished = False
        self._dirty = False
        self._bad_override = ""
        self._dead_at = float("-inf")
        self.oid = 0

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.ctx.board.forget(self.job.job_id)
            self.session.close()

    def _run(self) -> None:
        mid, job = self.ctx.mid, self.job
        st = self.session.call(lambda c: batch.load(c, mid, job.job_id))
        if st.started_at is None:
            st = self.session.call(lambda c: batch.begin(c, mid, job, self.sizer.size))
            log.info("backfill job started", job=self.label, min_key=st.min_key, max_key=st.max_key)
        if st.batch_size:
            self.sizer.size = st.batch_size
            self.sizer.retune(self.sizer.target_s, self.sizer.min_size, self.sizer.max_size)
        self.oid = self.session.call(lambda c: _table_oid(c, job.table))
        last = _Last()
        while not st.done:
            eff = self._gate(last)
            if eff is None:
                return
            last = self._one_batch(st, eff)
        self._report(st, 0)
        self._maybe_vacuum(st, self.ctx.settings)
        self.finished = True
        log.info("backfill job finished", job=self.label, rows=st.rows_done, batches=st.batches)

    def _on_retry(self, kind: str) -> None:
        self._dirty = True  # the commit may have landed: reload the cursor before the next try
        if kind in ("canceled", "lock_timeout", "deadlock"):
            self.sizer.shrink()

    def _effective(self, overrides: dict[str, object]) -> BackfillSettings:
        try:
            eff = apply_overrides(self.ctx.settings, overrides)
        except (RefusedError, TypeError, ValueError) as exc:
            if str(exc) != self._bad_override:
                self._bad_override = str(exc)
                log.warning("ignoring invalid throttle override", error=str(exc))
            return self.ctx.settings
        self.sizer.retune(eff.target_batch_ms / 1000, eff.min_batch_size, eff.max_batch_size)
        return eff

    def _gate(self, last: _Last) -> BackfillSettings | None:
        """Wait until the next batch may run; None when the run is stopping."""
        ctx, first, held = self.ctx, True, False
        while not ctx.halted():
            rt = self.session.call(lambda c: control.read_runtime(c, ctx.mid))
            if rt.phase != Phase.BACKFILLING.value:
                raise BackfillError(
                    f"migration {ctx.mid} moved to phase {rt.phase} while backfilling; stopped"
                )
            eff = ctx.latency.apply(self._effective(rt.throttle))
            ctx.metrics.paused.set(1 if rt.paused else 0)
            sig = (
                Signals(paused=True)
                if rt.paused
                else self.session.call(
                    lambda _c: ctx.reader.read(eff, self.oid)  # noqa: B023 - called at once
                )
            )
            ctx.latency.annotate(sig)
            if first:
                sig.pacing_sleep_s, sig.last_batch_s = last.pacing_s, last.elapsed_s
                sig.blocked_sessions = last.blocked
            dec = decide(sig, eff)
            if first or dec.hold or held:  # a re-check after a plain sleep changes nothing
                held = dec.hold
                self.session.call(
                    lambda c: ctx.board.post(
                        c,
                        self.job.job_id,
                        dec,  # noqa: B023 - called at once
                        sig,  # noqa: B023
                        self.meter.rate,
                    )
                )
            if dec.sleep_s > 0:
                ctx.totals.add_throttle(dec.reasons, dec.sleep_s)
                if ctx.sleep(dec.sleep_s):
                    return None
            if not dec.hold and (dec.sleep_s == 0 or not first):
                return eff
            first = False
        return None

    def _one_batch(self, st: batch.JobState, eff: BackfillSettings) -> _Last:
        ctx, timeout = self.ctx, statement_timeout_ms(eff)
        started = [time.monotonic()]

        def once(conn: psycopg.Connection) -> batch.BatchResult:
            if self._dirty:
                vars(st).update(vars(batch.load(conn, ctx.mid, self.job.job_id)))
                self._dirty = False
            if st.done:
                return batch.BatchResult(0, None, 0, True)
            size = min(self.sizer.size, batch_cap(eff))
            started[0] = time.monotonic()
            return batch.run(conn, ctx.mid, self.job, st, size, self.update, timeout, ctx.lock_ref())

        with ctx.latency.busy():
            res = self.session.call(once)
        elapsed = time.monotonic() - started[0]
        ctx.latency.add_rows(res.rows)
        self.sizer.observe(elapsed, full=not res.finished)
        if res.blocked:
            self.sizer.shrink()
            log.info(
                "backfill batch blocked other sessions; backing off",
                job=self.label,
                sessions=res.blocked,
                batch_size=self.sizer.size,
            )
        self._account(res, elapsed, st)
        self._maybe_vacuum(st, eff)
        return _Last(ctx.pacer.book(res.rows, eff.max_rows_per_second), elapsed, res.blocked)

    def _account(self, res: batch.BatchResult, elapsed: float, st: batch.JobState) -> None:
        m, table = self.ctx.metrics, table_label(self.job.table)
        self.ctx.totals.add_batch(self.job.job_id, res.rows)
        m.rows_backfilled.labels(table=table, column=self.job.column).inc(res.rows)
        m.batch_duration.labels(table=table).observe(elapsed)
        m.batch_size.labels(table=table).set(self.sizer.size)
        self._report(st, res.rows)
        if time.monotonic() - self._dead_at >= DEAD_TUPLES_EVERY_S:
            self._read_dead_tuples()

    def _report(self, st: batch.JobState, rows: int) -> None:
        frac = 1.0 if st.done else key_fraction(st.min_key, st.max_key, st.next_key)
        remaining = 0 if st.done else int(st.rows_estimate * (1 - frac))
        rate = self.meter.add(rows)
        self.ctx.metrics.rows_remaining.labels(table=table_label(self.job.table), column=self.job.column).set(
            remaining
        )
        self.ctx.set_remaining(self.job.job_id, remaining, rows)
        self.ctx.progress.job(
            JobProgress(
                self.job.job_id,
                self.label,
                frac,
                st.rows_done,
                remaining,
                rate,
                eta_seconds(remaining, rate),
                st.done,
            )
        )

    def _read_dead_tuples(self) -> None:
        self._dead_at = time.monotonic()
        dead = self.session.call(lambda c: read_dead_tuples(c, self.oid))
        self.ctx.metrics.dead_tuples.labels(table=table_label(self.job.table)).set(dead)

    def _maybe_vacuum(self, st: batch.JobState, eff: BackfillSettings) -> None:
        """Plain VACUUM each time the job passes another vacuum_every_pct of its key range."""
        every = eff.vacuum_every_pct
        pct = 100.0 if st.done else 100 * key_fraction(st.min_key, st.max_key, st.next_key)
        due = pct >= st.vacuumed_at_pct + every or (st.done and st.vacuumed_at_pct < 100)
        if every <= 0 or not due or self.ctx.halted():
            return
        t0 = time.monotonic()
        with self.ctx.latency.busy():
            self.session.call(lambda c: batch.vacuum(c, self.job), deadline_s=None)  # as long as it takes
        self.session.call(lambda c: batch.set_vacuumed(c, self.ctx.mid, self.job.job_id, pct))
        st.vacuumed_at_pct = pct
        self._read_dead_tuples()
        log.info(
            "vacuumed",
            table=table_label(self.job.table),
            at_percent=round(pct, 1),
            seconds=round(time.monotonic() - t0, 2),
        )


def _table_oid(conn: psycopg.Connection, table: TableRef) -> int:
    oid = catalog.read_table_ref(conn, table)
    if oid is None:
        raise StateError(f"table {table} is gone since the migration started; run `online-uuid rollback`")
    return oid
