"""One backfill batch as one short transaction, and the job cursors it moves in the same commit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ..db import LockLost, restore
from ..model import BackfillJob
from ..naming import STATE_SCHEMA
from ..statements import derive_fn, derived_mismatch
from . import ctid
from .keyset import build_upper_bound
from .lock import build_held_check
from .signals import BLOCKED_BY_ME

LOCK_TIMEOUT = "2s"
# A batch whose client stops answering mid-transaction (a stalled network) must not keep its row
# locks: the server ends the session after this long idle in the batch's transaction.
IDLE_IN_TRANSACTION_TIMEOUT = "30s"
INT8_MAX = 2**63 - 1


def _backfill_table() -> sql.Identifier:
    return sql.Identifier(STATE_SCHEMA, "backfill")


@dataclass
class JobState:
    """A job's row in online_uuid.backfill."""

    job_id: str
    min_key: int | None
    max_key: int | None
    next_key: int | None
    rows_done: int
    rows_estimate: int
    batch_size: int | None
    batches: int
    vacuumed_at_pct: float
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def done(self) -> bool:
        return self.finished_at is not None


@dataclass
class BatchResult:
    rows: int
    hi: int | None
    blocked: int
    finished: bool


def estimate_rows(conn: psycopg.Connection, job: BackfillJob) -> int:
    """The planner's row estimate (reltuples scaled to the current size): cheap, no scan."""
    plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {}").format(job.table.ident)).fetchone()
    assert plan is not None
    doc = plan[0] if isinstance(plan[0], list) else json.loads(plan[0])
    return int(doc[0]["Plan"]["Plan Rows"])


