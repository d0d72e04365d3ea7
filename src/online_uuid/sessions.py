"""Client sessions whose prepared statements a phase breaks: which are at risk, and ending them."""

from __future__ import annotations

from typing import Any

import psycopg
import structlog

from . import catalog
from .model import Plan

log = structlog.get_logger("online_uuid")


def reset(conn: psycopg.Connection, applications: tuple[str, ...], idle_only: bool = False) -> list[int]:
    """End the sessions of the named applications (idle or busy), right after the swap committed.

    Their prepared statements still return the old column types ("cached plan must not change result
    type" on every execution); a pool replaces a terminated connection, not one that merely errors.
    """
    if not applications:
        return []
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND application_name = ANY(%s) "
        "AND NOT starts_with(application_name, 'online-uuid/') AND pid <> pg_backend_pid() "
        "AND (NOT %s OR state = 'idle') AND pg_terminate_backend(pid)",
        (list(applications), idle_only),
    ).fetchall()
    pids = [int(r[0]) for r in rows]
    log.info("ended sessions so they drop their prepared plans", applications=list(applications), pids=pids)
    return pids


def at_risk(conn: psycopg.Connection, plan: Plan) -> list[dict[str, Any]]:
    """Client sessions of roles with privileges on a converted table (ours excluded): their prepared
    statements on these tables fail after the swap until the session resets."""
    oids = [o for t in plan.tables() if (o := catalog.read_table_ref(conn, t)) is not None]
    rows = conn.execute(
        "SELECT a.pid, a.application_name, a.usename, a.state FROM pg_stat_activity a "
        "WHERE a.datname = current_database() AND a.backend_type = 'client backend' "
        "AND a.pid <> pg_backend_pid() AND NOT starts_with(a.application_name, 'online-uuid/') "
        "AND EXISTS (SELECT 1 FROM unnest(%s::oid[]) AS t(oid) "
        "WHERE has_table_privilege(a.usesysid, t.oid, 'SELECT, INSERT, UPDATE, DELETE')) "
        "ORDER BY a.application_name, a.pid",
        (oids,),
    ).fetchall()
    return [{"pid": int(p), "application_name": a or "", "role": u, "state": st} for p, a, u, st in rows]
