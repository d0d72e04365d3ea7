"""Expand: shadow UUID columns with defaults and dual-write triggers, each step resumable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
import structlog

from .. import state
from .. import statements as s
from ..backfill import role
from ..catalog import read_column, read_table_ref
from ..errors import RefusedError, StateError
from ..executor import Executor, Step
from ..model import Phase, Plan
from ..plan import build_plan
from ..replication import carries_state_schema, subscriber_ddl
from ..settings import LockSettings, StartSettings

log = structlog.get_logger("online_uuid")


def start_steps(plan: Plan, secret: bytes | None = None) -> list[Step]:
    """Keys first (their defaults serve new parents at once), then the FK columns and triggers.

    Derived mode: the derive functions come first (`secret` None renders a placeholder, for --sql).
    """
    steps: list[Step] = []
    if s.uses_v7_function(plan):
        steps.append(
            Step(
                "start:uuid_v7",
                (s.build_uuid_v7_function(), s.build_grant_generator_usage()),
                description="uuid_v7()",
            )
        )
    if plan.derived:
        stmts = [s.build_derive_function(k, secret) for k in plan.keys]
        steps.append(
            Step("start:derive", (*stmts, *s.build_grant_derive_usage(plan)), description="derive functions")
        )
    for k in plan.keys:
        stmts = [
            s.build_add_column(k.table, k.shadow),
            s.build_set_default(k.table, k.shadow, s.generator(plan)),
            *s.build_drop_key_triggers(k),
            *(s.build_derived_key_triggers(k) if plan.derived else s.build_key_triggers(plan, k)),
            s.build_enable_always_triggers([k.table]),
        ]
        steps.append(
            Step(f"start:key:{k.key}", tuple(stmts), (k.table,), description=f"shadow key {k.table}")
        )
    for f in plan.foreign_keys:
        stmts = [
            s.build_add_column(f.table, f.shadow),
            *s.build_drop_fk_triggers(f),
            *(
                s.build_derived_fk_triggers(plan, f)
                if plan.derived
                else s.build_fk_triggers(plan, f, "shadow")
            ),
            *s.build_fk_move_trigger(f),
            s.build_enable_always_triggers(f.fk_tables()),
        ]
        steps.append(Step(f"start:fk:{f.key}", tuple(stmts), (f.table,), description=f"shadow FK {f.name}"))
    return steps


def default_migration_name(plan: Plan) -> str:
    return plan.keys[0].table.name


def find_resumable(conn: psycopg.Connection, tables: Sequence[str]) -> state.Migration | None:
    """An unfinished migration covering the first listed table, to resume instead of starting anew."""
    from ..catalog import read_table_by_oid, resolve_table

    oid = resolve_table(conn, tables[0]) if tables else None
    if oid is None or not state.schema_exists(conn):
        return None
    ref = read_table_by_oid(conn, oid).ref
    for m in state.list_migrations(conn):
        if m.phase in (Phase.FINALIZED, Phase.ROLLED_BACK):
            continue
        if any(k.table == ref for k in m.plan.keys):
            return m
    return None


def recheck(conn: psycopg.Connection, plan: Plan) -> None:
    """Refuse to resume when the schema changed under the migration since it started."""
    for k in plan.keys:
        oid = read_table_ref(conn, k.table)
        col = read_column(conn, oid, k.column) if oid is not None else None
        if col is None:
            raise StateError(
                f"{k.table}.{k.column} is gone since the migration started; run `online-uuid rollback`"
            )
    for f in plan.foreign_keys:
        oid = read_table_ref(conn, f.table)
        if oid is None or read_column(conn, oid, f.column) is None:
            raise StateError(
                f"{f.table}.{f.column} is gone since the migration started; run `online-uuid rollback`"
            )


def _check_same_tables(conn: psycopg.Connection, tables: Sequence[str], existing: state.Migration) -> None:
    """Resuming converts exactly the migration's tables; a different list is refused, never ignored."""
    from ..catalog import read_table_by_oid, resolve_table

    asked = set()
    for name in tables:
        oid = resolve_table(conn, name)
        asked.add(read_table_by_oid(conn, oid).ref if oid is not None else name)
    planned = {k.table for k in existing.plan.keys}
    if asked != planned:
        listed = ", ".join(str(t) for t in sorted(planned))
        raise StateError(
            f"unfinished migration {existing.id!r} converts exactly {listed}; rerun start with those tables "
            "to resume it, or finish / roll it back before converting others"
        )


