"""Frozen option sets for each phase; every option is also an ONLINE_UUID_* environment variable."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import RefusedError


def resolve_dsn(dsn: str | None) -> str:
    """--dsn, else ONLINE_UUID_DSN, else DATABASE_URL, else "" (libpq then reads PG* variables)."""
    for value in (dsn, os.environ.get("ONLINE_UUID_DSN"), os.environ.get("DATABASE_URL")):
        if value:
            return value
    return ""


def redact(dsn: str) -> str:
    """A DSN fit for output: the password is never shown."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "<unparsable dsn>"
    if "password" in parts:
        parts["password"] = "***"
    return make_conninfo(**{k: str(v) for k, v in parts.items()})


@dataclass(frozen=True)
class LockSettings:
    """How DDL waits for locks: short timeout, retried with backoff and jitter."""

    lock_timeout_ms: int = 500
    max_attempts: int = 20
    retry_for_s: float = 60.0
    statement_timeout_ms: int = 5000

    def __post_init__(self) -> None:
        if self.lock_timeout_ms <= 0:
            raise RefusedError("--lock-timeout must be a positive number of milliseconds")
        if self.max_attempts < 1:
            raise RefusedError("--max-attempts must be at least 1")


@dataclass(frozen=True)
class StartSettings:
    uuid_version: str = "v4"
    cascade_deletes: bool = False
    backfill: bool = True
    allow_trigger_side_effects: bool = False  # let the backfill fire user triggers (no replica role)
    subscribers_prepared: bool = False  # the subscribers of publications carrying the tables are ready
    reset_sessions: tuple[str, ...] = ()  # application_names whose sessions end once the columns exist
    key_from: tuple[str, ...] = ()  # TABLE.COLUMN: adopt an existing uuid column as the new key
    uuid_source: str | None = None  # None: "derived" for v4, "random" for v7

    def __post_init__(self) -> None:
        if self.uuid_version not in ("v4", "v7"):
            raise RefusedError(f"--uuid {self.uuid_version}: choose v4 or v7")
        check_uuid_source(self.uuid_source, self.uuid_version)

    @property
    def source(self) -> str:
        return effective_uuid_source(self.uuid_source, self.uuid_version)


def check_uuid_source(source: str | None, uuid_version: str) -> None:
    """Refuse an unknown source, and derived v7 (a derived UUID carries no timestamp)."""
    if source not in (None, "derived", "random"):
        raise RefusedError(f"--uuid-source {source}: choose derived or random")
    if source == "derived" and uuid_version == "v7":
        raise RefusedError(
            "--uuid-source derived cannot make v7 UUIDs (they carry the time a row gets its UUID); "
            "drop --uuid-source, or pass --uuid-source random"
        )


def effective_uuid_source(source: str | None, uuid_version: str) -> str:
    """The default is derived for v4; v7 keys are generated, so they always use the random source."""
    check_uuid_source(source, uuid_version)
    return source or ("random" if uuid_version == "v7" else "derived")


@dataclass(frozen=True)
class BackfillSettings:
    """Pacing of the backfill; the runtime-tunable ones can also change through `throttle`."""

    target_batch_ms: int = 50
    min_batch_size: int = 100
    max_batch_size: int = 50_000
    initial_batch_size: int = 1_000
    max_rows_per_second: float | None = None
    max_replication_lag_s: float = 10.0
    max_wal_rate_bytes: float | None = None
    max_active_sessions: int | None = None
    throttle_query: str | None = None
    nice_ratio: float = 0.0
    replica_dsns: tuple[str, ...] = ()
    vacuum_every_pct: float = 5.0
    workers: int = 1
    barrier_timeout_s: float = 3600.0
    max_latency_impact: float | None = None  # canary p99 <= F x idle; None or 0 = off
    retry_for_s: float = 300.0  # lost connections, restarts, cancellations: retried this long
    stall_timeout_s: float = 30.0  # no answer this long past a batch's statement timeout: cut off

    def __post_init__(self) -> None:
        if not 0 < self.min_batch_size <= self.max_batch_size:
            raise RefusedError("--min-batch-size must be positive and at most --max-batch-size")
        if self.target_batch_ms <= 0:
            raise RefusedError("--target-batch-ms must be positive")
        if self.nice_ratio < 0:
            raise RefusedError("--nice-ratio must be zero or positive")
        if self.retry_for_s < 0 or self.stall_timeout_s <= 0:
            raise RefusedError("--retry-for must be zero or positive and --stall-timeout positive")
        if self.workers < 1:
            raise RefusedError("--workers must be at least 1")
        if self.max_latency_impact and self.max_latency_impact <= 1:
            raise RefusedError(
                f"--max-latency-impact {self.max_latency_impact:g}: give a factor above 1 "
                "(1.5 = the canary's p99 at most 1.5 x idle), or 0 for no budget"
            )


@dataclass(frozen=True)
class CutoverSettings:
    lock: LockSettings = LockSettings()
    terminate_blockers: bool = False
    reset_idle_sessions: tuple[str, ...] = ()  # deprecated: reset_sessions ends busy ones too
    reset_sessions: tuple[str, ...] = ()  # application_names whose sessions end right after the swap
    max_transaction_age_s: float = 60.0
