"""The `online_uuid` state schema: migrations, phase transitions by compare-and-set, steps, events."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from . import catalog
from .db import deadline
from .errors import ConcurrentRunError, StateError
from .model import ACTIVE_PHASES, Phase, Plan, TableRef, can_move
from .naming import STATE_SCHEMA, advisory_key
from .templates import render

SCHEMA_VERSION = 2  # 2: secrets (derived UUIDs) and canary (latency budget)
UNLOCK_DEADLINE_S = 10.0


def _t(name: str) -> sql.Identifier:
    return sql.Identifier(STATE_SCHEMA, name)


def schema_exists(conn: psycopg.Connection) -> bool:
    return catalog.read_table_ref(conn, TableRef(STATE_SCHEMA, "migrations")) is not None


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create the state schema, or bring one made by an older online-uuid up to this version.

    state_schema.sql is idempotent, so an upgrade is the same script run again; a state schema
    written by a newer online-uuid is refused.
    """
    if schema_exists(conn) and check_version(conn) == SCHEMA_VERSION:
        return
    with conn.transaction():
        # Two first runs at once: CREATE ... IF NOT EXISTS is not safe against a concurrent creator.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (advisory_key("state-schema"),))
        conn.execute(
            render(
                "state_schema.sql",
                schema=sql.Identifier(STATE_SCHEMA),
                version=sql.Literal(SCHEMA_VERSION),
            )
        )


def new_secret() -> bytes:
    """32 random bytes for a migration's derive functions."""
    return secrets.token_bytes(32)


def read_secret(conn: psycopg.Connection, migration_id: str) -> bytes | None:
    """A derived-mode migration's secret (its start created the table: state schema version 2)."""
    row = conn.execute(
        sql.SQL("SELECT secret FROM {} WHERE migration_id = %s").format(_t("secrets")), (migration_id,)
    ).fetchone()
    return bytes(row[0]) if row and row[0] is not None else None


def forget_secret(conn: psycopg.Connection, migration_id: str) -> None:
    """Finalize: the derive functions are gone, and so is the key they were made from."""
    conn.execute(
        sql.SQL("UPDATE {} SET secret = NULL WHERE migration_id = %s").format(_t("secrets")),
        (migration_id,),
    )


def check_version(conn: psycopg.Connection) -> int:
    """The state schema's version; refused when a newer online-uuid wrote it."""
    row = conn.execute(sql.SQL("SELECT schema_version FROM {}").format(_t("meta"))).fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state schema {STATE_SCHEMA} is version {version}, newer than this online-uuid "
            f"({SCHEMA_VERSION}); upgrade online-uuid"
        )
    return version


@dataclass
class Migration:
    """One migration's row, with its plan decoded."""

    id: str
    phase: Phase
    plan: Plan
    options: dict[str, Any]
    paused: bool
    throttle: dict[str, Any]
    throttle_state: dict[str, Any]
    last_error: str | None
    cutover: dict[str, Any]
    barrier_at: Any = None


def _row_to_migration(row: dict[str, Any]) -> Migration:
    return Migration(
        id=row["id"],
        phase=Phase(row["phase"]),
        plan=Plan.from_json(row["plan"]),
        options=row["options"],
        paused=row["paused"],
        throttle=row["throttle"],
        throttle_state=row["throttle_state"],
        last_error=row["last_error"],
        cutover=row["cutover"],
        barrier_at=row["barrier_at"],
    )


def load(conn: psycopg.Connection, migration_id: str) -> Migration:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT * FROM {} WHERE id = %s").format(_t("migrations")), (migration_id,))
        row = cur.fetchone()
    if row is None:
        raise StateError(f"no migration named {migration_id!r}; `online-uuid status` lists them")
    return _row_to_migration(row)


def list_migrations(conn: psycopg.Connection) -> list[Migration]:
    if not schema_exists(conn):
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT * FROM {} ORDER BY created_at").format(_t("migrations")))
        return [_row_to_migration(r) for r in cur.fetchall()]