def register(conn: psycopg.Connection, mid: str, job: BackfillJob) -> None:
    """Add the job's row once; a rerun keeps the existing one (and its cursor)."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (migration_id, job_id, kind, schema_name, table_name, column_name, "
            "shadow_name, rows_estimate) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (migration_id, job_id) DO NOTHING"
        ).format(_backfill_table()),
        (
            mid,
            job.job_id,
            job.kind,
            job.table.schema,
            job.table.name,
            job.column,
            job.shadow,
            estimate_rows(conn, job),
        ),
    )


def load(conn: psycopg.Connection, mid: str, job_id: str) -> JobState:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL(
                "SELECT job_id, min_key, max_key, next_key, rows_done, rows_estimate, batch_size, "
                "batches, vacuumed_at_pct, started_at, finished_at FROM {} "
                "WHERE migration_id = %s AND job_id = %s"
            ).format(_backfill_table()),
            (mid, job_id),
        )
        row = cur.fetchone()
    assert row is not None, f"backfill job {job_id} not registered"
    return JobState(**row)


def load_all(conn: psycopg.Connection, mid: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL("SELECT * FROM {} WHERE migration_id = %s ORDER BY job_id").format(_backfill_table()),
            (mid,),
        )
        return cur.fetchall()


def begin(conn: psycopg.Connection, mid: str, job: BackfillJob, batch_size: int) -> JobState:
    """Fix the key range once (min/max as of now, or the heap's blocks); later rows carry their value."""
    if ctid.walks_heap(job.batch_column):
        lo, hi = ctid.read_block_bounds(conn, job.table)
    else:
        row = conn.execute(
            sql.SQL("SELECT min({c}), max({c}) FROM {t}").format(
                c=sql.Identifier(job.batch_column), t=job.table.ident
            )
        ).fetchone()
        lo, hi = row if row else (None, None)
    conn.execute(
        sql.SQL(
            "UPDATE {} SET min_key = %s, max_key = %s, next_key = %s, batch_size = %s, "
            "started_at = clock_timestamp(), updated_at = clock_timestamp(), "
            "finished_at = CASE WHEN %s::bigint IS NULL THEN clock_timestamp() END "
            "WHERE migration_id = %s AND job_id = %s AND started_at IS NULL"
        ).format(_backfill_table()),
        (lo, hi, lo, batch_size, lo, mid, job.job_id),
    )
    return load(conn, mid, job.job_id)


def reset(conn: psycopg.Connection, mid: str, job_id: str) -> None:
    """Start a finished job over (verify --repair): a new key range, cursor at its start."""
    conn.execute(
        sql.SQL(
            "UPDATE {} SET min_key = NULL, max_key = NULL, next_key = NULL, rows_done = 0, batches = 0, "
            "vacuumed_at_pct = 0, started_at = NULL, finished_at = NULL, updated_at = clock_timestamp() "
            "WHERE migration_id = %s AND job_id = %s"
        ).format(_backfill_table()),
        (mid, job_id),
    )


def range_sql(job: BackfillJob, alias: str | None = None) -> sql.Composed:
    """A batch's range: two parameters, the walked column's bounds (both in) or the heap's tids."""
    if ctid.walks_heap(job.batch_column):
        return ctid.build_range(alias)
    col = sql.Identifier(alias, job.batch_column) if alias else sql.Identifier(job.batch_column)
    return sql.SQL("{c} >= %s AND {c} <= %s").format(c=col)


def update_sql(job: BackfillJob, generator: sql.Composable) -> sql.Composed:
    """The batch UPDATE: a key gets a new UUID, a foreign key copies its parent's."""
    if job.kind == "key":
        gen: sql.Composable = generator
        if job.extra.get("adopt"):  # --key-from: the key takes the adopted column's value
            gen = sql.SQL("coalesce({}, {})").format(sql.Identifier(job.extra["adopt"]), gen)
        return sql.SQL("UPDATE {t} SET {s} = {g} WHERE {r} AND {s} IS NULL").format(
            t=job.table.ident,
            s=sql.Identifier(job.shadow),
            g=gen,
            r=range_sql(job),
        )
    assert job.ref_table and job.ref_column and job.ref_shadow
    return sql.SQL(
        "UPDATE {t} AS c SET {s} = p.{ps} FROM {pt} AS p "
        "WHERE {r} AND p.{pk} = c.{fk} AND c.{s} IS DISTINCT FROM p.{ps}"
    ).format(
        t=job.table.ident,
        s=sql.Identifier(job.shadow),
        ps=sql.Identifier(job.ref_shadow),
        pt=job.ref_table.ident,
        r=range_sql(job, "c"),
        pk=sql.Identifier(job.ref_column),
        fk=sql.Identifier(job.column),
    )


def _queue_batch_hi(
    conn: psycopg.Connection, job: BackfillJob, st: JobState, lo: int, size: int
) -> psycopg.Cursor[Any] | None:
    """Send the keyset walk's bound query (pipeline mode: its answer is read later); a heap walk has none."""
    if ctid.walks_heap(job.batch_column):
        return None
    return conn.execute(build_upper_bound(job.table, job.batch_column), (lo, st.max_key, size))


def _batch_hi(
    job: BackfillJob, st: JobState, lo: int, size: int, bound: psycopg.Cursor[Any] | None
) -> int | None:
    """The batch's last key (keyset: an index walk of `size` entries) or last block (heap walk)."""
    assert st.max_key is not None
    if bound is None:
        assert st.min_key is not None
        return min(lo + ctid.blocks_for(size, st.rows_estimate, st.min_key, st.max_key) - 1, st.max_key)
    row = bound.fetchone()
    return row[0] if row else None


def _range_params(job: BackfillJob, lo: int, hi: int) -> tuple[Any, Any]:
    return ctid.range_params(lo, hi) if ctid.walks_heap(job.batch_column) else (lo, hi)


def derived_update_sql(job: BackfillJob) -> sql.Composed:
    """Derived mode: shadow = derive(column), the key's own function or the parent's; no join.

    Rows that already hold the right value (written through the trigger) are left alone. An empty
    shadow is filled without testing it against derive() first: sha256 is most of a row's cost, and
    PostgreSQL evaluates OR's arms in order and stops at the first true one.
    """
    table, column = (job.table, job.column) if job.kind == "key" else (job.ref_table, job.ref_column)
    assert table is not None and column is not None
    shadow, source = sql.Identifier(job.shadow), sql.Identifier(job.column)
    return sql.SQL(
        "UPDATE {t} SET {s} = {d}({x}) WHERE {r} AND (({s} IS NULL AND {x} IS NOT NULL) OR {w})"
    ).format(
        t=job.table.ident,
        s=shadow,
        d=derive_fn(table, column),
        x=source,
        r=range_sql(job),
        w=derived_mismatch(shadow, table, column, source),
    )


def _advance_sql() -> sql.Composed:
    """Move the cursor; returns the sessions the batch's row locks made wait (one round trip for both)."""
    return sql.SQL(
        "UPDATE {} SET next_key = %s, rows_done = rows_done + %s, batches = batches + 1, "
        "batch_size = %s, updated_at = clock_timestamp(), "
        "finished_at = CASE WHEN %s THEN clock_timestamp() END "
        "WHERE migration_id = %s AND job_id = %s AND next_key = %s AND finished_at IS NULL "
        "RETURNING ({})"
    ).format(_backfill_table(), BLOCKED_BY_ME)


def run(
    conn: psycopg.Connection,
    mid: str,
    job: BackfillJob,
    st: JobState,
    size: int,
    update: sql.Composed,
    statement_timeout_ms: int,
    lock: tuple[int, str] | None = None,
) -> BatchResult:
    """One batch: bound, UPDATE, blocker check and cursor move, committed together.

    `lock` (pid, advisory key): the session that must hold the migration's lock; if it does not
    (it was lost in a restart), LockLost before anything is written.
    """
    assert st.next_key is not None and st.max_key is not None
    lo = st.next_key
    # Pipelined: three round trips, not six. BEGIN, the settings, the lock check and the batch's bound
    # travel together; then the UPDATE; then the cursor move with the COMMIT.
    with conn.pipeline() as pipe, conn.transaction():
        # A foreign-key batch joins each child row to its parent by index probes: a hash or merge
        # join would read the whole parent table.
        probes_only = "off" if job.kind == "fk" else "on"
        held = build_held_check() if lock else sql.SQL("true")
        settings = conn.execute(
            sql.SQL(
                "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true), "
                "set_config('idle_in_transaction_session_timeout', %s, true), "
                "set_config('enable_hashjoin', %s, true), set_config('enable_mergejoin', %s, true), {}"
            ).format(held),
            (
                LOCK_TIMEOUT,
                f"{statement_timeout_ms}ms",
                IDLE_IN_TRANSACTION_TIMEOUT,
                probes_only,
                probes_only,
                *(lock or ()),
            ),
        )
        bound = _queue_batch_hi(conn, job, st, lo, size)
        row = settings.fetchone()
        if not (row and row[5]):
            raise LockLost(f"the session holding the lock of migration {mid} is gone")
        hi = _batch_hi(job, st, lo, size, bound)
        rows = 0
        if hi is not None:
            updated = conn.execute(update, _range_params(job, lo, hi))
            pipe.sync()
            rows = updated.rowcount
        finished = hi is None or hi >= st.max_key
        nxt = lo if hi is None else min(hi + 1, INT8_MAX)
        advanced = conn.execute(_advance_sql(), (nxt, rows, size, finished, mid, job.job_id, lo))
    # Read after the COMMIT, so it costs no round trip of its own. A cursor that moved under us means
    # another run, which the migration's lock checked above keeps out; the fill it committed would
    # be the same either way (it writes what the triggers write).
    moved = advanced.fetchone()
    if moved is None:
        raise RuntimeError(f"backfill cursor of {job.job_id} moved under us; another run?")
    blocked = int(moved[0]) if rows else 0
    st.next_key, st.rows_done, st.batches, st.batch_size = nxt, st.rows_done + rows, st.batches + 1, size
    if finished:
        st.finished_at = datetime.now(UTC)
    return BatchResult(rows, hi, blocked, finished)


def set_vacuumed(conn: psycopg.Connection, mid: str, job_id: str, pct: float) -> None:
    conn.execute(
        sql.SQL("UPDATE {} SET vacuumed_at_pct = %s WHERE migration_id = %s AND job_id = %s").format(
            _backfill_table()
        ),
        (pct, mid, job_id),
    )


def vacuum(conn: psycopg.Connection, job: BackfillJob) -> None:
    """Plain VACUUM (autocommit conn); SKIP_LOCKED: if autovacuum holds the table, let it work."""
    conn.execute("SET statement_timeout = 0")
    try:
        conn.execute(sql.SQL("VACUUM (SKIP_LOCKED) {}").format(job.table.ident))
    finally:
        restore(conn, "statement_timeout")
