"""The `online-uuid` command: thin typer commands that build settings, call the API and render.

Exit codes: 0 ok, 1 failure, 2 bad input / refused (nothing changed), 3 gave up waiting for a lock.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import psycopg
import typer
from rich.console import Console

from . import api
from .errors import EXIT_FAILURE, EXIT_REFUSED, OnlineUuidError
from .log import configure
from .metrics import Metrics
from .render import print_cutover_check, print_plan, print_status, print_verify
from .settings import BackfillSettings, CutoverSettings, LockSettings, StartSettings, redact, resolve_dsn

app = typer.Typer(
    name="online-uuid",
    help="Convert integer primary keys and the foreign keys that point at them to UUID, online.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int) -> typer.Exit:
    """One line on stderr, never wrapped, so scripts and humans read the same thing."""
    sys.stderr.write(f"error: {message}\n")
    return typer.Exit(code)


T = TypeVar("T")

Dsn = Annotated[
    str | None, typer.Option("--dsn", help="libpq DSN or URL; else ONLINE_UUID_DSN, DATABASE_URL, PG*.")
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
LogFormat = Annotated[str, typer.Option("--log-format", help="console or json.")]
Migration = Annotated[
    str | None, typer.Option("--migration", help="Migration name (default: the unfinished one).")
]
LockTimeout = Annotated[
    int, typer.Option("--lock-timeout", help="Milliseconds to wait for a lock before retrying.")
]
MaxAttempts = Annotated[int, typer.Option("--max-attempts", help="Lock attempts before giving up (exit 3).")]
RetryFor = Annotated[float, typer.Option("--retry-for", help="Seconds to keep retrying a lock.")]
MetricsPort = Annotated[
    int | None, typer.Option("--metrics-port", help="Serve Prometheus metrics on this port.")
]
Tables = Annotated[
    list[str], typer.Option("--table", "-t", help="Table to convert (repeatable; schema.name).")
]
Uuid = Annotated[str, typer.Option("--uuid", help="v4 (gen_random_uuid) or v7 (time-ordered).")]
UuidSource = Annotated[
    str | None,
    typer.Option(
        "--uuid-source",
        help="derived (default for v4: UUIDs of existing rows are a keyed hash of table and id, no parent "
        "lookups) or random (generated UUIDs, children look their parent's up; forced for --uuid v7).",
    ),
]
CascadeDeletes = Annotated[
    bool,
    typer.Option("--cascade-deletes", help="Every converted FK becomes ON DELETE CASCADE at cutover."),
]
KeyFrom = Annotated[
    list[str] | None,
    typer.Option(
        "--key-from",
        help="TABLE.COLUMN: the new key takes this existing uuid column's values (repeatable).",
    ),
]

# --- backfill options: declared once, shared by `start`, `backfill` and `throttle` ---------------
# Each parameter is named after its BackfillSettings field, so `_backfill_fields` needs no mapping.
_BF = BackfillSettings()
TargetBatchMs = Annotated[
    int | None,
    typer.Option(
        "--target-batch-ms",
        help=f"Milliseconds a batch should take; its size adapts (default {_BF.target_batch_ms}).",
    ),
]
MinBatchSize = Annotated[
    int | None,
    typer.Option("--min-batch-size", help=f"Smallest batch, in rows (default {_BF.min_batch_size})."),
]
MaxBatchSize = Annotated[
    int | None,
    typer.Option("--max-batch-size", help=f"Largest batch, in rows (default {_BF.max_batch_size})."),
]
InitialBatchSize = Annotated[
    int | None,
    typer.Option(
        "--initial-batch-size",
        help=f"Rows in the first batch; a resumed job keeps its size (default {_BF.initial_batch_size}).",
    ),
]
MaxRowsPerSecond = Annotated[
    float | None,
    typer.Option(
        "--max-rows-per-second", help="Rows written per second across all workers (default: no limit)."
    ),
]
MaxReplicationLag = Annotated[
    float | None,
    typer.Option(
        "--max-replication-lag",
        help=f"Hold while a standby lags more than these seconds (default {_BF.max_replication_lag_s:g}).",
    ),
]
MaxWalRate = Annotated[
    float | None,
    typer.Option(
        "--max-wal-rate", help="Hold while the server writes more WAL bytes per second (default: off)."
    ),
]
MaxActiveSessions = Annotated[
    int | None,
    typer.Option(
        "--max-active-sessions",
        help="Hold while more client sessions than this run a statement, ours excluded (default: off).",
    ),
]
ThrottleQuery = Annotated[
    str | None,
    typer.Option("--throttle-query", help="Hold while this read-only query's first value is > 0."),
]
NiceRatio = Annotated[
    float | None,
    typer.Option(
        "--nice-ratio",
        help=f"After each batch, sleep this fraction of its time (default {_BF.nice_ratio:g}).",
    ),
]
ReplicaDsns = Annotated[
    list[str] | None, typer.Option("--replica-dsn", help="Standby to watch for replay lag (repeatable).")
]
VacuumEvery = Annotated[
    float | None,
    typer.Option(
        "--vacuum-every",
        help=f"VACUUM a table every PCT percent of its job; 0 = off (default {_BF.vacuum_every_pct:g}).",
    ),
]
Workers = Annotated[
    int | None,
    typer.Option("--workers", help=f"Independent tables filled in parallel (default {_BF.workers})."),
]
BarrierTimeout = Annotated[
    float | None,
    typer.Option(
        "--barrier-timeout",
        help=f"Seconds to wait for old transactions at the barrier (default {_BF.barrier_timeout_s:g}).",
    ),
]
MaxLatencyImpact = Annotated[
    float | None,
    typer.Option(
        "--max-latency-impact",
        help="Steer the rate so the backfill's canary keeps its p99 within F x idle, e.g. 1.5 "
        "(default: off; 0 turns it off at runtime).",
    ),
]
ResetSessions = Annotated[
    list[str] | None,
    typer.Option(
        "--reset-sessions",
        help="application_name whose sessions, idle or busy, end right after the change of columns "
        "so pools reconnect without stale prepared plans (repeatable).",
    ),
]
StallTimeout = Annotated[
    float | None,
    typer.Option(
        "--stall-timeout",
        help="Seconds past a batch's statement timeout with no answer from the server before the call "
        f"is cut off and retried on a new session (default {_BF.stall_timeout_s:g}).",
    ),
]
RetryTransientFor = Annotated[
    float | None,
    typer.Option(
        "--retry-transient-for",
        help="Seconds lost connections, server restarts and cancellations are retried before the "
        f"backfill stops (default {_BF.retry_for_s:g}).",
    ),
]
# Parameter name (= BackfillSettings field) -> its option, in the order `--help` lists them.
BACKFILL_OPTIONS: dict[str, Any] = {
    "target_batch_ms": TargetBatchMs,
    "min_batch_size": MinBatchSize,
    "max_batch_size": MaxBatchSize,
    "initial_batch_size": InitialBatchSize,
    "max_rows_per_second": MaxRowsPerSecond,
    "max_replication_lag_s": MaxReplicationLag,
    "max_wal_rate_bytes": MaxWalRate,
    "max_active_sessions": MaxActiveSessions,
    "throttle_query": ThrottleQuery,
    "nice_ratio": NiceRatio,
    "replica_dsns": ReplicaDsns,
    "vacuum_every_pct": VacuumEvery,
    "workers": Workers,
    "barrier_timeout_s": BarrierTimeout,
    "max_latency_impact": MaxLatencyImpact,
    "stall_timeout_s": StallTimeout,
    "retry_for_s": RetryTransientFor,
}
# What `throttle` changes in a running backfill (the others are read once, at start).
RUNTIME_OPTIONS = (
    "max_rows_per_second",
    "max_replication_lag_s",
    "max_wal_rate_bytes",
    "max_active_sessions",
    "nice_ratio",
    "target_batch_ms",
    "min_batch_size",
    "max_batch_size",
    "throttle_query",
    "max_latency_impact",
)
_BACKFILL_FIELDS = frozenset(f.name for f in dataclasses.fields(BackfillSettings))
assert BACKFILL_OPTIONS.keys() <= _BACKFILL_FIELDS

F = TypeVar("F", bound=Callable[..., Any])


def with_backfill_options(*names: str) -> Callable[[F], F]:
    """Give a command these backfill options (all of them by default); they arrive in its **kwargs.

    typer reads a command's parameters from its signature, so the options are added to it here:
    each is declared once, above, for `start`, `backfill` and `throttle` alike.
    """

    def add(command: F) -> F:
        sig = inspect.signature(command, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        extra = [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=BACKFILL_OPTIONS[name]
            )
            for name in names or BACKFILL_OPTIONS
        ]
        command.__signature__ = sig.replace(parameters=[*own, *extra])  # type: ignore[attr-defined]
        return command

    return add


def _backfill_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """The BackfillSettings fields given on the command line (parameters are named after them)."""
    return {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in params.items()
        if name in _BACKFILL_FIELDS and value is not None
    }


def _backfill_settings(params: Mapping[str, Any]) -> BackfillSettings:
    """The one builder of BackfillSettings from a command's options (`start`, `backfill`)."""
    return _run(lambda: BackfillSettings(**_backfill_fields(params)))


