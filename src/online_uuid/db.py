"""Connections: application_name on every session, server version checks, transient-error kinds."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import OnlineUuidError, RefusedError
from .settings import redact

MIN_SERVER = 130000  # 13 is best effort; 14-18 are tested
TESTED_SERVERS = (14, 15, 16, 17, 18)


# What every session of the tool sets for itself, whatever the database or role configure for the
# application (ALTER DATABASE/ROLE ... SET): no statement limit (each batch and each DDL sets its own
# with SET LOCAL), no lock wait limit by default (each DDL sets its short one), and never ended for
# idling. (minimum server version, setting, value)
SESSION_SETTINGS: tuple[tuple[int, str, str], ...] = (
    (0, "statement_timeout", "0"),
    (0, "lock_timeout", "0"),
    (0, "idle_in_transaction_session_timeout", "0"),
    (140000, "idle_session_timeout", "0"),
    (170000, "transaction_timeout", "0"),
)

# A connection that stalls without closing (a dead peer, a half-open NAT entry) is noticed by TCP
# keepalives and tcp_user_timeout instead of hanging forever; a DSN's own values win.
NETWORK_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


def session_default(name: str) -> str:
    """The tool's own value of `name` (to restore it; RESET would go back to the database's)."""
    for _, setting, value in SESSION_SETTINGS:
        if setting == name:
            return value
    raise KeyError(name)


def restore(conn: psycopg.Connection, name: str) -> None:
    """Put `name` back to the tool's own session value after a temporary SET."""
    conn.execute("SELECT set_config(%s, %s, false)", (name, session_default(name)))


def _apply_session_settings(conn: psycopg.Connection) -> None:
    version = conn.info.server_version
    wanted = [(n, v) for since, n, v in SESSION_SETTINGS if version >= since]
    conn.execute(
        "SELECT set_config(n, v, false) FROM unnest(%s::text[], %s::text[]) AS s(n, v)",
        ([n for n, _ in wanted], [v for _, v in wanted]),
    )
    if not conn.autocommit:
        conn.commit()


def _network_options(dsn: str) -> dict[str, str]:
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return {}
    return {k: v for k, v in NETWORK_DEFAULTS.items() if k not in given and not os.environ.get(_ENV[k], "")}


_ENV = {
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "keepalives": "PGKEEPALIVES",
    "keepalives_idle": "PGKEEPALIVESIDLE",
    "keepalives_interval": "PGKEEPALIVESINTERVAL",
    "keepalives_count": "PGKEEPALIVESCOUNT",
    "tcp_user_timeout": "PGTCPUSERTIMEOUT",
}


def first_line(exc: BaseException) -> str:
    """An error's first line (server errors carry DETAIL and HINT lines), or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(dsn: str, application_name: str = "online-uuid", autocommit: bool = True) -> psycopg.Connection:
    """Open a session DBAs can recognise in pg_stat_activity; the password never reaches errors.

    The session gets the tool's own timeouts (SESSION_SETTINGS) and TCP keepalives.
    """
    try:
        conn = psycopg.connect(
            make_conninfo(dsn, **_network_options(dsn)),
            autocommit=autocommit,
            application_name=application_name,
            prepare_threshold=None,
        )
    except psycopg.OperationalError as exc:
        raise OnlineUuidError(
            f"cannot connect to {redact(dsn) or 'the server named by PG* variables'}: {first_line(exc)}; "
            "check --dsn / ONLINE_UUID_DSN"
        ) from None
    if conn.info.server_version < MIN_SERVER:
        conn.close()
        raise RefusedError(
            f"PostgreSQL {conn.info.server_version // 10000} is not supported; online-uuid needs 13 or newer"
        )
    _apply_session_settings(conn)
    return conn


class LockLost(psycopg.OperationalError):
    """The session holding a migration's advisory lock is gone (restart, terminated): take it again."""


class Stalled(psycopg.OperationalError):
    """No answer from the server within the client-side deadline (a hung network path or proxy)."""


@contextmanager
def deadline(conn: psycopg.Connection, seconds: float | None) -> Iterator[None]:
    """Cut `conn` off if a call on it gets no answer within `seconds` (None: no limit).

    TCP keepalives and tcp_user_timeout notice a dead peer, but not a path that keeps the connection
    open and acknowledges without answering; shutting the socket down wakes the waiting call, which
    then raises Stalled.
    """
    if seconds is None:
        yield
        return
    fired = threading.Event()

    def sever() -> None:
        fired.set()
        with suppress(OSError, psycopg.Error):
            sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    timer = threading.Timer(seconds, sever)
    timer.daemon = True
    timer.start()
    try:
        yield
    except psycopg.OperationalError as exc:
        if fired.is_set():
            raise Stalled(
                f"no answer from the server in {seconds:.0f} s (a stalled network path or proxy?)"
            ) from exc
        raise
    finally:
        timer.cancel()


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
    if isinstance(exc, Stalled):
        return "stalled"
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
