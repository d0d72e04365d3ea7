"""Runtime control of a running backfill: pause, resume, throttle (read before every batch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .. import state
from ..errors import StateError
from ..naming import STATE_SCHEMA
from .throttle import validate_overrides


@dataclass
class Runtime:
    """What a running backfill re-reads before each batch."""

    phase: str
    paused: bool
    throttle: dict[str, Any]


def _migrations() -> sql.Identifier:
    return sql.Identifier(STATE_SCHEMA, "migrations")


def read_runtime(conn: psycopg.Connection, mid: str) -> Runtime:
    row = conn.execute(
        sql.SQL("SELECT phase, paused, throttle FROM {} WHERE id = %s").format(_migrations()),
        (mid,),
    ).fetchone()
    if row is None:
        raise StateError(f"migration {mid!r} disappeared while backfilling")
    return Runtime(row[0], bool(row[1]), dict(row[2] or {}))


def pause(conn: psycopg.Connection, mid: str) -> None:
    """The backfill stops before its next batch (within one batch) until resumed."""
    state.load(conn, mid)
    with conn.transaction():
        state.update(conn, mid, paused=True)
        state.event(conn, mid, "paused", {})


def resume(conn: psycopg.Connection, mid: str) -> None:
    state.load(conn, mid)
    with conn.transaction():
        state.update(conn, mid, paused=False)
        state.event(conn, mid, "resumed", {})


def set_throttle(conn: psycopg.Connection, mid: str, **limits: Any) -> dict[str, Any]:
    """Override BackfillSettings fields at runtime; a None value removes that override.

    Returns the overrides now in force. Applied by a running backfill before its next batch.
    """
    validate_overrides({k: v for k, v in limits.items()})
    state.load(conn, mid)
    setting = {k: list(v) if isinstance(v, tuple) else v for k, v in limits.items() if v is not None}
    removing = [k for k, v in limits.items() if v is None]
    with conn.transaction():
        row = conn.execute(
            sql.SQL(
                "UPDATE {} SET throttle = (throttle || %s) - %s::text[], "
                "updated_at = clock_timestamp() WHERE id = %s RETURNING throttle"
            ).format(_migrations()),
            (Jsonb(setting), removing, mid),
        ).fetchone()
        state.event(conn, mid, "throttle", {"set": setting, "removed": removing})
    return dict(row[0]) if row else {}