def _run(fn: Callable[[], T], *, log_format: str = "console") -> T:
    """Call the API; map every error to one line on stderr and its exit code."""
    try:
        configure("json" if log_format == "json" else "console")
        return fn()
    except OnlineUuidError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _fail(f"PostgreSQL said: {first}", EXIT_FAILURE) from None
    except KeyboardInterrupt:
        err.print("interrupted; state is saved, rerun the same command to go on")
        raise typer.Exit(130) from None


def _emit(doc: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        out.print_json(json.dumps(doc, default=str))
    else:
        human()


def _metrics(port: int | None, migration: str | None) -> Metrics | None:
    if port is None:
        return None
    m = Metrics(migration or "")
    m.serve(port)
    err.print(f"metrics: http://127.0.0.1:{port}/metrics")
    return m


@contextmanager
def _progress(enabled: bool = True) -> Iterator[Any]:
    """Bars on a terminal, log lines elsewhere; always closed, so the terminal is left clean."""
    from .backfill.progress import make_progress

    progress = make_progress(None) if enabled else None
    try:
        yield progress
    finally:
        if progress is not None:
            progress.close()


@app.command()
def plan(
    table: Tables,
    dsn: Dsn = None,
    as_json: Json = False,
    as_sql: Annotated[bool, typer.Option("--sql", help="Print every statement; execute nothing.")] = False,
    subscriber_sql: Annotated[
        bool,
        typer.Option(
            "--subscriber-sql",
            help="Print what each subscriber of a publication carrying these tables runs before `start`.",
        ),
    ] = False,
    uuid: Uuid = "v4",
    cascade_deletes: CascadeDeletes = False,
    key_from: KeyFrom = None,
    uuid_source: UuidSource = None,
    log_format: LogFormat = "console",
) -> None:
    """Show what converting these tables touches, in dependency order. Reads only."""
    from .render import plan_json

    d = resolve_dsn(dsn)
    p = _run(
        lambda: api.plan(
            d,
            table,
            uuid_version=uuid,
            cascade_deletes=cascade_deletes,
            key_from=tuple(key_from or ()),
            uuid_source=uuid_source,
        ),
        log_format=log_format,
    )
    if as_sql:
        out.print(_run(lambda: api.plan_sql(d, p)), markup=False, highlight=False)
        return
    if subscriber_sql:
        out.print(_run(lambda: api.plan_subscriber_sql(d, p)), markup=False, highlight=False)
        return
    _emit(plan_json(p), as_json, lambda: print_plan(p, out))


@app.command()
@with_backfill_options()
def start(
    table: Tables,
    dsn: Dsn = None,
    migration: Migration = None,
    uuid: Uuid = "v4",
    cascade_deletes: CascadeDeletes = False,
    key_from: KeyFrom = None,
    no_backfill: Annotated[
        bool, typer.Option("--no-backfill", help="Expand only; run `backfill` later.")
    ] = False,
    allow_trigger_side_effects: Annotated[
        bool,
        typer.Option(
            "--allow-trigger-side-effects",
            help="Backfill although it fires user triggers (no session_replication_role privilege).",
        ),
    ] = False,
    subscribers_prepared: Annotated[
        bool,
        typer.Option(
            "--subscribers-prepared",
            help="Publications carry these tables and every subscriber already has the shadow columns.",
        ),
    ] = False,
    reset_sessions: ResetSessions = None,
    uuid_source: UuidSource = None,
    lock_timeout: LockTimeout = 500,
    max_attempts: MaxAttempts = 20,
    retry_for: RetryFor = 60.0,
    metrics_port: MetricsPort = None,
    as_json: Json = False,
    log_format: LogFormat = "console",
    **options: Any,
) -> None:
    """Add shadow UUID columns and dual-write triggers, then backfill (unless --no-backfill)."""
    d = resolve_dsn(dsn)
    settings = _run(
        lambda: StartSettings(
            uuid_version=uuid,
            cascade_deletes=cascade_deletes,
            backfill=not no_backfill,
            allow_trigger_side_effects=allow_trigger_side_effects,
            subscribers_prepared=subscribers_prepared,
            reset_sessions=tuple(reset_sessions or ()),
            key_from=tuple(key_from or ()),
            uuid_source=uuid_source,
        )
    )
    lock = _run(
        lambda: LockSettings(lock_timeout_ms=lock_timeout, max_attempts=max_attempts, retry_for_s=retry_for)
    )
    bf = _backfill_settings(options)
    metrics = _metrics(metrics_port, migration)
    with _progress(not no_backfill) as progress:
        mid = _run(
            lambda: api.start(
                d,
                table,
                migration=migration,
                settings=settings,
                lock=lock,
                backfill_settings=bf,
                metrics=metrics,
                progress=progress,
            ),
            log_format=log_format,
        )
    nxt = "online-uuid backfill" if no_backfill else "online-uuid cutover"
    phase = "expanded" if no_backfill else "backfilled"
    _emit(
        {"migration": mid, "phase": phase, "next": nxt},
        as_json,
        lambda: out.print(
            f"migration {mid}: {phase} on {redact(d) or 'PG* server'}; next: {nxt}", markup=False
        ),
    )


@app.command()
@with_backfill_options()
def backfill(
    dsn: Dsn = None,
    migration: Migration = None,
    metrics_port: MetricsPort = None,
    as_json: Json = False,
    log_format: LogFormat = "console",
    **options: Any,
) -> None:
    """Run or resume the backfill (after `start --no-backfill`, a crash, or Ctrl-C)."""
    d = resolve_dsn(dsn)
    bf = _backfill_settings(options)
    metrics = _metrics(metrics_port, migration)
    with _progress() as progress:
        result = _run(
            lambda: api.backfill(d, migration, settings=bf, metrics=metrics, progress=progress),
            log_format=log_format,
        )
    doc = {"phase": result.phase, "rows": result.total_rows, "seconds": round(result.seconds, 1)}
    _emit(
        doc,
        as_json,
        lambda: out.print(
            f"backfill {doc['phase']}: {doc['rows']} rows in {doc['seconds']} s; next: online-uuid cutover",
            markup=False,
        ),
    )


@app.command()
def status(
    dsn: Dsn = None,
    migration: Migration = None,
    as_json: Json = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every 2 s until Ctrl-C.")] = False,
) -> None:
    """Phase, progress per column, rate, ETA, throttle state, dead tuples, last error."""
    d = resolve_dsn(dsn)
    while True:
        doc = _run(lambda: api.status(d, migration))
        _emit(doc, as_json, lambda doc=doc: print_status(doc, out))  # type: ignore[misc]
        if not watch:
            return
        time.sleep(2)


@app.command()
def pause(dsn: Dsn = None, migration: Migration = None, as_json: Json = False) -> None:
    """Pause the running backfill within one batch (state is kept)."""
    d = resolve_dsn(dsn)
    _run(lambda: api.pause(d, migration))
    _emit({"paused": True}, as_json, lambda: out.print("paused; the backfill stops within one batch"))


@app.command()
def resume(dsn: Dsn = None, migration: Migration = None, as_json: Json = False) -> None:
    """Resume a paused backfill."""
    d = resolve_dsn(dsn)
    _run(lambda: api.resume(d, migration))
    _emit({"paused": False}, as_json, lambda: out.print("resumed"))


@app.command()
@with_backfill_options(*RUNTIME_OPTIONS)
def throttle(
    dsn: Dsn = None,
    migration: Migration = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every runtime override.")] = False,
    **options: Any,
) -> None:
    """Change the running backfill's limits without restarting it (applied within one batch)."""
    d = resolve_dsn(dsn)
    if clear:  # None removes an override: every one this command can set
        _run(lambda: api.throttle(d, migration, **dict.fromkeys(RUNTIME_OPTIONS)))
    else:
        given = _backfill_fields(options)
        if not given:
            raise _fail("give at least one limit (e.g. --max-rows-per-second 500) or --clear", EXIT_REFUSED)
        _run(lambda: api.throttle(d, migration, **given))
    out.print("throttle updated")


@app.command()
def verify(
    ctx: typer.Context,
    dsn: Dsn = None,
    migration: Migration = None,
    repair: Annotated[
        bool,
        typer.Option("--repair", help="Fix the rows that disagree, in throttled batches, then check again."),
    ] = False,
    max_rows_per_second: MaxRowsPerSecond = None,
    target_batch_ms: TargetBatchMs = None,
    as_json: Json = False,
    log_format: LogFormat = "console",
) -> None:
    """Check every shadow key filled and unique and every shadow FK equal to its parent's. Online."""
    d = resolve_dsn(dsn)
    bf = _backfill_settings(ctx.params)
    with _progress(repair and not as_json) as progress:
        report = _run(
            lambda: api.verify(d, migration, repair=repair, settings=bf, progress=progress),
            log_format=log_format,
        )
    _emit(report.to_json(), as_json, lambda: print_verify(report, out))
    if not report.ok:
        if not as_json:
            raise _fail(f"verify failed: {report.first_problem()}", EXIT_FAILURE)
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def cutover(
    dsn: Dsn = None,
    migration: Migration = None,
    check: Annotated[bool, typer.Option("--check", help="Report what would block; lock nothing.")] = False,
    lock_timeout: LockTimeout = 500,
    max_attempts: MaxAttempts = 30,
    retry_for: RetryFor = 120.0,
    statement_timeout: Annotated[
        int, typer.Option("--statement-timeout", help="Milliseconds, inside the swap.")
    ] = 5000,
    terminate_blockers: Annotated[
        bool,
        typer.Option("--terminate-blockers", help="Cancel, then terminate, backends that block the lock."),
    ] = False,
    reset_sessions: ResetSessions = None,
    reset_idle_sessions: Annotated[
        list[str] | None,
        typer.Option(
            "--reset-idle-sessions",
            help="Deprecated: ends only idle sessions of this application_name; use --reset-sessions.",
        ),
    ] = None,
    max_transaction_age: Annotated[
        float,
        typer.Option(
            "--max-transaction-age",
            help="--check: seconds a transaction holding locks on the tables may be old.",
        ),
    ] = 60.0,
    metrics_port: MetricsPort = None,
    as_json: Json = False,
    log_format: LogFormat = "console",
) -> None:
    """Verify, build indexes and constraints online, then swap keys under a lock held for milliseconds."""
    d = resolve_dsn(dsn)
    lock = _run(
        lambda: LockSettings(
            lock_timeout_ms=lock_timeout,
            max_attempts=max_attempts,
            retry_for_s=retry_for,
            statement_timeout_ms=statement_timeout,
        )
    )
    settings = CutoverSettings(
        lock=lock,
        terminate_blockers=terminate_blockers,
        reset_idle_sessions=tuple(reset_idle_sessions or ()),
        reset_sessions=tuple(reset_sessions or ()),
        max_transaction_age_s=max_transaction_age,
    )
    if check:
        problems = _run(lambda: api.cutover_check(d, migration, settings))
        at_risk = _run(lambda: api.cutover_sessions_at_risk(d, migration))
        _emit(
            {"ok": not problems, "problems": problems, "sessions_at_risk": at_risk},
            as_json,
            lambda: print_cutover_check(problems, at_risk, out),
        )
        if problems:
            raise typer.Exit(EXIT_FAILURE)
        return
    metrics = _metrics(metrics_port, migration)
    result = _run(
        lambda: api.cutover(d, migration, settings=settings, metrics=metrics), log_format=log_format
    )
    doc = {
        "lock_held_ms": round(result.lock_held_s * 1000, 1),
        "attempts": result.attempts,
        "terminated": result.blockers_terminated,
        "sessions_reset": result.sessions_reset,
    }
    _emit(
        doc,
        as_json,
        lambda: out.print(
            f"cut over: lock held {doc['lock_held_ms']} ms after {result.attempts} attempt(s); "
            f"{len(result.sessions_reset)} session(s) reset. Sessions holding prepared plans of these "
            "tables get 'cached plan must not change result type' until they reconnect "
            "(--reset-sessions APP; docs/drivers.md). Next: online-uuid finalize, or "
            "online-uuid rollback to go back."
        ),
    )


@app.command()
def rollback(
    dsn: Dsn = None,
    migration: Migration = None,
    lock_timeout: LockTimeout = 500,
    max_attempts: MaxAttempts = 30,
    retry_for: RetryFor = 120.0,
    reset_sessions: ResetSessions = None,
    as_json: Json = False,
    log_format: LogFormat = "console",
) -> None:
    """Before cutover: remove everything start made. After cutover: back to integer keys, losslessly."""
    d = resolve_dsn(dsn)
    lock = _run(
        lambda: LockSettings(lock_timeout_ms=lock_timeout, max_attempts=max_attempts, retry_for_s=retry_for)
    )
    phase = _run(
        lambda: api.rollback(
            d,
            migration,
            lock=lock,
            settings=CutoverSettings(lock=lock, reset_sessions=tuple(reset_sessions or ())),
        ),
        log_format=log_format,
    )
    _emit({"phase": str(phase)}, as_json, lambda: out.print(f"rolled back: phase {phase}"))


@app.command()
def finalize(
    dsn: Dsn = None,
    migration: Migration = None,
    lock_timeout: LockTimeout = 500,
    as_json: Json = False,
    log_format: LogFormat = "console",
) -> None:
    """Drop the retired integer columns and every helper object. After this there is no way back."""
    d = resolve_dsn(dsn)
    _run(
        lambda: api.finalize(d, migration, lock=LockSettings(lock_timeout_ms=lock_timeout)),
        log_format=log_format,
    )
    _emit(
        {"phase": "finalized"},
        as_json,
        lambda: out.print(
            "finalized: integer columns, sequences and triggers dropped; history kept in schema online_uuid"
        ),
    )


@app.command()
def demo(
    dsn: Annotated[
        str | None, typer.Option("--dsn", help="Run in a scratch schema of this database instead.")
    ] = None,
    rows: Annotated[int, typer.Option("--rows", help="Rows in all five tables.")] = 1_000_000,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the server (prints its DSN).")] = False,
    metrics_port: MetricsPort = None,
) -> None:
    """The guide's five MCP tables migrated end to end on a throwaway PostgreSQL, under live load."""
    from .demo.run import run_demo

    code = _run(lambda: run_demo(dsn=dsn, rows=rows, keep=keep, console=out, metrics_port=metrics_port))
    raise typer.Exit(code or 0)


def main() -> None:
    app(prog_name="online-uuid")


if __name__ == "__main__":
    sys.exit(main())  # type: ignore[func-returns-value]
