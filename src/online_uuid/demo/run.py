"""`online-uuid demo`: the guide's five tables converted end to end under a live workload."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console
from rich.markup import escape

from .. import api
from ..backfill.progress import JobProgress, Progress, make_progress
from ..errors import OnlineUuidError
from ..log import configure
from ..metrics import Metrics
from ..render import print_plan
from ..settings import StartSettings
from . import cascade, data, report
from .schema import TABLES, create_schema
from .target import Target, demo_target
from .workload import Workload, WorkloadReport

WRITERS = 4
RATE_PER_WRITER = 50.0  # operations per second per application session
MIN_ROWS = 100


class DemoFailed(Exception):
    """A step's result makes the demo a failure; the message is the one-line reason."""


class _PlainProgress:
    """Without a terminal: one line per finished backfill job, on the demo's console."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def job(self, snap: JobProgress) -> None:
        with self._lock:
            if not snap.done or snap.job_id in self._done:
                return
            self._done.add(snap.job_id)
        self._console.print(f"  filled {snap.label}: {snap.rows_done:,} rows", markup=False, highlight=False)

    def note(self, message: str, **fields: Any) -> None:
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        self._console.print(f"  {message} {extra}".rstrip(), markup=False, highlight=False)

    def close(self) -> None:
        pass


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, application_name="online-uuid/demo", connect_timeout=10)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def _rows_backfilled(metrics: Metrics) -> int:
    return int(
        sum(
            s.value for m in metrics.rows_backfilled.collect() for s in m.samples if s.name.endswith("_total")
        )
    )


class _Demo:
    """The steps in order; each prints what it did and records what the summary needs."""

    def __init__(self, target: Target, rows: int, console: Console, metrics_port: int | None) -> None:
        self.t = target
        self.rows = rows
        self.console = console
        self.metrics_port = metrics_port
        self.metrics = Metrics(target.migration)
        self.tables = [f"{target.schema}.{name}" for name in TABLES]
        self.summary: list[tuple[str, str]] = []
        self.problems: list[str] = []
        self.server: Any = None

    def step(self, title: str) -> None:
        self.console.rule(f"[bold]{escape(title)}", align="left")

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def run(self) -> None:
        if self.metrics_port is not None:
            try:
                self.server = self.metrics.serve(self.metrics_port)
            except OSError as exc:
                raise DemoFailed(
                    f"cannot serve metrics on port {self.metrics_port}: {exc.strerror}"
                ) from None
        with _connect(self.t.dsn) as conn:
            before = self.load(conn)
            workload = Workload(self.t.dsn, self.t.schema, WRITERS, RATE_PER_WRITER, seed=7)
            self.say(
                f"Application workload: {WRITERS} sessions, ~{WRITERS * RATE_PER_WRITER:.0f} ops/s "
                "(60% reads, 40% writes), rows addressed by natural keys, running until the end."
            )
            workload.start()
            try:
                self.cascade_setup(conn)
                self.plan()
                self.start()
                self.verify()
                self.cutover(workload)
                self.cascade_delete(conn)
                self.finalize()
            finally:
                result = workload.stop()
            self.finish(conn, result, before)

    def load(self, conn: psycopg.Connection[Any]) -> dict[tuple[str, str], str]:
        self.step(f"1. The guide's five tables, ~{self.rows:,} rows")
        create_schema(conn, self.t.schema)
        before = report.column_types(conn, self.t.schema)
        t0 = time.monotonic()
        counts = data.load(conn, self.t.schema, self.rows)
        parts = ", ".join(f"{name} {n:,}" for name, n in counts.items())
        self.say(f"Loaded {sum(counts.values()):,} rows in {time.monotonic() - t0:.1f} s: {parts}")
        return before

    def cascade_setup(self, conn: psycopg.Connection[Any]) -> None:
        """A connector no application session touches, kept for the cascade delete after cutover."""
        cascade.create_family(conn, self.t.schema)
        counts = cascade.family_counts(conn, self.t.schema)
        refused = cascade.try_delete(conn, self.t.schema)
        self.say(
            f"Connector {cascade.CONNECTOR!r}: {counts['servers']} servers, {counts['grants']} grants, "
            f"{counts['tokens']} tokens, {counts['tools']} tools. Deleting it now is refused, because the "
            f"tokens' and tools' foreign keys are ON DELETE NO ACTION:\n  {refused or '(it was NOT refused)'}"
        )
        if refused is None:
            raise DemoFailed("deleting the demo connector before the migration was not refused")

    def plan(self) -> None:
        self.step("2. online-uuid plan (reads only)")
        print_plan(api.plan(self.t.dsn, self.tables, cascade_deletes=True), self.console)

    def start(self) -> None:
        self.step("3. online-uuid start --cascade-deletes: shadow columns, triggers, backfill")
        if self.metrics_port is not None:
            self.say(f"Prometheus metrics: http://127.0.0.1:{self.metrics_port}/metrics")
        progress: Progress = make_progress() if sys.stderr.isatty() else _PlainProgress(self.console)
        t0 = time.monotonic()
        try:
            api.start(
                self.t.dsn,
                self.tables,
                migration=self.t.migration,
                settings=StartSettings(cascade_deletes=True),
                metrics=self.metrics,
                progress=progress,
            )
        finally:
            progress.close()
        seconds = time.monotonic() - t0
        filled = _rows_backfilled(self.metrics)
        self.say(f"Expanded and backfilled {filled:,} key and foreign key values in {seconds:.1f} s.")
        self.summary.append(("backfill", f"{filled:,} values in {seconds:.1f} s ({filled / seconds:,.0f}/s)"))

    def verify(self) -> None:
        self.step("4. online-uuid verify (online, no strong locks)")
        result = api.verify(self.t.dsn, self.t.migration)
        for c in result.checks:
            self.say(f"  {'ok' if c.ok else 'FAIL':4} {c.table}.{c.column}: {c.rows:,} rows checked")
        if not result.ok:
            raise DemoFailed(f"verify failed: {result.first_problem()}")
        self.summary.append(("verify", f"ok, {len(result.checks)} columns checked"))

    def cutover(self, workload: Workload) -> None:
        self.step("5. online-uuid cutover: build indexes online, swap keys in one short transaction")
        t0 = workload.mark("cutover")
        result = api.cutover(self.t.dsn, self.t.migration, metrics=self.metrics)
        t1 = workload.mark("cutover done")
        stall, errors = workload.stall_between(t0, t1), workload.errors_between(t0, t1)
        self.say(
            f"Cut over in {t1 - t0:.1f} s; the lock was held {_ms(result.lock_held_s)} "
            f"({result.attempts} attempt(s)). "
            f"Workload meanwhile: worst stall {stall:,.0f} ms, {errors} errors."
        )
        self.summary.append(
            ("cutover lock held", f"{_ms(result.lock_held_s)} ({result.attempts} attempt(s))")
        )
        self.summary.append(("worst workload stall during cutover", f"{stall:,.0f} ms"))

    def cascade_delete(self, conn: psycopg.Connection[Any]) -> None:
        self.step("6. The guide's promise: CASCADE DELETE on every converted foreign key")
        before = cascade.family_counts(conn, self.t.schema)
        deleted = cascade.delete(conn, self.t.schema)
        after = cascade.family_counts(conn, self.t.schema)
        self.say(f"Deleted {deleted} row from mcp_connectors: the connector named {cascade.CONNECTOR!r}")
        for kind in cascade.KINDS:
            self.say(f"  {kind:10} before {before[kind]:3}  after {after[kind]:3}")
        gone = sum(before.values())
        if deleted != 1 or any(after.values()) or not all(before.values()):
            raise DemoFailed(f"cascade delete left rows behind: before {before}, after {after}")
        self.summary.append(("cascade delete", f"1 connector took its {gone - 1} dependent rows with it"))

    def finalize(self) -> None:
        self.step("7. online-uuid finalize: drop the retired integer columns")
        api.finalize(self.t.dsn, self.t.migration)
        self.say("Finalized: integer columns, sequences and helper triggers dropped.")

    def finish(
        self, conn: psycopg.Connection[Any], wl: WorkloadReport, before: dict[tuple[str, str], str]
    ) -> None:
        self.step("Summary")
        after = report.column_types(conn, self.t.schema)
        report.print_types(self.console, before, after)
        rows_now = sum(_table_counts(conn, self.t.schema).values())
        self.summary.insert(0, ("rows migrated", f"{rows_now:,} rows in 5 tables now have UUID keys"))
        self.summary.append(
            (
                "application workload",
                f"{wl.operations:,} operations in {wl.duration_s:.0f} s, {wl.errors} errors, "
                f"p99 latency {wl.p99_ms:.1f} ms",
            )
        )
        report.print_summary(self.console, self.summary)
        if wl.errors:
            first = wl.error_messages[0] if wl.error_messages else "?"
            self.problems.append(f"the workload saw {wl.errors} errors (first: {first})")
        left = report.not_uuid(after)
        if left:
            self.problems.append(f"not uuid after finalize: {', '.join(left)}")

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _table_counts(conn: psycopg.Connection[Any], schema: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in TABLES:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()
        out[name] = int(row[0]) if row else 0
    return out


def run_demo(
    *, dsn: str | None, rows: int, keep: bool, console: Console, metrics_port: int | None = None
) -> int:
    """Run the whole demo; 0 only if the migration finished, verify passed and the workload saw no error."""
    if rows < MIN_ROWS:
        return _fail(f"--rows must be at least {MIN_ROWS}")
    # The tool's step-by-step info logs (and pgserver's) would drown the story.
    configure("console", level="warning")
    logging.getLogger().setLevel(logging.WARNING)
    t0 = time.monotonic()
    demo: _Demo | None = None
    try:
        with demo_target(dsn, keep, console) as target:
            demo = _Demo(target, rows, console, metrics_port)
            try:
                demo.run()
            finally:
                demo.close()
    except DemoFailed as exc:
        return _fail(str(exc))
    except (OnlineUuidError, psycopg.Error, OSError) as exc:
        return _fail((str(exc).strip().splitlines() or [type(exc).__name__])[0])
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    console.print(f"Demo finished in {time.monotonic() - t0:.0f} s.", highlight=False)
    if demo is not None and demo.problems:
        return _fail("; ".join(demo.problems))
    return 0


def _fail(reason: str, code: int = 1) -> int:
    sys.stdout.flush()
    sys.stderr.write(f"error: demo failed: {reason}\n")
    sys.stderr.flush()
    return code
