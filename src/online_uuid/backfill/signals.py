"""Reads the server signals the backfill throttles on, each with one small query."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg import sql

from ..db import deadline, is_transient
from ..errors import BackfillError, RefusedError
from ..settings import BackfillSettings, redact
from .throttle import Clock, Signals

log = structlog.get_logger("online_uuid.signals")

CACHE_S = 1.0  # signals are read at most this often, however many workers ask
LONG_XACT_S = 300.0  # transactions older than this are reported (they hold back vacuum)
THROTTLE_QUERY_TIMEOUT = "5s"
READ_GRACE_S = 5.0  # a signal read with no answer for stall_timeout_s + this is cut off (stalled)


def read_standby_lags(conn: psycopg.Connection) -> dict[str, float]:
    """Replay lag of every standby (and logical consumer) streaming from this server."""
    rows = conn.execute(
        "SELECT coalesce(nullif(application_name, ''), client_addr::text, pid::text), "
        "coalesce(extract(epoch FROM replay_lag), 0)::float8 FROM pg_stat_replication"
    ).fetchall()
    return {f"standby:{name}": float(lag) for name, lag in rows}


def read_replica_lag(conn: psycopg.Connection) -> float:
    """Lag seen on a standby itself: 0 when it has replayed everything it received."""
    row = conn.execute(
        "SELECT CASE WHEN coalesce(pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn(), true) "
        "THEN 0 ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) "
        "END::float8"
    ).fetchone()
    return float(row[0]) if row else 0.0


def read_wal_lsn(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint").fetchone()
    return int(row[0]) if row else 0


def read_active_sessions(conn: psycopg.Connection) -> int:
    """Client sessions running a statement right now, ours excluded."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND state = 'active' AND pid <> pg_backend_pid() "
        "AND application_name NOT LIKE 'online-uuid/%'"
    ).fetchone()
    return int(row[0]) if row else 0


def read_throttle_query(conn: psycopg.Connection, query: str) -> float:
    """The user's throttle query, read-only and time-limited; its first value > 0 means wait."""
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('transaction_read_only', 'on', true)")
            conn.execute("SELECT set_config('statement_timeout', %s, true)", (THROTTLE_QUERY_TIMEOUT,))
            # binary=True forces the extended protocol: one statement, never `SELECT 0; COMMIT; ...`.
            row = conn.cursor().execute(sql.SQL(query), binary=True).fetchone()
    except psycopg.Error as exc:
        if is_transient(exc):
            raise
        raise BackfillError(
            f"--throttle-query failed: {str(exc).strip().splitlines()[0]}; fix it with "
            "`online-uuid throttle --throttle-query ...` and run `online-uuid backfill` to resume"
        ) from None
    if not row or row[0] is None:
        return 0.0
    try:
        return float(row[0])
    except (TypeError, ValueError):
        raise BackfillError(
            f"--throttle-query must return a number, got {row[0]!r}; fix it with "
            "`online-uuid throttle --throttle-query ...` and rerun `online-uuid backfill`"
        ) from None


def check_throttle_query(conn: psycopg.Connection, query: str) -> None:
    """Refuse (exit 2) anything but exactly one statement returning a value; executes nothing.

    The server parses and analyses it as an unnamed prepared statement, which cannot hold more than
    one command; at run time it runs read-only (see read_throttle_query).
    """
    from psycopg import pq

    pg = conn.pgconn
    res = pg.prepare(b"", query.encode(conn.info.encoding))
    problem = ""
    if res.status != pq.ExecStatus.COMMAND_OK:
        said = (res.error_message or b"").decode(errors="replace").strip().splitlines()
        problem = said[0] if said else "the server refused it"
    else:
        desc = pg.describe_prepared(b"")
        if desc.status != pq.ExecStatus.COMMAND_OK or desc.nfields < 1:
            problem = "it returns no value"
    if problem:
        raise RefusedError(
            f"--throttle-query {query!r} is refused: {problem}; give exactly one read-only SELECT whose "
            "first value is > 0 while the backfill should wait"
        )


