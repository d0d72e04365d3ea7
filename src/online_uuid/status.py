"""The `online-uuid status` report: phase, per-job progress, throttle, barrier, cutover, events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from . import catalog, state
from .backfill import batch
from .backfill.signals import read_dead_tuples
from .backfill.throttle import eta_seconds, key_fraction
from .naming import STATE_SCHEMA

RECENT_EVENTS = 10
FRESH_S = 60.0  # a published rate older than this is stale (the backfill is not running)


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _job_status(row: dict[str, Any], rates: dict[str, Any], fresh: bool) -> dict[str, Any]:
    done = row["finished_at"] is not None
    frac = 1.0 if done else key_fraction(row["min_key"], row["max_key"], row["next_key"])
    remaining = 0 if done else int(row["rows_estimate"] * (1 - frac))
    rate = rates.get(row["job_id"]) if fresh else None
    if rate is None and row["started_at"] and row["rows_done"]:
        end = row["finished_at"] or row["updated_at"]
        secs = (end - row["started_at"]).total_seconds()
        rate = row["rows_done"] / secs if secs > 0 else None
    return {
        "job_id": row["job_id"],
        "kind": row["kind"],
        "label": f"{row['schema_name']}.{row['table_name']}.{row['shadow_name']}",
        "table": f"{row['schema_name']}.{row['table_name']}",
        "column": row["column_name"],
        "shadow": row["shadow_name"],
        "state": "done" if done else ("running" if row["started_at"] else "pending"),
        "fraction": round(frac, 4),
        "percent": round(100 * frac, 2),
        "rows_done": row["rows_done"],
        "rows_remaining": remaining,
        "rows_estimate": row["rows_estimate"],
        "batches": row["batches"],
        "batch_size": row["batch_size"],
        "rate": round(rate, 1) if rate else None,
        "eta_s": None if done else _round(eta_seconds(remaining, rate)),
        "min_key": row["min_key"],
        "max_key": row["max_key"],
        "next_key": row["next_key"],
        "vacuumed_at_percent": row["vacuumed_at_pct"],
        "started_at": _iso(row["started_at"]),
        "finished_at": _iso(row["finished_at"]),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _events(conn: psycopg.Connection, mid: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL(
                "SELECT at, kind, detail FROM {} WHERE migration_id = %s ORDER BY id DESC LIMIT %s"
            ).format(sql.Identifier(STATE_SCHEMA, "events")),
            (mid, RECENT_EVENTS),
        )
        return [{**r, "at": _iso(r["at"])} for r in reversed(cur.fetchall())]


def _dead_tuples(conn: psycopg.Connection, m: state.Migration) -> dict[str, int]:
    out: dict[str, int] = {}
    for table in m.plan.tables():
        oid = catalog.read_table_ref(conn, table)
        if oid is not None:
            out[table.display()] = read_dead_tuples(conn, oid)
    return out


def _is_fresh(ts: dict[str, Any]) -> bool:
    at = ts.get("updated_at")
    if not at:
        return False
    age = datetime.now(UTC) - datetime.fromisoformat(at)
    return age.total_seconds() < FRESH_S


def status(conn: psycopg.Connection, mid: str) -> dict[str, Any]:
    """A stable, JSON-able report of the migration's backfill (`online-uuid status --json`)."""
    m = state.load(conn, mid)
    ts = dict(m.throttle_state or {})
    fresh = _is_fresh(ts)
    jobs = [_job_status(r, ts.get("rates", {}), fresh) for r in batch.load_all(conn, mid)]
    done = sum(j["rows_done"] for j in jobs)
    remaining = sum(j["rows_remaining"] for j in jobs)
    weights = [max(j["rows_estimate"], 1) for j in jobs]
    percent = sum(j["percent"] * w for j, w in zip(jobs, weights, strict=True)) / (sum(weights) or 1)
    rate = ts.get("rate_rows_per_s") if fresh else None
    fk_started = any(j["kind"] == "fk" and j["state"] != "pending" for j in jobs)
    all_done = bool(jobs) and all(j["state"] == "done" for j in jobs)
    return {
        "migration": m.id,
        "phase": m.phase.value,
        "uuid_source": m.plan.uuid_source,
        "paused": m.paused,
        "last_error": m.last_error,
        "progress": {
            "percent": 100.0 if all_done else round(min(100.0, percent), 2),
            "rows_done": done,
            "rows_remaining": remaining,
            "rate": round(rate, 1) if rate else None,
            "eta_s": _round(eta_seconds(remaining, rate)),
        },
        "jobs": jobs,
        "throttle": {
            "overrides": m.throttle,
            "throttled": bool(ts.get("throttled")) and fresh,
            "reasons": ts.get("reasons", []) if fresh else [],
            "details": ts.get("details", {}) if fresh else {},
            "replication_lag_s": ts.get("replication_lag_s", {}),
            "long_transactions": ts.get("long_transactions", []),
            "latency_budget": ts.get("latency_budget") if fresh else None,
            "updated_at": ts.get("updated_at"),
        },
        "barrier": {
            "at": _iso(m.barrier_at),
            "passed": fk_started or all_done,
            "waiting_on": ts.get("barrier_waiting_on", []) if fresh else [],
        },
        "cutover": m.cutover,
        "dead_tuples": _dead_tuples(conn, m),
        "events": _events(conn, mid),
    }
