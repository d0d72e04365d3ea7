"""Connections: application_name on every session, server version checks, transient-error kinds."""

from __future__ import annotations

import psycopg
from psycopg import errors as pgerrors

from .errors import OnlineUuidError, RefusedError
from .settings import redact

MIN_SERVER = 130000  # 13 is best effort; 14-18 are tested
TESTED_SERVERS = (14, 15, 16, 17, 18)


def connect(dsn: str, application_name: str = "online-uuid", autocommit: bool = True) -> psycopg.Connection:
    """Open a session DBAs can recognise in pg_stat_activity; the password never reaches errors."""
    try:
        conn = psycopg.connect(
            dsn, autocommit=autocommit, application_name=application_name, prepare_threshold=None
        )
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnlineUuidError(
            f"cannot connect to {redact(dsn) or 'the server named by PG* variables'}: {first}; "
            "check --dsn / ONLINE_UUID_DSN"
        ) from None
    if conn.info.server_version < MIN_SERVER:
        conn.close()
        raise RefusedError(
            f"PostgreSQL {conn.info.server_version // 10000} is not supported; online-uuid needs 13 or newer"
        )
    return conn


class LockLost(psycopg.OperationalError):
    """The session holding a migration's advisory lock is gone (restart, terminated): take it again."""


TRANSIENT = (
    pgerrors.DeadlockDetected,
    pgerrors.SerializationFailure,
    pgerrors.LockNotAvailable,
    pgerrors.QueryCanceled,
    pgerrors.AdminShutdown,
    pgerrors.CannotConnectNow,
    pgerrors.CrashShutdown,
    psycopg.OperationalError,
)


def error_kind(exc: BaseException) -> str:
    """A short label for metrics and logs (e.g. deadlock, lock_timeout, connection)."""
    if isinstance(exc, LockLost):
        return "lock_lost"
    if isinstance(exc, pgerrors.DeadlockDetected):
        return "deadlock"
    if isinstance(exc, pgerrors.SerializationFailure):
        return "serialization"
    if isinstance(exc, pgerrors.LockNotAvailable):
        return "lock_timeout"
    if isinstance(exc, pgerrors.QueryCanceled):
        return "canceled"
    if isinstance(exc, (pgerrors.AdminShutdown, pgerrors.CrashShutdown, pgerrors.CannotConnectNow)):
        return "server_restart"
    if isinstance(exc, psycopg.OperationalError):
        return "connection"
    return "other"


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT)