def read_autovacuum(conn: psycopg.Connection, table_oid: int) -> str | None:
    """What autovacuum is doing on the table, if anything (wraparound ones say so)."""
    row = conn.execute(
        "SELECT a.query, p.phase FROM pg_stat_progress_vacuum p JOIN pg_stat_activity a USING (pid) "
        "WHERE p.relid = %s AND (a.backend_type = 'autovacuum worker' "
        "OR a.query LIKE 'autovacuum:%%') LIMIT 1",
        (table_oid,),
    ).fetchone()
    if not row:
        return None
    query, phase = row
    wrap = "to prevent wraparound" in (query or "")
    return f"autovacuum{' (to prevent wraparound)' if wrap else ''}: {phase}"


def read_long_transactions(conn: psycopg.Connection, min_age_s: float) -> list[dict[str, Any]]:
    """Sessions and prepared transactions old enough to hold back vacuum (reported only)."""
    rows = conn.execute(
        "SELECT pid::text, application_name, state, "
        "extract(epoch FROM clock_timestamp() - xact_start)::float8, age(backend_xmin) "
        "FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        "AND xact_start < clock_timestamp() - make_interval(secs => %s) "
        "UNION ALL SELECT 'prepared:' || gid, owner::text, 'prepared', "
        "extract(epoch FROM clock_timestamp() - prepared)::float8, age(transaction) "
        "FROM pg_prepared_xacts WHERE prepared < clock_timestamp() - make_interval(secs => %s) "
        "ORDER BY 4 DESC LIMIT 10",
        (min_age_s, min_age_s),
    ).fetchall()
    return [
        {"pid": p, "application_name": a, "state": s, "age_s": round(age or 0, 1), "xmin_age": x}
        for p, a, s, age, x in rows
    ]


# Sessions waiting on a lock this session holds (asked inside the batch, before its commit).
BLOCKED_BY_ME = sql.SQL(
    "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE CASE WHEN wait_event_type = 'Lock' "
    "THEN pg_catalog.pg_backend_pid() = ANY(pg_catalog.pg_blocking_pids(pid)) ELSE false END"
)