def prepare_migration(
    conn: psycopg.Connection, tables: Sequence[str], migration: str | None, settings: StartSettings
) -> tuple[str, Plan, bool]:
    """(migration id, plan, resumed): a new migration recorded in state, or the unfinished one."""
    existing = find_resumable(conn, tables)
    if existing is not None:
        if migration and migration != existing.id:
            raise StateError(
                f"{tables[0]} is already in unfinished migration {existing.id!r}; resume that one "
                "(--migration) or roll it back"
            )
        _check_same_tables(conn, tables, existing)
        recheck(conn, existing.plan)
        return existing.id, existing.plan, True
    try:
        plan = build_plan(
            conn,
            tables,
            uuid_version=settings.uuid_version,
            cascade_deletes=settings.cascade_deletes,
            key_from=settings.key_from,
            uuid_source=settings.uuid_source,
        )
        fired = plan.backfill_side_effects()
        if fired and not settings.allow_trigger_side_effects:
            raise role.refusal(conn, fired, plan.backfill_replica)
    except RefusedError:
        # Two starts at once: the other one's triggers appeared between our look for a migration
        # and the plan. Resume that migration (its lock then tells whether the other still runs).
        if find_resumable(conn, tables) is not None:
            return prepare_migration(conn, tables, migration, settings)
        raise
    if not settings.subscribers_prepared:
        refuse_unprepared_subscribers(conn, plan)
    mid = migration or default_migration_name(plan)
    state.ensure_schema(conn)
    options: dict[str, Any] = {
        "uuid": settings.uuid_version,
        "cascade_deletes": settings.cascade_deletes,
        "allow_trigger_side_effects": settings.allow_trigger_side_effects,
        "key_from": list(settings.key_from),
        "uuid_source": plan.uuid_source,
    }
    state.create(conn, mid, plan, options, state.new_secret() if plan.derived else None)
    return mid, plan, False


def refuse_unprepared_subscribers(conn: psycopg.Connection, plan: Plan) -> None:
    """A publication carrying a converted table: its subscribers need the shadow columns first."""
    if not plan.publications:
        return
    parts = []
    for pub in plan.publications:
        ddl = "; ".join(st.as_string(conn) for st in subscriber_ddl(plan, pub))
        tables = ", ".join(t.display() for t in pub.tables)
        parts.append(
            f"publication {pub.name} ({pub.scope}) carries {tables}: on each of its subscribers run {ddl}"
        )
    if carries_state_schema(plan):
        parts.append(
            "a FOR ALL TABLES publication also carries online-uuid's state tables: run the script "
            "`online-uuid plan --subscriber-sql` prints on each subscriber instead"
        )
    raise RefusedError(
        "; ".join(parts) + "; then rerun start with --subscribers-prepared (logical replication stops "
        "at the first row with a column its subscriber lacks; see docs/replication.md)"
    )


def run_expand(conn: psycopg.Connection, mid: str, plan: Plan, lock: LockSettings) -> None:
    """Run the expand steps under the migration's advisory lock (caller holds it) and mark it expanded."""
    current = state.load(conn, mid).phase
    if current != Phase.EXPANDING:
        return
    secret = state.read_secret(conn, mid) if plan.derived else None
    if plan.derived and secret is None:
        raise StateError(
            f"migration {mid} uses derived UUIDs but its secret is gone; run `online-uuid rollback`"
        )
    Executor(conn, mid, lock).run_all(start_steps(plan, secret))
    state.move(conn, mid, Phase.EXPANDING, Phase.EXPANDED)
    log.info("expand done", migration=mid, keys=len(plan.keys), foreign_keys=len(plan.foreign_keys))
