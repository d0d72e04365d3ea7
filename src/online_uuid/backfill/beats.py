"""The canary's beats, in a process of their own (the latency guard starts `main()` here).

A canary thread beside the workers measured them as well as the server: in one backfill at a fixed
20k rows/s, the same beat showed a p99 of 2.1-2.8 x its idle one from a thread of the backfill's
process and 1.4-1.7 x from a process of its own (the workers' Python time and the GIL). So the
beats run here, and the parent only reads their latencies.

Protocol, one JSON object per line. stdin: first `{"dsn", "mid"}`, then nothing; the beats stop
when stdin closes (the parent ended, or died). stdout: `{"due", "s"}` per beat (its scheduled
start on the monotonic clock, which every process of the machine shares, and its latency counted
from then), `{"error"}` when a beat or the connection fails (retried a second later).
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from .. import db, state
from ..errors import OnlineUuidError
from ..naming import STATE_SCHEMA, application_name

INTERVAL_S = 0.02  # 50 beats per second
TIMEOUT_MS = 5000  # a beat that takes longer is cancelled and counted as this long
MAX_BACKLOG_S = 1.0  # beats queued behind a stall longer than this are dropped, not run in a burst


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


def _open(dsn: str, mid: str) -> psycopg.Connection:
    conn = db.connect(dsn, application_name(mid, "canary"))
    state.ensure_schema(conn)  # a migration started by an older online-uuid has no canary table
    conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(TIMEOUT_MS),))
    conn.autocommit = False
    return conn


def _forget(conn: psycopg.Connection | None, mid: str) -> None:
    """The beats end: remove the heartbeat row (best effort) and close the session."""
    if conn is None or conn.closed:
        return
    try:
        conn.rollback()
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE migration_id = %s").format(sql.Identifier(STATE_SCHEMA, "canary")),
            (mid,),
        )
        conn.commit()
    except psycopg.Error:
        pass
    conn.close()


def _emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def run(dsn: str, mid: str, stop: threading.Event) -> None:
    """Beat every INTERVAL_S until `stop`; latencies count from the scheduled start."""
    conn: psycopg.Connection | None = None
    due = time.monotonic()
    try:
        while not stop.is_set():
            wait = due - time.monotonic()
            if wait > 0 and stop.wait(wait):
                break
            try:
                if conn is None or conn.closed:
                    conn = _open(dsn, mid)
                beat(conn, mid)
                _emit({"due": due, "s": time.monotonic() - due})
            except (psycopg.Error, OnlineUuidError) as exc:
                if isinstance(exc, psycopg.errors.QueryCanceled):
                    _emit({"due": due, "s": TIMEOUT_MS / 1000})
                _emit({"error": db.first_line(exc)})
                if conn is not None:
                    conn.close()
                conn = None
                stop.wait(1.0)
            # Beats queued behind a slow one run at once and count their wait, as an application's
            # requests would; after a long gap (an error, a reconnect) the schedule starts afresh.
            due += INTERVAL_S
            if time.monotonic() - due > MAX_BACKLOG_S:
                due = time.monotonic()
    finally:
        _forget(conn, mid)


def main() -> None:
    cfg = json.loads(sys.stdin.readline())
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns when the parent closes it or exits
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    with contextlib.suppress(BrokenPipeError):  # the parent is gone
        run(cfg["dsn"], cfg["mid"], stop)


if __name__ == "__main__":
    main()