def resolve(conn: psycopg.Connection, migration_id: str | None, *, latest_ok: bool = False) -> str:
    """The migration a command acts on: the one named, else the only unfinished one.

    `latest_ok` (status): with none unfinished, the most recent finished one is reported.
    """
    if not schema_exists(conn):
        raise StateError("no online-uuid migration in this database; run `online-uuid start` first")
    if migration_id:
        load(conn, migration_id)
        return migration_id
    active = [m.id for m in list_migrations(conn) if m.phase in ACTIVE_PHASES]
    if len(active) == 1:
        return active[0]
    if not active:
        finished = list_migrations(conn)
        if latest_ok and finished:
            return finished[-1].id
        raise StateError("no unfinished migration in this database; run `online-uuid start` first")
    raise StateError(f"several migrations are unfinished ({', '.join(active)}); pass --migration NAME")


def create(
    conn: psycopg.Connection,
    migration_id: str,
    plan: Plan,
    options: dict[str, Any],
    secret: bytes | None = None,
) -> None:
    """Record a new migration in phase `expanding`; refuse if a table is already in another one."""
    tables = sorted({k.table for k in plan.keys} | {f.table for f in plan.foreign_keys})
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("INSERT INTO {} (id, phase, plan, options) VALUES (%s, %s, %s, %s)").format(
                    _t("migrations")
                ),
                (migration_id, Phase.EXPANDING.value, Jsonb(plan.to_json()), Jsonb(options)),
            )
            for table in tables:
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (migration_id, schema_name, table_name) VALUES (%s, %s, %s)"
                    ).format(_t("migration_tables")),
                    (migration_id, table.schema, table.name),
                )
            if secret is not None:
                conn.execute(
                    sql.SQL("INSERT INTO {} (migration_id, secret) VALUES (%s, %s)").format(_t("secrets")),
                    (migration_id, secret),
                )
    except psycopg.errors.UniqueViolation as exc:
        diag = exc.diag.constraint_name or ""
        if diag == "migrations_pkey":
            raise StateError(
                f"a migration named {migration_id!r} already exists; resume it with "
                "`online-uuid start` on the same tables or pick another --migration name"
            ) from None
        # (this migration's own rows were rolled back with the failed transaction: look up by table)
        owner = conn.execute(
            sql.SQL(
                "SELECT mt.migration_id, mt.schema_name, mt.table_name FROM {} mt "
                "WHERE mt.active AND (mt.schema_name, mt.table_name) IN "
                "(SELECT * FROM unnest(%s::text[], %s::text[])) LIMIT 1"
            ).format(_t("migration_tables")),
            ([t.schema for t in tables], [t.name for t in tables]),
        ).fetchone()
        what = f" ({owner[1]}.{owner[2]} is in migration {owner[0]!r})" if owner else ""
        raise StateError(
            f"another unfinished migration already covers these tables{what}; finish or roll it back first"
        ) from None


def move(conn: psycopg.Connection, migration_id: str, src: Phase | set[Phase], dst: Phase) -> None:
    """Compare-and-set the phase; fails if another run moved it first."""
    sources = {src} if isinstance(src, Phase) else set(src)
    bad = [s for s in sources if not can_move(s, dst)]
    if bad:
        raise StateError(f"cannot move migration {migration_id} from {bad[0]} to {dst}")
    cur = conn.execute(
        sql.SQL(
            "UPDATE {} SET phase = %s, updated_at = clock_timestamp() WHERE id = %s AND phase = ANY(%s)"
        ).format(_t("migrations")),
        (dst.value, migration_id, [s.value for s in sources]),
    )
    if cur.rowcount != 1:
        current = load(conn, migration_id).phase
        raise StateError(
            f"migration {migration_id} is in phase {current}, expected "
            f"{' or '.join(sorted(s.value for s in sources))}; another run may have moved it"
        )
    event(conn, migration_id, "phase", {"to": dst.value})
    if dst in (Phase.FINALIZED, Phase.ROLLED_BACK):
        conn.execute(
            sql.SQL("UPDATE {} SET active = false WHERE migration_id = %s").format(_t("migration_tables")),
            (migration_id,),
        )


def was_cut_over(conn: psycopg.Connection, migration_id: str) -> bool:
    """True once the migration has reached cut_over (also after a rollback that swapped back).

    The phase event is written in the swap's own transaction, so this never disagrees with it.
    """
    row = conn.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE migration_id = %s AND kind = 'phase' "
            "AND detail->>'to' = %s)"
        ).format(_t("events")),
        (migration_id, Phase.CUT_OVER.value),
    ).fetchone()
    return bool(row and row[0])


def step_done(conn: psycopg.Connection, migration_id: str, step_id: str) -> bool:
    row = conn.execute(
        sql.SQL("SELECT 1 FROM {} WHERE migration_id = %s AND step_id = %s").format(_t("steps")),
        (migration_id, step_id),
    ).fetchone()
    return row is not None