def read_dead_tuples(conn: psycopg.Connection, table_oid: int) -> int:
    row = conn.execute("SELECT n_dead_tup FROM pg_stat_all_tables WHERE relid = %s", (table_oid,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


# Like CREATE INDEX CONCURRENTLY, the barrier identifies transactions by the virtualxid lock each
# one holds on itself: pg_locks shows every role's locks to every role, whereas pg_stat_activity
# hides other roles' state and xact_start from a tool without pg_read_all_stats.
_VXIDS = (
    "SELECT l.virtualxid FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'virtualxid' AND l.mode = 'ExclusiveLock' AND l.granted "
    "AND l.pid <> pg_backend_pid() AND a.datname = current_database() "
    "AND a.backend_type IS DISTINCT FROM 'autovacuum worker' ORDER BY 1"
)


def read_open_transactions(conn: psycopg.Connection) -> list[str]:
    """Virtualxids of every transaction running now in this database (any role; ours excluded)."""
    return [str(r[0]) for r in conn.execute(_VXIDS).fetchall()]


def read_barrier_waiters(
    conn: psycopg.Connection, barrier_at: datetime, vxids: list[str] | None = None
) -> list[dict[str, Any]]:
    """Transactions open at the barrier (`vxids`) that still run, and prepared ones older than it.

    What pg_stat_activity hides from this role shows as None: state "not visible (needs
    pg_read_all_stats)"; age_s is then the time since the barrier, a lower bound.
    """
    if vxids is None:
        vxids = read_open_transactions(conn)
    rows = conn.execute(
        "SELECT l.pid::text, a.application_name, a.usename::text, "
        "coalesce(a.state, 'not visible (needs pg_read_all_stats)'), "
        "extract(epoch FROM clock_timestamp() - coalesce(a.xact_start, %s))::float8, l.virtualxid "
        "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'virtualxid' AND l.mode = 'ExclusiveLock' AND l.granted "
        "AND l.virtualxid = ANY(%s::text[]) AND l.pid <> pg_backend_pid() "
        "UNION ALL SELECT 'prepared:' || gid, NULL, owner::text, 'prepared', "
        "extract(epoch FROM clock_timestamp() - prepared)::float8, NULL FROM pg_prepared_xacts "
        "WHERE database = current_database() AND prepared < %s ORDER BY 5 DESC",
        (barrier_at, vxids, barrier_at),
    ).fetchall()
    return [
        {"pid": p, "application_name": a, "user": u, "state": s, "age_s": round(age or 0, 1), "vxid": v}
        for p, a, u, s, age, v in rows
    ]


@dataclass
class _Cached:
    at: float = float("-inf")
    signals: Signals = field(default_factory=Signals)


class SignalReader:
    """Shared by the workers: one monitoring session, one per replica, results cached briefly."""

    def __init__(
        self, connect: Callable[[str | None], psycopg.Connection], clock: Clock = time.monotonic
    ) -> None:
        self._connect = connect  # None: the primary; else a replica DSN
        self._clock = clock
        self._lock = threading.Lock()
        self._conns: dict[str | None, psycopg.Connection] = {}
        self._cache = _Cached()
        self._autovac: dict[int, tuple[float, str | None]] = {}
        self._wal: tuple[float, int] | None = None
        self._wal_rate: float | None = None
        self._warned: dict[str, float] = {}
        self._deadline_s = BackfillSettings().stall_timeout_s + READ_GRACE_S

    def _conn(self, dsn: str | None = None) -> psycopg.Connection:
        conn = self._conns.get(dsn)
        if conn is None or conn.closed or conn.broken:
            conn = self._connect(dsn)
            self._conns[dsn] = conn
        return conn

    def read(self, lim: BackfillSettings, table: int | None = None) -> Signals:
        """Signals as of at most CACHE_S ago, plus autovacuum on `table` (an oid)."""
        with self._lock:
            now = self._clock()
            self._deadline_s = lim.stall_timeout_s + READ_GRACE_S
            try:
                if now - self._cache.at >= CACHE_S:
                    self._cache = _Cached(now, self._read_all(lim, now))
                sig = Signals(**vars(self._cache.signals))
                if table is not None:
                    sig.autovacuum = self._read_autovacuum(table, now)
            except psycopg.Error:
                self._drop(None)
                raise
            return sig

    def _read_all(self, lim: BackfillSettings, now: float) -> Signals:
        conn = self._conn()
        with deadline(conn, self._deadline_s):
            return self._read_all_on(conn, lim, now)

    def _read_all_on(self, conn: psycopg.Connection, lim: BackfillSettings, now: float) -> Signals:
        sig = Signals(replication_lag_s=read_standby_lags(conn))
        sig.replication_lag_s.update(self._replica_lags(lim.replica_dsns))
        sig.wal_rate_bytes = self._read_wal_rate(conn, now)
        if lim.max_active_sessions is not None:
            sig.active_sessions = read_active_sessions(conn)
        if lim.throttle_query:
            sig.throttle_query_value = read_throttle_query(conn, lim.throttle_query)
        sig.long_transactions = read_long_transactions(conn, LONG_XACT_S)
        return sig

    def _read_wal_rate(self, conn: psycopg.Connection, now: float) -> float | None:
        lsn = read_wal_lsn(conn)
        if self._wal is not None and now - self._wal[0] > 0:
            self._wal_rate = max(0.0, (lsn - self._wal[1]) / (now - self._wal[0]))
        self._wal = (now, lsn)
        return self._wal_rate

    def _replica_lags(self, dsns: tuple[str, ...]) -> dict[str, float]:
        lags: dict[str, float] = {}
        for dsn in dsns:
            name = f"replica:{redact(dsn)}"
            try:
                conn = self._conn(dsn)
                with deadline(conn, self._deadline_s):
                    lags[name] = read_replica_lag(conn)
            except Exception as exc:
                self._drop(dsn)
                self._warn(name, f"cannot read replication lag of {name}: {exc}")
        return lags

    def _read_autovacuum(self, oid: int, now: float) -> str | None:
        at, what = self._autovac.get(oid, (float("-inf"), None))
        if now - at >= CACHE_S:
            conn = self._conn()
            with deadline(conn, self._deadline_s):
                what = read_autovacuum(conn, oid)
            self._autovac[oid] = (now, what)
        return what

    def _warn(self, key: str, message: str) -> None:
        now = self._clock()
        if now - self._warned.get(key, float("-inf")) >= 60:
            self._warned[key] = now
            log.warning(message)

    def _drop(self, dsn: str | None) -> None:
        conn = self._conns.pop(dsn, None)
        if conn is not None and not conn.closed:
            conn.close()

    def close(self) -> None:
        with self._lock:
            for dsn in list(self._conns):
                self._drop(dsn)
