"""Faults of single sessions: batches cancelled, a cutover whose sessions are terminated every 50 ms,
two starts of the same tables at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from backfill_schema import ALL_ZERO, MID, Running, create_migration, create_schema, jobs, problems, scalar

from online_uuid.settings import BackfillSettings
from support.cli import error_lines, run_cli, spawn_cli
from support.schema import PUBLIC
from support.schema import create_schema as create_test_schema
from support.sessions import wait_for


@contextmanager
def every(period: float, action: str, dsn: str, app_like: str, query_like: str = "%") -> Iterator[list[int]]:
    """Run pg_cancel_backend / pg_terminate_backend on matching sessions every `period` seconds."""
    hits: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.wait(period):
                rows = c.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE %s AND query LIKE %s AND pid <> pg_backend_pid() "
                    "AND CASE WHEN %s THEN state = 'active' AND pg_cancel_backend(pid) "
                    "ELSE pg_terminate_backend(pid) END",
                    (app_like, query_like, action == "cancel"),
                ).fetchall()
                hits.extend(int(r[0]) for r in rows)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield hits
    finally:
        stop.set()
        t.join(10)


def test_cancelled_batches_are_retried_and_no_row_is_lost(dsn: str, conn: psycopg.Connection) -> None:
    keys = create_schema(conn, parents=20_000, children=5_000, leaves=5_000)
    create_migration(conn)
    settings = BackfillSettings(
        vacuum_every_pct=0, initial_batch_size=500, max_batch_size=1000, max_rows_per_second=10_000
    )
    # A row a third into the key range stays locked until the canceller has hit a batch 3 times: the
    # batch that reaches it waits there, active, and the canceller finds it (lock timeouts after 2 s
    # are retried too).
    with psycopg.connect(dsn) as holder:
        holder.execute(
            'SELECT 1 FROM "App Data"."Parent" WHERE "select" = %s FOR UPDATE', (keys[len(keys) // 3],)
        )
        with (
            every(0.1, "cancel", dsn, f"online-uuid/{MID}/backfill", "UPDATE %") as hits,
            Running(dsn, settings) as run,
        ):
            wait_for(lambda: len(hits) >= 3, 60, "a cancelled batch")
            holder.commit()
            result = run.join(180)
    assert hits, "no batch was cancelled: the test did not test anything"
    assert run.gauge("online_uuid_errors_total", kind="canceled") >= 1
    assert result.retries >= 1
    assert problems(conn) == ALL_ZERO
    # each row counted once: a cancelled batch rolled back with its cursor and ran again
    assert jobs(conn)["key:App Data.Parent.select"]["rows_done"] == len(keys)
    assert scalar(conn, 'SELECT count(*) FROM "App Data"."Parent" WHERE select_uuid IS NULL') == 0


def _phase(conn: psycopg.Connection) -> str:
    return str(scalar(conn, "SELECT phase FROM online_uuid.migrations"))


def _schema(conn: psycopg.Connection) -> None:
    create_test_schema(conn, PUBLIC, rows=20_000)


def test_cutover_under_sessions_terminated_every_50ms(dsn: str, conn: psycopg.Connection) -> None:
    _schema(conn)
    done = run_cli("start", "--dsn", dsn, *[a for t in PUBLIC.table_args() for a in ("-t", t)])
    assert done.returncode == 0, done.stderr
    before = conn.execute("SELECT id, id_uuid FROM parent ORDER BY id").fetchall()
    with every(0.05, "terminate", dsn, "online-uuid/%") as hits:
        first = run_cli("cutover", "--dsn", dsn, timeout=300)
    assert hits, "no session was terminated"
    phase = _phase(conn)
    if first.returncode != 0:  # fails cleanly: one error line, a state a rerun goes on from
        assert len(error_lines(first.stderr)) == 1, first.stderr[-2000:]
        assert phase in ("backfilled", "preparing"), phase
        again = run_cli("cutover", "--dsn", dsn, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
    assert _phase(conn) == "cut_over"
    after = conn.execute("SELECT id_int, id FROM parent ORDER BY id_int").fetchall()
    assert after == before  # every key kept its UUID and its integer
    orphans = conn.execute(
        "SELECT count(*) FROM child c LEFT JOIN parent p ON p.id = c.parent_id "
        "WHERE c.parent_id IS NOT NULL AND p.id IS NULL"
    ).fetchone()
    assert orphans == (0,)
    assert run_cli("verify", "--dsn", dsn).returncode == 0


@pytest.mark.parametrize("round_", range(2))
def test_two_starts_of_the_same_tables_at_once(dsn: str, conn: psycopg.Connection, round_: int) -> None:
    _schema(conn)
    args = ["start", "--dsn", dsn, *[a for t in PUBLIC.table_args() for a in ("-t", t)]]
    procs = [spawn_cli(*args) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 2]), outs
    for p, (_o, err) in zip(procs, outs, strict=True):
        if p.returncode == 2:
            assert "another online-uuid run" in err or "already" in err, err
    assert conn.execute("SELECT count(*), min(phase) FROM online_uuid.migrations").fetchone() == (
        1,
        "backfilled",
    )
    # nothing doubled: one shadow column per converted column, one set of triggers per table
    shadows = conn.execute(
        "SELECT attrelid::regclass::text, attname FROM pg_attribute WHERE attname LIKE '%%\\_uuid' "
        "AND NOT attisdropped ORDER BY 1, 2"
    ).fetchall()
    assert len(shadows) == len(set(shadows)) == 7, shadows
    steps = conn.execute("SELECT count(*), count(DISTINCT step_id) FROM online_uuid.steps").fetchone()
    assert steps is not None and steps[0] == steps[1]
    assert run_cli("verify", "--dsn", dsn).returncode == 0
