"""The run's hold on the migration's advisory lock, taken again on a new session after a restart."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import structlog
from psycopg import sql

from .. import db, state
from ..errors import ConcurrentRunError
from ..naming import advisory_key

log = structlog.get_logger("online_uuid.backfill")

CHECK_DEADLINE_S = 10.0  # the lock check is one tiny query: no answer this long means a stalled path


def build_held_check() -> sql.Composed:
    """An expression, true while session %s (a pid) holds the lock of migration %s (its advisory key)."""
    return sql.SQL("EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = %s AND {})").format(state.LOCK_MATCH)


class LockHolder:
    """Keeps one session holding the migration's advisory lock for the whole run.

    The caller's session normally holds it. When that session is lost (a server restart ends every
    session and frees their locks), `ensure()` takes the lock again on a new session before the run
    writes anything more; if another run took it first, ConcurrentRunError stops this one.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection], mid: str, conn: psycopg.Connection) -> None:
        self._connect, self.mid = connect, mid
        self._conn, self._own = conn, False
        self._mutex = threading.Lock()
        self.pid = conn.info.backend_pid
        self.key = advisory_key(mid)

    def ref(self) -> tuple[int, str]:
        """(pid, advisory key) for a batch to check, in its own transaction, that the lock is held."""
        return self.pid, self.key

    def ensure(self) -> int:
        """The pid of the session holding the lock, after taking it again if it was lost."""
        with self._mutex:
            if not self._alive():
                self._take()
            return self.pid

    def _alive(self) -> bool:
        c = self._conn
        if c.closed or c.broken:
            return False
        try:
            with db.deadline(c, CHECK_DEADLINE_S):
                return state.holds_lock(c, self.mid)
        except psycopg.OperationalError:
            return False

    def _take(self) -> None:
        conn = self._connect()  # ReconnectFailed while the server is still down: retried by the caller
        try:
            # Our old session may still be there, holding the lock (a stalled network path keeps it
            # open on the server): end it, it is ours.
            conn.execute(
                sql.SQL("SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.pid = %s AND {}").format(
                    state.LOCK_MATCH
                ),
                (self.pid, self.key),
            )
            state.take_lock(conn, self.mid)
        except ConcurrentRunError:
            who = state.lock_holder(conn, self.mid)
            conn.close()
            raise ConcurrentRunError(
                f"this run lost the lock of migration {self.mid} with its session (server restart?) and "
                f"another online-uuid run took it{who}; this run stopped without writing more, the other "
                "goes on"
            ) from None
        except BaseException:
            conn.close()
            raise
        self.close()
        self._conn, self._own, self.pid = conn, True, conn.info.backend_pid
        log.warning("took the migration's lock again on a new session", migration=self.mid, pid=self.pid)

    def close(self) -> None:
        """Close a session this holder opened (its lock goes with it); the caller's stays open."""
        if self._own and not self._conn.closed:
            self._conn.close()
