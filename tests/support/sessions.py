"""Waiting and server sessions: poll a condition, find, wait for and end backends."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg


def wait_for(
    cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition", every: float = 0.05
) -> Any:
    """Poll `cond()` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def backends(conn: psycopg.Connection, app_prefix: str) -> list[tuple[int, str, str | None]]:
    """(pid, application_name, wait_event_type) of this database's sessions named app_prefix*."""
    return [
        (int(r[0]), str(r[1]), r[2])
        for r in conn.execute(
            "SELECT pid, application_name, wait_event_type FROM pg_stat_activity "
            "WHERE datname = current_database() AND starts_with(application_name, %s) "
            "AND pid <> pg_backend_pid()",
            (app_prefix,),
        ).fetchall()
    ]


def waiting_on_lock(conn: psycopg.Connection, app_prefix: str, query_has: str = "") -> bool:
    """Whether a session named app_prefix* waits for a lock (in a statement containing query_has)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND starts_with(application_name, %s) AND wait_event_type = 'Lock' AND strpos(query, %s) > 0",
        (app_prefix, query_has),
    ).fetchone()
    return bool(row and row[0])


def end_backends(conn: psycopg.Connection, app_prefix: str, timeout: float = 30.0) -> None:
    """What the server does when it notices a killed client: end its sessions (and wait until gone)."""
    for pid, _, _ in backends(conn, app_prefix):
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_for(lambda: not backends(conn, app_prefix), timeout, f"sessions {app_prefix}* to end")