def mark_step(conn: psycopg.Connection, migration_id: str, step_id: str) -> None:
    conn.execute(
        sql.SQL("INSERT INTO {} (migration_id, step_id) VALUES (%s, %s) ON CONFLICT DO NOTHING").format(
            _t("steps")
        ),
        (migration_id, step_id),
    )


def forget_steps(conn: psycopg.Connection, migration_id: str, prefix: str) -> None:
    """Steps of a phase that is being undone, so that a later run redoes them."""
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE migration_id = %s AND starts_with(step_id, %s)").format(_t("steps")),
        (migration_id, prefix),
    )


def forget_step(conn: psycopg.Connection, migration_id: str, step_id: str) -> None:
    """One step, so that the next run does it again."""
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE migration_id = %s AND step_id = %s").format(_t("steps")),
        (migration_id, step_id),
    )


def event(conn: psycopg.Connection, migration_id: str, kind: str, detail: dict[str, Any]) -> None:
    conn.execute(
        sql.SQL("INSERT INTO {} (migration_id, kind, detail) VALUES (%s, %s, %s)").format(_t("events")),
        (migration_id, kind, Jsonb(json.loads(json.dumps(detail, default=str)))),
    )


def update(conn: psycopg.Connection, migration_id: str, **fields: Any) -> None:
    """Set columns of the migration row (paused, throttle, throttle_state, last_error, cutover...)."""
    allowed = {"paused", "throttle", "throttle_state", "last_error", "cutover", "barrier_at"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"not a migration field: {sorted(unknown)}")
    assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in fields)
    values = [Jsonb(v) if isinstance(v, dict) else v for v in fields.values()]
    conn.execute(
        sql.SQL("UPDATE {} SET {}, updated_at = clock_timestamp() WHERE id = %s").format(
            _t("migrations"), assignments
        ),
        (*values, migration_id),
    )


def delete(conn: psycopg.Connection, migration_id: str) -> None:
    """Forget a rolled-back migration; drop the schema when nothing else is left in it."""
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(_t("migrations")), (migration_id,))
    left = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_t("migrations"))).fetchone()
    if left and left[0] == 0:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(STATE_SCHEMA)))


# pg_locks rows of a migration's advisory lock (one bound parameter: advisory_key(...)).
LOCK_MATCH = sql.SQL(
    "l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted "
    "AND l.objid = (hashtext(%s)::bigint & 4294967295)::oid"
)


def take_lock(conn: psycopg.Connection, migration_id: str, wait_s: float = 5.0) -> None:
    """Take the migration's session advisory lock on `conn`, or raise ConcurrentRunError naming the holder.

    Waits `wait_s` first: the session of a run killed a moment ago may linger until the server notices.
    """
    key = advisory_key(migration_id)
    deadline = time.monotonic() + wait_s
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
        if (row and row[0]) or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    if row and row[0]:
        return
    raise ConcurrentRunError(
        f"another online-uuid run is working on migration {migration_id}{lock_holder(conn, migration_id)}; "
        "wait for it or stop it"
    )


def lock_holder(conn: psycopg.Connection, migration_id: str) -> str:
    """' (pid N, application)' of the session holding the migration's lock, or ''."""
    holder = catalog.read_advisory_holder(conn, advisory_key(migration_id))
    return f" (pid {holder.pid}, {holder.application_name or 'no application_name'})" if holder else ""


def holds_lock(conn: psycopg.Connection, migration_id: str) -> bool:
    """Whether this session holds the migration's advisory lock (False if the session is gone)."""
    row = conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE {} AND l.pid = pg_backend_pid())").format(
            LOCK_MATCH
        ),
        (advisory_key(migration_id),),
    ).fetchone()
    return bool(row and row[0])


@contextmanager
def migration_lock(conn: psycopg.Connection, migration_id: str, wait_s: float = 5.0) -> Iterator[None]:
    """Session advisory lock: one online-uuid process per migration at a time.

    A session lost meanwhile (server restart) took its lock with it: nothing is left to release.
    """
    take_lock(conn, migration_id, wait_s)
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            # (a stalled connection must not hang the command's exit: closing it frees the lock too)
            with suppress(psycopg.OperationalError), deadline(conn, UNLOCK_DEADLINE_S):
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (advisory_key(migration_id),))
